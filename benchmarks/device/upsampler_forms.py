"""The decoder's StyleGAN upsampler in three exact forms, side by side on one GPU (issue #7's frame rate).

On an H200 (2026-11-27) 2.7 of a FLEX-1 fp16 frame's 4.6 GPU ms were the upsampler's convolutions, run by
cuDNN kernels without tensor cores (``implicit_convolve_sgemm``, ``dgrad_engine``). The forms compute the same
function (SPEC §10) with different kernels:

- ``transposed``: the graph bundles hold. Per block: ConvTranspose 3×3 stride 2 → 4×4 FIR low-pass (a
  depthwise Conv) → 3×3 Conv → 1×1 Conv (toRGB).
- ``subpixel`` (``flexavatar-export --gpu-conv-form subpixel``): ``export.graph_passes.subpixel_upsampling``: ConvTranspose and FIR fused into
  one 3×3 Conv with 4× the output channels, then DepthToSpace. No transposed or depthwise convolution left;
  conv0 does 4× the multiply-adds (≈ 51 more GFLOP a frame).
- ``gemm`` (``--gpu-conv-form gemm``): ``subpixel``, then ``graph_passes.convs_as_gemm``: every convolution as im2col (Pad, Gather) +
  MatMul, which cuBLAS runs on tensor cores whatever cuDNN's search picks.

On the 2-core build CPU ONNX Runtime ran them in 330 / 532 / 936 ms (fp32): the forms are for GPUs only.

Each form is exported at FLEX-1 size (768@32² → 48@128², random baked weights), checked against the model's
own float64 forward, converted to fp16 as the exporter does, and timed on ONNX Runtime's CUDA provider with
CUDA graphs and IO binding, cuDNN search HEURISTIC and EXHAUSTIVE, the variants alternating in rounds.
``--bundle`` also times the bundle's own decoders (the whole per-frame graph) in the three forms, as the runtime
runs them, and compares their Gaussians. One JSON line per variant.

    python benchmarks/device/upsampler_forms.py [--bundle BUNDLE] [--frames 50 --rounds 5] [--json OUT.json]
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

from flexavatar.export.graph_passes import GPU_CONV_FORMS, apply_gpu_conv_form
from flexavatar.upsampler import StyleGANUpsampler

SEARCHES = ("HEURISTIC", "EXHAUSTIVE")
FORMS = tuple(GPU_CONV_FORMS)


def to_form(model, form: str):
    """A copy of ``model`` (an exported graph, fp32 or fp16) in ``form``, and how many nodes each pass rewrote."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out, apply_gpu_conv_form(out, form)


def flex1_upsampler(seed: int = 0, d_in: int = 768, res_in: int = 32, channel_base: int = 32768,
                    channel_max: int = 512) -> StyleGANUpsampler:
    """FLEX-1's upsampler (SPEC §10) with random weights as ``flexavatar.model``'s random init draws them."""
    upsampler = StyleGANUpsampler(d_in, res_in, 2, channel_base, channel_max, 512)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in upsampler.named_parameters():
            if name.endswith("affine.bias"):
                p.copy_(1 + 0.25 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen))
    return upsampler.eval()


def export_upsampler(upsampler: StyleGANUpsampler, x: torch.Tensor, opset: int):
    """The upsampler as the exporter writes graphs (folded, ``graph_passes.slim`` applied), fp32, input ``x``,
    output ``y``."""
    from flexavatar.bundle import TensorSpec
    from flexavatar.export.graphs import GraphSpec
    from flexavatar.export.onnx_tools import export_graph

    with torch.no_grad():
        y_shape = tuple(upsampler(x).shape)
    spec = GraphSpec("upsampler", (TensorSpec("x", tuple(x.shape), "float32"),), (TensorSpec("y", y_shape, "float32"),))
    return export_graph(upsampler, (x,), spec, opset)


