"""The DICOM Conformance Statement (PS3.2), generated from the code's own tables.

Every list a reader checks before connecting anything comes from the module that acts
on it, so the statement cannot drift from the code: the SOP classes and transfer
syntaxes the node accepts (:data:`dicom_node.acceptor.ABSTRACT_SYNTAXES`,
:data:`dicom_node.encoding.KNOWN_TRANSFER_SYNTAXES`), the statuses it answers
(:class:`dicom_node.status.Status`), the association limits (the defaults of
:class:`core.settings.NodeSettings`), what the SCU proposes (:mod:`dicom_node.scu`), the
objects the writers create (:data:`RESULT_OBJECTS`, checked against written objects by
``tests/unit/test_conformance_statement.py``) and every coded term they use
(:data:`inference.codes.ALL_CODES`). The sections follow PS3.2 Annex A's outline.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pydicom.uid
from pydicom.uid import UID
from pynetdicom import sop_class

import inference.writers.pdf
import inference.writers.sc
import inference.writers.seg
import inference.writers.sr
import node_services.delivery
import node_services.stow
from core.settings import NodeSettings
from dicom_node import scu
from dicom_node.acceptor import ABSTRACT_SYNTAXES, MAX_COMMAND_SET_BYTES, VERIFICATION
from dicom_node.encoding import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    KNOWN_TRANSFER_SYNTAXES,
)
from dicom_node.status import Status
from dicom_node.ul.negotiation import APPLICATION_CONTEXT, MIN_PEER_MAX_LENGTH
from inference import codes
from inference.results import COMPRESSION_SYNTAXES, choose_compression
from inference.writers import MANUFACTURER, pacs_ai_version
from node_services.retrieve import dimse
from pacs_ai.docs_gen.markdown import cell, docstring, table
from pacs_ai.docs_gen.schema import class_comments, module_comments, sections

#: Frames large enough for every encoder (JPEG 2000 refuses very small ones).
_LARGE_FRAME = 512
#: Template names (PS3.16) of the TIDs the writers cite.
TEMPLATE_NAMES = {
    "300": "Measurement",
    "1004": "Device Observer Identifying Attributes",
    "1410": "Planar ROI Measurements and Qualitative Evaluations",
    "1411": "Volumetric ROI Measurements and Qualitative Evaluations",
    "1419": "ROI Measurements",
    "1500": "Measurement Report",
    "1501": "Measurement and Qualitative Evaluation Group",
    "1600": "Image Library",
    "1601": "Image Library Entry",
    "4019": "Algorithm Identification",
    "4108": "Tracking Identifier",
}
#: The writer modules, whose docstrings describe each object, with the object's name.
_WRITER_MODULES = {
    inference.writers.seg: "Segmentation",
    inference.writers.sr: "Structured Report",
    inference.writers.sc: "Secondary Capture",
    inference.writers.pdf: "Encapsulated PDF",
}


@dataclass(frozen=True)
class ResultObject:
    """One kind of object pacs-ai creates."""

    #: The output profile's word for it and the variant (``seg`` / ``binary``).
    kind: str
    variant: str
    #: SOP class, by its keyword (pydicom's or pynetdicom's dictionary).
    sop_class_keyword: str
    modality: str
    #: The encoding :func:`inference.results.choose_compression` is asked about; ``""``:
    #: never compressed.
    encoding: str
    #: What it holds, in one line; the writer module's docstring gives the detail.
    summary: str

    @property
    def sop_class_uid(self) -> UID:
        return uid_of(self.sop_class_keyword)

    @property
    def transfer_syntaxes(self) -> tuple[UID, ...]:
        """Explicit VR Little Endian, then every compression this kind may be written in."""
        syntaxes = [pydicom.uid.ExplicitVRLittleEndian]
        if self.encoding:
            for compression, syntax in COMPRESSION_SYNTAXES.items():
                chosen = choose_compression(
                    self.encoding, (compression,), rows=_LARGE_FRAME, columns=_LARGE_FRAME
                )
                if chosen is not None:
                    syntaxes.append(syntax)
        return tuple(syntaxes)


#: Every object pacs-ai writes (``destinations.<name>.outputs`` chooses among them).
RESULT_OBJECTS = (
    ResultObject(
        "seg",
        "binary",
        "SegmentationStorage",
        "SEG",
        "binary",
        "one bit per pixel, a frame per segment and source slice (`outputs.seg: binary`, "
        "the default)",
    ),
    ResultObject(
        "seg",
        "labelmap",
        "LabelMapSegmentationStorage",
        "SEG",
        "labelmap",
        "a frame per source slice whose pixels are segment numbers (`outputs.seg: labelmap`)",
    ),
    ResultObject(
        "sr",
        "",
        "Comprehensive3DSRStorage",
        "SR",
        "",
        "TID 1500 Measurement Report: per finding volume, attenuation, outline and area, or "
        "per class the probability (`outputs.sr`)",
    ),
    ResultObject(
        "sc",
        "",
        "SecondaryCaptureImageStorage",
        "OT",
        "sc",
        "RGB images of source slices with the outlines burned in and a NOT FOR DIAGNOSIS "
        "banner (`outputs.sc`)",
    ),
    ResultObject(
        "pdf",
        "",
        "EncapsulatedPDFStorage",
        "DOC",
        "",
        "a one-page PDF summary: model, findings, key image (`outputs.pdf`)",
    ),
)


def uid_of(keyword: str) -> UID:
    """The UID of a SOP class or transfer syntax keyword (pydicom's, else pynetdicom's)."""
    found = getattr(pydicom.uid, keyword, None) or getattr(sop_class, keyword)
    return UID(str(found))


def uid_name(uid: str) -> str:
    """A UID's name: pydicom's dictionary, else pynetdicom's SOP class keyword in words."""
    name = UID(uid).name
    if name != uid:
        return name
    keyword = _pynetdicom_keywords().get(uid, "")
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", keyword) or uid


