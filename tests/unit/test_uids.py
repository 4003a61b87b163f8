"""Result UIDs are deterministic, distinct for every input and valid DICOM UIDs."""

from __future__ import annotations

import itertools
import re

import pytest
from pydicom.uid import UID

from inference.uids import RESULT_KINDS, derive_uid, result_uids

SOURCE = "1.3.6.1.4.1.14519.5.2.1.6279.6001.154677396354641150280013275227"


def _assert_valid(uid: str) -> None:
    assert len(uid) <= 64
    assert UID(uid).is_valid
    assert re.fullmatch(r"2\.25\.[1-9][0-9]*", uid), uid


def test_the_same_parts_always_give_the_same_uid() -> None:
    assert derive_uid("a", "b") == derive_uid("a", "b")
    # A fixed value: changing the namespace or the encoding would silently break the
    # replace-not-duplicate promise for results already in PACSs.
    assert derive_uid("pacs-ai") == "2.25.73988319841826435380257328516146516178"


def test_the_uid_has_the_uuid_derived_form_and_is_valid() -> None:
    for parts in [("x",), ("",), (SOURCE, "ct-lungs", "1.0", "seg"), ("é" * 200,)]:
        _assert_valid(derive_uid(*parts))


def test_part_boundaries_matter_so_joined_parts_do_not_collide() -> None:
    assert derive_uid("a.b", "c") != derive_uid("a", "b.c")
    assert derive_uid("ab") != derive_uid("a", "b")
    assert derive_uid("a", "") != derive_uid("a")
    assert derive_uid("1:a;") != derive_uid("a")


def test_result_uids_differ_for_every_changed_input() -> None:
    sources = [SOURCE, SOURCE + "1"]
    models = ["ct-lungs", "ct-liver"]
    versions = ["1.0", "1.1"]
    seen: set[str] = set()
    for source, model, model_version, kind in itertools.product(
        sources, models, versions, sorted(RESULT_KINDS)
    ):
        uids = result_uids(source, model, model_version, kind)
        _assert_valid(uids.series_instance_uid)
        _assert_valid(uids.sop_instance_uid)
        assert uids.series_instance_uid != uids.sop_instance_uid
        seen.update({uids.series_instance_uid, uids.sop_instance_uid})
        assert uids == result_uids(source, model, model_version, kind)
    assert len(seen) == 2 * len(sources) * len(models) * len(versions) * len(RESULT_KINDS)


def test_seg_and_sr_of_one_job_go_to_different_series() -> None:
    seg = result_uids(SOURCE, "ct-lungs", "1.0", "seg")
    sr = result_uids(SOURCE, "ct-lungs", "1.0", "sr")
    assert seg.series_instance_uid != sr.series_instance_uid


def test_results_of_two_films_of_a_series_share_their_series_and_differ_in_instance() -> None:
    plain = result_uids(SOURCE, "cxr", "1.0", "sr")
    pa = result_uids(SOURCE, "cxr", "1.0", "sr", source_instance="1.2.3.1")
    lateral = result_uids(SOURCE, "cxr", "1.0", "sr", source_instance="1.2.3.2")
    overlay = result_uids(SOURCE, "cxr", "1.0", "sc", source_instance="1.2.3.1", index=0)

    assert pa.series_instance_uid == lateral.series_instance_uid == plain.series_instance_uid
    assert len({plain.sop_instance_uid, pa.sop_instance_uid, lateral.sop_instance_uid}) == 3
    assert pa == result_uids(SOURCE, "cxr", "1.0", "sr", source_instance="1.2.3.1")
    assert (
        overlay.sop_instance_uid
        != result_uids(SOURCE, "cxr", "1.0", "sc", index=0).sop_instance_uid
    )


def test_bad_arguments_are_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="at least one part"):
        derive_uid()
    with pytest.raises(TypeError, match="must be strings"):
        derive_uid("a", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown result kind 'png'"):
        result_uids(SOURCE, "ct-lungs", "1.0", "png")
    with pytest.raises(ValueError, match="model_version must not be empty"):
        result_uids(SOURCE, "ct-lungs", "", "seg")
