"""Agreement of two segmentations or two classifications: pure functions on arrays.

Masks are boolean arrays ``[z, y, x]`` on the same grid; ``spacing`` is the voxel size in
millimetres in the same order. Empty masks are answered explicitly, never by a division
by zero:

* both empty: they agree (Dice 1.0, Hausdorff 95 0.0 mm);
* one empty: Dice 0.0, and the Hausdorff distance is undefined (``None``: there is no
  surface to measure from).

Hausdorff 95 is MedPy's ``hd95``: the 95th percentile of the surface distances of both
directions pooled (each surface voxel of A to B's surface, and each of B's to A's), the
distances taken by a Euclidean distance transform that respects the voxel spacing. Pooled,
an error on one side only (a small extra blob in B) weighs by its share of both surfaces,
not of one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

Mask = npt.NDArray[np.bool_]
Spacing = tuple[float, float, float]


def dice(a: Mask, b: Mask) -> float:
    """Sørensen-Dice coefficient 2|A∩B| / (|A|+|B|); 1.0 when both are empty."""
    _same_grid(a, b)
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(a & b)) / total


def volume_ml(mask: Mask, spacing: Spacing) -> float:
    """The mask's volume in millilitres (voxels times the voxel volume in mm³ / 1000)."""
    return int(np.count_nonzero(mask)) * math.prod(spacing) / 1000.0


def hausdorff95(a: Mask, b: Mask, spacing: Spacing) -> float | None:
    """Hausdorff 95 in millimetres: 0.0 when both are empty, ``None`` when one is."""
    _same_grid(a, b)
    a_surface, b_surface = _surface(a), _surface(b)
    if not a_surface.any() and not b_surface.any():
        return 0.0
    if not a_surface.any() or not b_surface.any():
        return None
    to_b = _distances(a_surface, b_surface, spacing)
    to_a = _distances(b_surface, a_surface, spacing)
    return float(np.percentile(np.hstack((to_b, to_a)), 95))


@dataclass(frozen=True, slots=True)
class SegmentAgreement:
    """How two masks of one segment (or of the union of all) agree."""

    name: str
    dice: float
    volume_a_ml: float
    volume_b_ml: float
    hd95_mm: float | None

    @property
    def volume_difference_ml(self) -> float:
        """A minus B."""
        return self.volume_a_ml - self.volume_b_ml

    @property
    def volume_difference_percent(self) -> float | None:
        """A minus B, in percent of B; ``None`` when B is empty."""
        if self.volume_b_ml == 0:
            return None
        return 100.0 * self.volume_difference_ml / self.volume_b_ml


def segment_agreement(name: str, a: Mask, b: Mask, spacing: Spacing) -> SegmentAgreement:
    return SegmentAgreement(
        name=name,
        dice=dice(a, b),
        volume_a_ml=volume_ml(a, spacing),
        volume_b_ml=volume_ml(b, spacing),
        hd95_mm=hausdorff95(a, b, spacing),
    )


@dataclass(frozen=True, slots=True)
class ClassAgreement:
    """Two classifications of one image: their most probable classes and probabilities."""

    top_a: str
    top_b: str
    #: B's probability of A's most probable class minus A's.
    probability_difference: float
    #: The largest absolute difference over the classes both name.
    max_abs_difference: float

    @property
    def agree(self) -> bool:
        return self.top_a == self.top_b


def class_agreement(a: Mapping[str, float], b: Mapping[str, float]) -> ClassAgreement:
    """Compare two probability maps (class name -> probability).

    Raises:
        ValueError: either map is empty.
    """
    if not a or not b:
        raise ValueError("a classification without probabilities cannot be compared")
    top_a, top_b = _top(a), _top(b)
    common = set(a) & set(b)
    return ClassAgreement(
        top_a=top_a,
        top_b=top_b,
        probability_difference=float(b.get(top_a, 0.0)) - float(a[top_a]),
        max_abs_difference=max((abs(float(a[c]) - float(b[c])) for c in common), default=0.0),
    )


def confusion_matrix(
    pairs: Sequence[tuple[str, str]],
) -> tuple[list[str], list[list[int]]]:
    """Classes (sorted) and counts ``[row: A's class][column: B's class]``."""
    classes = sorted({c for pair in pairs for c in pair})
    index = {c: i for i, c in enumerate(classes)}
    counts = [[0] * len(classes) for _ in classes]
    for first, second in pairs:
        counts[index[first]][index[second]] += 1
    return classes, counts


def _top(probabilities: Mapping[str, float]) -> str:
    # Ties go to the first class by name, so that the answer does not depend on order.
    return min(probabilities, key=lambda c: (-float(probabilities[c]), c))


def _surface(mask: Mask) -> Mask:
    """Voxels of the mask with a 6-neighbour outside it (the grid's border counts as outside)."""
    if not mask.any():
        return mask
    eroded = ndimage.binary_erosion(mask, border_value=0)
    return np.asarray(mask & ~eroded, dtype=np.bool_)


def _distances(from_surface: Mask, to_surface: Mask, spacing: Spacing) -> npt.NDArray[np.float64]:
    field = ndimage.distance_transform_edt(~to_surface, sampling=spacing)
    return np.asarray(field[from_surface], dtype=np.float64)


def _same_grid(a: Mask, b: Mask) -> None:
    if a.shape != b.shape:
        raise ValueError(f"masks on different grids: {a.shape} and {b.shape}")
