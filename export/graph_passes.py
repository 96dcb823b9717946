"""Exact rewrites of an exported graph into fewer, larger kernels.

A decoder frame runs as ~550 ONNX nodes. On a GPU most of them are small (a [1024, 768] token tensor is
1.5 MB in fp16), so each node costs a launch and a pass over memory whatever its arithmetic: fewer nodes
is the lever (issue #7's frame rate). Every pass here is algebraically exact, uses standard ONNX ops only
(ONNX Runtime and OpenVINO run the result alike) and matches the structure our own exporter writes; the
export checks every file against PyTorch afterwards, as for any conversion.

- ``merge_sibling_matmuls``: MatMuls that read the same tensor with constant weights (the q / k / v
  projections of a token stream, the five heads of the Gaussian MLP) become one MatMul over the
  concatenated weights, one bias Add and one Split.
- ``attention_token_major``: ``Transpose → Attention (4-D) → Transpose → Reshape`` becomes a 3-D
  Attention on the token-major tensors (``q_num_heads`` / ``kv_num_heads`` set): no layout copies around
  the attention.
- ``joint_attention_streams``: a joint attention's two token streams (FLEX-1's expression and head transformers,
  every layer whose context also asks queries) are joined before their merged q / k / v projections are split,
  not after: one Concat and one Split instead of three Concats and two Splits, the per-head RMSNorms of q and k
  once over both streams with the streams' gains as a per-token Mul (9 kernels a layer → 6; the first layer's
  shared queries expanded once, not as q, k and v: 12 → 7).

Not in ``slim`` (GPU-only candidates, measured before one is adopted): ``subpixel_upsampling``,
``convs_as_gemm``.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .mixed_precision import topological_order

TOKEN_MAJOR = [0, 2, 1, 3]     # [B, nh, T, hd] ↔ [B, T, nh, hd]


@dataclass
class PassReport:
    """How many rewrites each pass made (for the export log and tests)."""
    counts: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        return ", ".join(f"{name}: {n}" for name, n in self.counts.items()) or "nothing rewritten"


def slim(model: onnx.ModelProto) -> PassReport:
    """All passes, in place."""
    report = PassReport()
    report.counts["merged matmul groups"] = merge_sibling_matmuls(model)
    report.counts["token-major attentions"] = attention_token_major(model)
    report.counts["joined attention streams"] = joint_attention_streams(model)
    return report


# ---- sibling MatMuls ------------------------------------------------------------------------------------

def merge_sibling_matmuls(model: onnx.ModelProto) -> int:
    """X @ W1 (+ b1), X @ W2 (+ b2), ... → Split(X @ [W1 | W2 | ...] (+ [b1 | b2 | ...])): returns the
    number of groups merged. Siblings merge when their weights are 2-D float initializers of one dtype and
    row count, and either all or none of them feed a bias Add (a 1-D initializer) as their only consumer."""
    graph = model.graph
    nodes = list(graph.node)       # one set of node objects for the whole pass (ids below are theirs)
    inits = {t.name: t for t in graph.initializer}
    consumers = _consumers(nodes)
    graph_outputs = {o.name for o in graph.output}
    groups: dict[tuple, list[tuple[onnx.NodeProto, onnx.NodeProto | None]]] = defaultdict(list)
    for node in nodes:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        weight = inits[node.input[1]]
        if len(weight.dims) != 2 or weight.data_type not in _FLOAT_TYPES:
            continue
        bias_add = _bias_add(node, consumers, inits, graph_outputs)
        groups[(node.input[0], weight.data_type, weight.dims[0], bias_add is not None)].append((node, bias_add))

    merged = 0
    removed: set[int] = set()
    new_nodes: dict[int, list[onnx.NodeProto]] = {}       # id(first MatMul of a group) → its replacement
    for (source, _, _, with_bias), members in groups.items():
        if len(members) < 2:
            continue
        first = members[0][0]
        base = f"{first.name or first.output[0]}__merged"
        weights = [numpy_helper.to_array(inits[m.input[1]]) for m, _ in members]
        widths = [w.shape[1] for w in weights]
        graph.initializer.append(numpy_helper.from_array(np.concatenate(weights, axis=1), f"{base}_weight"))
        graph.initializer.append(numpy_helper.from_array(np.asarray(widths, dtype=np.int64), f"{base}_split"))
        replacement = [helper.make_node("MatMul", [source, f"{base}_weight"], [f"{base}_matmul"], name=f"{base}_matmul")]
        combined = f"{base}_matmul"
        if with_bias:
            biases = [numpy_helper.to_array(inits[_other_input(add, m.output[0])]) for m, add in members]
            graph.initializer.append(numpy_helper.from_array(np.concatenate(biases), f"{base}_bias"))
            replacement.append(helper.make_node("Add", [combined, f"{base}_bias"], [f"{base}_add"], name=f"{base}_add"))
            combined = f"{base}_add"
        outputs = [(add.output[0] if add is not None else m.output[0]) for m, add in members]
        replacement.append(helper.make_node("Split", [combined, f"{base}_split"], outputs, axis=-1, name=f"{base}_split"))
        new_nodes[id(first)] = replacement
        for m, add in members:
            removed.add(id(m))
            if add is not None:
                removed.add(id(add))
        merged += 1
    if merged:
        _replace_nodes(graph, nodes, removed, new_nodes)
    return merged


_FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE})


def _bias_add(matmul: onnx.NodeProto, consumers, inits, graph_outputs) -> onnx.NodeProto | None:
    out = matmul.output[0]
    users = consumers.get(out, [])
    if out in graph_outputs or len(users) != 1 or users[0].op_type != "Add":
        return None
    bias = inits.get(_other_input(users[0], out))
    return users[0] if bias is not None and len(bias.dims) == 1 else None


def _other_input(node: onnx.NodeProto, name: str) -> str:
    a, b = node.input
    return b if a == name else a


# ---- attention layout -----------------------------------------------------------------------------------

def attention_token_major(model: onnx.ModelProto) -> int:
    """Transpose(perm 0,2,1,3) of q, k, v → Attention (4-D) → Transpose(0,2,1,3) → Reshape [B, T, D]
    becomes Reshape [B, T, nh·hd] of q, k, v → Attention (3-D, q_num_heads = kv_num_heads = nh), writing the
    Reshape's output. Returns the number of attentions rewritten. Head counts come from shape inference:
    where they are not static (or the pattern differs) the node stays as it is."""
    graph = model.graph
    nodes = list(graph.node)
    if not any(n.op_type == "Attention" for n in nodes):
        return 0                          # e.g. opset 18: spare the shape inference of a large model
    shapes = _static_dims(model)
    consumers = _consumers(nodes)
    producers = {o: n for n in nodes for o in n.output}
    graph_outputs = {o.name for o in graph.output}
    removed: set[int] = set()
    new_nodes: dict[int, list[onnx.NodeProto]] = {}
    shape_name = "attention_token_major__shape"
    rewritten = 0
    for node in nodes:
        if node.op_type != "Attention" or len([i for i in node.input if i]) != 3 or len(node.output) != 1:
            continue
        if any(a.name in ("q_num_heads", "kv_num_heads") for a in node.attribute):
            continue                                                      # already 3-D
        transposes_in = [producers.get(i) for i in node.input]
        if not all(t is not None and _is_transpose(t, TOKEN_MAJOR) and len(consumers[t.output[0]]) == 1
                   and t.output[0] not in graph_outputs for t in transposes_in):
            continue
        users = consumers.get(node.output[0], [])
        if len(users) != 1 or not _is_transpose(users[0], TOKEN_MAJOR) or node.output[0] in graph_outputs:
            continue
        transpose_out = users[0]
        reshapes = consumers.get(transpose_out.output[0], [])
        if len(reshapes) != 1 or reshapes[0].op_type != "Reshape" or transpose_out.output[0] in graph_outputs:
            continue
        reshape_out = reshapes[0]
        heads = [shapes.get(t.input[0]) for t in transposes_in]          # [B, T, nh, hd] each
        if any(h is None or len(h) != 4 or not isinstance(h[2], int) for h in heads):
            continue
        q_heads, kv_heads = heads[0][2], heads[1][2]
        if not q_heads == kv_heads == heads[2][2]:
            continue        # grouped-query attention (not in FLEX-1): left as exported
        final = shapes.get(reshape_out.output[0])
        if final is None or len(final) != 3:
            continue
        replacement = []
        flat = []
        for t in transposes_in:
            name = f"{t.input[0]}__tokens"
            replacement.append(helper.make_node("Reshape", [t.input[0], shape_name], [name], name=f"{name}_reshape"))
            flat.append(name)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        attrs.update(q_num_heads=q_heads, kv_num_heads=kv_heads)
        replacement.append(helper.make_node("Attention", flat, [reshape_out.output[0]], name=node.name, **attrs))
        new_nodes[id(node)] = replacement
        removed.update(id(n) for n in (*transposes_in, node, transpose_out, reshape_out))
        rewritten += 1
    if rewritten:
        # [B, T, nh, hd] → [B, T, nh·hd]: copy the first two dims (0 = keep, allowzero off)
        graph.initializer.append(numpy_helper.from_array(np.asarray([0, 0, -1], dtype=np.int64), shape_name))
        _replace_nodes(graph, nodes, removed, new_nodes)
    return rewritten


def joint_attention_streams(model: onnx.ModelProto) -> int:
    """For a 3-D Attention (``attention_token_major``'s form) whose q, k and v are each the token-axis Concat of
    two streams, x and c, where each stream's q / k / v come out of one Split of its merged projection (the same
    order in both) and q and k through a per-head RMSNormalization with a gain per stream:

        Concat_T(P_x, P_c) → Split → q, k, v [B, T, D]; q, k → Reshape [B, T, nh, hd] → RMSNormalization (gain 1)
        → Mul(per-token gains [T, 1, hd]: the x gain on the x tokens, the c gain on the c tokens) → token-major.

    The first layer's x stream is one query set shared by the batch: an Expand of each of q, k and v to the context's
    batch. There the merged projection is expanded once instead ([1, Tx, 3D] → [B, Tx, 3D], B from the context's
    shape), and the normalisation runs after it (12 kernels → 7).
    Exact but for rounding: RMSNorm(h)·g computed as RMSNorm(h)·1, then ·g. Token counts and head sizes come from
    shape inference; where they are not static, or anything differs from the pattern (the last layer, without context
    queries), the attention stays as it is. Returns the number rewritten."""
    graph = model.graph
    nodes = list(graph.node)
    if not any(n.op_type == "Attention" for n in nodes):
        return 0
    consumers = _consumers(nodes)
    producers = {o: n for n in nodes for o in n.output}
    inits = {t.name: t for t in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    shapes = None                                        # shape inference only where the pattern is present

    def only_use(name: str) -> bool:
        return len(consumers.get(name, [])) == 1 and name not in graph_outputs

    def made_by(name: str, op_type: str) -> onnx.NodeProto | None:
        node = producers.get(name)
        return node if node is not None and node.op_type == op_type and only_use(name) else None

    def stream(name: str):
        """name ← [Expand ←] [RMSNormalization ←] Reshape ← Split output:
        (split, output index, norm or None, reshape, expand or None)."""
        expand = made_by(name, "Expand")
        if expand is not None:
            name = expand.input[0]
        norm = made_by(name, "RMSNormalization")
        reshape = made_by(norm.input[0] if norm is not None else name, "Reshape")
        split = made_by(reshape.input[0], "Split") if reshape is not None else None
        if split is None:
            return None
        return split, list(split.output).index(reshape.input[0]), norm, reshape, expand

    removed: set[int] = set()
    new_nodes: dict[int, list[onnx.NodeProto]] = {}
    rewritten = 0
    for node in nodes:
        if node.op_type != "Attention" or not any(a.name == "q_num_heads" for a in node.attribute):
            continue
        roles = []                                       # per q, k, v: (token-major reshape, concat, x, c)
        for name in node.input[:3]:
            tokens = made_by(name, "Reshape")
            concat = made_by(tokens.input[0], "Concat") if tokens is not None else None
            if concat is None or len(concat.input) != 2 or _axis(concat) != 1:
                break
            x, c = stream(concat.input[0]), stream(concat.input[1])
            if x is None or c is None:
                break
            roles.append((tokens, concat, x, c))
        if len(roles) != 3:
            continue
        split_x, split_c = roles[0][2][0], roles[0][3][0]
        if (split_x is split_c or len(split_x.output) != 3 or len(split_c.output) != 3
                or any(r[2][0] is not split_x or r[3][0] is not split_c or r[2][1] != r[3][1] for r in roles)
                or sorted(r[2][1] for r in roles) != [0, 1, 2]
                or _split_sizes(split_x, inits) != _split_sizes(split_c, inits) or _axis(split_x) != _axis(split_c)
                or [n is None for r in roles for n in (r[2][2], r[3][2])] != [False, False, False, False, True, True]
                or any(r[3][4] is not None for r in roles)
                or len({r[2][4].input[1] if r[2][4] is not None else None for r in roles}) != 1):
            continue       # q and k normalised in both streams, v in neither; x expanded in all roles or none
        norms = [(r[2][2], r[3][2]) for r in roles[:2]]
        if any(_attrs(nx) != _attrs(nc) or nx.input[1] not in inits or nc.input[1] not in inits
               for nx, nc in norms):
            continue
        if shapes is None:
            shapes = _static_dims(model)
        x_dims, c_dims = shapes.get(split_x.input[0]), shapes.get(split_c.input[0])
        heads = shapes.get(roles[0][2][3].output[0])      # [B, Tx, nh, hd]
        if (x_dims is None or c_dims is None or heads is None or len(x_dims) != 3 or len(c_dims) != 3
                or len(heads) != 4 or not all(isinstance(d, int) for d in (x_dims[1], c_dims[1], *heads[2:]))):
            continue
        shared = roles[0][2][4] is not None
        if shared and x_dims[0] != 1:
            continue
        tx, tc, (nh, hd) = x_dims[1], c_dims[1], heads[2:]
        prefix = node.name or node.output[0]
        joined, parts = f"{prefix}__joint_qkv", [f"{prefix}__joint_qkv_{i}" for i in range(3)]
        split_attrs = {a.name: helper.get_attribute_value(a) for a in split_x.attribute}
        replacement, x_projection = [], split_x.input[0]
        if shared:                    # [1, Tx, 3D] → [B, Tx, 3D], B the context's batch: one Expand, not three
            batch, ones2 = f"{prefix}__joint_batch", f"{prefix}__joint_ones"
            graph.initializer.append(numpy_helper.from_array(np.ones(2, np.int64), ones2))
            x_projection = f"{prefix}__joint_x_expanded"
            replacement += [
                helper.make_node("Shape", [split_c.input[0]], [f"{batch}_full"], name=f"{batch}_shape", end=1),
                helper.make_node("Concat", [f"{batch}_full", ones2], [batch], axis=0, name=f"{batch}_concat"),
                helper.make_node("Expand", [split_x.input[0], batch], [x_projection], name=f"{x_projection}_expand")]
        replacement += [helper.make_node("Concat", [x_projection, split_c.input[0]], [joined], axis=1,
                                         name=f"{joined}_concat"),
                        helper.make_node("Split", [joined, *split_x.input[1:]], parts, name=f"{joined}_split",
                                         **split_attrs)]
        heads_shape = f"{prefix}__joint_heads_shape"
        graph.initializer.append(numpy_helper.from_array(np.asarray([0, tx + tc, nh, hd], np.int64), heads_shape))
        for tokens, concat, x, c in roles:
            part = parts[x[1]]
            if x[2] is None:                                                         # v: no normalisation
                replacement.append(helper.make_node("Reshape", [part, tokens.input[1]], [tokens.output[0]],
                                                    name=f"{part}_tokens"))
            else:
                gain_x, gain_c = (numpy_helper.to_array(inits[n.input[1]]) for n in (x[2], c[2]))
                gains = np.concatenate([np.broadcast_to(gain_x, (tx, hd)), np.broadcast_to(gain_c, (tc, hd))])
                ones, per_token = f"{part}__unit_gain", f"{part}__token_gains"
                graph.initializer.extend([numpy_helper.from_array(np.ones(hd, gain_x.dtype), ones),
                                          numpy_helper.from_array(gains[:, None, :].astype(gain_x.dtype),
                                                                  per_token)])
                replacement += [
                    helper.make_node("Reshape", [part, heads_shape], [f"{part}_heads"], name=f"{part}_heads"),
                    helper.make_node("RMSNormalization", [f"{part}_heads", ones], [f"{part}_normed"],
                                     name=f"{part}_norm", **_attrs(x[2])),
                    helper.make_node("Mul", [f"{part}_normed", per_token], [f"{part}_scaled"], name=f"{part}_gain"),
                    helper.make_node("Reshape", [f"{part}_scaled", tokens.input[1]], [tokens.output[0]],
                                     name=f"{part}_tokens")]
            removed.update(id(n) for n in (tokens, concat, x[3], c[3], x[2], c[2], x[4]) if n is not None)
        removed.update((id(split_x), id(split_c)))
        new_nodes[id(node)] = [*replacement, node]
        removed.add(id(node))
        rewritten += 1
    if rewritten:
        _replace_nodes(graph, nodes, removed, new_nodes)
        _drop_dead_nodes(graph)                # e.g. the shape chain of the shared queries' three Expands
    return rewritten


def _drop_dead_nodes(graph: onnx.GraphProto) -> None:
    """Remove nodes none of whose outputs is read (by a node or as a graph output), until none is left."""
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output if o)]
        if not dead:
            return
        for node in dead:
            graph.node.remove(node)


def _axis(node: onnx.NodeProto, default: int = 0) -> int:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), default)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _split_sizes(node: onnx.NodeProto, inits: dict) -> tuple | None:
    """A Split's sizes: its split input (an initializer), its ``split`` attribute, or None (equal parts)."""
    if len(node.input) > 1 and node.input[1]:
        if node.input[1] not in inits:
            return ("computed", node.input[1])                # equal only to a Split of the same sizes tensor
        return tuple(numpy_helper.to_array(inits[node.input[1]]).tolist())
    return tuple(_attrs(node).get("split", ())) or None


