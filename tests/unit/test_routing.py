"""Routing rules: which series go to which models, and why a rule did not match."""

from __future__ import annotations

from pydicom.dataset import Dataset

from core.routing_rules import RouteSettings
from dicom_node.routing import Arrival, Router


def header(**values: object) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def route(name: str, **match: object) -> RouteSettings:
    return RouteSettings.model_validate({"name": name, "match": match, "models": ["ct-lungs"]})


def test_a_rule_matches_when_every_condition_holds() -> None:
    router = Router([route("chest-ct", Modality="CT", BodyPartExamined=["CHEST", "LUNG"])])

    assert [r.name for r in router.matching(header(Modality="CT", BodyPartExamined="LUNG"))] == [
        "chest-ct"
    ]


def test_a_rule_that_does_not_match_says_why() -> None:
    router = Router([route("chest-ct", Modality="CT", BodyPartExamined="CHEST")])

    [verdict] = router.explain(header(Modality="MR"))

    assert not verdict.matched
    assert verdict.reasons == ("Modality is 'MR', not 'CT'", "BodyPartExamined is absent")


def test_multi_valued_attributes_match_on_any_value_and_numbers_compare_numerically() -> None:
    router = Router([route("axial-thin", ImageType="AXIAL", SliceThickness=1)])

    matched = router.matching(
        header(ImageType=["ORIGINAL", "PRIMARY", "AXIAL"], SliceThickness="1.0")
    )
    unmatched = router.explain(header(ImageType=["ORIGINAL", "LOCALIZER"], SliceThickness="5"))

    assert [r.name for r in matched] == ["axial-thin"]
    assert unmatched[0].reasons == (
        "ImageType is 'ORIGINAL\\\\LOCALIZER', not 'AXIAL'",
        "SliceThickness is '5', not 1",
    )


def test_an_empty_match_accepts_every_series_and_all_matching_rules_apply() -> None:
    router = Router([route("everything"), route("ct", Modality="CT")])

    assert [r.name for r in router.matching(header(Modality="CT"))] == ["everything", "ct"]
    assert [r.name for r in router.matching(header(Modality="MR"))] == ["everything"]


def rule(name: str, **fields: object) -> RouteSettings:
    return RouteSettings.model_validate({"name": name, "models": ["ct-lungs"], **fields})


def test_regex_range_and_presence_conditions_say_why_they_fail() -> None:
    router = Router(
        [
            rule(
                "thin-chest",
                match={
                    "SeriesDescription": {"regex": "(?i)lung|chest"},
                    "SliceThickness": {"min": 0.5, "max": 2.5},
                    "ContrastBolusAgent": {"present": False},
                    "BodyPartExamined": {"present": True},
                },
            )
        ]
    )
    good = header(
        SeriesDescription="Thorax LUNG 1mm", SliceThickness="1.25", BodyPartExamined="CHEST"
    )
    bad = header(SeriesDescription="Abdomen", SliceThickness="5", ContrastBolusAgent="Iomeron")

    assert [r.name for r in router.matching(good)] == ["thin-chest"]
    assert router.explain(bad)[0].reasons == (
        "SeriesDescription is 'Abdomen', which does not match /(?i)lung|chest/",
        "SliceThickness is '5', outside [0.5, 2.5]",
        "ContrastBolusAgent is 'Iomeron', but must be absent",
        "BodyPartExamined is absent",
    )


def test_rules_can_require_the_sending_ae_titles_and_network() -> None:
    router = Router(
        [rule("ct-room", calling_ae={"regex": "^CT"}, called_ae="PACSAI", source=["10.1.0.0/16"])]
    )
    ct = header(Modality="CT")

    assert router.matching(ct, Arrival("CT_ROOM2", "PACSAI", "10.1.4.7:40112"))
    [verdict] = router.explain(ct, Arrival("MR1", "OTHER", "192.168.1.5:1000"))
    assert verdict.reasons == (
        "calling AE is 'MR1', which does not match /^CT/",
        "called AE is 'OTHER', not 'PACSAI'",
        "sender 192.168.1.5 is not in 10.1.0.0/16",
    )


def test_first_match_mode_applies_only_the_first_matching_rule() -> None:
    routes = [rule("ct", match={"Modality": "CT"}), rule("everything")]

    assert [r.name for r in Router(routes, mode="first").matching(header(Modality="CT"))] == ["ct"]
    assert [r.name for r in Router(routes, mode="all").matching(header(Modality="CT"))] == [
        "ct",
        "everything",
    ]
