"""Tile binning: the Gaussians sorted by depth, one tile key per tile each touches, in that order, sorted by
tile, then per-tile ranges.

Depth first: the (view, Gaussian)s are sorted once by the float32 bits of their depth (depth >= near > 0, so the
bit pattern orders like the float; Gaussians that touch no tile may sit anywhere), then each emits int32 keys
``global tile id`` in that order, and a stable sort by tile keeps every tile's Gaussians front to back, equal
depths in Gaussian order, as in the reference. That is the order of one sort of int64 ``(tile << 32) | depth``
keys over all intersections (the form before), with int32 keys: half the bytes and half the radix passes over
the intersections. Triton has no device-wide sort (``tl.sort`` sorts inside one program's block only), so the
sorts are ``torch.sort`` (CUB radix sorts on CUDA), stable.

Sized exactly, the key buffer needs the number of intersections on the host (a sync). With a capacity (the
contract of ``rasterize(intersection_capacity=N)``) it has N slots instead, unused ones holding the largest int32
(past every real tile, so it sorts last and no tile's range covers it), intersections past N are dropped, and the
exact count stays on the device.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import config


@triton.jit
def emit_keys_kernel(
    order_ptr, rect_ptr, counts_ptr, offsets_ptr,    # [N*G] depth order, [N*G, 4], [N*G], [N*G] (exclusive, in order)
    keys_ptr, ids_ptr,                                # [I] outputs
    num_gaussians, total, tiles_x, tiles_per_view, slots,
    BLOCK: tl.constexpr,
):
    k = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)   # place in the depth order
    mask = k < total
    i = tl.load(order_ptr + k, mask=mask, other=0)        # the (view, Gaussian) there
    count = tl.load(counts_ptr + i, mask=mask, other=0)
    first = tl.load(offsets_ptr + k, mask=mask, other=0)
    x0 = tl.load(rect_ptr + i * 4 + 0, mask=mask, other=0)
    y0 = tl.load(rect_ptr + i * 4 + 1, mask=mask, other=0)
    x1 = tl.load(rect_ptr + i * 4 + 2, mask=mask, other=1)
    span_x = tl.maximum(x1 - x0, 1)
    view_base = (i // num_gaussians) * tiles_per_view
    # Each lane writes its own Gaussian's tiles; the loop runs to the block's largest count.
    for j in range(0, tl.max(count)):
        write = mask & (j < count) & (first + j < slots)
        tile = view_base + (y0 + j // span_x) * tiles_x + (x0 + j % span_x)
        tl.store(keys_ptr + first + j, tile.to(tl.int32), mask=write)
        tl.store(ids_ptr + first + j, i.to(tl.int32), mask=write)


def bin_gaussians(depths: torch.Tensor, rects: torch.Tensor, counts: torch.Tensor, num_gaussians: int,
                  tiles_x: int, num_tiles: int, tiles_per_view: int, capacity: int = 0):
    """-> flat_ids [I] int32 (sorted by tile, then depth), tile_start [num_tiles], tile_end [num_tiles], and the
    number of intersections: an int (capacity 0: sized exactly, after a host sync) or an int64 [1] tensor on the
    device (capacity > 0: I = capacity slots, no sync; above the capacity, intersections were dropped)."""
    device = depths.device
    total = counts.numel()
    if num_tiles >= torch.iinfo(torch.int32).max:
        raise ValueError(f"views x tiles: expected fewer than 2^31 - 1 per call, got {num_tiles}")
    # front to back (Gaussians that touch no tile have count 0: their place is moot)
    order = torch.sort(depths.reshape(-1).view(torch.int32), stable=True).indices
    counts_in_order = counts[order]
    ends = torch.cumsum(counts_in_order, 0, dtype=torch.int64)
    if capacity:
        count = ends[-1:].clone() if total else torch.zeros(1, dtype=torch.int64, device=device)
        slots = capacity
    else:
        count = slots = int(ends[-1]) if total else 0      # the host sync: size of the key buffer
    if slots == 0:
        empty = torch.zeros(num_tiles, dtype=torch.int32, device=device)
        return torch.zeros(1, dtype=torch.int32, device=device), empty, empty, count
    keys = torch.full((slots,), torch.iinfo(torch.int32).max, dtype=torch.int32, device=device)
    ids = torch.zeros(slots, dtype=torch.int32, device=device)
    if total:
        emit_keys_kernel[(triton.cdiv(total, config.EMIT_BLOCK),)](
            order, rects, counts, ends - counts_in_order, keys, ids,
            num_gaussians, total, tiles_x, tiles_per_view, slots, BLOCK=config.EMIT_BLOCK)
    keys, by_tile = torch.sort(keys, stable=True)
    flat_ids = ids[by_tile]
    bounds = torch.searchsorted(keys, torch.arange(num_tiles + 1, device=device, dtype=torch.int32))
    bounds = bounds.to(torch.int32)
    return flat_ids, bounds[:-1].contiguous(), bounds[1:].contiguous(), count
