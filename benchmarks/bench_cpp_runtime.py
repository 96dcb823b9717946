"""Whole-frame latency of the C++ embedding runtime next to the Python path, same backends, same run.

One frame = decoder (ONNX Runtime, CPU) on one expression + native CPU rasterizer at 512² + 8-bit pixels.
* ``cpp-ort-cpu+cpu``: ``flexavatar_runtime_render`` of the C API (libflexavatar_runtime, called through
  ctypes: one foreign call per frame, microseconds of overhead), created with device CPU and rasterizer CPU;
* ``python-ort-cpu+cpu``: the Python runtime, ``flexavatar.runtime.Runtime(backend="onnxruntime", device="cpu",
  rasterizer="cpu").render`` (onnxruntime's Python API + the same native rasterizer + uint8 frames).
Two bundle sizes, each case once per size (``-k small`` / ``-k flex1``):
* ``small``: the reduced official fixture (3,405 Gaussians), exported once into ``benchmarks/.cache/
  cpp_runtime_bundle`` (≈ 70 s the first time);
* ``flex1``: FLEX-1 size with the seeded random weights of ``conftest.flex1_model`` (58,361 Gaussians, ≈ 200
  GFLOP per decoded frame), fp32 ONNX. A cached FLEX-1 bundle of the same weights (checked by the checkpoint's
  sha256 in its manifest, e.g. the one bench_runtime.py exports) is reused; otherwise fp32 + ONNX only is
  exported into ``benchmarks/.cache/bundle-flex1-random-seed0-<template>-fp32-onnx`` (minutes, ≈ 8 GiB).
The Python case prints the ratio of the two means (C++ / Python) and checks that its frame equals the C++
one (both within one 8-bit step). The C++ library is built by ``cpp/tests/run_ctest.sh --build-only release``.

    pytest benchmarks/bench_cpp_runtime.py --benchmark-only -k flex1
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

from flexavatar.bundle import Bundle, BundleError
from flexavatar.dev_fixtures import fixtures_dir

REPO = Path(__file__).resolve().parents[1]
OFFICIAL = fixtures_dir() / "official_flex"
CACHE_DIR = Path(__file__).resolve().parent / ".cache"
SMALL_CACHE = CACHE_DIR / "cpp_runtime_bundle"
BUILD = Path(os.environ.get("FLEXAVATAR_CTEST_BUILD_ROOT", REPO / "build")) / "ctest-release"
SIZE = 512
FLEX1_WEIGHTS = "flex1-random-seed0"
DECODE_FLOPS = {"small": None, "flex1": 199.6e9}     # SPEC §17, per decoded frame at FLEX-1 size
ROUNDS = {"flex1": (3, 1)}                           # (rounds, warm-up rounds): ≈ 6 s per frame on 2 cores
DEVICE_CPU, RASTERIZER_CPU, VERIFY_SIZE = 1, 1, 1    # flexavatar.h enums

_MEANS: dict[tuple[str, str], float] = {}            # (size, "cpp" | "python") -> mean seconds, this run
_CPP_FRAMES: dict[str, np.ndarray] = {}              # size -> C++ rgb8 [H, W, 3] of the benchmarked frame


class _Options(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("device", ctypes.c_int32), ("verify", ctypes.c_int32),
                ("num_threads", ctypes.c_int32), ("cuda_device", ctypes.c_int32), ("rasterizer", ctypes.c_int32)]


class _Camera(ctypes.Structure):
    _fields_ = [("cam2world", ctypes.c_float * 16), ("intrinsics", ctypes.c_float * 9), ("width", ctypes.c_int32),
                ("height", ctypes.c_int32), ("background", ctypes.c_float * 3)]


class _Frame(ctypes.Structure):
    _fields_ = [("width", ctypes.c_int32), ("height", ctypes.c_int32), ("rgba", ctypes.POINTER(ctypes.c_uint8)),
                ("rgb", ctypes.POINTER(ctypes.c_float)), ("alpha", ctypes.POINTER(ctypes.c_float)),
                ("depth", ctypes.POINTER(ctypes.c_float))]


def _small_bundle() -> Path:
    if not (SMALL_CACHE / "manifest.json").is_file():
        from flexavatar.config import FlexConfig
        from flexavatar.export import export_bundle

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = FlexConfig.from_official_json(OFFICIAL / "config.json")
            export_bundle(OFFICIAL / "state_dict.safetensors", SMALL_CACHE, template=OFFICIAL / "gghead_template.obj",
                          config=config, precisions=("fp32",), targets=("onnx",), force=True, progress=None)
    return SMALL_CACHE


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _flex1_bundle(request, weights_cache) -> Path:
    """A FLEX-1 random-weight bundle with an fp32 ONNX decoder, exported from exactly the cached weights."""
    checkpoint = weights_cache.path(FLEX1_WEIGHTS)
    if not checkpoint.is_file():
        request.getfixturevalue("flex1_model")                          # builds and caches the weights
    tag = "obj" if (OFFICIAL / "gghead_template.obj").is_file() else "synthetic"
    own = CACHE_DIR / f"bundle-{FLEX1_WEIGHTS}-{tag}-fp32-onnx"
    digest = _sha256(checkpoint)
    for folder in [own, *sorted(p for p in CACHE_DIR.glob(f"bundle-{FLEX1_WEIGHTS}-{tag}-*") if p != own)]:
        try:
            bundle = Bundle.open(folder, verify="size")
        except BundleError:
            continue
        if bundle.manifest.model.checkpoint_sha256 == digest and bundle.artifacts("decoder", "onnx", "fp32"):
            return folder                                               # same weights, fp32 ONNX decoder inside
    from flexavatar.export import export_bundle

    template = request.getfixturevalue("flex1_model").template
    export_bundle(checkpoint, own, template=template, precisions=("fp32",), targets=("onnx",), force=True,
                  progress=lambda msg: print(msg, flush=True))
    return own


@pytest.fixture(scope="module", params=["small", "flex1"])
def case(request, weights_cache):
    """(size label, bundle folder, frame inputs) for one bundle size."""
    size = request.param
    bundle_dir = _small_bundle() if size == "small" else _flex1_bundle(request, weights_cache)
    conv = Bundle.open(bundle_dir, verify="size").manifest.conventions
    rng = np.random.default_rng(0)
    code = (0.5 * rng.standard_normal((1, conv.n_head_tokens, conv.d_code))).astype(np.float32)
    expression = np.zeros((1, conv.expression_dim), np.float32)
    c2w = np.array([[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 1], [0, 0, 0, 1]], np.float32)     # the demo camera
    k = np.array([[1500 / 512, 0, 0.5], [0, 1500 / 512, 0.5], [0, 0, 1]], np.float32)
    return size, bundle_dir, (code, expression, c2w, k)


@pytest.fixture(scope="module")
def cpp_library():
    proc = subprocess.run(["bash", str(REPO / "cpp/tests/run_ctest.sh"), "--build-only", "release"], cwd=REPO,
                          env=dict(os.environ, FLEXAVATAR_RUNTIME="ON"), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lib = ctypes.CDLL(str(BUILD / "libflexavatar_runtime.so"))
    lib.flexavatar_last_error.restype = ctypes.c_char_p
    return lib


def _run(benchmark, size: str, fn):
    rounds = ROUNDS.get(size)
    if rounds is None:
        return benchmark(fn)
    return benchmark.pedantic(fn, rounds=rounds[0], warmup_rounds=rounds[1])


def test_whole_frame_cpp_runtime(benchmark, bench_meta, cpp_library, case):
    lib = cpp_library
    size, bundle_dir, (code, expression, c2w, k) = case
    options = _Options()
    lib.flexavatar_runtime_options_init(ctypes.byref(options))
    options.device, options.rasterizer, options.verify = DEVICE_CPU, RASTERIZER_CPU, VERIFY_SIZE
    rt = ctypes.c_void_p()
    status = lib.flexavatar_runtime_create(str(bundle_dir).encode(), ctypes.byref(options), ctypes.byref(rt))
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

        bench_meta(stage="whole_frame", backend="cpp-ort-cpu+cpu", size=size, device="cpu", dtype="fp32", frames=1,
                   flops=DECODE_FLOPS[size])
        _run(benchmark, size, render)
        alpha = np.ctypeslib.as_array(frame.alpha, shape=(SIZE, SIZE))
        assert alpha.max() > 0.5                                        # a head drawn, not the background
        _CPP_FRAMES[size] = np.ctypeslib.as_array(frame.rgba, shape=(SIZE, SIZE, 4))[..., :3].copy()
        _MEANS[(size, "cpp")] = benchmark.stats.stats.mean
    finally:
        lib.flexavatar_runtime_destroy(rt)


def test_whole_frame_python_runtime(benchmark, bench_meta, case, capsys):
    from flexavatar.runtime import Avatar, Camera, Runtime

    size, bundle_dir, (code, expression, c2w, k) = case
    rt = Runtime(bundle_dir, backend="onnxruntime", device="cpu", rasterizer="cpu", verify="size")
    avatar, camera = Avatar(code), Camera(c2w, k)
    bench_meta(stage="whole_frame", backend="python-ort-cpu+cpu", size=size, device="cpu", dtype="fp32", frames=1,
               flops=DECODE_FLOPS[size])
    frames = _run(benchmark, size, lambda: rt.render(avatar, expression, camera, SIZE, SIZE))   # uint8 [1, H, W, 3]
    assert frames.shape == (1, SIZE, SIZE, 3) and frames.min() < 128
    _MEANS[(size, "python")] = benchmark.stats.stats.mean
    if size in _CPP_FRAMES:                                             # same bundle, inputs and rasterizer
        assert np.abs(frames[0].astype(int) - _CPP_FRAMES[size].astype(int)).max() <= 1
    if (size, "cpp") in _MEANS:
        ratio = _MEANS[(size, "cpp")] / _MEANS[(size, "python")]
        benchmark.extra_info["cpp_over_python_mean"] = ratio
        with capsys.disabled():
            print(f"\n[bench] whole frame at {size} size, 512²: C++ runtime {_MEANS[(size, 'cpp')] * 1e3:.1f} ms, "
                  f"Python runtime {_MEANS[(size, 'python')] * 1e3:.1f} ms (means): C++ / Python = {ratio:.3f}")
