"""Who may associate with the node: the calling AE title allow-list (``node.allowed_callers``).

An empty list lets anyone in. Otherwise the calling AE title must be listed and, when its
entry names ``hosts``, the connection must come from one of those addresses or networks.
Anyone else is rejected at association with A-ASSOCIATE-RJ "calling AE title not
recognized" (PS3.8 9.3.4): DICOM has no reason code for a wrong address, and telling a
stranger which of the two was wrong would help it guess.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from core.settings import AllowedCaller

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    #: Why not (for the log), empty when allowed.
    reason: str = ""


class AccessPolicy:
    """Decides whether a calling AE title from an address may associate."""

    def __init__(self, callers: Sequence[AllowedCaller]) -> None:
        self._open = not callers
        self._networks: dict[str, list[_Network] | None] = {}
        for caller in callers:
            networks = [ipaddress.ip_network(host, strict=False) for host in caller.hosts]
            known = self._networks.get(caller.ae_title, [])
            # An entry without hosts allows any address, whatever other entries say.
            if not networks or known is None:
                self._networks[caller.ae_title] = None
            else:
                self._networks[caller.ae_title] = [*known, *networks]

    def check(self, calling_ae: str, address: str) -> Verdict:
        if self._open:
            return Verdict(True)
        if calling_ae not in self._networks:
            return Verdict(False, f"calling AE title {calling_ae!r} is not in node.allowed_callers")
        networks = self._networks[calling_ae]
        if networks is None:
            return Verdict(True)
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return Verdict(False, f"{calling_ae!r} calls from {address}, not an IP address")
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in network for network in networks):
            return Verdict(True)
        return Verdict(
            False, f"calling AE title {calling_ae!r} is not allowed from address {address}"
        )
