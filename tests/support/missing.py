"""What a test does when something it needs is missing: skip locally, fail in CI.

A developer without Orthanc, PostgreSQL or the shared test material still gets a green
run of what they can run, with the reason for each skip; CI (``CI`` set, as every CI
service sets it) fails instead, so that it can never pass by skipping.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """Whether the tests run in CI, where nothing may be skipped for being missing."""
    return bool(os.environ.get("CI"))


def skip_locally_fail_in_ci(reason: str) -> NoReturn:
    """Skip the calling test with ``reason``, or fail it where ``CI`` is set."""
    if in_ci():
        pytest.fail(reason)
    pytest.skip(reason)
