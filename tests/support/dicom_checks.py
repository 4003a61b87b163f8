"""Reading our DICOM output back in tests: TID 1500 content and every nested item."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
from pydicom.dataset import Dataset


def read_report(path: Path) -> hd.sr.MeasurementReport:
    """The TID 1500 content of the SR at ``path``, as highdicom parses it."""
    content = hd.sr.srread(path).content
    assert isinstance(content, hd.sr.MeasurementReport)
    return content


def walk(dataset: Dataset) -> Iterator[Dataset]:
    """``dataset`` and every sequence item nested in it, depth first."""
    yield dataset
    for element in dataset:
        if element.VR == "SQ":
            for item in element.value:
                yield from walk(item)
