"""Whole-frame latency of the runtime at FLEX-1 size: decode (the bundle's graph) + rasterize 512² + pixels on
the host, per inference engine + rasterizer, random weights (the same seed as bench_model.py).

Cases are labelled ``<decode engine>+<rasterizer>``: ``ort-cpu+cpu``, ``openvino+cpu``, ``torch-eager+cpu``,
``torch-eager+reference`` on the CPU; on a GPU or NPU without CUDA ``ort-gpu+cpu``, ``openvino-gpu+cpu``,
``ort-npu+cpu``, ``openvino-npu+cpu`` (DirectML, CoreML, QNN, OpenVINO's plugins, ...: host arrays, the C++ CPU
rasterizer; skipped without one), and ``-stereo`` (``test_stereo_frame``: two eyes a frame, one decode); on a
CUDA GPU ``ort-cuda+cuda`` (fp32, fp16), ``ort-cuda-graphs+cuda`` (CUDA
graphs), ``ort-cuda-graphs-fused+cuda`` (the decoder with ONNX Runtime's fused kernels, export target onnx-ort: the
runtime's default on CUDA; the unfused cases run the portable files, ``fused_decoders=False``), ``torch-eager+cuda``
and ``torch-compile+cuda`` (Inductor + CUDA graphs, fp16 autocast; ``torch-compile-frames+cuda``: the whole frame
compiled as one, ``Runtime(compiled_frames=True)``, the default on CUDA; ``ort-cuda-graphs-fused-frames+cuda``: ONNX
Runtime's decoder, then the rasterizer and pixels compiled as one), and there also: batches of 8 frames per decoder
call (``-b8``), the frame left on the GPU (``-device``: no readback) and 16-frame clips (``-clip-<mode>``, see
CLIP_MODES: pipelined as the runtime renders a clip, one chunk after the other, frames left on the device, live
loops). The FLEX-1 bundle (fp32, + fp16 and the fused decoders on a CUDA machine; ONNX + OpenVINO on a CPU
machine) is exported once and kept in ``benchmarks/.cache/`` (git-ignored; minutes on a 2-core CPU).
Each case checks its first frame against the PyTorch model + reference rasterizer (correctness may fail
a benchmark; speed never does).

    pytest benchmarks/bench_runtime.py --benchmark-only
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from flexavatar.bundle import PSNR_TARGET_DB  # noqa: E402
from flexavatar.config import FLEX1  # noqa: E402
from flexavatar.dev_fixtures import fixtures_dir  # noqa: E402
from flexavatar.export.parity import MAX_RECORDED_PSNR_DB  # noqa: E402  (inf is not JSON)
from flexavatar.images import psnr as frame_psnr  # noqa: E402
from flexavatar.runtime import (Avatar, Camera, Runtime, get_engine, load_expressions,  # noqa: E402
                                orbit_camera, stereo_camera, synthetic_expressions)
from flexavatar.runtime.gpu import node_by_node_aborts  # noqa: E402

SHARED = fixtures_dir()
TEMPLATE_OBJ = SHARED / "official_flex" / "gghead_template.obj"      # G = 58,361 (synthetic template otherwise)
DRIVING = SHARED / "driving" / "EMO-1-shout+laugh.npz"
SIZE = 512
DECODE_FLOPS = 199.6e9          # SPEC §17, per decoded frame
N_FRAMES = 16                   # frames cycled through by the rounds

# (label, engine, device, precision, rasterizer, cuda graphs, fused decoders: ONNX Runtime's onnx-ort files)
CASES = [
    ("ort-cpu+cpu", "onnxruntime", "cpu", "fp32", "cpu", False, False),
    # the int8 decoder (export --precision ...,int8: int8 MatMul weights) beside the fp32 one, same run
    ("ort-cpu+cpu", "onnxruntime", "cpu", "int8", "cpu", False, False),
    ("openvino+cpu", "openvino", "cpu", "fp32", "cpu", False, None),
    ("torch-eager+cpu", "torch", "cpu", "fp32", "cpu", False, None),
    ("torch-eager+reference", "torch", "cpu", "fp32", "reference", False, None),
    # GPU: the reference pipeline first, then the deployment path (fp16 + CUDA graphs) before the others
    ("torch-eager+cuda", "torch", "cuda", "fp32", "cuda", False, None),
    ("ort-cuda-graphs+cuda", "onnxruntime", "cuda", "fp16", "cuda", True, False),
    ("ort-cuda-graphs-fused+cuda", "onnxruntime", "cuda", "fp16", "cuda", True, True),
    # "-frames": the rasterizer and the pixel format compiled as one (Runtime(compiled_frames=True))
    ("ort-cuda-graphs-fused-frames+cuda", "onnxruntime", "cuda", "fp16", "cuda", True, True),
    # the PyTorch decoder under Inductor + CUDA graphs (fp16 autocast): its first frame compiles (tens of seconds);
    # "-frames": the whole frame compiled as one (decoder, rasterizer, pixels: Runtime(compiled_frames=True))
    ("torch-compile+cuda", "torch-compile", "cuda", "fp16", "cuda", False, None),
    ("torch-compile-frames+cuda", "torch-compile", "cuda", "fp16", "cuda", False, None),
    ("ort-cuda-graphs+cuda", "onnxruntime", "cuda", "fp32", "cuda", True, False),
    ("ort-cuda+cuda", "onnxruntime", "cuda", "fp32", "cuda", False, False),
    ("ort-cuda+cuda", "onnxruntime", "cuda", "fp16", "cuda", False, False),
    # GPUs and NPUs without CUDA (DirectML, CoreML, MIGraphX, QNN, OpenVINO's plugins, ...): host arrays, the C++ CPU
    # rasterizer; skipped on machines without one
    ("ort-gpu+cpu", "onnxruntime", "gpu", "fp32", "cpu", False, None),
    ("openvino-gpu+cpu", "openvino", "gpu", "fp32", "cpu", False, None),
    ("ort-npu+cpu", "onnxruntime", "npu", "fp32", "cpu", False, None),
    ("openvino-npu+cpu", "openvino", "npu", "fp32", "cpu", False, None),
]


@pytest.fixture(scope="module")
def expressions() -> np.ndarray:
    if DRIVING.is_file():
        return load_expressions(DRIVING)[:N_FRAMES]
    return synthetic_expressions(N_FRAMES)


@pytest.fixture(scope="module")
def avatar() -> Avatar:
    return Avatar(np.random.default_rng(0).standard_normal((1, FLEX1.n_head_tokens, FLEX1.d_hidden))
                  .astype(np.float32) * 0.5)


@pytest.fixture(scope="module")
def reference_frame(flex1_bundle, flex1_model, avatar, expressions) -> np.ndarray:
    """Frame 0 by the PyTorch model (CPU, fp32) and the reference rasterizer: the correctness check."""
    rt = Runtime(flex1_bundle, backend="torch", device="cpu", rasterizer="reference", model=flex1_model,
                 verify="size")
    camera = orbit_camera(N_FRAMES)
    return rt.render(avatar, expressions[:1], Camera(camera.cam2world[0], camera.intrinsics), SIZE, SIZE,
                     output="float")[0, ..., :3]


def _compiled_frames(label: str, engine: str) -> bool | None:
    """Runtime(compiled_frames=): on for the "-frames" cases; the other torch-compile cases pinned to the separate
    calls (their history predates compiled frames, which are torch-compile's CUDA default)."""
    if "-frames" in label:
        return True
    return False if engine == "torch-compile" else None


def _check_compiled_as_labelled(benchmark, rt: Runtime, label: str) -> None:
    """After the timing: the record names what ran (``describe()`` names compiled frames only while they hold), and
    a "-frames" case whose compiled frames gave way to the separate calls (a warning; the pixels stay right) fails
    instead of filing the separate calls' time under its label."""
    benchmark.extra_info["runtime"] = rt.describe()
    assert "-frames" not in label or rt.compiled_frames, (
        f"{label}: compiled frames gave way to the separate calls (the 'compiled frames failed' warning says why)")


def _skip_unless_runnable(engine: str, device: str, bundle: Path, graphs: bool | None = True,
                          precision: str = "fp32"):
    if engine == "openvino" and not any(bundle.glob("decoder.*.xml")):
        pytest.skip("the GPU machine's bundle holds no OpenVINO IR (a CPU engine, measured on CPU machines)")
    if precision == "int8" and not any(bundle.glob("decoder.int8.onnx")):
        pytest.skip("the GPU machine's bundle holds no int8 decoder (CPU files, measured on CPU machines)")
    if device == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device (torch.cuda.is_available() is False)")
        if engine == "onnxruntime":
            ort = pytest.importorskip("onnxruntime")
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                pytest.skip("this onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)")
            if graphs is False and node_by_node_aborts(ort.__version__):
                # the process would die, and with it every case after this one
                pytest.skip(f"onnxruntime-gpu {ort.__version__} aborts CUDA sessions that run node by node "
                            "(benchmarks/device/README.md)")


# CUDA cases skip at collection on machines without a CUDA device (before the FLEX-1 bundle is built for them), and
# so do GPU / NPU cases whose engine cannot reach such a device here
_NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)")


