"""Camera conventions of FLEX-1 (SPEC §4, §11, §14).

Cameras are cam2world 4×4 in OpenCV axes (+x right, +y down, +z forward) in the canonical FLAME head
frame; model-input intrinsics are *normalised* (pixel K divided by the image size).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def plucker_rays(cam2world: torch.Tensor, intrinsics: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Plücker embedding [o × d, d] per pixel.

    cam2world: [N, 4, 4], intrinsics: [N, 3, 3] normalised  →  [N, 6, H, W]

    The pixel grid spans exactly [0, 1] (u = j / (W−1), no half-pixel offset) although the
    intrinsics are normalised by the image size: the official code does this, so we do too.
    """
    dtype, device = cam2world.dtype, cam2world.device
    u = torch.linspace(0, 1, width, dtype=dtype, device=device)              # [W]
    v = torch.linspace(0, 1, height, dtype=dtype, device=device)             # [H]
    fx, fy = intrinsics[:, 0, 0], intrinsics[:, 1, 1]                        # [N]
    cx, cy = intrinsics[:, 0, 2], intrinsics[:, 1, 2]
    x = (u[None, None, :] - cx[:, None, None]) / fx[:, None, None]           # [N, 1, W]
    y = (v[None, :, None] - cy[:, None, None]) / fy[:, None, None]           # [N, H, 1]
    x, y = torch.broadcast_tensors(x, y)                                     # [N, H, W]
    dirs_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)               # [N, H, W, 3]
    rot = cam2world[:, :3, :3]                                               # [N, 3, 3]
    dirs = torch.einsum("nij,nhwj->nhwi", rot, dirs_cam)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origin = cam2world[:, None, None, :3, 3].expand_as(dirs)                 # [N, H, W, 3]
    moment = torch.cross(origin, dirs, dim=-1)
    return torch.cat([moment, dirs], dim=-1).permute(0, 3, 1, 2)             # [N, 6, H, W]


def look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """OpenCV cam2world looking from eye to target (SPEC §11).  eye/target/up: [..., 3] → [..., 4, 4]."""
    z = F.normalize(target - eye, dim=-1)
    x = F.normalize(torch.cross(z, up.expand_as(z), dim=-1), dim=-1)
    y = -F.normalize(torch.cross(x, z, dim=-1), dim=-1)
    m = torch.zeros(*eye.shape[:-1], 4, 4, dtype=eye.dtype, device=eye.device)
    m[..., :3, 0], m[..., :3, 1], m[..., :3, 2], m[..., :3, 3] = x, y, z, eye
    m[..., 3, 3] = 1
    return m


def default_camera(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The official demo's frontal input camera: 1 m in front of the head, fx = fy = 1500 px at 512².

    Returns (cam2world [4, 4], normalised intrinsics [3, 3]).
    """
    eye = torch.tensor([0.0, 0.0, 1.0], dtype=dtype)
    c2w = look_at(eye, torch.zeros(3, dtype=dtype), torch.tensor([0.0, 1.0, 0.0], dtype=dtype))
    k = torch.tensor([[1500 / 512, 0, 0.5], [0, 1500 / 512, 0.5], [0, 0, 1]], dtype=dtype)
    return c2w, k


def orbit_cameras(n: int, radius: float = 0.3, distance: float = 1.0, dtype=torch.float32) -> torch.Tensor:
    """The demo's frontal trajectory: eyes on a circle of `radius` in the plane z = distance, looking at
    the origin, first pose at (0, radius, distance).  → cam2world [n, 4, 4]"""
    t = torch.arange(n, dtype=dtype) * (2 * math.pi / max(n, 1))
    eye = torch.stack([radius * torch.sin(t), radius * torch.cos(t), torch.full_like(t, distance)], -1)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=dtype)
    return look_at(eye, torch.zeros_like(eye), up)
