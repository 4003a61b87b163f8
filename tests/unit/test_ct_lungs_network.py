"""The built-in ``ct-lungs`` network on small synthetic chest CTs (see pacs_ai.phantom)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
import yaml

from models.builtin.ct_lungs.network import LEFT_LUNG, RIGHT_LUNG, build
from models.manifest import ModelManifest
from pacs_ai.phantom import ChestPhantom, chest_ct_phantom

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "models" / "builtin" / "ct_lungs"


def segment(
    hu: npt.NDArray[np.float32], spacing: tuple[float, float, float]
) -> npt.NDArray[np.uint8]:
    image = torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32))[None, None]
    output = build()(image, torch.tensor(spacing, dtype=torch.float32))
    labels: npt.NDArray[np.uint8] = output[0, 0].numpy()
    return labels


def dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    return float(2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))


@pytest.fixture(scope="module")
def phantom() -> ChestPhantom:
    # 2.8 mm pixels and 3.75 mm slices: small enough to keep these tests fast.
    return chest_ct_phantom(slices=64, size=128, seed=1)


@pytest.fixture(scope="module")
def labels(phantom: ChestPhantom) -> npt.NDArray[np.uint8]:
    return segment(phantom.hu, phantom.spacing)


def test_each_phantom_lung_is_found_with_its_own_label(
    phantom: ChestPhantom, labels: npt.NDArray[np.uint8]
) -> None:
    for value in (RIGHT_LUNG, LEFT_LUNG):
        assert dice(labels == value, phantom.labels == value) >= 0.9, f"label {value}"


def test_default_phantom_lungs_are_found_at_its_own_spacing() -> None:
    phantom = chest_ct_phantom(seed=2)  # 1.4 mm pixels, 2.5 mm slices
    labels = segment(phantom.hu, phantom.spacing)
    for value in (RIGHT_LUNG, LEFT_LUNG):
        assert dice(labels == value, phantom.labels == value) >= 0.95, f"label {value}"


def test_right_lung_is_at_low_x_in_lps(labels: npt.NDArray[np.uint8]) -> None:
    right_x = np.nonzero(labels == RIGHT_LUNG)[2].mean()
    left_x = np.nonzero(labels == LEFT_LUNG)[2].mean()
    assert right_x < labels.shape[2] / 2 < left_x


def test_mirroring_the_patient_swaps_right_and_left(
    phantom: ChestPhantom, labels: npt.NDArray[np.uint8]
) -> None:
    mirrored = segment(phantom.hu[:, :, ::-1], phantom.spacing)[:, :, ::-1]
    swapped = np.choose(labels, [0, LEFT_LUNG, RIGHT_LUNG]).astype(np.uint8)
    assert dice(mirrored == RIGHT_LUNG, swapped == RIGHT_LUNG) >= 0.98
    assert dice(mirrored == LEFT_LUNG, swapped == LEFT_LUNG) >= 0.98


def test_vessels_inside_the_lungs_count_as_lung(
    phantom: ChestPhantom, labels: npt.NDArray[np.uint8]
) -> None:
    vessels = (phantom.labels > 0) & (phantom.hu > -320)
    assert vessels.sum() > 100, "the phantom should have vessels in its lungs"
    assert np.count_nonzero(labels[vessels] == phantom.labels[vessels]) >= 0.9 * vessels.sum()


def test_outside_air_is_not_lung(phantom: ChestPhantom, labels: npt.NDArray[np.uint8]) -> None:
    outside = (phantom.hu < -900) & (phantom.labels == 0) & ~phantom.airway & ~phantom.bowel_gas
    assert outside.sum() > 0.3 * outside.size, "the phantom should have air around the body"
    assert not labels[outside].any()


def test_stomach_gas_is_not_lung(phantom: ChestPhantom, labels: npt.NDArray[np.uint8]) -> None:
    assert phantom.bowel_gas.any()
    assert not labels[phantom.bowel_gas].any()


def test_trachea_above_the_lungs_is_not_lung(
    phantom: ChestPhantom, labels: npt.NDArray[np.uint8]
) -> None:
    above_lungs = np.asarray(phantom.labels.max(axis=(1, 2)) == 0)
    above_lungs[: phantom.labels.shape[0] // 2] = False
    assert phantom.airway[above_lungs].any(), "the phantom's trachea should reach the top"
    assert not labels[above_lungs].any()


def test_main_bronchi_are_left_out_but_for_their_entrance_into_the_lungs(
    phantom: ChestPhantom, labels: npt.NDArray[np.uint8]
) -> None:
    # The regrowth may reach a voxel or so into a bronchus where it opens into the lung.
    assert np.count_nonzero(labels[phantom.airway]) <= 0.02 * np.count_nonzero(phantom.airway)


def test_lungs_touching_in_front_are_still_split(phantom: ChestPhantom) -> None:
    hu = phantom.hu.copy()
    # An air bridge in front of the heart, 3 cm high, joining the two lungs.
    z = np.arange(hu.shape[0]) * phantom.spacing[2]
    y = (np.arange(hu.shape[1]) - (hu.shape[1] - 1) / 2) * phantom.spacing[1]
    x = (np.arange(hu.shape[2]) - (hu.shape[2] - 1) / 2) * phantom.spacing[0]
    bridge = (
        ((z >= 110) & (z <= 140))[:, None, None]
        & ((y >= -50) & (y <= -30))[None, :, None]
        & (np.abs(x) <= 40)[None, None, :]
    )
    hu[bridge] = -850.0
    labels = segment(hu, phantom.spacing)
    for value in (RIGHT_LUNG, LEFT_LUNG):
        assert dice(labels == value, phantom.labels == value) >= 0.9, f"label {value}"


def test_a_single_lung_is_labelled_by_its_side(phantom: ChestPhantom) -> None:
    hu = phantom.hu.copy()
    hu[phantom.labels == LEFT_LUNG] = 40.0  # as after a left pneumonectomy
    labels = segment(hu, phantom.spacing)
    assert not (labels == LEFT_LUNG).any()
    assert dice(labels == RIGHT_LUNG, phantom.labels == RIGHT_LUNG) >= 0.9


@pytest.mark.parametrize("hu", [40.0, -1000.0], ids=["soft-tissue", "air"])
def test_a_volume_without_lungs_gives_all_zeros(hu: float) -> None:
    volume = np.full((24, 64, 64), hu, dtype=np.float32)
    volume += np.random.default_rng(0).normal(0, 10, volume.shape).astype(np.float32)
    assert not segment(volume, (1.5, 1.5, 3.0)).any()


def test_a_tiny_dry_run_input_gives_all_zeros() -> None:
    for shape in [(1, 1, 1), (2, 3, 4), (4, 16, 16)]:
        assert not segment(np.zeros(shape, dtype=np.float32), (1.0, 1.0, 1.0)).any()


def test_output_is_a_uint8_label_map_of_the_input_shape_on_its_device(
    phantom: ChestPhantom,
) -> None:
    image = torch.from_numpy(phantom.hu)[None, None]
    output = build()(image, torch.tensor(phantom.spacing))
    assert output.dtype == torch.uint8
    assert output.shape == image.shape
    assert output.device == image.device
    assert set(torch.unique(output).tolist()) == {0, RIGHT_LUNG, LEFT_LUNG}


def test_a_wrongly_shaped_image_is_refused() -> None:
    with pytest.raises(ValueError, match=r"image must be \[1, 1, Z, Y, X\]"):
        build()(torch.zeros(8, 8, 8), torch.ones(3))


@pytest.mark.parametrize("spacing", [[1.0, 1.0], [1.0, 0.0, 1.0], [1.0, float("nan"), 1.0]])
def test_a_bad_spacing_is_refused(spacing: list[float]) -> None:
    with pytest.raises(ValueError, match="spacing"):
        build()(torch.zeros(1, 1, 4, 4, 4), torch.tensor(spacing))


def test_the_package_manifest_validates_and_names_this_network() -> None:
    raw = yaml.safe_load((PACKAGE_DIR / "model.yaml").read_text(encoding="utf-8"))
    manifest = ModelManifest.model_validate(raw)
    assert (manifest.id, manifest.version, manifest.task) == ("ct-lungs", "1.0.0", "segmentation")
    assert manifest.network.entry == "models.builtin.ct_lungs.network:build"
    assert (manifest.network.input_name, manifest.network.spacing_input_name) == (
        "image",
        "spacing",
    )
    assert (manifest.network.output_name, manifest.network.output_kind) == ("labels", "labels")
    assert [(b.name, b.precision) for b in manifest.backends] == [("torch", "fp32")]
    assert manifest.preprocessing.orientation == "LPS"
    assert manifest.preprocessing.target_spacing is None
    assert manifest.accepts.modalities == ["CT"]
    assert "intelligence" not in manifest.name.lower()
    assert (manifest.family.value, manifest.family.scheme) == ("123104", "DCM")
    assert [(label.value, label.name, label.type.value) for label in manifest.labels] == [
        (RIGHT_LUNG, "Right lung", "3341006"),
        (LEFT_LUNG, "Left lung", "44029006"),
    ]
    assert manifest.labels[0].color != manifest.labels[1].color


def test_the_manifest_codes_match_the_dicom_code_tables() -> None:
    from pydicom.sr.codedict import codes  # noqa: PLC0415

    raw = yaml.safe_load((PACKAGE_DIR / "model.yaml").read_text(encoding="utf-8"))
    manifest = ModelManifest.model_validate(raw)
    family = codes.cid7162.MorphologicalOperations
    assert (manifest.family.value, manifest.family.meaning) == (family.value, family.meaning)
    category = codes.cid7150.AnatomicalStructure
    for label in manifest.labels:
        assert (label.category.value, label.category.scheme, label.category.meaning) == (
            category.value,
            category.scheme_designator,
            category.meaning,
        )
