"""Which series of a pulled study are retrieved: ``--series-filter`` expressions."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from node_services.retrieve.base import SeriesMatch, StudyQuery, parse_series_filter


def series(**attributes: object) -> SeriesMatch:
    answer = Dataset()
    for keyword, value in attributes.items():
        setattr(answer, keyword, value)
    return SeriesMatch(series_uid="1.2.3", attributes=answer)


def test_an_equals_filter_keeps_only_that_modality() -> None:
    wanted = parse_series_filter(["Modality=CT"])
    assert wanted.passes(series(Modality="CT"))
    assert not wanted.passes(series(Modality="SR"))


def test_a_list_keeps_any_of_its_values_and_every_expression_must_hold() -> None:
    wanted = parse_series_filter(["Modality=CT,MR", "NumberOfSeriesRelatedInstances>=20"])
    assert wanted.passes(series(Modality="MR", NumberOfSeriesRelatedInstances=40))
    assert not wanted.passes(series(Modality="MR", NumberOfSeriesRelatedInstances=3))
    assert not wanted.passes(series(Modality="PR", NumberOfSeriesRelatedInstances=40))


def test_a_regex_and_both_bounds_on_one_keyword_combine() -> None:
    wanted = parse_series_filter(
        ["SeriesDescription~(?i)lung", "SeriesNumber>=2", "SeriesNumber<=5"]
    )
    assert wanted.passes(series(SeriesDescription="LUNG 1mm", SeriesNumber=3))
    assert not wanted.passes(series(SeriesDescription="LUNG 1mm", SeriesNumber=6))
    assert not wanted.passes(series(SeriesDescription="Scout", SeriesNumber=3))


def test_no_filter_keeps_every_series() -> None:
    assert parse_series_filter([]).passes(series(Modality="KO"))


def test_a_filter_is_kept_as_json_and_its_keywords_are_queried() -> None:
    wanted = parse_series_filter(["Modality=CT", "SeriesDescription~lung"])
    assert wanted.keywords == ("Modality", "SeriesDescription")
    assert wanted.as_json() == {
        "Modality": {"equals": "CT"},
        "SeriesDescription": {"regex": "lung"},
    }


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("Modality", "write KEYWORD=VALUE"),
        ("Modalty=CT", "not a DICOM keyword; did you mean 'Modality'"),
        ("SeriesNumber>=many", "'many' is no number"),
        ("SeriesDescription~(", "does not compile"),
    ],
)
def test_a_bad_filter_says_what_is_wrong(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_series_filter([expression])


def test_a_study_query_needs_something_to_look_for_and_a_real_date_range() -> None:
    with pytest.raises(ValueError, match="needs a study UID"):
        StudyQuery()
    with pytest.raises(ValueError, match="not a DICOM date"):
        StudyQuery(study_date="2024-01-01")
    assert StudyQuery(study_date="20240101-20240131").study_date == "20240101-20240131"