def _device_marks(engine: str, device: str) -> list:
    if device == "cuda":
        return [_NO_CUDA]
    reason = get_engine(engine).unavailable_reason(device) if device in ("gpu", "npu") else None
    return [pytest.mark.skip(reason=reason)] if reason else []


_PARAMS = [pytest.param(*c, id=f"{c[0]}-{c[3]}", marks=_device_marks(c[1], c[2])) for c in CASES]


@pytest.mark.parametrize("label,engine,device,precision,rasterizer,graphs,fused", _PARAMS)
def test_whole_frame(benchmark, bench_meta, flex1_bundle, flex1_model, avatar, expressions, reference_frame,
                     label, engine, device, precision, rasterizer, graphs, fused):
    _skip_unless_runnable(engine, device, flex1_bundle, graphs, precision)
    rt = Runtime(flex1_bundle, backend=engine, device=device, rasterizer=rasterizer, precision=precision,
                 cuda_graphs=graphs, fused_decoders=fused, verify="size",
                 model=flex1_model if engine.startswith("torch") else None,
                 compiled_frames=_compiled_frames(label, engine))
    cameras = orbit_camera(N_FRAMES)
    bench_meta(stage="whole_frame", backend=label, size="flex1", device=device, dtype=precision,
               flops=DECODE_FLOPS, frames=1, rasterizer=rt.rasterizer, runtime=rt.describe())
    first = rt.render(avatar, expressions[:1], Camera(cameras.cam2world[0], cameras.intrinsics), SIZE, SIZE,
                      output="float")[0, ..., :3]
    step = iter(range(10**9))

    def frame():
        i = next(step) % N_FRAMES                  # the pixels reach the host: the whole frame is timed
        return rt.render(avatar, expressions[i:i + 1], Camera(cameras.cam2world[i], cameras.intrinsics), SIZE, SIZE)

    cpu = device == "cpu"
    out = benchmark.pedantic(frame, rounds=3 if cpu else 100, warmup_rounds=1 if cpu else 10)
    _check_compiled_as_labelled(benchmark, rt, label)
    assert out.shape == (1, SIZE, SIZE, 3) and out.dtype == np.uint8
    diff = np.abs(first.astype(np.float64) - reference_frame)
    psnr = min(frame_psnr(first, reference_frame), MAX_RECORDED_PSNR_DB)
    benchmark.extra_info["psnr_db"] = round(psnr, 2)    # fidelity beside the speed in the record
    print(f"\n{label} {precision}: {rt.describe()}; frame 0 vs PyTorch + reference: mean abs {diff.mean():.2e}, "
          f"max {diff.max():.2e}, PSNR {psnr:.1f} dB")
    if precision == "fp32":
        assert diff.mean() <= 1e-3 and diff.max() <= 2 / 255 + 1e-6
    else:                                   # lossy files: fp16 (35 dB here), int8 (its export target, 30 dB)
        assert psnr >= min(35.0, PSNR_TARGET_DB[precision])


