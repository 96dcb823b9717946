"""export.ort_fusions: ONNX Runtime's contrib kernels written into a graph keep its outputs (ONNX Runtime on the graph
as exported is the oracle), fuse every site of a pre-norm transformer layer, and leave alone what does not match.
The decoder runs two expressions: the first layer's residual is then the avatar code shared by both, a broadcast
skip ([1, T, D] against [2, T, D])."""
from __future__ import annotations

import collections
import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from flexavatar.config import FlexConfig
from flexavatar.export.exporter import DEFAULT_OPSET
from flexavatar.export.mixed_precision import _tensor_types, emulate_fp16_storage
from flexavatar.export.onnx_tools import to_fp16
from flexavatar.export.ort_fusions import MS_DOMAIN, fuse_for_onnxruntime

RNG = np.random.default_rng(0)


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL   # the graph as written
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def _fused(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out, fuse_for_onnxruntime(out).counts


def _ops(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


def test_decoder_fuses_every_layer_and_keeps_its_outputs_fp32_and_fp16(onnx_features_bundle, official_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layers = FlexConfig.from_official_json(official_dir / "config.json").n_layers_expression
    decoder = onnx.load(str(onnx_features_bundle / "decoder.fp32.onnx"))
    rng = np.random.default_rng(1)
    check = np.load(onnx_features_bundle / "check.npz")
    feeds = {"code": check["code"][:1], "expressions": (0.3 * rng.standard_normal((2, 135))).astype(np.float32)}
    # per layer and stream: the attention's and the feed-forward's bias + residual + LayerNorm, and one bias GELU;
    # the last layer keeps no context stream after its attention (SPEC §7)
    sites = {"skip layer norms": 4 * layers - 2, "bias fast gelus": 2 * layers - 1}
    for graph, tolerance in ((decoder, 1e-5), (to_fp16(decoder), 1e-2)):
        expected = _run(graph, feeds)
        fused, counts = _fused(graph)
        assert counts == sites
        ops = _ops(fused)
        assert ops["Gelu"] == 0 and ops["FastGelu"] == sites["bias fast gelus"]
        # left: the first layer's two LayerNorms (the code's, and the projected context's), which have no residual
        assert ops["LayerNormalization"] == 2 and ops["SkipLayerNormalization"] == sites["skip layer norms"]
        assert len(graph.graph.node) - len(fused.graph.node) == 2 * counts["skip layer norms"] + counts["bias fast gelus"]
        # every residual sum is read again by the next residual Add, but for the two streams' last ones
        with_sum = sum(len(n.output) == 4 for n in fused.graph.node if n.op_type == "SkipLayerNormalization")
        assert with_sum == sites["skip layer norms"] - 2
        assert any(o.domain == MS_DOMAIN for o in fused.opset_import)
        onnx.checker.check_model(fused)
        for want, got in zip(expected, _run(fused, feeds), strict=True):
            np.testing.assert_allclose(got, want, rtol=0, atol=tolerance * max(1.0, float(np.abs(want).max())))
    # the fp16 file's twin (the export's fp16 check) sees the fused nodes' fp16 outputs and rounds them as a GPU
    # stores them: their types are declared; the twin's outputs are the exported twin's, to fp16 rounding
    half = to_fp16(decoder)
    fused, _ = _fused(half)
    types = _tensor_types(fused)
    outputs = [o for n in fused.graph.node if n.domain == MS_DOMAIN for o in n.output if o]
    assert outputs and all(types.get(o) == TensorProto.FLOAT16 for o in outputs)
    twin = emulate_fp16_storage(fused)
    assert {f"{o}__round" for o in outputs} <= {n.name for n in twin.graph.node}
    for want, got in zip(_run(emulate_fp16_storage(half), feeds), _run(twin, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-2 * max(1.0, float(np.abs(want).max())))


def _init(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)


def test_sites_that_do_not_match_are_left_alone():
    """Fused: a bias + residual + LayerNorm whose sum is also a graph output (handed out as the fourth output), and a
    bias + tanh GELU. Left: a bias Add that something else reads too, a LayerNorm over another axis, an erf GELU,
    a 2-D bias, a residual of two computed tensors (no constant bias), a one-row projection with a batched residual
    (SkipLayerNormalization broadcasts its skip only)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, 8])
    r = helper.make_tensor_value_info("r", TensorProto.FLOAT, ["B", 3, 8])
    x1 = helper.make_tensor_value_info("x1", TensorProto.FLOAT, [1, 3, 8])
    nodes = [helper.make_node("MatMul", ["x", f"w{i}"], [f"m{i}"]) for i in range(7)]
    nodes += [
        # fused into SkipLayerNormalization, s0 as its fourth output
        helper.make_node("Add", ["m0", "bias"], ["b0"]), helper.make_node("Add", ["r", "b0"], ["s0"]),
        helper.make_node("LayerNormalization", ["s0", "gamma", "beta"], ["y0"], epsilon=1e-6),
        # b1 is a graph output too: the bias Add stays, so the chain is left
        helper.make_node("Add", ["m1", "bias"], ["b1"]), helper.make_node("Add", ["b1", "r"], ["s1"]),
        helper.make_node("LayerNormalization", ["s1", "gamma"], ["y1"]),
        # normalised over axis 1
        helper.make_node("Add", ["m2", "bias"], ["b2"]), helper.make_node("Add", ["r", "b2"], ["s2"]),
        helper.make_node("LayerNormalization", ["s2", "gamma3"], ["y2"], axis=1),
        # no constant bias: both operands computed
        helper.make_node("Add", ["m3", "r"], ["s3"]), helper.make_node("LayerNormalization", ["s3", "gamma"], ["y3"]),
        # the projection of a one-row input, the residual [B, 3, 8]: the broadcast would be the input's
        helper.make_node("MatMul", ["x1", "w0"], ["m7"]), helper.make_node("Add", ["m7", "bias"], ["b7"]),
        helper.make_node("Add", ["r", "b7"], ["s7"]), helper.make_node("LayerNormalization", ["s7", "gamma"], ["y7"]),
        # tanh GELU of a biased projection: FastGelu; the erf GELU and the 2-D bias stay
        helper.make_node("Add", ["m4", "bias"], ["b4"]), helper.make_node("Gelu", ["b4"], ["y4"], approximate="tanh"),
        helper.make_node("Add", ["m5", "bias"], ["b5"]), helper.make_node("Gelu", ["b5"], ["y5"]),
        helper.make_node("Add", ["m6", "bias2d"], ["b6"]), helper.make_node("Gelu", ["b6"], ["y6"], approximate="tanh"),
    ]
    inits = [_init(f"w{i}", 8, 8) for i in range(7)] + [_init("bias", 8), _init("gamma", 8), _init("beta", 8),
                                                        _init("gamma3", 3, 8), _init("bias2d", 3, 8)]
    names = ["y0", "s0", "y1", "b1", "y2", "y3", "y4", "y5", "y6", "y7"]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names]
    model = helper.make_model(helper.make_graph(nodes, "sites", [x, r, x1], outputs, inits),
                              opset_imports=[helper.make_opsetid("", DEFAULT_OPSET)])
    feeds = {"x": RNG.standard_normal((2, 3, 8)).astype(np.float32),
             "r": RNG.standard_normal((2, 3, 8)).astype(np.float32),
             "x1": RNG.standard_normal((1, 3, 8)).astype(np.float32)}
    fused, counts = _fused(model)
    assert counts == {"skip layer norms": 1, "bias fast gelus": 1}
    skip = next(n for n in fused.graph.node if n.op_type == "SkipLayerNormalization")
    assert list(skip.input) == ["m0", "r", "gamma", "beta", "bias"] and list(skip.output) == ["y0", "", "", "s0"]
    assert _ops(fused) == _ops(model) - collections.Counter(Add=3, LayerNormalization=1, Gelu=1) \
        + collections.Counter(SkipLayerNormalization=1, FastGelu=1)
    for want, got in zip(_run(model, feeds), _run(fused, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_a_graph_without_sites_is_unchanged():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "plain", [x], [y]),
                              opset_imports=[helper.make_opsetid("", DEFAULT_OPSET)])
    fused, counts = _fused(model)
    assert counts == {"skip layer norms": 0, "bias fast gelus": 0}
    assert fused == model                                  # no contrib opset imported for nothing


def test_ab_script_times_both_variants_of_the_bundle_decoder_on_the_cpu(device_script, onnx_features_bundle, tmp_path):
    """benchmarks/device/ort_fusions_ab.py, the GPU session's A/B, end to end on the CPU provider."""
    tool = device_script("ort_fusions_ab")
    out = tmp_path / "ab.json"
    assert tool.main([str(onnx_features_bundle), "--device", "cpu", "--frames", "1", "--rounds", "1",
                      "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert set(rows) == {"fp32-exported", "fp32-ort-fusions"}                # this bundle has fp32 files only
    exported, fused = rows["fp32-exported"], rows["fp32-ort-fusions"]
    assert exported["speedup"] == 1.0 and fused["ms_per_call"] > 0 and fused["speedup"] > 0
    assert fused["nodes"] == exported["nodes"] - 2 * fused["fused"]["skip layer norms"] - fused["fused"]["bias fast gelus"]
    assert fused["max_abs_diff_vs_exported"] <= 1e-4
    for row in (exported, fused):                         # against the PyTorch outputs recorded at export
        assert max(row["relative_error"].values()) <= 1e-4, row["relative_error"]
