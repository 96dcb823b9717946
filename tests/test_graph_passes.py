"""export.graph_passes: each rewrite keeps the graph's outputs (ONNX Runtime on the graph before the pass is the
oracle), makes the nodes it promises fewer, and leaves alone what does not match."""
from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from flexavatar.export import graph_passes
from flexavatar.export.exporter import DEFAULT_OPSET
from flexavatar.export.graphs import GraphSpec
from flexavatar.bundle import TensorSpec
from flexavatar.export.onnx_tools import export_graph

RNG = np.random.default_rng(0)


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL   # the graph as written
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def _ops(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _init(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)


def _sibling_graph() -> onnx.ModelProto:
    """x [B, T, 8] read by: three biased projections (q/k/v-like), two bias-free ones, one whose output is also a
    graph output (so its bias Add cannot be absorbed), and one with a computed (non-constant) weight."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", 8])
    w_in = helper.make_tensor_value_info("w_dynamic", TensorProto.FLOAT, [8, 4])
    nodes, inits, outputs = [], [], {}
    for i, width in enumerate((8, 6, 8)):
        inits += [_init(f"w{i}", 8, width), _init(f"b{i}", width)]
        nodes += [helper.make_node("MatMul", ["x", f"w{i}"], [f"m{i}"]), helper.make_node("Add", [f"m{i}", f"b{i}"], [f"y{i}"])]
        outputs[f"y{i}"] = width
    for i in (3, 4):
        inits.append(_init(f"w{i}", 8, 3))
        nodes += [helper.make_node("MatMul", ["x", f"w{i}"], [f"m{i}"]), helper.make_node("Relu", [f"m{i}"], [f"y{i}"])]
        outputs[f"y{i}"] = 3
    inits += [_init("w5", 8, 2), _init("b5", 2)]
    nodes += [helper.make_node("MatMul", ["x", "w5"], ["m5"]), helper.make_node("Add", ["m5", "b5"], ["y5"])]
    outputs.update(m5=2, y5=2)
    nodes.append(helper.make_node("MatMul", ["x", "w_dynamic"], ["y6"]))
    outputs["y6"] = 4
    graph = helper.make_graph(nodes, "siblings", [x, w_in], [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["B", "T", n])
                                                             for o, n in outputs.items()], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", DEFAULT_OPSET)])


def test_sibling_matmuls_merge_into_one_matmul_add_split():
    model = _sibling_graph()
    slim = _copy(model)
    merged = graph_passes.merge_sibling_matmuls(slim)
    onnx.checker.check_model(slim, full_check=True)
    # {q, k, v} with biases and {3, 4} without; the graph-output MatMul (m5 ∪ its bias) joins the bias-free
    # group, the computed weight stays alone
    assert merged == 2
    before, after = _ops(model), _ops(slim)
    assert (before["MatMul"], after["MatMul"]) == (7, 3)
    assert (before["Add"], after["Add"]) == (4, 2) and after["Split"] == 2
    feeds = {"x": RNG.standard_normal((2, 5, 8)).astype(np.float32),
             "w_dynamic": RNG.standard_normal((8, 4)).astype(np.float32)}
    for want, got in zip(_run(model, feeds), _run(slim, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert not {"w0", "w1", "w2", "b0"} & {t.name for t in slim.graph.initializer}     # replaced weights dropped
    assert graph_passes.merge_sibling_matmuls(slim) == 0                               # a fixed point


class _TokenMajorAttention(torch.nn.Module):
    """The layout FLEX-1's JointAttention writes: heads token-major [B, T, nh, hd], joined, then SDPA."""

    def __init__(self, d: int = 16, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = torch.nn.Linear(d, d), torch.nn.Linear(d, d), torch.nn.Linear(d, d)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape

        def split(z):
            return z.view(z.shape[0], z.shape[1], self.heads, d // self.heads)
        q = F.rms_norm(split(self.q(x)), (d // self.heads,))
        k = torch.cat([split(self.k(x)), split(self.k(c))], 1)
        v = torch.cat([split(self.v(x)), split(self.v(c))], 1)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return y.transpose(1, 2).reshape(b, t, d)


def _export(module: torch.nn.Module, passes: bool, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    spec = GraphSpec("test", (TensorSpec("x", ("E", 6, 16), "float32"), TensorSpec("c", ("E", 3, 16), "float32")),
                     (TensorSpec("y", ("E", 6, 16), "float32"),))
    args = (torch.randn(2, 6, 16), torch.randn(2, 3, 16))
    return export_graph(module, args, spec, opset, passes=passes)


def test_attention_becomes_token_major_and_matches():
    torch.manual_seed(0)
    module = _TokenMajorAttention().eval()
    plain, slim = _export(module, passes=False), _export(module, passes=True)
    assert _ops(plain)["Transpose"] == 4 and _ops(plain)["Attention"] == 1
    assert _ops(slim)["Transpose"] == 0 and _ops(slim)["Attention"] == 1
    attention = next(n for n in slim.graph.node if n.op_type == "Attention")
    attrs = {a.name: helper.get_attribute_value(a) for a in attention.attribute}
    assert attrs["q_num_heads"] == attrs["kv_num_heads"] == 2
    x, c = torch.randn(3, 6, 16), torch.randn(3, 3, 16)          # another batch than the trace's
    with torch.no_grad():
        want = module(x, c).numpy()
    for model in (plain, slim):
        np.testing.assert_allclose(_run(model, {"x": x.numpy(), "c": c.numpy()})[0], want, rtol=1e-5, atol=1e-5)


def test_attention_with_a_shared_transpose_is_left_alone():
    """A Transpose with a second reader must stay: the pass only rewrites a pattern it owns entirely."""
    torch.manual_seed(1)

    class Shared(_TokenMajorAttention):
        def forward(self, x, c):
            b, t, d = x.shape
            q = self.q(x).view(b, t, self.heads, -1).transpose(1, 2)
            y = F.scaled_dot_product_attention(q, q, q)
            return y.transpose(1, 2).reshape(b, t, d) + q.sum()

    module = Shared().eval()
    slim = _export(module, passes=True)
    assert _ops(slim)["Transpose"] >= 2
    attention = next(n for n in slim.graph.node if n.op_type == "Attention")
    assert "q_num_heads" not in {a.name for a in attention.attribute}
    x, c = torch.randn(1, 6, 16), torch.randn(1, 3, 16)
    with torch.no_grad():
        want = module(x, c).numpy()
    np.testing.assert_allclose(_run(slim, {"x": x.numpy(), "c": c.numpy()})[0], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_token_major_attention_runs_on_every_runtime(runtime):
    """The 3-D Attention form (q_num_heads / kv_num_heads) is what the bundles now hold: both runtimes run it."""
    torch.manual_seed(2)
    module = _TokenMajorAttention().eval()
    slim = _export(module, passes=True)
    x, c = torch.randn(2, 6, 16), torch.randn(2, 3, 16)
    with torch.no_grad():
        want = module(x, c).numpy()
    if runtime == "onnxruntime":
        options = ort.SessionOptions()                         # default optimisation level, as the runtime uses
        got = ort.InferenceSession(slim.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
            None, {"x": x.numpy(), "c": c.numpy()})[0]
    else:
        ov = pytest.importorskip("openvino", reason="OpenVINO is an optional extra")
        compiled = ov.Core().compile_model(ov.Core().read_model(slim.SerializeToString(), b""), "CPU",
                                           {"INFERENCE_PRECISION_HINT": "f32"})
        got = compiled({"x": x.numpy(), "c": c.numpy()})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


class _JointLayer(torch.nn.Module):
    """FLEX-1's JointAttention of a layer whose context asks queries too (layers 1-6 of 8), gains not 1."""

    def __init__(self, context_pre_only: bool = False, x_shared: bool = False):
        super().__init__()
        from flexavatar.layers import JointAttention
        self.attn, self.x_shared = JointAttention(16, 2, context_pre_only), x_shared
        with torch.no_grad():
            for norm in (self.attn.norm_q, self.attn.norm_k, self.attn.norm_added_q, self.attn.norm_added_k):
                norm.weight.copy_(torch.rand(norm.weight.shape) + 0.5)

    def forward(self, x: torch.Tensor, c: torch.Tensor):
        y_x, y_c = self.attn(x[:1] if self.x_shared else x, c, self.x_shared)
        return y_x if y_c is None else (y_x, y_c)


def _export_joint(module: torch.nn.Module, passes: bool) -> onnx.ModelProto:
    outputs = [TensorSpec("y", ("E", 6, 16), "float32")]
    if not module.attn.context_pre_only:
        outputs.append(TensorSpec("y_c", ("E", 3, 16), "float32"))
    spec = GraphSpec("joint", (TensorSpec("x", ("E", 6, 16), "float32"), TensorSpec("c", ("E", 3, 16), "float32")),
                     tuple(outputs))
    return export_graph(module, (torch.randn(2, 6, 16), torch.randn(2, 3, 16)), spec, DEFAULT_OPSET, passes=passes)


def test_joint_attention_streams_join_before_the_split():
    """A middle layer: the streams' merged projections joined first — Concat 3 → 1, Split 3 → 2 (one of them the
    attention output's), RMSNormalization 4 → 2 plus 2 per-token gain Muls — and the outputs as before (PyTorch and
    the graph without the passes), for another batch than the trace's."""
    torch.manual_seed(3)
    module = _JointLayer().eval()
    plain, slim = _export_joint(module, passes=False), _export_joint(module, passes=True)
    onnx.checker.check_model(slim, full_check=True)
    before, ops = _ops(plain), _ops(slim)
    assert (before["Concat"], before["RMSNormalization"], before["Mul"]) == (3, 4, 0), before
    assert (ops["Concat"], ops["Split"], ops["RMSNormalization"], ops["Mul"]) == (1, 2, 2, 2), ops
    assert ops["Attention"] == 1 and ops["Transpose"] == 0
    x, c = torch.randn(3, 6, 16), torch.randn(3, 3, 16)
    with torch.no_grad():
        want = [t.numpy() for t in module(x, c)]
    feeds = {"x": x.numpy(), "c": c.numpy()}
    for model in (plain, slim):
        for got, w in zip(_run(model, feeds), want, strict=True):
            np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-5)
    assert graph_passes.joint_attention_streams(slim) == 0                  # a fixed point


def test_joint_attention_streams_in_the_first_layer_expand_the_shared_queries_once():
    """The first layer's queries are shared by every context (one query set, expanded to the batch): the merged
    projection is expanded once, not q, k and v each (Expand 3 → 1), then joined as in the other layers; the batch
    comes from the context's shape, so another batch than the trace's gives PyTorch's outputs."""
    torch.manual_seed(5)
    module = _JointLayer(x_shared=True).eval()
    plain, slim = _export_joint(module, passes=False), _export_joint(module, passes=True)
    onnx.checker.check_model(slim, full_check=True)
    before, ops = _ops(plain), _ops(slim)
    assert (before["Expand"], before["RMSNormalization"], before["Mul"]) == (3, 4, 0), before
    assert (ops["Expand"], ops["Split"], ops["RMSNormalization"], ops["Mul"]) == (1, 2, 2, 2), ops
    x, c = torch.randn(4, 6, 16), torch.randn(4, 3, 16)
    with torch.no_grad():
        want = [t.numpy() for t in module(x, c)]
    for got, w in zip(_run(slim, {"x": x.numpy(), "c": c.numpy()}), want, strict=True):
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-5)


def test_joint_attention_streams_leave_the_last_layer_alone():
    """The last layer (no context queries: q comes from the x stream alone) does not match: nothing is joined, the
    outputs are PyTorch's."""
    torch.manual_seed(4)
    module = _JointLayer(context_pre_only=True).eval()
    slim = _copy(_export_joint(module, passes=False))
    graph_passes.merge_sibling_matmuls(slim)
    assert graph_passes.attention_token_major(slim) == 1             # the form the pass looks for
    assert graph_passes.joint_attention_streams(slim) == 0
    x, c = torch.randn(2, 6, 16), torch.randn(2, 3, 16)
    with torch.no_grad():
        want = module(x, c)
    want = [t.numpy() for t in (want if isinstance(want, tuple) else (want,))]
    for got, w in zip(_run(slim, {"x": x.numpy(), "c": c.numpy()}), want, strict=True):
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-5)


def test_joint_attention_streams_in_an_exported_bundle(tmp_path):
    """A small random model with 4 expression-transformer layers (FLEX-1 has 8) and qk-norm gains ≠ 1, exported
    fp32 + fp16: every layer but the last is joined (6 RMSNormalizations fewer in the decoder, 2 per layer, and their
    gain Muls), and every file passes the export's check against PyTorch (fp32 within 1e-4, fp16 PSNR)."""
    import dataclasses

    from flexavatar.config import small_config
    from flexavatar.export import export_bundle
    from flexavatar.model import FlexAvatarModel
    from flexavatar.template import Template

    cfg = dataclasses.replace(small_config(), n_layers_expression=4)
    template = Template.synthetic(cfg.res_head_tokens, cfg.res_gaussian_grid)
    weights = FlexAvatarModel.random(cfg, template, seed=0).official_state_dict()
    gen = torch.Generator().manual_seed(0)
    for name in weights:
        if ".attn.norm_" in name:
            weights[name] = torch.rand(weights[name].shape, generator=gen) + 0.5
    result = export_bundle(weights, tmp_path / "bundle", template=template, config=cfg, precisions=("fp32", "fp16"),
                           targets=("onnx",), progress=None)
    rows = [line for line in result.summary.splitlines() if line.startswith(("decoder.", "encoder"))]
    assert len(rows) == 4 and all(line.rstrip().endswith(" ok") for line in rows), result.summary  # else it raises
    for precision in ("fp32", "fp16"):
        ops = _ops(onnx.load(tmp_path / "bundle" / f"decoder.{precision}.onnx"))
        # layers 0-2 joined, 2 each; layer 3 (no context queries) 3
        assert ops["RMSNormalization"] == 9 and ops["Mul"] >= 6, ops


def test_opset18_graph_gets_the_matmul_merge_only():
    """--opset 18 writes attention as primitive ops: nothing for the attention pass, the sibling merge still applies
    (q / k / v of x, k / v of c) and the result matches PyTorch."""
    torch.manual_seed(3)
    module = _TokenMajorAttention().eval()
    plain, slim = _export(module, passes=False, opset=18), _export(module, passes=True, opset=18)
    assert _ops(slim)["Attention"] == 0 and _ops(slim)["Split"] >= 2
    assert _ops(slim)["MatMul"] == _ops(plain)["MatMul"] - 3           # five projections → two
    x, c = torch.randn(2, 6, 16), torch.randn(2, 3, 16)
    with torch.no_grad():
        want = module(x, c).numpy()
    np.testing.assert_allclose(_run(slim, {"x": x.numpy(), "c": c.numpy()})[0], want, rtol=1e-5, atol=1e-5)


# ---- sub-pixel upsampling ----------------------------------------------------------------------------------

def test_subpixel_weight_equals_the_models_transposed_conv_and_fir_in_float64():
    from flexavatar.upsampler import LRELU_GAIN, ModulatedConv

    conv = ModulatedConv(6, 5, 4, up=True).double()
    with torch.no_grad():
        conv.weight.normal_()
        conv.affine.bias.normal_(1, 0.25)
    x = torch.randn(2, 6, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    w = (conv.baked_weight() * LRELU_GAIN).detach()                       # [O, C, 3, 3]
    fir = (conv.resample_filter * 4).double()
    with torch.no_grad():                                                 # the model's own up path, bias-free
        expected = F.conv_transpose2d(x, w.transpose(0, 1), stride=2)
        expected = F.conv2d(F.pad(expected, (1, 1, 1, 1)), fir[None, None].expand(5, 1, 4, 4), groups=5)
    sub = torch.from_numpy(graph_passes.subpixel_weight(w.transpose(0, 1).numpy(), fir.numpy()))
    got = F.pixel_shuffle(F.conv2d(x, sub, padding=1), 2)
    assert sub.shape == (20, 6, 3, 3) and got.shape == expected.shape == (2, 5, 14, 14)
    assert float((got - expected).abs().max()) <= 1e-12 * float(expected.abs().max())


def _upsampler_pair_graph(fir_uniform: bool = True, stride: int = 2) -> onnx.ModelProto:
    """x [N, 4, 5, 5] → ConvTranspose(3×3, stride) → depthwise 4×4 Conv (pads 1) → Relu: the exporter's pattern."""
    c, o = 4, 3
    fir = np.outer([1, 3, 3, 1], [1, 3, 3, 1]).astype(np.float32) / 16
    firs = np.stack([fir * (1 + (k if not fir_uniform else 0)) for k in range(o)])[:, None]
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["t"], strides=[stride, stride], kernel_shape=[3, 3],
                              pads=[0, 0, 0, 0]),
             helper.make_node("Conv", ["t", "fir"], ["y0"], group=o, kernel_shape=[4, 4], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["y0"], ["y"])]
    inits = [_init("w", c, o, 3, 3), numpy_helper.from_array(firs, "fir")]
    graph = helper.make_graph(nodes, "up", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", o, None, None])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", DEFAULT_OPSET)])


def test_subpixel_upsampling_rewrites_the_pattern_and_keeps_the_outputs():
    model = _upsampler_pair_graph()
    x = RNG.standard_normal((2, 4, 5, 5)).astype(np.float32)
    (expected,) = _run(model, {"x": x})
    rewritten = _copy(model)
    assert graph_passes.subpixel_upsampling(rewritten) == 1
    onnx.checker.check_model(rewritten, full_check=True)
    assert _ops(rewritten) == {"Conv": 1, "DepthToSpace": 1, "Relu": 1}
    (got,) = _run(rewritten, {"x": x})
    assert got.shape == expected.shape == (2, 3, 10, 10)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    assert graph_passes.subpixel_upsampling(rewritten) == 0                               # a fixed point


@pytest.mark.parametrize("variant", ["per-channel filters", "stride 1"])
def test_subpixel_upsampling_leaves_other_convolutions_alone(variant):
    model = _upsampler_pair_graph(fir_uniform=variant != "per-channel filters", stride=1 if variant == "stride 1" else 2)
    assert graph_passes.subpixel_upsampling(model) == 0
    assert _ops(model)["ConvTranspose"] == 1


def test_subpixel_upsampling_on_an_exported_decoder_fp32_and_fp16(onnx_features_bundle):
    from flexavatar.export.onnx_tools import to_fp16

    decoder = onnx.load(str(onnx_features_bundle / "decoder.fp32.onnx"))
    rng = np.random.default_rng(1)
    feeds = {i.name: rng.standard_normal([d.dim_value or 1 for d in i.type.tensor_type.shape.dim]).astype(np.float32)
             * (0.5 if i.name == "code" else 0.3) for i in decoder.graph.input}
    for graph, tolerance in ((decoder, 1e-5), (to_fp16(decoder), 1e-2)):
        expected = _run(graph, feeds)
        n_transposed = _ops(graph)["ConvTranspose"]
        rewritten = _copy(graph)
        assert graph_passes.subpixel_upsampling(rewritten) == n_transposed >= 1       # every upsampling block
        assert _ops(rewritten)["ConvTranspose"] == 0
        for want, got in zip(expected, _run(rewritten, feeds), strict=True):
            np.testing.assert_allclose(got, want, rtol=0, atol=tolerance * max(1.0, float(np.abs(want).max())))


# ---- convolutions as GEMMs ---------------------------------------------------------------------------------

def _conv_graph() -> onnx.ModelProto:
    """x [N, 4, 6, 5]: a biased 3×3 conv, a 1×1 conv, then convolutions the pass must leave: stride 2, grouped,
    and one whose input has a dynamic spatial size."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 5])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4, "H", "W"])
    nodes = [helper.make_node("Conv", ["x", "w3", "b3"], ["a"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w1"], ["b"], kernel_shape=[1, 1]),
             helper.make_node("Conv", ["b", "w3s"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Conv", ["a", "wg"], ["d"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=2),
             helper.make_node("Conv", ["z", "w3z"], ["e"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    inits = [_init("w3", 8, 4, 3, 3), _init("b3", 8), _init("w1", 3, 8, 1, 1), _init("w3s", 2, 3, 3, 3),
             _init("wg", 6, 4, 3, 3), _init("w3z", 2, 4, 3, 3)]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", c, None, None])
               for n, c in (("a", 8), ("b", 3), ("c", 2), ("d", 6), ("e", 2))]
    graph = helper.make_graph(nodes, "convs", [x, z], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", DEFAULT_OPSET)])


def test_convs_as_gemm_rewrites_dense_same_padded_convs_only():
    model = _conv_graph()
    feeds = {"x": RNG.standard_normal((2, 4, 6, 5)).astype(np.float32),
             "z": RNG.standard_normal((2, 4, 3, 7)).astype(np.float32)}
    expected = _run(model, feeds)
    rewritten = _copy(model)
    # the strided, the grouped and the dynamically sized one stay convolutions
    assert graph_passes.convs_as_gemm(rewritten) == 2
    assert _ops(rewritten)["Conv"] == 3 and _ops(rewritten)["MatMul"] == 2 and _ops(rewritten)["Gather"] == 1
    for want, got in zip(expected, _run(rewritten, feeds), strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    assert graph_passes.convs_as_gemm(rewritten) == 0                                      # a fixed point


def test_subpixel_then_gemm_on_an_exported_decoder(onnx_features_bundle):
    decoder = onnx.load(str(onnx_features_bundle / "decoder.fp32.onnx"))
    rng = np.random.default_rng(2)
    feeds = {i.name: rng.standard_normal([d.dim_value or 2 for d in i.type.tensor_type.shape.dim]).astype(np.float32)
             * (0.5 if i.name == "code" else 0.3) for i in decoder.graph.input}
    feeds["code"] = feeds["code"][:1]                        # one avatar, two expressions
    expected = _run(decoder, feeds)
    rewritten = _copy(decoder)
    assert graph_passes.subpixel_upsampling(rewritten) >= 1
    assert graph_passes.convs_as_gemm(rewritten) == _ops(decoder)["Conv"]     # conv0 (now dense), conv1, toRGB each
    assert not _ops(rewritten)["Conv"] and not _ops(rewritten)["ConvTranspose"]
    onnx.checker.check_model(rewritten, full_check=True)
    for want, got in zip(expected, _run(rewritten, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * max(1.0, float(np.abs(want).max())))


def test_graph_passes_ab_times_the_join_alone(device_script):
    """benchmarks/device/graph_passes_ab.py's "unjoined" variant is the bundles' graph but the joined streams: the
    merged projections and token-major attention are there, the three Concats too; its outputs are the others'."""
    tool = device_script("graph_passes_ab")
    torch.manual_seed(6)
    module = _JointLayer().eval()
    plain = _export_joint(module, passes=False)
    unjoined, slim = tool._without_joined_streams(plain), _export_joint(module, passes=True)
    assert (_ops(unjoined)["Concat"], _ops(unjoined)["Transpose"], _ops(unjoined)["MatMul"]) == (3, 0, 4)
    assert _ops(slim)["Concat"] == 1 and _ops(plain)["Transpose"] > 0
    feeds = {"x": RNG.standard_normal((2, 6, 16)).astype(np.float32),
             "c": RNG.standard_normal((2, 3, 16)).astype(np.float32)}
    for a, b in zip(_run(unjoined, feeds), _run(slim, feeds), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
