"""Expression codes (the 135-d FLEX code) and the rigid head pose, in numpy (no torch).

Layout (SPEC §14): ``[0:100]`` expression, ``[100:112]`` eyes 6D, ``[112:114]`` eyelids, ``[114:120]`` neck 6D,
``[120:126]`` jaw 6D, ``[126:132]`` head rotation 6D, ``[132:135]`` head translation. The decoded Gaussians
stay in the canonical head frame; the official GUI then applies the rigid pose
``[rot6d(code[126:132]) | code[132:135]]`` to their positions and rotations (``apply_head_pose``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ExpressionInputError

EXPRESSION_DIM = 135
HEAD_ROTATION = slice(126, 132)
HEAD_TRANSLATION = slice(132, 135)
ROTATION_SLOTS = (slice(100, 106), slice(106, 112), slice(114, 120), slice(120, 126), HEAD_ROTATION)
JAW = slice(120, 126)
IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
NPZ_KEY = "expression_codes"      # key of the tracked sequences in ../shared/fixtures/driving/*.npz


def neutral_expression(n: int = 1) -> np.ndarray:
    """Zeros with identity 6D in the five rotation slots (the GUI's neutral code).  → [n, 135] float32"""
    codes = np.zeros((n, EXPRESSION_DIM), np.float32)
    for s in ROTATION_SLOTS:
        codes[:, s] = IDENTITY_6D
    return codes


def synthetic_expressions(n: int) -> np.ndarray:
    """A talking-like sequence: the neutral code + sinusoids on the first ten expression coefficients and
    the jaw's 6D rows.  → [n, 135] float32"""
    codes = neutral_expression(n)
    t = np.arange(n, dtype=np.float32)
    for k in range(10):
        codes[:, k] = 1.5 * np.sin(0.4 * t * (1 + 0.1 * k) + k)
    codes[:, JAW.start + 4] += 0.2 * np.sin(0.5 * t)
    return codes


def as_expressions(x, argument: str = "expressions") -> np.ndarray:
    """[135] or [T, 135] float array (numpy / torch / list) → [T, 135] float32, checked."""
    if type(x).__module__.startswith("torch"):
        x = x.detach().cpu().numpy()
    try:
        a = np.asarray(x)
    except (TypeError, ValueError):
        raise ExpressionInputError(argument, f"is a {type(x).__name__}", "a [T, 135] float array") from None
    if a.dtype.kind != "f":
        raise ExpressionInputError(argument, f"has dtype {a.dtype}", "floating point expression codes")
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[1] != EXPRESSION_DIM or a.shape[0] == 0:
        raise ExpressionInputError(argument, f"has shape {list(a.shape)}", f"[T, {EXPRESSION_DIM}] with T ≥ 1")
    if not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).any(axis=1).sum())
        raise ExpressionInputError(argument, f"has NaN/inf in {bad} frames", "finite values")
    return np.ascontiguousarray(a, dtype=np.float32)


def load_expressions(path: str | Path) -> np.ndarray:
    """A sequence file → [T, 135] float32: ``.npy`` [T, 135] (or [135]), or ``.npz`` with ``expression_codes``
    (the layout of the tracked sequences in ``../shared/fixtures/driving/``)."""
    path = Path(path)
    if not path.is_file():
        raise ExpressionInputError("expressions", f"file {path} not found", "a .npy [T, 135] or .npz file")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ExpressionInputError("expressions", f"cannot read {path} ({e})", "a .npy or .npz file") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            if NPZ_KEY not in data.files:
                raise ExpressionInputError("expressions", f"{path.name} has no {NPZ_KEY!r} array (keys: "
                                           f"{sorted(data.files)})", f"an .npz with {NPZ_KEY} [T, 135]")
            data = data[NPZ_KEY]
    return as_expressions(data, f"expressions ({path.name})")


def sequence_fps(path: str | Path, default: float) -> float:
    """The ``fps`` scalar of a tracked ``.npz`` sequence, else ``default``."""
    path = Path(path)
    if path.suffix != ".npz":
        return default
    with np.load(path, allow_pickle=False) as data:
        return float(data["fps"]) if "fps" in data.files and data["fps"].shape == () else default


# ---- the rigid head pose ------------------------------------------------------------------------------

