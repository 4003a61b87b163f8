"""Results of a series whose Type 2 and Type 3 attributes are absent or empty.

Anonymisers remove Patient's Birth Date, Accession Number, Referring Physician, Study ID
and more; scanners leave Type 2 attributes empty. Every result object (SEG, SR, Secondary
Capture, PDF) is still written, conformant (dciodvfy), with the Patient and Study
attributes present and empty, and the source headers are left as they were.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import config
from pydicom.dataelem import DataElement

from core.errors import InvalidInputError
from core.output_profiles import OutputProfile
from inference.pipeline import Prediction
from inference.results import write_results
from inference.volume import Volume, load_series
from tests.support.peers import dciodvfy
from tests.support.small_ct import TWO_LUNGS, lung_labels, small_ct

#: Type 2 (and Type 3) attributes of the Patient, General Study, General Series, General
#: Equipment, Frame of Reference, General Image and Image Plane modules that real series
#: lack or leave empty.
SPARSE = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "SeriesNumber",
    "SeriesDescription",
    "BodyPartExamined",
    "Manufacturer",
    "PositionReferenceIndicator",
    "InstanceNumber",
    "SliceThickness",
)
#: In the results: Patient and General Study attributes are Type 2, so present and empty.
TYPE2_IN_RESULTS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
EVERY_KIND = {"all": OutputProfile(sc=True, pdf=True, sc_max_images=2)}
#: What dciodvfy may still say: the empty Patient ID / Study Date / Time / ID are only
#: needed for a DICOMDIR; a Secondary Capture of a series without Body Part Examined
#: keeps Laterality empty, "permitted when actually unknown", which it is.
ALLOWED_WARNINGS = {
    "Warning - Missing attribute or value that would be needed to build DICOMDIR - Patient ID",
    "Warning - Missing attribute or value that would be needed to build DICOMDIR - Study Date",
    "Warning - Missing attribute or value that would be needed to build DICOMDIR - Study Time",
    "Warning - Missing attribute or value that would be needed to build DICOMDIR - Study ID",
    "Warning - is only permitted to be empty when actually unknown; should be absent (not empty)"
    " if an unpaired body part, and have a value if a paired body part - attribute <Laterality>",
}


def prediction() -> Prediction:
    return Prediction(
        labels=lung_labels().astype(np.uint16),
        backend="onnxruntime",
        precision="fp32",
        device="cpu",
        fallbacks=(),
    )


def sparse_series(folder: Path, *, how: str) -> Volume:
    """The small CT with every :data:`SPARSE` attribute ``absent`` or ``empty``."""
    folder.mkdir()
    small_ct(folder)
    for path in folder.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        for keyword in SPARSE:
            if how == "absent":
                if keyword in ds:
                    delattr(ds, keyword)
            else:
                setattr(ds, keyword, None)
        ds.save_as(path, enforce_file_format=True)
    return load_series(sorted(folder.glob("*.dcm")))


@pytest.mark.parametrize("how", ["absent", "empty"])
def test_a_series_without_type2_values_gives_conformant_seg_sr_sc_and_pdf(
    how: str, tmp_path: Path
) -> None:
    volume = sparse_series(tmp_path / "ct", how=how)

    written = write_results(
        volume, prediction(), TWO_LUNGS, out_dir=tmp_path / "out", profiles=EVERY_KIND
    )

    assert {f.kind for f in written.files} == {"seg", "sr", "sc", "pdf"}
    for file in written.files:
        errors, warnings = dciodvfy(file.path)
        assert errors == [], f"{file.path.name}: {errors}"
        assert set(warnings) <= ALLOWED_WARNINGS, f"{file.path.name}: {warnings}"
        result = pydicom.dcmread(file.path, stop_before_pixels=True)
        for keyword in TYPE2_IN_RESULTS:
            assert keyword in result, f"{file.path.name}: {keyword} missing"
            assert not result[keyword].value, f"{file.path.name}: {keyword} not empty"
        assert result.SeriesDescription.startswith("AI test-lungs ")
        assert "SliceThickness" not in result or result.SliceThickness
    # The source headers (shared with whatever reads the volume next) are untouched.
    first = volume.source_headers[0]
    for keyword in SPARSE:
        assert (keyword not in first) if how == "absent" else (first[keyword].value in (None, ""))


def test_a_patient_sex_outside_m_f_o_is_written_empty_and_left_in_the_source(
    tmp_path: Path,
) -> None:
    (tmp_path / "ct").mkdir()
    small_ct(tmp_path / "ct")
    for path in (tmp_path / "ct").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.PatientSex = "U"  # common in real archives, not a value PS3.3 C.7.1.1 allows
        ds.save_as(path, enforce_file_format=True)
    volume = load_series(sorted((tmp_path / "ct").glob("*.dcm")))

    written = write_results(
        volume, prediction(), TWO_LUNGS, out_dir=tmp_path / "out", profiles=EVERY_KIND
    )

    for file in written.files:
        assert pydicom.dcmread(file.path, stop_before_pixels=True).PatientSex == ""
    assert volume.source_headers[0].PatientSex == "U"


def test_a_malformed_source_value_fails_naming_the_attribute_but_not_the_value(
    tmp_path: Path,
) -> None:
    (tmp_path / "ct").mkdir()
    small_ct(tmp_path / "ct")
    for path in (tmp_path / "ct").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        with config.disable_value_validation():
            ds[0x00100030] = DataElement(0x00100030, "DA", "1970-13-45")
        ds.save_as(path, enforce_file_format=True)
    volume = load_series(sorted((tmp_path / "ct").glob("*.dcm")))

    with pytest.raises(InvalidInputError, match="PatientBirthDate") as error:
        write_results(volume, prediction(), TWO_LUNGS, out_dir=tmp_path / "out")

    assert "1970" not in str(error.value)
    assert error.value.__cause__ is None