def _pynetdicom_keywords() -> dict[str, str]:
    return {
        str(value): name
        for name, value in vars(sop_class).items()
        if isinstance(value, str) and name[:1].isupper() and value.startswith("1.2.840.10008")
    }


def statement_page() -> str:
    """``reference/conformance-statement.md``."""
    node = NodeSettings()
    version = pacs_ai_version()
    return "\n".join(
        [
            "# DICOM Conformance Statement\n",
            '!!! note "Generated"\n'
            "    Generated from the code's own tables each time the site is built, and "
            "compared with the code by `tests/unit/test_conformance_statement.py`.\n",
            table(
                ["", ""],
                [
                    ["Manufacturer", MANUFACTURER],
                    ["Product", "pacs-ai (DICOM node with AI workers)"],
                    ["Version", version],
                    ["Implementation Class UID", f"`{IMPLEMENTATION_CLASS_UID}`"],
                    ["Implementation Version Name", f"`{IMPLEMENTATION_VERSION_NAME}`"],
                ],
            ),
            _overview(),
            "## 2 Table of Contents\n\nThe contents of this page are listed beside it (and "
            "in the site's navigation).\n",
            _introduction(version),
            _networking(node),
            "## 5 Media Interchange\n\npacs-ai reads and writes no DICOM media (PS3.10 "
            "file-sets, DICOMDIR). Its spool holds PS3.10 files, which is not media "
            "interchange.\n",
            _character_sets(),
            _security(node),
            _annexes(),
        ]
    )


# --- 1-3 -------------------------------------------------------------------------------


def _overview() -> str:
    return "\n".join(
        [
            "## 1 Overview\n",
            "pacs-ai receives images over DICOM (C-STORE), runs AI models on complete "
            "series, and sends the results back as DICOM objects (Segmentation, "
            "Comprehensive 3D SR, Secondary Capture, Encapsulated PDF) with C-STORE or "
            "DICOMweb STOW-RS. It also forwards received instances unchanged when a route "
            "says so, and pulls studies already in a PACS (C-FIND, then C-GET or C-MOVE; "
            "QIDO-RS and WADO-RS) to run models on them.\n",
            table(
                ["Network service", "User of service (SCU)", "Provider of service (SCP)"],
                [
                    ["Verification", "No", "Yes"],
                    ["Storage (every storage SOP class below)", "Yes", "Yes"],
                    [
                        "Query/Retrieve, Study Root: FIND, GET, MOVE (pulling studies from a PACS)",
                        "Yes",
                        "No",
                    ],
                    ["Worklist, MPPS, Storage Commitment", "No", "No"],
                    [
                        "STOW-RS (DICOMweb, PS3.18 10.5)",
                        "Yes (user agent)",
                        "Yes (origin server, for pacs-ai's own workers only)",
                    ],
                    [
                        "WADO-RS retrieve (DICOMweb, PS3.18 10.4)",
                        "Yes (pacs-ai's workers; pulling from a DICOMweb PACS, found by QIDO-RS)",
                        "Yes (origin server, for pacs-ai's own workers only)",
                    ],
                ],
            ),
            "Media services: none.\n",
        ]
    )


