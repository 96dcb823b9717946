"""Whole-frame latency of the C++ embedding runtime next to the Python path, same backends, same run.

One frame = decoder (ONNX Runtime) on one expression + native rasterizer at 512² + 8-bit pixels on the host, per
backend: ``ort-cpu+cpu`` (CPU execution provider + CPU rasterizer, fp32) and, on a CUDA machine with
onnxruntime-gpu, ``ort-cuda+cuda`` (CUDA execution provider + CUDA rasterizer, fp32 and fp16) and
``ort-cuda-graphs+cuda`` (fp16, the decoder replayed as a CUDA graph: ``options.cuda_graphs`` / ``cuda_graphs=True``),
``ort-cuda-graphs-fused+cuda`` (the same with the bundle's decoder with ONNX Runtime's fused kernels, target onnx-ort:
``options.fused_decoders`` ON / ``fused_decoders=True``; the other cases run the portable file: OFF / False).
Per backend:
* ``cpp-<backend>``: ``flexavatar_runtime_render`` of the C API (libflexavatar_runtime, called through ctypes:
  one foreign call per frame, microseconds of overhead);
* ``python-<backend>``: ``flexavatar.runtime.Runtime(backend="onnxruntime", device=..., rasterizer=...).render``
  (onnxruntime's Python API + the same native rasterizer + uint8 frames).
Two bundle sizes, each case once per size (``-k small`` / ``-k flex1``):
* ``small``: the reduced official fixture (3,405 Gaussians), exported once into ``benchmarks/.cache/
  cpp_runtime_bundle`` (≈ 70 s the first time);
* ``flex1``: FLEX-1 size with the seeded random weights of ``conftest.flex1_model`` (58,361 Gaussians, ≈ 200
  GFLOP per decoded frame): ``conftest.flex1_bundle``, the bundle bench_runtime.py uses too (exported once).
The Python case prints the ratio of the two means (C++ / Python) and checks that its frame equals the C++
one (CPU: within one 8-bit step). The C++ library is built by ``cpp/tests/run_ctest.sh --build-only release``
(without CUDA), or taken from ``FLEXAVATAR_CPP_RUNTIME_LIB`` (a libflexavatar_runtime.so with libflexavatar_cuda.so
beside it, such as the one ``cpp/tests/gpu/gpu_check.sh`` builds: the ``ort-cuda+cuda`` cases need it).

    pytest benchmarks/bench_cpp_runtime.py --benchmark-only -k flex1
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

from flexavatar.bundle import Bundle
from flexavatar.dev_fixtures import fixtures_dir

REPO = Path(__file__).resolve().parents[1]
OFFICIAL = fixtures_dir() / "official_flex"
CACHE_DIR = Path(__file__).resolve().parent / ".cache"
SMALL_CACHE = CACHE_DIR / "cpp_runtime_bundle"
BUILD = Path(os.environ.get("FLEXAVATAR_CTEST_BUILD_ROOT", REPO / "build")) / "ctest-release"
SIZE = 512
DECODE_FLOPS = {"small": None, "flex1": 199.6e9}     # SPEC §17, per decoded frame at FLEX-1 size
# (rounds, warm-up rounds) per (size, device); else pytest-benchmark's calibration. CPU FLEX-1: ≈ 6 s per frame on
# 2 cores. CUDA: fixed rounds after warm-up frames that absorb cuDNN's algorithm search and the arena's growth.
ROUNDS = {("flex1", "cpu"): (3, 1), ("flex1", "cuda"): (100, 10), ("small", "cuda"): (100, 10)}
VERIFY_SIZE = 1                                      # flexavatar.h enums
# backend -> (options.device, options.rasterizer): flexavatar.h's CPU = 1, CUDA = 2
BACKENDS = {"ort-cpu+cpu": (1, 1), "ort-cuda+cuda": (2, 2), "ort-cuda-graphs+cuda": (2, 2),
            "ort-cuda-graphs-fused+cuda": (2, 2)}
GRAPHS = {"ort-cuda-graphs+cuda", "ort-cuda-graphs-fused+cuda"}   # the decoder replays a CUDA graph (cuda_graphs = 1)
FUSED = {"ort-cuda-graphs-fused+cuda"}               # ONNX Runtime's fused decoder (options.fused_decoders ON)
FUSED_DECODERS_ON, FUSED_DECODERS_OFF = 1, 2         # flexavatar.h flexavatar_fused_decoders
FRAME_RGBA8 = 1                                      # flexavatar.h FLEXAVATAR_FRAME_RGBA8: the 8-bit frame alone comes
                                                     # back (as the Python case's uint8 frames), not 24 bytes a pixel
PRECISIONS = {"fp32": 0, "fp16": 1, "int8": 2}           # flexavatar_precision

_MEANS: dict[tuple[str, str, str, str], float] = {}  # (size, backend, precision, "cpp" | "python") -> mean seconds
_CPP_FRAMES: dict[tuple[str, str, str], np.ndarray] = {}  # (size, backend, precision) -> C++ rgb8 [H, W, 3]


class _Options(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("device", ctypes.c_int32), ("verify", ctypes.c_int32),
                ("num_threads", ctypes.c_int32), ("cuda_device", ctypes.c_int32), ("rasterizer", ctypes.c_int32),
                ("precision", ctypes.c_int32), ("cuda_graphs", ctypes.c_int32),
                ("fused_decoders", ctypes.c_int32), ("frame_outputs", ctypes.c_uint32)]


class _Camera(ctypes.Structure):
    _fields_ = [("cam2world", ctypes.c_float * 16), ("intrinsics", ctypes.c_float * 9), ("width", ctypes.c_int32),
                ("height", ctypes.c_int32), ("background", ctypes.c_float * 3)]


class _Frame(ctypes.Structure):
    _fields_ = [("width", ctypes.c_int32), ("height", ctypes.c_int32), ("rgba", ctypes.POINTER(ctypes.c_uint8)),
                ("rgb", ctypes.POINTER(ctypes.c_float)), ("alpha", ctypes.POINTER(ctypes.c_float)),
                ("depth", ctypes.POINTER(ctypes.c_float))]


def _small_bundle() -> Path:
    if not (SMALL_CACHE / "manifest.json").is_file() or not Bundle.open(SMALL_CACHE, verify="none").artifacts(
            "decoder", "onnx", "int8"):             # a cache from before the int8 decoders: export it again
        from flexavatar.config import FlexConfig
        from flexavatar.export import export_bundle

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = FlexConfig.from_official_json(OFFICIAL / "config.json")
            export_bundle(OFFICIAL / "state_dict.safetensors", SMALL_CACHE, template=OFFICIAL / "gghead_template.obj",
                          config=config, precisions=("fp32", "int8"), targets=("onnx",), force=True, progress=None)
    return SMALL_CACHE


@pytest.fixture(scope="module", params=["small", "flex1"])
def case(request, weights_cache):
    """(size label, bundle folder, frame inputs) for one bundle size."""
    size = request.param
    bundle_dir = _small_bundle() if size == "small" else request.getfixturevalue("flex1_bundle")
    conv = Bundle.open(bundle_dir, verify="size").manifest.conventions
    rng = np.random.default_rng(0)
    code = (0.5 * rng.standard_normal((1, conv.n_head_tokens, conv.d_code))).astype(np.float32)
    expression = np.zeros((1, conv.expression_dim), np.float32)
    c2w = np.array([[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 1], [0, 0, 0, 1]], np.float32)     # the demo camera
    k = np.array([[1500 / 512, 0, 0.5], [0, 1500 / 512, 0.5], [0, 0, 1]], np.float32)
    return size, bundle_dir, (code, expression, c2w, k)


@pytest.fixture(scope="module")
def cpp_library():
    prebuilt = os.environ.get("FLEXAVATAR_CPP_RUNTIME_LIB")    # e.g. gpu_check.sh's build with CUDA (run_ctest.sh
    if prebuilt:                                                # builds without it)
        lib = ctypes.CDLL(prebuilt)
        lib.flexavatar_last_error.restype = ctypes.c_char_p
        return lib
    proc = subprocess.run(["bash", str(REPO / "cpp/tests/run_ctest.sh"), "--build-only", "release"], cwd=REPO,
                          env=dict(os.environ, FLEXAVATAR_RUNTIME="ON"), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lib = ctypes.CDLL(str(BUILD / "libflexavatar_runtime.so"))
    lib.flexavatar_last_error.restype = ctypes.c_char_p
    return lib


def _run(benchmark, size: str, device: str, fn):
    rounds = ROUNDS.get((size, device))
    if rounds is None:
        return benchmark(fn)
    return benchmark.pedantic(fn, rounds=rounds[0], warmup_rounds=rounds[1])


def _cuda_unavailable() -> str:
    """Why the ort-cuda+cuda cases cannot run here ("" when they can): decided at collection, so that a machine
    without them never builds the FLEX-1 bundle for them."""
    try:
        import torch
    except ImportError:
        return "no torch"
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    try:
        import onnxruntime as ort
    except ImportError:
        return "no onnxruntime"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "this onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)"
    return ""


_NO_CUDA = _cuda_unavailable()
# (backend, precision): fp32 and the int8 decoder on the CPU; on CUDA fp32, then the bundle's fp16 decoder (the GPU
# deployment)
BACKEND_PARAMS = [pytest.param(b, p, id=f"{b}-{p}",
                               marks=pytest.mark.skipif(bool(_NO_CUDA) and b != "ort-cpu+cpu", reason=_NO_CUDA))
                  for b, p in (("ort-cpu+cpu", "fp32"), ("ort-cpu+cpu", "int8"), ("ort-cuda+cuda", "fp32"), ("ort-cuda+cuda", "fp16"),
                               ("ort-cuda-graphs+cuda", "fp16"), ("ort-cuda-graphs-fused+cuda", "fp16"))]


# ONNX Runtime's CUDA provider library binds to the first ONNX Runtime core that loads it in a process: the C++
# runtime's libonnxruntime and the onnxruntime Python module's own core cannot both run CUDA sessions in one
# process (the second fails with "Attempt to use DefaultLogger but none has been registered", seen on an H200).
# The CUDA cases of the two runtimes therefore run in separate pytest processes (benchmarks/run_gpu.sh bench_cpp).
_CUDA_ORT_OWNER: list[str] = []        # "cpp" or "python": who created the first CUDA session in this process


def _claim_cuda(runtime: str) -> None:
    if _CUDA_ORT_OWNER and _CUDA_ORT_OWNER[0] != runtime:
        pytest.skip(f"the {_CUDA_ORT_OWNER[0]} runtime already runs ONNX Runtime on CUDA in this process; run the "
                    f"{runtime} CUDA case in a process of its own (-k '{runtime}_runtime and cuda')")
    _CUDA_ORT_OWNER[:] = [runtime]


def _require_decoder(bundle_dir: Path, backend: str, precision: str) -> None:
    fmt = "onnx-ort" if backend in FUSED else "onnx"
    if not Bundle.open(bundle_dir, verify="none").artifacts("decoder", fmt, precision):
        pytest.skip(f"the bundle has no {precision} decoder in format {fmt!r}")


@pytest.mark.parametrize("backend,precision", BACKEND_PARAMS)
def test_whole_frame_cpp_runtime(benchmark, bench_meta, cpp_library, case, backend, precision):
    lib = cpp_library
    size, bundle_dir, (code, expression, c2w, k) = case
    _require_decoder(bundle_dir, backend, precision)
    if backend != "ort-cpu+cpu":
        _claim_cuda("cpp")
    options = _Options()
    assert lib.flexavatar_runtime_options_init(ctypes.byref(options), ctypes.sizeof(options)) == 0
    options.device, options.rasterizer = BACKENDS[backend]
    options.verify, options.precision = VERIFY_SIZE, PRECISIONS[precision]
    options.cuda_graphs = int(backend in GRAPHS)
    options.fused_decoders = FUSED_DECODERS_ON if backend in FUSED else FUSED_DECODERS_OFF
    options.frame_outputs = FRAME_RGBA8
    rt = ctypes.c_void_p()
    status = lib.flexavatar_runtime_create(str(bundle_dir).encode(), ctypes.byref(options), ctypes.byref(rt))
    if status != 0 and backend != "ort-cpu+cpu":
        pytest.skip(f"the C++ runtime cannot run CUDA here: {lib.flexavatar_last_error().decode()}")
    assert status == 0, lib.flexavatar_last_error()
    try:
        fptr = ctypes.POINTER(ctypes.c_float)
        assert lib.flexavatar_runtime_set_avatar_code(rt, code.ctypes.data_as(fptr), ctypes.c_int64(code.size)) == 0
        camera = _Camera((ctypes.c_float * 16)(*c2w.ravel()), (ctypes.c_float * 9)(*k.ravel()), SIZE, SIZE,
                         (ctypes.c_float * 3)(1, 1, 1))
        frame = _Frame()
        expr_ptr = expression.ctypes.data_as(fptr)

        def render():
            status = lib.flexavatar_runtime_render(rt, expr_ptr, ctypes.c_int64(expression.size), ctypes.byref(camera),
                                                   ctypes.byref(frame))
            assert status == 0, lib.flexavatar_last_error()
            return frame

        bench_meta(stage="whole_frame", backend=f"cpp-{backend}", size=size,
                   device="cpu" if backend == "ort-cpu+cpu" else "cuda", dtype=precision, frames=1,
                   flops=DECODE_FLOPS[size])
        _run(benchmark, size, "cpu" if backend == "ort-cpu+cpu" else "cuda", render)
        assert not frame.rgb and not frame.alpha and not frame.depth     # frame_outputs: RGBA8 alone
        rgba = np.ctypeslib.as_array(frame.rgba, shape=(SIZE, SIZE, 4))
        assert rgba[..., 3].max() > 128                                 # a head drawn, not the background
        _CPP_FRAMES[(size, backend, precision)] = rgba[..., :3].copy()
        _MEANS[(size, backend, precision, "cpp")] = benchmark.stats.stats.mean
    finally:
        lib.flexavatar_runtime_destroy(rt)


@pytest.mark.parametrize("backend,precision", BACKEND_PARAMS)
def test_whole_frame_python_runtime(benchmark, bench_meta, case, backend, precision, capsys):
    from flexavatar.runtime import Avatar, Camera, Runtime

    size, bundle_dir, (code, expression, c2w, k) = case
    _require_decoder(bundle_dir, backend, precision)
    device = "cpu" if backend == "ort-cpu+cpu" else "cuda"
    if device == "cuda":
        _claim_cuda("python")
    rt = Runtime(bundle_dir, backend="onnxruntime", device=device, rasterizer=device, precision=precision,
                 verify="size", cuda_graphs=backend in GRAPHS, fused_decoders=backend in FUSED)   # as the C++ case
    avatar, camera = Avatar(code), Camera(c2w, k)
    bench_meta(stage="whole_frame", backend=f"python-{backend}", size=size, device=device, dtype=precision,
               frames=1, flops=DECODE_FLOPS[size])
    frames = _run(benchmark, size, device, lambda: rt.render(avatar, expression, camera, SIZE, SIZE))   # uint8 [1, H, W, 3]
    assert frames.shape == (1, SIZE, SIZE, 3) and frames.min() < 128
    _MEANS[(size, backend, precision, "python")] = benchmark.stats.stats.mean
    if (size, backend, precision) in _CPP_FRAMES:          # same bundle, inputs, provider and rasterizer
        # CPU: equal within one 8-bit step; CUDA: two sessions may pick different cuDNN algorithms
        steps = 1 if device == "cpu" else 3
        assert np.abs(frames[0].astype(int) - _CPP_FRAMES[(size, backend, precision)].astype(int)).max() <= steps
    if (size, backend, precision, "cpp") in _MEANS:
        cpp, py = _MEANS[(size, backend, precision, "cpp")], _MEANS[(size, backend, precision, "python")]
        benchmark.extra_info["cpp_over_python_mean"] = cpp / py
        with capsys.disabled():
            print(f"\n[bench] whole frame at {size} size, 512², {backend} {precision}: C++ runtime {cpp * 1e3:.2f} ms, "
                  f"Python runtime {py * 1e3:.2f} ms (means): C++ / Python = {cpp / py:.3f}")
