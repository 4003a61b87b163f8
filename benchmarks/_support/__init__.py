"""What the benchmarks and the tests share: real peers and test material.

The benchmarks import nothing from ``tests/``; the tests import these through
``tests/support`` (which re-exports them), so that each exists once. Test material is
made here (a synthetic head from nilearn's MNI template, random networks and their
packages), never downloaded.

Whatever is missing (a program, a development dependency) raises
:class:`MissingMaterialError` with how to get it; ``tests/conftest.py`` turns it into a
skip locally and a failure in CI.
"""

from __future__ import annotations


class MissingMaterialError(RuntimeError):
    """A program or development dependency that is needed is not installed."""