def _introduction(version: str) -> str:
    return "\n".join(
        [
            "## 3 Introduction\n",
            "### 3.1 Revision history\n",
            f"This statement describes pacs-ai {version}; it is regenerated with every "
            "release ([changelog](../changelog.md)).\n",
            "### 3.2 Audience and remarks\n",
            "Integration teams connecting scanners, PACS and viewers to pacs-ai. pacs-ai "
            "is not a medical device: its results are marked as AI results and are not "
            "for diagnosis. Conformance does not guarantee interoperability: test the "
            "integration with your own PACS and viewers.\n",
            "### 3.3 Terms and references\n",
            "AE (Application Entity), SCP/SCU (Service Class Provider/User), PDU "
            "(Protocol Data Unit), TID (template identifier, PS3.16). References: DICOM "
            "PS3.2 (conformance), PS3.3 (IODs), PS3.4 (service classes), PS3.5 (encoding), "
            "PS3.7 (DIMSE), PS3.8 (network), PS3.15 (security), PS3.16 (templates and "
            "codes), PS3.18 (DICOMweb).\n",
        ]
    )


# --- 4 Networking ----------------------------------------------------------------------


def _networking(node: NodeSettings) -> str:
    return "\n".join(
        [
            "## 4 Networking\n",
            "### 4.1 Implementation model\n",
            "One Application Entity, the node (`pacs-ai serve`, AE title "
            f"`{node.ae_title}` by default, `node.ae_title`), is the Storage SCP and "
            "Verification SCP and, for delivery, the Storage SCU (calling AE title = "
            "`node.ae_title`). Workers never speak DIMSE: they read the node's spool and "
            "hand results to the node's outbox, or, on another machine, retrieve the "
            "series from the node with WADO-RS and hand results back with STOW-RS "
            "([section 4.2.4](#dicomweb-for-workers)).\n",
            "```text\n"
            "modality / PACS --C-ECHO, C-STORE--> [pacs-ai node: Storage SCP] --> spool\n"
            "  spool --> completion --> routing --> workers --> result objects --> outbox\n"
            "  outbox --> [pacs-ai node: Storage SCU] --C-STORE--> PACS / viewer\n"
            "  outbox --> [STOW-RS user agent] --HTTP POST--> DICOMweb server\n"
            "```\n",
            "Sequencing: an instance is answered only after it is on disk. A series is "
            "processed after it is complete (a quiet period, or association release, see "
            "`completion` in the [configuration](configuration.md#completion)); results "
            "are sent on new associations initiated by the node, never on the sender's "
            "association.\n",
            _scp(node),
            _scu(),
            _stow(),
            _dicomweb_for_workers(),
            _query_retrieve(),
            "### 4.3 Network interfaces\n",
            "TCP/IP over whatever interfaces the host has; IPv4 and IPv6 (`node.host`). "
            "DICOM TLS is described in [section 7](#7-security). Sockets use "
            "`TCP_NODELAY`.\n",
            _configuration(),
        ]
    )


