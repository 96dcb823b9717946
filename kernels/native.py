"""Native backends from the C++ core (``flexavatar._native``, built from ``cpp/``).

* ``cpu``: the C++ tile rasterizer, multi-threaded; numpy arrays in and out (no torch needed), zero
  copy for contiguous float32 inputs. Forward only (not differentiable).
* ``cuda``: the CUDA rasterizer library (``libflexavatar_cuda``, loaded at run time when present);
  CUDA torch tensors are handed over zero-copy through ``__cuda_array_interface__`` (the native
  module does not link torch); forward and backward through a ``torch.autograd.Function``
  (gradients of the splats and the background; none for the cameras, so ``auto`` does not pick
  it when they require grad).

Splats shared by all views (stride 0 along N after validation's broadcast) are passed once with
the N cameras as one batch, so neither backend copies them N times.
Importing this module imports neither torch nor the native module.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .constants import EPS2D, FAR_PLANE, NEAR_PLANE
from .registry import SPLAT_AND_BACKGROUND_GRADS, register_backend
from .types import SPLAT_FIELDS, RenderRequest, RenderResult


@functools.cache
def _native_module() -> tuple[Any, str | None]:
    """(module, None) or (None, why it cannot be imported)."""
    try:
        from flexavatar import _native
    except ImportError as err:
        return None, f"the native module flexavatar._native is not built ({err})"
    return _native, None


def native_module():
    """``flexavatar._native``; raises ImportError with the reason when it is not built."""
    module, reason = _native_module()
    if module is None:
        raise ImportError(reason)
    return module


def _batch_layout(splats: list, num_views: int) -> tuple[int, int]:
    """(B, C): (1, N) when all views share the splats (broadcast, stride 0 along N), else (N, 1)."""
    shared = num_views == 1 or all(_stride0(x) == 0 for x in splats)
    return (1, num_views) if shared else (num_views, 1)


def _stride0(x) -> int:
    return x.strides[0] if isinstance(x, np.ndarray) else x.stride(0)


# ---------------------------------------------------------------------------------------------
# cpu
# ---------------------------------------------------------------------------------------------
def _cpu_availability(device: str) -> str | None:
    return _native_module()[1]


def render_cpu(request: RenderRequest, num_threads: int = 0) -> RenderResult:
    """Backend entry point "cpu": numpy float32 request -> numpy RenderResult."""
    native = native_module()
    n, h, w = request.num_views, request.height, request.width
    splats = [getattr(request.splats, f) for f in SPLAT_FIELDS]
    b, c = _batch_layout(splats, n)
    arrays = [np.ascontiguousarray(x[:b], dtype=np.float32) for x in splats]       # [B, G, ...]
    viewmats = np.ascontiguousarray(request.cameras.world2cam, dtype=np.float32).reshape(b, c, 4, 4)
    ks = np.ascontiguousarray(request.cameras.K, dtype=np.float32).reshape(b, c, 3, 3)
    background = np.ascontiguousarray(request.background, dtype=np.float32).reshape(b, c, 3)
    image, alpha, depth = native.rasterize_cpu(*arrays, viewmats, ks, w, h, background, eps2d=EPS2D,
                                               near_plane=NEAR_PLANE, far_plane=FAR_PLANE,
                                               num_threads=num_threads)
    return RenderResult(rgb=image.reshape(n, h, w, 3), alpha=alpha.reshape(n, h, w, 1),
                        depth=depth.reshape(n, h, w, 1))


# ---------------------------------------------------------------------------------------------
# cuda
# ---------------------------------------------------------------------------------------------
@functools.cache
def _cuda_library_reason() -> str | None:
    native, reason = _native_module()
    if native is None:
        return reason
    info = native.cuda_info()
    return None if info["available"] else info["reason"]


def _cuda_availability(device: str) -> str | None:
    reason = _cuda_library_reason()
    if reason is not None:
        return reason
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed (the cuda backend takes CUDA torch tensors)"
    if not torch.cuda.is_available():
        return "no CUDA device is visible to PyTorch"
    return None


def _cuda_forward(torch, native, inputs: tuple, width: int, height: int, count=None, capacity: int = 0):
    """One forward on the caller's current stream. inputs: means [B,G,3], quats [B,G,4], scales [B,G,3],
    opacities [B,G], sh0 [B,G,3], viewmats [B,C,4,4], Ks [B,C,3,3], backgrounds [B,C,3] (contiguous, detached);
    count: int64 [1] on the device, for the exact intersection count (required when capacity > 0, no host sync)
    -> (state for the backward, image [B,C,H,W,3], alpha [B,C,H,W], depth [B,C,H,W])."""
    means = inputs[0]
    b, c = means.shape[0], inputs[5].shape[1]
    image = means.new_empty((b, c, height, width, 3))
    alpha = means.new_empty((b, c, height, width))
    depth = means.new_empty((b, c, height, width))
    stream = torch.cuda.current_stream(means.device).cuda_stream
    state = native.cuda_forward(*inputs, image, alpha, depth, width, height, eps2d=EPS2D,
                                near_plane=NEAR_PLANE, far_plane=FAR_PLANE, stream=stream,
                                intersection_capacity=capacity, num_intersections_out=count)
    return state, image, alpha, depth


@functools.cache
def _rasterize_function():
    """The autograd.Function, built on first use so that torch is imported lazily."""
    import torch

    native = native_module()

    class NativeCudaRasterize(torch.autograd.Function):
        """means [B,G,3], quats [B,G,4], scales [B,G,3], opacities [B,G], sh0 [B,G,3],
        viewmats [B,C,4,4], Ks [B,C,3,3], backgrounds [B,C,3]
        -> image [B,C,H,W,3], alpha [B,C,H,W], depth [B,C,H,W]."""

        @staticmethod
        def forward(ctx, means, quats, scales, opacities, sh0, viewmats, ks, backgrounds, width, height):
            inputs = tuple(t.detach() for t in (means, quats, scales, opacities, sh0, viewmats, ks, backgrounds))
            ctx.state, image, alpha, depth = _cuda_forward(torch, native, inputs, width, height)
            ctx.save_for_backward(means, quats, scales, opacities, sh0, viewmats, ks, backgrounds, alpha)
            return image, alpha, depth

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, v_image, v_alpha, v_depth):
            means, quats, scales, opacities, sh0, viewmats, ks, backgrounds, alpha = ctx.saved_tensors
            grads = [torch.empty_like(t) for t in (means, quats, scales, opacities, sh0)]
            upstream = [None if g is None else g.detach().contiguous() for g in (v_image, v_alpha, v_depth)]
            inputs = [t.detach() for t in (means, quats, scales, opacities, sh0, viewmats, ks, backgrounds)]
            native.cuda_backward(ctx.state, *inputs, *upstream, *grads)
            v_background = None
            if ctx.needs_input_grad[7] and v_image is not None:  # image = ... + T bg
                v_background = (v_image * (1.0 - alpha)[..., None]).sum(dim=(2, 3))
            return (*grads, None, None, v_background, None, None)

    return NativeCudaRasterize


def render_cuda(request: RenderRequest) -> RenderResult:
    """Backend entry point "cuda": CUDA torch float32 request -> torch RenderResult (differentiable)."""
    import torch

    n, h, w = request.num_views, request.height, request.width
    splats = [getattr(request.splats, f) for f in SPLAT_FIELDS]
    b, c = _batch_layout(splats, n)
    inputs = (*((x if x.shape[0] == b else x[:b]).contiguous() for x in splats),
              request.cameras.world2cam.reshape(b, c, 4, 4).contiguous(),
              request.cameras.K.reshape(b, c, 3, 3).contiguous(),
              request.background.reshape(b, c, 3).contiguous())
    intersections = None
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        image, alpha, depth = _rasterize_function().apply(*inputs, w, h)       # exact sort: the backward needs it
    else:   # inference (every frame of the runtime): no autograd node, the forward state is freed at once
        inputs = tuple(t.detach() for t in inputs)      # e.g. leaves that require grad, under torch.no_grad()
        capacity = request.intersection_capacity
        count = torch.empty(1, dtype=torch.int64, device=inputs[0].device) if capacity else None
        state, image, alpha, depth = _cuda_forward(torch, native_module(), inputs, w, h, count, capacity)
        intersections = count if capacity else state.num_intersections
        state.release()
    return RenderResult(rgb=image.reshape(n, h, w, 3), alpha=alpha.reshape(n, h, w, 1),
                        depth=depth.reshape(n, h, w, 1), intersections=intersections)


register_backend(
    "cpu", render_cpu, array_type="numpy", priorities={"cpu": 200}, dtypes=("float32",),
    differentiable=False, availability=_cpu_availability,
    install_hint="pip install flexavatar from source with a C++17 compiler (builds flexavatar._native)",
    description="C++ tile rasterizer, multi-threaded over tiles; numpy in/out, no torch needed",
)
register_backend(
    "cuda", render_cuda, array_type="torch", priorities={"cuda": 200}, dtypes=("float32",),
    # its backward computes splat and background gradients, none for world2cam or K
    differentiable=SPLAT_AND_BACKGROUND_GRADS, availability=_cuda_availability,
    install_hint="build flexavatar with the CUDA toolkit installed (FLEXAVATAR_CUDA=ON) on a machine with a GPU",
    description="CUDA tile rasterizer (CUB radix sort, shared-memory blending), forward and backward; "
                "sync-free with an intersection_capacity",
)
