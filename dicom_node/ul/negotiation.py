"""Association negotiation: A-ASSOCIATE-RQ, -AC and -RJ for both roles (PS3.8 9.3.2-9.3.4).

Negotiation happens once per association and has many rarely used sub-items (role
selection, extended negotiation, user identity, asynchronous operations), so the PDUs are
encoded and decoded with pynetdicom's well-tested PDU classes. What we do not support is
left out of our answer, which per PS3.7 D.3.3 means the default: the requestor is the SCU,
one operation at a time, no extended negotiation.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_items import (
    AbstractSyntaxSubItem,
    ApplicationContextItem,
    ImplementationClassUIDSubItem,
    ImplementationVersionNameSubItem,
    MaximumLengthSubItem,
    PresentationContextItemAC,
    PresentationContextItemRQ,
    TransferSyntaxSubItem,
    UserInformationItem,
)

from dicom_node.encoding import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    IMPLICIT_VR_LITTLE_ENDIAN,
)
from dicom_node.ul.pdu import AbortReason, PduType, ProtocolError, with_header

#: The DICOM Application Context Name (PS3.7 A.2.1).
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"


class ContextResult(IntEnum):
    """Presentation context Result/Reason (PS3.8 Table 9-18)."""

    ACCEPTANCE = 0
    USER_REJECTION = 1
    NO_REASON = 2
    ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
    TRANSFER_SYNTAXES_NOT_SUPPORTED = 4


class RejectResult(IntEnum):
    """A-ASSOCIATE-RJ Result (PS3.8 Table 9-21)."""

    PERMANENT = 1
    TRANSIENT = 2


class RejectSource(IntEnum):
    """A-ASSOCIATE-RJ Source (PS3.8 Table 9-21)."""

    SERVICE_USER = 1
    SERVICE_PROVIDER_ACSE = 2
    SERVICE_PROVIDER_PRESENTATION = 3


@dataclass(frozen=True, slots=True)
class Rejection:
    """An A-ASSOCIATE-RJ's three fields, and what they mean (PS3.8 9.3.4)."""

    result: int
    source: int
    reason: int

    def describe(self) -> str:
        result = {1: "Rejected Permanent", 2: "Rejected Transient"}.get(
            self.result, f"result {self.result}"
        )
        source = _SOURCES.get(self.source, f"source {self.source}")
        reason = _REASONS.get((self.source, self.reason), f"reason {self.reason}")
        return f"{result}, source {source}, reason: {reason}"


_SOURCES = {
    1: "Service User",
    2: "Service Provider (ACSE)",
    3: "Service Provider (Presentation)",
}
_REASONS = {
    (1, 1): "No reason given",
    (1, 2): "Application context name not supported",
    (1, 3): "Calling AE title not recognised",
    (1, 7): "Called AE title not recognised",
    (2, 1): "No reason given",
    (2, 2): "Protocol version not supported",
    (3, 1): "Temporary congestion",
    (3, 2): "Local limit exceeded",
}

#: The rejections the SCP sends (PS3.8 9.3.4).
CALLING_AE_NOT_RECOGNIZED = Rejection(RejectResult.PERMANENT, RejectSource.SERVICE_USER, 3)
CALLED_AE_NOT_RECOGNIZED = Rejection(RejectResult.PERMANENT, RejectSource.SERVICE_USER, 7)
APPLICATION_CONTEXT_NOT_SUPPORTED = Rejection(RejectResult.PERMANENT, RejectSource.SERVICE_USER, 2)
PROTOCOL_VERSION_NOT_SUPPORTED = Rejection(
    RejectResult.PERMANENT, RejectSource.SERVICE_PROVIDER_ACSE, 2
)
LOCAL_LIMIT_EXCEEDED = Rejection(
    RejectResult.TRANSIENT, RejectSource.SERVICE_PROVIDER_PRESENTATION, 2
)
NO_REASON_GIVEN = Rejection(RejectResult.PERMANENT, RejectSource.SERVICE_USER, 1)

#: The smallest Maximum Length Received (PS3.8 D.1) a peer may announce; 0 means no limit.
#: A response must fit into PDUs of that size, and below a few hundred bytes a C-STORE
#: response (about 100 bytes of command set) cannot be sent sensibly. DCMTK's own floor
#: is 4096; this one is lower, to leave odd but working peers alone.
MIN_PEER_MAX_LENGTH = 1024


