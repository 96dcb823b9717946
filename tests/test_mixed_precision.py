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
    # (the Transpose/Reshape follow the fp32 data); the head logits → fp32 for Sigmoid; the template Add runs
    # in fp16 (its output is cast to fp32 as the graph output)
    assert casts == sorted([("x", HALF), ("feat", FLOAT), ("flat", HALF), ("logits", FLOAT),
                            ("offsets", HALF), ("out__fp16", FLOAT)])
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
    for got, want in zip(_run(half, {"x": x}), _run(src, {"x": x})):
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)


def test_out_of_range_constants_saturate_instead_of_becoming_inf():
    fill = np.array([-np.finfo(np.float32).max, 1e6, -np.inf, 3.0], np.float32)
    nodes = [helper.make_node("Add", ["x", "fill"], ["y"], name="add")]
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
