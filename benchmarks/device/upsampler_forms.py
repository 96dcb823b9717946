"""The decoder's StyleGAN upsampler in three exact forms, side by side on one GPU (issue #7's frame rate).

On an H200 (2026-11-27) 2.7 of a FLEX-1 fp16 frame's 4.6 GPU ms were the upsampler's convolutions, run by
cuDNN kernels without tensor cores (``implicit_convolve_sgemm``, ``dgrad_engine``). The forms compute the same
function (SPEC §10) with different kernels:

- ``transposed``: the model's own graph. Per block: ConvTranspose 3×3 stride 2 → 4×4 FIR low-pass (a depthwise
  Conv) → 3×3 Conv → 1×1 Conv (toRGB).
- ``subpixel``: ConvTranspose and FIR fused into one 3×3 Conv with 4× the output channels, then DepthToSpace
  (each output parity of a stride-2 transposed conv followed by a 4-tap filter reads a 3×3 input window). No
  transposed or depthwise convolution left; conv0 does 4× the multiply-adds (≈ 51 more GFLOP a frame).
- ``gemm``: ``subpixel`` with every convolution written as im2col (Pad, Gather) + MatMul: cuBLAS GEMMs on
  tensor cores, whatever cuDNN's search picks.

On this file's CPU (2 cores) ONNX Runtime ran them in 282 / 514 / 934 ms: the forms are for GPUs only.

Each form is exported at FLEX-1 size (768@32² → 48@128², random baked weights), checked against the model's
own float64 forward, converted to fp16 as the exporter does, and timed on ONNX Runtime's CUDA provider with
CUDA graphs and IO binding, cuDNN search HEURISTIC and EXHAUSTIVE, the variants alternating in rounds; PyTorch
eager runs each form too. Prints one JSON line per variant.

    python benchmarks/device/upsampler_forms.py [--frames 50 --rounds 5] [--json OUT.json]
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from flexavatar.upsampler import CONV_CLAMP, LRELU_GAIN, ModulatedConv, StyleGANUpsampler

FORMS = ("transposed", "subpixel", "gemm")
SEARCHES = ("HEURISTIC", "EXHAUSTIVE")


def subpixel_weight(conv: ModulatedConv) -> torch.Tensor:
    """conv0's ConvTranspose(3×3, stride 2) + pad-1 4×4 FIR as one 3×3 pad-1 Conv before PixelShuffle(2):
    [4·out, in, 3, 3], channel 4·o + 2·a + b = output parity (a, b) of channel o.

    1-D: t[j] = Σ_i x[i]·w[j − 2i] (transposed conv), y[n] = Σ_m f[m]·t[n + m − 1] (FIR), so y[n] = Σ_i x[i]·K[n − 2i]
    with K[d] = Σ_m f[m]·w[d + m − 1], d ∈ [−2, 3]. For n = 2p + a the taps i = p + u − 1 (u = 0, 1, 2) carry
    K[2(1 − u) + a]: a 3×3 window per parity. In 2-D K is the full correlation of w with the 4×4 filter."""
    w = conv.baked_weight() * LRELU_GAIN                               # [O, C, 3, 3]
    fir = conv.resample_filter.to(w.dtype) * 4                         # [4, 4], up² gain
    o, c = w.shape[:2]
    k = w.new_zeros(o, c, 6, 6)                                        # K at index d + 2 = k − m + 3
    for my in range(4):
        for mx in range(4):
            k[:, :, 3 - my:6 - my, 3 - mx:6 - mx] += fir[my, mx] * w
    taps = [[4 - 2 * u + a for u in range(3)] for a in range(2)]       # K index of tap u for parity a
    sub = torch.stack([torch.stack([k[:, :, taps[a]][:, :, :, taps[b]] for b in range(2)], 1) for a in range(2)], 1)
    return sub.reshape(4 * o, c, 3, 3)                                 # [O, 2, 2, C, 3, 3] → [4·O, C, 3, 3]


def conv_as_gemm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Conv2d (stride 1, 'same' padding, odd square kernel) as im2col by Gather + one MatMul.
    x: [N, C, H, W], weight: [O, C, k, k] → [N, O, H, W]"""
    n, c, h, w = x.shape
    o, k = weight.shape[0], weight.shape[-1]
    p = k // 2
    padded = F.pad(x, (p, p, p, p)).reshape(n, c, (h + 2 * p) * (w + 2 * p))
    ky, kx = torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij")
    py, px = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    index = ((py + ky.reshape(-1, 1, 1)) * (w + 2 * p) + px + kx.reshape(-1, 1, 1)).reshape(-1)  # [k²·H·W]
    columns = padded.index_select(2, index.to(x.device)).reshape(n, c * k * k, h * w)      # (c, ky, kx) rows
    return (weight.reshape(o, c * k * k) @ columns).reshape(n, o, h, w)


