"""Shared by the A/B scripts of this folder that time ONNX files as the runtime runs them: a runner per file (ONNX
Runtime's CUDA provider with the runtime's options, CUDA graphs and IO binding; or the CPU provider for the scripts'
smoke tests), a guarded start, and rounds that alternate the variants so that clock and thermal drift fall on all."""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


class OrtRunner:
    """One ONNX file on ONNX Runtime: the CUDA provider with CUDA graphs and IO binding (as the runtime runs
    decoders: the runtime's provider options, ``search`` overriding cuDNN's), or the CPU provider (the scripts'
    smoke tests). ``outputs``: name → preallocated float32 tensor on the device."""

    def __init__(self, path: Path, precision: str, search: str | None, inputs: dict, outputs: dict, stream):
        import numpy as np
        import onnxruntime as ort

        import flexavatar.runtime.gpu as gpu
        from flexavatar.runtime.engines import EngineOptions, ort_session_options

        options = ort_session_options(EngineOptions(precision=precision))
        self.outputs, self.stream = outputs, stream
        if stream is None:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self.feeds = {k: v.numpy() for k, v in inputs.items()}
            return
        provider = gpu.cuda_provider_options(0, stream.cuda_stream, True, precision)
        if search:
            provider["cudnn_conv_algo_search"] = search
        self.session = ort.InferenceSession(str(path), options, providers=[("CUDAExecutionProvider", provider)])
        self.binding = self.session.io_binding()
        for bind, tensors in ((self.binding.bind_input, inputs), (self.binding.bind_output, outputs)):
            for name, t in tensors.items():
                bind(name, "cuda", 0, np.float32, tuple(t.shape), t.data_ptr())
        self.run_options = gpu.cuda_run_options()

    def __call__(self) -> None:
        if self.stream is None:
            names = list(self.outputs)
            for name, value in zip(names, self.session.run(names, self.feeds), strict=True):
                self.outputs[name].copy_(torch.from_numpy(value))
            return
        with torch.cuda.stream(self.stream):
            self.session.run_with_iobinding(self.binding, self.run_options)


def first_line(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"


def start_variant(key: str, make, sync, results: dict, runs: dict, row: dict) -> bool:
    """Create a variant's runner and run it twice (warm-up, CUDA-graph capture). A variant that fails is recorded
    with its error and left out of the timing: one refused form must not cost the others their figures."""
    try:
        runner = make()
        runner()
        runner()
        sync()
    except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own types; the message is the result
        results[key] = {**row, "error": first_line(e)}
        print(json.dumps({"variant": key, **results[key]}), flush=True)
        return False
    runs[key] = runner
    return True


def time_rounds(runs: dict, frames: int, rounds: int, sync, results: dict) -> dict[str, float]:
    """median ms per call of each variant, the variants alternating within each round (a variant that fails
    while timed is recorded and dropped)"""
    times: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(rounds):
        for key, run in list(runs.items()):
            try:
                sync()
                t0 = time.perf_counter()
                for _ in range(frames):
                    run()
                sync()
            except Exception as e:  # noqa: BLE001
                results[key]["error"] = f"while timed: {first_line(e)}"
                del runs[key], times[key]
                continue
            times[key].append((time.perf_counter() - t0) / frames * 1e3)
    return {key: round(statistics.median(t), 4) for key, t in times.items() if t}


def device_stream(device: str):
    """(stream, sync) for ``device``: on "cuda" ONNX Runtime's CUDA libraries are preloaded (onnxruntime-gpu >= 1.21
    finds them in the nvidia-* wheels) and the variants share one stream; on "cpu" (None, a no-op)."""
    if device != "cuda":
        return None, lambda: None
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    stream = torch.cuda.Stream()
    return stream, stream.synchronize


def add_timing_arguments(ap) -> None:
    """The options every A/B script of this folder takes: calls per round, rounds, device, JSON report."""
    ap.add_argument("--frames", type=int, default=50, help="calls per variant and round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cpu: ONNX Runtime's CPU provider (the script's smoke test)")
    ap.add_argument("--json", help="write the rows here")


def run_ab(args, add_variants, baseline_of) -> dict[str, float]:
    """The A/B of a script's ``main``: ``add_variants(stream, sync, tmp, results, runs)`` starts the variants
    (``start_variant``, files in the temporary folder ``tmp``); they are timed in alternating rounds; each timed row
    gets its ms per call and its speedup over the row ``baseline_of(key)`` names; a line names the machine, and the
    rows go to ``args.json``. Returns ms per call of every variant timed."""
    import onnxruntime as ort

    stream, sync = device_stream(args.device)
    results: dict[str, dict] = {}
    runs: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        add_variants(stream, sync, Path(tmp), results, runs)
        times = time_rounds(runs, args.frames, args.rounds, sync, results)
    for key, ms in times.items():
        baseline = times.get(baseline_of(key))
        results[key].update(ms_per_call=ms, speedup=round(baseline / ms, 3) if baseline else None)
        print(json.dumps({"variant": key, "ms_per_call": ms, "speedup": results[key]["speedup"]}), flush=True)
    print(json.dumps({"device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
                      "onnxruntime": ort.__version__, "torch": torch.__version__, "frames": args.frames,
                      "rounds": args.rounds}), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return times