def _upsampler_variants(args, device: str, stream, sync, tmp: Path, results: dict, runs: dict) -> None:
    import onnx

    from flexavatar.export.exporter import DEFAULT_OPSET
    from flexavatar.export.onnx_tools import to_fp16

    sizes = dict(d_in=64, res_in=8, channel_base=512, channel_max=32) if args.small else {}
    upsampler = flex1_upsampler(**sizes)
    res = sizes.get("res_in", 32)
    x = torch.randn(1, upsampler.blocks[0].conv0.weight.shape[1], res, res, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = upsampler.double()(x.double()).float().to(device)
    upsampler.float()
    scale = float(reference.abs().max())
    x_device = x.to(device)
    exported = export_upsampler(upsampler, x, DEFAULT_OPSET)
    for form in FORMS:
        fp32, rewritten = to_form(exported, form)
        for precision, graph in (("fp32", fp32), ("fp16", to_fp16(fp32))):
            path = tmp / f"upsampler.{form}.{precision}.onnx"
            onnx.save_model(graph, str(path))
            for search in SEARCHES if stream is not None else (None,):
                key = f"upsampler-{form}-{precision}" + (f"-{search.lower()}" if search else "")
                y = torch.empty_like(reference)
                row = {"form": form, "precision": precision, "search": search, "rewritten": rewritten,
                       "nodes": len(graph.graph.node),
                       "ops": dict(collections.Counter(n.op_type for n in graph.graph.node).most_common())}
                if not start_variant(key, lambda: OrtRunner(path, precision, search, {"x": x_device}, {"y": y}, stream),
                              sync, results, runs, row):
                    continue
                error = float((y - reference).abs().max())
                results[key] = {**row, "max_abs_error": error, "relative_error": error / scale}
                print(json.dumps({"variant": key, **results[key]}), flush=True)


def _bundle_variants(bundle_dir: str, device: str, stream, sync, tmp: Path, results: dict, runs: dict) -> None:
    """The bundle's decoders in every form (as exported, then rewritten by the forms' passes), with the runtime's
    CUDA settings; each form's Gaussians against the exported graph's."""
    import onnx

    from flexavatar.bundle import Bundle

    bundle = Bundle.open(bundle_dir, verify="size")
    conv = bundle.manifest.conventions
    gen = torch.Generator().manual_seed(0)
    inputs = {"code": 0.5 * torch.randn((1, conv.n_head_tokens, conv.d_code), generator=gen).to(device),
              "expressions": 0.3 * torch.randn((1, conv.expression_dim), generator=gen).to(device)}
    for artifact in bundle.manifest.artifacts:
        if artifact.role != "decoder" or artifact.format != "onnx":
            continue
        exported = onnx.load(str(bundle.path(artifact)))
        outputs = {}
        for form in FORMS:
            graph, rewritten = to_form(exported, form)
            path = tmp / f"decoder.{form}.{artifact.precision}.onnx"
            onnx.save_model(graph, str(path))
            key = f"decoder-{form}-{artifact.precision}"
            outputs[form] = {o.name: torch.empty(tuple(1 if isinstance(d, str) else d for d in o.shape),
                                                 dtype=torch.float32, device=device) for o in artifact.outputs}
            row = {"form": form, "precision": artifact.precision, "rewritten": rewritten, "nodes": len(graph.graph.node)}
            if not start_variant(key, lambda: OrtRunner(path, artifact.precision, None, inputs, outputs[form], stream),
                          sync, results, runs, row):
                continue
            diff = (max(float((outputs[form][k] - outputs["transposed"][k]).abs().max()) for k in outputs[form])
                    if f"decoder-transposed-{artifact.precision}" in runs else None)
            results[key] = {**row, "max_abs_diff_vs_exported": diff}
            print(json.dumps({"variant": key, **results[key]}), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", help="also A/B this bundle's decoders with and without the subpixel pass")
    ap.add_argument("--small", action="store_true", help="upsampler 64@8² → 4@32² instead of FLEX-1's 768@32² → 48@128²")
    add_timing_arguments(ap)
    args = ap.parse_args(argv)

    def add_variants(stream, sync, tmp, results, runs):
        _upsampler_variants(args, args.device, stream, sync, tmp, results, runs)
        if args.bundle:
            _bundle_variants(args.bundle, args.device, stream, sync, tmp, results, runs)

    def baseline_of(key: str) -> str:
        kind, _, setting = key.split("-", 2)               # e.g. upsampler, subpixel, fp16-heuristic
        return f"{kind}-transposed-{setting}"

    run_ab(args, add_variants, baseline_of)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
