"""A small CT series (6 slices of 8 x 10 pixels) and two-label manifests for writer tests.

Every slice has its own Frame of Reference UID, as in the LIDC-IDRI archive. Stored
values are ``1000 + 10 x file index + pixel index`` (row-major), HU = stored - 1024, so
that intensity statistics differ between segments and slices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from core.output_profiles import EmptyFrames
from inference.uids import result_uids
from inference.volume import Volume, load_series
from inference.writers.identity import ResultIdentity
from inference.writers.seg import SegmentationType, build_seg
from inference.writers.sr import build_sr
from models.manifest import ModelManifest
from tests.support.dicom_checks import walk

ROWS, COLUMNS, SLICES = 8, 10, 6
SERIES = "1.2.826.0.1.3680043.10.3.2"
PATIENT_NAME = "Writertest^Hiddenname"
ANATOMY = {"value": "91723000", "scheme": "SCT", "meaning": "Anatomical Structure"}
LUNG = {"value": "39607008", "scheme": "SCT", "meaning": "Lung"}
NODULE_CATEGORY = {
    "value": "49755003",
    "scheme": "SCT",
    "meaning": "Morphologically Abnormal Structure",
}
NODULE = {"value": "27925004", "scheme": "SCT", "meaning": "Nodule"}


def manifest(labels: list[dict[str, Any]], **extra: Any) -> ModelManifest:
    return ModelManifest.model_validate(
        {
            "id": "test-lungs",
            "version": "2.1",
            "name": "Test Lungs",
            "task": "segmentation",
            "family": {"value": "123110", "scheme": "DCM", "meaning": "Artificial Intelligence"},
            "accepts": {"modalities": ["CT"]},
            "network": {"kind": "onnx", "path": "model.onnx"},
            "backends": [{"name": "onnxruntime"}],
            "labels": labels,
            **extra,
        }
    )


TWO_LUNGS = manifest(
    [
        {
            "value": 1,
            "name": "Right lung",
            "category": ANATOMY,
            "type": LUNG,
            "color": [200, 100, 50],
        },
        {
            "value": 2,
            "name": "Left lung",
            "category": ANATOMY,
            "type": LUNG,
            "color": [50, 100, 200],
        },
    ]
)


def write_slice(
    folder: Path, index: int, z: float, *, rows: int = ROWS, columns: int = COLUMNS
) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    uid = generate_uid(prefix="1.2.826.0.1.3680043.10.4.", entropy_srcs=[str(folder), str(index)])
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.3.1"
    ds.SeriesInstanceUID = SERIES
    # Every slice its own Frame of Reference, as in the LIDC-IDRI archive.
    ds.FrameOfReferenceUID = f"1.2.826.0.1.3680043.10.5.{index}"
    ds.PositionReferenceIndicator = ""
    ds.Modality = "CT"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = "WRITER-PID"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = "20240101"
    ds.StudyTime = "101010"
    ds.StudyID = "7"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = "test"
    ds.SeriesNumber = 3
    ds.InstanceNumber = index + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.ImagePositionPatient = [-5.0, -4.0, z]
    ds.PixelSpacing = [0.8, 0.6]
    ds.SliceThickness = 2.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = 1.0
    ds.RescaleIntercept = -1024.0
    # HU = stored - 1024: -24 + 10 x index + the pixel's position in the slice.
    ds.PixelData = (np.arange(rows * columns, dtype=np.uint16) + 1000 + 10 * index).tobytes()
    path = folder / f"ct{index}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def small_ct(folder: Path, *, rows: int = ROWS, columns: int = COLUMNS) -> Volume:
    """Write the small CT series into ``folder`` and load it.

    Files are written in reverse z order, so sorted order differs from file order.
    """
    paths = [
        write_slice(folder, i, z=2.0 * (SLICES - 1 - i), rows=rows, columns=columns)
        for i in range(SLICES)
    ]
    return load_series(paths)


def lung_labels(rows: int = ROWS, columns: int = COLUMNS) -> npt.NDArray[np.uint8]:
    """Two box-shaped labels in the top left 8 x 10 pixels of each slice."""
    labels = np.zeros((SLICES, rows, columns), dtype=np.uint8)
    labels[1:5, 2:6, 1:4] = 1  # 4 x 4 x 3 = 48 voxels
    labels[2:4, 1:7, 6:9] = 2  # 2 x 6 x 3 = 36 voxels
    return labels


def make_seg(
    volume: Volume,
    labels: npt.NDArray[np.integer],
    model: ModelManifest = TWO_LUNGS,
    *,
    segmentation_type: SegmentationType = "binary",
    empty_frames: EmptyFrames = "one-per-segment",
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
) -> hd.seg.Segmentation:
    """The SEG of ``labels`` with fixed UIDs (the encoding does not change them here)."""
    uids = result_uids(volume.series_instance_uid, model.id, model.version, "seg")
    return build_seg(
        volume,
        labels,
        model,
        identity=ResultIdentity(
            sop_instance_uid=uids.sop_instance_uid,
            series_instance_uid=uids.series_instance_uid,
            series_number=901,
            backend="tensorrt",
            precision="fp16",
        ),
        segmentation_type=segmentation_type,
        empty_frames=empty_frames,
        transfer_syntax_uid=transfer_syntax_uid,
    )


def make_sr(
    seg: hd.seg.Segmentation | None,
    volume: Volume,
    labels: npt.NDArray[np.integer],
    model: ModelManifest = TWO_LUNGS,
) -> hd.sr.Comprehensive3DSR:
    uids = result_uids(volume.series_instance_uid, model.id, model.version, "sr")
    return build_sr(
        seg,
        volume,
        labels,
        model,
        identity=ResultIdentity(
            sop_instance_uid=uids.sop_instance_uid,
            series_instance_uid=uids.series_instance_uid,
            series_number=902,
            backend="tensorrt",
            precision="fp16",
        ),
    )


def read_masks(path: Path, volume: Volume, segments: int) -> npt.NDArray[np.bool_]:
    seg = hd.seg.segread(path)
    source_uids = [str(h.SOPInstanceUID) for h in volume.source_headers]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=source_uids,
        segment_numbers=list(range(1, segments + 1)),
        combine_segments=False,
    )
    return np.asarray(pixels, dtype=bool)


def coding_schemes(dataset: Dataset) -> set[str]:
    return {str(d.CodingSchemeDesignator) for d in walk(dataset) if "CodingSchemeDesignator" in d}
