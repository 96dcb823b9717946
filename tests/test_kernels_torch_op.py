"""torch.ops.flexavatar.rasterize (kernels/torch_op.py): the native rasterizers as a PyTorch custom operator, for
compiled frames. Oracles: the cpu backend through kernels.rasterize (the same C++ rasterizer), PyTorch's own operator
checks (torch.library.opcheck: schema, fake implementation, dispatch), and the eager operator under Inductor."""
from __future__ import annotations

import numpy as np
import torch

from flexavatar.kernels import Cameras, Splats, rasterize


def _scene(views: int = 2, gaussians: int = 400, seed: int = 0):
    """Per-view splats [V, G, …], world→camera [V, 4, 4], pixel K [V, 3, 3], backgrounds [V, 3]."""
    g = torch.Generator().manual_seed(seed)
    splats = (torch.randn(views, gaussians, 3, generator=g) * 0.3,
              torch.nn.functional.normalize(torch.randn(views, gaussians, 4, generator=g), dim=-1),
              torch.rand(views, gaussians, 3, generator=g) * 0.05 + 0.01,
              torch.rand(views, gaussians, generator=g),
              torch.rand(views, gaussians, 3, generator=g))
    w2c = torch.eye(4).repeat(views, 1, 1)
    w2c[:, 2, 3] = torch.linspace(1.8, 2.4, views)
    ks = torch.tensor([[60.0, 0, 32], [0, 55.0, 24], [0, 0, 1]]).repeat(views, 1, 1)
    backgrounds = torch.rand(views, 3, generator=g)
    return splats, w2c, ks, backgrounds


def test_operator_renders_what_the_cpu_backend_renders():
    from flexavatar.kernels.torch_op import rasterize_op
    splats, w2c, ks, bg = _scene()
    image, alpha, depth, count = rasterize_op()(*splats, w2c[:, None], ks[:, None], bg[:, None], 64, 48, 0)
    assert image.shape == (2, 1, 48, 64, 3) and alpha.shape == depth.shape == (2, 1, 48, 64)
    assert count.dtype == torch.int64 and count.tolist() == [-1]            # the CPU rasterizer sorts no slots
    want = rasterize(Splats(*splats), Cameras(w2c, ks), 64, 48, background=bg, backend="cpu")
    np.testing.assert_array_equal(image[:, 0].numpy(), want.rgb.numpy())
    np.testing.assert_array_equal(alpha[:, 0].numpy(), want.alpha[..., 0].numpy())
    np.testing.assert_array_equal(depth[:, 0].numpy(), want.depth[..., 0].numpy())
    assert 0.05 < float(alpha.mean()) < 0.95                                 # a scene, not an empty frame


def test_operator_passes_pytorchs_operator_checks():
    """Schema, fake (meta) implementation against the real outputs' shapes and dtypes, and dispatch under
    torch.compile's tracing (torch.library.opcheck)."""
    from flexavatar.kernels.torch_op import rasterize_op
    splats, w2c, ks, bg = _scene(views=3, gaussians=50, seed=1)
    torch.library.opcheck(rasterize_op(), (*splats, w2c[:, None], ks[:, None], bg[:, None], 40, 30, 0))


def test_operator_inside_an_inductor_graph():
    """Compiled with the work around it (Inductor generates the pixel conversion; the operator is an extern call):
    the frames of the eager operator."""
    from flexavatar.kernels.torch_op import rasterize_op
    op = rasterize_op()
    splats, w2c, ks, bg = _scene(seed=2)

    def frame(means, quats, scales, opacities, sh0, w2c, ks, bg):
        image, alpha, _, _ = op(means * 1.0, quats, scales, opacities, sh0, w2c, ks, bg, 64, 48, 0)
        return (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8), alpha

    args = (*splats, w2c[:, None], ks[:, None], bg[:, None])
    want = frame(*args)
    got = torch.compile(frame, backend="inductor", fullgraph=True)(*args)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=0, rtol=0)
