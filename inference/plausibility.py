"""Is a model's result plausible? The manifest's ``expect:`` block, checked before writing.

A model can be confidently wrong: a T1 network given a T2 reports a 0.8 mL brain, a
network given a head that fills the field of view loses a sixth of it. What a plausible
result looks like is declared in the model package (``expect:`` in ``model.yaml``, see
:class:`models.manifest.ExpectSpec`) and checked on the prediction, before any result
object is written, so that the writers can flag what they write (SeriesDescription
``CHECK ...`` and a qualitative evaluation in the SR) and the worker can hold the result
for review instead of delivering it (the route's ``on_implausible``).

Per label: its volume in mL (voxel count x voxel volume), the share of the field of view
it covers (label voxels / source voxels) and its number of connected components (face
connectivity, components under ``min_component_ml`` not counted). Classification: the
entropy of the class probabilities (:func:`entropy_bits`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from inference.writers import count_labels
from models.manifest import LabelExpectation, ModelManifest

if TYPE_CHECKING:
    from inference.pipeline import ClassResult, Prediction
    from inference.volume import Volume

#: Probabilities of several classes summing to 1 within this are one distribution (softmax).
_SUMS_TO_ONE = 1e-3


@dataclass(frozen=True)
class Plausibility:
    """The verdict on one result: what was measured, and what was out of range."""

    #: One sentence per value outside its expected range, e.g.
    #: ``Brain: volume 0.8 mL, expected 800-2300 mL``. Empty: plausible.
    problems: tuple[str, ...] = ()
    #: What was measured: label name -> ``volume_ml`` / ``fov_fraction`` /
    #: ``components``; for classification models ``{"classes": {"entropy_bits": ...}}``.
    measured: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def reason(self) -> str:
        """The problems as one line (the job's reason)."""
        return "; ".join(self.problems)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for the job's result in the ledger."""
        return {"ok": self.ok, "problems": list(self.problems), "measured": self.measured}


def check_plausibility(
    volume: Volume, prediction: Prediction, manifest: ModelManifest
) -> Plausibility:
    """Check ``prediction`` (on ``volume``) against ``manifest.expect``.

    Only what the manifest declares is measured (components cost a labelling pass).
    """
    expect = manifest.expect
    if prediction.labels is None:
        if expect.max_entropy is None:
            return Plausibility()
        entropy = entropy_bits(prediction.classes)
        of_classes = {"classes": {"entropy_bits": _round(entropy)}}
        if entropy > expect.max_entropy:
            problem = (
                f"class probabilities undecided: entropy {entropy:.3g} bits, expected at most "
                f"{expect.max_entropy:g}"
            )
            return Plausibility((problem,), of_classes)
        return Plausibility((), of_classes)
    if not expect.labels:
        return Plausibility()
    labels = prediction.labels
    counts = count_labels(labels)
    voxel_ml = volume.voxel_volume_mm3 / 1000.0
    problems: list[str] = []
    measured: dict[str, dict[str, float]] = {}
    for label in manifest.labels:
        wanted = expect.labels.get(label.name)
        if wanted is None:
            continue
        voxels = int(counts[label.value]) if label.value < counts.size else 0
        values = {
            "volume_ml": _round(voxels * voxel_ml),
            "fov_fraction": _round(voxels / labels.size) if labels.size else 0.0,
        }
        if wanted.components is not None:
            mask = labels == label.value
            values["components"] = float(
                count_components(mask, min_voxels=wanted.min_component_ml / voxel_ml)
            )
        measured[label.name] = values
        problems.extend(_label_problems(label.name, values, wanted))
    return Plausibility(tuple(problems), measured)


def _label_problems(name: str, values: dict[str, float], wanted: LabelExpectation) -> list[str]:
    problems = []
    if wanted.volume_ml is not None and not _within(values["volume_ml"], wanted.volume_ml):
        low, high = wanted.volume_ml
        problems.append(
            f"{name}: volume {values['volume_ml']:.4g} mL, expected {low:g}-{high:g} mL"
        )
    if wanted.fov_fraction is not None and not _within(values["fov_fraction"], wanted.fov_fraction):
        low, high = wanted.fov_fraction
        problems.append(
            f"{name}: {values['fov_fraction']:.3g} of the field of view, expected {low:g}-{high:g}"
        )
    if wanted.components is not None:
        low_c, high_c = wanted.components
        found = int(values["components"])
        if not low_c <= found <= high_c:
            expected = f"at most {high_c}" if low_c == 0 else f"{low_c}-{high_c}"
            problems.append(f"{name}: {found} connected components, expected {expected}")
    return problems


def _within(value: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] <= value <= bounds[1]


def _round(value: float) -> float:
    return float(f"{value:.6g}")


def count_components(mask: npt.NDArray[np.bool_], *, min_voxels: float = 0.0) -> int:
    """Face-connected components of ``mask`` with at least ``min_voxels`` voxels."""
    labelled, found = ndimage.label(mask)
    if found == 0 or min_voxels <= 0:
        return int(found)
    sizes = np.bincount(labelled.reshape(-1))[1:]
    return int(np.count_nonzero(sizes >= min_voxels))


def entropy_bits(classes: Sequence[ClassResult]) -> float:
    """How undecided a classification is, in bits.

    Several classes whose probabilities sum to 1 (softmax) are one distribution: its
    Shannon entropy, 0 when one class is certain, log2(number of classes) when all are
    equally likely. Otherwise (sigmoid: each class its own yes/no) the largest binary
    entropy of any class, 1 bit for a probability of 0.5.
    """
    probabilities = [min(max(c.probability, 0.0), 1.0) for c in classes]
    if len(probabilities) > 1 and abs(sum(probabilities) - 1.0) <= _SUMS_TO_ONE:
        return -sum(p * math.log2(p) for p in probabilities if p > 0)
    return max((_binary_entropy(p) for p in probabilities), default=0.0)


def _binary_entropy(p: float) -> float:
    return -sum(q * math.log2(q) for q in (p, 1.0 - p) if q > 0)


def combined(verdicts: Sequence[tuple[str, Plausibility]]) -> Plausibility:
    """The verdict on a job with several results, from ``(input name, verdict)`` pairs.

    A job whose model ran on several films of a series is implausible when any film's
    result is: each problem is prefixed with its input's name (``radiograph <SOP Instance
    UID>``, never patient data; an empty name adds none). What was measured is the first
    input's (the verdict on each is kept alongside, see :mod:`workers.execute`).
    """
    if not verdicts:
        return Plausibility()
    problems = tuple(
        f"{name}: {problem}" if name else problem
        for name, verdict in verdicts
        for problem in verdict.problems
    )
    return Plausibility(problems, verdicts[0][1].measured)
