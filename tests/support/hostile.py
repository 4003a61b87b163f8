"""What hostile or broken senders send, made small enough to build in a test."""

from __future__ import annotations

import zlib
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import CTImageStorage, generate_uid

from benchmarks._support.peers import process_tree

__all__ = ["deflate_bomb", "peak_rss_mib", "process_tree"]

_ZEROS = bytes(1024 * 1024)


def deflate_bomb(inflated_mib: int) -> tuple[Dataset, bytes]:
    """A CT data set whose Pixel Data is ``inflated_mib`` MiB of zeros, deflated (PS3.5
    A.5): its header and the deflated data set bytes, which are about a thousandth of
    what they inflate to. Built a MiB at a time: the test never holds it inflated."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 1024
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = inflated_mib
    header = DicomBytesIO()
    header.is_little_endian, header.is_implicit_VR = True, False  # the inflated syntax
    write_dataset(header, ds)
    pixel_length = inflated_mib * len(_ZEROS)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [
        compressor.compress(header.getvalue()),
        compressor.compress(b"\xe0\x7f\x10\x00OB\x00\x00" + pixel_length.to_bytes(4, "little")),
    ]
    parts.extend(compressor.compress(_ZEROS) for _ in range(inflated_mib))
    parts.append(compressor.flush())
    return ds, b"".join(parts)


def peak_rss_mib(pid: int) -> float:
    """The high-water mark of a process's resident memory (Linux VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for process {pid}")
