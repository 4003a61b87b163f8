"""A pacs-ai node for ingestion tests, and ways to talk to it below DCMTK's level.

:func:`start_node` runs a :class:`~dicom_node.node.Node` that stores and records but
routes nothing (no broker needed). :class:`RawAssociation` speaks the Upper Layer
protocol directly, to send what no well-behaved SCU would: truncated or inconsistent
data sets, a message cut off by an abort or a closed connection.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.dsutils import split_dataset

from core.settings import Settings, validate_settings
from dicom_node.node import Node
from dicom_node.requestor import Association
from dicom_node.ul import dimse
from dicom_node.ul.negotiation import (
    AssociationAccepted,
    NegotiatedContext,
    ProposedContext,
    decode_associate_ac,
    encode_associate_rq,
)
from dicom_node.ul.pdu import PduReader, PduType, abort, p_data_pdus
from tests.support.peers import LOCALHOST, free_port

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
VERIFICATION = "1.2.840.10008.1.1"


def ingest_settings(
    data_dir: Path, *, completion: dict[str, float] | None = None, **node: Any
) -> Settings:
    """Settings of a node on a free port that stores everything and routes nothing."""
    return validate_settings(
        {
            "data_dir": str(data_dir),
            "node": {"host": LOCALHOST, "port": free_port(), "min_free_disk_mb": 0, **node},
            "completion": completion or {"series_quiet_seconds": 60},
            "routes": [],
        }
    )


@contextlib.contextmanager
def start_node(
    data_dir: Path, *, completion: dict[str, float] | None = None, **node: Any
) -> Iterator[Node]:
    with Node(ingest_settings(data_dir, completion=completion, **node)) as running:
        yield running


def data_set_bytes(path: Path) -> bytes:
    """The encoded data set of a Part 10 file, without preamble and file meta."""
    _meta, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def spooled_files(node: Node) -> list[Path]:
    return sorted(p for p in node.settings.spool_dir.rglob("*.dcm") if ".incoming" not in p.parts)


def unfinished_writes(node: Node) -> list[Path]:
    return sorted((node.settings.spool_dir / ".incoming").iterdir())


def associate(
    port: int,
    contexts: Sequence[tuple[str, str]],
    *,
    calling_ae: str = "TESTSCU",
    called_ae: str = "PACSAI",
    timeout: float = 10,
) -> Association:
    """An association (our requestor) proposing ``(abstract syntax, transfer syntax)`` pairs."""
    return Association.request(
        LOCALHOST,
        port,
        calling_ae=calling_ae,
        called_ae=called_ae,
        contexts=[
            ProposedContext(2 * number + 1, abstract, (syntax,))
            for number, (abstract, syntax) in enumerate(contexts)
        ],
        timeout=timeout,
    )


def context_for(assoc: Association, abstract_syntax: str) -> NegotiatedContext:
    return next(c for c in assoc.contexts if c.abstract_syntax == abstract_syntax and c.accepted)


class RawAssociation:
    """An association on a bare socket: send any PDU bytes, read the answers."""

    def __init__(
        self,
        port: int,
        *,
        abstract_syntax: str = CT_IMAGE,
        transfer_syntax: str = ExplicitVRLittleEndian,
        calling_ae: str = "RAWSCU",
    ) -> None:
        self.sock = socket.create_connection((LOCALHOST, port), timeout=10)
        self.proposed = [ProposedContext(1, abstract_syntax, (transfer_syntax,))]
        self.sock.sendall(
            encode_associate_rq(
                calling_ae=calling_ae, called_ae="PACSAI", contexts=self.proposed, max_length=0
            )
        )
        self.reader = PduReader(self.sock, timeout=10)
        pdu_type, body = self.reader.read()
        assert pdu_type == PduType.ASSOCIATE_AC, f"association not accepted: PDU {pdu_type}"
        self.accepted: AssociationAccepted = decode_associate_ac(body, self.proposed)

    def send_command_and_part_of(
        self, sop_instance_uid: str, data_set: bytes, *, sent: int, max_pdu: int = 16384
    ) -> None:
        """A C-STORE-RQ and only the first ``sent`` bytes of its data set."""
        command = dimse.c_store_rq(1, self.proposed[0].abstract_syntax, sop_instance_uid)
        pdus = p_data_pdus(command, 1, command=True, max_pdu=max_pdu)
        pdus += p_data_pdus(data_set, 1, command=False, max_pdu=max_pdu)
        stream = b"".join(pdus)
        self.sock.sendall(stream[: len(command) + 12 + sent])

    def abort(self) -> None:
        self.sock.sendall(abort())
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
