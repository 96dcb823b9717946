"""Native rasterizer benchmarks at FLEX-1 size: 512x512, 58,361 Gaussians (``random_head_scene``).

CPU: the C++ ``cpu`` backend next to the PyTorch ``reference`` in the same run (report the ratio of
their means). GPU (skipped without CUDA): the ``cuda`` backend's forward and forward+backward, next
to the reference and Triton in ``bench_rasterizer.py`` (same scene, same run of the suite).
"""
from __future__ import annotations

import pytest

from flexavatar.kernels import Cameras, Splats, rasterize
from flexavatar.kernels.testing import FLEX1_NUM_GAUSSIANS, random_head_scene

WIDTH = HEIGHT = 512
SIZE = "flex1-512"


@pytest.fixture(scope="module")
def head_scene():
    return random_head_scene(num_gaussians=FLEX1_NUM_GAUSSIANS, seed=0, width=WIDTH, height=HEIGHT)


def test_native_cpu_forward(benchmark, bench_meta, head_scene):
    pytest.importorskip("flexavatar._native", reason="flexavatar._native is not built")
    splats, cameras = head_scene
    bench_meta(stage="rasterize", backend="native-cpu", size=SIZE, device="cpu", dtype="fp32")
    result = benchmark(rasterize, splats, cameras, WIDTH, HEIGHT, None, "cpu")
    assert result.backend == "cpu" and result.alpha.mean() > 0.1


@pytest.mark.parametrize("entry", ["rasterize", "bare-native"])
def test_native_cpu_call_overhead(benchmark, bench_meta, entry):
    """64 Gaussians into a 16x16 frame: the time is almost all per-call overhead (validation, backend dispatch,
    array handling). ``rasterize()`` next to the bare ``_native.rasterize_cpu`` call, same run: what a real-time
    loop pays per frame on top of the kernels (the same Python path runs before the CUDA backend)."""
    import numpy as np

    native = pytest.importorskip("flexavatar._native", reason="flexavatar._native is not built")
    from flexavatar.kernels.constants import EPS2D, FAR_PLANE, NEAR_PLANE
    from flexavatar.kernels.testing import random_scene

    splats, cameras = random_scene(64, 1, 16, 16, seed=0)
    background = np.ones((1, 1, 3), np.float32)
    if entry == "rasterize":
        def call():
            return rasterize(splats, cameras, 16, 16, background[0], "cpu", check_values=False).rgb
    else:
        arrays = [np.ascontiguousarray(v[None], np.float32) for v in splats.arrays().values()]    # [1, G, ...]
        viewmats, ks = cameras.world2cam.reshape(1, 1, 4, 4), cameras.K.reshape(1, 1, 3, 3)

        def call():
            return native.rasterize_cpu(*arrays, viewmats, ks, 16, 16, background, eps2d=EPS2D,
                                        near_plane=NEAR_PLANE, far_plane=FAR_PLANE, num_threads=0)[0]
    bench_meta(stage="rasterize-call-overhead", backend=entry, size="64-gaussians-16x16", device="cpu", dtype="fp32")
    image = benchmark(call)
    assert image.shape[-3:] == (16, 16, 3) and 0 < float(image.mean()) <= 1


def test_reference_cpu_forward(benchmark, bench_meta, head_scene):
    torch = pytest.importorskip("torch")
    splats, cameras = head_scene
    tsplats = Splats(**{k: torch.from_numpy(v) for k, v in splats.arrays().items()})
    tcams = Cameras(torch.from_numpy(cameras.world2cam), torch.from_numpy(cameras.K))
    bench_meta(stage="rasterize", backend="reference", size=SIZE, device="cpu", dtype="fp32")
    # Seconds per frame: a few rounds are enough for a ratio against the native backend.
    with torch.no_grad():
        result = benchmark.pedantic(rasterize, args=(tsplats, tcams, WIDTH, HEIGHT, None, "reference"),
                                    rounds=2, iterations=1, warmup_rounds=0)
    assert result.alpha.mean().item() > 0.1


def _cuda_scene(head_scene, requires_grad: bool):
    import torch

    splats, cameras = head_scene
    tsplats = Splats(**{k: torch.tensor(v, device="cuda", requires_grad=requires_grad)
                        for k, v in splats.arrays().items()})
    return tsplats, Cameras(torch.tensor(cameras.world2cam, device="cuda"), torch.tensor(cameras.K, device="cuda"))


def _cuda_timed(fn):
    """Wrap fn so that each call waits for the GPU (pytest-benchmark times host wall clock)."""
    import torch

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


@pytest.mark.gpu
def test_native_cuda_forward(benchmark, bench_meta, cuda_device, head_scene):
    import torch

    tsplats, tcams = _cuda_scene(head_scene, requires_grad=False)
    bench_meta(stage="rasterize", backend="native-cuda", size=SIZE, device="cuda", dtype="fp32")
    with torch.no_grad():
        result = benchmark(_cuda_timed(lambda: rasterize(tsplats, tcams, WIDTH, HEIGHT, backend="cuda",
                                                         check_values=False)))
    assert result.backend == "cuda" and result.alpha.mean().item() > 0.1


@pytest.mark.gpu
def test_native_cuda_forward_backward(benchmark, bench_meta, cuda_device, head_scene):
    import torch

    tsplats, tcams = _cuda_scene(head_scene, requires_grad=True)
    weights = torch.randn(1, HEIGHT, WIDTH, 3, device="cuda")

    def step():
        for t in tsplats.arrays().values():
            t.grad = None
        out = rasterize(tsplats, tcams, WIDTH, HEIGHT, backend="cuda", check_values=False)
        ((out.rgb * weights).sum() + out.alpha.sum()).backward()
        return out

    bench_meta(stage="rasterize", backend="native-cuda", size=SIZE, device="cuda", dtype="fp32",
               direction="forward+backward")
    out = benchmark(_cuda_timed(step))
    assert out.backend == "cuda" and torch.isfinite(tsplats.means.grad).all()
