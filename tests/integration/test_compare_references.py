"""The reference SEGs of `pacs-ai compare --with-reference-seg-from`, retrieved from a
real Orthanc by C-GET: one study's SEGs held at a time, and never pacs-ai's own."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pytest
from pydicom import dcmread

from core.settings import Settings, validate_settings
from inference.writers import MANUFACTURER
from pacs_ai.compare.reference import ReferenceSegs
from pacs_ai.phantom import PhantomSeries, write_chest_ct_series
from tests.support.peers import LOCALHOST, Orthanc, free_port

pytestmark = [pytest.mark.peers]

LUNG = hd.sr.CodedConcept("39607008", "SCT", "Lung")


def settings_for(tmp_path: Path, pacs: Orthanc) -> Settings:
    return validate_settings(
        {
            "data_dir": str(tmp_path / "data"),
            "node": {"ae_title": "PACSAI"},
            "destinations": {
                "pacs": {
                    "host": LOCALHOST,
                    "port": pacs.dicom_port,
                    "ae_title": pacs.aet,
                    "query_retrieve": {},
                }
            },
            "monitor": {"enabled": False},
        }
    )


def seg_of(series: PhantomSeries, manufacturer: str) -> bytes:
    """A one-segment SEG of the series' lungs made by ``manufacturer``, as a file."""
    seg = hd.seg.Segmentation(
        source_images=[dcmread(p) for p in series.paths],
        pixel_array=(series.labels > 0).astype("uint8"),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            hd.seg.SegmentDescription(
                segment_number=1,
                segment_label="Lungs",
                segmented_property_category=hd.sr.CodedConcept(
                    "91723000", "SCT", "Anatomical Structure"
                ),
                segmented_property_type=LUNG,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            )
        ],
        series_instance_uid=hd.UID(),
        series_number=100,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name="lungs",
        software_versions="1",
        device_serial_number="1",
    )
    if manufacturer != MANUFACTURER:
        # highdicom names the source images' equipment, and the phantom is pacs-ai's.
        del seg.ContributingEquipmentSequence
    path = series.paths[0].parent / f"seg-{manufacturer}.dcm"
    seg.save_as(path)
    return path.read_bytes()


def test_only_the_last_studys_reference_segs_are_held_and_never_our_own(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    studies = [
        write_chest_ct_series(tmp_path / f"ct-{seed}", slices=16, size=64, seed=seed)
        for seed in (3, 4)
    ]
    for series in studies:
        orthanc.upload(seg_of(series, "QIICR"))
        orthanc.upload(seg_of(series, MANUFACTURER))
    orthanc.add_modality("pacsai", "PACSAI", LOCALHOST, free_port())
    references = ReferenceSegs(settings_for(tmp_path, orthanc), "pacs")
    first, second = studies

    for series in (first, second, first):
        segs = references.for_series(series.study_instance_uid, series.series_instance_uid)

        assert [str(seg.Manufacturer) for seg in segs] == ["QIICR"]
        assert references.cached_study == series.study_instance_uid
        assert references.cached_segs == 1, "pacs-ai's own SEG of the study is not kept"
