"""Head template buffers derived from a UV-mapped mesh (SPEC §12.1).

The official template (``gghead_template.obj``) is non-commercial data and is never shipped: callers
pass its path. ``Template.synthetic`` builds a UV-mapped ellipsoid through the same code path, for
the embedded random-weight demo and tests that need no official data.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import TemplateError

VALIDITY_THRESHOLD = 0.99


@dataclass(frozen=True)
class Template:
    head_query_xyz: torch.Tensor      # [1, R², 3]  positions of the R×R UV texels (zeros = uncovered)
    gaussian_xyz: torch.Tensor        # [1, G, 3]   rest positions of the Gaussians
    uv_samples: torch.Tensor          # [1, G, 1, 2] grid_sample coords (x, y) in [-1, 1]

    @property
    def n_gaussians(self) -> int:
        return self.gaussian_xyz.shape[1]

    @property
    def res_head_tokens(self) -> int:
        return math.isqrt(self.head_query_xyz.shape[1])

    def sha256(self) -> str:
        h = hashlib.sha256()
        for t in (self.head_query_xyz, self.gaussian_xyz, self.uv_samples):
            h.update(t.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
        return h.hexdigest()

    @classmethod
    def from_obj(cls, path: str | Path, res_head_tokens: int = 32, res_gaussian_grid: int = 256) -> "Template":
        vertices, uvs, faces_v, faces_vt = read_obj(path)
        return cls.from_mesh(vertices, uvs, faces_v, faces_vt, res_head_tokens, res_gaussian_grid)

    @classmethod
    def from_mesh(cls, vertices: np.ndarray, uvs: np.ndarray, faces_v: np.ndarray, faces_vt: np.ndarray,
                  res_head_tokens: int, res_gaussian_grid: int) -> "Template":
        """vertices [V,3], uvs [T,2], faces_v / faces_vt [F,3] (0-based)."""
        tri_uv = uvs.astype(np.float32)[faces_vt]                 # [F, 3, 2]
        tri_xyz = vertices.astype(np.float64)[faces_v]            # [F, 3, 3]
        head_pos, _ = rasterize_uv(tri_uv, tri_xyz, res_head_tokens)
        head_query_xyz = torch.from_numpy(head_pos).reshape(1, -1, 3)
        gauss_pos, gauss_valid = rasterize_uv(tri_uv, tri_xyz, res_gaussian_grid)
        gaussian_xyz, uv_samples = _sample_gaussian_template(gauss_pos, gauss_valid)
        if gaussian_xyz.shape[1] == 0:
            raise TemplateError("the template's UV islands cover no sample of the Gaussian grid")
        return cls(head_query_xyz, gaussian_xyz, uv_samples)

    @classmethod
    def synthetic(cls, res_head_tokens: int = 32, res_gaussian_grid: int = 256, n_segments: int = 24) -> "Template":
        """A UV-mapped ellipsoid 'head' (≈16×22×18 cm, face towards +z, +y up), no official data."""
        u = np.linspace(0.02, 0.98, n_segments + 1)
        v = np.linspace(0.02, 0.98, n_segments + 1)
        uu, vv = np.meshgrid(u, v)                                     # row follows v
        azimuth = (uu - 0.5) * 1.6 * math.pi
        elevation = (0.5 - vv) * 0.9 * math.pi
        xyz = np.stack([0.08 * np.sin(azimuth) * np.cos(elevation),
                        0.11 * np.sin(elevation),
                        0.09 * np.cos(azimuth) * np.cos(elevation)], -1).reshape(-1, 3)
        uv = np.stack([uu, vv], -1).reshape(-1, 2)
        idx = np.arange((n_segments + 1) ** 2).reshape(n_segments + 1, n_segments + 1)
        a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
        faces = np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)])
        return cls.from_mesh(xyz, uv, faces, faces, res_head_tokens, res_gaussian_grid)


def read_obj(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Plain OBJ parse: positions by `v` index, UVs by `vt` index (0-based); polygons fan-triangulated."""
    path = Path(path)
    if path.is_dir():
        raise TemplateError(f"template OBJ {path} is a folder; expected the file gghead_template.obj")
    if not path.is_file():
        raise TemplateError(f"template OBJ not found: {path} (pass --template path/to/gghead_template.obj)")
    vertices, uvs, faces_v, faces_vt = [], [], [], []
    try:
        with path.open(encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                parts = line.split()
                if not parts:
                    continue
                where = f"{path}:{line_no}"
                if parts[0] == "v":
                    vertices.append(_numbers(parts, 3, where, "vertex (v x y z)", _MAX_ABS_XYZ))
                elif parts[0] == "vt":
                    uvs.append(_numbers(parts, 2, where, "texture coordinate (vt u v)", _MAX_ABS_UV))
                elif parts[0] == "f":
                    corners = [p.split("/") for p in parts[1:]]
                    if len(corners) < 3:
                        raise TemplateError(f"{where}: face with {len(corners)} corners; expected 3 or more")
                    if any(len(c) < 2 or not c[1] for c in corners):
                        raise TemplateError(f"{where}: face without texture coordinates")
                    try:
                        vi = [int(c[0]) - 1 for c in corners]
                        ti = [int(c[1]) - 1 for c in corners]
                    except ValueError:
                        raise TemplateError(f"{where}: face indices are not integers: {line.strip()!r}") from None
                    for k in range(1, len(corners) - 1):
                        faces_v.append([vi[0], vi[k], vi[k + 1]])
                        faces_vt.append([ti[0], ti[k], ti[k + 1]])
    except UnicodeDecodeError as e:
        raise TemplateError(f"{path} is not a readable OBJ file: {e}") from None
    except OSError as e:
        raise TemplateError(f"cannot read template OBJ {path}: {e.strerror}") from None
    if not vertices or not uvs or not faces_v:
        raise TemplateError(f"{path}: OBJ needs vertices (v), texture coordinates (vt) and faces (f); "
                            f"found {len(vertices)} v, {len(uvs)} vt, {len(faces_v)} faces")
    fv, ft = np.asarray(faces_v), np.asarray(faces_vt)
    if fv.min() < 0 or fv.max() >= len(vertices) or ft.min() < 0 or ft.max() >= len(uvs):
        raise TemplateError(f"{path}: face indices out of range (expected 1-based v / vt indices, "
                            f"1..{len(vertices)} and 1..{len(uvs)})")
    return np.asarray(vertices), np.asarray(uvs), fv, ft


# Larger values would overflow the float32 arithmetic of the rasteriser (UVs are normally in [0, 1]).
_MAX_ABS_XYZ = 1e30
_MAX_ABS_UV = 1e6


def _numbers(parts: list[str], n: int, where: str, what: str, max_abs: float) -> list[float]:
    """The first n numbers after the keyword of an OBJ line, finite and within ±max_abs."""
    try:
        values = [float(x) for x in parts[1:n + 1]]
    except ValueError:
        values = []
    if len(values) < n or not all(math.isfinite(x) and abs(x) <= max_abs for x in values):
        raise TemplateError(f"{where}: bad {what}: {' '.join(parts)!r}; expected {n} finite numbers "
                            f"(|x| ≤ {max_abs:g})")
    return values


def rasterize_uv(tri_uv: np.ndarray, tri_xyz: np.ndarray, res: int) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise UV triangles into a res×res position map ("gen_tritex").

    tri_uv: [F, 3, 2] float32, tri_xyz: [F, 3, 3] float64 → (positions [res, res, 3] float32, valid [res, res] float32)

    Texel (i, j) has centre ((j+0.5)/res, (i+0.5)/res); rows follow v (no flip). A texel is covered when all
    barycentrics are ≥ 0; the lowest face index wins. UV arithmetic in float32, texel centres in float64,
    barycentrics stored in float32, positions interpolated in float64.
    """
    pos = np.zeros((res, res, 3), np.float64)
    covered = np.zeros((res, res), bool)
    for f in range(tri_uv.shape[0]):
        t = tri_uv[f]
        lo, hi = t.min(0), t.max(0)                                   # float32 [2] (u, v)
        j0, j1 = max(0, int(lo[0] * res) - 1), min(res, int(hi[0] * res) + 2)
        i0, i1 = max(0, int(lo[1] * res) - 1), min(res, int(hi[1] * res) + 2)
        if j0 >= j1 or i0 >= i1:
            continue
        e0, e1 = t[1] - t[0], t[2] - t[0]                             # float32
        d00, d01, d11 = np.dot(e0, e0), np.dot(e0, e1), np.dot(e1, e1)
        den = d00 * d11 - d01 * d01
        if den == 0:
            continue
        cu = (np.arange(j0, j1) + 0.5) / res                          # float64
        cv = (np.arange(i0, i1) + 0.5) / res
        pu = cu[None, :] - t[0, 0]                                    # [h, w] via broadcasting
        pv = cv[:, None] - t[0, 1]
        d20 = pu * e0[0] + pv * e0[1]
        d21 = pu * e1[0] + pv * e1[1]
        beta = (d11 * d20 - d01 * d21) / den
        gamma = (d00 * d21 - d01 * d20) / den
        alpha = 1.0 - beta - gamma
        inside = (alpha >= 0) & (beta >= 0) & (gamma >= 0) & ~covered[i0:i1, j0:j1]
        if not inside.any():
            continue
        # The barycentric map is held in float32 (as the official tritex map is); positions are then
        # interpolated in float64. This rounding order reproduces the official buffers bit-exactly.
        a, b, g = (w.astype(np.float32).astype(np.float64)[..., None] for w in (alpha, beta, gamma))
        p = tri_xyz[f]
        interp = a * p[0] + b * p[1] + g * p[2]
        box = pos[i0:i1, j0:j1]
        box[inside] = interp[inside]
        covered[i0:i1, j0:j1] |= inside
    return pos.astype(np.float32), covered.astype(np.float32)


def _sample_gaussian_template(pos_map: np.ndarray, valid_map: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep grid samples whose bilinear validity exceeds 0.99 (row-major), in float32 as specified."""
    res = valid_map.shape[0]
    lin = torch.linspace(-1, 1, res, dtype=torch.float32)
    gy, gx = torch.meshgrid(lin, lin, indexing="ij")                  # row i → y, column j → x
    grid = torch.stack([gx, gy], -1)[None]                            # [1, res, res, 2]
    valid = torch.from_numpy(valid_map)[None, None]                   # [1, 1, res, res]
    valid_s = F.grid_sample(valid, grid, mode="bilinear", align_corners=False, padding_mode="zeros")[0, 0]
    keep = valid_s > VALIDITY_THRESHOLD                               # [res, res]
    uv = grid[0][keep]                                                # [G, 2] row-major
    uv_samples = uv[None, :, None, :].contiguous()                    # [1, G, 1, 2]
    positions = torch.from_numpy(pos_map).permute(2, 0, 1)[None]      # [1, 3, res, res]
    xyz = F.grid_sample(positions, uv_samples, mode="bilinear", align_corners=False, padding_mode="zeros")
    return xyz[0, :, :, 0].T[None].contiguous(), uv_samples           # [1, G, 3], [1, G, 1, 2]