def _scp(node: NodeSettings) -> str:
    sop_rows = [
        [uid_name(uid), f"`{uid}`"]
        for uid in sorted(ABSTRACT_SYNTAXES, key=lambda u: (uid_name(u), u))
    ]
    syntax_rows = [
        [uid_name(uid), f"`{uid}`"]
        for uid in sorted(KNOWN_TRANSFER_SYNTAXES, key=lambda u: [int(p) for p in u.split(".")])
    ]
    comments = class_comments(Status)
    status_rows = [
        [f"0x{s.value:04X}", s.name.replace("_", " ").title(), cell(comments.get(s.name, ""))]
        for s in Status
    ]
    return "\n".join(
        [
            "### 4.2 AE specifications\n",
            "#### 4.2.1 Storage SCP and Verification SCP {#scp}\n",
            "##### SOP classes {#scp-sop-classes}\n",
            f"The node accepts the Verification SOP Class (`{VERIFICATION}`) and every "
            f"storage SOP class below ({len(ABSTRACT_SYNTAXES) - 1} of them), as SCP.\n",
            table(["SOP class", "UID"], sop_rows),
            "##### Association policies\n",
            table(["", ""], _association_rows(node)),
            "##### Association acceptance policy\n",
            f"An association is rejected (A-ASSOCIATE-RJ, PS3.8 9.3.4) when the called AE "
            f"title is neither `node.ae_title` nor one of `node.ae_title_aliases` "
            "(permanent, called AE title not recognized), when `node.allowed_callers` is "
            "set and does not list the calling AE title from that address (permanent, "
            "calling AE title not recognized), for an unknown application context or "
            "protocol version, and when the node is at its association limit (transient). "
            "Each proposed presentation context is accepted when its abstract syntax is "
            "listed above, with the **first** transfer syntax of the proposal that is "
            "listed below (the proposer's order of preference); otherwise it is refused "
            "(abstract syntax or transfer syntaxes not supported). Role: SCP. Time limits: "
            f"`node.acse_timeout_seconds` ({node.acse_timeout_seconds:g} s) for TLS "
            "handshake and request together, `node.dimse_timeout_seconds` "
            f"({node.dimse_timeout_seconds:g} s) inside a message, "
            f"`node.network_timeout_seconds` ({node.network_timeout_seconds:g} s) idle "
            "(then A-ABORT).\n",
            "##### Transfer syntaxes accepted {#scp-transfer-syntaxes}\n",
            "Instances are stored **as received**, never decoded or transcoded; the data "
            "set is checked for structure while it streams in.\n",
            table(["Transfer syntax", "UID"], syntax_rows),
            "##### SOP specific conformance: C-STORE and C-ECHO {#scp-statuses}\n",
            "Storage level 2 (full): every element is stored, the bytes as received; "
            "the File Meta Information is the node's (Source Application Entity Title = "
            "the calling AE). Success is answered only after the instance is on disk "
            "(fsync). Instances answered with a failure are kept in quarantine with the "
            "reason. No Storage Commitment. C-ECHO is answered Success, also while the "
            "disk is full. DIMSE statuses (`dicom_node/status.py`); when each is sent is "
            "listed in [How it works](../how-it-works.md#what-the-node-answers):\n",
            table(["Status", "Name", "Meaning"], status_rows),
        ]
    )


def _association_rows(node: NodeSettings) -> list[list[str]]:
    per_ae = node.max_associations_per_ae or "no limit of its own"
    return [
        ["Application Context Name", f"`{APPLICATION_CONTEXT}`"],
        ["Maximum PDU size offered", f"{node.max_pdu_length} bytes (`node.max_pdu_length`)"],
        ["Smallest maximum PDU accepted", f"{MIN_PEER_MAX_LENGTH} bytes (smaller: rejected)"],
        [
            "Associations at once",
            f"{node.max_associations} (`node.max_associations`); beyond it A-ASSOCIATE-RJ "
            "transient, local limit exceeded",
        ],
        ["Associations of one calling AE", f"{per_ae} (`node.max_associations_per_ae`)"],
        [
            "Connections still negotiating",
            f"{node.max_pending_connections}, {node.max_pending_per_address} per address "
            "(closed at accept beyond)",
        ],
        ["Asynchronous operations window", "not negotiated: one operation at a time"],
        [
            "Role selection, extended negotiation, user identity",
            "not supported: left out of the answer (PS3.7 D.3.3 defaults apply)",
        ],
        ["Largest command set", f"{MAX_COMMAND_SET_BYTES} bytes"],
        ["Largest instance", f"{node.max_instance_bytes} bytes (`node.max_instance_bytes`)"],
        [
            "Implementation Class UID / Version Name",
            f"`{IMPLEMENTATION_CLASS_UID}` / `{IMPLEMENTATION_VERSION_NAME}`",
        ],
    ]


