"""`flexavatar-demo`: the whole pipeline on an embedded default — no downloads, no official data.

A SMALL RANDOM-WEIGHT model (not a trained avatar model: the output is a random 'head' of Gaussians),
a synthetic template and a synthetic input photo: encode once, decode an expression sequence, render
each frame, print per-stage latency and write a contact sheet PNG. With the real checkpoint use
`flexavatar-export` and `flexavatar-render` instead.
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


def _percentiles(times_ms: list[float]) -> str:
    a = np.asarray(times_ms)
    return f"p50 {np.percentile(a, 50):8.2f} ms   p95 {np.percentile(a, 95):8.2f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flexavatar-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", default="flexavatar_demo.png", help="contact sheet PNG to write")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=256, help="render resolution")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from . import kernels
    from .cameras import default_camera, orbit_cameras
    from .config import small_config
    from .dinov2 import DinoV2, DinoV2Config
    from .model import FlexAvatarModel
    from .template import Template

    print("flexavatar demo — SMALL RANDOM-WEIGHT MODEL (not trained; shows the pipeline, not a likeness)")
    cfg = small_config()
    t0 = time.perf_counter()
    template = Template.synthetic(cfg.res_head_tokens, cfg.res_gaussian_grid)
    torch.manual_seed(args.seed)
    dino = DinoV2(DinoV2Config(dim=cfg.feature_dim, depth=2, n_heads=2)).eval()
    model = FlexAvatarModel.random(cfg, template, seed=args.seed, dinov2=dino)
    print(f"model: {sum(p.numel() for p in model.network.parameters()) / 1e6:.2f} M parameters, "
          f"{template.n_gaussians} Gaussians, built in {time.perf_counter() - t0:.2f} s")

    image = torch.from_numpy(synthetic_portrait(cfg.image_size))[None]
    c2w, k = default_camera()
    t0 = time.perf_counter()
    code = model.encode(image, c2w[None], k[None])
    encode_ms = (time.perf_counter() - t0) * 1e3

    expressions = synthetic_expressions(args.frames)
    cams = orbit_cameras(args.frames)
    size = args.size
    focal = 900 * size / 512     # wider than the demo camera: random offsets spread the Gaussians
    K = torch.tensor([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1.0]])
    world2cam = kernels.world2cam_from_cam2world(cams)
    decode_ms, render_ms, frames, backend = [], [], [], None
    for i in range(args.frames):
        t0 = time.perf_counter()
        g = model.decode(code, expressions[i:i + 1])
        decode_ms.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        splats = kernels.Splats(g.means[0], g.quats[0], g.scales[0], g.opacities[0], g.sh0[0])
        result = kernels.rasterize(splats, kernels.Cameras(world2cam[i:i + 1], K[None]), size, size,
                                   background=[1.0, 1.0, 1.0])
        render_ms.append((time.perf_counter() - t0) * 1e3)
        backend = result.backend
        frames.append(np.asarray(result.rgb[0]))
    print(f"encode     (once)       {encode_ms:8.2f} ms")
    print(f"decode     per frame    {_percentiles(decode_ms)}")
    print(f"rasterize  per frame    {_percentiles(render_ms)}   [{backend}, {size}²]")

    cols = min(4, len(frames))
    rows = math.ceil(len(frames) / cols)
    sheet = np.ones((rows * size, cols * size, 3), np.float32)
    for i, f in enumerate(frames):
        r, c = divmod(i, cols)
        sheet[r * size:(r + 1) * size, c * size:(c + 1) * size] = f
    from PIL import Image
    out = Path(args.output)
    Image.fromarray((sheet.clip(0, 1) * 255 + 0.5).astype(np.uint8)).save(out)
    print(f"wrote {out} ({len(frames)} frames, orbiting camera)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
