"""torch → ONNX: export, constant folding without size limits, exact graph rewrites, metadata, fp16 conversion,
leanness check."""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import onnx
import torch

from . import graph_passes, mixed_precision
from .graphs import GraphSpec

# Ops kept in float32 in the fp16 models: written-out normalisations (variance sums overflow / lose
# precision in fp16), softmax, a written-out erf GELU, the activations that produce the Gaussian attributes
# (exp → scales, sigmoid → opacities/offsets, L2-normalisation → quaternions), the UV grid_sample (with its
# UV grid: fp16 UVs alone cost 15 dB of rendered PSNR at FLEX-1 size) and the camera-ray maths (Einsum,
# Cross products as Mul/Sub) of the encoder are cheap and precision-sensitive. Everything else (the MatMuls,
# convolutions, attention, residual adds, the Gelu node) runs in fp16. Gelu: its input (a bias Add) and its
# reader (a MatMul) are fp16 anyway, so a float32 Gelu bought no storage precision, only a Cast pair per
# feed-forward (32 kernels a FLEX-1 frame) that also kept runtimes from fusing the bias Add into the GELU;
# where an fp16 kernel's x³ overflows (|x| ≳ 40) tanh saturates to the exact limits (x or 0), no NaN.
FP16_FP32_OPS = ("ReduceMean", "Pow", "Sqrt", "Reciprocal", "Softmax", "Exp", "Sigmoid", "ReduceL2", "Div",
                 "GridSample", "Einsum", "Erf")
# LayerNormalization / RMSNormalization nodes take fp16 tensors: their statistics are float32 whatever the
# input type when stash_type is 1 (float, the default) — no Cast pair around each of the ~60 norms of a
# decoder. Only a node that asks for fp16 statistics stays float32.
NORMALISATIONS = frozenset({"LayerNormalization", "RMSNormalization"})


def _norm_with_fp16_statistics(node: onnx.NodeProto) -> bool:
    stash = next((a.i for a in node.attribute if a.name == "stash_type"), onnx.TensorProto.FLOAT)
    return node.op_type in NORMALISATIONS and stash != onnx.TensorProto.FLOAT


FP16_POLICY = mixed_precision.Policy(frozenset(FP16_FP32_OPS), _norm_with_fp16_statistics)
UNLIMITED = 1 << 40


