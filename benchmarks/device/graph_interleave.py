"""Two runtimes of one bundle on ONNX Runtime CUDA in one process, decoding different expressions in turn.

Each call's Gaussians must be those of its own expression: the ONNX Runtime CPU provider decoding the same
inputs is the oracle, and a call closer to another expression's Gaussians than to its own's means a session
read state that is not its own (the C++ CUDA-graph runtime did, with several CUDA sessions in one process).
One JSON line per call, then a summary; exit status 1 when a call failed the check.

    python benchmarks/device/graph_interleave.py BUNDLE [--precision fp32] [--no-cuda-graphs] [--json OUT.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from flexavatar.bundle import Bundle
from flexavatar.runtime import Runtime
from flexavatar.runtime.avatar import Avatar

# own-expression max |diff| vs the CPU provider: fp32 as the export's CUDA tolerance; fp16 only reported
TOLERANCE = {"fp32": 1e-4, "fp16": float("inf")}
SEQUENCE = (("a", 0), ("b", 1), ("a", 1), ("b", 2), ("a", 2), ("b", 0), ("a", 0), ("b", 2))


def flat(gaussians) -> np.ndarray:
    return np.concatenate([np.asarray(v, dtype=np.float32).ravel() for v in gaussians.numpy().arrays().values()])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "fp16"))
    ap.add_argument("--no-cuda-graphs", action="store_true", help="ONNX Runtime node by node on CUDA")
    ap.add_argument("--json", help="write the per-call results here")
    args = ap.parse_args()
    bundle = Bundle.open(args.bundle, verify="size")
    check = bundle.check_set()
    avatar = Avatar(check.code)
    expressions = np.asarray(check.expressions, dtype=np.float32)
    cpu = Runtime(args.bundle, backend="onnxruntime", device="cpu", rasterizer="cpu", precision=args.precision,
                  verify="size")
    reference = [flat(cpu.decode(avatar, expressions[i:i + 1])) for i in range(len(expressions))]
    graphs = not args.no_cuda_graphs
    runtimes = {name: Runtime(args.bundle, backend="onnxruntime", device="cuda", rasterizer="cuda",
                              precision=args.precision, verify="size", cuda_graphs=graphs) for name in ("a", "b")}
    results, failed = [], 0
    for name, i in SEQUENCE:
        got = flat(runtimes[name].decode(avatar, expressions[i:i + 1]))
        diffs = [float(np.abs(got - ref).max()) for ref in reference]
        own = diffs[i]
        closest_other = min(d for k, d in enumerate(diffs) if k != i)
        ok = own <= TOLERANCE[args.precision] and own < closest_other
        failed += not ok
        result = {"runtime": name, "expression": i, "max_abs_diff_own": own, "max_abs_diff_closest_other": closest_other,
                  "ok": ok}
        results.append(result)
        print(json.dumps(result), flush=True)
    summary = {"bundle": Path(args.bundle).name, "precision": args.precision, "cuda_graphs": graphs,
               "calls": len(results), "failed": failed}
    print(json.dumps(summary), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "calls": results}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
