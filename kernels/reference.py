"""Pure-PyTorch reference rasterizer: the definition every fast backend is tested against.

Semantics: gsplat ``rasterization`` in classic mode with SH degree 0 (numbers in constants.py).

1. ``project_gaussians``: EWA splatting. Camera-space mean ``p = R m + t``, 3D covariance
   ``Rq S S^T Rq^T`` rotated into the camera, perspective Jacobian with gsplat's frustum clamp,
   ``cov2d = J cov J^T + 0.3 I``, conic = cov2d^-1, opacity-aware per-axis pixel radius.
2. ``tile_intersections``: every visible Gaussian is listed in each 16x16 tile its radius box
   touches; lists are sorted by camera-space depth (front to back).
3. ``composite``: per pixel (centres at +0.5), front-to-back alpha blending with
   ``alpha = min(0.99, o exp(-sigma))``, skipping alpha < 1/255 and stopping before the Gaussian
   that would bring transmittance to <= 1e-4.

Outputs: rgb composited over the background (``rgb + T bg``), alpha ``1 - T`` and expected depth
in gsplat's "ED" mode: ``sum(w z) / max(alpha, 1e-10)``.

Everything is differentiable through autograd (radii and tile lists are discrete). Tiles are
processed in chunks sized by an element budget so that 512x512 with ~58k Gaussians fits in a few
GB; ``rasterize_dense`` is a tile-free variant (every Gaussian at every pixel) for small tests.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .constants import (
    ALPHA_MAX,
    ALPHA_MIN,
    DEPTH_ALPHA_EPS,
    EPS2D,
    FAR_PLANE,
    FRUSTUM_CLIP,
    MAX_RADIUS,
    NEAR_PLANE,
    RADIUS_CLIP_SIGMAS,
    SH_C0,
    TILE_SIZE,
    TRANSMITTANCE_MIN,
)
from .types import RenderRequest, RenderResult

PIXELS_PER_TILE = TILE_SIZE * TILE_SIZE
CHUNK_ELEMENTS = 1 << 22  # pixel x Gaussian evaluations per chunk of tiles (~16 MB per float32 tensor)


def colors_from_sh0(sh0: torch.Tensor) -> torch.Tensor:
    """Degree-0 SH to RGB: ``max(SH_C0 sh0 + 0.5, 0)``.  sh0: [..., 3] -> [..., 3]."""
    return torch.clamp_min(SH_C0 * sh0 + 0.5, 0.0)


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """quats: [..., 4] (w, x, y, z), any non-zero norm -> rotation matrices [..., 3, 3]."""
    w, x, y, z = (quats / quats.norm(dim=-1, keepdim=True)).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(quats.shape[:-1] + (3, 3))


@dataclass
class Projection:
    """Per-view screen-space Gaussians. Culled ones have ``radii == 0`` (other fields then unused)."""

    means2d: torch.Tensor   # [N, G, 2] pixels
    conics: torch.Tensor    # [N, G, 3] upper triangle (a, b, c) of cov2d^-1
    depths: torch.Tensor    # [N, G] camera-space z
    radii: torch.Tensor     # [N, G, 2] int32 pixel radius per axis (0 = culled)


def project_gaussians(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor,
                      opacities: torch.Tensor, world2cam: torch.Tensor, K: torch.Tensor,
                      width: int, height: int) -> Projection:
    """means: [N, G, 3], quats: [N, G, 4], scales: [N, G, 3], opacities: [N, G],
    world2cam: [N, 4, 4], K: [N, 3, 3] -> Projection."""
    cam_rot = world2cam[:, None, :3, :3]                                   # [N, 1, 3, 3]
    cam_trans = world2cam[:, None, :3, 3]                                  # [N, 1, 3]
    means_cam = (cam_rot @ means[..., None])[..., 0] + cam_trans           # [N, G, 3]
    x, y, z = means_cam.unbind(-1)                                         # [N, G] each

    rot_scale = quat_to_rotmat(quats) * scales[..., None, :]               # [N, G, 3, 3]  R S
    cov_world = rot_scale @ rot_scale.transpose(-1, -2)                    # [N, G, 3, 3]
    cov_cam = cam_rot @ cov_world @ cam_rot.transpose(-1, -2)              # [N, G, 3, 3]

    in_depth_range = (z >= NEAR_PLANE) & (z <= FAR_PLANE)
    z = torch.where(in_depth_range, z, torch.ones_like(z))                 # keeps culled ones finite

    fx, fy = K[:, None, 0, 0], K[:, None, 1, 1]                            # [N, 1]
    cx, cy = K[:, None, 0, 2], K[:, None, 1, 2]
    # Jacobian of (fx x/z + cx, fy y/z + cy), evaluated with x/z, y/z clamped to the frustum
    # widened by 30% of the half field of view on each side (gsplat's persp_proj).
    tan_half_fov_x, tan_half_fov_y = 0.5 * width / fx, 0.5 * height / fy
    x_over_z = torch.clamp(x / z, min=-(cx / fx + FRUSTUM_CLIP * tan_half_fov_x),
                           max=(width - cx) / fx + FRUSTUM_CLIP * tan_half_fov_x)
    y_over_z = torch.clamp(y / z, min=-(cy / fy + FRUSTUM_CLIP * tan_half_fov_y),
                           max=(height - cy) / fy + FRUSTUM_CLIP * tan_half_fov_y)
    zeros = torch.zeros_like(z)
    jac = torch.stack([fx / z, zeros, -fx * x_over_z / z,
                       zeros, fy / z, -fy * y_over_z / z], dim=-1).reshape(z.shape + (2, 3))  # [N, G, 2, 3]
    cov2d = jac @ cov_cam @ jac.transpose(-1, -2)                          # [N, G, 2, 2]
    cov_a = cov2d[..., 0, 0] + EPS2D
    cov_b = cov2d[..., 0, 1]
    cov_c = cov2d[..., 1, 1] + EPS2D
    det = cov_a * cov_c - cov_b * cov_b
    invertible = det > 0
    det = torch.where(invertible, det, torch.ones_like(det))
    conics = torch.stack([cov_c / det, -cov_b / det, cov_a / det], dim=-1)  # [N, G, 3]
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)      # [N, G, 2]

    with torch.no_grad():
        radii = _pixel_radii(cov_a, cov_c, opacities, means2d, width, height)
        radii = torch.where((in_depth_range & invertible)[..., None], radii, torch.zeros_like(radii))
    return Projection(means2d=means2d, conics=conics, depths=z, radii=radii)


def _pixel_radii(cov_a, cov_c, opacities, means2d, width: int, height: int) -> torch.Tensor:
    """gsplat's opacity-aware radius: alpha >= 1/255 only inside the ellipse of
    ``d^T cov^-1 d = 2 ln(255 o)``, whose half-extent along x is ``sqrt(2 ln(255 o) cov_xx)``."""
    opacities = opacities.to(cov_a.dtype)
    visible = opacities >= ALPHA_MIN
    extent = torch.sqrt(2.0 * torch.log(torch.where(visible, opacities / ALPHA_MIN, torch.ones_like(opacities))))
    extent = torch.clamp_max(extent, RADIUS_CLIP_SIGMAS)
    radii = torch.ceil(extent[..., None] * torch.sqrt(torch.stack([cov_a, cov_c], dim=-1)))  # [N, G, 2]
    radii = torch.clamp_max(radii, MAX_RADIUS)  # fits int32 (a bigger one would wrap negative)
    on_image = ((means2d[..., 0] + radii[..., 0] > 0) & (means2d[..., 0] - radii[..., 0] < width)
                & (means2d[..., 1] + radii[..., 1] > 0) & (means2d[..., 1] - radii[..., 1] < height))
    keep = visible & on_image & (radii > 0).any(-1)
    return torch.where(keep[..., None], radii, torch.zeros_like(radii)).to(torch.int32)


def tile_grid(width: int, height: int) -> tuple[int, int]:
    """Number of tiles along x and y (the last row/column may stick out of the image)."""
    return math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)


@torch.no_grad()
def tile_intersections(proj: Projection, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """List (tile, Gaussian) pairs, sorted by tile then depth.

    Returns ``tile_ids [I]`` (global over views: ``view * tiles_per_view + ty * tiles_x + tx``)
    and ``flat_ids [I]`` (``view * G + g``).
    """
    n, g = proj.depths.shape
    tiles_x, tiles_y = tile_grid(width, height)
    radii = proj.radii.to(proj.means2d.dtype)
    # Tiles [min, max) covered by the box mean +- radius (gsplat isect_tiles).
    tile_min = torch.floor(proj.means2d / TILE_SIZE - radii / TILE_SIZE)        # [N, G, 2]
    tile_max = torch.ceil(proj.means2d / TILE_SIZE + radii / TILE_SIZE)
    limit = proj.means2d.new_tensor([tiles_x, tiles_y])
    tile_min = torch.minimum(tile_min.clamp_min(0), limit).long()
    tile_max = torch.minimum(tile_max.clamp_min(0), limit).long()
    span = tile_max - tile_min                                                   # [N, G, 2]
    counts = (span[..., 0] * span[..., 1] * (proj.radii > 0).all(-1)).flatten()  # [N*G]

    flat_ids = torch.repeat_interleave(torch.arange(n * g, device=counts.device), counts)   # [I]
    first = torch.cumsum(counts, 0) - counts
    local = torch.arange(flat_ids.numel(), device=counts.device) - first[flat_ids]
    span_x = span.reshape(-1, 2)[flat_ids, 0]
    tx = tile_min.reshape(-1, 2)[flat_ids, 0] + local % span_x
    ty = tile_min.reshape(-1, 2)[flat_ids, 1] + local // span_x
    tile_ids = (flat_ids // g) * (tiles_x * tiles_y) + ty * tiles_x + tx

    by_depth = torch.argsort(proj.depths.flatten()[flat_ids], stable=True)
    by_tile = torch.argsort(tile_ids[by_depth], stable=True)
    order = by_depth[by_tile]
    return tile_ids[order], flat_ids[order]


def gaussian_alphas(pixels: torch.Tensor, means2d: torch.Tensor, conics: torch.Tensor,
                    opacities: torch.Tensor) -> torch.Tensor:
    """Alpha of every Gaussian at every pixel, 0 where skipped (alpha < 1/255 or sigma < 0).

    pixels: [..., P, 2], means2d: [..., L, 2], conics: [..., L, 3], opacities: [..., L] -> [..., P, L]
    """
    delta = means2d[..., None, :, :] - pixels[..., :, None, :]               # [..., P, L, 2]
    dx, dy = delta[..., 0], delta[..., 1]
    a, b, c = (conics[..., None, :, i] for i in range(3))                    # [..., 1, L]
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy                  # [..., P, L]
    alpha = torch.clamp_max(opacities[..., None, :] * torch.exp(-sigma), ALPHA_MAX)
    return torch.where((sigma >= 0) & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))


def composite(alphas: torch.Tensor, colors: torch.Tensor, depths: torch.Tensor):
    """Front-to-back blending along the last axis of ``alphas`` (Gaussians sorted near to far).

    alphas: [..., P, L], colors: [..., L, 3], depths: [..., L]
    -> rgb [..., P, 3] (without background), transmittance [..., P], depth sum(w z) [..., P]
    """
    one_minus = 1.0 - alphas
    t_after = torch.cumprod(one_minus, dim=-1)                               # T after each Gaussian
    # The Gaussian that would bring T to <= 1e-4 is not drawn, nor any after it (T only falls).
    drawn = (t_after > TRANSMITTANCE_MIN).detach()
    t_before = torch.cat([torch.ones_like(t_after[..., :1]), t_after[..., :-1]], dim=-1)
    weights = alphas * t_before * drawn                                      # [..., P, L]
    rgb = weights @ colors                                                   # [..., P, 3]
    depth = (weights @ depths[..., None])[..., 0]                            # [..., P]
    transmittance = torch.where(drawn, one_minus, torch.ones_like(one_minus)).prod(-1)
    return rgb, transmittance, depth


def _tile_pixels(tiles: torch.Tensor, tiles_x: int, tiles_per_view: int, dtype) -> torch.Tensor:
    """Pixel centres of the given global tile ids: [T] -> [T, 256, 2] (x, y)."""
    local = tiles % tiles_per_view
    origin = torch.stack([local % tiles_x, local // tiles_x], dim=-1) * TILE_SIZE   # [T, 2]
    offs = torch.arange(TILE_SIZE, device=tiles.device)
    grid = torch.stack(torch.meshgrid(offs, offs, indexing="xy"), dim=-1).reshape(-1, 2)  # [256, 2] (x, y)
    return (origin[:, None, :] + grid[None]).to(dtype) + 0.5


def rasterize_tiles(proj: Projection, colors: torch.Tensor, opacities: torch.Tensor, width: int, height: int,
                    chunk_elements: int = CHUNK_ELEMENTS):
    """Tiled compositing. colors: [N, G, 3], opacities: [N, G]
    -> rgb [N, H, W, 3] (no background), transmittance [N, H, W], depth sum(w z) [N, H, W]."""
    n, g = proj.depths.shape
    tiles_x, tiles_y = tile_grid(width, height)
    tiles_per_view = tiles_x * tiles_y
    tile_ids, flat_ids = tile_intersections(proj, width, height)
    counts = torch.bincount(tile_ids, minlength=n * tiles_per_view)              # [N*tiles]
    first = torch.cumsum(counts, 0) - counts

    flat_means2d = proj.means2d.reshape(n * g, 2)
    flat_conics = proj.conics.reshape(n * g, 3)
    flat_opac, flat_depths = opacities.reshape(n * g), proj.depths.reshape(n * g)
    flat_colors = colors.reshape(n * g, 3)

    def blend(tiles, length):  # tiles [T] whose lists are at most ``length`` long -> composite()
        slot = torch.arange(length, device=tiles.device)
        in_list = slot[None, :] < counts[tiles][:, None]                          # [T, L]
        rows = torch.where(in_list, first[tiles][:, None] + slot[None, :], torch.zeros_like(slot)[None, :])
        ids = flat_ids[rows]                                                      # [T, L]
        pixels = _tile_pixels(tiles, tiles_x, tiles_per_view, flat_means2d.dtype)  # [T, 256, 2]
        opac = torch.where(in_list, flat_opac[ids], torch.zeros_like(flat_opac[ids]))  # padding: alpha 0
        alphas = gaussian_alphas(pixels, flat_means2d[ids], flat_conics[ids], opac)   # [T, 256, L]
        return composite(alphas, flat_colors[ids], flat_depths[ids])

    # Busy tiles sorted by list length, cut into chunks of about chunk_elements evaluations.
    busy = torch.nonzero(counts).flatten()
    busy = busy[torch.argsort(counts[busy])]
    busy_counts = counts[busy].tolist()
    outputs, start = [], 0
    while start < len(busy_counts):
        stop = start + 1
        while stop < len(busy_counts) and (stop + 1 - start) * PIXELS_PER_TILE * busy_counts[stop] <= chunk_elements:
            stop += 1
        outputs.append(blend(busy[start:stop], busy_counts[stop - 1]))
        start = stop
    if not outputs:  # nothing drawn: an empty blend still links the outputs to the inputs (zero grads)
        outputs.append(blend(busy, 0))

    dtype, device = proj.means2d.dtype, proj.means2d.device
    rgb = torch.zeros(n * tiles_per_view, PIXELS_PER_TILE, 3, dtype=dtype, device=device)
    trans = torch.ones(n * tiles_per_view, PIXELS_PER_TILE, dtype=dtype, device=device)
    depth = torch.zeros(n * tiles_per_view, PIXELS_PER_TILE, dtype=dtype, device=device)
    order = busy  # chunks were taken from ``busy`` in order
    rgb = rgb.index_copy(0, order, torch.cat([o[0] for o in outputs]))
    trans = trans.index_copy(0, order, torch.cat([o[1] for o in outputs]))
    depth = depth.index_copy(0, order, torch.cat([o[2] for o in outputs]))

    def to_image(x):  # [N*tiles, 256, C] -> [N, H, W, C]
        c = x.shape[-1]
        x = x.reshape(n, tiles_y, tiles_x, TILE_SIZE, TILE_SIZE, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(n, tiles_y * TILE_SIZE, tiles_x * TILE_SIZE, c)[:, :height, :width]

    return to_image(rgb), to_image(trans[..., None])[..., 0], to_image(depth[..., None])[..., 0]


def rasterize_dense(proj: Projection, colors: torch.Tensor, opacities: torch.Tensor, width: int, height: int):
    """Tile-free compositing: every visible Gaussian evaluated at every pixel (small scenes only).

    Same outputs as ``rasterize_tiles``; it shares the per-pixel formula but none of the tiling.
    """
    n, g = proj.depths.shape
    visible = (proj.radii > 0).all(-1)                                        # [N, G]
    order = torch.argsort(torch.where(visible, proj.depths, torch.full_like(proj.depths, math.inf)), dim=-1, stable=True)
    take = lambda x: torch.gather(x, 1, order.reshape(n, g, *([1] * (x.dim() - 2))).expand_as(x))  # noqa: E731
    opac = torch.where(visible, opacities, torch.zeros_like(opacities))       # culled: alpha 0
    conics = torch.where(visible[..., None], proj.conics, torch.zeros_like(proj.conics))
    ys, xs = torch.meshgrid(torch.arange(height, device=colors.device), torch.arange(width, device=colors.device), indexing="ij")
    pixels = torch.stack([xs, ys], dim=-1).reshape(1, -1, 2).to(colors.dtype) + 0.5  # [1, H*W, 2]
    alphas = gaussian_alphas(pixels, take(proj.means2d), take(conics), take(opac))   # [N, H*W, G]
    rgb, trans, depth = composite(alphas, take(colors), take(proj.depths))
    return rgb.reshape(n, height, width, 3), trans.reshape(n, height, width), depth.reshape(n, height, width)


def render(means, quats, scales, opacities, sh0, world2cam, K, width: int, height: int,
           background: torch.Tensor | None = None, tiled: bool = True):
    """Reference render of N views.

    means: [N, G, 3], quats: [N, G, 4], scales: [N, G, 3], opacities: [N, G], sh0: [N, G, 3],
    world2cam: [N, 4, 4], K: [N, 3, 3], background: [N, 3] or None (black)
    -> rgb [N, H, W, 3], alpha [N, H, W, 1], depth [N, H, W, 1] (expected depth, gsplat "ED").
    """
    proj = project_gaussians(means, quats, scales, opacities, world2cam, K, width, height)
    colors = colors_from_sh0(sh0)
    blend = rasterize_tiles if tiled else rasterize_dense
    rgb, trans, depth_sum = blend(proj, colors, opacities, width, height)
    alpha = 1.0 - trans[..., None]                                            # [N, H, W, 1]
    if background is not None:
        rgb = rgb + trans[..., None] * background[:, None, None, :]
    depth = depth_sum[..., None] / torch.clamp_min(alpha, DEPTH_ALPHA_EPS)
    return rgb, alpha, depth


def render_request(request: RenderRequest) -> RenderResult:
    """Backend entry point (registered as "reference")."""
    s, c = request.splats, request.cameras
    rgb, alpha, depth = render(s.means, s.quats, s.scales, s.opacities, s.sh0, c.world2cam, c.K,
                               request.width, request.height, request.background)
    return RenderResult(rgb=rgb, alpha=alpha, depth=depth)
