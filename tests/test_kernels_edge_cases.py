"""Edge cases of the rasterizer across backends: which inputs get gradients (registry capability),
empty scenes under autograd, huge Gaussians (pixel radius past int32), overflowing quaternions and
one camera broadcast to per-view splats. Oracles: the reference backend, float64 finite
differences, closed forms. The Triton cases run in its interpreter on CPU (tiny scenes)."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():   # as in test_kernels_triton.py: before triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

from flexavatar.kernels import (  # noqa: E402
    BackendRegistrationError,
    BackendUnavailableError,
    Cameras,
    InputShapeError,
    InputTypeError,
    InputValueError,
    RenderResult,
    Splats,
    available_backends,
    get_backend,
    rasterize,
    register_backend,
    select_backend,
    unregister_backend,
)
from flexavatar.kernels import reference  # noqa: E402
from flexavatar.kernels.constants import MAX_RADIUS  # noqa: E402
from flexavatar.kernels.testing import random_scene  # noqa: E402

CPU_BACKENDS = [b for b in ("reference", "cpu", "triton") if b in available_backends("cpu")]
TORCH_CPU_BACKENDS = [b for b in CPU_BACKENDS if b != "cpu"]


def to_torch(splats: Splats, cameras: Cameras, dtype=torch.float32, requires_grad=False):
    t = lambda x: torch.tensor(np.asarray(x), dtype=dtype)  # noqa: E731
    s = Splats(**{k: t(v).requires_grad_(requires_grad) for k, v in splats.arrays().items()})
    return s, Cameras(t(cameras.world2cam), t(cameras.K))


def render_np(backend, splats, cameras, width, height, background=None):
    """numpy in, numpy out (torch backends convert), detached."""
    out = rasterize(splats, cameras, width, height, background=background, backend=backend)
    return [np.asarray(x) for x in (out.rgb, out.alpha, out.depth)]


# ---------------------------------------------------------------------------------------------
# Gradients of cameras and background: the backend must differentiate every input needing one
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argument", ["cameras.world2cam", "cameras.K", "background"])
def test_auto_routes_camera_and_background_grads_to_a_backend_that_computes_them(argument):
    splats, cameras = random_scene(16, 1, 32, 32, seed=3)
    ts, tc = to_torch(splats, cameras)
    grads = {}
    for backend in ("auto", "reference"):
        leaves = {"cameras.world2cam": tc.world2cam.clone(), "cameras.K": tc.K.clone(),
                  "background": torch.tensor([0.2, 0.3, 0.4])}
        leaves[argument].requires_grad_(True)
        out = rasterize(ts, Cameras(leaves["cameras.world2cam"], leaves["cameras.K"]), 32, 32,
                        background=leaves["background"], backend=backend)
        assert out.backend == "reference"      # the native cpu backend is faster but not differentiable
        (out.rgb.sum() + out.alpha.sum()).backward()
        grads[backend] = leaves[argument].grad
    assert float(grads["reference"].abs().sum()) > 0
    torch.testing.assert_close(grads["auto"], grads["reference"], rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("argument", ["cameras.world2cam", "cameras.K"])
def test_backends_without_camera_gradients_refuse_cameras_that_require_grad(backend, argument):
    # Checked before availability: no GPU (cuda) or interpreter (triton) needed for the refusal.
    with pytest.raises(BackendUnavailableError, match=f"no gradient for {argument}") as info:
        select_backend(backend, device="cuda", dtype="float32", requires_grad=("splats.means", argument))
    assert info.value.inputs == (argument,) and info.value.install_hint is None
    select_backend("reference", device="cpu", requires_grad=("splats.means", argument))   # it does


@pytest.mark.parametrize("requires_grad,error,words", [
    (True, InputTypeError, "is True; expected a collection of input names"),
    ("splats.means", InputTypeError, "is 'splats.means'"),
    (("splats.means", "splats.colors"), InputValueError, "names ['splats.colors']"),
])
def test_requires_grad_names_the_inputs(requires_grad, error, words):
    """select_backend / BackendSpec.unavailable_reason take the names of the inputs that need gradients: a bool (which
    inputs?), a bare string or an unknown name is a typed error naming the argument, not a TypeError deep inside."""
    from flexavatar.kernels import SPLAT_GRADS
    with pytest.raises(error, match=re.escape(words)) as info:
        select_backend("reference", device="cpu", requires_grad=requires_grad)
    assert info.value.argument == "requires_grad"
    with pytest.raises(error, match=re.escape(words)):
        get_backend("reference").unavailable_reason("cpu", requires_grad=requires_grad)
    assert select_backend("reference", device="cpu", requires_grad=SPLAT_GRADS).name == "reference"
    assert get_backend("cpu").unavailable_reason("cpu", requires_grad=SPLAT_GRADS).startswith("it is not "
                                                                                           "differentiable")


@pytest.mark.skipif("triton" not in CPU_BACKENDS, reason="triton interpreter unavailable")
def test_triton_refuses_camera_grad_instead_of_dropping_it():
    splats, cameras = random_scene(4, 1, 16, 16, seed=1)
    ts, tc = to_torch(splats, cameras)
    w2c = tc.world2cam.clone().requires_grad_(True)
    with pytest.raises(BackendUnavailableError, match="cameras.world2cam") as info:
        rasterize(ts, Cameras(w2c, tc.K), 16, 16, backend="triton")
    assert info.value.inputs == ("cameras.world2cam",)
    with torch.no_grad():       # no gradient wanted: fine
        assert rasterize(ts, Cameras(w2c, tc.K), 16, 16, backend="triton").backend == "triton"


def test_registry_capability_field():
    def render(request):
        n, h, w = request.num_views, request.height, request.width
        z = torch.zeros(n, h, w, 1)
        return RenderResult(rgb=z.expand(n, h, w, 3), alpha=z, depth=z)

    register_backend("test-splat-grads", render, array_type="torch", priorities={"cpu": 9000},
                     differentiable=["splats.means", "splats.sh0"])
    try:
        splats, cameras = random_scene(4, 1, 16, 16)
        ts, tc = to_torch(splats, cameras)
        means = ts.means.clone().requires_grad_(True)
        assert rasterize(Splats(**{**ts.arrays(), "means": means}), tc, 16, 16).backend == "test-splat-grads"
        scales = ts.scales.clone().requires_grad_(True)
        assert rasterize(Splats(**{**ts.arrays(), "scales": scales}), tc, 16, 16).backend == "reference"
        with pytest.raises(BackendUnavailableError, match="no gradient for splats.scales") as info:
            rasterize(Splats(**{**ts.arrays(), "scales": scales}), tc, 16, 16, backend="test-splat-grads")
        assert info.value.inputs == ("splats.scales",)
    finally:
        unregister_backend("test-splat-grads")
    with pytest.raises(BackendRegistrationError, match="camera.K"):
        register_backend("test-typo", render, array_type="torch", priorities={"cpu": 0}, differentiable=["camera.K"])


def test_reference_camera_and_background_gradients_match_finite_differences():
    width, height = 20, 12
    splats, cameras = random_scene(4, 2, width, height, seed=11, focal_scale=0.5)
    splats = Splats(means=splats.means * 0.3, quats=splats.quats, scales=splats.scales * 3 + 0.05,
                    opacities=splats.opacities * 0.5 + 0.2, sh0=np.abs(splats.sh0))
    ts, tc = to_torch(splats, cameras, dtype=torch.float64)
    inputs = (tc.world2cam.requires_grad_(True), tc.K.requires_grad_(True),
              torch.tensor([[0.2, 0.4, 0.6], [0.9, 0.1, 0.3]], dtype=torch.float64, requires_grad=True))

    def fn(world2cam, K, background):   # perturbed matrices are not rigid: skip the value checks
        out = rasterize(ts, Cameras(world2cam, K), width, height, background=background,
                        backend="reference", check_values=False)
        return out.rgb, out.alpha, out.depth

    assert float(fn(*inputs)[1].detach().max()) > 0.3
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("backend", TORCH_CPU_BACKENDS)
def test_background_gradient_is_the_final_transmittance(backend):
    # rgb = C + T bg, so d(sum w * rgb)/d bg[n, c] = sum over pixels of w[n, ..., c] * T[n].
    splats, cameras = random_scene(12, 2, 24, 16, seed=5)
    ts, tc = to_torch(splats, cameras, requires_grad=True)
    bg = torch.tensor([0.1, 0.5, 0.9], requires_grad=True)          # [3], shared by both views
    out = rasterize(ts, tc, 24, 16, background=bg, backend=backend)
    assert out.backend == backend
    weights = torch.randn(out.rgb.shape, generator=torch.Generator().manual_seed(0))
    (out.rgb * weights).sum().backward()
    expected = (weights * (1.0 - out.alpha.detach())).sum(dim=(0, 1, 2))
    assert 0 < float(out.alpha.detach().mean()) < 0.9
    torch.testing.assert_close(bg.grad, expected, rtol=1e-5, atol=1e-5)


def test_background_that_requires_grad_with_numpy_splats_is_a_typed_error():
    splats, cameras = random_scene(4, 1, 16, 16)
    with pytest.raises(InputTypeError) as info:
        rasterize(splats, cameras, 16, 16, background=torch.ones(3, requires_grad=True))
    assert info.value.argument == "background" and "requires grad" in str(info.value)


# ---------------------------------------------------------------------------------------------
# Nothing drawn: outputs stay on the graph (zero gradients), as in every differentiable backend
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", TORCH_CPU_BACKENDS)
@pytest.mark.parametrize("scene", ["behind-camera", "no-gaussians"])
def test_backward_through_an_empty_image_gives_zero_gradients(backend, scene):
    g = 0 if scene == "no-gaussians" else 3
    splats = Splats(means=np.tile(np.float32([0, 0, -2]), (g, 1)), quats=np.tile(np.float32([1, 0, 0, 0]), (g, 1)),
                    scales=np.full((g, 3), 0.1, np.float32), opacities=np.full(g, 0.9, np.float32),
                    sh0=np.zeros((g, 3), np.float32))
    cameras = Cameras(np.eye(4, dtype=np.float32), np.float32([[20, 0, 8], [0, 20, 8], [0, 0, 1]]))
    ts, tc = to_torch(splats, cameras, requires_grad=True)
    out = rasterize(ts, tc, 16, 16, backend=backend)
    assert float(out.alpha.detach().abs().max()) == 0
    (out.rgb.sum() + out.alpha.sum() + out.depth.sum()).backward()
    for name, x in ts.arrays().items():
        assert x.grad is not None and x.grad.shape == x.shape and float(x.grad.abs().sum()) == 0, name


# ---------------------------------------------------------------------------------------------
# Huge Gaussians: a pixel radius past 2^31 must not wrap negative (and cull the Gaussian)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gaussian_with_a_radius_past_int32_covers_the_image(backend):
    # scale 1e8 m at z = 2 m, f = 40 px: sigma ~ 2e9 px, radius ~ 6.7e9 px > 2^31. Across 16 px the
    # Gaussian is flat, so alpha = opacity at every pixel.
    splats = Splats(means=np.float32([[0, 0, 2]]), quats=np.float32([[1, 0, 0, 0]]),
                    scales=np.full((1, 3), 1e8, np.float32), opacities=np.float32([0.8]),
                    sh0=np.ones((1, 3), np.float32))
    cameras = Cameras(np.eye(4, dtype=np.float32), np.float32([[40, 0, 8], [0, 40, 8], [0, 0, 1]]))
    _, alpha, depth = render_np(backend, splats, cameras, 16, 16)
    np.testing.assert_allclose(alpha, 0.8, rtol=0, atol=1e-6)
    np.testing.assert_allclose(depth, 2.0, rtol=1e-6)
    if backend == "reference":      # clamped, not wrapped
        s, c = to_torch(splats, cameras)
        proj = reference.project_gaussians(s.means[None], s.quats[None], s.scales[None], s.opacities[None],
                                           c.world2cam[None], c.K[None], 16, 16)
        assert proj.radii.tolist() == [[[int(MAX_RADIUS), int(MAX_RADIUS)]]]


# ---------------------------------------------------------------------------------------------
# Quaternions whose squared norm overflows would silently render unrotated
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("array", ["numpy", "torch"])
def test_quaternion_with_overflowing_norm_is_rejected(array):
    splats, cameras = random_scene(5, 1, 16, 16)
    quats = splats.quats.copy()
    quats[2] *= np.float32(1e20)                     # |q|^2 ~ 1e40 > float32 max
    bad = Splats(**{**splats.arrays(), "quats": quats})
    if array == "torch":
        bad, cameras = to_torch(bad, cameras)
    with pytest.raises(InputValueError) as info:
        rasterize(bad, cameras, 16, 16, backend="reference")
    assert info.value.argument == "splats.quats" and "too large" in str(info.value)
    assert "normalise" in info.value.expected
    rasterize(bad, cameras, 16, 16, backend="reference", check_values=False)   # the caller vouches
    quats[2] = splats.quats[2] * np.float32(1e18)    # |q|^2 ~ 1e36: still finite, still fine
    rasterize(Splats(**{**splats.arrays(), "quats": quats}), Cameras(np.asarray(cameras.world2cam),
              np.asarray(cameras.K)), 16, 16, backend="reference")


# ---------------------------------------------------------------------------------------------
# One camera, N per-view splat batches
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_one_camera_broadcasts_to_per_view_splats(backend):
    splats, cameras = random_scene(40, 1, 24, 16, seed=6)
    frames = Splats(**{k: np.ascontiguousarray(np.stack([v] * 3)) for k, v in splats.arrays().items()})
    frames.means[:] += np.float32([0.05, 0.0, 0.0]) * np.arange(3, dtype=np.float32)[:, None, None]
    tiled = Cameras(np.repeat(cameras.world2cam, 3, axis=0), np.repeat(cameras.K, 3, axis=0))
    bg = [0.2, 0.3, 0.4]
    got = render_np(backend, frames, cameras, 24, 16, bg)            # cameras [1, 4, 4], [1, 3, 3]
    ref = render_np("reference", frames, tiled, 24, 16, bg)          # the camera repeated per view
    assert got[0].shape == (3, 16, 24, 3) and float(ref[1].mean()) > 0.05
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
    assert np.abs(ref[0][0] - ref[0][2]).max() > 0.01                 # the frames do differ


def test_view_count_mismatch_message_names_the_batch_sizes():
    splats, cameras = random_scene(6, 2, 16, 8)
    frames = Splats(**{**splats.arrays(), "means": np.stack([splats.means] * 3)})
    with pytest.raises(InputShapeError) as info:
        rasterize(frames, cameras, 16, 8, backend="reference")
    assert info.value.argument == "splats.means"
    assert info.value.expected == "1 (shared by all views) or 2 views, the batch size of cameras.world2cam"


# ---------------------------------------------------------------------------------------------
# intersection_capacity: the sync-free sort of the GPU backends (cuda, triton); the others ignore it
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value,error", [(-1, InputValueError), (2**31, InputValueError), (1.5, InputTypeError),
                                         (True, InputTypeError), ("64", InputTypeError)])
def test_intersection_capacity_is_checked(value, error):
    splats, cameras = random_scene(16, 1, 32, 32, seed=3)
    with pytest.raises(error, match="intersection_capacity"):
        rasterize(splats, cameras, 32, 32, backend="cpu" if "cpu" in CPU_BACKENDS else "reference",
                  intersection_capacity=value)


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "triton"])   # triton: test_kernels_triton.py
def test_backends_without_a_gpu_sort_ignore_the_intersection_capacity(backend):
    splats, cameras = random_scene(200, 2, 40, 24, seed=8)
    if backend != "cpu":
        splats, cameras = to_torch(splats, cameras)
    exact = rasterize(splats, cameras, 40, 24, backend=backend)
    tiny = rasterize(splats, cameras, 40, 24, backend=backend, intersection_capacity=1)
    assert tiny.intersections is None and tiny.backend == backend
    for a, b in ((tiny.rgb, exact.rgb), (tiny.alpha, exact.alpha), (tiny.depth, exact.depth)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(np.asarray(exact.alpha).max()) > 0.1          # something was drawn


# ---------------------------------------------------------------------------------------------
# Equal depths: every backend composites them in Gaussian order, as the reference does
# ---------------------------------------------------------------------------------------------
GPU_SORT_BACKENDS = [b for b in ("cuda", "triton") if torch.cuda.is_available() and b in available_backends("cuda")]


@pytest.mark.parametrize("device,backend", [("cpu", b) for b in CPU_BACKENDS if b != "reference"]
                         + [pytest.param("cuda", b, marks=pytest.mark.gpu) for b in GPU_SORT_BACKENDS])
def test_gaussians_at_equal_depths_composite_in_gaussian_order(device, backend):
    """Groups of Gaussians with the same mean (the same depth bits) and different colours and opacities: the
    order inside a group decides the pixels. The sorts order Gaussians by depth before (or with) tiles, stably:
    ties keep Gaussian order in every view, also past the capacity-sized sort's sentinels."""
    splats, cameras = random_scene(400, 3, 72, 56, seed=21)
    splats.means[:] = np.repeat(splats.means[::4], 4, axis=0)[: len(splats.means)]   # groups of 4 at one depth
    splats.opacities[:] = np.clip(splats.opacities * 3.0, 0.0, 0.99)                   # let the first hide the rest
    ts, tc = to_torch(splats, cameras)
    want = rasterize(ts, tc, 72, 56, backend="reference")
    ts, tc = (Splats(**{k: v.to(device) for k, v in ts.arrays().items()}),
              Cameras(tc.world2cam.to(device), tc.K.to(device)))
    reversed_groups = Splats(**{k: v.reshape(100, 4, *v.shape[1:]).flip(1).reshape(v.shape)
                                for k, v in ts.arrays().items()})
    captures = [{}] + ([{"intersection_capacity": 1 << 16}] if backend in ("cuda", "triton") else [])
    for kwargs in captures:
        got = rasterize(ts, tc, 72, 56, backend=backend, **kwargs)
        np.testing.assert_allclose(got.rgb.cpu().numpy(), want.rgb.numpy(), rtol=0, atol=1e-4)
        np.testing.assert_allclose(got.alpha.cpu().numpy(), want.alpha.numpy(), rtol=0, atol=1e-4)
    # the test can fail: reversing each group's order changes the image
    flipped = rasterize(reversed_groups, tc, 72, 56, backend=backend)
    assert np.abs(flipped.rgb.cpu().numpy() - want.rgb.numpy()).max() > 0.05
