"""The three kinds of failure every process distinguishes.

A job or a received instance ends in one of three ways when something goes wrong:

* :class:`TransientError` -- a peer is briefly away (broker, PACS, CUDA). Retried with
  backoff, a bounded number of times.
* :class:`InvalidInputError` -- the data cannot be processed as it is (malformed DICOM,
  missing slices, wrong modality). Never retried; quarantined with a reason.
* anything else is a bug: logged once with its traceback, quarantined, re-raised.

:class:`ConfigError` is raised at start-up and lists every problem at once.
"""

from __future__ import annotations

from collections.abc import Sequence


class PacsAiError(Exception):
    """Base class of the errors pacs-ai raises on purpose."""


class ConfigError(PacsAiError):
    """The configuration (file, environment or model package) is not valid.

    ``problems`` holds one line per problem, each naming the key it is about.
    """

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        super().__init__(f"{source}: {count} {noun}:\n{lines}")


class TransientError(PacsAiError):
    """A peer or resource is temporarily unavailable; the operation may be retried."""


class InvalidInputError(PacsAiError):
    """The input cannot be processed as it is; retrying will not help.

    ``stage`` names where it was detected (``receive``, ``volume``, ``model``,
    ``write``, ``deliver``) so that the quarantine record says where to look.
    """

    def __init__(self, message: str, *, stage: str) -> None:
        self.stage = stage
        super().__init__(message)


class DeliveryRejectedError(InvalidInputError):
    """A destination refused an object permanently (for example SOP class not supported)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message, stage="deliver")
