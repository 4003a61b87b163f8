"""Projection radiographs: detection, loading (MONOCHROME1, Modality LUT, spacing), VOI,
resize / letterbox and the 2D preprocessing fields of the manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from pydicom import config
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_voi, apply_windowing
from pydicom.uid import SecondaryCaptureImageStorage

from core.errors import InvalidInputError
from inference.preprocess import prepare
from inference.preprocess2d import ResizePlan, to_network_channels
from inference.preprocess2d import apply_voi as voi_of
from inference.projection import (
    choose_projections,
    is_projection,
    load_projection,
    series_is_projection,
)
from inference.writers import writable_source
from models.manifest import (
    AcceptsSpec,
    ModelManifest,
    NormalizeSpec,
    PreprocessingSpec,
    ResizeSpec,
)
from models.registry import EXAMPLES_DIR, ModelRegistry
from tests.conftest import DicomFactory
from tests.support.models import manifest
from tests.support.radiographs import dx_dataset, save


def _ramp(rows: int = 12, columns: int = 20, *, top: int = 4095) -> np.ndarray:
    values = np.linspace(0, top, rows * columns).round().astype(np.uint16)
    return values.reshape(rows, columns)


def test_dx_cr_and_secondary_captures_of_radiographs_are_projections(
    dicom_factory: DicomFactory,
) -> None:
    dx = dx_dataset(_ramp())
    capture = dx_dataset(_ramp())
    capture.SOPClassUID = SecondaryCaptureImageStorage
    other_capture = dx_dataset(_ramp())
    other_capture.SOPClassUID = SecondaryCaptureImageStorage
    other_capture.Modality = "OT"
    multiframe = dx_dataset(_ramp())
    multiframe.NumberOfFrames = 2

    assert is_projection(dx)
    assert is_projection(capture)
    assert not is_projection(other_capture)
    assert not is_projection(multiframe)
    assert not is_projection(dicom_factory.dataset(modality="CT"))
    assert not series_is_projection(dicom_factory.series(2))
    assert series_is_projection([save(dx, dicom_factory.folder / "dx.dcm")])


def test_a_monochrome1_radiograph_loads_like_its_monochrome2_twin(tmp_path: Path) -> None:
    pixels = _ramp()
    twin = dx_dataset(4095 - pixels, bits_stored=12, photometric="MONOCHROME1")

    plain = load_projection([save(dx_dataset(pixels, bits_stored=12), tmp_path / "m2.dcm")])
    inverted = load_projection([save(twin, tmp_path / "m1.dcm")])

    assert inverted.shape == plain.shape == (1, 12, 20)
    np.testing.assert_array_equal(inverted.voxels, plain.voxels)
    np.testing.assert_array_equal(plain.voxels[0], pixels.astype(np.float32))
    assert inverted.projection is not None and inverted.projection.inverted
    assert inverted.projection.value_range == (0.0, 4095.0)
    assert "MONOCHROME1 image: values inverted so that higher is brighter" in inverted.notes


def test_rescale_is_applied_before_the_monochrome1_inversion(tmp_path: Path) -> None:
    pixels = _ramp(top=255).astype(np.uint8)
    plain = dx_dataset(pixels)
    plain.RescaleSlope, plain.RescaleIntercept = 2, -100
    twin = dx_dataset((255 - pixels).astype(np.uint8), photometric="MONOCHROME1")
    twin.RescaleSlope, twin.RescaleIntercept = 2, -100

    a = load_projection([save(plain, tmp_path / "a.dcm")])
    b = load_projection([save(twin, tmp_path / "b.dcm")])

    np.testing.assert_array_equal(a.voxels[0], pixels * 2.0 - 100)
    np.testing.assert_array_equal(b.voxels, a.voxels)
    assert b.projection is not None and b.projection.value_range == (-100.0, 410.0)


def test_geometry_is_identity_without_an_invented_frame_of_reference(tmp_path: Path) -> None:
    volume = load_projection([save(dx_dataset(_ramp()), tmp_path / "dx.dcm")])

    assert volume.origin == (0.0, 0.0, 0.0)
    np.testing.assert_array_equal(volume.direction, np.eye(3))
    assert volume.frame_of_reference_uid == ""
    assert volume.modality == "DX"
    assert "PixelData" not in volume.source_headers[0]


@pytest.mark.parametrize(
    "case",
    [
        ([0.2, 0.25], [0.3, 0.3], 1.2, (0.25, 0.2), "PixelSpacing", None),
        ([0, 0], [0.3, 0.36], 1.2, (0.3, 0.25), "ImagerPixelSpacing", "Magnification Factor 1.2"),
        (None, [0.3, 0.36], None, (0.36, 0.3), "ImagerPixelSpacing", "not corrected"),
        ([0, 0], None, None, (1.0, 1.0), "none", "measurements are in pixels"),
        (None, [0, 0], 1.1, (1.0, 1.0), "none", "measurements are in pixels"),
    ],
)
def test_spacing_comes_from_pixel_spacing_else_imager_spacing_over_magnification_else_pixels(
    tmp_path: Path, case: tuple[Any, ...]
) -> None:
    pixel, imager, factor, spacing, source, note = case
    ds = dx_dataset(_ramp())
    if pixel is not None:
        ds.PixelSpacing = pixel
    if imager is not None:
        ds.ImagerPixelSpacing = imager
    if factor is not None:
        ds.EstimatedRadiographicMagnificationFactor = factor

    volume = load_projection([save(ds, tmp_path / "dx.dcm")])

    assert volume.spacing[:2] == pytest.approx(spacing)
    assert volume.projection is not None
    assert volume.projection.spacing_source == source
    assert volume.projection.calibrated == (source != "none")
    if note is None:
        assert volume.notes == ()
    else:
        assert any(note in text for text in volume.notes)


def _views(tmp_path: Path, *views: str) -> list[Path]:
    series = "1.2.3.4"
    paths = []
    for number, view in enumerate(views, start=1):
        ds = dx_dataset(_ramp(), series_uid=series, instance_number=number)
        ds.ViewPosition = view
        paths.append(save(ds, tmp_path / f"{number}.dcm"))
    return paths


FRONTAL = AcceptsSpec.model_validate(
    {"modalities": ["DX"], "dims": 2, "attributes": {"ViewPosition": ["PA", "AP"]}}
)
ANY_VIEW = AcceptsSpec.model_validate({"modalities": ["DX"], "dims": 2})


def test_of_a_pa_and_a_lateral_the_image_the_model_accepts_is_taken_and_the_other_noted(
    tmp_path: Path,
) -> None:
    lateral, frontal = _views(tmp_path, "LL", "PA")

    films, notes = choose_projections([lateral, frontal], FRONTAL)

    assert films == (frontal,)
    (note,) = notes
    assert "ran on image 2" in note and "PA)" in note
    assert "left out image 1" in note and "ViewPosition LL is not one of PA, AP" in note


def test_every_acceptable_radiograph_is_taken_in_instance_number_order_whatever_the_arrival(
    tmp_path: Path,
) -> None:
    first, second, third = _views(tmp_path, "PA", "LL", "AP")

    films, notes = choose_projections([third, second, first], FRONTAL)
    anything, none_left = choose_projections([second, third, first], ANY_VIEW)

    assert films == (first, third)
    (note,) = notes
    assert "ran on image 1" in note and "image 3" in note and "left out image 2" in note
    assert anything == (first, second, third) and none_left == ()


def test_a_series_with_no_acceptable_radiograph_is_refused_naming_each(
    tmp_path: Path,
) -> None:
    with pytest.raises(InvalidInputError, match=r"(?s)none of the 2 radiographs.*LL.*RL"):
        choose_projections(_views(tmp_path / "none", "LL", "RL"), FRONTAL)
    with pytest.raises(InvalidInputError, match="load_projection reads one"):
        load_projection(_views(tmp_path / "direct", "PA", "LL"))


def test_colour_and_non_projection_images_are_refused(
    tmp_path: Path, dicom_factory: DicomFactory
) -> None:
    colour = dx_dataset(_ramp())
    colour.PhotometricInterpretation = "RGB"

    with pytest.raises(InvalidInputError, match="only grey-scale"):
        load_projection([save(colour, tmp_path / "rgb.dcm")])
    with pytest.raises(InvalidInputError, match="not a projection radiograph"):
        load_projection(dicom_factory.series(1))


def _loaded(tmp_path: Path, ds: Dataset) -> tuple[torch.Tensor, object]:
    volume = load_projection([save(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm")])
    return torch.from_numpy(volume.voxels), volume


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_the_window_is_applied_as_pydicom_applies_it(tmp_path: Path, function: str) -> None:
    pixels = _ramp()
    ds = dx_dataset(pixels, bits_stored=12)
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 1500, 1200, function
    voxels, volume = _loaded(tmp_path, ds)

    ours = voi_of(volume, voxels, "window")  # type: ignore[arg-type]

    reference = apply_windowing(pixels.astype(np.float64), ds) / 4095.0
    np.testing.assert_allclose(ours[0].numpy(), reference, atol=1e-5)


def test_a_monochrome1_window_gives_the_same_image_as_its_monochrome2_twin(
    tmp_path: Path,
) -> None:
    pixels = _ramp()
    plain = dx_dataset(pixels, bits_stored=12)
    plain.WindowCenter, plain.WindowWidth = 1500, 1200
    twin = dx_dataset(4095 - pixels, bits_stored=12, photometric="MONOCHROME1")
    twin.WindowCenter, twin.WindowWidth = 4095 - 1500, 1200
    a_voxels, a = _loaded(tmp_path, plain)
    b_voxels, b = _loaded(tmp_path, twin)

    first = voi_of(a, a_voxels, "window")  # type: ignore[arg-type]
    second = voi_of(b, b_voxels, "window")  # type: ignore[arg-type]

    # The LINEAR function's half-pixel offsets make a mirrored window one value off.
    np.testing.assert_allclose(second.numpy(), first.numpy(), atol=1.0 / 1199 + 1e-6)
    assert float(second[0, -1, -1]) == 1.0 and float(second[0, 0, 0]) == 0.0


def test_the_voi_lut_sequence_is_used_when_asked_for_and_present(tmp_path: Path) -> None:
    pixels = _ramp(top=255).astype(np.uint8)
    ds = dx_dataset(pixels)
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.LUTData = np.minimum(np.arange(256) * 2, 255).astype(np.uint16).tobytes()
    ds.VOILUTSequence = [item]
    ds.WindowCenter, ds.WindowWidth = 10, 2
    voxels, volume = _loaded(tmp_path, ds)

    lut = voi_of(volume, voxels, "lut")  # type: ignore[arg-type]
    window = voi_of(volume, voxels, "window")  # type: ignore[arg-type]

    reference = apply_voi(pixels, ds) / 255.0
    np.testing.assert_allclose(lut[0].numpy(), reference, atol=1e-6)
    assert float(window[0, -1, -1]) == 1.0 and float(window[0, 0, 1]) == 0.0


def test_without_a_window_the_full_stored_range_maps_to_zero_to_one(tmp_path: Path) -> None:
    pixels = _ramp()
    voxels, volume = _loaded(tmp_path, dx_dataset(pixels, bits_stored=12))

    scaled = voi_of(volume, voxels, "window")  # type: ignore[arg-type]

    np.testing.assert_allclose(scaled[0].numpy(), pixels / 4095.0, atol=1e-6)
    assert voi_of(volume, voxels, "none") is voxels  # type: ignore[arg-type]


def test_stretch_resizes_as_torch_antialiased_bilinear() -> None:
    image = torch.rand(1, 300, 200)
    plan = ResizePlan.plan((300, 200), ResizeSpec(shape=(64, 64), mode="stretch"))

    out = plan.apply(image)

    expected = torch.nn.functional.interpolate(
        image[None], size=(64, 64), mode="bilinear", align_corners=False, antialias=True
    )[0]
    torch.testing.assert_close(out, expected)


def test_letterbox_keeps_the_aspect_ratio_and_maps_results_back_exactly() -> None:
    plan = ResizePlan.plan((300, 200), ResizeSpec(shape=(60, 60), mode="letterbox", pad_value=-1))
    image = torch.zeros(1, 300, 200)
    image[0, 100:200, 50:150] = 1.0

    out = plan.apply(image)
    labels = (out > 0.5).to(torch.uint8)
    back = plan.to_source(labels, "nearest")

    assert plan.scaled == (60, 40) and plan.offset == (0, 10)
    assert out.shape == (1, 60, 60)
    assert bool((out[0, :, :10] == -1).all()) and bool((out[0, :, 50:] == -1).all())
    assert back.shape == (1, 300, 200) and back.dtype == torch.uint8
    np.testing.assert_array_equal(back.numpy(), image.to(torch.uint8).numpy())


def test_channels_are_repeated_and_normalised_per_channel() -> None:
    batch = torch.full((2, 1, 4, 4), 0.5)

    out = to_network_channels(
        batch, channels=3, normalize=NormalizeSpec(mean=[0.5, 0.25, 0.0], std=[1.0, 0.5, 0.25])
    )

    assert out.shape == (2, 3, 4, 4)
    assert out[:, :, 0, 0].tolist() == [[0.0, 0.5, 2.0]] * 2
    assert to_network_channels(batch, channels=1, normalize=None) is batch


def test_a_projection_is_prepared_voi_then_resize_whatever_the_orientation(
    tmp_path: Path,
) -> None:
    ds = dx_dataset(_ramp(rows=40, columns=30), bits_stored=12)
    ds.PixelSpacing = [0.2, 0.1]
    voxels, volume = _loaded(tmp_path, ds)
    spec = PreprocessingSpec(
        orientation="RAS", voi="window", resize=ResizeSpec(shape=(20, 20), mode="letterbox")
    )

    prepared = prepare(volume, voxels, spec)  # type: ignore[arg-type]

    assert prepared.voxels.shape == (1, 20, 20)
    assert prepared.resize is not None and prepared.resize.scaled == (20, 15)
    # The letterbox scales both axes by 1/2: the network's pixels are twice as large.
    assert prepared.spacing == pytest.approx((0.2, 0.4, 1.0))
    assert not any(prepared.reorientation.flips)
    assert float(prepared.voxels.max()) <= 1.0


def test_resize_is_for_2d_models_and_normalize_must_fit_the_channels() -> None:
    with pytest.raises(ValidationError, match=r"'preprocessing\.resize' is for 2D models"):
        ModelManifest.model_validate(
            manifest(preprocessing={"resize": {"shape": [64, 64]}}, accepts={"modalities": ["DX"]})
        )
    with pytest.raises(ValidationError, match="normalize gives 2 means for 3 channel"):
        PreprocessingSpec(channels=3, normalize=NormalizeSpec(mean=[0, 0], std=[1, 1]))
    with pytest.raises(ValidationError, match="must be two positive sizes"):
        ResizeSpec(shape=(0, 10))
    with pytest.raises(ValidationError, match="voi"):
        PreprocessingSpec(voi="auto")


def test_a_modality_lut_sequence_maps_the_values_and_bounds_the_inversion(tmp_path: Path) -> None:
    pixels = _ramp(top=255).astype(np.uint8)
    ds = dx_dataset((255 - pixels).astype(np.uint8), photometric="MONOCHROME1")
    item = Dataset()
    item.LUTDescriptor = [256, 0, 16]
    item.ModalityLUTType = "OD"
    item.LUTData = (np.arange(256, dtype=np.uint16) * 4 + 100).tobytes()
    ds.ModalityLUTSequence = [item]

    volume = load_projection([save(ds, tmp_path / "lut.dcm")])

    assert volume.projection is not None and volume.projection.value_range == (100.0, 1120.0)
    # Stored s -> 4 s + 100, inverted within [100, 1120]: 4 (255 - s) + 100 for pixel p.
    np.testing.assert_array_equal(volume.voxels[0], pixels * 4.0 + 100)


def test_the_chest_xray_example_validates_and_is_served_from_its_own_folder() -> None:
    folder = EXAMPLES_DIR / "radiographs"

    served = ModelRegistry.discover([folder], check_weights=False)
    brains = ModelRegistry.discover([EXAMPLES_DIR], check_weights=False)

    example = served.get("chest-xray-resnet18").manifest
    assert "chest-xray-resnet18" not in brains
    assert example.task == "classification" and example.accepts.dims == 2
    assert example.network.path == "$PACS_AI_CXR_WEIGHTS"
    assert [(c.index, c.code.value) for c in example.classes] == [
        (0, "281900007"),
        (1, "233604007"),
        (2, "363358000"),
    ]
    assert example.preprocessing.resize == ResizeSpec(shape=(224, 224), mode="stretch")


def test_an_invalid_patient_age_is_left_out_of_the_results_not_copied() -> None:
    source = dx_dataset(_ramp())
    with config.disable_value_validation():
        source.PatientAge = "81"  # the NIH films' form, read leniently; AS is "081Y"
    valid = dx_dataset(_ramp())
    valid.PatientAge = "081Y"

    assert "PatientAge" not in writable_source(source)
    assert writable_source(valid).PatientAge == "081Y"
    assert source.PatientAge == "81"
