"""GPU time of the runtime's whole frame, per kernel class, as the GPU ran it (issue #7: where the time goes).

ONNX Runtime's own profiler (``ort_placement.py --times``) times each node's ``Compute`` call on the host: for a
CUDA node an asynchronous launch, not the kernel. torch.profiler's CUDA activity (CUPTI) records every kernel the process runs on the device, whoever
launched it (ONNX Runtime, cuBLAS, cuDNN, the native rasterizer), CUDA-graph replays included. For ``--calls``
whole frames (decode + CUDA rasterizer + pixels on the host, as ``Runtime.render`` runs them) it prints:
wall time per frame and GPU busy time per frame (the gap is launch latency, host work and syncs), kernels per
frame, GPU time per kernel class (``CLASSES``) and the most expensive kernels by name.

Then the host's side of the same frames (``host_profile``, cProfile): the functions where the host thread spends
each frame, by own time. Native calls show as one row each (ONNX Runtime's ``run_with_iobinding``, the rasterizer's
``_native`` call, whose own time includes its wait for the intersection count), so the rows split a frame into
Python glue, launches and waits. cProfile adds about a microsecond per Python call to the glue.

    python benchmarks/device/gpu_kernel_profile.py BUNDLE [--precision fp16] [--calls 20] [--no-graphs] [--json OUT]
        [--engine onnxruntime|torch-compile [--checkpoint C] [--template OBJ]]

``--engine torch-compile`` profiles the same frames decoded by the PyTorch model under torch.compile (Inductor +
CUDA graphs; the FLEX-1 benchmark checkpoint by default): how many kernels Inductor's fusion leaves.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

# (class, pattern on the kernel name), first match wins; names are those of cuBLAS/cuBLASLt, cuDNN, CUTLASS,
# ONNX Runtime's CUDA kernels and flexavatar's rasterizer
CLASSES = [
    ("attention", r"flash|fmha|attention|softmax"),
    ("rasterizer", r"flexavatar::|DeviceRadixSort|Onesweep|cub::"),     # cpp/cuda kernels and their CUB sort
    ("convolution", r"conv|fprop|dgrad|wgrad|implicit_gemm|winograd|nchwToNhwc|nhwcToNchw|cudnn"),
    # (triton_tem_: Inductor's GEMM templates)
    ("gemm", r"gemm|gemv|cutlass|xmma|cublas|nvjet|s16816|s1688|h1688|h16816|matmul|^triton_tem_"),
    ("normalisation", r"layernorm|layer_norm|rmsnorm|rms_norm|LayerNorm|RMSNorm|SkipLayerNorm|cuApplyLayerNorm"),
    # Inductor's generated Triton kernels (pointwise / persistent or plain reductions), each a fusion of several ops
    ("fused (Inductor)", r"^triton_(poi|per|red)_"),
    ("layout / copy", r"transpose|concat|split|expand|slice|depthtospace|memcpy|memset|copy|gather|pad"),
    ("elementwise", r"elementwise|binary|unary|impl_|_add|add_|cast|gelu|clip|relu|sigmoid|exp|mul|div|sub"),
    ("grid sample", r"gridsample|grid_sample|grid_sampler"),
]
_COMPILED = [(name, re.compile(pattern, re.IGNORECASE)) for name, pattern in CLASSES]


def kernel_class(name: str) -> str:
    """The class of a CUDA kernel from its (demangled) name; "other" when no pattern matches."""
    for cls, pattern in _COMPILED:
        if pattern.search(name):
            return cls
    return "other"


def summarise(kernels: list[tuple[str, float]], calls: int, wall_ms: float, top: int = 15) -> dict:
    """kernels: (name, GPU µs) of every kernel of ``calls`` frames → per-frame figures."""
    busy_us = sum(us for _, us in kernels)
    by_class, by_name, count = Counter(), Counter(), Counter()
    for name, us in kernels:
        by_class[kernel_class(name)] += us
        by_name[name] += us
        count[name] += 1
    per = 1e3 * calls
    return {"calls": calls, "wall_ms_per_frame": round(wall_ms / calls, 3),
            "gpu_busy_ms_per_frame": round(busy_us / per, 3), "kernels_per_frame": round(len(kernels) / calls, 1),
            "gpu_ms_per_class": {c: round(us / per, 3) for c, us in by_class.most_common()},
            "top_kernels": [{"name": n[:160], "ms_per_frame": round(us / per, 4), "launches_per_frame": count[n] / calls}
                            for n, us in by_name.most_common(top)]}


def host_profile(frame, calls: int, top: int = 25) -> dict:
    """Run ``frame(i)`` for i < calls under cProfile → wall and the ``top`` functions by own (host) time, per frame."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.enable()
    for i in range(calls):
        frame(i)
    profiler.disable()
    wall_ms = (time.perf_counter() - t0) * 1e3
    rows = []
    for (path, line, name), (_, ncalls, own_s, cumulative_s, _) in pstats.Stats(profiler).stats.items():
        where = name if path == "~" else f"{Path(path).parent.name}/{Path(path).name}:{line} {name}"
        rows.append({"function": where[:160], "own_ms_per_frame": round(own_s * 1e3 / calls, 4),
                     "cumulative_ms_per_frame": round(cumulative_s * 1e3 / calls, 4),
                     "calls_per_frame": round(ncalls / calls, 2)})
    rows.sort(key=lambda r: r["own_ms_per_frame"], reverse=True)
    return {"calls": calls, "wall_ms_per_frame": round(wall_ms / calls, 3),
            "python_calls_per_frame": round(sum(r["calls_per_frame"] for r in rows), 1), "top_functions": rows[:top]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--precision", default="fp16", choices=("fp32", "fp16"))
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--no-graphs", action="store_true", help="run the decoder node by node (no CUDA graphs)")
    ap.add_argument("--engine", default="onnxruntime", choices=("onnxruntime", "torch-compile"))
    ap.add_argument("--checkpoint", type=Path, help="torch-compile: the bundle's checkpoint (default: the FLEX-1 "
                    "benchmarks' benchmarks/.cache/flex1-random-seed0.safetensors)")
    ap.add_argument("--template", type=Path, help="torch-compile: gghead_template.obj (default: the fixtures')")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity, profile

    from flexavatar.runtime import Avatar, Camera, Runtime, orbit_camera, synthetic_expressions

    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device (torch.cuda.is_available() is False)")
    model = None
    if args.engine == "torch-compile":
        from flexavatar.dev_fixtures import fixtures_dir
        from flexavatar.model import FlexAvatarModel
        repo = Path(__file__).resolve().parents[2]
        checkpoint = args.checkpoint or repo / "benchmarks" / ".cache" / "flex1-random-seed0.safetensors"
        template = args.template or fixtures_dir() / "official_flex" / "gghead_template.obj"
        model = FlexAvatarModel.from_checkpoint(checkpoint, template=template)
    rt = Runtime(args.bundle, backend=args.engine, device="cuda", rasterizer="cuda", precision=args.precision,
                 cuda_graphs=not args.no_graphs, verify="size", model=model)
    code_shape = (1, rt.manifest.conventions.n_head_tokens, rt.manifest.conventions.d_code)
    avatar = Avatar(np.random.default_rng(0).standard_normal(code_shape).astype(np.float32) * 0.5)
    expressions = synthetic_expressions(args.calls)
    cameras = orbit_camera(args.calls)

    def frame(i: int) -> np.ndarray:
        return rt.render(avatar, expressions[i:i + 1], Camera(cameras.cam2world[i], cameras.intrinsics),
                         args.size, args.size)

    for i in range(5):                                    # warm-up: cuDNN algorithm search, graph capture
        frame(i % args.calls)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for i in range(args.calls):
            frame(i)                                      # ends with the pixels on the host
        wall_ms = (time.perf_counter() - t0) * 1e3
    # the raw CUPTI records (kernels, memcpy, memset), linked to a torch op or not: ORT's kernels are not
    kernels = [(e.name(), e.duration_ns() / 1e3) for e in prof.profiler.kineto_results.events()
               if e.device_type().name == "CUDA" and e.duration_ns() > 0]
    report = {"runtime": rt.describe(), "device": torch.cuda.get_device_name(0), "precision": args.precision,
              "engine": args.engine, "cuda_graphs": not args.no_graphs, **summarise(kernels, args.calls, wall_ms)}
    print(json.dumps({k: v for k, v in report.items() if k != "top_kernels"}), flush=True)
    for row in report["top_kernels"]:
        print(json.dumps(row), flush=True)
    report["host"] = host_profile(frame, args.calls)
    print(json.dumps({k: v for k, v in report["host"].items() if k != "top_functions"}), flush=True)
    for row in report["host"]["top_functions"]:
        print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
