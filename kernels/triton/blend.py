"""Per-tile front-to-back blending (forward) and its reverse traversal (backward).

One program per 16x16 tile: a [256 pixels, BATCH Gaussians] block per step. Transmittance
inside a batch is an inclusive ``tl.cumprod`` along the Gaussian axis (an associative scan), so
the sequential compositing rule becomes data-parallel; the loop stops as soon as every pixel of
the tile is done (early termination), as gsplat's kernel does.

Backward walks each tile's list back to front from the last drawn Gaussian, rebuilding each
Gaussian's transmittance from the final one (``T_before = T_after / prod(1 - alpha)``), and
atomically adds per-Gaussian gradients (summed over the tile's pixels first).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .. import constants
from .combine import MAX, MIN, PROD, SUM

# Kernels may only read globals that are tl.constexpr.
ALPHA_MAX = tl.constexpr(constants.ALPHA_MAX)
ALPHA_MIN = tl.constexpr(constants.ALPHA_MIN)
TRANSMITTANCE_MIN = tl.constexpr(constants.TRANSMITTANCE_MIN)


@triton.jit
def _tile_pixels(tile, width, height, tiles_x, tiles_per_view, TILE: tl.constexpr):
    view = tile // tiles_per_view
    local = tile % tiles_per_view
    offs = tl.arange(0, TILE * TILE)
    px = (local % tiles_x) * TILE + offs % TILE
    py = (local // tiles_x) * TILE + offs // TILE
    inside = (px < width) & (py < height)
    pixel = (view * height + py) * width + px                    # index into [N, H, W]
    return view, px.to(tl.float32) + 0.5, py.to(tl.float32) + 0.5, inside, pixel


@triton.jit
def _gaussian_alpha(gid, valid, means2d_ptr, conics_ptr, opac_ptr, px, py):
    """sigma, exp(-sigma) and raw alpha o*exp(-sigma) of a batch of Gaussians at the tile's pixels."""
    mu = tl.load(means2d_ptr + gid * 2 + 0, mask=valid, other=0.0)
    mv = tl.load(means2d_ptr + gid * 2 + 1, mask=valid, other=0.0)
    ca = tl.load(conics_ptr + gid * 3 + 0, mask=valid, other=0.0)
    cb = tl.load(conics_ptr + gid * 3 + 1, mask=valid, other=0.0)
    cc = tl.load(conics_ptr + gid * 3 + 2, mask=valid, other=0.0)
    opac = tl.load(opac_ptr + gid, mask=valid, other=0.0)
    dx = mu[None, :] - px[:, None]                                # [P, B]
    dy = mv[None, :] - py[:, None]
    sigma = 0.5 * (ca[None, :] * dx * dx + cc[None, :] * dy * dy) + cb[None, :] * dx * dy
    vis = tl.exp(-sigma)
    return dx, dy, ca, cb, cc, sigma, vis, opac[None, :] * vis


