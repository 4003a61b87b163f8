"""A real T1 brain for the brain-model tests, written as a DICOM MR series.

The head (nilearn's MNI template wrapped in CSF, skull and scalp) is made in
:mod:`benchmarks._support.brain`, shared with the benchmarks, and re-exported here.
"""

from __future__ import annotations

from benchmarks._support.brain import (
    TEMPLATE,
    Head,
    full_head,
    load_template,
    small_head,
    synthetic_head,
    t2_like,
    template_path,
    write_mr_series,
)

__all__ = [
    "TEMPLATE",
    "Head",
    "full_head",
    "load_template",
    "small_head",
    "synthetic_head",
    "t2_like",
    "template_path",
    "write_mr_series",
]
