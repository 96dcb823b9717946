"""The export bundle at FLEX-1 size (random weights): export time, and per-frame decoder latency of
PyTorch eager vs ONNX Runtime CPU vs OpenVINO CPU vs fp16, plus the avatar-specialised decoder — in one run.

    pytest benchmarks/bench_export.py --benchmark-only -s

One bundle is exported (fp32 + fp16, ONNX + OpenVINO; the encoder takes DINOv2 features, no DINOv2 weights
needed) and timed once; every decoder case then decodes one frame (E = 1) of the same code and expression,
and checks its output against PyTorch (fp32: 1e-4; fp16/bf16: finite, means within 5 cm — speed is never
asserted).
"""
from __future__ import annotations

import resource
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

from flexavatar.bundle import FORMAT_ONNX, FORMAT_OPENVINO, ROLE_DECODER, Bundle  # noqa: E402
from flexavatar.config import FLEX1  # noqa: E402
from flexavatar.model import AvatarCode, FlexAvatarModel, init_random_weights  # noqa: E402
from flexavatar.template import Template  # noqa: E402

ROUNDS, WARMUP = 3, 1
LOOSE_MEANS_ATOL = 0.05


@pytest.fixture(scope="module")
def flex1(weights_cache):
    template = Template.synthetic(FLEX1.res_head_tokens, FLEX1.res_gaussian_grid)

    def make():
        model = FlexAvatarModel(FLEX1, template)
        init_random_weights(model.network, seed=0)
        return model.official_state_dict()

    state = weights_cache.get("flex1-random-seed0", make)      # shared with bench_model.py
    return FlexAvatarModel.from_checkpoint(state, template=template), state, template


_EXPORTED: dict[str, tuple] = {}   # test_export_time_flex1 (first in the file) exports; the rest reuse it


def _export(flex1, tmp_path_factory) -> tuple[Bundle, float]:
    from flexavatar.export import export_bundle

    if "bundle" not in _EXPORTED:
        _, state, template = flex1
        out = tmp_path_factory.mktemp("bench_export") / "bundle"
        t0 = time.perf_counter()
        result = export_bundle(state, out, template=template, config=FLEX1, progress=print)
        seconds = time.perf_counter() - t0
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"peak RSS of the process after the export: {peak_gib:.1f} GiB")
        _EXPORTED["bundle"] = (Bundle.open(result.path, verify="size"), seconds)
    return _EXPORTED["bundle"]


@pytest.fixture(scope="module")
def exported(flex1, tmp_path_factory):
    return _export(flex1, tmp_path_factory)


@pytest.fixture(scope="module")
def frame(flex1):
    """One frame's inputs and the PyTorch fp32 outputs."""
    model = flex1[0]
    gen = np.random.default_rng(0)
    code = (gen.standard_normal((1, FLEX1.n_head_tokens, FLEX1.d_hidden)) * 0.5).astype(np.float32)
    expressions = (gen.standard_normal((1, 135)) * 0.5).astype(np.float32)
    g = model.decode(AvatarCode(torch.from_numpy(code).transpose(0, 1)), torch.from_numpy(expressions))
    return code, expressions, [t.numpy() for t in (g.means, g.quats, g.scales, g.opacities, g.sh0)]


def _check(outputs, reference, atol):
    """fp32: every attribute within atol. Reduced precision (atol None): finite, and the means within
    LOOSE_MEANS_ATOL metres (random FLEX-1 weights amplify rounding: quats/sh0 differ far more)."""
    for got, want in zip(outputs, reference, strict=True):
        assert np.isfinite(got).all() and got.shape == want.shape
        if atol is not None:
            np.testing.assert_allclose(got, want, atol=atol, rtol=0)
    if atol is None:
        np.testing.assert_allclose(outputs[0], reference[0], atol=LOOSE_MEANS_ATOL, rtol=0)


def test_export_time_flex1(benchmark, bench_meta, flex1, tmp_path_factory):
    bench_meta(stage="export", backend="flexavatar-export", size="flex1", device="cpu", dtype="fp32",
               precisions="fp32,fp16", targets="onnx,openvino")
    bundle, seconds = benchmark.pedantic(lambda: _export(flex1, tmp_path_factory), rounds=1, iterations=1)
    sizes = {a.name: sum(f.size for f in a.files) / 2**20 for a in bundle.manifest.artifacts}
    print(f"\nexport FLEX-1 (random weights): {seconds:.0f} s; " +
          ", ".join(f"{k} {v:.0f} MiB" for k, v in sizes.items()))
    benchmark.extra_info.update(artifacts=len(sizes), bundle_mib=round(sum(sizes.values()), 1))
    assert all(a.parity.passed for a in bundle.manifest.find(precision="fp32"))


