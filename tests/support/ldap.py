"""A throw-away OpenLDAP server (Debian's slapd, mdb backend) for the directory sign-in
tests: two people, two groups and one person in no group, loaded with ldapadd."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from tests.support.peers import LOCALHOST, _Peer, free_port, tool_or_skip
from tests.support.tls import Identity

BASE_DN = "dc=example,dc=org"
ROOT_DN = f"cn=admin,{BASE_DN}"
ROOT_PASSWORD = "root-secret-0123"  # noqa: S105 (a throw-away test server)
PEOPLE = f"ou=people,{BASE_DN}"
GROUPS = f"ou=groups,{BASE_DN}"
ADMINS_GROUP = f"cn=pacs-admins,{GROUPS}"
READERS_GROUP = f"cn=pacs-readers,{GROUPS}"
#: user -> password; carol is in no group.
PASSWORDS = {"dana": "dana-password", "erin": "erin-password", "carol": "carol-password"}

_SCHEMAS = ("core", "cosine", "inetorgperson")
_MODULES = Path("/usr/lib/ldap")


def _person(uid: str) -> str:
    return (
        f"dn: uid={uid},{PEOPLE}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\n"
        f"sn: {uid}\nuserPassword: {PASSWORDS[uid]}\n"
    )


def _group(dn: str, member: str) -> str:
    cn = dn.split(",", maxsplit=1)[0].split("=")[1]
    return f"dn: {dn}\nobjectClass: groupOfNames\ncn: {cn}\nmember: uid={member},{PEOPLE}\n"


ENTRIES = "\n".join(
    [
        f"dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\no: example\n"
        "dc: example\n",
        f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n",
        f"dn: {GROUPS}\nobjectClass: organizationalUnit\nou: groups\n",
        *(_person(uid) for uid in PASSWORDS),
        _group(ADMINS_GROUP, "dana"),
        _group(READERS_GROUP, "erin"),
    ]
)


class Slapd(_Peer):
    """slapd on 127.0.0.1 with a slapd.conf and an mdb database in its folder."""

    name = "slapd"
    start_timeout = 20.0

    def __init__(self, workdir: Path, *, tls: Identity | None = None) -> None:
        super().__init__(workdir)
        #: A server certificate and key for StartTLS (the CA is not needed by slapd).
        self.tls = tls
        self.binary = tool_or_skip("slapd")
        self.ldapadd = tool_or_skip("ldapadd")
        self.port = 0

    def _choose_ports(self) -> None:
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"ldap://{LOCALHOST}:{self.port}"

    def describe(self) -> str:
        return f"slapd on {self.url}"

    def _before_start(self) -> None:
        data = self.workdir / "db"
        data.mkdir(exist_ok=True)
        tls = (
            f"TLSCertificateFile {self.tls.certificate}\n"
            f"TLSCertificateKeyFile {self.tls.private_key}\n"
            if self.tls
            else ""
        )
        schemas = "".join(f"include /etc/ldap/schema/{s}.schema\n" for s in _SCHEMAS)
        (self.workdir / "slapd.conf").write_text(
            f"{schemas}"
            f"pidfile {self.workdir / 'slapd.pid'}\n"
            f"modulepath {_MODULES}\nmoduleload back_mdb\n"
            f"{tls}"
            "access to attrs=userPassword by anonymous auth by * none\n"
            "access to * by users read by * none\n"
            f'database mdb\nsuffix "{BASE_DN}"\nrootdn "{ROOT_DN}"\nrootpw {ROOT_PASSWORD}\n'
            f"directory {data}\nmaxsize 10485760\n"
        )

    def _argv(self) -> list[str]:
        # -d 0: stay in the foreground (the fixture owns the process), no debug output.
        return [
            os.fspath(self.binary),
            "-f", os.fspath(self.workdir / "slapd.conf"),
            "-h", f"{self.url}/",
            "-d", "0",
        ]  # fmt: skip

    def _ready(self) -> bool:
        try:
            with socket.create_connection((LOCALHOST, self.port), timeout=1):
                return True
        except OSError:
            return False

    def load(self, ldif: str = ENTRIES) -> None:
        """Add entries as the root DN, with ldapadd."""
        subprocess.run(
            [os.fspath(self.ldapadd), "-x", "-H", self.url, "-D", ROOT_DN, "-w", ROOT_PASSWORD],
            input=ldif.encode(),
            check=True,
            capture_output=True,
            timeout=30,
        )
