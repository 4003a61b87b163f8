"""The model package manifest (``model.yaml``): what a model is, accepts and produces.

A model package is a folder with ``model.yaml`` and, for learned models, a weights file.
The manifest is validated once, when the package is loaded; every problem is reported
at once with the key it is about (see :func:`models.registry.load_package`).

Schema versions: ``1`` is the first; ``2`` added target shapes, foreground cropping,
channel layout, Gaussian/constant blending parameters, padding to a multiple, largest
component, resampling back, classification classes and per-backend options. Every key
added in 2 has a default, so a version-1 manifest reads unchanged. ``expect`` (what a
plausible result looks like, :mod:`inference.plausibility`) is optional in both.

Axis order. Volumes are ``[z, y, x]`` arrays in the orientation the manifest names (see
:mod:`inference.transforms`): the code's letters name, for x, y and z, the patient
direction each index increases towards. The network's tensor has the spatial axes in
that array order, ``[N, C, z, y, x]``; ``target_shape``, ``roi_size`` and ``max_shape``
are therefore given in array order (first to last spatial axis of the tensor), while
``target_spacing`` is in mm as (x, y, z) like DICOM's Pixel Spacing / slice step.
A network trained on NIfTI arrays as nibabel returns them (``[i, j, k]``, RAS) sees the
patient's R, A, S along its first, second and third axis: that is orientation ``SAR``
here (``pacs-ai models import-bundle`` translates MONAI's ``axcodes`` this way).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.header_rules import (
    AttributeCondition,
    ExtentSpec,
    check_attributes,
    expand_shorthand,
)

#: Version of the manifest schema this code reads.
MANIFEST_SCHEMA_VERSION: Literal[2] = 2

_ID_RE = r"^[a-z0-9][a-z0-9-]{0,62}$"
_ORIENTATION_RE = re.compile(
    r"^[LR][PA][SI]$|^[LR][SI][PA]$|^[PA][LR][SI]$|^[PA][SI][LR]$|^[SI][LR][PA]$|^[SI][PA][LR]$"
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CodeSpec(_Strict):
    """A coded concept: (CodeValue, CodingSchemeDesignator, CodeMeaning)."""

    #: Code Value, e.g. ``"39607008"`` (quote it: YAML would read digits as a number).
    value: Annotated[str, Field(min_length=1, max_length=64)]
    #: Coding Scheme Designator: ``SCT`` (SNOMED CT), ``DCM``, ``UCUM``, ... (never ``SRT``).
    scheme: Annotated[str, Field(min_length=1, max_length=16)]
    #: Code Meaning, as the coding scheme gives it.
    meaning: Annotated[str, Field(min_length=1, max_length=64)]

    @field_validator("scheme")
    @classmethod
    def _no_retired_srt(cls, scheme: str) -> str:
        if scheme == "SRT":
            raise ValueError(
                "coding scheme 'SRT' is retired; use 'SCT' with the SNOMED CT concept id"
            )
        return scheme


class LabelSpec(_Strict):
    """One output label of a segmentation model, becoming one SEG segment."""

    #: The label's value in the network's label map (one SEG segment per label).
    value: Annotated[int, Field(ge=1, le=65535)]
    #: Segment Label, shown by viewers.
    name: Annotated[str, Field(min_length=1, max_length=64)]
    #: Segmented Property Category (PS3.16 CID 7150), e.g. SCT 91723000 Anatomical Structure.
    category: CodeSpec
    #: Segmented Property Type (CID 7151 and others), e.g. SCT 39607008 Lung.
    type: CodeSpec
    #: Recommended display colour, RGB 0-255.
    color: tuple[int, int, int] = (128, 174, 128)
    #: Tracking identifier prefix used in the SR; defaults to the label name.
    tracking_id: str | None = None

    @field_validator("color")
    @classmethod
    def _rgb(cls, color: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(not 0 <= c <= 255 for c in color):
            raise ValueError("color must be three integers between 0 and 255 (RGB)")
        return color


class MissingSlicesSpec(_Strict):
    """``accepts.missing_slices``: gaps in a stack the model accepts, filled by linear
    interpolation between the slices around them (see :mod:`inference.volume`)."""

    #: Most slices missing in a row that are interpolated; a longer gap is refused.
    #: ``0`` refuses any gap.
    max_consecutive: Annotated[int, Field(ge=0, le=16)] = 2


class AcceptsSpec(_Strict):
    """What input a model accepts; a series outside this is refused before inference.

    Everything here but ``dims`` and ``missing_slices`` is decided from the headers alone
    (:mod:`models.acceptance`): on the node when a series completes (a routed model that
    cannot accept it records a NOT_APPLICABLE job, never queued), and on the worker again.
    """

    #: Modality (0008,0060) values accepted, e.g. ``[CT]``.
    modalities: Annotated[list[str], Field(min_length=1)]
    #: Body Part Examined (0018,0015) values accepted; empty accepts any (and none).
    body_parts: list[str] = []
    #: Fewest images a series must have.
    min_slices: Annotated[int, Field(ge=1)] = 1
    #: Missing slices interpolated; unset: see :attr:`ModelManifest.max_missing_slices`.
    missing_slices: MissingSlicesSpec | None = None
    #: ``3``: the network sees the volume; ``2``: it sees one slice at a time, ``[N, C, y, x]``.
    dims: Literal[2, 3] = 3
    #: DICOM keyword -> condition on the series' header (see :mod:`models.header_rules`).
    attributes: dict[str, AttributeCondition] = {}
    #: The series' physical size in mm (see :mod:`models.header_rules`).
    extent_mm: ExtentSpec | None = None

    _shorthand = field_validator("attributes", mode="before")(expand_shorthand)
    _keywords = field_validator("attributes")(check_attributes)


class IntensitySpec(_Strict):
    """Intensity scaling applied after orientation and resampling."""

    #: ``none``; ``window`` (below); ``percentile`` (below); ``zscore``: mean 0, standard
    #: deviation 1; ``max``: divided by the largest value.
    kind: Literal["none", "window", "percentile", "zscore", "max"] = "none"
    #: ``window``: [lower, upper] in modality units, mapped to [0, 1] and clipped.
    window: tuple[float, float] | None = None
    #: ``percentile``: [low, high] percentiles (0-100) mapped to [0, 1] and clipped;
    #: computed exactly over every voxel (linear interpolation, as numpy's default).
    percentiles: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _params_match_kind(self) -> IntensitySpec:
        if self.kind == "window" and self.window is None:
            raise ValueError("kind 'window' needs 'window: [lower, upper]'")
        if self.kind == "window" and self.window is not None and self.window[1] <= self.window[0]:
            raise ValueError(
                f"window {list(self.window)} must be [lower, upper] with lower < upper"
            )
        if self.kind == "percentile" and self.percentiles is None:
            raise ValueError("kind 'percentile' needs 'percentiles: [low, high]'")
        if self.percentiles is not None and not (
            0.0 <= self.percentiles[0] < self.percentiles[1] <= 100.0
        ):
            raise ValueError(
                f"percentiles {list(self.percentiles)} must satisfy 0 <= low < high <= 100"
            )
        return self


class CropForegroundSpec(_Strict):
    """Crop the scaled volume to the bounding box of its foreground, plus a margin.

    The network then sees only the box; its output outside the box is background, and
    the output is cut back to the source grid. Where the margin reaches beyond the image
    (a head that fills the field of view), ``beyond_image: pad`` (the default) adds it
    filled with ``pad_value``, so the network always sees the margin its recipe asks for
    (MONAI's ``CropForeground`` since 1.5, brainchop's conformed 256 mm cube); ``clip``
    stops the box at the image's edges (MONAI's ``allow_smaller=True``).
    """

    #: Voxels whose *scaled* intensity is above this are foreground.
    threshold: float = 0.0
    #: Voxels added on every side of the box.
    margin: Annotated[int, Field(ge=0)] = 0
    #: Where the margin reaches beyond the image: ``pad`` it, or ``clip`` the box.
    beyond_image: Literal["pad", "clip"] = "pad"
    #: The background after intensity scaling (0 for ``window``, ``percentile`` and
    #: ``max``); ``minimum``: the scaled volume's smallest value (``zscore``).
    pad_value: float | Literal["minimum"] = 0.0


class ResizeSpec(_Strict):
    """2D models: bring each image to the network's input size (see
    :mod:`inference.preprocess2d`); results go back onto the source image."""

    #: ``[height, width]`` of the network's input in pixels.
    shape: tuple[int, int]
    #: ``stretch``: scale each axis to its size (the aspect ratio changes);
    #: ``letterbox``: scale both axes by the same factor so that the image fits, centred,
    #: and pad the rest with ``pad_value``.
    mode: Literal["stretch", "letterbox"] = "stretch"
    #: Value of the letterbox padding, in the scaled intensities the network sees (before
    #: ``normalize``): 0 is black after a window or a [0, 1] scaling.
    pad_value: float = 0.0

    @field_validator("shape")
    @classmethod
    def _positive(cls, shape: tuple[int, int]) -> tuple[int, int]:
        if any(v < 1 for v in shape):
            raise ValueError(f"resize.shape {list(shape)} must be two positive sizes")
        return shape


class NormalizeSpec(_Strict):
    """Per-channel ``(value - mean) / std`` after everything else (ImageNet networks:
    mean ``[0.485, 0.456, 0.406]``, std ``[0.229, 0.224, 0.225]`` on [0, 1] images)."""

    #: One mean, or one per channel.
    mean: Annotated[list[float], Field(min_length=1)]
    #: One standard deviation, or one per channel (positive).
    std: Annotated[list[float], Field(min_length=1)]

    @model_validator(mode="after")
    def _lengths(self) -> NormalizeSpec:
        if len(self.mean) != len(self.std):
            raise ValueError(
                f"normalize has {len(self.mean)} means and {len(self.std)} standard deviations"
            )
        if any(not v > 0 for v in self.std):
            raise ValueError(f"normalize.std {self.std} must be positive")
        return self


class PreprocessingSpec(_Strict):
    """How the volume is brought to the network's expectations, in this order:
    orientation, resampling (``target_spacing`` or ``target_shape``), intensity scaling,
    foreground crop, channel layout."""

    #: Axis codes of the array the network sees, x then y then z, in the ITK/NIfTI
    #: convention: ``LPS`` means columns run to the patient's Left, rows to Posterior,
    #: slices to Superior (DICOM patient coordinates).
    orientation: str = "LPS"
    #: Target voxel spacing in mm (x, y, z); ``null`` keeps the source spacing.
    target_spacing: tuple[float, float, float] | None = None
    #: Resize to this shape (array order), whatever the spacing ("resized to 128³").
    target_shape: tuple[int, int, int] | None = None
    #: Interpolation of the image when resampling.
    interpolation: Literal["linear", "nearest"] = "linear"
    intensity: IntensitySpec = IntensitySpec()
    crop_foreground: CropForegroundSpec | None = None
    #: ``channels_first``: ``[N, C, z, y, x]``; ``channels_last``: ``[N, z, y, x, C]``
    #: (TensorFlow/Keras exports).
    channel_layout: Literal["channels_first", "channels_last"] = "channels_first"
    #: VOI LUT of the source images (PS3.3 C.11.2), applied first to projection
    #: radiographs (and to any image), giving [0, 1] with higher brighter: ``window``: the
    #: first Window Center / Width with its VOI LUT Function; ``lut``: the VOI LUT
    #: Sequence, else the window; either falls back to the full range of the stored
    #: values where the image has neither. ``none``: modality values.
    voi: Literal["none", "window", "lut"] = "none"
    #: 2D models: resize (or letterbox) each image to the network's input, after the
    #: intensity scaling.
    resize: ResizeSpec | None = None
    #: Channels of the network's image input: the grey image is repeated into each
    #: (3 for networks trained on RGB images, such as torchvision's ImageNet models).
    channels: Annotated[int, Field(ge=1, le=4)] = 1
    #: Per-channel normalisation, last (one mean/std, or one per channel).
    normalize: NormalizeSpec | None = None

    @field_validator("orientation")
    @classmethod
    def _axis_codes(cls, code: str) -> str:
        if not _ORIENTATION_RE.match(code):
            raise ValueError(
                f"orientation {code!r} is not three distinct axis codes from L/R, P/A, S/I "
                "(for example 'LPS' or 'RAS')"
            )
        return code

    @field_validator("target_spacing")
    @classmethod
    def _positive_spacing(
        cls, spacing: tuple[float, float, float] | None
    ) -> tuple[float, float, float] | None:
        if spacing is not None and any(not v > 0 for v in spacing):
            raise ValueError(f"target_spacing {list(spacing)} must be positive (mm)")
        return spacing

    @field_validator("target_shape")
    @classmethod
    def _positive_shape(cls, shape: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
        if shape is not None and any(v < 1 for v in shape):
            raise ValueError(f"target_shape {list(shape)} must be positive")
        return shape

    @model_validator(mode="after")
    def _one_resampling(self) -> PreprocessingSpec:
        if self.target_spacing is not None and self.target_shape is not None:
            raise ValueError("give target_spacing or target_shape, not both")
        if self.normalize is not None and len(self.normalize.mean) not in (1, self.channels):
            raise ValueError(
                f"normalize gives {len(self.normalize.mean)} means for {self.channels} "
                "channel(s); give one, or one per channel"
            )
        return self


class WholeVolumeSpec(_Strict):
    """The network sees the whole (preprocessed) volume at once."""

    #: ``whole_volume`` (the default) or ``sliding_window`` (below).
    mode: Literal["whole_volume"] = "whole_volume"
    #: Pad each spatial size up to a multiple of this (U-Nets with k poolings need 2^k);
    #: the padding is cut off the output again.
    pad_to_multiple: Annotated[int, Field(ge=1)] = 1
    #: Largest input the network is built for (array order): the TensorRT optimisation
    #: profile's maximum for networks with dynamic shapes. Larger inputs are refused.
    max_shape: tuple[int, ...] | None = None


class SlidingWindowSpec(_Strict):
    """Windows of ``roi_size`` at ``overlap``, batched, blended (MONAI's algorithm)."""

    #: ``sliding_window`` selects this mode.
    mode: Literal["sliding_window"]
    #: Window size in array order (2 values for 2D models, 3 for 3D).
    roi_size: tuple[int, ...]
    #: Fraction of a window shared with its neighbour along each axis.
    overlap: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.25
    #: ``gaussian``: windows weigh their centre more; ``constant``: plain average.
    blend: Literal["gaussian", "constant"] = "gaussian"
    #: Gaussian sigma as a fraction of the window size.
    sigma_scale: Annotated[float, Field(gt=0.0)] = 0.125
    #: Windows per network call.
    batch_size: Annotated[int, Field(ge=1)] = 1
    #: Value the volume is padded with where it is smaller than a window.
    pad_value: float = 0.0

    @field_validator("roi_size")
    @classmethod
    def _roi(cls, roi: tuple[int, ...]) -> tuple[int, ...]:
        if len(roi) not in (2, 3) or any(v < 1 for v in roi):
            raise ValueError(f"roi_size {list(roi)} must be 2 or 3 positive sizes")
        return roi


class WeightsFile(_Strict):
    """A weights file (relative to the package folder, absolute, or with ``$VARIABLES``)."""

    #: The file: relative to the package folder, absolute, or with ``$VARIABLES``.
    path: str
    #: Its SHA-256 checksum (hex), checked by ``models verify`` and at worker start.
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None


class NetworkSpec(_Strict):
    """Where the network comes from and what its tensors are called."""

    #: ``python``: ``entry`` names a factory ``module:function`` returning a torch module;
    #: ``onnx`` / ``torchscript``: ``path`` is a weights file (relative to the package
    #: folder, absolute, or starting with an environment variable such as
    #: ``$PACS_AI_SHARED_DATA``) with its ``sha256``.
    kind: Literal["python", "onnx", "torchscript"]
    #: ``python`` only: ``package.module:factory`` returning the torch module.
    entry: str | None = None
    #: ``onnx`` / ``torchscript``: the weights file.
    path: str | None = None
    #: SHA-256 checksum (hex) of ``path``.
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    #: An ONNX export of the same network (for ``kind`` python / torchscript), so that
    #: the onnxruntime and tensorrt backends can run it too.
    onnx: WeightsFile | None = None
    #: Name of the image input tensor, shape [N, 1, z, y, x] (see ``channel_layout``).
    input_name: str = "image"
    #: Optional input carrying the voxel spacing (x, y, z) in mm as a float32 [3] tensor.
    spacing_input_name: str | None = None
    #: Name of the output tensor.
    output_name: str = "output"
    #: ``labels``: the network returns an integer label map [1, 1, z, y, x];
    #: ``logits``/``probabilities``: [N, C, z, y, x] (segmentation) or [N, C]
    #: (classification), reduced by the postprocessing.
    output_kind: Literal["labels", "logits", "probabilities"] = "logits"

    @model_validator(mode="after")
    def _source_given(self) -> NetworkSpec:
        if self.kind == "python" and not self.entry:
            raise ValueError("kind 'python' needs 'entry: package.module:factory'")
        if self.kind != "python" and not self.path:
            raise ValueError(f"kind {self.kind!r} needs 'path' to the weights file")
        if self.entry is not None and ":" not in self.entry:
            raise ValueError(f"entry {self.entry!r} must look like 'package.module:factory'")
        if self.kind == "onnx" and self.onnx is not None:
            raise ValueError("kind 'onnx' has its ONNX file in 'path'; drop 'onnx'")
        return self


class BackendSpec(_Strict):
    """One backend to try, in the manifest's order of preference."""

    #: The backend; the first in the list that can run on the machine is used.
    name: Literal["tensorrt", "onnxruntime", "torch"]
    #: Numeric precision (tensorrt: fp32 or fp16, written into the ONNX graph).
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    #: torch only: run the module through ``torch.compile`` (compiled at warm-up).
    compile: bool = False
    #: onnxruntime only: execution providers in order (default: tensorrt and cuda before
    #: cpu on a GPU, cpu alone otherwise).
    execution_providers: list[Literal["tensorrt", "cuda", "cpu"]] | None = None
    #: tensorrt only: capture fixed-shape window batches in a CUDA graph.
    cuda_graph: bool = True

    @model_validator(mode="after")
    def _options_fit(self) -> BackendSpec:
        if self.compile and self.name != "torch":
            raise ValueError(f"'compile' is an option of the torch backend, not {self.name}")
        if self.execution_providers is not None and self.name != "onnxruntime":
            raise ValueError("'execution_providers' is an option of the onnxruntime backend")
        if self.name == "tensorrt" and self.precision == "bf16":
            raise ValueError("tensorrt runs fp32 or fp16 (FP16 is written into the ONNX graph)")
        return self


class PostprocessingSpec(_Strict):
    """From the network's output to one label per voxel (or class probabilities)."""

    #: ``argmax`` over channels, ``threshold`` of the probability of one channel.
    reduce: Literal["none", "argmax", "threshold"] = "none"
    #: ``reduce: threshold``: the probability at or above which a voxel is foreground.
    threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    #: Probabilities from logits: ``auto`` is softmax for several channels, sigmoid for one.
    activation: Literal["auto", "softmax", "sigmoid", "none"] = "auto"
    #: Keep only the largest connected component (face connectivity) of each label.
    largest_component: bool = False
    #: How the result goes back to the source grid after resampling: ``linear`` resamples
    #: the probabilities and reduces afterwards, ``nearest`` reduces first.
    resample_back: Literal["linear", "nearest"] = "linear"


class OutputsSpec(_Strict):
    """Which result objects the model may produce at all; each destination's output
    profile (``destinations.<name>.outputs``) then picks among them."""

    #: The DICOM Segmentation (segmentation models).
    seg: bool = True
    #: The TID 1500 Measurement Report.
    sr: bool = True
    #: Secondary Capture images with the outlines burned in (segmentation models).
    sc: bool = True
    #: The Encapsulated PDF summary.
    pdf: bool = True


class ClassSpec(_Strict):
    """One class of a classification model: a finding reported with its probability."""

    #: Index of the class in the network's output ``[N, C]``.
    index: Annotated[int, Field(ge=0)]
    #: The class's name in the SR and on the PDF.
    name: Annotated[str, Field(min_length=1, max_length=64)]
    #: The finding, e.g. ``{value: "233604007", scheme: SCT, meaning: Pneumonia}``.
    code: CodeSpec
    #: The finding is reported *present* at or above this probability.
    threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5


def _ordered_pair(name: str, pair: tuple[float, float] | None) -> list[str]:
    if pair is not None and not 0 <= pair[0] <= pair[1]:
        return [f"{name} {list(pair)} must be [min, max] with 0 <= min <= max"]
    return []


class LabelExpectation(_Strict):
    """What a plausible result looks like for one label (see :mod:`inference.plausibility`).

    Each range is ``[min, max]``, both inclusive; a result outside any of them is not
    delivered as normal (the route's ``on_implausible`` decides: held for review, or
    delivered flagged).
    """

    #: Volume of the label in mL (voxel count x voxel volume).
    volume_ml: tuple[float, float] | None = None
    #: Share of the field of view (the source volume's voxels) the label covers, 0-1.
    fov_fraction: tuple[float, float] | None = None
    #: Number of connected components (face-connected, as ``largest_component``):
    #: ``[min, max]``, or a single number for the maximum.
    components: tuple[int, int] | None = None
    #: Components smaller than this (mL) are not counted: specks a network leaves.
    min_component_ml: Annotated[float, Field(ge=0.0)] = 0.0

    @field_validator("components", mode="before")
    @classmethod
    def _maximum_alone(cls, value: object) -> object:
        return [0, value] if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _ranges(self) -> LabelExpectation:
        if self.volume_ml is None and self.fov_fraction is None and self.components is None:
            raise ValueError("give at least one of volume_ml, fov_fraction, components")
        components = self.components
        problems = [
            *_ordered_pair("volume_ml", self.volume_ml),
            *_ordered_pair("fov_fraction", self.fov_fraction),
            *_ordered_pair("components", None if components is None else (*components,)),
        ]
        if self.fov_fraction is not None and self.fov_fraction[1] > 1:
            problems.append(f"fov_fraction {list(self.fov_fraction)} must lie within [0, 1]")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class ExpectSpec(_Strict):
    """The manifest's ``expect:`` block: what a plausible result of the model looks like."""

    #: Segmentation models: label name -> its expectation.
    labels: dict[str, LabelExpectation] = {}
    #: Classification models: the largest entropy (bits) of the class probabilities that
    #: is still a decision (0: certain; 1 bit: two classes at 0.5 each). See
    #: :func:`inference.plausibility.entropy_bits`.
    max_entropy: Annotated[float, Field(gt=0.0)] | None = None


class ModelManifest(_Strict):
    """The validated content of ``model.yaml``."""

    #: Version of this schema the manifest is written for.
    schema_version: Literal[1, 2] = MANIFEST_SCHEMA_VERSION
    #: What routes name; lower case, digits and hyphens. Part of every result UID.
    id: Annotated[str, Field(pattern=_ID_RE)]
    #: The model's version; a new version gives new result UIDs.
    version: Annotated[str, Field(min_length=1, max_length=16)]
    #: Human-readable name: Manufacturer's Model Name and algorithm name in the results.
    name: Annotated[str, Field(min_length=1, max_length=64)]
    #: What the model does and how it was checked (for people; not written to results).
    description: str = ""
    #: ``segmentation`` (``labels``, a SEG) or ``classification`` (``classes``, an SR).
    task: Literal["segmentation", "classification"]
    #: Algorithm family (PS3.16 CID 7162), written into the SEG's algorithm identification.
    family: CodeSpec
    accepts: AcceptsSpec
    preprocessing: PreprocessingSpec = PreprocessingSpec()
    inference: Annotated[WholeVolumeSpec | SlidingWindowSpec, Field(discriminator="mode")] = (
        WholeVolumeSpec()
    )
    network: NetworkSpec
    #: Backends in order of preference, each with its precision.
    backends: Annotated[list[BackendSpec], Field(min_length=1)]
    postprocessing: PostprocessingSpec = PostprocessingSpec()
    #: Segmentation models: one entry per label of the network's output.
    labels: list[LabelSpec] = []
    #: Classification models: one entry per class of the network's output.
    classes: list[ClassSpec] = []
    outputs: OutputsSpec = OutputsSpec()
    #: What a plausible result looks like (a result outside it is not delivered as normal).
    expect: ExpectSpec = ExpectSpec()

    @model_validator(mode="after")
    def _labels_fit_task(self) -> ModelManifest:
        problems: list[str] = []
        if self.task == "segmentation":
            if not self.labels:
                problems.append("a segmentation model needs at least one entry in 'labels'")
            if self.classes:
                problems.append("'classes' belong to classification models; use 'labels'")
        else:
            if not self.classes:
                problems.append("a classification model needs at least one entry in 'classes'")
            if self.labels:
                problems.append("'labels' belong to segmentation models; use 'classes'")
            if self.outputs.seg:
                problems.append("a classification model has no SEG: set 'outputs: {seg: false}'")
            if self.network.output_kind == "labels":
                problems.append("a classification network outputs logits or probabilities")
            if self.inference.mode != "whole_volume":
                problems.append("a classification model sees the whole volume")
        values = [label.value for label in self.labels]
        if len(values) != len(set(values)):
            problems.append(f"label values must be unique, got {values}")
        indices = [c.index for c in self.classes]
        if len(indices) != len(set(indices)):
            problems.append(f"class indices must be unique, got {indices}")
        problems.extend(self._dims_problems())
        problems.extend(self._expect_problems())
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _expect_problems(self) -> list[str]:
        expect = self.expect
        problems = []
        names = [label.name for label in self.labels]
        unknown = [name for name in expect.labels if name not in names]
        if unknown and self.task == "segmentation":
            problems.append(
                f"expect.labels names {unknown}, which are not labels of the model "
                f"(labels: {names})"
            )
        if expect.labels and self.task == "classification":
            problems.append("expect.labels is for segmentation models; use expect.max_entropy")
        if expect.max_entropy is not None and self.task == "segmentation":
            problems.append("expect.max_entropy is for classification models")
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated and any(name in expect.labels for name in duplicated):
            problems.append(f"expect.labels names {duplicated}, which more than one label has")
        return problems

    def _dims_problems(self) -> list[str]:
        problems = []
        inference = self.inference
        if (
            isinstance(inference, SlidingWindowSpec)
            and len(inference.roi_size) != self.accepts.dims
        ):
            problems.append(
                f"inference.roi_size has {len(inference.roi_size)} sizes for a "
                f"{self.accepts.dims}D model"
            )
        if self.accepts.dims == 2:
            pre = self.preprocessing
            if pre.target_spacing or pre.target_shape or pre.crop_foreground:
                problems.append(
                    "2D models take slices as they are: resampling and foreground crop are "
                    "for 3D models (use 'preprocessing.resize' for a 2D input size)"
                )
        elif self.preprocessing.resize is not None:
            problems.append(
                "'preprocessing.resize' is for 2D models (accepts.dims: 2); 3D models use "
                "target_shape or target_spacing"
            )
        return problems

    @property
    def max_missing_slices(self) -> int:
        """Consecutive missing slices filled by interpolation before the model runs.

        ``accepts.missing_slices.max_consecutive`` when given; else 2 for a model that
        resamples (``target_spacing`` or ``target_shape``: its network never sees the
        source grid) and 0 (refuse any gap) for one that does not.
        """
        if self.accepts.missing_slices is not None:
            return self.accepts.missing_slices.max_consecutive
        pre = self.preprocessing
        return 2 if pre.target_spacing is not None or pre.target_shape is not None else 0

    @model_validator(mode="after")
    def _extent_fits_network(self) -> ModelManifest:
        """A series ``accepts.extent_mm`` lets through must fit ``inference.max_shape``
        after resampling (and the crop's padded margins), or it would pass the header
        check only to be refused after minutes of reading and resampling."""
        extent, inference = self.accepts.extent_mm, self.inference
        spacing = self.preprocessing.target_spacing
        if (
            extent is None
            or extent.max is None
            or spacing is None
            or not isinstance(inference, WholeVolumeSpec)
            or inference.max_shape is None
            or len(inference.max_shape) != 3
        ):
            return self
        limits = extent.max if isinstance(extent.max, tuple) else (extent.max,) * 3
        crop = self.preprocessing.crop_foreground
        extra = 2 * crop.margin if crop is not None and crop.beyond_image == "pad" else 0
        code = self.preprocessing.orientation
        problems = []
        for array_axis, largest in enumerate(inference.max_shape):
            # Array axis 0 is z: the code's third letter, the target spacing's third value.
            letter, step = code[2 - array_axis], spacing[2 - array_axis]
            patient_axis = "LRPASI".index(letter) // 2
            voxels = math.floor(limits[patient_axis] / step + 0.5) + extra
            if voxels > largest:
                fits = (largest - extra) * step
                problems.append(
                    f"accepts.extent_mm.max allows {limits[patient_axis]:g} mm along "
                    f"{'xyz'[patient_axis]}, up to {voxels} voxels at {step:g} mm"
                    f"{' with the crop margins' if extra else ''}: more than "
                    f"inference.max_shape {largest}; lower it to {fits:g} mm or raise max_shape"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def onnx_file(self) -> WeightsFile | None:
        """The ONNX file of the network, whatever its kind (``None`` when there is none)."""
        network = self.network
        if network.kind == "onnx":
            assert network.path is not None  # guaranteed by the schema
            return WeightsFile(path=network.path, sha256=network.sha256)
        return network.onnx
