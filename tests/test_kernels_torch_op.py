"""torch.ops.flexavatar.rasterize (kernels/torch_op.py): the native rasterizers as a PyTorch custom operator, for
compiled frames. Oracles: the cpu backend through kernels.rasterize (the same C++ rasterizer), PyTorch's own operator
checks (torch.library.opcheck: schema, fake implementation, dispatch), and the eager operator under Inductor."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
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


# The operator's first native call of a fresh process, inside a CUDA-graph capture (thread-local mode, as
# PyTorch's compiled frames capture): the native library's once-per-device memory-pool setting must not invalidate
# the capture. The replayed graph's frame equals the eager operator's, and the count is the exact one.
_CAPTURED_FIRST_CALL = r'''
import sys
import torch
sys.path.insert(0, sys.argv[1])
from test_kernels_torch_op import _scene
from flexavatar.kernels.torch_op import rasterize_op

op = rasterize_op()
splats, w2c, ks, bg = _scene()
args = [t.cuda() for t in (*splats, w2c[:, None], ks[:, None], bg[:, None])]
stream = torch.cuda.Stream()
graph = torch.cuda.CUDAGraph()
with torch.cuda.stream(stream):
    with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
        captured = op(*args, 64, 48, 1 << 16)          # the first native call of this process
graph.replay()
torch.cuda.synchronize()
eager = op(*args, 64, 48, 0)                            # exact sort, outside any capture
assert torch.equal(captured[0], eager[0]) and torch.equal(captured[1], eager[1]), "captured frame differs"
assert int(captured[3]) == int(eager[3]) > 0, (int(captured[3]), int(eager[3]))
print("captured first call ok", int(eager[3]))
'''


@pytest.mark.gpu
def test_operator_first_called_inside_a_cuda_capture():
    out = subprocess.run([sys.executable, "-c", _CAPTURED_FIRST_CALL, str(Path(__file__).parent)],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "captured first call ok" in out.stdout