@triton.jit
def blend_fwd_kernel(
    means2d_ptr, conics_ptr, opac_ptr, colors_ptr, depths_ptr,  # [N*G, *] contiguous
    flat_ids_ptr, tile_start_ptr, tile_end_ptr, bg_ptr,         # [I], [tiles], [tiles], [N, 3]
    rgb_ptr, alpha_ptr, depth_ptr, trans_ptr, last_ptr,         # [N, H, W, 3], [N, H, W] x 4
    width, height, tiles_x, tiles_per_view,
    TILE: tl.constexpr, BATCH: tl.constexpr,
):
    tile = tl.program_id(0)
    view, px, py, inside, pixel = _tile_pixels(tile, width, height, tiles_x, tiles_per_view, TILE)
    start = tl.load(tile_start_ptr + tile)
    end = tl.load(tile_end_ptr + tile)

    trans = tl.full([TILE * TILE], 1.0, tl.float32)
    acc_r = tl.zeros([TILE * TILE], tl.float32)
    acc_g = tl.zeros([TILE * TILE], tl.float32)
    acc_b = tl.zeros([TILE * TILE], tl.float32)
    acc_d = tl.zeros([TILE * TILE], tl.float32)
    last = tl.zeros([TILE * TILE], tl.int32)                      # 1 + list index of the last drawn
    done = inside == 0                                            # pixels off the image never block
    k = start
    alive = tl.reduce(inside.to(tl.int32), 0, SUM)
    while (k < end) & (alive > 0):
        idx = k + tl.arange(0, BATCH)
        valid = idx < end
        gid = tl.load(flat_ids_ptr + idx, mask=valid, other=0)
        _, _, _, _, _, sigma, _, alpha = _gaussian_alpha(gid, valid, means2d_ptr, conics_ptr, opac_ptr, px, py)
        alpha = tl.minimum(alpha, ALPHA_MAX)
        keep = (sigma >= 0) & (alpha >= ALPHA_MIN) & valid[None, :] & (done == 0)[:, None]
        alpha = tl.where(keep, alpha, 0.0)
        trans_after = trans[:, None] * tl.associative_scan(1.0 - alpha, 1, PROD)      # T after each Gaussian
        drawn = keep & (trans_after > TRANSMITTANCE_MIN)
        weight = tl.where(drawn, alpha * (trans_after / (1.0 - alpha)), 0.0)  # alpha * T before
        cr = tl.load(colors_ptr + gid * 3 + 0, mask=valid, other=0.0)
        cg = tl.load(colors_ptr + gid * 3 + 1, mask=valid, other=0.0)
        cb = tl.load(colors_ptr + gid * 3 + 2, mask=valid, other=0.0)
        z = tl.load(depths_ptr + gid, mask=valid, other=0.0)
        acc_r += tl.reduce(weight * cr[None, :], 1, SUM)
        acc_g += tl.reduce(weight * cg[None, :], 1, SUM)
        acc_b += tl.reduce(weight * cb[None, :], 1, SUM)
        acc_d += tl.reduce(weight * z[None, :], 1, SUM)
        last = tl.maximum(last, tl.reduce(tl.where(drawn, idx[None, :] + 1, 0), 1, MAX))
        # A pixel is done once some Gaussian would bring T to <= 1e-4 (it is not drawn).
        done = done | (tl.reduce(trans_after, 1, MIN) <= TRANSMITTANCE_MIN)
        trans = tl.reduce(tl.where(drawn, trans_after, trans[:, None]), 1, MIN)
        alive = tl.reduce((done == 0).to(tl.int32), 0, SUM)
        k += BATCH

    bg_r = tl.load(bg_ptr + view * 3 + 0)
    bg_g = tl.load(bg_ptr + view * 3 + 1)
    bg_b = tl.load(bg_ptr + view * 3 + 2)
    tl.store(rgb_ptr + pixel * 3 + 0, acc_r + trans * bg_r, mask=inside)
    tl.store(rgb_ptr + pixel * 3 + 1, acc_g + trans * bg_g, mask=inside)
    tl.store(rgb_ptr + pixel * 3 + 2, acc_b + trans * bg_b, mask=inside)
    tl.store(alpha_ptr + pixel, 1.0 - trans, mask=inside)
    tl.store(depth_ptr + pixel, acc_d, mask=inside)
    tl.store(trans_ptr + pixel, trans, mask=inside)
    tl.store(last_ptr + pixel, last, mask=inside)


