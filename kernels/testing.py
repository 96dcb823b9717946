"""Synthetic scenes for tests and benchmarks (numpy float32, so every backend can use them).

``random_head_scene``: FLEX-1-sized (58,361 Gaussians) blobs around a head-sized sphere seen from
1 m, the benchmark scene. ``random_scene``: small random scenes with several cameras, off-centre
principal points and Gaussians crossing tile borders and image edges, for backend comparisons.
"""
from __future__ import annotations

import numpy as np

from .types import Cameras, Splats

FLEX1_NUM_GAUSSIANS = 58_361


def _random_quats(rng: np.random.Generator, n: int) -> np.ndarray:
    q = rng.normal(size=(n, 4))
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def _look_at_origin(eye: np.ndarray, up=(0.0, -1.0, 0.0)) -> np.ndarray:
    """OpenCV world2cam [4, 4] of a camera at ``eye`` looking at the origin (+y down in the image)."""
    forward = -eye / np.linalg.norm(eye)
    right = np.cross(forward, np.asarray(up, dtype=np.float64))
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rot = np.stack([right, down, forward])                              # rows: camera axes in world
    w2c = np.eye(4)
    w2c[:3, :3] = rot
    w2c[:3, 3] = -rot @ eye
    return w2c


def orbit_cameras(num_views: int, distance: float, width: int, height: int, focal: float,
                  principal_offset=(0.0, 0.0), seed: int | None = None) -> Cameras:
    """Cameras on a horizontal circle around the origin, looking at it.

    principal_offset shifts (cx, cy) from the image centre by that fraction of the image size;
    with ``seed`` the view directions also get a random elevation.
    """
    rng = np.random.default_rng(seed)
    w2c, ks = [], []
    for i in range(num_views):
        azimuth = 2 * np.pi * i / max(num_views, 1)
        elevation = rng.uniform(-0.4, 0.4) if seed is not None else 0.0
        eye = distance * np.array([np.sin(azimuth) * np.cos(elevation), np.sin(elevation),
                                   -np.cos(azimuth) * np.cos(elevation)])
        w2c.append(_look_at_origin(eye))
        ks.append([[focal, 0, width * (0.5 + principal_offset[0])],
                   [0, focal, height * (0.5 + principal_offset[1])], [0, 0, 1]])
    return Cameras(world2cam=np.asarray(w2c, dtype=np.float32), K=np.asarray(ks, dtype=np.float32))


def random_head_scene(num_gaussians: int = FLEX1_NUM_GAUSSIANS, seed: int = 0, num_views: int = 1,
                      width: int = 512, height: int = 512) -> tuple[Splats, Cameras]:
    """Gaussians in a shell around a sphere of radius 0.1 m (a head), scales 1-5 mm, seen from
    cameras 1 m away with fx = fy = 1500 px scaled to a 512-pixel-wide image, c at the centre."""
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(num_gaussians, 3))
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    radius = 0.1 * rng.uniform(0.9, 1.02, size=(num_gaussians, 1))
    splats = Splats(
        means=(dirs * radius).astype(np.float32),
        quats=_random_quats(rng, num_gaussians).astype(np.float32),
        scales=np.exp(rng.uniform(np.log(1e-3), np.log(5e-3), size=(num_gaussians, 3))).astype(np.float32),
        opacities=rng.uniform(0.05, 1.0, size=num_gaussians).astype(np.float32),
        sh0=rng.normal(0.0, 0.8, size=(num_gaussians, 3)).astype(np.float32),
    )
    cameras = orbit_cameras(num_views, 1.0, width, height, focal=1500.0 * width / 512)
    return splats, cameras


def random_scene(num_gaussians: int, num_views: int, width: int, height: int, seed: int = 0,
                 principal_offset=(0.07, -0.05), focal_scale: float = 1.2) -> tuple[Splats, Cameras]:
    """A small random scene: Gaussians in a 1 m cube around the origin (some off-screen, some
    anisotropic, opacities spanning the alpha thresholds), seen by ``num_views`` orbit cameras at
    3 m with off-centre principal points. Footprints are a few to ~20 pixels, so many straddle
    tile borders and image edges."""
    rng = np.random.default_rng(seed)
    splats = Splats(
        means=rng.uniform(-0.9, 0.9, size=(num_gaussians, 3)).astype(np.float32),
        quats=_random_quats(rng, num_gaussians).astype(np.float32),
        scales=np.exp(rng.uniform(np.log(0.004), np.log(0.06), size=(num_gaussians, 3))).astype(np.float32),
        opacities=rng.uniform(0.0, 1.0, size=num_gaussians).astype(np.float32),
        sh0=rng.normal(0.0, 1.0, size=(num_gaussians, 3)).astype(np.float32),
    )
    cameras = orbit_cameras(num_views, 3.0, width, height, focal=focal_scale * max(width, height),
                            principal_offset=principal_offset, seed=seed)
    return splats, cameras


