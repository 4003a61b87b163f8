"""A background thread that runs one function every so often, and survives its failures."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)


class Periodic:
    """Call ``function`` every ``interval`` seconds in a daemon thread until stopped.

    An exception is logged with its traceback and the next round runs as usual: one bad
    round (a ledger hiccup, a bug on one item) must not stop the node's housekeeping.
    """

    def __init__(self, name: str, interval: float, function: Callable[[], object]) -> None:
        self.name = name
        self.interval = interval
        self._function = function
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._function()
            except Exception:
                logger.exception(
                    "%s round failed; trying again in %.1f s", self.name, self.interval
                )