# Stereo (multiview=True with the two eyes of the demo camera, 63 mm apart): one decode, two rasterizations a frame.
# Beside test_whole_frame's single frames of the same engine, in the same run: a headset's cost against 2 frames.
STEREO_CASES = [("ort-cpu+cpu", "onnxruntime", "cpu", "fp32", "cpu", False, False),
                ("ort-cuda-graphs-fused+cuda", "onnxruntime", "cuda", "fp16", "cuda", True, True)]


@pytest.mark.parametrize("label,engine,device,precision,rasterizer,graphs,fused",
                         [pytest.param(*c, id=f"{c[0]}-{c[3]}-stereo", marks=_device_marks(c[1], c[2]))
                          for c in STEREO_CASES])
def test_stereo_frame(benchmark, bench_meta, flex1_bundle, avatar, expressions, label, engine, device, precision,
                      rasterizer, graphs, fused):
    _skip_unless_runnable(engine, device, flex1_bundle, graphs)
    rt = Runtime(flex1_bundle, backend=engine, device=device, rasterizer=rasterizer, precision=precision,
                 cuda_graphs=graphs, fused_decoders=fused, verify="size")
    eyes = stereo_camera()
    bench_meta(stage="whole_frame", backend=f"{label}-stereo", size="flex1", device=device, dtype=precision,
               flops=DECODE_FLOPS, frames=1, rasterizer=rt.rasterizer, runtime=rt.describe(), views=2)
    step = iter(range(10**9))

    def frame():
        i = next(step) % N_FRAMES                  # both eyes' pixels reach the host: the whole frame is timed
        return rt.render(avatar, expressions[i:i + 1], eyes, SIZE, SIZE, multiview=True)

    cpu = device == "cpu"
    out = benchmark.pedantic(frame, rounds=3 if cpu else 100, warmup_rounds=1 if cpu else 10)
    assert out.shape == (1, 2, SIZE, SIZE, 3) and out.dtype == np.uint8
    last = (next(step) - 1) % N_FRAMES
    for v in range(2):                              # each eye is that eye's own frame (one step of rounding on CUDA)
        alone = rt.render(avatar, expressions[last:last + 1], Camera(eyes.cam2world[0, v], eyes.intrinsics), SIZE,
                          SIZE)
        assert np.abs(out[:, v].astype(int) - alone).max() <= (0 if cpu else 1)