def _activation(y: torch.Tensor, conv: ModulatedConv) -> torch.Tensor:
    y = F.leaky_relu(y + (conv.bias * LRELU_GAIN)[None, :, None, None], 0.2)
    return y.clamp(-CONV_CLAMP, CONV_CLAMP)


class UpsamplerForm(torch.nn.Module):
    """``upsampler`` computed in one of FORMS. The other forms bake their weights once (the model's own form
    bakes them in every call, as the PyTorch eager pipeline runs it; exported graphs fold them either way)."""

    def __init__(self, upsampler: StyleGANUpsampler, form: str):
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"unknown form {form!r}: expected one of {FORMS}")
        self.upsampler, self.form = upsampler, form
        with torch.no_grad():
            self.weights = [(subpixel_weight(b.conv0), b.conv1.baked_weight() * LRELU_GAIN, b.torgb.baked_weight())
                            for b in upsampler.blocks]

    def forward(self, x: torch.Tensor) -> torch.Tensor:                # [N, D, R, R] → [N, D/4^k, R·2^k, R·2^k]
        if self.form == "transposed":
            return self.upsampler(x)
        conv = (lambda t, w: F.conv2d(t, w, padding=w.shape[-1] // 2)) if self.form == "subpixel" else conv_as_gemm
        img = x
        for block, (up, mid, torgb) in zip(self.upsampler.blocks, self.weights):
            x = _activation(F.pixel_shuffle(conv(x, up), 2), block.conv0)
            x = _activation(conv(x, mid), block.conv1)
            rgb = (conv(x, torgb) + block.torgb.bias[None, :, None, None]).clamp(-CONV_CLAMP, CONV_CLAMP)
            img = F.pixel_shuffle(img, 2) + rgb
        return img


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


def export_form(upsampler: StyleGANUpsampler, form: str, x: torch.Tensor, opset: int):
    """The form as the exporter writes graphs (folded, ``graph_passes`` applied), fp32, input ``x``, output ``y``."""
    from flexavatar.bundle import TensorSpec
    from flexavatar.export.graphs import GraphSpec
    from flexavatar.export.onnx_tools import export_graph

    with torch.no_grad():
        y_shape = tuple(UpsamplerForm(upsampler, "transposed")(x).shape)
    spec = GraphSpec(f"upsampler-{form}", (TensorSpec("x", tuple(x.shape), "float32"),),
                     (TensorSpec("y", y_shape, "float32"),))
    return export_graph(UpsamplerForm(upsampler, form), (x,), spec, opset)


def _time_rounds(runs: dict, frames: int, rounds: int, sync) -> dict[str, float]:
    """median ms per call of each variant, the variants alternating within each round"""
    times: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(rounds):
        for key, run in runs.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(frames):
                run()
            sync()
            times[key].append((time.perf_counter() - t0) / frames * 1e3)
    return {key: round(statistics.median(t), 4) for key, t in times.items()}


class _OrtVariant:
    """One exported form on ONNX Runtime: CUDA provider with CUDA graphs and IO binding into ``y`` (as the
    runtime runs decoders), or the CPU provider (the smoke test of this script)."""

    def __init__(self, path: Path, precision: str, search: str, x: torch.Tensor, y: torch.Tensor, stream):
        import numpy as np
        import onnxruntime as ort

        import flexavatar.runtime.gpu as gpu
        from flexavatar.runtime.engines import EngineOptions, ort_session_options

        options = ort_session_options(EngineOptions(precision=precision))
        self.x, self.y, self.stream = x, y, stream
        if stream is None:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self.feeds = {"x": x.numpy()}
            return
        provider = gpu.cuda_provider_options(0, stream.cuda_stream, True, precision)
        provider["cudnn_conv_algo_search"] = search
        self.session = ort.InferenceSession(str(path), options, providers=[("CUDAExecutionProvider", provider)])
        self.binding = self.session.io_binding()
        self.binding.bind_input("x", "cuda", 0, np.float32, tuple(x.shape), x.data_ptr())
        self.binding.bind_output("y", "cuda", 0, np.float32, tuple(y.shape), y.data_ptr())
        self.run_options = gpu.cuda_run_options()

    def __call__(self) -> None:
        if self.stream is None:
            self.y.copy_(torch.from_numpy(self.session.run(None, self.feeds)[0]))
            return
        with torch.cuda.stream(self.stream):
            self.session.run_with_iobinding(self.binding, self.run_options)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cpu: ONNX Runtime's CPU provider and eager fp32 only (this script's smoke test)")
    ap.add_argument("--small", action="store_true", help="64@8² → 4@32² instead of FLEX-1's 768@32² → 48@128²")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    import onnx
    import onnxruntime as ort

    from flexavatar.export.exporter import DEFAULT_OPSET
    from flexavatar.export.onnx_tools import to_fp16

    cuda = args.device == "cuda"
    if cuda and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False     # fp32 means fp32
    sizes = dict(d_in=64, res_in=8, channel_base=512, channel_max=32) if args.small else {}
    upsampler = flex1_upsampler(**sizes)
    x = torch.randn(1, upsampler.blocks[0].conv0.weight.shape[1], sizes.get("res_in", 32), sizes.get("res_in", 32),
                    generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = upsampler.double()(x.double()).float().to(args.device)
    upsampler.float()
    scale = float(reference.abs().max())
    stream = torch.cuda.Stream() if cuda else None
    sync = stream.synchronize if cuda else (lambda: None)
    x_device = x.to(args.device)

    results: dict[str, dict] = {}
    runs = {}

    def record(key: str, y: torch.Tensor, **row) -> None:
        error = float((y - reference).abs().max())
        results[key] = {**row, "max_abs_error": error, "relative_error": error / scale}
        print(json.dumps({"variant": key, **results[key]}), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        for form in FORMS:
            fp32 = export_form(upsampler, form, x, DEFAULT_OPSET)
            for precision, graph in (("fp32", fp32), ("fp16", to_fp16(fp32))):
                path = Path(tmp) / f"{form}.{precision}.onnx"
                onnx.save_model(graph, str(path))
                ops = dict(collections.Counter(n.op_type for n in graph.graph.node).most_common())
                for search in SEARCHES if cuda else ("none",):
                    key = f"ort-{form}-{precision}-{search.lower()}"
                    y = torch.empty_like(reference)
                    runs[key] = _OrtVariant(path, precision, search, x_device, y, stream)
                    runs[key]()                  # warm-up and CUDA-graph capture
                    runs[key]()
                    sync()
                    record(key, y, form=form, precision=precision, engine="onnxruntime", search=search,
                           nodes=len(graph.graph.node), ops=ops)
        for form in FORMS:
            for precision, dtype in (("fp32", torch.float32), ("fp16", torch.float16))[:2 if cuda else 1]:
                module = UpsamplerForm(flex1_upsampler(**sizes).to(args.device, dtype), form).eval()
                xin = x_device.to(dtype)

                def run(m=module, xin=xin):
                    with torch.no_grad(), (torch.cuda.stream(stream) if cuda else contextlib.nullcontext()):
                        return m(xin)
                key = f"eager-{form}-{precision}"
                y = run().float()
                sync()
                record(key, y, form=form, precision=precision, engine="torch-eager")
                runs[key] = run
        times = _time_rounds(runs, args.frames, args.rounds, sync)
    for key, ms in times.items():
        engine, _, setting = key.split("-", 2)              # e.g. ort, subpixel, fp16-heuristic
        baseline = times[f"{engine}-transposed-{setting}"]
        results[key].update(ms_per_call=ms, speedup_vs_transposed=round(baseline / ms, 3))
        print(json.dumps({"variant": key, "ms_per_call": ms, "speedup_vs_transposed": results[key]["speedup_vs_transposed"],
                          "relative_error": round(results[key]["relative_error"], 7)}), flush=True)
    print(json.dumps({"device": torch.cuda.get_device_name(0) if cuda else "cpu", "onnxruntime": ort.__version__,
                      "torch": torch.__version__, "frames": args.frames, "rounds": args.rounds}), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
