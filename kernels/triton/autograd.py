"""``torch.autograd.Function`` wrapping the Triton kernels (forward and fused backward)."""
from __future__ import annotations

import torch
import triton

from ..constants import TILE_SIZE
from . import binning, blend, config, projection


def _project(means, quats, scales, opacities, world2cam, K, width, height, tiles_x, tiles_y):
    n, g = opacities.shape
    total = n * g
    dev = means.device
    means2d = torch.empty(total, 2, dtype=torch.float32, device=dev)
    conics = torch.empty(total, 3, dtype=torch.float32, device=dev)
    depths = torch.empty(total, dtype=torch.float32, device=dev)
    radii = torch.zeros(total, 2, dtype=torch.int32, device=dev)
    rects = torch.zeros(total, 4, dtype=torch.int32, device=dev)
    counts = torch.zeros(total, dtype=torch.int32, device=dev)
    if total:
        projection.project_fwd_kernel[(triton.cdiv(total, config.PROJECT_BLOCK),)](
            means, quats, scales, opacities,
            means.stride(0), means.stride(1), quats.stride(0), quats.stride(1),
            scales.stride(0), scales.stride(1), opacities.stride(0), opacities.stride(1),
            world2cam, K, means2d, conics, depths, radii, rects, counts,
            g, total, width, height, tiles_x, tiles_y, BLOCK=config.PROJECT_BLOCK)
    return means2d, conics, depths, radii, rects, counts


def _check_strides(*tensors):
    # Kernels index [N, G, C] inputs as base + n*stride0 + g*stride1 + c: the channel stride must be 1.
    return [t if t.stride(-1) == 1 else t.contiguous() for t in tensors]


def rasterize_forward(means, quats, scales, opacities, colors, world2cam, K, background, width, height,
                      capacity: int = 0):
    """The forward kernels. Inputs [N, G, *] (broadcasts welcome) -> rgb [N,H,W,3], alpha [N,H,W],
    depth_sum [N,H,W], the intersection count (binning.bin_gaussians: an int, or with ``capacity`` a device
    tensor), and what the backward needs (tensors, shape)."""
    means, quats, scales = _check_strides(means, quats, scales)
    world2cam, K, background = world2cam.contiguous(), K.contiguous(), background.contiguous()
    colors = colors.contiguous()
    n, g = opacities.shape
    tiles_x, tiles_y = triton.cdiv(width, TILE_SIZE), triton.cdiv(height, TILE_SIZE)
    tiles_per_view = tiles_x * tiles_y
    num_tiles = n * tiles_per_view
    means2d, conics, depths, radii, rects, counts = _project(
        means, quats, scales, opacities, world2cam, K, width, height, tiles_x, tiles_y)
    flat_ids, tile_start, tile_end, intersections = binning.bin_gaussians(
        depths, rects, counts, g, tiles_x, num_tiles, tiles_per_view, capacity)

    dev = means.device
    rgb = torch.empty(n, height, width, 3, dtype=torch.float32, device=dev)
    alpha = torch.empty(n, height, width, dtype=torch.float32, device=dev)
    depth_sum = torch.empty(n, height, width, dtype=torch.float32, device=dev)
    trans = torch.empty(n, height, width, dtype=torch.float32, device=dev)
    last = torch.empty(n, height, width, dtype=torch.int32, device=dev)
    flat_opac = opacities.contiguous().reshape(-1)
    batch = config.BLEND_BATCH
    blend.blend_fwd_kernel[(num_tiles,)](
        means2d, conics, flat_opac, colors, depths, flat_ids, tile_start, tile_end, background,
        rgb, alpha, depth_sum, trans, last, width, height, tiles_x, tiles_per_view,
        TILE=TILE_SIZE, BATCH=batch, num_warps=config.BLEND_WARPS)
    saved = (means, quats, scales, flat_opac, colors, world2cam, K, background,
             means2d, conics, depths, radii, flat_ids, tile_start, trans, last)
    shape = (n, g, width, height, tiles_x, tiles_per_view, num_tiles, batch)
    return rgb, alpha, depth_sum, intersections, saved, shape


class RasterizeFunction(torch.autograd.Function):
    """Inputs [N, G, *] (broadcasts welcome); returns rgb [N,H,W,3], alpha [N,H,W], depth_sum [N,H,W]. The sort is
    sized exactly: the backward needs every intersection."""

    @staticmethod
    def forward(ctx, means, quats, scales, opacities, colors, world2cam, K, background, width, height):
        rgb, alpha, depth_sum, _, saved, ctx.shape = rasterize_forward(
            means, quats, scales, opacities, colors, world2cam, K, background, width, height)
        ctx.save_for_backward(*saved)
        return rgb, alpha, depth_sum

    @staticmethod
    def backward(ctx, v_rgb, v_alpha, v_depth_sum):
        (means, quats, scales, flat_opac, colors, world2cam, K, background,
         means2d, conics, depths, radii, flat_ids, tile_start, trans, last) = ctx.saved_tensors
        n, g, width, height, tiles_x, tiles_per_view, num_tiles, batch = ctx.shape
        dev = means.device
        total = n * g
        v_means2d = torch.zeros(total, 2, dtype=torch.float32, device=dev)
        v_conics = torch.zeros(total, 3, dtype=torch.float32, device=dev)
        v_opac = torch.zeros(total, dtype=torch.float32, device=dev)
        v_colors = torch.zeros(total, 3, dtype=torch.float32, device=dev)
        v_depths = torch.zeros(total, dtype=torch.float32, device=dev)
        blend.blend_bwd_kernel[(num_tiles,)](
            means2d, conics, flat_opac, colors, depths, flat_ids, tile_start, background, trans, last,
            v_rgb.contiguous(), v_alpha.contiguous(), v_depth_sum.contiguous(),
            v_means2d, v_conics, v_opac, v_colors, v_depths,
            width, height, tiles_x, tiles_per_view, TILE=TILE_SIZE, BATCH=batch, num_warps=config.BLEND_WARPS)

        v_means = torch.zeros(n, g, 3, dtype=torch.float32, device=dev)
        v_quats = torch.zeros(n, g, 4, dtype=torch.float32, device=dev)
        v_scales = torch.zeros(n, g, 3, dtype=torch.float32, device=dev)
        if total and any(ctx.needs_input_grad[:3]):
            projection.project_bwd_kernel[(triton.cdiv(total, config.PROJECT_BLOCK),)](
                means, quats, scales,
                means.stride(0), means.stride(1), quats.stride(0), quats.stride(1),
                scales.stride(0), scales.stride(1),
                world2cam, K, radii, v_means2d, v_conics, v_depths, v_means, v_quats, v_scales,
                g, total, width, height, BLOCK=config.PROJECT_BLOCK)
        v_background = None
        if ctx.needs_input_grad[7]:      # rgb = C + T bg, trans = final T: [N, H, W]
            v_background = (v_rgb * trans[..., None]).sum(dim=(1, 2))
        # No world2cam / K gradients: the registry declares it (registry.SPLAT_AND_BACKGROUND_GRADS).
        return (v_means, v_quats, v_scales, v_opac.reshape(n, g), v_colors.reshape(n, g, 3),
                None, None, v_background, None, None)
