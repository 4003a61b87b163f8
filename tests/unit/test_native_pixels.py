"""Uncompressed slices read straight from their files give what pydicom decodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian, JPEGLSLossless

from core.errors import InvalidInputError
from inference.native_pixels import native_layout
from inference.volume import load_series
from tests.unit.test_volume import COLUMNS, ROWS, series


def pydicom_volume(paths: list[Path]) -> npt.NDArray[np.float32]:
    """The reference: pydicom's own decoding, rescaled in float32 as the volume is
    (PS3.3 C.11.1.1.2), slices in position order."""
    datasets = sorted(
        (pydicom.dcmread(p) for p in paths), key=lambda ds: float(ds.ImagePositionPatient[2])
    )
    return np.stack(
        [
            ds.pixel_array.astype(np.float32) * np.float32(ds.RescaleSlope)
            + np.float32(ds.RescaleIntercept)
            for ds in datasets
        ]
    )


def with_stored(paths: list[Path], values: npt.NDArray[np.integer], **attributes: object) -> None:
    """Rewrite each file with ``values`` (plus the slice's index) as its Pixel Data."""
    for index, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        ds.PixelData = (values + index).astype(values.dtype).tobytes()
        ds.save_as(path)


#: Pixel Data pydicom reads with the header (small), or leaves in the file (over 64 KB).
IN_MEMORY, IN_THE_FILE = (ROWS, COLUMNS), (192, 192)
SHAPES = pytest.mark.parametrize("shape", [IN_MEMORY, IN_THE_FILE], ids=["in-memory", "in-file"])


def random_stored(dtype: str, shape: tuple[int, int] = IN_MEMORY) -> npt.NDArray[np.integer]:
    info = np.iinfo(dtype)
    return np.random.default_rng(7).integers(
        info.min, info.max, size=shape, dtype=dtype, endpoint=True
    )


def sized(shape: tuple[int, int]) -> dict[str, int]:
    return {"rows": shape[0], "columns": shape[1]}


@SHAPES
@pytest.mark.parametrize(
    ("allocated", "stored_bits", "representation", "dtype"),
    [
        (16, 16, 0, "<u2"),
        (16, 12, 0, "<u2"),
        (16, 12, 1, "<i2"),
        (16, 16, 1, "<i2"),
        (8, 8, 0, "u1"),
        (8, 6, 1, "i1"),
        (32, 32, 1, "<i4"),
        (32, 20, 0, "<u4"),
    ],
)
def test_uncompressed_values_with_garbage_in_the_unused_bits_equal_pydicoms(
    tmp_path: Path,
    shape: tuple[int, int],
    *,
    allocated: int,
    stored_bits: int,
    representation: int,
    dtype: str,
) -> None:
    paths = series(tmp_path, [0.0, 1.0, 2.0], slope=0.5, intercept=-3.0, **sized(shape))
    # Random values in every bit, the unused high bits too (PS3.5 8.1.1 lets them be).
    with_stored(
        paths,
        random_stored(dtype, shape) // 2,
        BitsAllocated=allocated,
        BitsStored=stored_bits,
        HighBit=stored_bits - 1,
        PixelRepresentation=representation,
    )
    header = pydicom.dcmread(paths[0], defer_size="64 KB")
    assert native_layout(header, header.file_meta.TransferSyntaxUID) is not None

    volume = load_series(paths)

    np.testing.assert_array_equal(volume.voxels, pydicom_volume(paths))


@SHAPES
def test_a_monochrome1_series_keeps_its_stored_values_as_pydicom_does(
    tmp_path: Path, shape: tuple[int, int]
) -> None:
    paths = series(
        tmp_path, [0.0, 1.0, 2.0], PhotometricInterpretation="MONOCHROME1", **sized(shape)
    )
    with_stored(paths, random_stored("<u2", shape) // 4)

    volume = load_series(paths)

    np.testing.assert_array_equal(volume.voxels, pydicom_volume(paths))
    assert volume.source_headers[0].PhotometricInterpretation == "MONOCHROME1"


def test_an_implicit_vr_series_reads_as_its_explicit_vr_copy(tmp_path: Path) -> None:
    explicit = series(tmp_path / "explicit", [0.0, 1.0, 2.0])
    implicit = series(tmp_path / "implicit", [0.0, 1.0, 2.0])
    for path in implicit:
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(path)
    assert pydicom.dcmread(implicit[0]).file_meta.TransferSyntaxUID == ImplicitVRLittleEndian

    np.testing.assert_array_equal(load_series(implicit).voxels, load_series(explicit).voxels)


def test_a_compressed_series_reads_to_the_same_voxels_as_uncompressed(tmp_path: Path) -> None:
    plain = series(tmp_path / "plain", [0.0, 1.0, 2.0])
    with_stored(plain, random_stored("<u2") // 8)
    packed = []
    for path in plain:
        ds = pydicom.dcmread(path)
        ds.compress(JPEGLSLossless)
        packed.append(tmp_path / f"jls-{path.name}")
        ds.save_as(packed[-1])

    np.testing.assert_array_equal(load_series(packed).voxels, load_series(plain).voxels)


def test_a_file_cut_inside_its_pixel_data_is_refused_as_truncated(tmp_path: Path) -> None:
    paths = series(tmp_path, [0.0, 1.0, 2.0], **sized(IN_THE_FILE))
    content = paths[1].read_bytes()
    paths[1].write_bytes(content[:-7])

    with pytest.raises(InvalidInputError, match=r"slice001\.dcm .*truncated.*the file ends"):
        load_series(paths)


@SHAPES
def test_pixel_data_shorter_than_the_image_is_refused_naming_the_sizes(
    tmp_path: Path, shape: tuple[int, int]
) -> None:
    paths = series(tmp_path, [0.0, 1.0, 2.0], **sized(shape))
    rows, columns = shape
    ds = pydicom.dcmread(paths[2])
    ds.PixelData = ds.PixelData[: rows * columns]
    ds.save_as(paths[2])

    with pytest.raises(
        InvalidInputError,
        match=rf"slice002\.dcm .*holds {rows * columns} bytes where {rows} x {columns} values",
    ):
        load_series(paths)


def test_a_pixel_data_length_beyond_the_file_reads_only_what_the_file_holds(
    tmp_path: Path,
) -> None:
    intact = series(tmp_path / "intact", [0.0, 1.0, 2.0], **sized(IN_THE_FILE))
    paths = series(tmp_path / "hostile", [0.0, 1.0, 2.0], **sized(IN_THE_FILE))
    content = bytearray(paths[0].read_bytes())
    # The Pixel Data element's 4-byte length (Explicit VR OW) says 2 GB where 72 KB are.
    at = content.rindex(b"\xe0\x7f\x10\x00OW\x00\x00") + 8
    content[at : at + 4] = (0x7FFFFFF0).to_bytes(4, "little")
    paths[0].write_bytes(bytes(content))

    np.testing.assert_array_equal(load_series(paths).voxels, load_series(intact).voxels)
