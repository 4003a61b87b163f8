"""The calling AE title allow-list, optionally tied to source addresses."""

from __future__ import annotations

from core.settings import AllowedCaller
from dicom_node.access import AccessPolicy


def test_an_empty_allow_list_lets_anyone_in() -> None:
    assert AccessPolicy([]).check("ANYONE", "192.0.2.7").allowed


def test_only_listed_calling_ae_titles_are_allowed() -> None:
    policy = AccessPolicy([AllowedCaller(ae_title="CT_SCANNER")])

    assert policy.check("CT_SCANNER", "10.0.0.5").allowed
    verdict = policy.check("INTRUDER", "10.0.0.5")
    assert not verdict.allowed
    assert verdict.reason == "calling AE title 'INTRUDER' is not in node.allowed_callers"


def test_an_entry_with_hosts_allows_only_those_addresses_and_networks() -> None:
    policy = AccessPolicy(
        [AllowedCaller(ae_title="MR", hosts=["10.1.2.3", "192.168.0.0/24", "2001:db8::/32"])]
    )

    assert policy.check("MR", "10.1.2.3").allowed
    assert policy.check("MR", "192.168.0.77").allowed
    assert policy.check("MR", "::ffff:192.168.0.9").allowed
    assert policy.check("MR", "2001:db8::1").allowed
    verdict = policy.check("MR", "10.1.2.4")
    assert not verdict.allowed
    assert verdict.reason == "calling AE title 'MR' is not allowed from address 10.1.2.4"


def test_an_entry_without_hosts_wins_over_one_with_hosts_for_the_same_title() -> None:
    policy = AccessPolicy(
        [AllowedCaller(ae_title="PACS", hosts=["10.0.0.1"]), AllowedCaller(ae_title="PACS")]
    )

    assert policy.check("PACS", "172.16.0.1").allowed
