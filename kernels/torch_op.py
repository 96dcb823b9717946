"""``torch.ops.flexavatar.rasterize``: the native rasterizers (``cuda``, ``cpu``) as one PyTorch custom operator.

A compiled frame (``torch.compile`` of decoder → rasterizer → pixel format, as the runtime's "torch-compile" engine
builds it) calls the rasterizer through this operator: Dynamo and Inductor see an opaque call with known output
shapes (its fake implementation), and on CUDA the whole frame is replayed as CUDA graphs, so a frame's host work is
one call instead of the rasterizer's Python wrapper, argument checks and ~15 launches. On CUDA the operator must be
sync-free to be captured: ``capacity`` > 0 sorts that many intersection slots and ``count`` comes back on the device
(see ``rasterize(intersection_capacity=)``); ``capacity`` = 0 sizes the sort exactly, a host sync (not capturable:
run it eagerly). On the CPU ``capacity`` is ignored and ``count`` is -1 (the CPU rasterizer does not sort slots).

No argument checks beyond the native module's (shapes, dtypes, devices): the caller is ``kernels.rasterize``'s peer,
not its replacement; it passes checked arrays. Forward only (inference).
Importing this module imports neither torch nor the native module; ``rasterize_op()`` registers the operator.
"""
from __future__ import annotations

import functools
import threading

from .constants import EPS2D, FAR_PLANE, NEAR_PLANE
from .native import _cuda_forward, native_module


_REGISTRATION = threading.Lock()


def rasterize_op():
    """``torch.ops.flexavatar.rasterize.default``, registered once (threads that ask at once wait for it)."""
    with _REGISTRATION:
        return _register_rasterize_op()


@functools.cache
def _register_rasterize_op():
    """``torch.ops.flexavatar.rasterize.default``:
    (means [B,G,3], quats [B,G,4], scales [B,G,3], opacities [B,G], sh0 [B,G,3], viewmats [B,C,4,4], ks [B,C,3,3],
    backgrounds [B,C,3], width, height, capacity) → (image [B,C,H,W,3], alpha [B,C,H,W], depth [B,C,H,W],
    count int64 [1]); float32 inputs, all on one device."""
    import torch

    # the schema spelled out: this module's annotations are strings (``from __future__ import annotations``)
    @torch.library.custom_op("flexavatar::rasterize", mutates_args=(), device_types=("cuda", "cpu"), schema=(
        "(Tensor means, Tensor quats, Tensor scales, Tensor opacities, Tensor sh0, Tensor viewmats, Tensor ks, "
        "Tensor backgrounds, int width, int height, int capacity) -> (Tensor, Tensor, Tensor, Tensor)"))
    def rasterize(means, quats, scales, opacities, sh0, viewmats, ks, backgrounds, width, height, capacity):
        inputs = tuple(t.detach().contiguous() for t in (means, quats, scales, opacities, sh0, viewmats, ks,
                                                         backgrounds))
        native = native_module()
        if means.is_cuda:
            count = torch.empty(1, dtype=torch.int64, device=means.device)
            state, image, alpha, depth = _cuda_forward(torch, native, inputs, width, height,
                                                       count if capacity else None, capacity)
            if not capacity:
                count.fill_(state.num_intersections)        # on the host already: the exact sort read it back
            state.release()
            return image, alpha, depth, count
        image, alpha, depth = native.rasterize_cpu(*(t.numpy() for t in inputs[:7]), width, height,
                                                   inputs[7].numpy(), eps2d=EPS2D, near_plane=NEAR_PLANE,
                                                   far_plane=FAR_PLANE, num_threads=0)
        return (torch.from_numpy(image), torch.from_numpy(alpha), torch.from_numpy(depth),
                torch.full((1,), -1, dtype=torch.int64))

    @rasterize.register_fake
    def _(means, quats, scales, opacities, sh0, viewmats, ks, backgrounds, width, height, capacity):
        b, c = means.shape[0], viewmats.shape[1]
        return (means.new_empty((b, c, height, width, 3)), means.new_empty((b, c, height, width)),
                means.new_empty((b, c, height, width)), means.new_empty((1,), dtype=torch.int64))

    return torch.ops.flexavatar.rasterize.default


__all__ = ["rasterize_op"]
