"""ONNX Runtime's fused transformer kernels written into a decoder graph (its ``com.microsoft`` contrib ops).

Each expression-transformer layer of the decoder adds a bias to a projection, adds the residual and normalises the
sum, twice per token stream: three kernels, each a pass over a [E, T, 768] tensor. ONNX Runtime's own session
optimizer fuses such a chain only when the residual sum feeds nothing but the LayerNorm (its SkipLayerNormFusion); in
a pre-norm transformer the sum also feeds the next residual Add, so it fused 2 of the 32 here. Its
``SkipLayerNormalization`` kernel can hand the sum out as a fourth output, which is what this pass writes:

- ``skip_layer_norms``: ``LayerNorm(r + (m + b))`` (b a constant bias) → ``SkipLayerNormalization(m, r, γ, β, b)``,
  whose optional fourth output is the residual sum wherever something else reads it;
- ``bias_fast_gelus``: ``Gelu(tanh)(m + b)`` → ``FastGelu(m, b)`` (the same tanh approximation).

The rewrites are exact up to rounding (the fused kernels add in float32 before rounding to the file's type). The
result runs on ONNX Runtime only (CPU and CUDA providers both have these kernels, float and float16); the bundle's
portable files keep standard ONNX (``graph_passes``). In FLEX-1 the passes remove 75 of the fp16 decoder's 432
nodes: 30 skip-LayerNorm sites (2 nodes each) and 15 bias-GELUs.
"""
from __future__ import annotations

import onnx
from onnx import helper

from .graph_passes import PassReport, _consumers, _dims, _other_input, _replace_nodes, _static_dims

MS_DOMAIN = "com.microsoft"


def fuse_for_onnxruntime(model: onnx.ModelProto) -> PassReport:
    """Both passes, in place; the model then imports the ``com.microsoft`` opset, and declares the type and shape of
    every fused node's outputs (ONNX shape inference does not know contrib ops: without them the tensors after a
    fused node would be untyped, and the fp16 twin, ``mixed_precision.emulate_fp16_storage``, could not round them)."""
    inferred_model = onnx.shape_inference.infer_shapes(model)        # one shape inference for both uses
    inferred = {v.name: v for v in inferred_model.graph.value_info}    # the fused outputs keep their names
    report = PassReport()
    report.counts["skip layer norms"] = skip_layer_norms(model, _dims(inferred_model))
    report.counts["bias fast gelus"] = bias_fast_gelus(model)
    if any(report.counts.values()) and not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    graph = model.graph
    declared = {v.name for v in graph.value_info} | {o.name for o in graph.output}
    for node in graph.node:
        if node.domain != MS_DOMAIN:
            continue
        for name in node.output:
            if name and name not in declared and name in inferred:
                graph.value_info.append(inferred[name])
                declared.add(name)
    return report