def _scu() -> str:
    native = ", ".join(uid_name(str(uid)) for uid in scu._NATIVE_LITTLE_ENDIAN)
    rows = [
        [f"{uid_name(obj.sop_class_uid)} ({obj.variant or obj.kind})", f"`{obj.sop_class_uid}`"]
        for obj in RESULT_OBJECTS
    ]
    rows.append(
        ["Any storage SOP class received (forwarding, `forward_originals_to`)", "as received"]
    )
    return "\n".join(
        [
            "#### 4.2.2 Storage SCU {#scu}\n",
            "##### SOP classes {#scu-sop-classes}\n",
            table(["SOP class", "UID"], _unique(rows)),
            "##### Association initiation policy\n",
            "The node's delivery service (the outbox) opens one association per "
            "destination and batch of due items, with `node.ae_title` as calling AE title "
            "and the destination's `ae_title` as called AE title; more than one only "
            f"beyond {scu.MAX_CONTEXTS_PER_ASSOCIATION} presentation contexts. Each file "
            "gets a presentation context offering **its own transfer syntax only**, so it "
            "is sent exactly as stored; a file in a native or deflated little endian "
            f"syntax gets a second context offering {native} (converted in memory when "
            "the peer refuses the first). Compressed files are never transcoded. Maximum "
            "PDU received: no limit; files are fragmented to the peer's maximum. Time "
            "limit: the destination's `timeout_seconds` for connecting, negotiating and "
            "each response.\n",
            "##### SOP specific conformance: status handling {#scu-statuses}\n",
            "Warnings are 0x0001, 0x0107, 0x0116 and 0xBxxx; transient failures are "
            "0xA7xx (Out of Resources), 0x0110 and 0x0213. From the delivery service "
            "(`node_services/delivery.py`):\n",
            docstring(node_services.delivery.__doc__),
        ]
    )


def _stow() -> str:
    return "\n".join(
        [
            "#### 4.2.3 STOW-RS user agent {#stow}\n",
            docstring(node_services.stow.__doc__),
            "Used for destinations with `type: dicomweb`: HTTPS with certificate checks "
            "(`verify_tls`), bearer token or HTTP basic authentication. The same objects "
            "and transfer syntaxes as the Storage SCU. HTTP 408, 425, 429 and 5xx are "
            "retried like transient DIMSE failures; other 4xx answers are permanent.\n",
        ]
    )


def _dicomweb_for_workers() -> str:
    return "\n".join(
        [
            "#### 4.2.4 DICOMweb origin server for pacs-ai's workers {#dicomweb-for-workers}\n",
            "On the monitor's HTTP(S) port, under `/dicomweb`, for bearer tokens of the "
            "`worker` role only (not a general DICOMweb service): WADO-RS retrieval of a "
            "series or an instance the node holds (`multipart/related; "
            'type="application/dicom"`, the stored bytes in their received transfer '
            "syntax; `transfer-syntax=*`), and STOW-RS of a running job's result objects, "
            "which the node then delivers as above. Answers: 200, 202 (some objects "
            "refused), 409 (none stored, or the job is not running), 401/403, 404, 406, "
            "413, 415, 507 (disk below `node.min_free_disk_mb`). See "
            "[remote workers](../remote-workers.md).\n",
        ]
    )