def _live_clip(rt: Runtime, avatar: Avatar, expressions: np.ndarray, cameras: Camera) -> np.ndarray:
    """A live loop over the clip: one frame a call, frame i + 1 queued before frame i's pixels are taken."""
    frames, pending = [], None
    for i in range(len(expressions)):
        queued = rt.render_async(avatar, expressions[i:i + 1], Camera(cameras.cam2world[i], cameras.intrinsics),
                                 SIZE, SIZE)
        if pending is not None:
            frames.append(pending.result())
        pending = queued
    frames.append(pending.result())
    return np.concatenate(frames)


# The live loop with the torch-compile engine (Inductor's fused kernels + CUDA graphs, fp16 autocast): the other
# route to fewer kernels a frame, in the loop an interactive app runs. Right after the single frames: issue #7's
# candidates run first, before a GPU session's time budget can cut the stage short.
@pytest.mark.parametrize("label", [pytest.param(label, marks=[_NO_CUDA], id=f"{label}-fp16-clip-live")
                                   for label in ("torch-compile+cuda", "torch-compile-frames+cuda")])
def test_live_clip_torch_compile(benchmark, bench_meta, flex1_bundle, flex1_model, avatar, expressions, label):
    _skip_unless_runnable("torch-compile", "cuda", flex1_bundle)
    rt = Runtime(flex1_bundle, backend="torch-compile", device="cuda", rasterizer="cuda", precision="fp16",
                 verify="size", model=flex1_model, compiled_frames=_compiled_frames(label, "torch-compile"))
    cameras = orbit_camera(N_FRAMES)
    bench_meta(stage="whole_frame", backend=f"{label}-clip-live", size="flex1", device="cuda", dtype="fp16",
               flops=DECODE_FLOPS * N_FRAMES, frames=N_FRAMES, rasterizer=rt.rasterizer, runtime=rt.describe())
    one_by_one = np.concatenate([rt.render(avatar, expressions[i:i + 1], Camera(cameras.cam2world[i],
                                                                                cameras.intrinsics), SIZE, SIZE)
                                 for i in range(N_FRAMES)])
    out = benchmark.pedantic(lambda: _live_clip(rt, avatar, expressions, cameras), rounds=10, warmup_rounds=2)
    _check_compiled_as_labelled(benchmark, rt, label)
    assert out.shape == (N_FRAMES, SIZE, SIZE, 3) and out.dtype == np.uint8
    if rt.compiled_frames:
        # one-by-one frame 0 is the separate calls' (its sort sized exactly): Inductor fuses the compiled whole frame's
        # fp16 kernels otherwise, a step of 8-bit rounding at most; the frames after it are the same compiled calls
        assert np.abs(out[:1].astype(int) - one_by_one[:1]).max() <= 1
        np.testing.assert_array_equal(out[1:], one_by_one[1:])
    else:
        np.testing.assert_array_equal(out, one_by_one)      # the same decoder calls, the same pixels


