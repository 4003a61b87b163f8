"""FP16 in the ONNX graph: the form TensorRT 10/11 strongly typed networks take precision in.

TensorRT 11 removed the builder's FP16 flag: a strongly typed network runs each layer in
the type its tensors have in the graph. :func:`convert_to_fp16` therefore rewrites the
ONNX model itself: float32 weights and constants become float16, ``Cast``-to-float32
nodes cast to float16, and the graph keeps float32 at its boundary -- a ``Cast`` to
float16 after every float32 input and a ``Cast`` back to float32 before every output --
so that callers bind the same float32 tensors whatever the precision. Inputs that ONNX
requires in float32 whatever the data type (``Resize`` scales, for instance) stay float32.

The result is checked with ONNX's strict shape and type inference, so a graph the rewrite
cannot express in float16 is refused here, with the reason, rather than by TensorRT later.
Needs the ``onnx`` package (extra ``onnx``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

#: Bumped whenever the rewrite changes: part of the TensorRT engine cache key.
CONVERTER_VERSION = 1

#: (op type, input index) that the ONNX operators define as float32 whatever the data type.
_FLOAT32_INPUTS = frozenset(
    {
        ("Resize", 1),  # roi
        ("Resize", 2),  # scales
        ("Upsample", 1),  # scales
    }
)
_FP16_MAX = float(np.finfo(np.float16).max)


class Fp16ConversionError(ValueError):
    """The graph cannot be rewritten to float16 (the message says which node)."""


def convert_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of ``model`` computing in float16 with float32 inputs and outputs.

    Raises:
        Fp16ConversionError: the rewritten graph does not type-check.
    """
    import onnx  # noqa: PLC0415 -- optional dependency

    converted = onnx.ModelProto()
    converted.CopyFrom(model)
    graph = converted.graph
    keep = {
        node.input[index]
        for node in graph.node
        for op, index in _FLOAT32_INPUTS
        if node.op_type == op and len(node.input) > index and node.input[index]
    }
    _weights_to_half(graph, keep)
    head = _cast_inputs(graph)
    tail = _cast_outputs(graph)
    nodes = [*head, *graph.node, *tail]
    del graph.node[:]
    graph.node.extend(nodes)
    # Intermediate type annotations were float32; inference recomputes them.
    del graph.value_info[:]
    try:
        checked: onnx.ModelProto = onnx.shape_inference.infer_shapes(
            converted, check_type=True, strict_mode=True
        )
    except onnx.shape_inference.InferenceError as exc:
        raise Fp16ConversionError(f"the graph does not type-check in float16: {exc}") from exc
    return checked


def _to_half(tensor: onnx.TensorProto) -> onnx.TensorProto:
    from onnx import numpy_helper  # noqa: PLC0415

    values = numpy_helper.to_array(tensor)
    half = np.clip(values, -_FP16_MAX, _FP16_MAX).astype(np.float16)
    return numpy_helper.from_array(half, tensor.name)


def _weights_to_half(graph: onnx.GraphProto, keep: set[str]) -> None:
    """Float32 initializers and constants to float16; casts to float32 cast to float16."""
    from onnx import TensorProto  # noqa: PLC0415

    for initializer in graph.initializer:
        if initializer.data_type == TensorProto.FLOAT and initializer.name not in keep:
            initializer.CopyFrom(_to_half(initializer))
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] not in keep:
            for attribute in node.attribute:
                if attribute.name == "value" and attribute.t.data_type == TensorProto.FLOAT:
                    attribute.t.CopyFrom(_to_half(attribute.t))
        elif node.op_type == "Cast":
            for attribute in node.attribute:
                if attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                    attribute.i = TensorProto.FLOAT16


def _cast_inputs(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """A Cast to float16 after each float32 graph input, its consumers rewired to it."""
    from onnx import TensorProto, helper  # noqa: PLC0415

    initializers = {i.name for i in graph.initializer}
    casts: list[onnx.NodeProto] = []
    for graph_input in graph.input:
        if graph_input.name in initializers:
            continue
        if graph_input.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half_name = f"{graph_input.name}__fp16"
        for node in graph.node:
            for index, name in enumerate(node.input):
                if name == graph_input.name and (node.op_type, index) not in _FLOAT32_INPUTS:
                    node.input[index] = half_name
        casts.append(
            helper.make_node(
                "Cast",
                [graph_input.name],
                [half_name],
                to=TensorProto.FLOAT16,
                name=f"pacs_ai_cast_in_{len(casts)}",
            )
        )
    return casts


def _cast_outputs(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """A Cast back to float32 before each float32 graph output."""
    from onnx import TensorProto, helper  # noqa: PLC0415

    casts: list[onnx.NodeProto] = []
    for graph_output in graph.output:
        if graph_output.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half_name = f"{graph_output.name}__fp16"
        for node in graph.node:
            for index, name in enumerate(node.output):
                if name == graph_output.name:
                    node.output[index] = half_name
            for index, name in enumerate(node.input):
                if name == graph_output.name:
                    node.input[index] = half_name
        casts.append(
            helper.make_node(
                "Cast",
                [half_name],
                [graph_output.name],
                to=TensorProto.FLOAT,
                name=f"pacs_ai_cast_out_{len(casts)}",
            )
        )
    return casts


def is_fp16_graph(model: onnx.ModelProto) -> bool:
    """True when every float weight is float16 and the graph's boundary is float32."""
    from onnx import TensorProto  # noqa: PLC0415

    weights = [i for i in model.graph.initializer if i.data_type in (1, 10)]
    return all(i.data_type == TensorProto.FLOAT16 for i in weights) and all(
        v.type.tensor_type.elem_type == TensorProto.FLOAT
        for v in [*model.graph.input, *model.graph.output]
    )
