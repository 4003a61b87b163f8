"""Settings of the DICOM node: allow-list and TLS keys are checked, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from core.settings import validate_settings


def test_the_defaults_receive_durably_on_all_cores_from_anyone_without_tls() -> None:
    node = validate_settings({}).node

    assert (node.fsync, node.receiver_processes, node.allowed_callers, node.tls) == (
        True,
        None,
        [],
        None,
    )


def test_an_allowed_caller_host_must_be_an_address_or_network() -> None:
    with pytest.raises(ConfigError, match=r"node\.allowed_callers\[0\]\.hosts: .*'scanner\.local'"):
        validate_settings(
            {"node": {"allowed_callers": [{"ae_title": "CT", "hosts": ["scanner.local"]}]}}
        )


def test_tls_files_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"node\.tls\.certificate: .*no such file"):
        validate_settings(
            {
                "node": {
                    "tls": {
                        "certificate": str(tmp_path / "missing.crt"),
                        "private_key": str(tmp_path / "missing.key"),
                    }
                }
            }
        )


def test_client_certificates_need_a_ca_to_check_them(tmp_path: Path) -> None:
    certificate, key = tmp_path / "node.crt", tmp_path / "node.key"
    certificate.write_text("x")
    key.write_text("x")

    with pytest.raises(ConfigError, match="require_client_certificate needs ca_certificates"):
        validate_settings(
            {"node": {"tls": {"certificate": str(certificate), "private_key": str(key)}}}
        )


def test_a_destination_certificate_needs_its_key(tmp_path: Path) -> None:
    certificate = tmp_path / "client.crt"
    certificate.write_text("x")

    with pytest.raises(ConfigError, match="certificate and private_key go together"):
        validate_settings(
            {
                "destinations": {
                    "pacs": {
                        "host": "127.0.0.1",
                        "port": 104,
                        "ae_title": "PACS",
                        "tls": {"certificate": str(certificate)},
                    }
                }
            }
        )