def rot6d_to_matrix(r6: np.ndarray) -> np.ndarray:
    """Gram–Schmidt of the two raw rows; the matrix *rows* are (b1, b2, b1 × b2).  [..., 6] → [..., 3, 3]"""
    r6 = np.asarray(r6, np.float64)
    b1 = r6[..., 0:3] / np.linalg.norm(r6[..., 0:3], axis=-1, keepdims=True)
    a2 = r6[..., 3:6]
    b2 = a2 - (b1 * a2).sum(-1, keepdims=True) * b1
    b2 = b2 / np.linalg.norm(b2, axis=-1, keepdims=True)
    return np.stack([b1, b2, np.cross(b1, b2)], axis=-2)


MIN_ROT6D_NORM = 1e-6      # a 6D rotation's first vector, and its second's part orthogonal to it (cpp/runtime too)


def head_pose(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The GUI's rigid pose of each code: rotation [T, 3, 3] and translation [T, 3] (float64).
    Raises ExpressionInputError when a head rotation (code[126:132]) is no 6D rotation (e.g. all zeros) or the
    pose holds NaN/inf (the same rule as cpp/runtime/head_pose.cpp)."""
    codes = np.asarray(codes, np.float64)
    r6 = codes[..., HEAD_ROTATION]
    a1, a2 = r6[..., 0:3], r6[..., 3:6]
    n1 = np.linalg.norm(a1, axis=-1)
    ortho = a2 - (a1 * a2).sum(-1, keepdims=True) * a1 / np.maximum(n1, MIN_ROT6D_NORM)[..., None] ** 2
    finite = np.isfinite(codes[..., HEAD_ROTATION.start:HEAD_TRANSLATION.stop]).all(-1)
    bad = ~finite | ~(n1 >= MIN_ROT6D_NORM) | ~(np.linalg.norm(ortho, axis=-1) >= MIN_ROT6D_NORM)
    if bad.any():
        frames = np.flatnonzero(bad.reshape(-1))
        raise ExpressionInputError("expressions", f"frame {int(frames[0])} (of {len(frames)} such frames) has the head "
                                   f"rotation code[126:132] = {np.round(r6.reshape(-1, 6)[frames[0]], 6).tolist()}",
                                   "a finite 6D rotation (two non-parallel 3-vectors, e.g. 1 0 0 0 1 0 for none) and "
                                   "translation to apply the head pose; without apply_head_pose they are not used")
    return rot6d_to_matrix(r6), codes[..., HEAD_TRANSLATION]


def head_pose_matrix(codes: np.ndarray) -> np.ndarray:
    """The GUI's rigid pose of each code as head-to-world transforms [T, 4, 4] (float64): x' = R x + t."""
    rot, trans = head_pose(codes)
    m = np.zeros(rot.shape[:-2] + (4, 4))
    m[..., :3, :3], m[..., :3, 3], m[..., 3, 3] = rot, trans, 1.0
    return m


def quaternion_from_matrix(rot: np.ndarray) -> np.ndarray:
    """Rotation matrices → unit quaternions (w, x, y, z) with w ≥ 0 (Shepperd: largest pivot, stable).
    [..., 3, 3] → [..., 4]"""
    m = np.asarray(rot, np.float64)
    xx, yy, zz = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    s_x, s_y, s_z = m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]   # 4w·x, ..
    xy, xz, yz = m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1]      # 4xy, ..
    # four candidate solutions (each 4·q_k·q for one component k), well conditioned when the pivot 4q_k² is large
    pivots = np.stack([1 + xx + yy + zz, 1 + xx - yy - zz, 1 - xx + yy - zz, 1 - xx - yy + zz], -1)
    candidates = np.stack([np.stack([pivots[..., 0], s_x, s_y, s_z], -1),
                           np.stack([s_x, pivots[..., 1], xy, xz], -1),
                           np.stack([s_y, xy, pivots[..., 2], yz], -1),
                           np.stack([s_z, xz, yz, pivots[..., 3]], -1)], -2)           # [..., 4 candidates, 4]
    best = np.argmax(pivots, axis=-1)[..., None, None]
    q = np.take_along_axis(candidates, np.broadcast_to(best, best.shape[:-1] + (4,)), axis=-2)[..., 0, :]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


def quaternion_multiply(a, b, stack):
    """Hamilton product a ⊗ b of (w, x, y, z) quaternions; numpy or torch (``stack`` = np.stack / torch.stack)."""
    aw, ax, ay, az = a[..., 0], a[..., 1], a[..., 2], a[..., 3]
    bw, bx, by, bz = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return stack([aw * bw - ax * bx - ay * by - az * bz,
                  aw * bx + ax * bw + ay * bz - az * by,
                  aw * by - ax * bz + ay * bw + az * bx,
                  aw * bz + ax * by - ay * bx + az * bw], -1)
