"""torch → ONNX: export, constant folding without size limits, metadata, fp16 conversion, leanness check."""
from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import onnx
import torch

from .graphs import GraphSpec

# Ops kept in float32 in the fp16 models: normalisations (variance sums overflow / lose precision in
# fp16), softmax, the activations that produce the Gaussian attributes (exp → scales, sigmoid →
# opacities/offsets, L2-normalisation → quaternions), the UV grid_sample and the camera-ray maths
# (Einsum, Cross products as Mul/Sub) of the encoder are cheap and precision-sensitive.
FP16_FP32_OPS = ("LayerNormalization", "ReduceMean", "Pow", "Sqrt", "Reciprocal", "Softmax", "Exp", "Sigmoid",
                 "ReduceL2", "Div", "GridSample", "Einsum", "Erf")
UNLIMITED = 1 << 40


def export_graph(module: torch.nn.Module, args: tuple, spec: GraphSpec, opset: int) -> onnx.ModelProto:
    """torch.onnx.export (dynamo, single file) → folded ModelProto (not yet saved)."""
    for name in ("torch.onnx._internal.exporter._registration", "torch.onnx._internal.exporter._core"):
        logging.getLogger(name).setLevel(logging.ERROR)  # "torchvision is not installed" noise
    buffer = io.StringIO()
    with torch.no_grad(), contextlib.redirect_stdout(buffer):
        program = torch.onnx.export(
            module.eval(), args, f=None, dynamo=True, external_data=False, opset_version=opset,
            input_names=spec.input_names, output_names=spec.output_names,
            dynamic_shapes=spec.dynamic_shapes(), verbose=False, optimize=False)
    model = program.model_proto
    return fold_constants(model)


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Evaluate every subgraph that depends only on initializers (baked StyleGAN weights, the dataset
    token, the folded avatar code's projections, ...), whatever its size."""
    import onnxscript.optimizer

    _drop_unused_layernorm_outputs(model)  # the folder skips multi-output nodes
    with contextlib.redirect_stdout(io.StringIO()):
        return onnxscript.optimizer.optimize(model, input_size_limit=UNLIMITED, output_size_limit=UNLIMITED)


def specialise(model: onnx.ModelProto, constants: dict[str, "np.ndarray"]) -> onnx.ModelProto:  # noqa: F821
    """Turn graph inputs into initializers (e.g. the avatar code) and fold everything that now
    depends only on constants: the generic decoder becomes the avatar's decoder."""
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    missing = set(constants) - {i.name for i in out.graph.input}
    if missing:
        raise ValueError(f"graph has no inputs {sorted(missing)}")
    keep = [i for i in out.graph.input if i.name not in constants]
    del out.graph.input[:]
    out.graph.input.extend(keep)
    for name, value in constants.items():
        out.graph.initializer.append(numpy_helper.from_array(value, name))
    return fold_constants(out)


def _drop_unused_layernorm_outputs(model: onnx.ModelProto) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    for node in model.graph.node:
        if node.op_type == "LayerNormalization" and len(node.output) > 1 and not set(node.output[1:]) & used:
            del node.output[1:]


def constant_only_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes whose inputs are all initializers/constants (work a folded graph should not contain)."""
    known = {i.name for i in model.graph.initializer}
    known |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    found = []
    for node in model.graph.node:   # nodes are topologically sorted
        if node.op_type != "Constant" and node.input and all(not i or i in known for i in node.input):
            known |= set(node.output)
            found.append(f"{node.op_type}:{node.name}")
    return found


def set_metadata(model: onnx.ModelProto, props: dict[str, str], doc: str) -> None:
    keep = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    model.doc_string = doc
    model.producer_name = "flexavatar-export"


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and compute, float32 inputs/outputs, FP16_FP32_OPS kept in float32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    half = convert_float_to_float16(copy, keep_io_types=True, op_block_list=list(FP16_FP32_OPS))
    _topological_sort(half.graph)   # the converter appends its Cast nodes out of order
    del half.graph.value_info[:]    # ... and leaves some float32 value_info on fp16 tensors (optional data)
    return half


def _topological_sort(graph: onnx.GraphProto) -> None:
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ValueError(f"graph has a cycle or dangling inputs near node {pending[0].name!r}")
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
        for n in ready:
            available.update(n.output)
        ordered += ready
    nodes = [onnx.NodeProto() for _ in ordered]
    for dst, src in zip(nodes, ordered):
        dst.CopyFrom(src)
    del graph.node[:]
    graph.node.extend(nodes)


def save_checked(model: onnx.ModelProto, path: Path) -> None:
    """onnx.checker (full, with shape inference) then save as one file."""
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path))
