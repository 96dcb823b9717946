"""Rasterizer backends at FLEX-1 size: 512x512, 58,361 Gaussians around a head-sized sphere seen
from 1 m (``kernels.testing.random_head_scene``), forward and backward, one frame per call.

Every registered backend is a case on every device; a case that cannot run here (no GPU, the
Triton interpreter on CPU would take hours, native module not built, backend not differentiable)
is skipped with the reason. Compare backends by their ratio within one run.

    pytest benchmarks/bench_rasterizer.py --benchmark-only
"""
from __future__ import annotations

import numpy as np
import pytest

from flexavatar.kernels import (SPLAT_GRADS, BackendUnavailableError, Cameras, Splats, get_backend, rasterize,
                                select_backend)
from flexavatar.kernels.testing import FLEX1_NUM_GAUSSIANS, random_head_scene
from flexavatar.runtime.intersections import IntersectionBudget

torch = pytest.importorskip("torch")

SIZE = 512
BACKENDS = ["reference", "triton", "cpu", "cuda"]
# The reference at this size takes ~10 s per direction on a 2-core CPU: a few rounds suffice.
ROUNDS = {"cpu": 3, "cuda": 20}


def _scene(device: str, requires_grad: bool):
    splats, cameras = random_head_scene(FLEX1_NUM_GAUSSIANS, seed=0, width=SIZE, height=SIZE)
    t = lambda x: torch.tensor(x, device=device)  # noqa: E731
    s = Splats(**{k: t(v).requires_grad_(requires_grad) for k, v in splats.arrays().items()})
    return s, Cameras(t(cameras.world2cam), t(cameras.K))


def _skip_unless_runnable(backend: str, device: str, requires_grad: bool):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device (torch.cuda.is_available() is False)")
    if backend == "triton" and device == "cpu":
        pytest.skip("Triton on CPU runs only in the interpreter, which would take hours at this size")
    try:
        get_backend(backend)
        select_backend(backend, device=device, dtype="float32", requires_grad=SPLAT_GRADS if requires_grad else ())
    except (BackendUnavailableError, LookupError) as err:
        pytest.skip(str(err))


def _sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_rasterize_forward(benchmark, bench_meta, backend, device):
    _skip_unless_runnable(backend, device, requires_grad=False)
    splats, cameras = _scene(device, requires_grad=False)
    bench_meta(stage="rasterize", backend=backend, size="flex1", device=device, dtype="fp32", frames=1,
               direction="forward", gaussians=FLEX1_NUM_GAUSSIANS, resolution=SIZE)

    def forward():
        with torch.no_grad():
            out = rasterize(splats, cameras, SIZE, SIZE, background=[1.0, 1.0, 1.0], backend=backend,
                            check_values=False)
        _sync(device)
        return out

    out = benchmark.pedantic(forward, rounds=ROUNDS[device], warmup_rounds=1)
    alpha = out.alpha if isinstance(out.alpha, np.ndarray) else out.alpha.float().cpu().numpy()
    assert out.backend == backend and np.isfinite(alpha).all() and 0.15 < alpha.mean() < 0.6


# The sort sized in advance (rasterize(intersection_capacity=...), as the runtime sizes it: IntersectionBudget's
# HEADROOM x the count, a multiple of its GRANULE): no host sync inside the call; beside test_rasterize_forward's
# exact sort of the same backend.
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_rasterize_forward_sync_free(benchmark, bench_meta, backend):
    _skip_unless_runnable(backend, "cuda", requires_grad=False)
    splats, cameras = _scene("cuda", requires_grad=False)
    with torch.no_grad():
        exact = rasterize(splats, cameras, SIZE, SIZE, background=[1.0, 1.0, 1.0], backend=backend,
                          check_values=False)
    budget = IntersectionBudget()
    budget.observe(exact.intersections, 1)
    capacity = budget.capacity(1)
    bench_meta(stage="rasterize", backend=f"{backend}-sync-free", size="flex1", device="cuda", dtype="fp32",
               frames=1, direction="forward", gaussians=FLEX1_NUM_GAUSSIANS, resolution=SIZE,
               intersections=exact.intersections, capacity=capacity)

    def forward():
        with torch.no_grad():
            out = rasterize(splats, cameras, SIZE, SIZE, background=[1.0, 1.0, 1.0], backend=backend,
                            check_values=False, intersection_capacity=capacity)
        _sync("cuda")
        return out

    out = benchmark.pedantic(forward, rounds=ROUNDS["cuda"], warmup_rounds=1)
    assert int(out.intersections.item()) == exact.intersections
    torch.testing.assert_close(out.rgb, exact.rgb, rtol=0, atol=0)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_rasterize_backward(benchmark, bench_meta, backend, device):
    """Time of ``loss.backward()`` alone (the forward runs in each round's untimed setup)."""
    _skip_unless_runnable(backend, device, requires_grad=True)
    splats, cameras = _scene(device, requires_grad=True)
    bench_meta(stage="rasterize", backend=backend, size="flex1", device=device, dtype="fp32", frames=1,
               direction="backward", gaussians=FLEX1_NUM_GAUSSIANS, resolution=SIZE)
    gen = torch.Generator().manual_seed(0)
    weights = torch.randn(1, SIZE, SIZE, 3, generator=gen).to(device)

    def setup():
        for v in splats.arrays().values():
            v.grad = None
        out = rasterize(splats, cameras, SIZE, SIZE, background=[1.0, 1.0, 1.0], backend=backend, check_values=False)
        loss = (out.rgb * weights).sum() + out.alpha.sum() + out.depth.sum()
        _sync(device)
        return (loss,), {}

    def backward(loss):
        loss.backward()
        _sync(device)

    benchmark.pedantic(backward, setup=setup, rounds=ROUNDS[device], warmup_rounds=1)
    grads = [v.grad for v in splats.arrays().values()]
    assert all(g is not None and bool(torch.isfinite(g).all()) and float(g.abs().max()) > 0 for g in grads)
