"""`flexavatar-demo`: the whole pipeline on an embedded default — no downloads, no official data.

A SMALL RANDOM-WEIGHT model (not a trained avatar model: the output is a random 'head' of Gaussians), a
synthetic template, a synthetic portrait and a synthetic talking sequence. It runs the same library
functions as the two commands an app would use with the real checkpoint:

  1. export   (``flexavatar-export``):  random checkpoint → checked bundle (ONNX + OpenVINO + int8 decoders,
                                         manifest);
  2. render   (``flexavatar-render``):  bundle + portrait + expression sequence, orbiting camera → clip;

then times the whole frame (decode + rasterize + pixels) on every inference engine available here, and on the int8
decoders (ONNX Runtime's CPU provider).
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np


def synthetic_portrait(size: int) -> np.ndarray:
    """A matted 'portrait' on white: skin-coloured ellipse with darker hair cap.  → [3, S, S] in [0, 1]"""
    y, x = np.mgrid[0:size, 0:size] / size - 0.5
    img = np.ones((3, size, size), np.float32)
    face = (x / 0.28) ** 2 + (y / 0.38) ** 2 < 1
    hair = face & (y < -0.18)
    img[:, face] = np.array([0.87, 0.68, 0.56], np.float32)[:, None]
    img[:, hair] = np.array([0.25, 0.16, 0.10], np.float32)[:, None]
    return img


def synthetic_expressions(n: int):
    """A talking-like sequence: neutral code + sinusoids on the first expression coefficients and the jaw."""
    import torch

    from .expression import JAW, neutral_expression
    codes = neutral_expression(n)
    t = torch.arange(n, dtype=torch.float32)
    for k in range(10):
        codes[:, k] = 1.5 * torch.sin(0.4 * t * (1 + 0.1 * k) + k)
    codes[:, JAW.start + 4] += 0.2 * torch.sin(0.5 * t)     # jaw opening enters through the 6D rows
    return codes


WIDE_FOCAL = 900 / 512      # normalised fx: wider than the official 1500 px — random offsets spread the Gaussians


def _save_portrait(path: Path, size: int) -> Path:
    from PIL import Image
    Image.fromarray((synthetic_portrait(size).transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)).save(path)
    return path


def _contact_sheet(frames: np.ndarray, path: Path, cols: int = 4) -> None:
    from PIL import Image
    n, h, w, _ = frames.shape
    rows = math.ceil(n / cols)
    sheet = np.full((rows * h, cols * w, 3), 255, np.uint8)
    for i, f in enumerate(frames):
        r, c = divmod(i, cols)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = f
    Image.fromarray(sheet).save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flexavatar-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, default=Path("flexavatar_demo"),
                        help="folder for the checkpoint, bundle, portrait, clip and contact sheet")
    parser.add_argument("--frames", type=int, default=24, help="frames of the synthetic expression sequence")
    parser.add_argument("--size", type=int, default=256, help="render resolution (even)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from .config import small_config
    from .dinov2 import DinoV2Config
    from .model import FlexAvatarModel
    from .template import Template
    try:
        from .export import export_bundle
        from .export.testing import random_dinov2
        from .runtime import Camera, Runtime, StageTimes, available_engines, orbit_camera
        from .runtime.cli import render_to_file
        from .runtime.expressions import synthetic_expressions as numpy_expressions
    except ImportError as e:
        print(f"flexavatar-demo needs the export and runtime extras ({e}): "
              "pip install torch==2.13.0 '.[export,runtime]'")
        return 2

    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    print("flexavatar demo — SMALL RANDOM-WEIGHT MODEL (not trained: it shows the pipeline, not a likeness)\n")
    cfg = small_config()
    template = Template.synthetic(cfg.res_head_tokens, cfg.res_gaussian_grid)
    model = FlexAvatarModel.random(cfg, template, seed=args.seed,
                                   dinov2=random_dinov2(DinoV2Config(dim=cfg.feature_dim, depth=2, n_heads=2),
                                                        seed=args.seed))
    checkpoint = out / "random_small_checkpoint.safetensors"
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.official_state_dict().items()}, str(checkpoint))
    print(f"model: {sum(p.numel() for p in model.network.parameters()) / 1e6:.2f} M parameters (random), "
          f"{template.n_gaussians} Gaussians, synthetic template; checkpoint {checkpoint}")

    # 1. export — what `flexavatar-export CKPT -o BUNDLE --template ... --dinov2 ...` does
    print("\n== 1. export (flexavatar-export) ==")
    bundle = out / "bundle"
    result = export_bundle(checkpoint, bundle, template=template, dinov2=model.dinov2, config=cfg,
                           precisions=("fp32", "int8"), force=True, progress=lambda msg: None)
    print(result.summary)

    # 2. render — what `flexavatar-render BUNDLE --avatar PHOTO --expressions SEQ --camera-orbit -o CLIP` does
    print("\n== 2. render (flexavatar-render) ==")
    portrait = _save_portrait(out / "portrait.png", cfg.image_size)
    expressions = numpy_expressions(args.frames)
    np.save(out / "expressions.npy", expressions)
    k = np.array([[WIDE_FOCAL, 0, 0.5], [0, WIDE_FOCAL, 0.5], [0, 0, 1]], np.float32)
    camera = orbit_camera(args.frames, intrinsics=k)
    rt = Runtime(bundle)                                       # backend, device, rasterizer: auto
    timings = StageTimes()
    t0 = time.perf_counter()
    avatar = rt.create_avatar(portrait)
    timings.add_once("encode", (time.perf_counter() - t0) * 1e3)
    avatar.save(out / "avatar.npy")
    clip = out / ("flexavatar_demo.mp4" if _has_ffmpeg() else "flexavatar_demo.gif")
    report = render_to_file(rt, avatar, expressions, clip, size=args.size, camera=camera, fps=12, timings=timings)
    print(report.summary())
    frames = rt.render(avatar, expressions[:8], Camera(camera.cam2world[:8], camera.intrinsics), args.size, args.size)
    _contact_sheet(frames, out / "flexavatar_demo.png")
    print(f"contact sheet {out / 'flexavatar_demo.png'}")

    # 3. whole frame on every engine here (same bundle, avatar, sequence)
    print("\n== 3. whole frame (decode + rasterize + pixels), per engine, this machine ==")
    print(f"{'engine + rasterizer':<34} {'p50 ms':>8} {'p95 ms':>8} {'fps':>7}  |Δ| vs the first, mean / max"
          "   flexavatar-verify (worst PSNR vs PyTorch)")
    first = None
    here = available_engines("cpu")
    # every engine on the fp32 files, then the int8 decoders (lossy, for CPUs: ONNX Runtime's CPU provider)
    runs = [(e, "fp32") for e in ("onnxruntime", "openvino", "torch") if e in here]
    runs += [("onnxruntime", "int8")] if "onnxruntime" in here else []
    for engine, precision in runs:
        other = Runtime(bundle, backend=engine, device="cpu", verify="none", precision=precision,
                        model=model if engine == "torch" else None)
        times = StageTimes()
        frames = other.render(avatar, expressions, camera, args.size, args.size, timings=times)
        whole = times.whole_frame()
        first = frames if first is None else first
        delta = np.abs(frames.astype(int) - first.astype(int))
        check = other.check_numerics()
        worst = min(c.psnr_db for c in check.checks)
        label = f"{engine}{' int8' if precision == 'int8' else ''} + {other.rasterizer}"
        print(f"{label:<34} {np.percentile(whole, 50):>8.2f} "
              f"{np.percentile(whole, 95):>8.2f} {1e3 / whole.mean():>7.1f}  "
              f"{delta.mean():.3f} / {delta.max()} (of 255)         "
              f"{'identical' if worst == float('inf') else f'{worst:.1f} dB'} {'ok' if check.passed else 'FAILED'}")

    print(f"""
Random weights: the clip shows a random cloud of Gaussians, not a face. With the real checkpoint the same
two commands give the real avatar (files you supply; nothing is downloaded):

  flexavatar-export ckpt-900k.pt --template gghead_template.obj --dinov2 dinov2_vitb14_reg4_pretrain.pth -o bundle
  flexavatar-render bundle --avatar me.png --expressions EMO-1-shout+laugh.npz --camera-orbit -o clip.mp4

Check a bundle's numbers on the machine that runs it (any engine, device, precision): flexavatar-verify {bundle}

The same with this demo's files: flexavatar-render {bundle} --avatar {out / 'avatar.npy'} \\
  --expressions {out / 'expressions.npy'} --size {args.size} --camera-orbit --focal {WIDE_FOCAL:.4g} \\
  -o {out / 'clip.gif'}""")
    return 0


def _has_ffmpeg() -> bool:
    import importlib.util
    return importlib.util.find_spec("imageio_ffmpeg") is not None


if __name__ == "__main__":
    raise SystemExit(main())
