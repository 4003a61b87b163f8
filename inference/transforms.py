"""Axis-aligned reorientation of ``[..., z, y, x]`` arrays between axis-code orientations.

Orientation codes follow the ITK/NIfTI convention used by the model manifest: three
letters naming, for the x (column), y (row) and z (slice) array axes in that order, the
patient direction towards which the index *increases*, in DICOM patient coordinates
(PS3.3 C.7.6.2.1.1: +x = patient Left, +y = Posterior, +z = Superior). ``"LPS"`` is
therefore the native orientation of an axial DICOM stack read with
:func:`inference.volume.load_series`; ``"RAS"`` is NIfTI's.

Only permutations and flips are applied, so ``inverse(apply(a))`` returns exactly ``a``
and labels produced in the target orientation map back to the source grid voxel for voxel.
Oblique stacks get the *nearest* axis codes (the assignment of array axes to patient axes
that maximises the summed absolute direction cosines); the obliquity itself is not removed
(:func:`obliquity_degrees` says how large it is), which is fine for networks trained on
roughly axis-aligned data and never moves a voxel.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt

_POSITIVE = "LPS"
_NEGATIVE = "RAI"
_AXIS_OF_LETTER = {"L": 0, "R": 0, "P": 1, "A": 1, "S": 2, "I": 2}

ArrayT = TypeVar("ArrayT", bound=np.ndarray)


def _check_code(code: str) -> str:
    code = code.upper()
    if len(code) != 3 or any(c not in _AXIS_OF_LETTER for c in code):
        raise ValueError(
            f"orientation code {code!r} must be three letters from L/R, P/A, S/I (e.g. 'LPS')"
        )
    if len({_AXIS_OF_LETTER[c] for c in code}) != 3:
        raise ValueError(f"orientation code {code!r} names a patient axis twice")
    return code


def _check_direction(direction: npt.ArrayLike) -> npt.NDArray[np.float64]:
    matrix = np.asarray(direction, dtype=np.float64)
    if matrix.shape != (3, 3) or not np.all(np.isfinite(matrix)):
        raise ValueError("direction must be a finite 3x3 matrix (columns: x, y, z axes in LPS)")
    return matrix


def _nearest_axes(matrix: npt.NDArray[np.float64]) -> tuple[int, int, int]:
    """Patient axis (0=LR, 1=PA, 2=SI) nearest to each array axis column, as a permutation."""
    best: tuple[int, int, int] = (0, 1, 2)
    best_score = -1.0
    for perm in itertools.permutations(range(3)):
        score = sum(abs(matrix[perm[i], i]) for i in range(3))
        if score > best_score + 1e-12:
            best, best_score = (perm[0], perm[1], perm[2]), score
    return best


def orientation_code(direction: npt.ArrayLike) -> str:
    """Return the (nearest) axis code of a direction matrix, e.g. ``"LPS"``.

    ``direction`` has one column per array axis x, y, z, in patient LPS coordinates
    (PS3.3 C.7.6.2.1.1), as :attr:`inference.volume.Volume.direction`.

    Raises:
        ValueError: ``direction`` is not a finite 3x3 matrix.
    """
    matrix = _check_direction(direction)
    axes = _nearest_axes(matrix)
    letters = []
    for column, axis in enumerate(axes):
        positive = matrix[axis, column] >= 0.0
        letters.append(_POSITIVE[axis] if positive else _NEGATIVE[axis])
    return "".join(letters)


def obliquity_degrees(direction: npt.ArrayLike) -> float:
    """Return the largest angle (degrees) between an array axis and its nearest patient axis.

    Raises:
        ValueError: ``direction`` is not a finite 3x3 matrix.
    """
    matrix = _check_direction(direction)
    axes = _nearest_axes(matrix)
    angles = []
    for column, axis in enumerate(axes):
        norm = float(np.linalg.norm(matrix[:, column]))
        cosine = min(1.0, abs(matrix[axis, column]) / norm) if norm > 0 else 0.0
        angles.append(float(np.degrees(np.arccos(cosine))))
    return max(angles)


@dataclass(frozen=True)
class Reorientation:
    """How to turn a ``[..., z, y, x]`` array from ``source`` into ``target`` orientation.

    ``axes[k]`` is the source spatial axis (0=z, 1=y, 2=x) that becomes spatial axis ``k``
    of the result, ``flips[k]`` whether that result axis is then reversed. Leading axes
    (batch, channel) are left alone. For torch tensors the same recipe is
    ``t.permute(*lead, *(n_lead + a for a in axes)).flip(dims)``.
    """

    source: str
    target: str
    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    @property
    def is_identity(self) -> bool:
        """True when the source already has the target orientation."""
        return self.axes == (0, 1, 2) and not any(self.flips)

    def apply(self, array: ArrayT) -> ArrayT:
        """Return ``array`` (``[..., z, y, x]``) in the target orientation, as a view."""
        lead = array.ndim - 3
        if lead < 0:
            raise ValueError(f"expected an array with at least 3 axes, got shape {array.shape}")
        out = np.transpose(array, (*range(lead), *(lead + a for a in self.axes)))
        index = tuple(
            [slice(None)] * lead + [slice(None, None, -1) if f else slice(None) for f in self.flips]
        )
        return out[index]  # type: ignore[no-any-return]

    def inverse(self, array: ArrayT) -> ArrayT:
        """Map an array in the target orientation back to the source grid, as a view.

        ``inverse(apply(a))`` is ``a`` exactly, for any ``a`` with at least 3 axes.
        """
        lead = array.ndim - 3
        if lead < 0:
            raise ValueError(f"expected an array with at least 3 axes, got shape {array.shape}")
        index = tuple(
            [slice(None)] * lead + [slice(None, None, -1) if f else slice(None) for f in self.flips]
        )
        unflipped = array[index]
        back = tuple(int(i) for i in np.argsort(self.axes))
        return np.transpose(unflipped, (*range(lead), *(lead + a for a in back)))  # type: ignore[return-value]

    def apply_spacing(self, spacing_xyz: Sequence[float]) -> tuple[float, float, float]:
        """Return the voxel spacing (x, y, z) of the reoriented array."""
        zyx = (spacing_xyz[2], spacing_xyz[1], spacing_xyz[0])
        out = [zyx[a] for a in self.axes]
        return (float(out[2]), float(out[1]), float(out[0]))

    def apply_geometry(
        self,
        *,
        origin: npt.ArrayLike,
        spacing: Sequence[float],
        direction: npt.ArrayLike,
        shape: Sequence[int],
    ) -> tuple[npt.NDArray[np.float64], tuple[float, float, float], npt.NDArray[np.float64]]:
        """Return (origin, spacing, direction) of the reoriented array.

        ``shape`` is the source spatial shape ``(z, y, x)``; ``origin`` the LPS position of
        source voxel ``[0, 0, 0]``; ``direction`` its columns x, y, z. The new origin is the
        LPS position of the reoriented array's first voxel.
        """
        matrix = _check_direction(direction)
        position = np.asarray(origin, dtype=np.float64).copy()
        spacing_zyx = (float(spacing[2]), float(spacing[1]), float(spacing[0]))
        columns_zyx = (matrix[:, 2], matrix[:, 1], matrix[:, 0])
        new_columns_zyx = []
        for k, axis in enumerate(self.axes):
            column = columns_zyx[axis]
            if self.flips[k]:
                position += (int(shape[axis]) - 1) * spacing_zyx[axis] * column
                column = -column
            new_columns_zyx.append(column)
        new_direction = np.stack(
            [new_columns_zyx[2], new_columns_zyx[1], new_columns_zyx[0]], axis=1
        )
        return position, self.apply_spacing(spacing), new_direction


def plan_reorientation(direction: npt.ArrayLike, target: str = "LPS") -> Reorientation:
    """Return the permutation and flips taking an array with ``direction`` to ``target``.

    Raises:
        ValueError: ``target`` is not a valid axis code or ``direction`` not a 3x3 matrix.
    """
    target = _check_code(target)
    source = orientation_code(direction)
    # Code letters are ordered x, y, z; array spatial axes are ordered z, y, x.
    axes: list[int] = []
    flips: list[bool] = []
    for array_axis in range(3):
        letter = target[2 - array_axis]
        source_position = next(
            i for i, c in enumerate(source) if _AXIS_OF_LETTER[c] == _AXIS_OF_LETTER[letter]
        )
        axes.append(2 - source_position)
        flips.append(source[source_position] != letter)
    return Reorientation(
        source=source,
        target=target,
        axes=(axes[0], axes[1], axes[2]),
        flips=(flips[0], flips[1], flips[2]),
    )


def reorient(
    array: ArrayT, direction: npt.ArrayLike, target: str = "LPS"
) -> tuple[ArrayT, Callable[[ArrayT], ArrayT]]:
    """Return ``array`` (``[..., z, y, x]``) viewed in ``target`` orientation and the inverse.

    The inverse maps any array in the target orientation (for example a label map a
    network produced) back onto the source grid exactly. Both are views, never copies.

    Raises:
        ValueError: bad ``target`` code, ``direction`` or array rank.
    """
    plan = plan_reorientation(direction, target)
    return plan.apply(array), plan.inverse
