"""Camera helpers for the model's convention (cam2world, intrinsics normalised by image size).

Both work on numpy arrays and torch tensors (differentiably) and import neither eagerly.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .arrays import NUMPY, array_kind, to_torch


def pixel_intrinsics(K_normalised: Any, width: int, height: int):
    """Normalised intrinsics ``[..., 3, 3]`` (row 0 divided by width, row 1 by height) -> pixel K."""
    scale = np.array([[width], [height], [1.0]], dtype=np.float64)            # [3, 1] per-row factor
    if array_kind(K_normalised) == NUMPY:
        return K_normalised * scale.astype(K_normalised.dtype)
    return K_normalised * to_torch(scale, like=K_normalised)


def world2cam_from_cam2world(cam2world: Any):
    """Rigid inverse ``[R | t]^-1 = [R^T | -R^T t]`` of cam2world ``[..., 4, 4]``."""
    rot = cam2world[..., :3, :3]                                              # [..., 3, 3]
    trans = cam2world[..., :3, 3:]                                            # [..., 3, 1]
    rot_t = rot.swapaxes(-1, -2)
    top = [rot_t, -(rot_t @ trans)]                                           # [..., 3, 4]
    if array_kind(cam2world) == NUMPY:
        bottom = np.zeros(cam2world.shape[:-2] + (1, 4), dtype=cam2world.dtype)
        bottom[..., 0, 3] = 1
        return np.concatenate([np.concatenate(top, axis=-1), bottom], axis=-2)
    import torch

    bottom = torch.zeros(cam2world.shape[:-2] + (1, 4), dtype=cam2world.dtype, device=cam2world.device)
    bottom[..., 0, 3] = 1
    return torch.cat([torch.cat(top, dim=-1), bottom], dim=-2)
