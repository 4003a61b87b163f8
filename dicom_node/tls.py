"""DICOM TLS contexts from the configuration (PS3.15 Annex B).

Both sides use TLS 1.2 or later with the library's modern cipher suites, which is what
the BCP 195 TLS profiles (PS3.15 B.9-B.11, DCMTK's default ``+py``) ask for. The node
authenticates callers by certificate when ``node.tls.require_client_certificate`` is on
(the default); our SCU verifies the destination's certificate chain (and, if asked, its
host name) and presents its own certificate when configured.
"""

from __future__ import annotations

import ssl

from core.errors import ConfigError
from core.settings import DestinationTlsSettings, NodeTlsSettings


def server_context(settings: NodeTlsSettings, *, key: str = "node.tls") -> ssl.SSLContext:
    """An SSL context for the node's listener.

    Raises:
        ConfigError: a certificate, key or CA file cannot be loaded, naming the key.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, str(settings.certificate), str(settings.private_key), key)
    if settings.ca_certificates is not None:
        _load_ca(context, str(settings.ca_certificates), key)
    context.verify_mode = (
        ssl.CERT_REQUIRED if settings.require_client_certificate else ssl.CERT_NONE
    )
    return context


def client_context(settings: DestinationTlsSettings, *, key: str) -> ssl.SSLContext:
    """An SSL context for sending to a destination (``key`` names it in errors).

    Raises:
        ConfigError: a certificate, key or CA file cannot be loaded, naming the key.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = settings.check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if settings.ca_certificates is not None:
        _load_ca(context, str(settings.ca_certificates), key)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if settings.certificate is not None and settings.private_key is not None:
        _load_chain(context, str(settings.certificate), str(settings.private_key), key)
    return context


def _load_chain(context: ssl.SSLContext, certificate: str, private_key: str, key: str) -> None:
    try:
        context.load_cert_chain(certificate, private_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            "configuration",
            [f"{key}.certificate, {key}.private_key: cannot load {certificate}: {exc}"],
        ) from exc


def _load_ca(context: ssl.SSLContext, ca_file: str, key: str) -> None:
    try:
        context.load_verify_locations(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            "configuration", [f"{key}.ca_certificates: cannot load {ca_file}: {exc}"]
        ) from exc
