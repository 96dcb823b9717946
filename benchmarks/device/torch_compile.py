"""The PyTorch decoder under torch.compile against the bundle's ONNX Runtime decoder, side by side on one device.

Issue #7 asks for 500 fps one frame at a time. ONNX Runtime's fp16 decoder with CUDA graphs is 2.1–2.2 ms of an
H200 frame's 2.33 GPU ms, in 466 kernels of about 5 µs each: launches, not arithmetic. Inductor fuses the
normalisations, bias adds, residual adds and activations into fewer kernels, and its "reduce-overhead" mode
replays CUDA graphs. Variants, each decoding one expression of FLEX-1 with random weights:

- ``eager-fp32``: ``FlexAvatarModel.network.decode``, the reference for every error below;
- ``eager-fp16``: the same under ``torch.autocast(float16)`` (PyTorch's per-op precision policy);
- ``compiled-fp32`` / ``compiled-fp16``: ``torch.compile(mode=--mode)`` of those two, weights frozen with
  Inductor (``CompiledNetworkDecode``, the engine's), the upsampler's FIR as multiply-adds that Inductor fuses;
- ``compiled-fp16-fir-conv``: the same with the FIR as cuDNN's depthwise convolution (eager's form; the engine's
  until 2026-11-28, when it took 0.54 of 2.08 GPU ms a frame on an H200);
- ``ort-fp16`` / ``ort-fp32`` (with ``--bundle``): the bundle's decoders as ``Runtime`` runs them (ONNX Runtime
  CUDA, CUDA graphs).

Per variant: the first call's time (compilation or capture), ms per call (median over ``--rounds`` rounds of
``--calls`` calls, synchronised at each round's end), and per output the max |error| against ``eager-fp32``
relative to that output's max |value|. A variant that fails is recorded with its error; the others still run.

    python benchmarks/device/torch_compile.py [--checkpoint C] [--template OBJ] [--config JSON] [--bundle B]
        [--device cuda|cpu] [--mode reduce-overhead] [--backend inductor] [--calls 50] [--rounds 5]
        [--variants eager-fp16,compiled-fp16,...] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CHECKPOINT = REPO / "benchmarks" / ".cache" / "flex1-random-seed0.safetensors"   # bench conftest's weights
OUTPUTS = ("positions", "rotations", "scales", "opacities", "colors")


def load_model(checkpoint: Path, template: Path | None, config: Path | None, device: str):
    """The model from_checkpoint loads (config default FLEX-1); the template defaults to the fixtures' OBJ."""
    from flexavatar.dev_fixtures import fixtures_dir
    from flexavatar.model import FlexAvatarModel

    obj = template or fixtures_dir() / "official_flex" / "gghead_template.obj"
    return FlexAvatarModel.from_checkpoint(checkpoint, template=obj, config=config).to(device).eval()


def torch_variants(model, mode: str, backend: str, device: str) -> dict:
    """name → decode(tokens [R², 1, D], expressions [1, E, 135], ids [1]) → outputs dict. The functions are the
    runtime's own (``network_decode_function``, and ``CompiledNetworkDecode``: what the "torch-compile" engine runs,
    weights frozen with Inductor), outputs float32."""
    from flexavatar.runtime.engines import NETWORK_OUTPUTS, CompiledNetworkDecode, network_decode_function

    device_type = "cuda" if device.startswith("cuda") else "cpu"

    def named(fn):
        def decode(tokens, expressions, ids):
            return dict(zip(OUTPUTS, fn(tokens, expressions, ids), strict=True))
        return decode

    assert OUTPUTS == NETWORK_OUTPUTS
    variants = {}
    for half, suffix in ((False, "fp32"), (True, "fp16")):
        variants[f"eager-{suffix}"] = named(network_decode_function(model.network, device_type, half,
                                                                    fir_as_taps=False))     # the model's own form
    for half, suffix in ((False, "fp32"), (True, "fp16")):
        variants[f"compiled-{suffix}"] = named(CompiledNetworkDecode(model.network, device_type, half, mode=mode,
                                                                     backend=backend))
    variants["compiled-fp16-fir-conv"] = named(CompiledNetworkDecode(model.network, device_type, True, mode=mode,
                                                                     backend=backend, fir_as_taps=False))
    return variants


