"""``rasterize``: validate once, pick a backend from the registry, convert arrays, render."""
from __future__ import annotations

import dataclasses
import logging
import sys
from typing import Any

from .arrays import TORCH, array_kind, convert, device_of, dtype_name, to_torch
from .registry import select_backend
from .types import Cameras, RenderRequest, RenderResult, Splats
from .validation import check_intersection_capacity, validate_request

log = logging.getLogger("flexavatar.kernels")


def rasterize(splats: Splats, cameras: Cameras, width: int, height: int, background: Any = None,
              backend: str = "auto", *, check_values: bool = True, intersection_capacity: int = 0) -> RenderResult:
    """Render Gaussians ``splats`` from ``cameras`` into ``[N, H, W, *]`` images.

    ``background``: None (black), 3 floats, or an array ``[3]`` / ``[N, 3]``. ``backend``: a
    registered name (``available_backends()``) or "auto", which picks the fastest backend usable
    for the inputs' device, dtype and (torch) grad requirements (a backend that differentiates
    every input requiring grad: splats, cameras, background); ``RenderResult.backend`` names it.
    Outputs are arrays of the inputs' type (numpy or torch, on the inputs' device).
    ``check_values=False`` skips the value checks (NaN/inf, scale/quaternion/K domain), which
    synchronise with the GPU; type, dtype, device and shape checks always run.

    ``intersection_capacity``, for backends that sort on the device (``cuda``, ``triton``; the others ignore
    it): 0 sizes the sort of (tile, Gaussian) intersections exactly, by reading their number back to the host:
    one synchronisation inside the call. N > 0 sorts N slots instead, with no synchronisation, and
    ``RenderResult.intersections`` is a device int64 ``[1]`` array with the exact count: when, read after a
    synchronisation, it exceeds N, the views are incomplete (intersections past N were dropped) and must be
    rendered again with a larger capacity. The sort's cost grows with N: a few times the expected count is
    right. Not with gradients (the backward needs the exact sort): a differentiable render ignores it.
    """
    request = validate_request(splats, cameras, width, height, background, check_values=check_values)
    if intersection_capacity:
        request = dataclasses.replace(request,
                                      intersection_capacity=check_intersection_capacity(intersection_capacity))
    means = request.splats.means
    kind = array_kind(means)
    spec = select_backend(backend, device=device_of(means), dtype=dtype_name(means),
                          requires_grad=_requires_grad(request))
    if backend == "auto":
        log.debug("rasterize: backend='auto' chose %r for %s %s inputs on %s", spec.name, kind,
                  dtype_name(means), device_of(means))
    if spec.array_type != kind:
        request = _convert_request(request, spec.array_type)
    result = spec.render(request)
    if spec.array_type != kind:
        back = (lambda x: to_torch(x, like=means)) if kind == TORCH else (lambda x: convert(x, kind))
        result = RenderResult(rgb=back(result.rgb), alpha=back(result.alpha), depth=back(result.depth),
                              intersections=result.intersections)
    return dataclasses.replace(result, backend=spec.name)


def _requires_grad(request: RenderRequest) -> tuple[str, ...]:
    """Names (registry.GRAD_INPUTS) of the inputs that need gradients: the chosen backend must
    differentiate every one of them, or their gradients would silently be lost."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.is_grad_enabled():
        return ()
    named = {f"splats.{k}": v for k, v in request.splats.arrays().items()}
    named.update({"cameras.world2cam": request.cameras.world2cam, "cameras.K": request.cameras.K,
                  "background": request.background})
    return tuple(name for name, x in named.items() if array_kind(x) == TORCH and x.requires_grad)


def _convert_request(request: RenderRequest, kind: str) -> RenderRequest:
    return RenderRequest(
        splats=Splats(**{k: convert(v, kind) for k, v in request.splats.arrays().items()}),
        cameras=Cameras(world2cam=convert(request.cameras.world2cam, kind), K=convert(request.cameras.K, kind)),
        width=request.width, height=request.height, background=convert(request.background, kind),
    )