def _query_retrieve() -> str:
    """4.2.5: what ``pacs-ai run --from`` and ``pacs-ai backfill`` propose, from the
    contexts :mod:`node_services.retrieve.dimse` requests."""
    models = [
        [what, uid_name(uid), f"`{uid}`", ", ".join(uid_name(ts) for ts in syntaxes)]
        for what, contexts in (
            ("C-FIND", dimse.FIND_CONTEXTS),
            ("C-GET", dimse.GET_CONTEXTS[:1]),
            ("C-MOVE", dimse.MOVE_CONTEXTS),
        )
        for uid, syntaxes in contexts
    ]
    storage = [
        [uid_name(uid), f"`{uid}`"]
        for uid in sorted(dimse.GET_SCP_ROLES, key=lambda u: (uid_name(u), u))
    ]
    syntaxes = [[uid_name(ts), f"`{ts}`"] for ts in dimse.ANY_TRANSFER_SYNTAX]
    return "\n".join(
        [
            "#### 4.2.5 Query/Retrieve SCU (pulling studies from a PACS) {#qr-scu}\n",
            "`pacs-ai run --from` and `pacs-ai backfill` (and runs started on the "
            "dashboard) find studies and series in a destination with a `query_retrieve` "
            "role by C-FIND (STUDY, then SERIES level) and retrieve each series by C-GET, "
            "or by C-MOVE to the node's own AE title (`query_retrieve.move_destination`, "
            "else `node.ae_title`) where `query_retrieve.retrieve: move`; the node's "
            "Storage SCP above receives what a C-MOVE sends. Calling AE title: "
            "`node.ae_title`. One association per "
            "C-FIND and per series retrieved; each command waits for its final response "
            "(`query_retrieve.timeout_seconds`).\n",
            "##### SOP classes {#qr-scu-sop-classes}\n",
            table(["Operation", "SOP class", "UID", "Transfer syntaxes"], models),
            "##### Storage SCP role during C-GET {#qr-get-storage-scp}\n",
            "A C-GET association also proposes these storage SOP classes, each with SCP/SCU "
            "role selection (PS3.7 D.3.3.4: the SCP role), offering every transfer syntax "
            "below, so that the PACS sends each instance as it holds it; it is filed "
            "byte for byte, never transcoded. An instance that cannot be filed is "
            "answered 0xC2xx (cannot understand) or 0xA7xx (out of resources).\n",
            table(["SOP class", "UID"], storage),
            "##### Transfer syntaxes accepted during C-GET {#qr-get-transfer-syntaxes}\n",
            table(["Transfer syntax", "UID"], syntaxes),
            "##### Status handling\n",
            "Pending answers are read on. Success ends the command. 0xB000 (sub-operations "
            "failed) and any other failure status end the retrieval of that study as "
            "FAILED with the status (or the counts) in its reason; 0xA801 (move "
            "destination unknown) says which AE title to declare. A FAILED study is "
            "pulled again when its retrieval resumes, a bounded number of times. An "
            "association rejected, aborted or timed out stops the retrieval, to be "
            "resumed ([pulling from a PACS](../pull-from-pacs.md)).\n",
        ]
    )


def _configuration() -> str:
    node_keys = [
        key
        for section in sections(NodeSettings)
        for key in section.keys
        if not key.path.startswith("tls") and not key.path.startswith("allowed_callers")
    ]
    return "\n".join(
        [
            "### 4.4 Configuration\n",
            "Every value below is a setting of `node` in the configuration file "
            "([reference](configuration.md#node)); the defaults are shown. The registered "
            "DICOM ports are 104 and, for DICOM TLS, 2762 (`node.tls.port`).\n",
            table(
                ["setting", "default", "meaning"],
                [[f"`node.{k.path}`", k.default, k.description] for k in node_keys],
            ),
        ]
    )


# --- 6, 7 ----------------------------------------------------------------------------


def _character_sets() -> str:
    return (
        "## 6 Support of Character Sets\n\n"
        "Received instances are stored unchanged, whatever their Specific Character Set "
        "(0008,0005). pacs-ai reads only UIDs and a few coded attributes to file and route "
        "them; routing rules on text attributes compare values as pydicom decodes them "
        "with the instance's own character set (every defined term of PS3.3 C.12.1.1.2, "
        "ISO 2022 extensions included).\n\n"
        "Created objects copy Patient and Study attributes from their source series and "
        "carry the source's Specific Character Set (absent: the default repertoire, "
        "ISO-IR 6). Text pacs-ai writes itself (descriptions, coded meanings) is ASCII; "
        "model and label names are written as their manifest gives them. The PDF summary "
        "prints WinAnsi characters only and no patient data.\n"
    )


def _security(node: NodeSettings) -> str:
    return (
        "## 7 Security\n\n"
        "### 7.1 Security profiles\n\n"
        "DICOM TLS (PS3.15 B.1, Basic TLS Secure Transport Connection Profile, with the "
        "BCP 195 requirements of PS3.15 B.9-B.11: TLS 1.2 or later, the TLS library's "
        "modern cipher suites) for the Storage SCP (`node.tls`, with client certificates "
        "required by default) and for each Storage SCU destination (`destinations.<name>."
        "tls`, the peer's certificate always verified, its host name optionally). No "
        "audit trail messages (PS3.15 A.5, ATNA) are sent; operator actions are audited "
        "in the ledger.\n\n"
        "### 7.2 Association level security\n\n"
        "Calling AE titles are checked against `node.allowed_callers`, optionally tied to "
        "source addresses and networks; the called AE title must be the node's "
        f"(`{node.ae_title}` by default) or an alias. AE titles and UIDs are matched whole. "
        "See [Security hardening](../security.md).\n\n"
        "### 7.3 Application level security\n\n"
        "The monitor (dashboard, JSON API, metrics) is not a DICOM service: users, roles, "
        "tokens and LDAP are described in [Security hardening](../security.md).\n"
    )


