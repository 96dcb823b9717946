"""Registry entry point of the Triton backend."""
from __future__ import annotations

import torch

from ..constants import DEPTH_ALPHA_EPS
from ..reference import colors_from_sh0
from ..types import RenderRequest, RenderResult
from .autograd import RasterizeFunction


def render(means, quats, scales, opacities, sh0, world2cam, K, width: int, height: int, background):
    """Same contract as ``reference.render`` (float32 only): -> rgb, alpha, depth ([N,H,W,*])."""
    colors = colors_from_sh0(sh0)                          # [N, G, 3]; its tiny backward is autograd's
    rgb, alpha, depth_sum = RasterizeFunction.apply(
        means, quats, scales, opacities, colors, world2cam, K, background, width, height)
    alpha = alpha[..., None]
    depth = depth_sum[..., None] / torch.clamp_min(alpha, DEPTH_ALPHA_EPS)   # gsplat "ED"
    return rgb, alpha, depth


def render_request(request: RenderRequest) -> RenderResult:
    s, c = request.splats, request.cameras
    rgb, alpha, depth = render(s.means, s.quats, s.scales, s.opacities, s.sh0, c.world2cam, c.K,
                               request.width, request.height, request.background)
    return RenderResult(rgb=rgb, alpha=alpha, depth=depth)
