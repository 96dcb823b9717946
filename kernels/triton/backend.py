"""Registry entry point of the Triton backend."""
from __future__ import annotations

import torch

from ..constants import DEPTH_ALPHA_EPS
from ..reference import colors_from_sh0
from ..types import RenderRequest, RenderResult
from .autograd import RasterizeFunction, rasterize_forward


def render(means, quats, scales, opacities, sh0, world2cam, K, width: int, height: int, background,
           capacity: int = 0):
    """Same contract as ``reference.render`` (float32 only): -> rgb, alpha, depth ([N,H,W,*]) and the intersection
    count (None from a differentiable render; see ``binning.bin_gaussians`` for ``capacity``)."""
    colors = colors_from_sh0(sh0)                          # [N, G, 3]; its tiny backward is autograd's
    inputs = (means, quats, scales, opacities, colors, world2cam, K, background)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        rgb, alpha, depth_sum = RasterizeFunction.apply(*inputs, width, height)   # exact sort for the backward
        intersections = None
    else:
        rgb, alpha, depth_sum, intersections, _, _ = rasterize_forward(*inputs, width, height, capacity)
    alpha = alpha[..., None]
    depth = depth_sum[..., None] / torch.clamp_min(alpha, DEPTH_ALPHA_EPS)   # gsplat "ED"
    return rgb, alpha, depth, intersections


def render_request(request: RenderRequest) -> RenderResult:
    s, c = request.splats, request.cameras
    rgb, alpha, depth, intersections = render(s.means, s.quats, s.scales, s.opacities, s.sh0, c.world2cam, c.K,
                                              request.width, request.height, request.background,
                                              request.intersection_capacity)
    return RenderResult(rgb=rgb, alpha=alpha, depth=depth, intersections=intersections)
