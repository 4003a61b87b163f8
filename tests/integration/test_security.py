"""Who may come in: the calling AE allow-list, and DICOM TLS in both directions."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from core.errors import TransientError
from core.settings import DestinationTlsSettings
from dicom_node.scu import send_files
from tests.conftest import DicomFactory
from tests.support.node import spooled_files, start_node
from tests.support.peers import LOCALHOST, StoreSCP, echoscu, storescu, wait_for
from tests.support.tls import Pki, make_pki

pytestmark = pytest.mark.peers


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


def test_an_unknown_calling_ae_is_rejected_at_association_and_logged(
    tmp_path: Path, dicom_factory: DicomFactory, caplog: pytest.LogCaptureFixture
) -> None:
    path = dicom_factory.image()
    callers = [{"ae_title": "CT_SCANNER"}]
    with start_node(tmp_path / "data", allowed_callers=callers) as node:
        caplog.set_level(logging.WARNING, logger="dicom_node.acceptor")

        refused = storescu(path, LOCALHOST, node.port, "PACSAI", "INTRUDER")
        accepted = storescu(path, LOCALHOST, node.port, "PACSAI", "CT_SCANNER")

        output = refused.stdout + refused.stderr
        assert refused.returncode != 0
        assert "Association Rejected" in output
        assert "Result: Rejected Permanent, Source: Service User" in output
        assert "Reason: Calling AE Title Not Recognized" in output
        assert accepted.returncode == 0, accepted.stderr
        node.recorder.flush()
        assert node.ledger.count_instances() == 1
        assert node.scp.stats["rejected"] == 1
        assert any(
            "rejected association from INTRUDER@127.0.0.1" in record.getMessage()
            and "not in node.allowed_callers" in record.getMessage()
            for record in caplog.records
        ), caplog.text


def test_a_calling_ae_tied_to_other_addresses_is_rejected_from_this_one(
    tmp_path: Path, dicom_factory: DicomFactory
) -> None:
    path = dicom_factory.image()
    callers = [
        {"ae_title": "REMOTE", "hosts": ["10.20.0.0/16"]},
        {"ae_title": "LOCAL", "hosts": ["127.0.0.0/8", "::1"]},
    ]
    with start_node(tmp_path / "data", allowed_callers=callers) as node:
        remote = storescu(path, LOCALHOST, node.port, "PACSAI", "REMOTE")
        local = echoscu(LOCALHOST, node.port, "PACSAI", "LOCAL")

        assert "Reason: Calling AE Title Not Recognized" in remote.stdout + remote.stderr
        assert local.returncode == 0, local.stderr
        node.recorder.flush()
        assert spooled_files(node) == []


def _tls_args(pki: Pki, *, stranger: bool = False) -> list[str]:
    identity = pki.stranger if stranger else pki.client
    return [
        "+tls",
        str(identity.private_key),
        str(identity.certificate),
        "+cf",
        str(pki.ca_certificate),
    ]


def _node_tls(pki: Pki, **extra: object) -> dict[str, object]:
    return {
        "certificate": str(pki.server.certificate),
        "private_key": str(pki.server.private_key),
        "ca_certificates": str(pki.ca_certificate),
        **extra,
    }


def test_dcmtk_stores_over_tls_with_a_client_certificate_the_node_trusts(
    tmp_path: Path, pki: Pki, dicom_factory: DicomFactory
) -> None:
    paths = dicom_factory.series(3)
    with start_node(tmp_path / "data", tls=_node_tls(pki)) as node:
        assert node.scp.tls_port == node.port

        sent = storescu(paths, LOCALHOST, node.port, "PACSAI", "STORESCU", *_tls_args(pki))
        echoed = echoscu(LOCALHOST, node.port, "PACSAI", "ECHOSCU", *_tls_args(pki))

        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert echoed.returncode == 0, echoed.stderr
        node.recorder.flush()
        assert node.ledger.count_instances() == 3
        stored = {p.stem for p in spooled_files(node)}
        assert stored == {str(pydicom.dcmread(p).SOPInstanceUID) for p in paths}


def test_the_tls_port_refuses_plain_tcp_and_unknown_certificates(
    tmp_path: Path, pki: Pki, dicom_factory: DicomFactory
) -> None:
    path = dicom_factory.image()
    with start_node(tmp_path / "data", tls=_node_tls(pki)) as node:
        plain = storescu(path, LOCALHOST, node.port, "PACSAI", "STORESCU", "-ta", "5")
        stranger = storescu(
            path, LOCALHOST, node.port, "PACSAI", "STORESCU", *_tls_args(pki, stranger=True)
        )
        anonymous = storescu(
            path, LOCALHOST, node.port, "PACSAI", "STORESCU", "+tla", "+cf", str(pki.ca_certificate)
        )

        assert plain.returncode != 0
        assert stranger.returncode != 0
        assert anonymous.returncode != 0
        # A failed handshake may end on the caller's side before the node has seen it fail.
        wait_for(
            lambda: node.recorder.flush() and node.scp.stats["rejected"] >= 3,
            10,
            "three refused handshakes counted",
        )
        assert node.ledger.count_instances() == 0


def test_a_tls_port_beside_the_plain_one_serves_both(
    tmp_path: Path, pki: Pki, dicom_factory: DicomFactory
) -> None:
    from tests.support.peers import free_port  # noqa: PLC0415

    tls_port = free_port()
    with start_node(tmp_path / "data", tls=_node_tls(pki, port=tls_port)) as node:
        assert (node.scp.tls_port, node.scp.port != tls_port) == (tls_port, True)

        over_tls = storescu(
            dicom_factory.image(), LOCALHOST, tls_port, "PACSAI", "STORESCU", *_tls_args(pki)
        )
        plain = storescu(dicom_factory.image(), LOCALHOST, node.port, "PACSAI")

        assert over_tls.returncode == 0, over_tls.stdout + over_tls.stderr
        assert plain.returncode == 0, plain.stderr
        node.recorder.flush()
        assert node.ledger.count_instances() == 2


def test_callers_without_certificates_may_be_allowed_explicitly(
    tmp_path: Path, pki: Pki, dicom_factory: DicomFactory
) -> None:
    tls = _node_tls(pki, require_client_certificate=False)
    with start_node(tmp_path / "data", tls=tls) as node:
        anonymous = storescu(
            dicom_factory.image(),
            LOCALHOST,
            node.port,
            "PACSAI",
            "STORESCU",
            "+tla",
            "+cf",
            str(pki.ca_certificate),
        )

        assert anonymous.returncode == 0, anonymous.stdout + anonymous.stderr


@pytest.fixture
def tls_storescp(make_storescp: Callable[..., StoreSCP], pki: Pki) -> StoreSCP:
    """DCMTK storescp speaking TLS, requiring a client certificate signed by our CA."""
    return make_storescp(
        extra_args=[
            "+tls",
            str(pki.server.private_key),
            str(pki.server.certificate),
            "+cf",
            str(pki.ca_certificate),
            "--require-peer-cert",
        ]
    )


def test_our_scu_sends_over_tls_to_dcmtk(
    tls_storescp: StoreSCP, pki: Pki, dicom_factory: DicomFactory
) -> None:
    paths = dicom_factory.series(3)
    tls = DestinationTlsSettings(
        ca_certificates=pki.ca_certificate,
        certificate=pki.client.certificate,
        private_key=pki.client.private_key,
    )

    report = send_files(
        paths, host=LOCALHOST, port=tls_storescp.port, called_ae=tls_storescp.aet, tls=tls
    )

    assert report.ok, report.failed
    assert len(tls_storescp.files()) == 3


def test_our_scu_refuses_a_destination_whose_certificate_it_cannot_verify(
    tls_storescp: StoreSCP, pki: Pki, tmp_path: Path, dicom_factory: DicomFactory
) -> None:
    other = make_pki(tmp_path / "other-pki")
    tls = DestinationTlsSettings(
        ca_certificates=other.ca_certificate,
        certificate=pki.client.certificate,
        private_key=pki.client.private_key,
    )

    with pytest.raises(TransientError, match=r"TLS handshake with STORESCP@.* failed"):
        send_files(
            [dicom_factory.image()],
            host=LOCALHOST,
            port=tls_storescp.port,
            called_ae=tls_storescp.aet,
            tls=tls,
        )
    assert tls_storescp.files() == []


def test_a_destination_that_wants_a_client_certificate_turns_away_one_without(
    tls_storescp: StoreSCP, pki: Pki, dicom_factory: DicomFactory
) -> None:
    tls = DestinationTlsSettings(ca_certificates=pki.ca_certificate)

    with pytest.raises(TransientError, match=r"STORESCP@127\.0\.0\.1"):
        send_files(
            [dicom_factory.image()],
            host=LOCALHOST,
            port=tls_storescp.port,
            called_ae=tls_storescp.aet,
            tls=tls,
        )
    assert tls_storescp.files() == []