def _is_transpose(node: onnx.NodeProto, perm: list[int]) -> bool:
    return node.op_type == "Transpose" and any(a.name == "perm" and list(a.ints) == perm for a in node.attribute)


def _static_dims(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    return _dims(onnx.shape_inference.infer_shapes(model))


def _dims(inferred: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    """tensor name → its dims (an int, a symbol or None each) in a shape-inferred model."""
    dims = {}
    for value in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        tensor = value.type.tensor_type
        if tensor.HasField("shape"):
            dims[value.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                for d in tensor.shape.dim]
    return dims


# ---- sub-pixel upsampling -------------------------------------------------------------------------------

def subpixel_upsampling(model: onnx.ModelProto) -> int:
    """ConvTranspose(3×3, stride 2, no pads, no bias) → depthwise 4×4 Conv (pads 1, one filter for every channel,
    no bias) — the StyleGAN upsampler's conv0 and its FIR low-pass (SPEC §10) — becomes one 3×3 Conv (pads 1) with
    4× the output channels, then DepthToSpace(2, CRD): no transposed and no depthwise convolution, 4× conv0's
    multiply-adds. Exact up to rounding (``subpixel_weight``); returns the number of pairs rewritten.

    For GPUs, whose dense convolutions run on tensor cores where cuDNN's transposed / depthwise kernels may not
    (benchmarks/device/upsampler_forms.py measures it); on a CPU it is slower (more arithmetic) and not applied."""
    graph = model.graph
    nodes = list(graph.node)
    inits = {t.name: t for t in graph.initializer}
    consumers = _consumers(nodes)
    graph_outputs = {o.name for o in graph.output}
    removed: set[int] = set()
    new_nodes: dict[int, list[onnx.NodeProto]] = {}
    for node in nodes:
        if (node.op_type != "ConvTranspose" or len([i for i in node.input if i]) != 2 or node.input[1] not in inits
                or not _attrs_are(node, group=1, strides=[2, 2], pads=[0, 0, 0, 0], output_padding=[0, 0],
                                  dilations=[1, 1], kernel_shape=[3, 3])):
            continue
        users = consumers.get(node.output[0], [])
        if len(users) != 1 or node.output[0] in graph_outputs:
            continue
        fir_conv = users[0]
        weight = numpy_helper.to_array(inits[node.input[1]])                 # [C, O, 3, 3]
        if weight.ndim != 4 or weight.shape[2:] != (3, 3):
            continue
        c_out = weight.shape[1]
        if (fir_conv.op_type != "Conv" or len([i for i in fir_conv.input if i]) != 2 or fir_conv.input[0] != node.output[0]
                or fir_conv.input[1] not in inits or not _attrs_are(fir_conv, group=c_out, strides=[1, 1],
                                                                    pads=[1, 1, 1, 1], dilations=[1, 1])):
            continue
        fir = numpy_helper.to_array(inits[fir_conv.input[1]])                # [O, 1, 4, 4]
        if fir.shape != (c_out, 1, 4, 4) or not (fir == fir[:1]).all():
            continue
        base = f"{node.name or node.output[0]}__subpixel"
        graph.initializer.append(numpy_helper.from_array(subpixel_weight(weight, fir[0, 0]), f"{base}_weight"))
        new_nodes[id(node)] = [
            helper.make_node("Conv", [node.input[0], f"{base}_weight"], [f"{base}_conv"], name=f"{base}_conv",
                             kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1], dilations=[1, 1], group=1),
            helper.make_node("DepthToSpace", [f"{base}_conv"], [fir_conv.output[0]], name=f"{base}_shuffle",
                             blocksize=2, mode="CRD")]
        removed.update((id(node), id(fir_conv)))
    if removed:
        _replace_nodes(graph, nodes, removed, new_nodes)
    return len(removed) // 2


def subpixel_weight(transposed_weight: np.ndarray, fir: np.ndarray) -> np.ndarray:
    """The 3×3 pad-1 Conv weight [4·O, C, 3, 3] (channel 4·o + 2·a + b: output parity (a, b) of channel o, the
    DepthToSpace CRD / PixelShuffle order) equal to ConvTranspose(stride 2) with ``transposed_weight`` [C, O, 3, 3]
    followed by the pad-1 correlation with the 4×4 ``fir``. Computed in float64, returned in the weight's dtype.

    1-D: t[j] = Σ_i x[i]·w[j − 2i], y[n] = Σ_m f[m]·t[n + m − 1], so y[n] = Σ_i x[i]·K[n − 2i] with
    K[d] = Σ_m f[m]·w[d + m − 1], d ∈ [−2, 3]. For n = 2p + a the taps i = p + u − 1 (u = 0, 1, 2) carry
    K[2(1 − u) + a]: a 3×3 window per output parity. In 2-D, K is the full correlation of w with the filter."""
    w = np.asarray(transposed_weight, np.float64).transpose(1, 0, 2, 3)     # [O, C, 3, 3]
    f = np.asarray(fir, np.float64)
    o, c = w.shape[:2]
    k = np.zeros((o, c, 6, 6))                                               # K at index d + 2 = k − m + 3
    for my in range(4):
        for mx in range(4):
            k[:, :, 3 - my:6 - my, 3 - mx:6 - mx] += f[my, mx] * w
    taps = [[4 - 2 * u + a for u in range(3)] for a in range(2)]             # K index of tap u, parity a
    sub = np.stack([np.stack([k[:, :, taps[a]][:, :, :, taps[b]] for b in range(2)], 1) for a in range(2)], 1)
    return sub.reshape(4 * o, c, 3, 3).astype(np.asarray(transposed_weight).dtype)


# ---- convolutions as GEMMs --------------------------------------------------------------------------------

def convs_as_gemm(model: onnx.ModelProto) -> int:
    """Conv (group 1, stride 1, dilation 1, odd square kernel k with pads k // 2 on every side, a constant weight,
    a 4-D input of static spatial size) becomes im2col + one MatMul: Pad → Reshape [N, C, (H+2p)(W+2p)] → Gather
    of the k² shifted windows → Reshape [N, C·k², H·W] → MatMul with the weight as [O, C·k²] (+ bias) → Reshape
    [N, O, H, W]. Exact up to the summation order; returns the number of convolutions rewritten.

    For GPUs: cuBLAS runs the MatMul on tensor cores whatever cuDNN's search would pick for the Conv, at the cost
    of writing the k²-times larger column tensor (benchmarks/device/upsampler_forms.py measures it)."""
    graph = model.graph
    nodes = list(graph.node)
    inits = {t.name: t for t in graph.initializer}
    shapes = None
    removed: set[int] = set()
    new_nodes: dict[int, list[onnx.NodeProto]] = {}
    for node in nodes:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])                 # [O, C, k, k]
        if weight.ndim != 4 or weight.shape[2] != weight.shape[3] or weight.shape[2] % 2 == 0:
            continue
        o, c, k = weight.shape[0], weight.shape[1], weight.shape[2]
        p = k // 2
        if not _attrs_are(node, group=1, strides=[1, 1], dilations=[1, 1], pads=[p] * 4):
            continue
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bias is not None and bias not in inits:
            continue
        shapes = shapes if shapes is not None else _static_dims(model)
        dims = shapes.get(node.input[0])
        if dims is None or len(dims) != 4 or not all(isinstance(d, int) and d > 0 for d in dims[1:]) or dims[1] != c:
            continue
        h, w = dims[2], dims[3]
        base = f"{node.name or node.output[0]}__gemm"
        x, pieces = node.input[0], []
        if p:
            pieces.append(helper.make_node("Pad", [x, f"{base}_pads"], [f"{base}_padded"], name=f"{base}_pad"))
            graph.initializer.append(numpy_helper.from_array(np.asarray([0, 0, p, p, 0, 0, p, p], np.int64),
                                                             f"{base}_pads"))
            x = f"{base}_padded"
            hp, wp = h + 2 * p, w + 2 * p
            ky, kx = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
            py, px = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
            index = ((py[None] + ky.reshape(-1, 1, 1)) * wp + px[None] + kx.reshape(-1, 1, 1)).reshape(-1)
            graph.initializer.append(numpy_helper.from_array(index.astype(np.int64), f"{base}_index"))
            graph.initializer.append(numpy_helper.from_array(np.asarray([0, c, hp * wp], np.int64), f"{base}_flat"))
            pieces += [helper.make_node("Reshape", [x, f"{base}_flat"], [f"{base}_rows"], name=f"{base}_rows"),
                       helper.make_node("Gather", [f"{base}_rows", f"{base}_index"], [f"{base}_windows"], axis=2,
                                        name=f"{base}_gather")]
            x = f"{base}_windows"                                            # [N, C, k²·H·W], (c, ky, kx) order
        graph.initializer.append(numpy_helper.from_array(np.asarray([0, c * k * k, h * w], np.int64),
                                                         f"{base}_columns_shape"))
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight.reshape(o, c * k * k)),
                                                         f"{base}_weight"))
        graph.initializer.append(numpy_helper.from_array(np.asarray([0, o, h, w], np.int64), f"{base}_out_shape"))
        pieces += [helper.make_node("Reshape", [x, f"{base}_columns_shape"], [f"{base}_columns"], name=f"{base}_cols"),
                   helper.make_node("MatMul", [f"{base}_weight", f"{base}_columns"], [f"{base}_product"],
                                    name=f"{base}_matmul")]
        product = f"{base}_product"
        if bias is not None:
            b = numpy_helper.to_array(inits[bias]).reshape(o, 1)
            graph.initializer.append(numpy_helper.from_array(b, f"{base}_bias"))
            pieces.append(helper.make_node("Add", [product, f"{base}_bias"], [f"{base}_biased"], name=f"{base}_bias"))
            product = f"{base}_biased"
        pieces.append(helper.make_node("Reshape", [product, f"{base}_out_shape"], [node.output[0]],
                                       name=f"{base}_out"))
        new_nodes[id(node)] = pieces
        removed.add(id(node))
    if removed:
        _replace_nodes(graph, nodes, removed, new_nodes)
    return len(removed)


