"""Tile binning: one (tile, depth) key per tile a Gaussian touches, sorted, then per-tile ranges.

Keys are int64 ``(global tile id << 32) | float32 bits of depth`` (depth >= near > 0, so its bit
pattern orders like the float). Triton has no device-wide sort (``tl.sort`` sorts inside one
program's block only), so the sort step is ``torch.sort`` (a CUB radix sort on CUDA); it is
stable, so equal depths keep Gaussian order, as in the reference.

Sized exactly, the key buffer needs the number of intersections on the host (a sync). With a capacity (the
contract of ``rasterize(intersection_capacity=N)``) it has N slots instead, unused ones holding the largest int64
(its tile field is past every real tile, so it sorts last and no tile's range covers it), intersections past N
are dropped, and the exact count stays on the device.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import config


@triton.jit
def emit_keys_kernel(
    depths_ptr, rect_ptr, counts_ptr, offsets_ptr,   # [N*G], [N*G, 4], [N*G], [N*G] (exclusive)
    keys_ptr, ids_ptr,                                # [I] outputs
    num_gaussians, total, tiles_x, tiles_per_view, slots,
    BLOCK: tl.constexpr,
):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = i < total
    count = tl.load(counts_ptr + i, mask=mask, other=0)
    first = tl.load(offsets_ptr + i, mask=mask, other=0)
    x0 = tl.load(rect_ptr + i * 4 + 0, mask=mask, other=0)
    y0 = tl.load(rect_ptr + i * 4 + 1, mask=mask, other=0)
    x1 = tl.load(rect_ptr + i * 4 + 2, mask=mask, other=1)
    span_x = tl.maximum(x1 - x0, 1)
    depth_bits = tl.load(depths_ptr + i, mask=mask, other=1.0).to(tl.int32, bitcast=True).to(tl.int64)
    view_base = (i // num_gaussians) * tiles_per_view
    # Each lane writes its own Gaussian's tiles; the loop runs to the block's largest count.
    for j in range(0, tl.max(count)):
        write = mask & (j < count) & (first + j < slots)
        tile = view_base + (y0 + j // span_x) * tiles_x + (x0 + j % span_x)
        tl.store(keys_ptr + first + j, (tile.to(tl.int64) << 32) | depth_bits, mask=write)
        tl.store(ids_ptr + first + j, i, mask=write)


def bin_gaussians(depths: torch.Tensor, rects: torch.Tensor, counts: torch.Tensor, num_gaussians: int,
                  tiles_x: int, num_tiles: int, tiles_per_view: int, capacity: int = 0):
    """-> flat_ids [I] int32 (sorted by tile, then depth), tile_start [num_tiles], tile_end [num_tiles], and the
    number of intersections: an int (capacity 0: sized exactly, after a host sync) or an int64 [1] tensor on the
    device (capacity > 0: I = capacity slots, no sync; above the capacity, intersections were dropped)."""
    device = depths.device
    total = counts.numel()
    ends = torch.cumsum(counts, 0, dtype=torch.int64)
    if capacity:
        count = ends[-1:].clone() if total else torch.zeros(1, dtype=torch.int64, device=device)
        slots = capacity
    else:
        count = slots = int(ends[-1]) if total else 0      # the host sync: size of the key buffer
    if slots == 0:
        empty = torch.zeros(num_tiles, dtype=torch.int32, device=device)
        return torch.zeros(1, dtype=torch.int32, device=device), empty, empty, count
    keys = torch.full((slots,), torch.iinfo(torch.int64).max, dtype=torch.int64, device=device)
    ids = torch.zeros(slots, dtype=torch.int32, device=device)
    if total:
        emit_keys_kernel[(triton.cdiv(total, config.EMIT_BLOCK),)](
            depths, rects, counts, ends - counts, keys, ids,
            num_gaussians, total, tiles_x, tiles_per_view, slots, BLOCK=config.EMIT_BLOCK)
    keys, order = torch.sort(keys, stable=True)
    flat_ids = ids[order]
    bounds = torch.searchsorted(keys >> 32, torch.arange(num_tiles + 1, device=device, dtype=torch.int64))
    bounds = bounds.to(torch.int32)
    return flat_ids, bounds[:-1].contiguous(), bounds[1:].contiguous(), count
