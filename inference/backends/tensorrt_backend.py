"""TensorRT backend (TensorRT 10.x and 11.x Python API): ONNX -> engine -> run on torch memory.

Build (:func:`build_engine`): the ONNX graph, rewritten to FP16 *in the graph* when the
manifest asks for fp16 (:mod:`inference.onnx_fp16`; TensorRT 11 networks are strongly
typed and have no FP16 builder flag, and 10.x gets the ``STRONGLY_TYPED`` creation flag
so both behave alike), parsed with ``OnnxParser``, one optimisation profile for the image
input (a fixed window batch for sliding-window models, or the manifest's shape range),
the shared timing cache loaded and saved back. Engines are cached by
:class:`models.engine_cache.EngineKey` (ONNX hash, precision, profiles, TensorRT version,
GPU compute capability) and built under a file lock at worker start or by
``pacs-ai models build-engine`` -- never inside a job: a job that finds no engine falls
back to the next backend with a note saying so.

Run: one execution context on one CUDA stream owned by the backend; torch tensors are
the bindings (``set_tensor_address``), ``execute_async_v3`` is enqueued on that stream,
ordered after torch's current stream and before it again by events, so the caller never
synchronises. Batches smaller than the profile's fixed batch are padded to it, and with
``cuda_graph`` (default) the fixed-shape call is captured once in a CUDA graph and
replayed, which removes the per-layer launch cost on small windows.

Nothing here has run on a GPU yet: no machine with TensorRT was available (see README).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from core.files import atomic_write
from inference.backends.base import BackendOptions, BackendUnavailableError, InputShapes
from models.engine_cache import EngineCache, EngineKey, ProfileShapes, file_lock
from models.registry import ModelPackage, sha256_of

logger = logging.getLogger(__name__)

WORKSPACE_MIB = 4096


def import_tensorrt() -> Any:
    """The ``tensorrt`` module.

    Raises:
        BackendUnavailableError: it is not installed.
    """
    try:
        import tensorrt  # noqa: PLC0415 -- optional framework
    except ImportError as exc:
        raise BackendUnavailableError(
            f"tensorrt is not installed ({exc}); pip install 'pacs-ai[tensorrt]' on a machine "
            "with an NVIDIA GPU"
        ) from exc
    return tensorrt


def engine_key(
    package: ModelPackage,
    *,
    precision: str,
    shapes: InputShapes,
    tensorrt_version: str,
    compute_capability: tuple[int, int],
) -> EngineKey:
    """The cache key of ``package``'s engine for these shapes on this TensorRT and GPU.

    Raises:
        BackendUnavailableError: the package has no ONNX file.
    """
    from inference.onnx_fp16 import CONVERTER_VERSION  # noqa: PLC0415

    path = package.onnx_path
    if path is None:
        raise BackendUnavailableError("tensorrt: the package has no ONNX file to build from")
    profile = ProfileShapes(
        input_name=package.manifest.network.input_name,
        min=shapes.min,
        opt=shapes.opt,
        max=shapes.max,
    )
    return EngineKey(
        model_id=package.id,
        onnx_sha256=sha256_of(path),
        precision=precision,
        profiles=(profile,),
        tensorrt_version=tensorrt_version,
        compute_capability=f"{compute_capability[0]}.{compute_capability[1]}",
        converter_version=CONVERTER_VERSION if precision == "fp16" else 0,
        workspace_mib=WORKSPACE_MIB,
    )


def onnx_for_precision(path: Path, precision: str) -> bytes:
    """The ONNX bytes an engine of ``precision`` is built from (FP16 rewritten in the graph).

    Raises:
        BackendUnavailableError: the graph cannot be rewritten, or onnx is missing.
    """
    if precision == "fp32":
        return path.read_bytes()
    from inference.backends.onnxruntime_backend import _fp16_bytes  # noqa: PLC0415

    return _fp16_bytes(path)


def build_engine(
    onnx_bytes: bytes,
    profiles: tuple[ProfileShapes, ...],
    *,
    timing_cache: Path,
    workspace_mib: int = WORKSPACE_MIB,
) -> bytes:
    """Build a serialized engine from ONNX bytes with a strongly typed network.

    Raises:
        BackendUnavailableError: TensorRT is missing, the parser refuses the graph (its
            errors listed), or the build fails.
    """
    trt = import_tensorrt()
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:
        # Required on 10.x for precision-from-the-graph; accepted and implied on 11.x.
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendUnavailableError(f"tensorrt: the ONNX parser refused the graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    profile = builder.create_optimization_profile()
    for shapes in profiles:
        profile.set_shape(shapes.input_name, shapes.min, shapes.opt, shapes.max)
    config.add_optimization_profile(profile)
    with file_lock(timing_cache.with_suffix(".lock")):
        previous = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(previous)
        config.set_timing_cache(cache, ignore_mismatch=False)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendUnavailableError("tensorrt: the engine build failed (see the log above)")
        atomic_write(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized))


class TensorRTBackend:
    name = "tensorrt"

    def __init__(
        self,
        package: ModelPackage,
        *,
        options: BackendOptions,
        precision: str = "fp32",
        cuda_graph: bool = True,
    ) -> None:
        trt = import_tensorrt()
        if not options.device.startswith("cuda") or not torch.cuda.is_available():
            raise BackendUnavailableError("tensorrt: needs an NVIDIA GPU (this worker has none)")
        if options.shapes is None:
            raise BackendUnavailableError(
                "tensorrt: the network's input shapes are open; give inference.max_shape, "
                "preprocessing.target_shape or a sliding window"
            )
        if options.engine_dir is None:
            raise BackendUnavailableError("tensorrt: no engine cache folder configured")
        self.device = options.device
        self.precision = precision
        self._package = package
        device = torch.device(options.device)
        key = engine_key(
            package,
            precision=precision,
            shapes=options.shapes,
            tensorrt_version=str(trt.__version__),
            compute_capability=torch.cuda.get_device_capability(device),
        )
        cache = EngineCache(options.engine_dir)
        path = cache.lookup(key)
        if path is None and not options.allow_build:
            raise BackendUnavailableError(
                f"tensorrt: no engine for {package.id} on this GPU and TensorRT yet; engines "
                "are built at worker start or with `pacs-ai models build-engine`, never in a job"
            )
        if path is None:
            onnx_path = package.onnx_path
            assert onnx_path is not None  # engine_key checked it
            path = cache.get_or_build(
                key,
                lambda: build_engine(
                    onnx_for_precision(onnx_path, precision),
                    key.profiles,
                    timing_cache=cache.timing_cache_path(key),
                ),
            )
        trt_logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(trt_logger)
        with torch.cuda.device(device):
            self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if self._engine is None:
                raise BackendUnavailableError(f"tensorrt: cannot load engine {path}")
            self._context = self._engine.create_execution_context()
            self._stream = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [
            n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT
        ]
        self._outputs = [n for n in names if n not in self._inputs]
        network = package.manifest.network
        if network.input_name not in self._inputs or network.output_name not in self._outputs:
            raise BackendUnavailableError(
                f"tensorrt: the engine has inputs {self._inputs} and outputs {self._outputs}; "
                f"the manifest names {network.input_name!r} and {network.output_name!r}"
            )
        self._shapes = options.shapes
        self._use_graph = cuda_graph and options.shapes.fixed
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static: dict[str, torch.Tensor] = {}
        self._torch_device = device
        logger.info("tensorrt engine %s loaded (%s)", path.name, precision)

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        network = self._package.manifest.network
        image = inputs[network.input_name].to(self._torch_device, torch.float32)
        count = image.shape[0]
        if self._shapes.fixed and count < self._shapes.opt[0]:
            # A short last batch: padded to the profile's fixed batch, extra rows dropped.
            filler = image.new_zeros((self._shapes.opt[0] - count, *image.shape[1:]))
            image = torch.cat([image, filler])
        if self._use_graph and tuple(image.shape) == self._shapes.opt:
            output = self._replay(network.input_name, image, network.output_name)
        else:
            output = self._execute({network.input_name: image.contiguous()})[network.output_name]
        return {network.output_name: output[:count]}

    def _execute(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = self._bind(feeds)
        current = torch.cuda.current_stream(self._torch_device)
        self._stream.wait_stream(current)
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError("tensorrt: execute_async_v3 failed (see the log above)")
        current.wait_stream(self._stream)
        return outputs

    def _bind(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for name, tensor in feeds.items():
            self._context.set_input_shape(name, tuple(tensor.shape))
            self._context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self._outputs:
            shape = tuple(self._context.get_tensor_shape(name))
            tensor = torch.empty(shape, dtype=torch.float32, device=self._torch_device)
            self._context.set_tensor_address(name, tensor.data_ptr())
            outputs[name] = tensor
        return outputs

    def _replay(self, input_name: str, image: torch.Tensor, output_name: str) -> torch.Tensor:
        if self._graph is None:
            static_in = image.clone()
            # The first enqueue outside capture lets TensorRT finish its lazy set-up.
            self._static = {input_name: static_in, **self._execute({input_name: static_in})}
            torch.cuda.synchronize(self._torch_device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self._stream):
                self._context.execute_async_v3(self._stream.cuda_stream)
            self._graph = graph
        self._static[input_name].copy_(image)
        current = torch.cuda.current_stream(self._torch_device)
        self._stream.wait_stream(current)
        with torch.cuda.stream(self._stream):
            self._graph.replay()
        current.wait_stream(self._stream)
        return self._static[output_name].clone()

    def close(self) -> None:
        self._graph = None
        self._static.clear()
        del self._context
        del self._engine
        torch.cuda.empty_cache()