# ---------------------------------------------------------------------------------------------
# Independent numpy oracles (float64, literal loops): small inputs only
# ---------------------------------------------------------------------------------------------
def composite_sequential(alphas: np.ndarray, colors: np.ndarray, depths: np.ndarray,
                         background: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The compositing rule written as the per-pixel loop of the definition.

    alphas: [P, L] per pixel and Gaussian, Gaussians sorted near to far, already
    ``min(0.99, o exp(-sigma))``; colors: [L, 3]; depths: [L]; background: [3]
    -> rgb [P, 3], alpha [P], expected depth [P] (gsplat "ED").
    """
    from .constants import ALPHA_MIN, DEPTH_ALPHA_EPS, TRANSMITTANCE_MIN

    num_pixels = alphas.shape[0]
    rgb, alpha, depth = np.zeros((num_pixels, 3)), np.zeros(num_pixels), np.zeros(num_pixels)
    for p in range(num_pixels):
        trans, color, depth_sum = 1.0, np.zeros(3), 0.0
        for k in range(alphas.shape[1]):
            a = float(alphas[p, k])
            if a < ALPHA_MIN:
                continue
            if trans * (1.0 - a) <= TRANSMITTANCE_MIN:
                break
            color += a * trans * colors[k]
            depth_sum += a * trans * depths[k]
            trans *= 1.0 - a
        rgb[p] = color + trans * background
        alpha[p] = 1.0 - trans
        depth[p] = depth_sum / max(alpha[p], DEPTH_ALPHA_EPS)
    return rgb, alpha, depth


def on_axis_scene(depths, scales, opacities, sh0, width: int, height: int, focal: float):
    """Isotropic Gaussians on the optical axis of a camera at the origin (world = camera frame),
    principal point at the image centre. Returns (Splats, Cameras, pixel variances [L]).

    On the axis the Jacobian is diag(f/z, f/z) (no x/z, y/z terms), so each footprint is the
    isotropic 2D Gaussian of variance ``(f s / z)^2 + 0.3`` centred at (W/2, H/2): a closed form.
    """
    depths = np.asarray(depths, dtype=np.float64)
    num = len(depths)
    scales = np.asarray(scales, dtype=np.float64)
    splats = Splats(
        means=np.stack([np.zeros(num), np.zeros(num), depths], axis=-1).astype(np.float32),
        quats=np.tile(np.array([1.0, 0.0, 0.0, 0.0], np.float32), (num, 1)),
        scales=np.repeat(scales[:, None], 3, axis=1).astype(np.float32),
        opacities=np.asarray(opacities, dtype=np.float32),
        sh0=np.asarray(sh0, dtype=np.float32).reshape(num, 3),
    )
    K = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]], dtype=np.float32)
    cameras = Cameras(world2cam=np.eye(4, dtype=np.float32)[None], K=K[None])
    from .constants import EPS2D

    variances = (focal * scales / depths) ** 2 + EPS2D
    return splats, cameras, variances


def on_axis_closed_form(splats: Splats, variances: np.ndarray, width: int, height: int,
                        background) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expected [H, W, 3], [H, W], [H, W] for ``on_axis_scene`` (float64, per-pixel loop)."""
    from .constants import ALPHA_MAX, SH_C0

    ys, xs = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    dist2 = ((xs - width / 2) ** 2 + (ys - height / 2) ** 2).reshape(-1, 1)      # [P, 1]
    opac = splats.opacities.astype(np.float64)[None, :]
    alphas = np.minimum(ALPHA_MAX, opac * np.exp(-0.5 * dist2 / variances[None, :]))   # [P, L]
    depths = splats.means[:, 2].astype(np.float64)
    order = np.argsort(depths, kind="stable")
    colors = np.maximum(SH_C0 * splats.sh0.astype(np.float64) + 0.5, 0.0)
    rgb, alpha, depth = composite_sequential(alphas[:, order], colors[order], depths[order],
                                             np.asarray(background, dtype=np.float64))
    return rgb.reshape(height, width, 3), alpha.reshape(height, width), depth.reshape(height, width)