# Throughput of clip rendering on a GPU: BATCH frames per decoder call (Runtime(batch=...)), rasterized and read
# back together; fps counts frames. Latency per frame is the call's latency: for offline clips, not interaction.
BATCH = 8
_BATCHED = [pytest.param("ort-cuda-graphs+cuda", "onnxruntime", "fp16", True, id=f"ort-cuda-graphs+cuda-fp16-b{BATCH}",
                         marks=[_NO_CUDA]),
            pytest.param("torch-eager+cuda", "torch", "fp32", False, id=f"torch-eager+cuda-fp32-b{BATCH}",
                         marks=[_NO_CUDA])]


@pytest.mark.parametrize("label,engine,precision,graphs", _BATCHED)
def test_whole_frame_batched(benchmark, bench_meta, flex1_bundle, flex1_model, avatar, expressions, label, engine,
                             precision, graphs):
    _skip_unless_runnable(engine, "cuda", flex1_bundle)
    rt = Runtime(flex1_bundle, backend=engine, device="cuda", rasterizer="cuda", precision=precision, batch=BATCH,
                 cuda_graphs=graphs, fused_decoders=False, verify="size",
                 model=flex1_model if engine == "torch" else None)
    cameras = orbit_camera(N_FRAMES)
    bench_meta(stage="whole_frame", backend=f"{label}-b{BATCH}", size="flex1", device="cuda", dtype=precision,
               flops=DECODE_FLOPS * BATCH, frames=BATCH, rasterizer=rt.rasterizer, runtime=rt.describe())
    step = iter(range(10**9))

    def frames():
        i = (next(step) * BATCH) % N_FRAMES
        picked = [(i + k) % N_FRAMES for k in range(BATCH)]
        return rt.render(avatar, expressions[picked], Camera(cameras.cam2world[picked], cameras.intrinsics), SIZE, SIZE)

    single = [rt.render(avatar, expressions[k:k + 1], Camera(cameras.cam2world[k], cameras.intrinsics), SIZE, SIZE)
              for k in range(BATCH)]
    out = benchmark.pedantic(frames, rounds=30, warmup_rounds=5)
    assert out.shape == (BATCH, SIZE, SIZE, 3) and out.dtype == np.uint8
    # a batch renders what its frames render one by one (the batched decoder's rows are independent)
    batch0 = rt.render(avatar, expressions[:BATCH], Camera(cameras.cam2world[:BATCH], cameras.intrinsics), SIZE, SIZE)
    diff = np.stack([batch0[k].astype(np.float64) - single[k][0] for k in range(BATCH)]) / 255
    psnr = min(frame_psnr(np.stack([f[0] for f in single]) / 255, batch0 / 255), MAX_RECORDED_PSNR_DB)
    benchmark.extra_info["psnr_db_vs_one_by_one"] = round(psnr, 2)
    print(f"\n{label} b{BATCH}: {rt.describe()}; batched vs one-by-one frames: max {np.abs(diff).max() * 255:.0f} "
          f"steps of 255, PSNR {psnr:.1f} dB")
    # the bundle's PSNR targets, as flexavatar-verify: a batch runs other GEMM kernels than one frame does (the
    # H200's torch fp32 b8 moved one borderline Gaussian: 7 steps at one pixel, 77.7 dB over the frames)
    assert psnr >= PSNR_TARGET_DB[precision]


# The frame left on the GPU (output="device", no readback: what a display, a video encoder or a torch pipeline
# takes): the deployment path's whole frame without the copy to the host; each call waits for the GPU to finish.
@pytest.mark.parametrize("label,precision", [pytest.param("ort-cuda-graphs+cuda", "fp16", marks=[_NO_CUDA],
                                                          id="ort-cuda-graphs+cuda-fp16-device")])
def test_whole_frame_on_device(benchmark, bench_meta, flex1_bundle, avatar, expressions, label, precision):
    _skip_unless_runnable("onnxruntime", "cuda", flex1_bundle)
    rt = Runtime(flex1_bundle, backend="onnxruntime", device="cuda", rasterizer="cuda", precision=precision,
                 cuda_graphs=True, fused_decoders=False, verify="size")
    cameras = orbit_camera(N_FRAMES)
    bench_meta(stage="whole_frame", backend=f"{label}-device", size="flex1", device="cuda", dtype=precision,
               flops=DECODE_FLOPS, frames=1, rasterizer=rt.rasterizer, runtime=rt.describe())
    host = rt.render(avatar, expressions[:1], Camera(cameras.cam2world[0], cameras.intrinsics), SIZE, SIZE,
                     output="float")
    step = iter(range(10**9))

    def frame():
        i = next(step) % N_FRAMES
        out = rt.render(avatar, expressions[i:i + 1], Camera(cameras.cam2world[i], cameras.intrinsics), SIZE, SIZE,
                        output="device")
        torch.cuda.synchronize()
        return out

    benchmark.pedantic(frame, rounds=100, warmup_rounds=10)
    first = rt.render(avatar, expressions[:1], Camera(cameras.cam2world[0], cameras.intrinsics), SIZE, SIZE,
                      output="device")
    assert first.is_cuda and tuple(first.shape) == (1, SIZE, SIZE, 4)
    np.testing.assert_array_equal(first.cpu().numpy(), host)       # the host frame, before its copy


