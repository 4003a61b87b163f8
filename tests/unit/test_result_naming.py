"""Results name their source: Series Number and Series Description of every result object.

Two series of one study (a T1 and a T2, say) run through the same model must give results
a radiologist can tell apart, numbered the same way on every re-run (see
:func:`inference.writers.result_series_number` for the scheme).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import UID

from core.output_profiles import OutputProfile
from inference.pipeline import Prediction
from inference.results import write_results
from inference.volume import Volume, load_series
from inference.writers import result_series_number, series_description, source_series_number
from tests.support.small_ct import SERIES, TWO_LUNGS, lung_labels, manifest, small_ct

EVERY_KIND = {"all": OutputProfile(sc=True, pdf=True, sc_max_images=2)}


def prediction() -> Prediction:
    return Prediction(
        labels=lung_labels().astype(np.uint16),
        backend="torch",
        precision="fp32",
        device="cpu",
        fallbacks=(),
    )


def rename_series(folder: Path, *, uid: str, number: int | None, description: str) -> Volume:
    """The small CT in ``folder`` as another series of the same study."""
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(
            f"{uid}.{ds.InstanceNumber}"
        )
        if number is None:
            del ds.SeriesNumber
        else:
            ds.SeriesNumber = number
        ds.SeriesDescription = description
        ds.save_as(path, enforce_file_format=True)
    return load_series(sorted(folder.glob("*.dcm")))


@pytest.fixture(scope="module")
def t1_and_t2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Volume, Volume]:
    t1_folder = tmp_path_factory.mktemp("t1")
    small_ct(t1_folder)
    t2_folder = tmp_path_factory.mktemp("t2")
    small_ct(t2_folder)
    t1 = rename_series(t1_folder, uid=f"{SERIES}.1", number=3, description="T1 MPRAGE SAG")
    t2 = rename_series(t2_folder, uid=f"{SERIES}.2", number=4, description="T2 TSE AX")
    assert t1.study_instance_uid == t2.study_instance_uid
    return t1, t2


def names(volume: Volume, out: Path) -> dict[tuple[str, int | str], tuple[int, str]]:
    """(kind, file) -> (Series Number, Series Description) of every object written."""
    written = write_results(volume, prediction(), TWO_LUNGS, out_dir=out, profiles=EVERY_KIND)
    result: dict[tuple[str, int | str], tuple[int, str]] = {}
    for file in written.files:
        ds = pydicom.dcmread(file.path, stop_before_pixels=True)
        result[(file.kind, file.path.name)] = (int(ds.SeriesNumber), str(ds.SeriesDescription))
    return result


def test_results_of_two_series_of_one_study_have_their_own_numbers_and_descriptions(
    t1_and_t2: tuple[Volume, Volume], tmp_path: Path
) -> None:
    t1, t2 = t1_and_t2

    of_t1 = names(t1, tmp_path / "t1")
    of_t2 = names(t2, tmp_path / "t2")

    by_kind_t1 = {kind: value for (kind, _), value in of_t1.items()}
    by_kind_t2 = {kind: value for (kind, _), value in of_t2.items()}
    assert set(by_kind_t1) == set(by_kind_t2) == {"seg", "sr", "sc", "pdf"}
    # 1 SSSS MMM K: source series 3 (4), the model's slot, the kind.
    base = 100_000_000 + 10 * (zlib.crc32(b"test-lungs") % 1000)
    assert by_kind_t1 == {
        "seg": (base + 30_000 + 1, "AI test-lungs SEG of 3 T1 MPRAGE SAG"),
        "sr": (base + 30_000 + 2, "AI test-lungs SR of 3 T1 MPRAGE SAG"),
        "sc": (base + 30_000 + 3, "AI test-lungs overlay of 3 T1 MPRAGE SAG"),
        "pdf": (base + 30_000 + 4, "AI test-lungs summary of 3 T1 MPRAGE SAG"),
    }
    assert by_kind_t2 == {
        "seg": (base + 40_000 + 1, "AI test-lungs SEG of 4 T2 TSE AX"),
        "sr": (base + 40_000 + 2, "AI test-lungs SR of 4 T2 TSE AX"),
        "sc": (base + 40_000 + 3, "AI test-lungs overlay of 4 T2 TSE AX"),
        "pdf": (base + 40_000 + 4, "AI test-lungs summary of 4 T2 TSE AX"),
    }
    numbers = [number for number, _ in (*by_kind_t1.values(), *by_kind_t2.values())]
    assert len(set(numbers)) == 8
    # Every Secondary Capture image of one job is in one series.
    assert len({value for (kind, _), value in of_t1.items() if kind == "sc"}) == 1


def test_a_re_run_names_its_results_exactly_as_before(
    t1_and_t2: tuple[Volume, Volume], tmp_path: Path
) -> None:
    t1, _ = t1_and_t2

    assert names(t1, tmp_path / "first") == names(t1, tmp_path / "again")


def test_two_models_on_one_series_number_their_results_apart(
    t1_and_t2: tuple[Volume, Volume],
) -> None:
    source = t1_and_t2[0].source_headers[0]
    ids = ["ct-lungs", "brain-extraction-mindgrab", "brain-extraction-deepbrain", "test-lungs"]

    numbers = {result_series_number(source, m, k) for m in ids for k in ("seg", "sr", "sc", "pdf")}

    assert len(numbers) == 16
    assert all(100_000_000 < n < 200_000_000 for n in numbers)


def header(**values: Any) -> Dataset:
    ds = Dataset()
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.3.99"
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    "values",
    [{}, {"SeriesNumber": None}, {"SeriesNumber": 12345}, {"SeriesNumber": -1}],
    ids=["absent", "empty", "too large", "negative"],
)
def test_a_source_without_a_usable_series_number_is_numbered_by_its_uid(
    values: dict[str, Any],
) -> None:
    source = header(**values)
    other = header(**values)
    other.SeriesInstanceUID = "1.2.826.0.1.3680043.10.3.98"

    number = source_series_number(source)

    assert 0 <= number < 10_000
    assert number == source_series_number(header(**values))
    assert number != source_series_number(other)


def test_a_description_is_cut_to_64_characters_keeping_model_and_kind() -> None:
    long_model = manifest(TWO_LUNGS.model_dump()["labels"], id="x" * 40)
    source = header(
        SeriesNumber=1201,
        SeriesDescription="Thorax  venous phase 1.0 mm B31f iDose 4, late arterial too",
    )

    description = series_description(long_model, "pdf", source)

    assert description == "AI " + "x" * 32 + " summary of 1201 Thorax venou"
    assert len(description) == 64
    assert series_description(TWO_LUNGS, "pdf", source) == (
        "AI test-lungs summary of 1201 Thorax venous phase 1.0 mm B31f iD"
    )


def test_a_source_without_number_or_description_names_only_the_model_and_kind() -> None:
    assert series_description(TWO_LUNGS, "sr", header()) == "AI test-lungs SR"
    assert series_description(TWO_LUNGS, "sr", header(SeriesDescription="Lungs")) == (
        "AI test-lungs SR of Lungs"
    )