@triton.jit
def blend_bwd_kernel(
    means2d_ptr, conics_ptr, opac_ptr, colors_ptr, depths_ptr,
    flat_ids_ptr, tile_start_ptr, bg_ptr, trans_ptr, last_ptr,
    v_rgb_ptr, v_alpha_ptr, v_depth_ptr,                          # output gradients
    v_means2d_ptr, v_conics_ptr, v_opac_ptr, v_colors_ptr, v_depths_ptr,  # [N*G, *] accumulators
    width, height, tiles_x, tiles_per_view,
    TILE: tl.constexpr, BATCH: tl.constexpr,
):
    tile = tl.program_id(0)
    view, px, py, inside, pixel = _tile_pixels(tile, width, height, tiles_x, tiles_per_view, TILE)
    start = tl.load(tile_start_ptr + tile)
    last = tl.load(last_ptr + pixel, mask=inside, other=0)
    t_final = tl.load(trans_ptr + pixel, mask=inside, other=1.0)
    g_r = tl.load(v_rgb_ptr + pixel * 3 + 0, mask=inside, other=0.0)
    g_g = tl.load(v_rgb_ptr + pixel * 3 + 1, mask=inside, other=0.0)
    g_b = tl.load(v_rgb_ptr + pixel * 3 + 2, mask=inside, other=0.0)
    g_d = tl.load(v_depth_ptr + pixel, mask=inside, other=0.0)
    # rgb = C + T bg and alpha = 1 - T: the gradient reaching the final transmittance T.
    g_t = (g_r * tl.load(bg_ptr + view * 3 + 0) + g_g * tl.load(bg_ptr + view * 3 + 1)
           + g_b * tl.load(bg_ptr + view * 3 + 2) - tl.load(v_alpha_ptr + pixel, mask=inside, other=0.0))

    trans = t_final                                               # T after the current batch
    behind_r = tl.zeros([TILE * TILE], tl.float32)                # sum of w c of Gaussians behind
    behind_g = tl.zeros([TILE * TILE], tl.float32)
    behind_b = tl.zeros([TILE * TILE], tl.float32)
    behind_d = tl.zeros([TILE * TILE], tl.float32)
    stop = tl.reduce(last, 0, MAX)
    num_batches = tl.cdiv(stop - start, BATCH)
    for step in range(0, num_batches):
        idx = start + (num_batches - 1 - step) * BATCH + tl.arange(0, BATCH)
        valid = idx < stop
        gid = tl.load(flat_ids_ptr + idx, mask=valid, other=0)
        dx, dy, ca, cb, cc, sigma, vis, raw_alpha = _gaussian_alpha(gid, valid, means2d_ptr, conics_ptr, opac_ptr, px, py)
        alpha = tl.minimum(raw_alpha, ALPHA_MAX)
        drawn = (sigma >= 0) & (alpha >= ALPHA_MIN) & (idx[None, :] < last[:, None])
        alpha = tl.where(drawn, alpha, 0.0)
        one_minus = 1.0 - alpha
        suffix = tl.associative_scan(one_minus, 1, PROD, reverse=True)      # prod_{j >= k in batch} (1 - a_j)
        t_before = trans[:, None] / suffix
        weight = alpha * t_before
        cr = tl.load(colors_ptr + gid * 3 + 0, mask=valid, other=0.0)
        cg = tl.load(colors_ptr + gid * 3 + 1, mask=valid, other=0.0)
        cbl = tl.load(colors_ptr + gid * 3 + 2, mask=valid, other=0.0)
        z = tl.load(depths_ptr + gid, mask=valid, other=0.0)
        wr = weight * cr[None, :]
        wg = weight * cg[None, :]
        wb = weight * cbl[None, :]
        wd = weight * z[None, :]
        # Contributions of the Gaussians behind k: earlier batches' sums + this batch's suffix.
        s_r = behind_r[:, None] + tl.associative_scan(wr, 1, SUM, reverse=True) - wr
        s_g = behind_g[:, None] + tl.associative_scan(wg, 1, SUM, reverse=True) - wg
        s_b = behind_b[:, None] + tl.associative_scan(wb, 1, SUM, reverse=True) - wb
        s_d = behind_d[:, None] + tl.associative_scan(wd, 1, SUM, reverse=True) - wd
        inv_one_minus = 1.0 / one_minus
        v_alpha = (g_r[:, None] * (cr[None, :] * t_before - s_r * inv_one_minus)
                   + g_g[:, None] * (cg[None, :] * t_before - s_g * inv_one_minus)
                   + g_b[:, None] * (cbl[None, :] * t_before - s_b * inv_one_minus)
                   + g_d[:, None] * (z[None, :] * t_before - s_d * inv_one_minus)
                   - g_t[:, None] * t_final[:, None] * inv_one_minus)
        # alpha = min(0.99, o exp(-sigma)): no gradient through the clamp.
        live = drawn & (raw_alpha <= ALPHA_MAX)
        v_sigma = tl.where(live, -v_alpha * alpha, 0.0)
        v_o = tl.reduce(tl.where(live, v_alpha * vis, 0.0), 0, SUM)
        v_ca = tl.reduce(0.5 * v_sigma * dx * dx, 0, SUM)
        v_cb = tl.reduce(v_sigma * dx * dy, 0, SUM)
        v_cc = tl.reduce(0.5 * v_sigma * dy * dy, 0, SUM)
        v_mu = tl.reduce(v_sigma * (ca[None, :] * dx + cb[None, :] * dy), 0, SUM)
        v_mv = tl.reduce(v_sigma * (cb[None, :] * dx + cc[None, :] * dy), 0, SUM)
        tl.atomic_add(v_means2d_ptr + gid * 2 + 0, v_mu, mask=valid)
        tl.atomic_add(v_means2d_ptr + gid * 2 + 1, v_mv, mask=valid)
        tl.atomic_add(v_conics_ptr + gid * 3 + 0, v_ca, mask=valid)
        tl.atomic_add(v_conics_ptr + gid * 3 + 1, v_cb, mask=valid)
        tl.atomic_add(v_conics_ptr + gid * 3 + 2, v_cc, mask=valid)
        tl.atomic_add(v_opac_ptr + gid, v_o, mask=valid)
        tl.atomic_add(v_colors_ptr + gid * 3 + 0, tl.reduce(g_r[:, None] * weight, 0, SUM), mask=valid)
        tl.atomic_add(v_colors_ptr + gid * 3 + 1, tl.reduce(g_g[:, None] * weight, 0, SUM), mask=valid)
        tl.atomic_add(v_colors_ptr + gid * 3 + 2, tl.reduce(g_b[:, None] * weight, 0, SUM), mask=valid)
        tl.atomic_add(v_depths_ptr + gid, tl.reduce(g_d[:, None] * weight, 0, SUM), mask=valid)
        # Step the state to before this batch.
        trans = trans / tl.reduce(suffix, 1, MIN)
        behind_r += tl.reduce(wr, 1, SUM)
        behind_g += tl.reduce(wg, 1, SUM)
        behind_b += tl.reduce(wb, 1, SUM)
        behind_d += tl.reduce(wd, 1, SUM)

