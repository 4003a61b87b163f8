"""Output profiles: what each destination gets, written once and named by what it is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from core.errors import ConfigError
from core.output_profiles import DEFAULT_PROFILE, Compression, OutputProfile
from core.settings import DestinationSettings, validate_settings
from inference.pipeline import Prediction
from inference.results import choose_compression, write_results
from inference.uids import result_uids
from inference.volume import Volume
from inference.writers import result_series_number
from tests.support.small_ct import TWO_LUNGS, lung_labels, manifest, small_ct

LABEL_MAP_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Volume:
    return small_ct(tmp_path_factory.mktemp("ct"))


def prediction(labels: np.ndarray[Any, Any]) -> Prediction:
    return Prediction(
        labels=labels.astype(np.uint16),
        backend="torch",
        precision="fp32",
        device="cpu",
        fallbacks=(),
    )


def test_a_destination_without_a_profile_gets_a_binary_seg_and_an_sr() -> None:
    destination = DestinationSettings(host="pacs", port=104, ae_title="PACS")

    assert destination.outputs == DEFAULT_PROFILE
    assert (DEFAULT_PROFILE.seg, DEFAULT_PROFILE.sr, DEFAULT_PROFILE.sc) == ("binary", True, False)
    assert (DEFAULT_PROFILE.pdf, DEFAULT_PROFILE.compression) == (False, ())


def test_bad_profiles_are_reported_with_their_keys_all_at_once() -> None:
    with pytest.raises(ConfigError, match="3 problems") as error:
        validate_settings(
            {
                "destinations": {
                    "pacs": {
                        "host": "pacs",
                        "port": 104,
                        "ae_title": "PACS",
                        "outputs": {"seg": "nifti", "compression": ["rle", "rle"]},
                    },
                    "web": {
                        "type": "dicomweb",
                        "url": "http://web/dicom-web",
                        "outputs": {"seg": "none", "sr": False},
                    },
                }
            }
        )
    message = str(error.value)
    assert (
        "destinations.pacs.outputs.seg: Input should be 'binary', 'labelmap' or 'none'" in message
    )
    assert "destinations.pacs.outputs.compression: lists a transfer syntax twice" in message
    assert "destinations.web.outputs: the profile sends nothing" in message


def test_each_encoding_is_compressed_only_in_a_transfer_syntax_it_can_take() -> None:
    accepted: tuple[Compression, ...] = ("rle", "jpeg-ls", "jpeg2000")
    assert choose_compression("labelmap", accepted, rows=512, columns=512) == "rle"
    assert choose_compression("binary", accepted, rows=512, columns=512) == "jpeg2000"
    assert choose_compression("binary", ("rle", "jpeg-ls"), rows=512, columns=512) is None
    # OpenJPEG refuses frames under 32 pixels along both dimensions.
    assert choose_compression("binary", accepted, rows=10, columns=8) is None
    assert choose_compression("sc", (), rows=512, columns=512) is None


def test_every_destination_gets_what_its_profile_names_each_object_written_once(
    volume: Volume, tmp_path: Path
) -> None:
    profiles = {
        "pacs": DEFAULT_PROFILE,
        "archive": OutputProfile(seg="binary", sr=True, pdf=True),
        "viewer": OutputProfile(seg="labelmap", compression=("jpeg-ls", "rle")),
        "legacy": OutputProfile(seg="none", sr=False, sc=True, pdf=True, sc_max_images=2),
        "ris": OutputProfile(seg="none", sr=True),
    }

    written = write_results(
        volume, prediction(lung_labels()), TWO_LUNGS, out_dir=tmp_path, profiles=profiles
    )

    names = {
        name: sorted(str(f.path.relative_to(tmp_path)) for f in files)
        for name, files in written.deliveries.items()
    }
    assert names == {
        "pacs": ["seg.dcm", "sr.dcm"],
        "archive": ["pdf.dcm", "seg.dcm", "sr.dcm"],
        "viewer": ["seg-labelmap-one-per-segment.jpeg-ls.dcm", "sr-labelmap-one-per-segment.dcm"],
        # Two images: the key slices of the two lungs (slices 2 and 3) win over the
        # evenly spread ones.
        "legacy": ["pdf.dcm", "sc/0002.dcm", "sc/0003.dcm"],
        "ris": ["sr-no-seg.dcm"],
    }
    # Shared objects are written once.
    assert len(written.files) == len(
        {f.path for files in written.deliveries.values() for f in files}
    )
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.dcm")) == sorted(
        str(f.path.relative_to(tmp_path)) for f in written.files
    )
    by_name = {str(f.path.relative_to(tmp_path)): f for f in written.files}
    labelmap = pydicom.dcmread(tmp_path / "seg-labelmap-one-per-segment.jpeg-ls.dcm")
    assert labelmap.SOPClassUID == LABEL_MAP_STORAGE
    assert labelmap.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
    # Each SR references the SEG its destination gets.
    for sr_name, seg_name in (
        ("sr.dcm", "seg.dcm"),
        ("sr-labelmap-one-per-segment.dcm", "seg-labelmap-one-per-segment.jpeg-ls.dcm"),
    ):
        sr = pydicom.dcmread(tmp_path / sr_name)
        evidence = {
            str(i.ReferencedSOPInstanceUID)
            for s in sr.CurrentRequestedProcedureEvidenceSequence
            for series in s.ReferencedSeriesSequence
            for i in series.ReferencedSOPSequence
        }
        assert by_name[seg_name].sop_instance_uid in evidence
    no_seg = pydicom.dcmread(tmp_path / "sr-no-seg.dcm")
    assert SEGMENTATION_STORAGE not in str(no_seg.CurrentRequestedProcedureEvidenceSequence)
    assert written.seg_sop_instance_uid == by_name["seg.dcm"].sop_instance_uid
    assert written.measurements_ml["total"] == pytest.approx(
        written.measurements_ml["Right lung"] + written.measurements_ml["Left lung"]
    )


def test_result_uids_and_series_numbers_are_deterministic_per_kind_and_variant(
    volume: Volume, tmp_path: Path
) -> None:
    profiles = {"a": OutputProfile(seg="labelmap", sc=True, pdf=True)}
    first = write_results(
        volume, prediction(lung_labels()), TWO_LUNGS, out_dir=tmp_path / "1", profiles=profiles
    )
    second = write_results(
        volume, prediction(lung_labels()), TWO_LUNGS, out_dir=tmp_path / "2", profiles=profiles
    )

    assert [f.sop_instance_uid for f in first.files] == [f.sop_instance_uid for f in second.files]
    series = volume.series_instance_uid
    default_seg = result_uids(series, TWO_LUNGS.id, TWO_LUNGS.version, "seg")
    labelmap_seg = result_uids(
        series, TWO_LUNGS.id, TWO_LUNGS.version, "seg", variant="labelmap-one-per-segment"
    )
    seg_file = next(f for f in first.files if f.kind == "seg")
    assert seg_file.sop_instance_uid == labelmap_seg.sop_instance_uid
    assert labelmap_seg.sop_instance_uid != default_seg.sop_instance_uid
    numbers = {
        f.kind: int(pydicom.dcmread(f.path, stop_before_pixels=True).SeriesNumber)
        for f in first.files
    }
    assert numbers == {
        kind: result_series_number(volume.source_headers[0], TWO_LUNGS.id, kind)
        for kind in ("seg", "sr", "sc", "pdf")
    }
    descriptions = {
        f.kind: pydicom.dcmread(f.path, stop_before_pixels=True).SeriesDescription
        for f in first.files
    }
    assert descriptions == {
        "seg": "AI test-lungs SEG of 3",
        "sr": "AI test-lungs SR of 3",
        "sc": "AI test-lungs overlay of 3",
        "pdf": "AI test-lungs summary of 3",
    }


def test_a_model_that_may_not_produce_an_object_never_does(volume: Volume, tmp_path: Path) -> None:
    no_sc = manifest(TWO_LUNGS.model_dump()["labels"], outputs={"sc": False, "pdf": False})
    profiles = {"legacy": OutputProfile(seg="none", sr=False, sc=True, pdf=True)}

    written = write_results(
        volume, prediction(lung_labels()), no_sc, out_dir=tmp_path, profiles=profiles
    )

    assert written.deliveries == {"legacy": ()}
    assert written.files == ()