def test_decode_torch_eager(benchmark, bench_meta, flex1, frame):
    model = flex1[0]
    code, expressions, reference = frame
    tokens, expr = AvatarCode(torch.from_numpy(code).transpose(0, 1)), torch.from_numpy(expressions)
    bench_meta(stage="decode", backend="torch-eager", size="flex1", device="cpu", dtype="fp32", frames=1)
    g = benchmark.pedantic(lambda: model.decode(tokens, expr), rounds=ROUNDS, warmup_rounds=WARMUP)
    _check([t.numpy() for t in (g.means, g.quats, g.scales, g.opacities, g.sh0)], reference, 1e-4)


def _onnx_session(path):
    import onnxruntime as ort
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_decode_onnxruntime_cpu(benchmark, bench_meta, exported, frame, precision):
    bundle = exported[0]
    code, expressions, reference = frame
    session = _onnx_session(bundle.path(bundle.artifact(ROLE_DECODER, FORMAT_ONNX, precision)))
    feeds = {"code": code, "expressions": expressions}
    bench_meta(stage="decode", backend="ort-cpu", size="flex1", device="cpu", dtype=precision, frames=1,
               opset=bundle.manifest.opset)
    out = benchmark.pedantic(lambda: session.run(None, feeds), rounds=ROUNDS, warmup_rounds=WARMUP)
    _check(out, reference, 1e-4 if precision == "fp32" else None)


@pytest.mark.parametrize("precision, hint", [("fp32", "f32"), ("fp32", "device-default"), ("fp16", "f32")])
def test_decode_openvino_cpu(benchmark, bench_meta, exported, frame, precision, hint):
    """hint "device-default": OpenVINO's own choice (bf16 on CPUs with AMX / AVX512-bf16, as here)."""
    from flexavatar.export.openvino_tools import compile_ir, run_compiled

    bundle = exported[0]
    code, expressions, reference = frame
    compiled = compile_ir(bundle.path(bundle.artifact(ROLE_DECODER, FORMAT_OPENVINO, precision)),
                          config={} if hint == "device-default" else {"INFERENCE_PRECISION_HINT": hint})
    inference = compiled.get_property("INFERENCE_PRECISION_HINT")
    feeds = {"code": code, "expressions": expressions}
    bench_meta(stage="decode", backend="openvino", size="flex1", device="cpu", dtype=precision, frames=1,
               inference_precision=str(inference), opset=bundle.manifest.opset)
    out = benchmark.pedantic(lambda: run_compiled(compiled, feeds), rounds=ROUNDS, warmup_rounds=WARMUP)
    _check(out, reference, 1e-4 if (precision, hint) == ("fp32", "f32") else None)


def test_decode_avatar_specialised_onnxruntime_cpu(benchmark, bench_meta, exported, frame):
    """The decoder with this code folded in (what --avatar writes): the gain over the generic decoder."""
    import onnx

    from flexavatar.export.onnx_tools import specialise

    bundle = exported[0]
    code, expressions, reference = frame
    generic = onnx.load(str(bundle.path(bundle.artifact(ROLE_DECODER))))
    special = specialise(generic, {"code": code})
    import onnxruntime as ort
    session = ort.InferenceSession(special.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"expressions": expressions}
    bench_meta(stage="decode", backend="ort-cpu-avatar", size="flex1", device="cpu", dtype="fp32", frames=1)
    out = benchmark.pedantic(lambda: session.run(None, feeds), rounds=ROUNDS, warmup_rounds=WARMUP)
    _check(out, reference, 1e-4)


@pytest.fixture(scope="module")
def decoder_opset18(flex1, tmp_path_factory, frame):
    """The same decoder exported at opset 18 (attention, RMS norm and GELU written out as primitive ops)."""
    import onnx

    from flexavatar.export.graphs import DecoderGraph
    from flexavatar.export.onnx_tools import export_graph

    model = flex1[0]
    code, expressions, _ = frame
    trace_expressions = torch.from_numpy(np.repeat(expressions, 2, axis=0))     # E = 2: E stays dynamic
    graph = export_graph(DecoderGraph(model.network), (torch.from_numpy(code), trace_expressions),
                         DecoderGraph.spec(model.network), 18)
    path = tmp_path_factory.mktemp("bench_export_opset18") / "decoder.fp32.onnx"
    onnx.save_model(graph, str(path))
    return path


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_decode_opset18_cpu(benchmark, bench_meta, exported, decoder_opset18, frame, engine):
    """The bundle's decoder at the default opset (23) against opset 18, same weights, same run."""
    from flexavatar.export.openvino_tools import compile_ir, run_compiled

    code, expressions, reference = frame
    feeds = {"code": code, "expressions": expressions}
    if engine == "onnxruntime":
        session = _onnx_session(decoder_opset18)
        run = lambda: session.run(None, feeds)  # noqa: E731
    else:
        compiled = compile_ir(decoder_opset18)              # from the ONNX file; f32 as the bundle's IR check
        run = lambda: run_compiled(compiled, feeds)  # noqa: E731
    bench_meta(stage="decode", backend=f"{'ort-cpu' if engine == 'onnxruntime' else 'openvino'}-opset18",
               size="flex1", device="cpu", dtype="fp32", frames=1, opset=18)
    out = benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=WARMUP)
    _check(out, reference, 1e-4)
