"""How many (tile, Gaussian) intersections the GPU rasterizer sorts, so that a frame needs no host sync.

The CUDA rasterizer sizes its sort either exactly, by reading the intersection count back to the host (a
synchronisation in the middle of the frame: the host cannot queue the next frame's decoder while the GPU
rasterizes), or to a capacity given in advance (``kernels.rasterize(intersection_capacity=N)``: no
synchronisation; the exact count comes back on the device). ``IntersectionBudget`` is the runtime's policy:

* the first frame of a runtime is sized exactly, which measures the count;
* later frames sort a capacity sized at ``HEADROOM`` × the largest count per view seen so far (a multiple of
  ``GRANULE`` slots, at least ``MIN_SLOTS``). It stays put while the largest count is within ``1 / REFIT`` of it,
  and is sized again once it is not: the same size frame after frame (the pool allocator reuses the same blocks),
  between 1.5× and 2× the largest count (2.9× on average with the powers of two before). Compiled frames, which
  are compiled per capacity, round it up to a power of two (the same compilation across runs);
* a frame over its capacity is found when its pixels are read back with its count (one host sync, which the
  caller asked for anyway) and rendered again exactly; the budget then grows. Frames left on the device
  (``output="device"``) have no such sync: their counts are checked at a later call of the runtime, once their
  frame is done (past three outstanding, the oldest is waited for), and an incomplete one is reported
  (``IncompleteFrameWarning``), not repaired: the caller may have used it already.

The sort's cost grows with its capacity (a radix sort over every slot, sentinels too).
"""
from __future__ import annotations

import math
import threading
import warnings

import numpy as np

from flexavatar.kernels.arrays import TORCH, array_kind
from flexavatar.kernels.validation import MAX_INTERSECTION_CAPACITY


class IncompleteFrameWarning(RuntimeWarning):
    """A frame handed out on the device was rendered with too few intersection slots (some Gaussians missing)."""


class IntersectionBudget:
    """Capacity of the next sync-free render, from the counts observed so far (thread-safe)."""

    HEADROOM = 2.0        # slots per largest count seen, when the capacity is sized
    REFIT = 1.5           # sized again once the largest count × REFIT exceeds the capacity
    MIN_SLOTS = 1 << 16
    GRANULE = 1 << 16     # capacities are multiples of this

    def __init__(self, sync_free: bool = True):
        self._lock = threading.Lock()
        self.sync_free = sync_free   # False: every render sized exactly (a host sync in each frame, as before)
        self.per_view = 0            # the largest count per view seen (0: none yet, the next render is exact)
        self.slots_per_view = 0.0    # the capacity per view, sized at HEADROOM × per_view
        self.rerenders = 0           # frames rendered again because they did not fit
        self.incomplete = 0          # device frames found over their capacity after they were handed out

    def capacity(self, views: int) -> int:
        """Slots for a render of ``views`` views; 0 = size it exactly (nothing measured yet, or too many)."""
        with self._lock:
            if self.per_view == 0 or not self.sync_free:
                return 0
            if self.per_view * self.REFIT > self.slots_per_view:
                self.slots_per_view = self.per_view * self.HEADROOM
            need = max(self.MIN_SLOTS, math.ceil(self.slots_per_view * views))
        slots = -(-need // self.GRANULE) * self.GRANULE
        return slots if slots <= MAX_INTERSECTION_CAPACITY else 0

    def observe(self, count: int, views: int) -> None:
        """Record an exact count of a render of ``views`` views."""
        with self._lock:
            self.per_view = max(self.per_view, math.ceil(count / max(views, 1)))

    def rerendered(self) -> None:
        with self._lock:
            self.rerenders += 1

    def report_incomplete(self, count: int, capacity: int) -> None:
        with self._lock:
            self.incomplete += 1
        warnings.warn(IncompleteFrameWarning(
            f"a frame rendered to the device needed {count} tile/Gaussian intersection slots but had {capacity}: "
            f"some Gaussians were missing from it. The capacity has grown; render with output='uint8' or 'float' "
            f"for frames that are checked (and rendered again) before they are handed out"), stacklevel=3)

    def describe(self) -> str:
        with self._lock:
            return (f"intersections per view ≤ {self.per_view}, {self.rerenders} frame(s) rendered again, "
                    f"{self.incomplete} incomplete device frame(s)")


class CountReadback:
    """The exact intersection count of a sync-free render, on its way to the host: a device count is copied to
    page-locked memory on the current stream (queued, no wait); ``value()`` waits for that copy only."""

    def __init__(self, count, capacity: int, views: int):
        self.capacity, self.views = capacity, views
        self._done = None
        if array_kind(count) == TORCH and count.is_cuda:
            from .gpu import copy_to_host_async
            self._host, self._done = copy_to_host_async(count)
        else:
            self._host = count

    def ready(self) -> bool:
        """Whether the count has reached the host (``value()`` would not wait)."""
        return self._done is None or self._done.query()

    def value(self) -> int:
        if self._done is not None:
            self._done.synchronize()
        return int(np.asarray(self._host.numpy() if array_kind(self._host) == TORCH else self._host).reshape(-1)[0])

    def fits(self, budget: IntersectionBudget) -> bool:
        """Whether the render had every intersection (waits for the count); records the count either way."""
        count = self.value()
        budget.observe(count, self.views)
        return count <= self.capacity


__all__ = ["IntersectionBudget", "CountReadback", "IncompleteFrameWarning"]