# --- 8 Annexes ------------------------------------------------------------------------


def _annexes() -> str:
    object_rows = [
        [
            f"{uid_name(obj.sop_class_uid)}",
            f"`{obj.sop_class_uid}`",
            obj.modality,
            ", ".join(f"{uid_name(ts)} (`{ts}`)" for ts in obj.transfer_syntaxes),
            cell(obj.summary),
        ]
        for obj in RESULT_OBJECTS
    ]
    parts = [
        "## 8 Annexes\n",
        "### 8.1 IOD contents: created SOP instances {#created-objects}\n",
        "Which objects a destination receives, and in which transfer syntax, is its "
        "output profile (`destinations.<name>.outputs`); transfer syntaxes beyond "
        "Explicit VR Little Endian are used only where the profile lists them "
        "(`compression`).\n",
        table(["SOP class", "UID", "Modality", "Transfer syntaxes", "Content"], object_rows),
        "Every created object carries Manufacturer "
        f"`{MANUFACTURER}`, Manufacturer's Model Name (the model's name), Software "
        "Versions (`pacs-ai <version>` and `<model id> <model version>`), Device Serial "
        "Number (the model's Device Observer UID), a Contributing Equipment item (Purpose "
        "of Reference *Processing Equipment*; highdicom adds one naming itself, and the "
        "source's equipment is kept), a deterministic Series Number and a Series "
        "Description naming the model and the source series, and SOP Instance UIDs "
        "derived from (source series, model, version, object kind), so that a re-run "
        "replaces rather than duplicates. Patient and Study modules are copied from the "
        "source. Details of each object, from the writers' own documentation:\n",
    ]
    for module, title in _WRITER_MODULES.items():
        parts.append(f"#### {title}\n")
        parts.append(docstring(module.__doc__))
    parts.extend(
        [
            "### 8.2 Data dictionary of private attributes\n\nNone: pacs-ai writes no "
            "private attributes.\n",
            "### 8.3 Coded terminology and templates {#coded-terms}\n",
            "#### Templates\n",
            table(
                ["TID", "Name"],
                [[f"TID {t}", TEMPLATE_NAMES.get(t, "(PS3.16)")] for t in templates_used()],
            ),
            "#### Coded terms pacs-ai writes {#codes}\n",
            "From `inference/codes.py`. Besides these, the template structure's own "
            "concept names (written by highdicom) and the codes each model package "
            "declares (segment category and type, algorithm family, class findings: see "
            "the [model package reference](model-package.md)).\n",
            table(["Name", "Code value", "Scheme", "Code meaning", "Use"], _code_rows()),
            "### 8.4 Grayscale image consistency\n\nNot supported (no GSPS, no "
            "Grayscale Standard Display Function calibration).\n",
            "### 8.5 Standard extended, specialized and private SOP classes\n\nNone.\n",
            "### 8.6 Private transfer syntaxes\n\nNone.\n",
        ]
    )
    return "\n".join(parts)


def templates_used() -> list[str]:
    """The TIDs the writer modules cite, in numeric order."""
    found: set[str] = set()
    for module in _WRITER_MODULES:
        source = Path(module.__file__ or "").read_text(encoding="utf-8")
        found.update(re.findall(r"TID (\d+)", source))
    return sorted(found, key=int)


def _code_rows() -> list[list[str]]:
    comments = module_comments(codes)
    names = {id(value): name for name, value in vars(codes).items() if not name.startswith("_")}
    rows = []
    for code in codes.ALL_CODES:
        name = names.get(id(code), "")
        rows.append(
            [
                f"`{name}`",
                f"`{code.value}`",
                code.scheme_designator,
                code.meaning,
                cell(comments.get(name, "")),
            ]
        )
    return rows


def _unique(rows: Iterable[list[str]]) -> list[list[str]]:
    seen: set[str] = set()
    kept = []
    for row in rows:
        if row[1] not in seen:
            seen.add(row[1])
            kept.append(row)
    return kept
