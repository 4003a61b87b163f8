"""From a loaded volume to labels on the source grid (or class probabilities), on the device.

:class:`ModelRunner` opens a model package on the first backend that can run here and
keeps it warm between jobs. :meth:`ModelRunner.predict` runs the manifest's recipe as
tensor operations on the worker's device (a GPU when there is one): the voxels go up once
through pinned host memory, then reorientation, resampling, intensity scaling and
foreground crop (:mod:`inference.preprocess`), the network over the whole volume or over
batched sliding windows with blending (:mod:`inference.sliding_window`), and the way back
(:mod:`inference.postprocess`): probabilities, uncrop, inverse resampling, argmax or
threshold. Only the final label map comes back to the host.

2D models (``accepts.dims: 2``) see the slices of the volume one at a time, as a batch of
images ``[N, C, y, x]`` (whole slices, or 2D sliding windows). Classification models see
the whole volume and return one probability per class.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812

from core.errors import InvalidInputError
from inference.backends import Fallback, open_backend
from inference.backends.base import BackendOptions, InputShapes
from inference.postprocess import activate, keep_largest_components, to_source_labels
from inference.preprocess import Prepared, prepare
from inference.preprocess2d import to_network_channels
from inference.sliding_window import WindowStats, sliding_window
from inference.volume import Volume
from models.acceptance import facts_from_volume, refusals
from models.manifest import ClassSpec, ModelManifest, SlidingWindowSpec, WholeVolumeSpec
from models.registry import ModelPackage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassResult:
    """One class of a classification model's result."""

    spec: ClassSpec
    probability: float

    @property
    def present(self) -> bool:
        return self.probability >= self.spec.threshold


#: A label map ``[z, y, x]``: uint8, or uint16 for a model with label values above 255.
Labels = npt.NDArray[np.uint8] | npt.NDArray[np.uint16]


@dataclass(frozen=True)
class Prediction:
    """A model's output for one volume.

    Segmentation: ``labels`` ``[z, y, x]`` on the volume's own grid, uint8 when every
    label value the model declares is below 256 (most models), else uint16.
    Classification: ``labels`` is ``None`` and ``classes`` holds one probability per class.
    """

    labels: Labels | None
    backend: str
    precision: str
    device: str
    fallbacks: tuple[Fallback, ...]
    timings: dict[str, float] = field(default_factory=dict)
    classes: tuple[ClassResult, ...] = ()
    #: Network calls' windows (sliding window) or images (whole volume / 2D slices).
    windows: int = 0


def check_accepts(manifest: ModelManifest, volume: Volume) -> None:
    """Refuse a volume the model does not accept: the manifest's ``accepts`` (modality,
    body part, slice count, header attributes, physical extent) decided as the node
    decides it from the headers (:mod:`models.acceptance`), on the loaded volume.

    Raises:
        InvalidInputError: naming what the model accepts and what the series is.
    """
    accepts = manifest.accepts
    facts = facts_from_volume(
        modality=volume.modality,
        header=volume.source_headers[0] if volume.source_headers else None,
        shape=volume.shape,
        spacing=volume.spacing,
        direction=volume.direction,
    )
    problems = refusals(accepts, facts)
    slices = volume.shape[0]
    if accepts.dims == 2 and manifest.task == "classification" and slices != 1:
        problems.append(f"a 2D classification model takes one image; the series has {slices}")
    if problems:
        raise InvalidInputError(
            f"model {manifest.id} {manifest.version} cannot run on this series: "
            + "; ".join(problems),
            stage="model",
        )


