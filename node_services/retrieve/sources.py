"""The source a destination's ``query_retrieve`` role makes (one module per kind)."""

from __future__ import annotations

from core.errors import ConfigError
from core.settings import DestinationSettings, DicomWebDestination, Settings
from node_services.retrieve.base import Source
from node_services.retrieve.dicomweb import DicomWebSource
from node_services.retrieve.dimse import DimseSource


def query_retrieve_sources(settings: Settings) -> list[str]:
    """Names of the destinations that studies can be pulled from."""
    return [
        name
        for name, destination in settings.destinations.items()
        if destination.query_retrieve is not None
    ]


def make_source(settings: Settings, name: str) -> Source:
    """The source ``destinations.<name>`` is.

    Raises:
        ConfigError: no such destination, or it has no ``query_retrieve`` role.
    """
    destination = settings.destinations.get(name)
    usable = ", ".join(query_retrieve_sources(settings)) or "none has query_retrieve"
    if destination is None:
        raise ConfigError(
            "configuration", [f"destinations: no destination {name!r} to pull from ({usable})"]
        )
    if destination.query_retrieve is None:
        raise ConfigError(
            "configuration",
            [
                f"destinations.{name}: no query_retrieve role; add `query_retrieve: {{}}` "
                f"to pull studies from it (with a PACS: query and retrieve) ({usable})"
            ],
        )
    if isinstance(destination, DicomWebDestination):
        return DicomWebSource(
            name, destination, max_instance_bytes=settings.node.max_instance_bytes
        )
    assert isinstance(destination, DestinationSettings)
    return DimseSource(
        name,
        destination,
        calling_ae=settings.node.ae_title,
        node_ae=settings.node.ae_title,
        max_pdu=settings.node.max_pdu_length or 131_072,
    )
