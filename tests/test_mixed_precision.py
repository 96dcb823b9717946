"""export.mixed_precision: which nodes and constants end up fp16, where Casts go, and that the numbers hold."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from flexavatar.export import mixed_precision as mp
from flexavatar.export.onnx_tools import FP16_POLICY, to_fp16

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16


def _uv_model(seed: int = 0) -> onnx.ModelProto:
    """x [1, 4, 16, 16] → Conv → GridSample at a constant UV grid (via Expand) → Transpose → MatMul →
    Sigmoid → + template → out [1, 50, 3]; the shape of the decoder's tail."""
    g = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(g.standard_normal((4, 4, 3, 3)).astype(np.float32) * 0.3, "conv_w"),
        numpy_helper.from_array(g.uniform(-0.97, 0.97, (1, 50, 1, 2)).astype(np.float32), "uv"),
        numpy_helper.from_array(np.array([1, 50, 1, 2], np.int64), "uv_shape"),
        numpy_helper.from_array(np.array([0, 2, 1, 3], np.int64), "unused_perm"),
        numpy_helper.from_array(g.standard_normal((4, 3)).astype(np.float32), "head_w"),
        numpy_helper.from_array(g.uniform(-0.2, 0.2, (1, 50, 3)).astype(np.float32), "template"),
        numpy_helper.from_array(np.array([1, 50, 4], np.int64), "flat_shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv_w"], ["feat"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Expand", ["uv", "uv_shape"], ["grid"], name="expand_grid"),
        helper.make_node("GridSample", ["feat", "grid"], ["sampled"], align_corners=0, name="sample"),
        helper.make_node("Transpose", ["sampled"], ["t"], perm=[0, 2, 3, 1], name="transpose"),  # [1, 50, 1, 4]
        helper.make_node("Reshape", ["t", "flat_shape"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "head_w"], ["logits"], name="head"),
        helper.make_node("Sigmoid", ["logits"], ["offsets"], name="sigmoid"),
        helper.make_node("Add", ["template", "offsets"], ["out"], name="add_template"),
    ]
    graph = helper.make_graph(nodes, "uv", [helper.make_tensor_value_info("x", FLOAT, [1, 4, 16, 16])],
                              [helper.make_tensor_value_info("out", FLOAT, [1, 50, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _initializer_types(model: onnx.ModelProto) -> dict[str, int]:
    return {i.name: i.data_type for i in model.graph.initializer}


def test_policy_decides_precisions_constants_and_casts():
    src = _uv_model()
    half = to_fp16(src)
    onnx.checker.check_model(half, full_check=True)
    types = _initializer_types(half)
    # the conv and head weights are read by fp16 nodes only: stored once, in fp16
    assert types["conv_w__fp16"] == HALF and "conv_w" not in types
    assert types["head_w__fp16"] == HALF and "head_w" not in types
    # the UV grid only reaches GridSample (kept fp32) through a layout op: it never passes fp16
    assert types["uv"] == FLOAT and "uv__fp16" not in types
    # graph input and output stay float32
    assert half.graph.input[0].type.tensor_type.elem_type == FLOAT
    assert half.graph.output[0].type.tensor_type.elem_type == FLOAT
    casts = sorted((n.input[0], n.attribute[0].i) for n in half.graph.node if n.op_type == "Cast")
    # x → fp16 for the Conv; Conv's output → fp32 for GridSample; the fp32 sample → fp16 for the head MatMul
    # (the Transpose/Reshape follow the fp32 data); the head logits → fp32 for Sigmoid; the template Add follows
    # the fp32 Sigmoid (FOLLOWING_OPS) and writes the float32 output itself: no Cast pair after the Sigmoid
    assert casts == sorted([("x", HALF), ("feat", FLOAT), ("flat", HALF), ("logits", FLOAT)])
    add = next(n for n in half.graph.node if n.name == "add_template")
    assert list(add.input) == ["template", "offsets"] and list(add.output) == ["out"]
    x = np.random.default_rng(1).standard_normal((1, 4, 16, 16)).astype(np.float32)
    want, got = _run(src, {"x": x})[0], _run(half, {"x": x})[0]
    assert got.dtype == np.float32
    err = np.abs(got - want).max()
    assert 0 < err < 2e-3, err      # fp16 rounding, not fp32 equality and not garbage


def test_fp16_uv_grid_would_move_the_samples():
    """Why the UV rule exists: with the grid rounded to fp16 the same model is measurably worse."""
    src = _uv_model()
    policy_without_rule = mp.Policy(frozenset(FP16_POLICY.fp32_ops - {"GridSample"}))
    x = np.random.default_rng(1).standard_normal((1, 4, 16, 16)).astype(np.float32)
    want = _run(src, {"x": x})[0]
    ours = np.abs(_run(to_fp16(src), {"x": x})[0] - want).mean()
    rounded_grid = np.abs(_run(mp.convert(src, policy_without_rule), {"x": x})[0] - want).mean()
    assert _initializer_types(mp.convert(src, policy_without_rule))["uv__fp16"] == HALF
    assert rounded_grid > ours


def test_constant_read_by_both_precisions_is_stored_twice_and_outputs_stay_float32():
    w = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),                   # fp16
             helper.make_node("ReduceMean", ["w"], ["m"], keepdims=0, name="mean"),       # fp32 by policy
             helper.make_node("Cast", ["x"], ["x32"], to=FLOAT, name="cast_in_graph")]    # fp16 node: retyped
    graph = helper.make_graph(nodes, "both", [helper.make_tensor_value_info("x", FLOAT, [2, 3])],
                              [helper.make_tensor_value_info(n, FLOAT, shape)
                               for n, shape in (("y", [2, 4]), ("m", []), ("x32", [2, 3]))],
                              [numpy_helper.from_array(w, "w")])
    src = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    half = to_fp16(src)
    onnx.checker.check_model(half, full_check=True)
    assert _initializer_types(half) == {"w": FLOAT, "w__fp16": HALF}
    assert [o.type.tensor_type.elem_type for o in half.graph.output] == [FLOAT] * 3
    cast = next(n for n in half.graph.node if n.name == "cast_in_graph")
    assert cast.attribute[0].i == HALF
    x = np.array([[0.5, -1.25, 2.0], [1e-3, 3.0, -0.75]], np.float32)
    for got, want in zip(_run(half, {"x": x}), _run(src, {"x": x}), strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)


def _head_tail(third_reader: str) -> onnx.ModelProto:
    """The decoder's Gaussian-head tail: x [2, 6] → MatMul (fp16) → Split in 3 → Exp → Clip → out0; Sigmoid → Sub
    from 1 → out1; the third part → ``third_reader`` ("output": a graph output; "matmul": an fp16 MatMul)."""
    g = np.random.default_rng(2)
    third = "out2" if third_reader == "output" else "c"
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="head"),
             helper.make_node("Split", ["h", "sizes"], ["a", "b", third], axis=-1, name="split"),
             helper.make_node("Exp", ["a"], ["e"], name="exp"),
             helper.make_node("Clip", ["e", "lo", "hi"], ["out0"], name="clip"),
             helper.make_node("Sigmoid", ["b"], ["s"], name="sigmoid"),
             helper.make_node("Sub", ["one", "s"], ["out1"], name="sub")]
    if third_reader == "matmul":
        nodes.append(helper.make_node("MatMul", ["c", "w2"], ["out2"], name="matmul"))
    inits = [numpy_helper.from_array(g.standard_normal((6, 6)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([2, 2, 2], np.int64), "sizes"),
             numpy_helper.from_array(np.float32(0.01), "lo"), numpy_helper.from_array(np.float32(3.0), "hi"),
             numpy_helper.from_array(np.float32(1.0), "one"),
             numpy_helper.from_array(g.standard_normal((2, 2)).astype(np.float32), "w2")]
    graph = helper.make_graph(nodes, "tail", [helper.make_tensor_value_info("x", FLOAT, [2, 6])],
                              [helper.make_tensor_value_info(f"out{i}", FLOAT, [2, 2]) for i in range(3)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def test_float32_readers_decide_a_split_and_elementwise_ops_follow_float32_data():
    """Every part of the Split read in float32 (Exp, Sigmoid, a graph output): one Cast in front of the Split, not
    one per part; the Clip and Sub after the float32 Exp / Sigmoid stay float32 and write the outputs without a
    Cast. With one part read by an fp16 MatMul the Split stays fp16 and its float32 parts are cast."""
    x = np.random.default_rng(3).standard_normal((2, 6)).astype(np.float32)
    for third, casts in (("output", [("x", HALF), ("h", FLOAT)]),
                         ("matmul", [("x", HALF), ("a", FLOAT), ("b", FLOAT), ("out2__fp16", FLOAT)])):
        src = _head_tail(third)
        half = to_fp16(src)
        onnx.checker.check_model(half, full_check=True)
        assert sorted((n.input[0], n.attribute[0].i) for n in half.graph.node if n.op_type == "Cast") == sorted(casts)
        for got, want in zip(_run(half, {"x": x}), _run(src, {"x": x}), strict=True):
            np.testing.assert_allclose(got, want, rtol=0, atol=2e-2 * max(1.0, float(np.abs(want).max())))


def test_out_of_range_constants_saturate_instead_of_becoming_inf():
    fill = np.array([-np.finfo(np.float32).max, 1e6, -np.inf, 3.0], np.float32)
    # (after a Relu: an Add on the float32 input itself would stay float32, FOLLOWING_OPS)
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("Add", ["r", "fill"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "sat", [helper.make_tensor_value_info("x", FLOAT, [4])],
                              [helper.make_tensor_value_info("y", FLOAT, [4])], [numpy_helper.from_array(fill, "fill")])
    half = to_fp16(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]))
    stored = numpy_helper.to_array(next(i for i in half.graph.initializer if i.name == "fill__fp16"))
    assert stored.tolist() == [-65504.0, 65504.0, -np.inf, 3.0]


def test_untyped_intermediate_is_a_clear_error():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
             helper.make_node("CustomThing", ["y"], ["u"], domain="example.custom", name="custom"),
             helper.make_node("Relu", ["u"], ["z"], name="relu")]
    graph = helper.make_graph(nodes, "untyped", [helper.make_tensor_value_info("x", FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("z", FLOAT, [2, 3])],
                              [numpy_helper.from_array(np.ones((3, 3), np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("example.custom", 1)])
    with pytest.raises(ValueError, match="no type for 1 tensors .*'u'"):
        mp.convert(model, FP16_POLICY)


# ---- fp16 storage emulation (the export check's view of a GPU) ------------------------------------------

def _scale_chain(scales: list[float]) -> onnx.ModelProto:
    """x [2, 3] → MatMul(w) → Mul(s1) → Mul(s2) → ... → Softmax → out: one fp32-kept op at the end."""
    w = np.array([[1.5, -0.25, 0.75], [0.5, 2.0, -1.0], [-0.125, 0.3, 1.1]], np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    nodes, prev = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm")], "m"
    for i, s in enumerate(scales):
        inits.append(numpy_helper.from_array(np.array(s, np.float32), f"s{i}"))
        nodes.append(helper.make_node("Mul", [prev, f"s{i}"], [f"y{i}"], name=f"mul{i}"))
        prev = f"y{i}"
    nodes.append(helper.make_node("Softmax", [prev], ["out"], axis=-1, name="softmax"))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("out", FLOAT, [2, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def _numpy_fp16_device(x: np.ndarray, scales: list[float]) -> np.ndarray:
    """The oracle: what an fp16 device computes for _scale_chain — fp16 tensors, float32 accumulation inside
    the MatMul, the Softmax (kept fp32 by the policy) in float32 on the widened fp16 input."""
    h = lambda a: np.asarray(a, np.float32).astype(np.float16)      # noqa: E731 — store as fp16
    w = h(np.array([[1.5, -0.25, 0.75], [0.5, 2.0, -1.0], [-0.125, 0.3, 1.1]], np.float32))
    with np.errstate(over="ignore", invalid="ignore"):
        y = h(h(x).astype(np.float32) @ w.astype(np.float32))
        for s in scales:
            y = h(y.astype(np.float32) * h(s).astype(np.float32))
        z = y.astype(np.float32)
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)


def test_fp16_storage_twin_rounds_like_a_device_where_the_cpu_provider_does_not():
    scales = [1 / 3, 3.0, 0.1]        # inexact in fp16: every intermediate rounding shows
    half = to_fp16(_scale_chain(scales))
    twin = mp.emulate_fp16_storage(half)
    onnx.checker.check_model(twin, full_check=True)
    assert not any(i.data_type == HALF for i in twin.graph.initializer)
    x = np.array([[0.37, -1.21, 2.03], [0.011, 3.14, -0.77]], np.float32)
    want = _numpy_fp16_device(x, scales)
    np.testing.assert_allclose(_run(twin, {"x": x})[0], want, rtol=0, atol=1e-6)
    # ONNX Runtime's CPU provider runs the fp16 chain in float32 between its Casts: it misses the rounding
    assert np.abs(_run(half, {"x": x})[0] - want).max() > 1e-5


def test_fp16_storage_twin_shows_the_overflow_the_cpu_provider_hides():
    scales = [3.0e4, 1 / 3.0e4]       # fine in float32; the intermediate exceeds 65504 in fp16
    half = to_fp16(_scale_chain(scales))
    x = np.array([[0.5, 1.0, 2.0], [0.01, -0.02, 0.03]], np.float32)
    direct, emulated = _run(half, {"x": x})[0], _run(mp.emulate_fp16_storage(half), {"x": x})[0]
    assert np.isfinite(direct).all()                          # the CPU provider never stores the 1e5 in fp16
    assert not np.isfinite(emulated[0]).all()                 # row 0 overflows: inf → Softmax → NaN
    np.testing.assert_allclose(emulated[1], _numpy_fp16_device(x, scales)[1], atol=1e-6)   # row 1 is in range
    assert not np.isfinite(_numpy_fp16_device(x, scales)[0]).all()


def test_fp16_storage_twin_reports_the_largest_value_an_fp16_tensor_takes():
    scales = [1 / 3, 3.0, 0.1]
    half = to_fp16(_scale_chain(scales))
    twin = mp.emulate_fp16_storage(half, peak_output="peak")
    onnx.checker.check_model(twin, full_check=True)
    x = np.array([[0.37, -1.21, 2.03], [0.011, 3.14, -0.77]], np.float32)
    peak, *outputs = _run(twin, {"x": x})
    np.testing.assert_array_equal(outputs[0], _run(mp.emulate_fp16_storage(half), {"x": x})[0])
    # the oracle: every fp16 tensor of the chain (x itself, the MatMul and each Mul) before its rounding
    h = lambda a: np.asarray(a, np.float32).astype(np.float16).astype(np.float32)  # noqa: E731
    w = h(np.array([[1.5, -0.25, 0.75], [0.5, 2.0, -1.0], [-0.125, 0.3, 1.1]], np.float32))
    tensors = [x, h(x) @ w]
    for s in scales:
        tensors.append(h(tensors[-1]) * h(s))
    assert peak == pytest.approx(max(float(np.abs(t).max()) for t in tensors), rel=1e-6)
    # an overflow shows as inf
    x_big = np.full((2, 3), 2.0, np.float32)            # the MatMul gives 3.75, times 3e4 > 65504
    overflow = mp.emulate_fp16_storage(to_fp16(_scale_chain([3.0e4, 1 / 3.0e4])), peak_output="peak")
    assert _run(overflow, {"x": x_big})[0] > np.finfo(np.float16).max


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_fp16_tanh_gelu_saturates_without_nan(runtime):
    """Gelu runs in fp16 (FP16_POLICY): an fp16 tanh-GELU whose x³ overflows must still give the exact limits
    (x for large x, 0 for very negative x), and match the float32 GELU of the fp16 inputs elsewhere."""
    assert not FP16_POLICY.keeps_fp32(helper.make_node("Gelu", ["x"], ["y"], approximate="tanh"))
    node = helper.make_node("Gelu", ["x"], ["y"], approximate="tanh")
    graph = helper.make_graph([node], "gelu", [helper.make_tensor_value_info("x", HALF, [None])],
                              [helper.make_tensor_value_info("y", HALF, [None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    x = np.concatenate([np.linspace(-8, 8, 161), [-65504, -3e4, -300, -41, 41, 300, 3e4, 65504]]).astype(np.float16)
    if runtime == "onnxruntime":
        y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    else:
        ov = pytest.importorskip("openvino", reason="OpenVINO is an optional extra")
        core = ov.Core()
        y = core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU")({"x": x})[0]
    x32 = x.astype(np.float64)
    want = 0.5 * x32 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x32 + 0.044715 * x32 ** 3)))
    assert np.isfinite(y.astype(np.float32)).all()
    np.testing.assert_allclose(y.astype(np.float64), want, rtol=2e-3, atol=2e-3)