# A clip: N_FRAMES frames in one render call, one frame per decoder call (as flexavatar-render without --batch).
# "pipelined" is the runtime's way (each frame's pixels are handed out once the next frame's decoder is queued);
# "sequential" turns that off on this instance, for the side-by-side ratio. "device": N_FRAMES calls of one frame
# each left on the GPU (output="device"), one wait at the end: the frame rate of a consumer on the GPU (display,
# video encoder), where the host queues a frame while the GPU renders the one before. "-exact-sort" sizes the
# rasterizer's sort exactly in every frame (a host sync inside each frame: the runtime before its sync-free sort).
# "live": a live loop, one frame per call as expressions would arrive, pixels on the host: frame i + 1 is queued
# (Runtime.render_async) before frame i's pixels are taken, so the host's work overlaps the GPU's.
# "-fused": the decoder with ONNX Runtime's fused kernels (the other modes run the portable files).
CLIP_MODES = ("pipelined", "sequential", "pipelined-exact-sort", "device", "device-exact-sort", "device-fused",
              "live", "live-fused", "live-fused-frames")


@pytest.mark.parametrize("mode", [pytest.param(m, marks=[_NO_CUDA], id=f"ort-cuda-graphs+cuda-fp16-clip-{m}")
                                  for m in CLIP_MODES])
def test_clip(benchmark, bench_meta, flex1_bundle, avatar, expressions, mode):
    _skip_unless_runnable("onnxruntime", "cuda", flex1_bundle)
    rt = Runtime(flex1_bundle, backend="onnxruntime", device="cuda", rasterizer="cuda", precision="fp16",
                 cuda_graphs=True, fused_decoders="-fused" in mode, verify="size",
                 compiled_frames=_compiled_frames(mode, "onnxruntime"))
    if mode == "sequential":
        rt._pipelines = lambda n_frames, output, timings: False        # this instance only
    if mode.endswith("-exact-sort"):
        rt.intersections.sync_free = False                              # this instance's budget only
    cameras = orbit_camera(N_FRAMES)
    bench_meta(stage="whole_frame", backend=f"ort-cuda-graphs+cuda-clip-{mode}", size="flex1", device="cuda",
               dtype="fp16", flops=DECODE_FLOPS * N_FRAMES, frames=N_FRAMES, rasterizer=rt.rasterizer,
               runtime=rt.describe())
    one_by_one = np.concatenate([rt.render(avatar, expressions[i:i + 1], Camera(cameras.cam2world[i],
                                                                                cameras.intrinsics), SIZE, SIZE)
                                 for i in range(N_FRAMES)])

    def clip():
        return rt.render(avatar, expressions, cameras, SIZE, SIZE)

    def device_clip():
        frames = [rt.render(avatar, expressions[i:i + 1], Camera(cameras.cam2world[i], cameras.intrinsics), SIZE,
                            SIZE, output="device") for i in range(N_FRAMES)]
        torch.cuda.synchronize()
        return frames

    if mode.startswith("live"):
        out = benchmark.pedantic(lambda: _live_clip(rt, avatar, expressions, cameras), rounds=10, warmup_rounds=2)
    elif mode.startswith("device"):
        frames = benchmark.pedantic(device_clip, rounds=10, warmup_rounds=2)
        out = np.concatenate([(f[..., :3].clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy() for f in frames])
    else:
        out = benchmark.pedantic(clip, rounds=10, warmup_rounds=2)
    _check_compiled_as_labelled(benchmark, rt, mode)
    assert out.shape == (N_FRAMES, SIZE, SIZE, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, one_by_one)      # the same decoder calls, the same pixels
    assert rt.intersections.rerenders == 0 and rt.intersections.incomplete == 0
