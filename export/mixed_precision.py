"""float32 ONNX → mixed fp16/fp32 ONNX, node by node, with as few Casts as the policy allows.

Why not ``onnxruntime.transformers.float16``: kept-fp32 regions come out of it with their outputs rounded
through fp16 anyway (fp32 → fp16 → fp32 Cast pairs at every boundary, the graph outputs included), and
its node block list produced graphs ONNX Runtime crashed on. Here each node gets one precision from a
``Policy``; float inputs are cast only where producer and consumer disagree (one Cast per tensor and
dtype, shared by all its consumers); initializers are stored in the precision of the nodes that read
them (both copies when read by both); graph inputs and outputs stay float32.

Layout ops (Reshape, Transpose, Concat, ...) have no precision of their own: they follow their data
input, so a tensor is never cast just to be reshaped.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16

# Ops that only move, select or measure data: they run in whatever float type reaches them (a Cast in front
# of them would cost a pass over the tensor for nothing; Shape and Size read no values at all).
LAYOUT_OPS = frozenset({"Reshape", "Transpose", "Concat", "Slice", "Expand", "Unsqueeze", "Squeeze", "Gather",
                        "Identity", "DepthToSpace", "SpaceToDepth", "Flatten", "Split", "Tile", "Pad", "Shape", "Size"})
# Layout ops whose outputs hold all of their input's values: when every reader of their outputs computes in float32
# (or is a graph output), one Cast of the input replaces one Cast per output (the Gaussian head's Split: 5 → 1).
WHOLE_LAYOUT_OPS = frozenset({"Split", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity",
                              "DepthToSpace", "SpaceToDepth"})
# Cheap elementwise ops that stay float32 when every computed input is float32 (downstream of a float32 island,
# e.g. the Clip after the scales' Exp): no Cast pair around them, and a graph output then needs no Cast either.
FOLLOWING_OPS = frozenset({"Add", "Sub", "Mul", "Clip", "Neg", "Abs", "Min", "Max"})
# (op, input index) that must keep the dtype they have whatever the node's precision (scales, ROIs, ...).
_FIXED_INPUTS = frozenset({("Resize", 1), ("Resize", 2), ("Pad", 2)})


@dataclass(frozen=True)
class Policy:
    """Which nodes compute in float32: by op type, or by a predicate on the node (e.g. its module path)."""
    fp32_ops: frozenset[str]
    fp32_node: Callable[[onnx.NodeProto], bool] = lambda node: False

    def keeps_fp32(self, node: onnx.NodeProto) -> bool:
        return node.op_type in self.fp32_ops or self.fp32_node(node)


def convert(model: onnx.ModelProto, policy: Policy) -> onnx.ModelProto:
    """A new mixed-precision model (the input is not modified)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    float_tensors = _float_tensor_names(out)
    inits = {i.name: i for i in graph.initializer}
    dtype: dict[str, int] = {i.name: FLOAT for i in graph.input if i.name in float_tensors}
    init_readers: dict[str, set[int]] = {}   # initializer → precisions of the nodes reading it
    casts: dict[tuple[str, int], str] = {}
    nodes: list[onnx.NodeProto] = []
    readers: dict[str, list[onnx.NodeProto]] = {}
    graph_outputs = {o.name for o in graph.output}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def as_dtype(name: str, want: int) -> str:
        if name in inits:
            init_readers.setdefault(name, set()).add(want)
            return name if want == FLOAT else _half_name(name)
        have = dtype.get(name)
        if have is None or have == want:
            return name
        key = (name, want)
        if key not in casts:
            casts[key] = f"{name}__as_{'fp16' if want == HALF else 'fp32'}"
            nodes.append(helper.make_node("Cast", [name], [casts[key]], to=want, name=f"{casts[key]}__cast"))
        return casts[key]

    for node in graph.node:
        float_inputs = [(k, n) for k, n in enumerate(node.input)
                        if n and n in float_tensors and (node.op_type, k) not in _FIXED_INPUTS]
        precision = _node_precision(node, policy, float_inputs, dtype, readers, graph_outputs)
        for k, name in float_inputs:
            node.input[k] = as_dtype(name, precision)
        _retype_attributes(node, precision)
        for name in node.output:
            if name in float_tensors:
                dtype[name] = precision
        nodes.append(node)

    # graph outputs stay float32: rename an fp16 producer's output and cast into the output name
    for output in graph.output:
        if dtype.get(output.name) == HALF:
            inner = f"{output.name}__fp16"
            for node in nodes:
                node.output[:] = [inner if o == output.name else o for o in node.output]
                node.input[:] = [inner if i == output.name else i for i in node.input]
            nodes.append(helper.make_node("Cast", [inner], [output.name], to=FLOAT, name=f"{output.name}__cast"))

    for name, precisions in init_readers.items():
        if HALF in precisions:
            graph.initializer.append(numpy_helper.from_array(_to_half(numpy_helper.to_array(inits[name])),
                                                             _half_name(name)))
    unused = {n for n, p in init_readers.items() if FLOAT not in p}
    kept = [i for i in graph.initializer if i.name not in unused]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.node[:]
    graph.node.extend(topological_order(nodes, graph))
    del graph.value_info[:]     # stale float32 annotations; recomputed by the checker's shape inference
    return out