def _attrs_are(node: onnx.NodeProto, **expected) -> bool:
    """Every expected attribute has that value (absent: ONNX's default for the listed ones), auto_pad unset."""
    defaults = {"group": 1, "strides": None, "pads": None, "output_padding": None, "dilations": None}
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return False
    for name, value in expected.items():
        got = attrs.get(name, defaults.get(name))
        if got is None and isinstance(value, list) and name != "kernel_shape":
            got = [0] * len(value) if name in ("pads", "output_padding") else [1] * len(value)
        if (list(got) if isinstance(got, (list, tuple)) else got) != value:
            return False
    return True


# ---- GPU convolution forms ------------------------------------------------------------------------------

# The decoder's upsampler convolutions as exported ("transposed") or rewritten for GPUs (see the two passes above);
# flexavatar-export --gpu-conv-form applies one to the fp16 decoders (the GPU files).
GPU_CONV_FORMS: dict[str, tuple[Callable[[onnx.ModelProto], int], ...]] = {
    "transposed": (),
    "subpixel": (subpixel_upsampling,),
    "gemm": (subpixel_upsampling, convs_as_gemm),
}


def apply_gpu_conv_form(model: onnx.ModelProto, form: str) -> list[int]:
    """Rewrite ``model`` in place into ``form`` (a key of GPU_CONV_FORMS): the number of nodes each pass rewrote."""
    if form not in GPU_CONV_FORMS:
        raise ValueError(f"unknown GPU convolution form {form!r}: expected one of {list(GPU_CONV_FORMS)}")
    return [rewrite(model) for rewrite in GPU_CONV_FORMS[form]]


# ---- shared helpers -------------------------------------------------------------------------------------

def _consumers(nodes: list[onnx.NodeProto]) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in nodes:
        for name in node.input:
            if name:
                users[name].append(node)
    return users


def _replace_nodes(graph: onnx.GraphProto, nodes: list[onnx.NodeProto], removed: set[int],
                   new_nodes: dict[int, list[onnx.NodeProto]]) -> None:
    """Drop the removed nodes, put each replacement where its anchor node was, re-sort, drop what is unused."""
    kept = []
    for node in nodes:
        kept += new_nodes.get(id(node), [])
        if id(node) not in removed:
            kept.append(node)
    sorted_nodes = topological_order(kept, graph)
    del graph.node[:]
    graph.node.extend(sorted_nodes)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    produced = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    stale = [v for v in graph.value_info if v.name not in produced]
    for value in stale:
        graph.value_info.remove(value)