@dataclass(frozen=True, slots=True)
class ProposedContext:
    """A presentation context as the requestor proposes it."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NegotiatedContext:
    """A presentation context with the acceptor's answer."""

    context_id: int
    abstract_syntax: str
    result: int
    #: The accepted transfer syntax (not significant when rejected).
    transfer_syntax: str

    @property
    def accepted(self) -> bool:
        return self.result == ContextResult.ACCEPTANCE


@dataclass(frozen=True, slots=True)
class AssociationRequest:
    """What an A-ASSOCIATE-RQ asks for (PS3.8 9.3.2)."""

    calling_ae: str
    called_ae: str
    protocol_version: int
    application_context: str
    contexts: tuple[ProposedContext, ...]
    #: The largest P-DATA-TF PDU the requestor accepts (0: no limit).
    max_length: int
    implementation_class_uid: str
    implementation_version_name: str


@dataclass(frozen=True, slots=True)
class AssociationAccepted:
    """What an A-ASSOCIATE-AC grants (PS3.8 9.3.3)."""

    contexts: tuple[NegotiatedContext, ...]
    #: The largest P-DATA-TF PDU the acceptor accepts (0: no limit).
    max_length: int
    implementation_class_uid: str


def decode_associate_rq(body: bytes | memoryview) -> AssociationRequest:
    """Decode an A-ASSOCIATE-RQ body (the PDU without its 6-byte header).

    Raises:
        ProtocolError: the PDU cannot be decoded.
    """
    pdu = A_ASSOCIATE_RQ()
    try:
        pdu.decode(with_header(PduType.ASSOCIATE_RQ, bytes(body)))
        contexts = tuple(
            ProposedContext(
                context_id=int(item.context_id or 0),
                abstract_syntax=str(item.abstract_syntax or ""),
                transfer_syntaxes=tuple(str(ts) for ts in item.transfer_syntax),
            )
            for item in pdu.presentation_context
        )
        user = pdu.user_information
        max_length = int((user.maximum_length if user else None) or 0)
        class_uid = str((user.implementation_class_uid if user else None) or "")
        version = str((user.implementation_version_name if user else None) or "")
        return AssociationRequest(
            calling_ae=_ae(pdu.calling_ae_title),
            called_ae=_ae(pdu.called_ae_title),
            protocol_version=int(pdu.protocol_version),
            application_context=escaped(str(pdu.application_context_name or "")),
            contexts=contexts,
            max_length=max_length,
            implementation_class_uid=class_uid,
            implementation_version_name=version,
        )
    except Exception as exc:  # pynetdicom raises many types for a malformed PDU
        raise ProtocolError(
            f"cannot decode the A-ASSOCIATE-RQ: {type(exc).__name__}: {escaped(str(exc))}",
            AbortReason.INVALID_PDU_PARAMETER,
        ) from exc


def escaped(text: str) -> str:
    """``text`` with every character outside printable ASCII written as an escape.

    Whatever a peer sends ends up in log lines; a newline in an AE title or a UID would let
    it forge whole lines. Escaped values also never equal a configured AE title (those are
    printable ASCII by validation), so an allow-list check of them fails as it should.
    """
    if text.isascii() and text.isprintable():
        return text
    return "".join(
        c if " " <= c <= "~" else c.encode("unicode_escape").decode("ascii") for c in text
    )


def _ae(value: str | bytes) -> str:
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return escaped(text.strip(" \x00"))


def negotiate(
    request: AssociationRequest,
    *,
    abstract_syntaxes: frozenset[str],
    transfer_syntaxes: frozenset[str],
) -> tuple[NegotiatedContext, ...]:
    """Answer each proposed context (PS3.8 9.3.3.2).

    A context is accepted with the first of its transfer syntaxes that we support, in the
    requestor's order of preference, so that data arrives as the sender holds it.
    """
    results = []
    for proposed in request.contexts:
        first = proposed.transfer_syntaxes[0] if proposed.transfer_syntaxes else ""
        if proposed.abstract_syntax not in abstract_syntaxes:
            result, syntax = ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED, first
        else:
            chosen = next((ts for ts in proposed.transfer_syntaxes if ts in transfer_syntaxes), "")
            if chosen:
                result, syntax = ContextResult.ACCEPTANCE, chosen
            else:
                result, syntax = ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED, first
        results.append(
            NegotiatedContext(proposed.context_id, proposed.abstract_syntax, result, syntax)
        )
    return tuple(results)


