"""Numerical checks of exported files against PyTorch: runners, per-output errors, rendered PSNR."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flexavatar.bundle import FORMAT_ONNX, FORMAT_ONNX_ORT, FORMAT_OPENVINO, GAUSSIAN_OUTPUTS, OutputParity
from flexavatar.images import psnr  # noqa: F401  (the exporter's and the tests' PSNR)

FP32_TOLERANCE = 1e-4          # max abs error on every attribute and on the avatar code
MAX_RECORDED_PSNR_DB = 200.0   # the manifest's value for identical renders (inf is not JSON)
RENDER_SIZE = 512


# ---- runners (one per file format and precision; a registry, not a switch) -----------------------------

@dataclass(frozen=True)
class RunResult:
    outputs: list[np.ndarray]
    fp16_peak_abs: float | None = None      # largest |value| of any fp16 tensor (fp16 ONNX files only)


PEAK_OUTPUT = "fp16_peak_abs"


def _run_onnx(path: Path, feeds: dict[str, np.ndarray]) -> RunResult:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return RunResult(session.run(None, feeds))


def _run_onnx_per_frame(path: Path, feeds: dict[str, np.ndarray]) -> RunResult:
    """One call per expression, as the runtime runs an int8 decoder: its activations are quantized with one range
    per call, so frames decoded together would depend on each other (runtime.Runtime._decode_chunk)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expressions = feeds["expressions"]                                       # [E, 135]
    frames = [session.run(None, {**feeds, "expressions": expressions[i:i + 1]}) for i in range(len(expressions))]
    return RunResult([np.concatenate(outputs) for outputs in zip(*frames)])


def _run_onnx_fp16_storage(path: Path, feeds: dict[str, np.ndarray]) -> RunResult:
    """Run the fp16 file as it is (it must open and run with default settings), then judge its float32
    twin that rounds every fp16 tensor (``mixed_precision.emulate_fp16_storage``): ONNX Runtime's CPU
    provider keeps chains of fp16 ops in float32, which hides the rounding and overflow of fp16 devices.
    The twin also measures the largest |value| an fp16 tensor takes (the headroom below 65504)."""
    import onnx
    import onnxruntime as ort

    from .mixed_precision import emulate_fp16_storage

    _run_onnx(path, feeds)
    twin = emulate_fp16_storage(onnx.load(str(path)), peak_output=PEAK_OUTPUT).SerializeToString()
    options = ort.SessionOptions()
    # the peak's reductions then run as soon as their tensors exist; in the default (depth-first) order they
    # kept intermediates alive: 4.5 instead of 2.0 GiB for the FLEX-1 decoder's twin at E = 3
    options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    session = ort.InferenceSession(twin, options, providers=["CPUExecutionProvider"])
    del twin                                                    # protos freed: FLEX-1 is GBs
    peak, *outputs = session.run(None, feeds)
    return RunResult(outputs, float(peak))


def _run_openvino(path: Path, feeds: dict[str, np.ndarray]) -> RunResult:
    from .openvino_tools import compile_ir, run_compiled

    return RunResult(run_compiled(compile_ir(path), feeds))


def _onnx_runtime_name() -> str:
    import onnxruntime as ort
    return f"onnxruntime {ort.__version__} CPUExecutionProvider"


def _onnx_fp16_storage_name() -> str:
    return (f"{_onnx_runtime_name()}, fp16 storage emulated (every fp16 tensor rounded to fp16 between ops, "
            "as on a GPU; the file itself also run)")


def _openvino_runtime_name() -> str:
    import openvino as ov
    return f"openvino {ov.get_version().split('-')[0]} CPU, INFERENCE_PRECISION_HINT=f32"


@dataclass(frozen=True)
class Runner:
    run: Callable[[Path, dict[str, np.ndarray]], RunResult]
    describe: Callable[[], str]


RUNNERS: dict[tuple[str, str], Runner] = {
    (FORMAT_ONNX, "fp32"): Runner(_run_onnx, _onnx_runtime_name),
    (FORMAT_ONNX, "fp16"): Runner(_run_onnx_fp16_storage, _onnx_fp16_storage_name),
    # the CPU provider (int8 as on any CPU), one frame per call as the runtime decodes int8
    (FORMAT_ONNX, "int8"): Runner(_run_onnx_per_frame, lambda: f"{_onnx_runtime_name()}, one frame per call"),
    # the fused kernels exist on ONNX Runtime's CPU provider too (float and float16), and the fused outputs are
    # typed in the file, so the fp16 twin rounds them as a GPU stores them
    (FORMAT_ONNX_ORT, "fp32"): Runner(_run_onnx, _onnx_runtime_name),
    (FORMAT_ONNX_ORT, "fp16"): Runner(_run_onnx_fp16_storage, _onnx_fp16_storage_name),
    # the fp16 IR holds fp16 weights; the CPU device computes in f32 (pinned), so nothing to emulate
    (FORMAT_OPENVINO, "fp32"): Runner(_run_openvino, _openvino_runtime_name),
    (FORMAT_OPENVINO, "fp16"): Runner(_run_openvino, _openvino_runtime_name),
}


# ---- comparisons ------------------------------------------------------------------------------------

def compare(names: list[str], got: list[np.ndarray], want: list[np.ndarray],
            tolerance: float | None) -> tuple[OutputParity, ...]:
    """Max abs error per output; tolerance None = report only (always passes)."""
    rows = []
    for name, g, w in zip(names, got, want, strict=True):
        if g.shape != w.shape:
            rows.append(OutputParity(name, math.inf, tolerance, False))
            continue
        err = float(np.max(np.abs(g.astype(np.float64) - w.astype(np.float64)))) if g.size else 0.0
        ok = bool(np.isfinite(g).all()) and (tolerance is None or err <= tolerance)
        rows.append(OutputParity(name, err if math.isfinite(err) else math.inf, tolerance, ok))
    return tuple(rows)


def render_frontal(gaussians: dict[str, np.ndarray], cam2world: np.ndarray, intrinsics: np.ndarray,
                   size: int = RENDER_SIZE) -> np.ndarray:
    """Render frame 0 of decoder outputs (GAUSSIAN_OUTPUTS names, [E, G, …]) on white → rgb [H, W, 3].

    cam2world [4, 4] OpenCV, intrinsics [3, 3] normalised; the reference rasterizer of flexavatar.kernels.
    """
    from flexavatar.kernels import Cameras, Splats, pixel_intrinsics, rasterize, world2cam_from_cam2world

    frame = {k: np.ascontiguousarray(gaussians[k][0], dtype=np.float32) for k in GAUSSIAN_OUTPUTS}
    cams = Cameras(world2cam=world2cam_from_cam2world(cam2world.astype(np.float32))[None],
                   K=pixel_intrinsics(intrinsics.astype(np.float32), size, size)[None])
    result = rasterize(Splats(**frame), cams, size, size, background=(1.0, 1.0, 1.0), backend="reference")
    return np.asarray(result.rgb[0])


RENDER_DESCRIPTION = (f"frame 0, {RENDER_SIZE}x{RENDER_SIZE}, the encoder's first reference camera, white "
                      "background, flexavatar.kernels reference rasterizer")
