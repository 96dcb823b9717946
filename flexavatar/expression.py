"""The 135-d expression code (SPEC §14) and 6D-rotation helpers."""
from __future__ import annotations

import torch
import torch.nn.functional as F

# slices of the 135-d code
EXPRESSION = slice(0, 100)
EYE_LEFT = slice(100, 106)
EYE_RIGHT = slice(106, 112)
EYELIDS = slice(112, 114)
NECK = slice(114, 120)
JAW = slice(120, 126)
HEAD_ROTATION = slice(126, 132)
HEAD_TRANSLATION = slice(132, 135)
ROTATION_SLOTS = (EYE_LEFT, EYE_RIGHT, NECK, JAW, HEAD_ROTATION)
EXPRESSION_CODE_DIM = 135
IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def neutral_expression(n: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Zeros with identity 6D in the five rotation slots (the GUI's neutral code).  → [n, 135]"""
    code = torch.zeros(n, EXPRESSION_CODE_DIM, dtype=dtype)
    for s in ROTATION_SLOTS:
        code[:, s] = torch.tensor(IDENTITY_6D, dtype=dtype)
    return code


def rot6d_to_matrix(r6: torch.Tensor) -> torch.Tensor:
    """Gram–Schmidt of the two raw rows; the result's *rows* are (b1, b2, b1×b2).  [..., 6] → [..., 3, 3]"""
    a1, a2 = r6[..., 0:3], r6[..., 3:6]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-2)


def matrix_to_rot6d(m: torch.Tensor) -> torch.Tensor:
    """First two rows of a rotation matrix.  [..., 3, 3] → [..., 6]"""
    return m[..., :2, :].reshape(*m.shape[:-2], 6)


def head_pose(code: torch.Tensor) -> torch.Tensor:
    """Rigid head pose [R | t] that the official GUI applies to decoded Gaussians.  [..., 135] → [..., 4, 4]"""
    pose = torch.zeros(*code.shape[:-1], 4, 4, dtype=code.dtype, device=code.device)
    pose[..., :3, :3] = rot6d_to_matrix(code[..., HEAD_ROTATION])
    pose[..., :3, 3] = code[..., HEAD_TRANSLATION]
    pose[..., 3, 3] = 1
    return pose
