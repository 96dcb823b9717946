"""Which ONNX Runtime CUDA-provider settings run a bundle's decoder on this GPU, and how fast.

The runtime's own settings (``runtime/gpu.py``: ``cuda_provider_options``, ``cuda_run_options``) and variants
that each change one of them, every variant in its own process (a crash ends that variant only): the decoder
through ``OrtCudaModel`` as the runtime runs it (IO binding to CUDA torch tensors, one stream), ``--frames``
calls after the first, then one line per variant: ``ok`` with ms per call, or how the process ended and the
last lines it printed (ONNX Runtime aborts the process on some CUDA errors).

    python benchmarks/device/ort_cuda_probe.py BUNDLE [--precision fp16] [--frames 30] [--json OUT.json]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

# name -> (provider-option changes (None deletes the key), run options synchronize the stream, CUDA graphs)
VARIANTS = {
    "runtime": ({}, False, False),
    "runtime+graphs": ({}, False, True),
    "sync-at-run-end": ({}, True, False),
    "no-user-stream": ({"user_compute_stream": None}, False, False),
    "cudnn-heuristic": ({"cudnn_conv_algo_search": "HEURISTIC"}, False, False),
    "arena-power-of-two": ({"arena_extend_strategy": "kNextPowerOfTwo"}, False, False),
    "tf32": ({"use_tf32": "1"}, False, False),
    "ort-defaults": ({"user_compute_stream": None, "cudnn_conv_algo_search": None, "arena_extend_strategy": None,
                      "use_tf32": None}, True, False),
    # the decoder's upsampler convolutions (fp16, NCHW in the graph): cuDNN's algorithm choice and ORT's NHWC
    # kernels (wheels built with CUDA NHWC ops; others ignore the option), with graphs as the runtime runs them
    "cudnn-heuristic+graphs": ({"cudnn_conv_algo_search": "HEURISTIC"}, False, True),
    "cudnn-exhaustive+graphs": ({"cudnn_conv_algo_search": "EXHAUSTIVE"}, False, True),
    "prefer-nhwc+graphs": ({"prefer_nhwc": "1"}, False, True),
    "cudnn-default+graphs": ({"cudnn_conv_algo_search": "DEFAULT"}, False, True),
    "max-workspace+graphs": ({"cudnn_conv_use_max_workspace": "1"}, False, True),
}


def child(bundle_dir: str, precision: str, variant: str, frames: int) -> None:
    import torch

    import flexavatar.runtime.gpu as gpu
    from flexavatar.bundle import Bundle
    from flexavatar.runtime.engines import EngineOptions

    changes, sync, graphs = VARIANTS[variant]
    base_options = gpu.cuda_provider_options

    def provider_options(device_id, stream_handle, cuda_graphs, file_precision):
        opts = base_options(device_id, stream_handle, cuda_graphs, file_precision)
        for key, value in changes.items():
            if value is None:
                opts.pop(key, None)
            else:
                opts[key] = value
        return opts

    def run_options():
        import onnxruntime as ort
        return ort.RunOptions() if sync else base_run_options()

    base_run_options = gpu.cuda_run_options
    gpu.cuda_provider_options, gpu.cuda_run_options = provider_options, run_options
    bundle = Bundle.open(bundle_dir, verify="size")
    artifact = bundle.artifact("decoder", "onnx", precision)
    conv = bundle.manifest.conventions
    stream = torch.cuda.Stream()
    t0 = time.perf_counter()
    model = gpu.OrtCudaModel(bundle.path(artifact), artifact, EngineOptions(precision=precision), stream, graphs)
    created = time.perf_counter() - t0
    gen = torch.Generator(device="cuda").manual_seed(0)
    code = 0.5 * torch.randn((1, conv.n_head_tokens, conv.d_code), device="cuda", generator=gen)
    expressions = torch.zeros((1, conv.expression_dim), device="cuda")
    with torch.cuda.stream(stream):
        first = model.run({"code": code, "expressions": expressions})
        means0 = first["means"].clone()
        stream.synchronize()
        t0 = time.perf_counter()
        for _ in range(frames):
            out = model.run({"code": code, "expressions": expressions})
        stream.synchronize()
    ms = (time.perf_counter() - t0) / frames * 1e3
    drift = float((out["means"] - means0).abs().max())
    print(json.dumps({"variant": variant, "ok": True, "ms_per_call": round(ms, 3), "session_s": round(created, 1),
                      "repeat_max_abs_diff": drift}), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--precision", default="fp16", choices=("fp32", "fp16"))
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--timeout", type=float, default=90.0, help="seconds per variant")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of: " + ", ".join(VARIANTS))
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.bundle, args.precision, args.child, args.frames)
        return 0
    results = []
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            raise SystemExit(f"unknown variant {variant!r}: one of {', '.join(VARIANTS)}")
        cmd = [sys.executable, __file__, args.bundle, "--precision", args.precision, "--frames", str(args.frames),
               "--child", variant]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if proc.returncode == 0 and lines:
                result = json.loads(lines[-1])
            else:
                tail = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()][-4:]
                result = {"variant": variant, "ok": False, "exit": proc.returncode, "tail": [t[:400] for t in tail]}
        except subprocess.TimeoutExpired:
            result = {"variant": variant, "ok": False, "exit": "timeout"}
        results.append(result)
        print(json.dumps(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
