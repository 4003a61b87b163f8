"""Sign-in rate limiting: per account and per source address, with growing delays.

Each failed sign-in counts against the account name and the source address. After
``free`` failures in a row a key is *held*: until the hold ends every sign-in for it is
refused at once (429, no password checked, so guessing costs the attacker time and the
node no scrypt). Each further failure after a hold doubles the next hold, up to
``longest``. A success clears the account's and the address's count. One audit line per
burst: the caller is told when a key becomes held for the first time since it was clear.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

#: Failures allowed before holds start, per account and per source address.
FREE_PER_ACCOUNT = 5
FREE_PER_ADDRESS = 10
FIRST_HOLD_SECONDS = 1.0
LONGEST_HOLD_SECONDS = 300.0
#: Keys forgotten after this long without a failure (and never more than this many).
FORGET_AFTER_SECONDS = 3600.0
MAX_KEYS = 100_000


@dataclass(slots=True)
class _Count:
    failures: int = 0
    held_until: float = 0.0
    last_failure: float = 0.0
    #: Whether the current burst was already reported (one audit line per burst).
    reported: bool = False


@dataclass(frozen=True, slots=True)
class Hold:
    """A refusal: which key is held, and for how many more seconds."""

    key: str
    seconds: float


class SignInThrottle:
    def __init__(
        self,
        *,
        free_per_account: int = FREE_PER_ACCOUNT,
        free_per_address: int = FREE_PER_ADDRESS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free_per_account = free_per_account
        self.free_per_address = free_per_address
        self.clock = clock
        self._counts: dict[str, _Count] = {}
        self._lock = threading.Lock()

    @staticmethod
    def keys(account: str, address: str) -> tuple[str, str]:
        return f"account:{account}", f"address:{address}"

    def held(self, account: str, address: str) -> Hold | None:
        """The longest hold on this account or address, or None: a sign-in may be tried."""
        now = self.clock()
        longest: Hold | None = None
        with self._lock:
            for key in self.keys(account, address):
                count = self._counts.get(key)
                if count is not None and count.held_until > now:
                    left = count.held_until - now
                    if longest is None or left > longest.seconds:
                        longest = Hold(key, left)
        return longest

    def failed(self, account: str, address: str) -> list[Hold]:
        """Count a failure; returns the holds that start a new burst (to be audited)."""
        now = self.clock()
        started: list[Hold] = []
        account_key, address_key = self.keys(account, address)
        with self._lock:
            self._forget(now)
            for key, free in ((account_key, self.free_per_account),
                              (address_key, self.free_per_address)):  # fmt: skip
                count = self._counts.setdefault(key, _Count())
                count.failures += 1
                count.last_failure = now
                excess = count.failures - free
                if excess < 0:
                    continue
                hold = min(LONGEST_HOLD_SECONDS, FIRST_HOLD_SECONDS * 2.0**excess)
                count.held_until = now + hold
                if not count.reported:
                    count.reported = True
                    started.append(Hold(key, hold))
        return started

    def succeeded(self, account: str, address: str) -> None:
        with self._lock:
            for key in self.keys(account, address):
                self._counts.pop(key, None)

    def _forget(self, now: float) -> None:
        if len(self._counts) < 1000:
            return
        stale = [
            k
            for k, c in self._counts.items()
            if now - c.last_failure > FORGET_AFTER_SECONDS and c.held_until < now
        ]
        for key in stale:
            del self._counts[key]
        if len(self._counts) >= MAX_KEYS:
            self._counts.clear()
