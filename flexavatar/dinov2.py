"""DINOv2 ViT-B/14 with 4 registers (`dinov2_vitb14_reg`) as a plain PyTorch module (SPEC §6).

Loads the public hub weight file the user supplies (e.g. `dinov2_vitb14_reg4_pretrain.pth`); key names
follow the hub layout. Nothing is downloaded.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DinoV2Config:
    dim: int = 768
    depth: int = 12
    n_heads: int = 12
    patch_size: int = 14
    n_registers: int = 4
    trained_grid: int = 37          # position table trained at 518² = 37×37 patches
    input_size: int = 224           # FLEX-1 feeds 224² → 16×16 patch tokens
    mlp_ratio: int = 4

    @property
    def out_grid(self) -> int:
        return self.input_size // self.patch_size


class _PatchEmbed(nn.Module):
    def __init__(self, cfg: DinoV2Config):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.dim, cfg.patch_size, cfg.patch_size)


class _Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:                       # [B, T, C]
        b, t, c = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.n_heads, c // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class _Block(nn.Module):
    def __init__(self, cfg: DinoV2Config):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.attn = _Attention(cfg.dim, cfg.n_heads)
        self.ls1 = _LayerScale(cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.mlp = _Mlp(cfg.dim, cfg.dim * cfg.mlp_ratio)
        self.ls2 = _LayerScale(cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoV2(nn.Module):
    """images [N, 3, H, W] in [0, 1] → last-layer normed patch tokens [N, dim, 16, 16]."""

    def __init__(self, cfg: DinoV2Config = DinoV2Config()):
        super().__init__()
        self.cfg = cfg
        n_pos = cfg.trained_grid ** 2 + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_pos, cfg.dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, cfg.n_registers, cfg.dim))
        self.mask_token = nn.Parameter(torch.zeros(1, cfg.dim))                # unused at inference
        self.patch_embed = _PatchEmbed(cfg)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_file(cls, path: str | Path, cfg: DinoV2Config = DinoV2Config()) -> "DinoV2":
        from .checkpoint import check_state_dict, read_state_dict  # local: checkpoint imports nothing from here
        path = Path(path)
        sd = read_state_dict(path, "DINOv2 weights", "the public dinov2_vitb14_reg4_pretrain.pth (a state dict)")
        model = cls(cfg)
        check_state_dict(model, sd, what=f"DINOv2 weights {path.name}",
                         size_hint=f"expected DINOv2 ViT-B/14 with 4 registers, dinov2_vitb14_reg4_pretrain.pth "
                                   f"(dim {cfg.dim}, {cfg.depth} blocks); other DINOv2 sizes are not supported")
        model.load_state_dict(sd)
        return model.eval()

    def position_table(self, grid: int) -> torch.Tensor:
        """Bicubic (antialiased, no offset) resampling of the patch position table → [1, 1 + grid², dim]."""
        m = self.cfg.trained_grid
        if grid == m:
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        patch_pos = patch_pos.reshape(1, m, m, -1).permute(0, 3, 1, 2).float()
        patch_pos = F.interpolate(patch_pos, size=(grid, grid), mode="bicubic", antialias=True, align_corners=False)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(self.pos_embed.dtype)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [0, 1] → resized (bilinear, antialias) to 224² and ImageNet-normalised."""
        size = self.cfg.input_size
        x = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised input [N, 3, S, S] → all final-normed tokens [N, 1 + regs + S²/14², dim]."""
        n = x.shape[0]
        grid = x.shape[-1] // self.cfg.patch_size
        tokens = self.patch_embed.proj(x).flatten(2).transpose(1, 2)           # [N, grid², dim]
        tokens = torch.cat([self.cls_token.expand(n, -1, -1), tokens], dim=1) + self.position_table(grid)
        tokens = torch.cat([tokens[:, :1], self.register_tokens.expand(n, -1, -1), tokens[:, 1:]], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.forward_tokens(self.preprocess(images))
        patches = tokens[:, 1 + self.cfg.n_registers:]                          # [N, 256, dim]
        g = self.cfg.out_grid
        return patches.transpose(1, 2).reshape(images.shape[0], self.cfg.dim, g, g)
