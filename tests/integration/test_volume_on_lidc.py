"""The real LIDC-IDRI CT reads to exactly the voxels pydicom decodes, uncompressed
(read straight from the files) and in JPEG 2000 and JPEG-LS (decoded by the plugins
:mod:`inference.decoders` prefers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.uid import UID, JPEG2000Lossless, JPEGLSLossless

from inference.volume import load_series

pytestmark = pytest.mark.slow


def pydicom_volume(paths: list[Path]) -> npt.NDArray[np.float32]:
    """The reference: pydicom's own decoding, rescaled in float32 as the volume is,
    slices by ascending z (the LIDC CT is axial)."""
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


def compressed_copies(paths: list[Path], folder: Path, syntax: UID) -> list[Path]:
    folder.mkdir()
    copies = []
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.compress(syntax)
        copies.append(folder / path.name)
        ds.save_as(copies[-1], enforce_file_format=True)
    return copies


def test_the_lidc_ct_reads_to_the_voxels_pydicom_decodes(lidc_ct_dir: Path) -> None:
    paths = sorted(lidc_ct_dir.glob("*.dcm"))

    volume = load_series(paths)

    assert volume.shape == (275, 512, 512)
    np.testing.assert_array_equal(volume.voxels, pydicom_volume(paths))


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, JPEGLSLossless], ids=["j2k", "jpeg-ls"])
def test_lossless_compressed_lidc_slices_read_as_the_uncompressed_ones(
    lidc_ct_dir: Path, tmp_path: Path, syntax: UID
) -> None:
    # Six neighbouring slices from the middle of the chest: a stack, quick to compress.
    by_z = sorted(
        lidc_ct_dir.glob("*.dcm"),
        key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]),
    )
    paths = by_z[135:141]
    copies = compressed_copies(paths, tmp_path / "compressed", syntax)

    np.testing.assert_array_equal(load_series(copies).voxels, load_series(paths).voxels)