def count_precisions(model: onnx.ModelProto, policy: Policy) -> dict[str, int]:
    """{"fp16": n, "fp32": n} of compute nodes (layout ops and Casts not counted) — for reports."""
    counts = {"fp16": 0, "fp32": 0}
    for node in model.graph.node:
        if node.op_type not in LAYOUT_OPS and node.op_type not in ("Cast", "Shape", "Constant"):
            counts["fp32" if policy.keeps_fp32(node) else "fp16"] += 1
    return counts


# ---- helpers ------------------------------------------------------------------------------------------

def _to_half(array: np.ndarray) -> np.ndarray:
    # finite values beyond fp16's range saturate instead of becoming inf (e.g. the causal mask's
    # -finfo(float32).max fill: -65504 masks just as well before a float32 Softmax)
    limit = float(np.finfo(np.float16).max)
    return np.where(np.isfinite(array), np.clip(array, -limit, limit), array).astype(np.float16)


def _half_name(name: str) -> str:
    return f"{name}__fp16"


def _node_precision(node, policy: Policy, float_inputs, dtype: dict[str, int], readers, graph_outputs) -> int:
    if policy.keeps_fp32(node):
        return FLOAT
    produced = [dtype[n] for _, n in float_inputs if n in dtype]
    if node.op_type in LAYOUT_OPS:
        if produced and HALF in produced:   # follow the data (fp32 only when every produced input is fp32) ...
            # ... unless everything reading the outputs is float32: then cast once, in front
            fp32_readers = all((out in graph_outputs or readers.get(out)) and
                               all(policy.keeps_fp32(r) for r in readers.get(out, [])) for out in node.output)
            return FLOAT if node.op_type in WHOLE_LAYOUT_OPS and fp32_readers else HALF
        if produced:
            return FLOAT
        # a constant reshaped/expanded for an fp32 consumer (e.g. the UV grid of GridSample, whose fp16
        # rounding alone moves samples by ~0.1 texel) must not pass through fp16 on the way
        if any(policy.keeps_fp32(r) for out in node.output for r in readers.get(out, [])):
            return FLOAT
    if node.op_type in FOLLOWING_OPS and produced and HALF not in produced:
        return FLOAT
    return HALF


def _retype_attributes(node: onnx.NodeProto, precision: int) -> None:
    """Attributes that carry a float dtype or tensor (Cast's target, Constant values) follow the node."""
    if precision != HALF:
        return
    for attr in node.attribute:
        if node.op_type == "Cast" and attr.name == "to" and attr.i == FLOAT:
            attr.i = HALF
        if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == FLOAT:
            attr.t.CopyFrom(numpy_helper.from_array(_to_half(numpy_helper.to_array(attr.t)), attr.t.name))


def _float_tensor_names(model: onnx.ModelProto) -> set[str]:
    """Names of every float32 tensor (inputs, initializers, intermediates, outputs), by shape inference."""
    g = _infer_types(model).graph
    infos = list(g.input) + list(g.value_info) + list(g.output)
    names = {v.name for v in infos if v.type.tensor_type.elem_type == FLOAT}
    names |= {i.name for i in g.initializer if i.data_type == FLOAT}
    for node in g.node:   # Constant nodes' outputs, when inference left them out
        if node.op_type == "Constant" and any(a.type == onnx.AttributeProto.TENSOR and a.t.data_type == FLOAT
                                              for a in node.attribute):
            names.update(node.output)
    known = {v.name for v in infos} | {i.name for i in g.initializer}
    missing = [o for n in g.node for o in n.output if o and o not in known and n.op_type != "Constant"]
    if missing:
        raise ValueError(f"shape inference gave no type for {len(missing)} tensors (first: {missing[0]!r}); "
                         "cannot decide which are float")
    return names


