"""A bundle's decoders with ONNX Runtime's fused transformer kernels against the files as exported, side by side on
one GPU (issue #7's frame rate).

The FLEX-1 fp16 decoder is 432 nodes, most of them small passes over [E, T, 768] token tensors (on an H200, 2.33 ms
of GPU work a frame in 466 kernels). ``export/ort_fusions.py`` writes ONNX Runtime's contrib kernels into a copy:
bias + residual Add + LayerNorm → ``SkipLayerNormalization`` (30 sites, the residual sum as its fourth output) and
bias Add + tanh GELU → ``FastGelu`` (15 sites): 75 nodes fewer. Both variants run as the runtime runs decoders (the
CUDA provider with its options, CUDA graphs, IO binding), the variants alternating in rounds, on the bundle's check
set inputs (its avatar code and first expression). Per variant: nodes, ms per call (median of rounds), the largest
error of each output against the PyTorch float32 outputs recorded at export (relative to that output's largest
value), and the fused file's largest difference from the exported one. One JSON line per variant.

    python benchmarks/device/ort_fusions_ab.py BUNDLE [--precision fp16|fp32|both] [--frames 50 --rounds 5]
        [--device cuda|cpu] [--json OUT.json]
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import torch
# this folder's shared A/B helpers (run_gpu.sh runs the scripts with PYTHONSAFEPATH=1: their folder is not on sys.path)
sys.path.append(str(Path(__file__).resolve().parent))
from ort_ab import OrtRunner, add_timing_arguments, run_ab, start_variant  # noqa: E402

EXPORTED, FUSED = "exported", "ort-fusions"


def decoder_variants(bundle, precisions: tuple[str, ...], device: str, stream, sync, tmp: Path, results: dict,
                     runs: dict) -> None:
    """Each ONNX decoder of the bundle in ``precisions`` as exported and with ``fuse_for_onnxruntime``; their
    outputs checked."""
    import onnx

    from flexavatar.export.ort_fusions import fuse_for_onnxruntime

    check = bundle.check_set()
    inputs = {"code": torch.from_numpy(check.code[:1]).to(device),
              "expressions": torch.from_numpy(check.expressions[:1]).to(device)}
    for artifact in bundle.manifest.artifacts:
        if artifact.role != "decoder" or artifact.format != "onnx" or artifact.precision not in precisions:
            continue
        exported = onnx.load(str(bundle.path(artifact)))
        fused = onnx.ModelProto()
        fused.CopyFrom(exported)
        report = fuse_for_onnxruntime(fused)
        outputs = {}
        for variant, graph in ((EXPORTED, exported), (FUSED, fused)):
            path = tmp / f"decoder.{variant}.{artifact.precision}.onnx"
            onnx.save_model(graph, str(path))
            key = f"{artifact.precision}-{variant}"
            outputs[variant] = {o.name: torch.empty(tuple(1 if isinstance(d, str) else d for d in o.shape),
                                                    dtype=torch.float32, device=device) for o in artifact.outputs}
            row = {"precision": artifact.precision, "graph": variant, "nodes": len(graph.graph.node),
                   "ops": dict(collections.Counter(n.op_type for n in graph.graph.node).most_common())}
            if variant == FUSED:
                row["fused"] = report.counts
            if not start_variant(key, lambda: OrtRunner(path, artifact.precision, None, inputs, outputs[variant],
                                                        stream), sync, results, runs, row):
                continue
            row["relative_error"] = {
                name: float((out.cpu() - torch.from_numpy(check.gaussians[name][:1])).abs().max()
                            / max(float(abs(check.gaussians[name][:1]).max()), 1e-12))
                for name, out in outputs[variant].items()}
            if variant == FUSED and f"{artifact.precision}-{EXPORTED}" in runs:
                row["max_abs_diff_vs_exported"] = max(float((outputs[FUSED][k] - outputs[EXPORTED][k]).abs().max())
                                                      for k in outputs[FUSED])
            results[key] = row
            print(json.dumps({"variant": key, **{k: v for k, v in row.items() if k != "ops"}}), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--precision", choices=("fp16", "fp32", "both"), default="both",
                    help="which of the bundle's decoders (fp16: the GPU path)")
    add_timing_arguments(ap)
    args = ap.parse_args(argv)

    from flexavatar.bundle import Bundle

    bundle = Bundle.open(args.bundle, verify="size")
    precisions = ("fp16", "fp32") if args.precision == "both" else (args.precision,)
    times = run_ab(args, lambda stream, sync, tmp, results, runs: decoder_variants(
        bundle, precisions, args.device, stream, sync, tmp, results, runs),
        lambda key: f"{key.split('-', 1)[0]}-{EXPORTED}")                   # e.g. fp16-ort-fusions → fp16-exported
    return 0 if any(key.endswith(FUSED) for key in times) else 1

if __name__ == "__main__":
    raise SystemExit(main())
