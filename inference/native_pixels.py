"""Uncompressed pixel data read straight from the file into the volume.

A slice of an uncompressed series (Explicit or Implicit VR Little Endian, PS3.5 A.1,
A.2) is its Rows x Columns values laid out as Bits Allocated and Pixel Representation
say (PS3.5 8.1.1). pydicom's ``pixel_array`` reads the element into a ``bytes`` object,
validates its runner, makes an array, copies it to correct the unused bits, and the
caller copies it again into the float32 volume: about 1 ms of a 512 x 512 CT slice, a
third of the time the LIDC CT took to read. Here the values are read with one
``readinto`` into a buffer the series reuses, the unused high bits corrected exactly as
pydicom does (PS3.5 8.1.1: they may hold anything), and the modality rescale
(PS3.3 C.11.1.1.2) applied while converting into the volume's float32 slice, in one
pass when the slope is 1.

Only the plain case is read here; :func:`native_layout` says ``None`` for anything else
(big endian, deflated or encapsulated pixel data, bit-packed 1-bit data, several frames
or samples, a Modality LUT, pixel data longer than the image, values pydicom would read
differently), which pydicom decodes as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

_PIXEL_DATA = Tag(0x7FE0, 0x0010)
_UNDEFINED_LENGTH = 0xFFFFFFFF
_LITTLE_ENDIAN_NATIVE = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})
_GREY = frozenset({"MONOCHROME1", "MONOCHROME2"})
_DTYPES: dict[tuple[int, int], np.dtype[np.integer]] = {
    (8, 0): np.dtype("<u1"),
    (8, 1): np.dtype("<i1"),
    (16, 0): np.dtype("<u2"),
    (16, 1): np.dtype("<i2"),
    (32, 0): np.dtype("<u4"),
    (32, 1): np.dtype("<i4"),
}


@dataclass(frozen=True)
class NativeLayout:
    """Where a slice's values lie (in its file, or already read) and how they are stored."""

    #: Where the value starts in the file, when it is still there (deferred).
    offset: int
    #: Bytes of the Pixel Data element's value (its length in the header).
    length: int
    dtype: np.dtype[np.integer]
    rows: int
    columns: int
    #: Bits Allocated - Bits Stored: the unused high bits of each value.
    unused_bits: int
    #: The value, when pydicom has read it already (an element smaller than the
    #: deferring size); else ``None``, and it is read from the file.
    value: bytes | None = None

    @property
    def nbytes(self) -> int:
        return self.rows * self.columns * self.dtype.itemsize


def _integer(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _pixel_value(ds: Dataset) -> tuple[int, int, bytes | None] | None:
    """(offset in the file, length, the bytes if read already) of Pixel Data."""
    stored: DataElement | RawDataElement | None = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    value = None if stored is None else stored.value
    if isinstance(value, bytes):
        return 0, len(value), value
    # Still in the file (deferred), of a defined length.
    if not isinstance(stored, RawDataElement) or value is not None:
        return None
    if stored.length == _UNDEFINED_LENGTH:
        return None
    return stored.value_tell, stored.length, None


def native_layout(ds: Dataset, transfer_syntax: str | None) -> NativeLayout | None:
    """The layout of ``ds``'s uncompressed single-frame Pixel Data; ``None`` when pydicom
    is to decode it (see the module)."""
    if transfer_syntax not in _LITTLE_ENDIAN_NATIVE or "ModalityLUTSequence" in ds:
        return None
    where = _pixel_value(ds)
    if where is None:
        return None
    offset, length, value = where
    rows, columns = _integer(ds, "Rows"), _integer(ds, "Columns")
    allocated, bits = _integer(ds, "BitsAllocated"), _integer(ds, "BitsStored")
    representation = _integer(ds, "PixelRepresentation")
    frames = _integer(ds, "NumberOfFrames")
    if (
        rows is None
        or columns is None
        or allocated is None
        or bits is None
        or rows < 1
        or columns < 1
        or not 1 <= bits <= allocated
        or (_integer(ds, "SamplesPerPixel") or 1) != 1
        or (frames is not None and frames != 1)
        or str(ds.get("PhotometricInterpretation", "")).strip() not in _GREY
    ):
        return None
    dtype = _DTYPES.get((allocated, representation or 0))
    if dtype is None or representation not in (None, 0, 1):
        return None
    layout = NativeLayout(
        offset=offset,
        length=length,
        dtype=dtype,
        rows=rows,
        columns=columns,
        unused_bits=allocated - bits,
        value=value,
    )
    # Longer than the image plus the padding byte of an odd length: pydicom warns and
    # trims it; let it, so that the warning is logged as it always was.
    if layout.length > layout.nbytes + 1:
        return None
    return layout


def pixel_buffer(layout: NativeLayout) -> npt.NDArray[np.integer]:
    """A buffer for one slice of ``layout``, to reuse for every slice of the same kind."""
    return np.empty((layout.rows, layout.columns), dtype=layout.dtype)


def read_native(
    path: Path, layout: NativeLayout, buffer: npt.NDArray[np.integer]
) -> npt.NDArray[np.integer]:
    """The stored values of one slice read into ``buffer`` (its dtype and shape must be
    those of ``layout``), the unused bits corrected as pydicom does.

    Raises:
        ValueError: the element or the file holds fewer bytes than the image needs.
    """
    needed = layout.nbytes
    if layout.length < needed:
        raise ValueError(
            f"Pixel Data holds {layout.length} bytes where {layout.rows} x {layout.columns} "
            f"values of {layout.dtype.itemsize} byte(s) need {needed}"
        )
    flat = buffer.reshape(-1).view(np.uint8)
    if layout.value is not None:
        flat[:] = np.frombuffer(layout.value, dtype=np.uint8, count=needed)
    else:
        _read_exactly(path, layout.offset, flat)
    if layout.unused_bits:
        # PS3.5 8.1.1: the bits above Bits Stored are not part of the value. Shifting
        # up and back (arithmetically for signed values) is what pydicom does.
        np.left_shift(buffer, layout.unused_bits, out=buffer)
        np.right_shift(buffer, layout.unused_bits, out=buffer)
    return buffer


def _read_exactly(path: Path, offset: int, into: npt.NDArray[np.uint8]) -> None:
    needed = into.size
    with path.open("rb", buffering=0) as stream:
        stream.seek(offset)
        view = memoryview(into)  # type: ignore[arg-type]
        got = 0
        while got < needed:
            count = stream.readinto(view[got:])
            if not count:
                raise ValueError(
                    f"the file ends {needed - got} bytes into the {needed} of Pixel Data "
                    "(truncated)"
                )
            got += count


def rescale_into(
    out: npt.NDArray[np.float32],
    stored: npt.NDArray[np.integer],
    *,
    slope: float,
    intercept: float,
) -> None:
    """``out = stored * slope + intercept`` computed in float32 (the values converted to
    float32 first, as assigning them would), in one pass when the slope is 1."""
    if slope == 1.0:
        np.add(stored, np.float32(intercept), out=out, dtype=np.float32, casting="unsafe")
        return
    np.multiply(stored, np.float32(slope), out=out, dtype=np.float32, casting="unsafe")
    if intercept != 0.0:
        out += np.float32(intercept)
