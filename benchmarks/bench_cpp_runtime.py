"""Whole-frame latency of the C++ embedding runtime next to the Python path, same backends, same run.

One frame = decoder (ONNX Runtime, CPU) on one expression + native CPU rasterizer at 512² + RGBA8.
* ``cpp-ort-cpu+cpu``: ``flexavatar_runtime_render`` of the C API (libflexavatar_runtime, called through
  ctypes: one foreign call per frame, microseconds of overhead);
* ``python-ort-cpu+cpu``: the Python runtime, ``flexavatar.runtime.Runtime(backend="onnxruntime", device="cpu",
  rasterizer="cpu").render`` (onnxruntime's Python API + the same native rasterizer + uint8 frames).
Report the ratio of the two means. Bundle: the reduced official fixture (3,405 Gaussians, ``size="small"``),
exported once into ``benchmarks/.cache/cpp_runtime_bundle`` (≈ 70 s the first time); the C++ library is
built by ``cpp/tests/run_ctest.sh --build-only release``.
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

REPO = Path(__file__).resolve().parents[1]
OFFICIAL = REPO.parent / "shared" / "fixtures" / "official_flex"
CACHE = Path(__file__).resolve().parent / ".cache" / "cpp_runtime_bundle"
BUILD = Path(os.environ.get("FLEXAVATAR_CTEST_BUILD_ROOT", REPO / "build")) / "ctest-release"
SIZE = 512


class _Camera(ctypes.Structure):
    _fields_ = [("cam2world", ctypes.c_float * 16), ("intrinsics", ctypes.c_float * 9), ("width", ctypes.c_int32),
                ("height", ctypes.c_int32), ("background", ctypes.c_float * 3)]


class _Frame(ctypes.Structure):
    _fields_ = [("width", ctypes.c_int32), ("height", ctypes.c_int32), ("rgba", ctypes.POINTER(ctypes.c_uint8)),
                ("rgb", ctypes.POINTER(ctypes.c_float)), ("alpha", ctypes.POINTER(ctypes.c_float)),
                ("depth", ctypes.POINTER(ctypes.c_float))]


@pytest.fixture(scope="module")
def bundle_dir() -> Path:
    if not (CACHE / "manifest.json").is_file():
        from flexavatar.config import FlexConfig
        from flexavatar.export import export_bundle

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = FlexConfig.from_official_json(OFFICIAL / "config.json")
            export_bundle(OFFICIAL / "state_dict.safetensors", CACHE, template=OFFICIAL / "gghead_template.obj",
                          config=config, precisions=("fp32",), targets=("onnx",), force=True, progress=None)
    return CACHE


@pytest.fixture(scope="module")
def frame_inputs(bundle_dir):
    bundle = Bundle.open(bundle_dir)
    conv = bundle.manifest.conventions
    rng = np.random.default_rng(0)
    code = (0.5 * rng.standard_normal((1, conv.n_head_tokens, conv.d_code))).astype(np.float32)
    expression = np.zeros((1, conv.expression_dim), np.float32)
    c2w = np.array([[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 1], [0, 0, 0, 1]], np.float32)
    k = np.array([[1500 / 512, 0, 0.5], [0, 1500 / 512, 0.5], [0, 0, 1]], np.float32)
    return code, expression, c2w, k


@pytest.fixture(scope="module")
def cpp_library():
    proc = subprocess.run(["bash", str(REPO / "cpp/tests/run_ctest.sh"), "--build-only", "release"], cwd=REPO,
                          env=dict(os.environ, FLEXAVATAR_RUNTIME="ON"), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lib = ctypes.CDLL(str(BUILD / "libflexavatar_runtime.so"))
    lib.flexavatar_last_error.restype = ctypes.c_char_p
    return lib


def test_whole_frame_cpp_runtime(benchmark, bench_meta, cpp_library, bundle_dir, frame_inputs):
    lib = cpp_library
    code, expression, c2w, k = frame_inputs
    rt = ctypes.c_void_p()
    assert lib.flexavatar_runtime_create(str(bundle_dir).encode(), None, ctypes.byref(rt)) == 0, lib.flexavatar_last_error()
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

        bench_meta(stage="whole_frame", backend="cpp-ort-cpu+cpu", size="small", device="cpu", dtype="fp32", frames=1)
        benchmark(render)
        alpha = np.ctypeslib.as_array(frame.alpha, shape=(SIZE, SIZE))
        assert alpha.max() > 0.5
    finally:
        lib.flexavatar_runtime_destroy(rt)


def test_whole_frame_python_runtime(benchmark, bench_meta, bundle_dir, frame_inputs):
    from flexavatar.runtime import Avatar, Camera, Runtime

    code, expression, c2w, k = frame_inputs
    rt = Runtime(bundle_dir, backend="onnxruntime", device="cpu", rasterizer="cpu")
    avatar, camera = Avatar(code), Camera(c2w, k)
    bench_meta(stage="whole_frame", backend="python-ort-cpu+cpu", size="small", device="cpu", dtype="fp32", frames=1)
    frames = benchmark(rt.render, avatar, expression, camera, SIZE, SIZE)           # uint8 [1, H, W, 3]
    assert frames.shape == (1, SIZE, SIZE, 3) and frames.min() < 128