def network_input_shapes(manifest: ModelManifest) -> InputShapes | None:
    """The image input's shapes when the manifest fixes them (TensorRT profiles).

    Sliding windows: a fixed batch of ``batch_size`` windows. Whole volume: the target
    shape when there is one, else 1 .. ``max_shape``. ``None`` when nothing bounds them.
    """
    inference = manifest.inference
    channels_last = manifest.preprocessing.channel_layout == "channels_last"
    channels = manifest.preprocessing.channels

    def full(batch: int, spatial: tuple[int, ...]) -> tuple[int, ...]:
        return (batch, *spatial, channels) if channels_last else (batch, channels, *spatial)

    if isinstance(inference, SlidingWindowSpec):
        shape = full(inference.batch_size, inference.roi_size)
        return InputShapes(min=shape, opt=shape, max=shape)
    resize = manifest.preprocessing.resize
    if resize is not None:
        shape = full(1, tuple(_round_up(v, inference.pad_to_multiple) for v in resize.shape))
        return InputShapes(min=shape, opt=shape, max=shape)
    target = manifest.preprocessing.target_shape
    if target is not None and manifest.preprocessing.crop_foreground is None:
        padded = tuple(_round_up(v, inference.pad_to_multiple) for v in target)
        shape = full(1, padded)
        return InputShapes(min=shape, opt=shape, max=shape)
    crop = manifest.preprocessing.crop_foreground
    if target is not None and crop is not None and inference.max_shape is None:
        # The foreground box is at most the target plus its margin on each side (the
        # margin is padded beyond the grid with beyond_image: pad).
        extra = 2 * crop.margin if crop.beyond_image == "pad" else 0
        largest = tuple(_round_up(v + extra, inference.pad_to_multiple) for v in target)
        smallest = tuple(inference.pad_to_multiple for _ in target)
        return InputShapes(min=full(1, smallest), opt=full(1, largest), max=full(1, largest))
    if inference.max_shape is not None:
        smallest = tuple(inference.pad_to_multiple for _ in inference.max_shape)
        middle = tuple(
            _round_up(max(v // 2, 1), inference.pad_to_multiple) for v in inference.max_shape
        )
        return InputShapes(
            min=full(1, smallest), opt=full(1, middle), max=full(1, inference.max_shape)
        )
    return None


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class ModelRunner:
    """A model package opened on a backend, kept warm between jobs.

    ``profile=True`` synchronises the GPU after each stage and network call so that the
    reported timings split exactly (benchmarks); workers leave it off.
    """

    def __init__(
        self,
        package: ModelPackage,
        *,
        device: str,
        engine_dir: Path | None = None,
        allow_build: bool = True,
        profile: bool = False,
    ) -> None:
        self.package = package
        self.manifest = package.manifest
        self.device = torch.device(device)
        self.profile = profile
        options = BackendOptions(
            device=device,
            engine_dir=engine_dir,
            allow_build=allow_build,
            shapes=network_input_shapes(self.manifest),
        )
        self.backend, fallbacks = open_backend(package, options=options)
        self.fallbacks = tuple(fallbacks)
        self._pinned: torch.Tensor | None = None

    def warm_up(self) -> float:
        """Run the whole recipe once on a small synthetic volume; return the seconds."""
        from inference.verify import synthetic_volume  # noqa: PLC0415

        started = time.perf_counter()
        self.predict(synthetic_volume(self.manifest))
        seconds = time.perf_counter() - started
        logger.info(
            "model %s %s warm on %s/%s on %s (%.2f s)",
            self.manifest.id,
            self.manifest.version,
            self.backend.name,
            self.backend.precision,
            self.backend.device,
            seconds,
        )
        return seconds

    def predict(self, volume: Volume) -> Prediction:
        """Run the model on ``volume``.

        Raises:
            InvalidInputError: the model does not accept the volume.
        """
        check_accepts(self.manifest, volume)
        timings: dict[str, float] = {}
        started = time.perf_counter()
        prepared = prepare(volume, self._upload(volume.voxels), self.manifest.preprocessing)
        self._sync()
        timings["preprocess"] = time.perf_counter() - started

        stats = WindowStats()
        started = time.perf_counter()
        output = self._infer(prepared, stats)
        self._sync()
        total = time.perf_counter() - started
        timings["network"] = total - stats.stitch_seconds
        timings["stitch"] = stats.stitch_seconds

        started = time.perf_counter()
        labels: Labels | None = None
        classes: tuple[ClassResult, ...] = ()
        if self.manifest.task == "classification":
            classes = self._classes(output)
        else:
            labels = self._labels(output, prepared)
        timings["postprocess"] = time.perf_counter() - started
        return Prediction(
            labels=labels,
            classes=classes,
            backend=self.backend.name,
            precision=self.backend.precision,
            device=self.backend.device,
            fallbacks=self.fallbacks,
            timings=timings,
            windows=stats.windows,
        )

    def close(self) -> None:
        self.backend.close()
        self._pinned = None

    # -- steps -------------------------------------------------------------------------

    def _upload(self, voxels: npt.NDArray[np.float32]) -> torch.Tensor:
        source = torch.from_numpy(np.ascontiguousarray(voxels, dtype=np.float32))
        if self.device.type != "cuda":
            return source
        # Through a reused pinned buffer: an asynchronous DMA, no pageable staging copy.
        if self._pinned is None or self._pinned.numel() < source.numel():
            self._pinned = torch.empty(source.numel(), dtype=torch.float32, pin_memory=True)
        staging = self._pinned[: source.numel()].view(source.shape)
        staging.copy_(source)
        return staging.to(self.device, non_blocking=True)

    def _sync(self) -> None:
        if self.profile and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _infer(self, prepared: Prepared, stats: WindowStats) -> torch.Tensor:
        """The network's output ``[1, K, *spatial]`` (or ``[1, K]`` for classification)."""
        image = prepared.voxels
        inference = self.manifest.inference
        if self.manifest.accepts.dims == 2:
            return self._infer_slices(image, prepared, stats)
        batch = image[None, None]
        if isinstance(inference, SlidingWindowSpec):
            return sliding_window(
                batch,
                lambda windows: self._call(windows, prepared),
                roi_size=inference.roi_size,
                overlap=inference.overlap,
                blend=inference.blend,
                sigma_scale=inference.sigma_scale,
                batch_size=inference.batch_size,
                pad_value=inference.pad_value,
                stats=stats,
                synchronize=self.profile,
            )
        stats.windows += 1
        return self._whole(batch, prepared, inference)

    def _whole(
        self, batch: torch.Tensor, prepared: Prepared, inference: WholeVolumeSpec
    ) -> torch.Tensor:
        spatial = tuple(int(v) for v in batch.shape[2:])
        if inference.max_shape is not None and any(
            v > m for v, m in zip(spatial, inference.max_shape, strict=False)
        ):
            raise InvalidInputError(
                f"model {self.manifest.id}: the preprocessed volume is {list(spatial)}, larger "
                f"than the network's maximum {list(inference.max_shape)}",
                stage="model",
            )
        multiple = inference.pad_to_multiple
        pad: list[int] = []
        for size in reversed(spatial):
            diff = _round_up(size, multiple) - size
            pad.extend([diff // 2, diff - diff // 2])
        if any(pad):
            batch = F.pad(batch, pad)
        output = self._call(batch, prepared)
        if any(pad) and self.manifest.task == "segmentation":
            keep = [slice(None), slice(None)]
            for axis, size in enumerate(spatial):
                before = pad[(len(spatial) - 1 - axis) * 2]
                keep.append(slice(before, before + size))
            output = output[tuple(keep)]
        return output

    def _infer_slices(
        self, image: torch.Tensor, prepared: Prepared, stats: WindowStats
    ) -> torch.Tensor:
        inference = self.manifest.inference
        outputs = []
        for index in range(image.shape[0]):
            plane = image[index][None, None]
            if isinstance(inference, SlidingWindowSpec):
                out = sliding_window(
                    plane,
                    lambda windows: self._call(windows, prepared),
                    roi_size=inference.roi_size,
                    overlap=inference.overlap,
                    blend=inference.blend,
                    sigma_scale=inference.sigma_scale,
                    batch_size=inference.batch_size,
                    pad_value=inference.pad_value,
                    stats=stats,
                    synchronize=self.profile,
                )
            else:
                stats.windows += 1
                out = self._whole(plane, prepared, inference)
            outputs.append(out)
        if self.manifest.task == "classification":
            return outputs[0]
        return torch.stack([o[0] for o in outputs], dim=1)[None]

    def _call(self, batch: torch.Tensor, prepared: Prepared) -> torch.Tensor:
        """One network call on ``[N, C, *spatial]`` (channels first), output channels first."""
        network = self.manifest.network
        pre = self.manifest.preprocessing
        channels_last = pre.channel_layout == "channels_last"
        batch = to_network_channels(batch, channels=pre.channels, normalize=pre.normalize)
        tensor = batch.movedim(1, -1).contiguous() if channels_last else batch
        inputs = {network.input_name: tensor}
        if network.spacing_input_name is not None:
            inputs[network.spacing_input_name] = torch.tensor(
                prepared.spacing, dtype=torch.float32, device=batch.device
            )
        outputs = self.backend.run(inputs)
        if network.output_name not in outputs:
            raise RuntimeError(
                f"model {self.manifest.id}: the network returned {sorted(outputs)}, "
                f"not {network.output_name!r}"
            )
        output = outputs[network.output_name].to(batch.device)
        if channels_last and output.ndim > 2:
            output = output.movedim(-1, 1)
        return output

    def _classes(self, output: torch.Tensor) -> tuple[ClassResult, ...]:
        if output.ndim != 2 or output.shape[0] != 1:
            raise RuntimeError(
                f"model {self.manifest.id}: a classification network returns [1, C], "
                f"got {tuple(output.shape)}"
            )
        probabilities = activate(output, self.manifest)[0].cpu().tolist()
        results = []
        for spec in self.manifest.classes:
            if spec.index >= len(probabilities):
                raise RuntimeError(
                    f"model {self.manifest.id}: class {spec.name!r} is output {spec.index}, "
                    f"the network returns {len(probabilities)}"
                )
            results.append(ClassResult(spec=spec, probability=float(probabilities[spec.index])))
        return tuple(results)

    def _labels(self, output: torch.Tensor, prepared: Prepared) -> Labels:
        if output.ndim != 5 or output.shape[0] != 1:
            raise RuntimeError(
                f"model {self.manifest.id}: expected a [1, C, z, y, x] output, "
                f"got {tuple(output.shape)}"
            )
        labels = to_source_labels(output, prepared, self.manifest)
        if labels.is_floating_point() or (labels.dtype != torch.uint8 and int(labels.min()) < 0):
            raise RuntimeError(
                f"model {self.manifest.id}: the network's labels are {labels.dtype}, "
                "not non-negative integers"
            )
        # In the narrowest integer type that holds them (uint8 for most models): a wider
        # copy of a CT's labels would be the largest array of the whole job.
        narrow = labels.dtype == torch.uint8
        if not narrow:
            labels = labels.to(torch.uint8 if int(labels.max()) < 256 else torch.int32)
        values = labels.cpu().numpy()
        if self.manifest.postprocessing.largest_component:
            # Changed in place: never the network's own output buffer.
            values = values.copy() if narrow else values
            keep_largest_components(values)
        self._check_declared(values)
        on_grid = prepared.reorientation.inverse(values)
        # uint8 for a model whose label values all fit (half the memory of uint16, and
        # what a SEG encodes its segment numbers in).
        if max((label.value for label in self.manifest.labels), default=0) < 256:
            return np.ascontiguousarray(on_grid, dtype=np.uint8)
        return np.ascontiguousarray(on_grid, dtype=np.uint16)

    def _check_declared(self, values: npt.NDArray[np.integer]) -> None:
        known = {label.value for label in self.manifest.labels} | {0}
        # Only values up to the maximum can occur: a full scan happens only when the
        # manifest leaves gaps below it (np.unique would sort ~10^8 voxels every time).
        gaps = [v for v in range(int(values.max(initial=0)) + 1) if v not in known]
        unknown = set(np.unique(values[np.isin(values, gaps)]).tolist()) if gaps else set()
        if unknown:
            raise RuntimeError(
                f"model {self.manifest.id}: the network produced label values {sorted(unknown)} "
                "that its manifest does not declare"
            )