def skip_layer_norms(model: onnx.ModelProto, dims: dict | None = None) -> int:
    """LayerNormalization(axis -1) of ``r + (m + b)`` with b a 1-D constant of the normalised width, the bias sum
    read by the residual Add alone, and 3-D operands → SkipLayerNormalization(input m, skip r, γ, β, bias b).
    m goes first because ONNX Runtime broadcasts the skip only ([1, T, D] against [E, T, D]: the first layer's
    residual is the avatar code shared by every expression). dims: ``graph_passes._static_dims(model)`` when the
    caller has it. Returns the number of sites fused."""
    graph, nodes, consumers, producers, inits, graph_outputs = _index(model)
    dims = _static_dims(model) if dims is None else dims
    removed: set[int] = set()
    new_nodes: dict[int, list[onnx.NodeProto]] = {}
    for ln in nodes:
        if ln.op_type != "LayerNormalization" or ln.domain not in ("", "ai.onnx") or _attr(ln, "axis", -1) != -1:
            continue
        residual_add = producers.get(ln.input[0])
        if residual_add is None or residual_add.op_type != "Add" or id(residual_add) in removed:
            continue
        width = _width(inits.get(ln.input[1]))
        site = _bias_operand(residual_add, producers, consumers, inits, graph_outputs, width)
        if site is None:
            continue
        bias_add, projected, bias = site
        residual = _other_input(residual_add, bias_add.output[0])
        projected_dims, residual_dims = dims.get(projected) or [], dims.get(residual) or []
        if len(projected_dims) != 3 or len(residual_dims) != 3:
            continue
        if projected_dims[0] == 1 and residual_dims[0] != 1:
            continue        # the fused output takes the input's shape: only the skip may broadcast
        total = residual_add.output[0]
        read_elsewhere = total in graph_outputs or any(u is not ln for u in consumers.get(total, []))
        beta = ln.input[2] if len(ln.input) > 2 else ""
        outputs = [ln.output[0], "", "", total] if read_elsewhere else [ln.output[0]]
        fused = helper.make_node("SkipLayerNormalization", [projected, residual, ln.input[1], beta, bias], outputs,
                                 name=f"{ln.name or ln.output[0]}__skip", domain=MS_DOMAIN,
                                 epsilon=_attr(ln, "epsilon", 1e-5))
        new_nodes[id(ln)] = [fused]
        removed |= {id(ln), id(residual_add), id(bias_add)}
    if new_nodes:
        _replace_nodes(graph, nodes, removed, new_nodes)
    return len(new_nodes)


def bias_fast_gelus(model: onnx.ModelProto) -> int:
    """Gelu(approximate "tanh") of ``m + b`` (b a 1-D constant, the sum read by the Gelu alone) → FastGelu(m, b).
    Returns the number of sites fused."""
    graph, nodes, consumers, producers, inits, graph_outputs = _index(model)
    removed: set[int] = set()
    new_nodes: dict[int, list[onnx.NodeProto]] = {}
    for gelu in nodes:
        if gelu.op_type != "Gelu" or gelu.domain not in ("", "ai.onnx") or _attr(gelu, "approximate", "none") != "tanh":
            continue
        add = producers.get(gelu.input[0])
        if add is None or add.op_type != "Add" or add.output[0] in graph_outputs or len(consumers[add.output[0]]) != 1:
            continue
        bias = next((name for name in add.input if name in inits and len(inits[name].dims) == 1), None)
        if bias is None:
            continue
        fused = helper.make_node("FastGelu", [_other_input(add, bias), bias], [gelu.output[0]],
                                 name=f"{gelu.name or gelu.output[0]}__fast", domain=MS_DOMAIN)
        new_nodes[id(gelu)] = [fused]
        removed |= {id(gelu), id(add)}
    if new_nodes:
        _replace_nodes(graph, nodes, removed, new_nodes)
    return len(new_nodes)


def _index(model: onnx.ModelProto):
    """graph, its nodes (one set of objects for a pass), tensor → readers, tensor → producer, initializers by
    name, graph output names."""
    graph = model.graph
    nodes = list(graph.node)
    return (graph, nodes, _consumers(nodes), {o: n for n in nodes for o in n.output},
            {t.name: t for t in graph.initializer}, {o.name for o in graph.output})


def _bias_operand(residual_add: onnx.NodeProto, producers, consumers, inits, graph_outputs, width: int | None):
    """(bias Add, its projected input, its bias) for the operand of ``residual_add`` that is ``m + b``, else None."""
    for name in residual_add.input:
        bias_add = producers.get(name)
        if (bias_add is None or bias_add.op_type != "Add" or name in graph_outputs
                or len(consumers.get(name, [])) != 1 or residual_add.input[0] == residual_add.input[1]):
            continue
        for bias in bias_add.input:
            if bias in inits and width is not None and list(inits[bias].dims) == [width]:
                projected = _other_input(bias_add, bias)
                if projected not in inits:
                    return bias_add, projected, bias
    return None


def _width(scale: onnx.TensorProto | None) -> int | None:
    return int(scale.dims[0]) if scale is not None and len(scale.dims) == 1 else None


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default
