"""Axis codes are read correctly and reorientation round-trips exactly, as views."""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt
import pytest

from inference.transforms import (
    obliquity_degrees,
    orientation_code,
    plan_reorientation,
    reorient,
)

AXIAL = np.eye(3)
# Columns x, y, z of a coronal stack: rows run left, columns run down (to inferior),
# slices step to posterior (row x column).
CORONAL = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
SAGITTAL = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def _all_codes() -> list[str]:
    codes = []
    for perm in itertools.permutations(("LR", "PA", "SI")):
        for choice in itertools.product((0, 1), repeat=3):
            codes.append("".join(pair[c] for pair, c in zip(perm, choice, strict=True)))
    return codes


def _rotation_about_z(degrees: float) -> npt.NDArray[np.float64]:
    angle = np.radians(degrees)
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def test_codes_name_the_direction_each_axis_increases_towards() -> None:
    assert orientation_code(AXIAL) == "LPS"
    assert orientation_code(np.diag([-1.0, -1.0, 1.0])) == "RAS"
    assert orientation_code(CORONAL) == "LIP"
    assert orientation_code(SAGITTAL) == "PIL"


def test_oblique_stacks_get_the_nearest_codes_and_their_obliquity() -> None:
    direction = _rotation_about_z(10.0)
    assert orientation_code(direction) == "LPS"
    assert obliquity_degrees(direction) == pytest.approx(10.0)
    assert obliquity_degrees(AXIAL) == pytest.approx(0.0)
    # At 50 degrees the x axis is nearer to P than to L.
    assert orientation_code(_rotation_about_z(50.0)) == "PRS"


@pytest.mark.parametrize("direction", [AXIAL, CORONAL, SAGITTAL, _rotation_about_z(100.0)])
def test_every_target_round_trips_exactly_and_without_copies(
    direction: npt.NDArray[np.float64],
) -> None:
    array = np.arange(2 * 3 * 4 * 5 * 6, dtype=np.int32).reshape(2, 3, 4, 5, 6)
    for target in _all_codes():
        view, inverse = reorient(array, direction, target)
        assert np.shares_memory(view, array)
        back = inverse(view)
        assert back.shape == array.shape
        assert np.array_equal(back, array)
        assert np.shares_memory(back, array)
        plan = plan_reorientation(direction, target)
        assert plan.source == orientation_code(direction)
        assert plan.target == target
        assert orientation_code(_moved_direction(direction, target)) == target


def _moved_direction(direction: npt.NDArray[np.float64], target: str) -> npt.NDArray[np.float64]:
    plan = plan_reorientation(direction, target)
    _, _, moved = plan.apply_geometry(
        origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 1.0), direction=direction, shape=(4, 5, 6)
    )
    return moved


def test_lps_to_ras_reverses_rows_and_columns() -> None:
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    view, _ = reorient(array, AXIAL, "RAS")
    assert np.array_equal(view, array[:, ::-1, ::-1])
    assert plan_reorientation(AXIAL, "LPS").is_identity
    assert not plan_reorientation(AXIAL, "RAS").is_identity


@pytest.mark.parametrize("target", ["RAS", "LIA", "SPL", "ILP"])
@pytest.mark.parametrize("direction", [AXIAL, CORONAL, _rotation_about_z(30.0)])
def test_reoriented_geometry_keeps_every_voxel_where_it_was_in_the_patient(
    target: str, direction: npt.NDArray[np.float64]
) -> None:
    shape = (4, 5, 6)
    origin = np.array([-10.0, 20.0, -30.0])
    spacing = (0.7, 0.8, 2.5)
    array = np.arange(np.prod(shape)).reshape(shape)
    plan = plan_reorientation(direction, target)
    view = plan.apply(array)
    new_origin, new_spacing, new_direction = plan.apply_geometry(
        origin=origin, spacing=spacing, direction=direction, shape=shape
    )

    rng = np.random.default_rng(0)
    for _ in range(20):
        index = tuple(int(rng.integers(0, n)) for n in view.shape)
        source_index = tuple(int(i) for i in np.argwhere(array == view[index])[0])
        assert np.allclose(
            _position(index, new_origin, new_spacing, new_direction),
            _position(source_index, origin, spacing, direction),
        )


def _position(
    index_zyx: tuple[int, ...],
    origin: npt.ArrayLike,
    spacing: tuple[float, float, float],
    direction: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    z, y, x = index_zyx
    offset = direction @ (np.array([x, y, z], dtype=np.float64) * np.asarray(spacing))
    position: npt.NDArray[np.float64] = np.asarray(origin, dtype=np.float64) + offset
    return position


def test_bad_codes_and_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="three letters"):
        plan_reorientation(AXIAL, "LPX")
    with pytest.raises(ValueError, match="names a patient axis twice"):
        plan_reorientation(AXIAL, "LRS")
    with pytest.raises(ValueError, match="3x3"):
        orientation_code(np.eye(2))
    with pytest.raises(ValueError, match="at least 3 axes"):
        plan_reorientation(AXIAL, "RAS").apply(np.zeros((4, 4)))
