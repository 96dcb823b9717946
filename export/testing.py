"""Random stand-ins for tests and benchmarks (no official data needed): DINOv2 weights and a photo."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from flexavatar.dinov2 import DinoV2, DinoV2Config


@torch.no_grad()
def random_dinov2(cfg: DinoV2Config = DinoV2Config(), seed: int = 0) -> DinoV2:
    """Seeded random DINOv2 (NOT the public weights): weights N(0, 1/fan_in), norm gains 1 + N(0, 0.1²),
    biases / tokens / position table N(0, 0.02²), layer scales 0.1."""
    gen = torch.Generator().manual_seed(seed)
    model = DinoV2(cfg)
    for name, p in model.named_parameters():
        if name.endswith(".gamma"):
            p.fill_(0.1)
        elif "norm" in name and name.endswith(".weight"):
            p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
        elif p.ndim >= 2 and name.endswith(".weight"):
            p.copy_(torch.randn(p.shape, generator=gen) * p[0].numel() ** -0.5)
        else:
            p.copy_(0.02 * torch.randn(p.shape, generator=gen))
    return model.eval()


def write_synthetic_photo(path: str | Path, size: int, seed: int = 0) -> Path:
    """A smooth coloured ellipse on white, RGBA PNG with a transparent corner (exercises compositing)."""
    from PIL import Image

    gen = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    rgb = np.stack([0.5 + 0.4 * np.sin(6 * xx + gen.uniform(0, 3)), 0.5 + 0.4 * np.cos(5 * yy),
                    0.6 + 0.3 * xx * yy], -1)
    inside = ((xx - 0.5) / 0.3) ** 2 + ((yy - 0.5) / 0.4) ** 2 < 1
    rgb = np.where(inside[..., None], rgb, 1.0)
    alpha = np.where((xx < 0.05) & (yy < 0.05), 0.0, 1.0)[..., None]
    rgba = (np.concatenate([rgb, alpha], -1) * 255).round().astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(path)
    return Path(path)


# The reduced official fixture (../shared/fixtures/official_flex: a small FLEX config with seeded random weights)
# with a small random DINOv2 whose 4×4 feature grid is the fixture's: the model the export and runtime tests share.
FIXTURE_DINO = DinoV2Config(dim=32, depth=2, n_heads=2, input_size=56)


def fixture_config(official_dir: str | Path):
    """The fixture's config.json as a FlexConfig (its official fields without effect on inference: not warned)."""
    import warnings

    from flexavatar.config import FlexConfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FlexConfig.from_official_json(Path(official_dir) / "config.json")


def fixture_model(official_dir: str | Path, dinov2_seed: int = 3):
    """The fixture checkpoint and template, with ``random_dinov2(FIXTURE_DINO, dinov2_seed)`` inside the encoder."""
    from flexavatar.model import FlexAvatarModel
    official_dir = Path(official_dir)
    return FlexAvatarModel.from_checkpoint(official_dir / "state_dict.safetensors",
                                           template=official_dir / "gghead_template.obj",
                                           config=fixture_config(official_dir),
                                           dinov2=random_dinov2(FIXTURE_DINO, seed=dinov2_seed))