def export_graph(module: torch.nn.Module, args: tuple, spec: GraphSpec, opset: int,
                 passes: bool = True) -> onnx.ModelProto:
    """torch.onnx.export (dynamo, single file) → folded ModelProto (not yet saved), rewritten by
    ``graph_passes`` unless passes=False (the graph as traced: for benchmarks that compare the two)."""
    for name in ("torch.onnx._internal.exporter._registration", "torch.onnx._internal.exporter._core"):
        logging.getLogger(name).setLevel(logging.ERROR)  # "torchvision is not installed" noise
    buffer = io.StringIO()
    with torch.no_grad(), contextlib.redirect_stdout(buffer), warnings.catch_warnings():
        # torch's own notes that say nothing about the exported graph: one axis name for the expression batch
        # of several inputs (intended), and a deprecation inside torch's pytree code
        warnings.filterwarnings("ignore", message=r".*The axis name: .* will not be used", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        program = torch.onnx.export(
            module.eval(), args, f=None, dynamo=True, external_data=False, opset_version=opset,
            input_names=spec.input_names, output_names=spec.output_names,
            dynamic_shapes=spec.dynamic_shapes(), verbose=False, optimize=False)
    model = program.model_proto
    written = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:     # the exporter falls back silently for opsets it does not know
        raise ValueError(f"torch.onnx.export wrote opset {written} when asked for {opset}")
    return simplify(model) if passes else fold_constants(model)


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding, then the exact rewrites of ``graph_passes`` (fewer, larger kernels)."""
    model = fold_constants(model)
    graph_passes.slim(model)
    return model


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Evaluate every subgraph that depends only on initializers (baked StyleGAN weights, the dataset
    token, the folded avatar code's projections, ...), whatever its size."""
    import onnxscript.optimizer

    _drop_unused_layernorm_outputs(model)
    logging.getLogger("onnxscript.optimizer._constant_folding").setLevel(logging.ERROR)  # handled below
    with contextlib.redirect_stdout(io.StringIO()):
        model = onnxscript.optimizer.optimize(model, input_size_limit=UNLIMITED, output_size_limit=UNLIMITED)
    if constant_only_nodes(model):
        # what onnxscript's folder leaves (e.g. LayerNormalization: its evaluator returns three outputs)
        model = _fold_with_onnxruntime(model)
        with contextlib.redirect_stdout(io.StringIO()):
            model = onnxscript.optimizer.optimize(model, input_size_limit=UNLIMITED, output_size_limit=UNLIMITED)
    return model


def _fold_with_onnxruntime(model: onnx.ModelProto) -> onnx.ModelProto:
    """Evaluate the constant-only subgraph with ONNX Runtime (optimisations off) and replace it by initializers."""
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    constant = {n.name for n in model.graph.node if f"{n.op_type}:{n.name}" in set(constant_only_nodes(model))}
    const_nodes = [n for n in model.graph.node if n.name in constant or n.op_type == "Constant"]
    rest = [n for n in model.graph.node if n.name not in constant and n.op_type != "Constant"]
    produced = {o for n in const_nodes if n.op_type != "Constant" for o in n.output if o}
    wanted = ({i for n in rest for i in n.input} | {o.name for o in model.graph.output}) & produced
    if not wanted:
        return model
    types = {v.name: v.type for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    inits = {t.name: t for t in model.graph.initializer}
    needed = {i for n in const_nodes for i in n.input} & set(inits)
    outputs = []
    for name in sorted(wanted):
        vi = onnx.ValueInfoProto(name=name)
        if name in types:
            vi.type.CopyFrom(types[name])
        outputs.append(vi)
    sub = helper.make_model(helper.make_graph(const_nodes, "constants", [], outputs, [inits[i] for i in needed]),
                            opset_imports=model.opset_import, ir_version=model.ir_version)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    values = ort.InferenceSession(sub.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        [o.name for o in outputs], {})
    del model.graph.node[:]
    model.graph.node.extend(rest)
    for vi, value in zip(outputs, values, strict=True):
        model.graph.initializer.append(numpy_helper.from_array(value, vi.name))
    used = {i for n in rest for i in n.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return model


def specialise(model: onnx.ModelProto, constants: dict) -> onnx.ModelProto:
    """Turn graph inputs into initializers ({name: numpy array}, e.g. the avatar code) and fold everything that now
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
    return simplify(out)


def _drop_unused_layernorm_outputs(model: onnx.ModelProto) -> None:
    used = ({i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}) - {""}
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


def strip_trace_metadata(model: onnx.ModelProto) -> None:
    """Drop what tracing attached to nodes and values: torch's stack traces (absolute source paths of the
    exporting machine: user names, virtualenvs), FX names, module scopes, rewrite-rule names — ≈ 0.8 MB in a
    FLEX-1 decoder. A bundle then says nothing about where it was made, and the same checkpoint exports to
    the same bytes on any machine. The model-level flexavatar.* properties are ours and stay."""
    graph = model.graph
    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for value in (*graph.input, *graph.output, *graph.value_info):
        del value.metadata_props[:]
        value.doc_string = ""
    for tensor in graph.initializer:
        del tensor.metadata_props[:]
        tensor.doc_string = ""
    graph.doc_string = ""


def set_metadata(model: onnx.ModelProto, props: dict[str, str], doc: str) -> None:
    """The file's own description (and nothing of the tracing's: ``strip_trace_metadata``)."""
    strip_trace_metadata(model)
    keep = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    model.doc_string = doc
    model.producer_name = "flexavatar-export"


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and compute, float32 inputs/outputs; FP16_FP32_OPS (and the constants only they read,
    such as GridSample's UV grid) stay float32. See ``mixed_precision``."""
    return mixed_precision.convert(model, FP16_POLICY)


# int8 decoders: the weights of these ops become int8 (symmetric, one scale per output channel); ONNX Runtime
# quantizes their inputs to uint8 per tensor at run time (DynamicQuantizeLinear + MatMulInteger, standard ONNX ops).
# Half the FLEX-1 decoder's CPU time is MatMul; convolutions and attention stay float32 (with its Convs quantized
# too, ConvInteger, the FLEX-1 decoder took 2.2x as long on ONNX Runtime's CPU provider, 2 cores, side by side). Weight-only int8 (MatMulNBits, 8 bits) was measured
# too: no faster than fp32 on a 2-core AVX-512 VNNI CPU (README, "int8 decoders for CPUs"). Gemm is not listed: the
# dynamic quantizer has no integer Gemm (and the decoders' linear layers export as MatMul + Add).
INT8_OPS = ("MatMul",)


def to_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """Dynamic int8 quantization of INT8_OPS (ONNX Runtime's quantizer; inputs/outputs stay float32)."""
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic

    # the quantizer's advice ("consider pre-processing") goes through logging.warning, which also configures the
    # root logger when it has no handler: a handler of our own keeps the caller's logging as it was
    root, quiet = logging.getLogger(), logging.NullHandler()
    level = root.level
    with tempfile.TemporaryDirectory(prefix="flexavatar-int8-") as tmp:
        out = Path(tmp) / "int8.onnx"
        root.addHandler(quiet)
        root.setLevel(logging.ERROR)
        try:
            quantize_dynamic(model, out, op_types_to_quantize=list(INT8_OPS), per_channel=True,
                             weight_type=QuantType.QInt8, extra_options={"MatMulConstBOnly": True})
        finally:
            root.setLevel(level)
            root.removeHandler(quiet)
        return onnx.load(str(out))


def save_checked(model: onnx.ModelProto, path: Path) -> None:
    """onnx.checker (full, with shape inference) then save as one file."""
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path))