def encode_associate_ac(
    request: AssociationRequest, contexts: Iterable[NegotiatedContext], *, max_length: int
) -> bytes:
    """The A-ASSOCIATE-AC PDU answering ``request`` (PS3.8 9.3.3)."""
    pdu = A_ASSOCIATE_AC()
    # Reserved fields, sent back as received (PS3.8 Table 9-17).
    pdu.reserved_aet = request.called_ae or "ANY-SCP"
    pdu.reserved_aec = request.calling_ae or "ANY-SCU"
    pdu.variable_items.append(_application_context())
    for context in contexts:
        item = PresentationContextItemAC()
        item.presentation_context_id = context.context_id
        item.result_reason = int(context.result)
        syntax = TransferSyntaxSubItem()
        syntax.transfer_syntax_name = UID(context.transfer_syntax or IMPLICIT_VR_LITTLE_ENDIAN)
        item.transfer_syntax_sub_item = [syntax]
        pdu.variable_items.append(item)
    pdu.variable_items.append(_user_information(max_length))
    return bytes(pdu.encode())


def encode_associate_rq(
    *,
    calling_ae: str,
    called_ae: str,
    contexts: Iterable[ProposedContext],
    max_length: int,
) -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2)."""
    pdu = A_ASSOCIATE_RQ()
    pdu.calling_ae_title = calling_ae
    pdu.called_ae_title = called_ae
    pdu.variable_items.append(_application_context())
    for context in contexts:
        item = PresentationContextItemRQ()
        item.presentation_context_id = context.context_id
        abstract = AbstractSyntaxSubItem()
        abstract.abstract_syntax_name = UID(context.abstract_syntax)
        item.abstract_transfer_syntax_sub_items.append(abstract)
        for name in context.transfer_syntaxes:
            syntax = TransferSyntaxSubItem()
            syntax.transfer_syntax_name = UID(name)
            item.abstract_transfer_syntax_sub_items.append(syntax)
        pdu.variable_items.append(item)
    pdu.variable_items.append(_user_information(max_length))
    return bytes(pdu.encode())


def decode_associate_ac(
    body: bytes | memoryview, proposed: Iterable[ProposedContext]
) -> AssociationAccepted:
    """Decode an A-ASSOCIATE-AC body; contexts carry the abstract syntax we proposed.

    Raises:
        ProtocolError: the PDU cannot be decoded.
    """
    abstract = {context.context_id: context.abstract_syntax for context in proposed}
    pdu = A_ASSOCIATE_AC()
    try:
        pdu.decode(with_header(PduType.ASSOCIATE_AC, bytes(body)))
        contexts = tuple(
            NegotiatedContext(
                context_id=int(item.context_id or 0),
                abstract_syntax=abstract.get(int(item.context_id or 0), ""),
                result=int(item.result_reason or 0),
                transfer_syntax=str(item.transfer_syntax or ""),
            )
            for item in pdu.presentation_context
        )
        user = pdu.user_information
        return AssociationAccepted(
            contexts=contexts,
            max_length=int((user.maximum_length if user else None) or 0),
            implementation_class_uid=str((user.implementation_class_uid if user else None) or ""),
        )
    except Exception as exc:  # pynetdicom raises many types for a malformed PDU
        raise ProtocolError(
            f"cannot decode the A-ASSOCIATE-AC: {type(exc).__name__}: {exc}",
            AbortReason.INVALID_PDU_PARAMETER,
        ) from exc


def decode_associate_rj(body: bytes | memoryview) -> Rejection:
    """Decode an A-ASSOCIATE-RJ body (PS3.8 9.3.4)."""
    return Rejection(result=body[1], source=body[2], reason=body[3])


def _application_context() -> ApplicationContextItem:
    item = ApplicationContextItem()
    item.application_context_name = UID(APPLICATION_CONTEXT)
    return item


def _user_information(max_length: int) -> UserInformationItem:
    user = UserInformationItem()
    maximum = MaximumLengthSubItem()
    maximum.maximum_length_received = max_length
    class_uid = ImplementationClassUIDSubItem()
    class_uid.implementation_class_uid = UID(IMPLEMENTATION_CLASS_UID)
    version = ImplementationVersionNameSubItem()
    version.implementation_version_name = IMPLEMENTATION_VERSION_NAME.encode("ascii")
    user.user_data = [maximum, class_uid, version]
    return user