def ort_variants(bundle: Path, device: str) -> dict:
    """The bundle's decoders as the runtime runs them (ONNX Runtime, CUDA graphs on CUDA)."""
    from flexavatar.bundle import GAUSSIAN_OUTPUTS
    from flexavatar.runtime import Runtime

    variants = {}
    for precision in ("fp16", "fp32"):
        try:
            rt = Runtime(bundle, backend="onnxruntime", device=device, rasterizer="cpu" if device == "cpu" else "cuda",
                         precision=precision, verify="size")
        except Exception as e:  # noqa: BLE001 - a bundle without fp16 files, or no CUDA provider: recorded
            variants[f"ort-{precision}"] = e
            continue
        decoder, host = rt.decoder, device == "cpu"          # the CPU provider's model takes numpy

        def decode(tokens, expressions, ids, decoder=decoder, host=host):
            feeds = {"code": tokens.transpose(0, 1), "expressions": expressions[0]}     # [1, R², D], [E, 135]
            out = decoder.run({k: v.numpy() if host else v for k, v in feeds.items()})
            return {name: torch.as_tensor(out[key]) for name, key in zip(OUTPUTS, GAUSSIAN_OUTPUTS, strict=True)}
        variants[f"ort-{precision}"] = decode
    return variants


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def relative_errors(got: dict, want: dict) -> dict:
    errors = {}
    for name in OUTPUTS:
        g = torch.as_tensor(got[name]).detach().float().cpu().reshape(want[name].shape)
        w = want[name]
        errors[name] = float((g - w).abs().max() / w.abs().max().clamp_min(1e-12))
    return errors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    ap.add_argument("--template", type=Path, help="gghead_template.obj (default: the fixtures')")
    ap.add_argument("--config", type=Path, help="official model config.json (default: FLEX-1)")
    ap.add_argument("--bundle", type=Path, help="also time this bundle's ONNX Runtime decoders")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--mode", default="reduce-overhead", help="torch.compile mode (inductor)")
    ap.add_argument("--backend", default="inductor", help="torch.compile backend (aot_eager: plumbing only)")
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--variants", help="comma list of the variants to run (default: all); eager-fp32 always runs")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device (torch.cuda.is_available() is False); --device cpu for a smoke run")
    if not args.checkpoint.is_file():
        raise SystemExit(f"no checkpoint at {args.checkpoint} (the benchmarks' flex1_model fixture writes it)")

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    model = load_model(args.checkpoint, args.template, args.config, args.device)
    cfg = model.config
    gen = torch.Generator().manual_seed(0)
    tokens = (0.5 * torch.randn(cfg.n_head_tokens, 1, cfg.d_hidden, generator=gen)).to(args.device)
    from flexavatar.runtime import synthetic_expressions
    expressions = torch.as_tensor(synthetic_expressions(args.calls)[:, None]).to(args.device)   # [calls, 1, 135]
    ids = torch.ones(1, dtype=torch.long, device=args.device)

    variants = torch_variants(model, args.mode, args.backend, args.device)
    if args.bundle:
        variants.update(ort_variants(args.bundle, args.device))
    if args.variants:
        wanted = {"eager-fp32", *args.variants.split(",")}
        if wanted - set(variants):
            raise SystemExit(f"--variants: unknown {sorted(wanted - set(variants))}, expected some of {list(variants)}")
        variants = {name: v for name, v in variants.items() if name in wanted}
    with torch.no_grad():
        reference = {k: v.float().cpu() for k, v in variants["eager-fp32"](tokens, expressions[:1], ids).items()}
    header = {"device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
              "torch": torch.__version__, "mode": args.mode, "backend": args.backend, "calls": args.calls,
              "rounds": args.rounds, "n_gaussians": int(reference["positions"].shape[1])}
    print(json.dumps(header), flush=True)
    records = []
    for name, decode in variants.items():
        record = {"variant": name}
        try:
            if isinstance(decode, BaseException):
                raise decode
            with torch.no_grad():
                sync()
                t0 = time.perf_counter()
                out = decode(tokens, expressions[:1], ids)
                out = {k: v.float().cpu() for k, v in out.items()}     # a copy: CUDA-graph outputs are reused
                sync()
                record["first_call_s"] = round(time.perf_counter() - t0, 2)
                for _ in range(3):                                     # warm-up: later graph recordings, autotune
                    decode(tokens, expressions[1 % args.calls:1 % args.calls + 1], ids)
                rounds_ms = []
                for _ in range(args.rounds):
                    sync()
                    t0 = time.perf_counter()
                    for i in range(args.calls):
                        decode(tokens, expressions[i:i + 1], ids)
                    sync()
                    rounds_ms.append((time.perf_counter() - t0) * 1e3 / args.calls)
            record["ms_per_call"] = round(statistics.median(rounds_ms), 4)
            record["relative_error"] = {k: float(f"{v:.3g}") for k, v in relative_errors(out, reference).items()}
        except Exception as e:  # noqa: BLE001 - one failing variant (a compile error, a refused graph) is recorded
            record["error"] = first_line(e)
        records.append(record)
        print(json.dumps(record), flush=True)
    base = next((r["ms_per_call"] for r in records if r["variant"] == "eager-fp32" and "ms_per_call" in r), None)
    for r in records:
        if base and "ms_per_call" in r:
            r["speedup_vs_eager_fp32"] = round(base / r["ms_per_call"], 2)
    print(json.dumps({r["variant"]: r.get("speedup_vs_eager_fp32", r.get("error")) for r in records}), flush=True)
    if args.json:
        args.json.write_text(json.dumps({**header, "variants": records}, indent=1))
    return 0 if any("ms_per_call" in r for r in records if r["variant"] != "eager-fp32") else 1


if __name__ == "__main__":
    sys.exit(main())