def topological_order(nodes: list[onnx.NodeProto], graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes in an order where each reads only graph inputs, initializers and earlier outputs (raises on a
    cycle or a dangling input)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(nodes), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ValueError(f"graph has a cycle or dangling inputs near node {pending[0].name!r}")
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
        for n in ready:
            available.update(n.output)
        ordered += ready
    return ordered


def emulate_fp16_storage(model: onnx.ModelProto, peak_output: str | None = None) -> onnx.ModelProto:
    """The float32 twin of a mixed-precision model that rounds every fp16 tensor to fp16 where it is made.

    Why: ONNX Runtime's CPU provider has few fp16 kernels. It runs an fp16 node in float32 between Casts and
    removes the Casts between consecutive such nodes, so a chain of fp16 ops keeps float32 intermediates:
    neither their rounding nor an overflow past 65504 shows. A GPU stores every fp16 tensor as fp16. Here
    each op computes in float32 (as fp16 GEMMs and convolutions accumulate in float32 on a GPU) and each fp16
    output goes through a lossy Cast pair (float32 → fp16 → float32), which ONNX Runtime keeps: the twin
    shows the rounding, and the inf of an overflow, of a real fp16 device. fp16 constants become float32
    (exactly: they are already rounded).

    peak_output: also output, under this name and first, the largest |value| any fp16 tensor takes before its
    rounding (a float32 scalar; inf when one overflows) — the headroom left below fp16's 65504."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    types = _tensor_types(out)
    half = {name for name, t in types.items() if t == HALF}
    for i, init in enumerate(graph.initializer):
        if init.data_type == HALF:
            graph.initializer[i].CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(init).astype(np.float32), init.name))
    nodes: list[onnx.NodeProto] = []
    peaks: list[str] = []

    def measure(raw: str) -> None:
        # max |x| = max(max x, -min x): two reductions, no tensor-sized temporary
        if peak_output:
            nodes.append(helper.make_node("ReduceMax", [raw], [f"{raw}__max"], keepdims=0, name=f"{raw}__max"))
            nodes.append(helper.make_node("ReduceMin", [raw], [f"{raw}__min"], keepdims=0, name=f"{raw}__min"))
            nodes.append(helper.make_node("Neg", [f"{raw}__min"], [f"{raw}__neg_min"], name=f"{raw}__neg_min"))
            peaks.extend([f"{raw}__max", f"{raw}__neg_min"])

    for node in graph.node:
        rounds_itself = node.op_type == "Cast"      # a Cast to fp16 is the rounding; it only needs widening
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == HALF:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float32),
                                                        attr.t.name))
        nodes.append(node)
        if node.op_type in LAYOUT_OPS:      # they move values that are already rounded
            continue
        for k, name in enumerate(node.output):
            if name not in half:
                continue
            rounded = f"{name}__fp16"
            if rounds_itself:
                node.output[k] = rounded
                if types.get(node.input[0]) == FLOAT:   # (not a Cast from an integer)
                    measure(node.input[0])
            else:
                node.output[k] = f"{name}__unrounded"
                nodes.append(helper.make_node("Cast", [node.output[k]], [rounded], to=HALF, name=f"{name}__round"))
                measure(node.output[k])
            nodes.append(helper.make_node("Cast", [rounded], [name], to=FLOAT, name=f"{name}__widen"))
    if peak_output:
        if not peaks:
            raise ValueError("the model has no fp16 tensors: nothing to measure")
        nodes.append(helper.make_node("Max", peaks, [peak_output], name=peak_output))
        # first: the reductions are then ordered early even by a depth-first walk from the outputs (run the
        # twin with ONNX Runtime's PRIORITY_BASED order, which runs each as soon as its tensor exists)
        graph.output.insert(0, helper.make_tensor_value_info(peak_output, FLOAT, []))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    return out


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor (inputs, intermediates, outputs, Cast and Constant outputs)."""
    g = _infer_types(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.input) + list(g.value_info) + list(g.output)}
    for node in g.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to":
                types.update(dict.fromkeys(node.output, attr.i))
            if node.op_type == "Constant" and attr.type == onnx.AttributeProto.TENSOR:
                types.update(dict.fromkeys(node.output, attr.t.data_type))
    return types


def _infer_types(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference on the graph without its weights (initializers become typed inputs): the types of every
    tensor, without two more copies of a FLEX-1 model's hundreds of MB of weights in memory."""
    g = model.graph
    declared = {i.name for i in g.input}
    weights = [helper.make_tensor_value_info(i.name, i.data_type, list(i.dims))
               for i in g.initializer if i.name not in declared]
    light = helper.make_graph(list(g.node), g.name, list(g.input) + weights, list(g.output),
                              value_info=list(g.value_info))
    light_model = helper.make_model(light, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    return onnx.shape_inference.infer_shapes(light_model, strict_mode=False, data_prop=False)
