"""The PyTorch reference rasterizer against closed forms, literal per-pixel loops and itself
(tiled vs tile-free), plus the registry, the shared input validation and the camera helpers."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from flexavatar.kernels import (
    BackendRegistrationError,
    BackendUnavailableError,
    Cameras,
    InputDeviceError,
    InputShapeError,
    InputTypeError,
    InputValueError,
    NonFiniteInputError,
    RenderResult,
    Splats,
    UnknownBackendError,
    available_backends,
    pixel_intrinsics,
    rasterize,
    register_backend,
    registered_backends,
    unregister_backend,
    world2cam_from_cam2world,
)
from flexavatar.kernels import reference
from flexavatar.kernels.constants import TILE_SIZE
from flexavatar.kernels.testing import (
    composite_sequential,
    on_axis_closed_form,
    on_axis_scene,
    random_scene,
)
from flexavatar.kernels.validation import validate_request


def to_torch(splats: Splats, cameras: Cameras, dtype=torch.float32, requires_grad=False):
    t = lambda x: torch.tensor(np.asarray(x), dtype=dtype)  # noqa: E731
    s = Splats(**{k: t(v).requires_grad_(requires_grad) for k, v in splats.arrays().items()})
    return s, Cameras(t(cameras.world2cam), t(cameras.K))


def render_reference(splats, cameras, width, height, background=None, tiled=True):
    req = validate_request(splats, cameras, width, height, background)
    s, c = req.splats, req.cameras
    return reference.render(s.means, s.quats, s.scales, s.opacities, s.sh0, c.world2cam, c.K,
                            width, height, req.background, tiled=tiled)


# ---------------------------------------------------------------------------------------------
# Closed forms and literal loops
# ---------------------------------------------------------------------------------------------
def test_single_isotropic_gaussian_matches_closed_form_footprint():
    width, height, bg = 40, 30, [0.1, 0.2, 0.3]     # centre (20, 15): the footprint spans 3x2 tiles
    splats, cameras, variances = on_axis_scene([2.0], [0.1], [0.8], [[0.5, -0.2, 1.0]], width, height, focal=50.0)
    rgb_cf, alpha_cf, depth_cf = on_axis_closed_form(splats, variances, width, height, bg)
    result = rasterize(*to_torch(splats, cameras), width, height, background=bg, backend="reference")
    np.testing.assert_allclose(result.rgb[0].numpy(), rgb_cf, atol=2e-6)
    np.testing.assert_allclose(result.alpha[0, ..., 0].numpy(), alpha_cf, atol=2e-6)
    np.testing.assert_allclose(result.depth[0, ..., 0].numpy(), depth_cf, atol=2e-5)  # w z / w in fp32
    # The footprint really is cut where alpha < 1/255 (background there) and drawn elsewhere.
    drawn = alpha_cf > 0
    assert 0 < drawn.sum() < width * height
    assert np.all(result.alpha[0, ..., 0].numpy()[~drawn] == 0)
    assert np.allclose(result.depth[0, ..., 0].numpy()[drawn], 2.0, atol=2e-5)


@pytest.mark.parametrize("depths", [[1.5, 2.2, 3.0], [3.0, 1.5, 2.2]], ids=["rgb-order", "brg-order"])
def test_overlapping_opaque_gaussians_composite_in_depth_order(depths):
    width, height, bg = 37, 37, np.array([0.2, 0.3, 0.9])         # centre (18.5, 18.5): a pixel centre
    sh0 = [[3.0, -2.0, -2.0], [-2.0, 3.0, -2.0], [-2.0, -2.0, 3.0]]       # red, green, blue
    opacities = [0.985, 0.97, 1.0]                                      # centre alphas 0.985, 0.97, 0.99
    splats, cameras, variances = on_axis_scene(depths, [0.2, 0.3, 0.4], opacities, sh0, width, height, focal=40.0)
    rgb_cf, alpha_cf, depth_cf = on_axis_closed_form(splats, variances, width, height, bg)
    result = rasterize(*to_torch(splats, cameras), width, height, background=bg, backend="reference")
    np.testing.assert_allclose(result.rgb[0].numpy(), rgb_cf, atol=2e-6)
    np.testing.assert_allclose(result.alpha[0, ..., 0].numpy(), alpha_cf, atol=2e-6)
    np.testing.assert_allclose(result.depth[0, ..., 0].numpy(), depth_cf, atol=2e-5)
    # At the centre the two nearest are drawn in depth order; the third would bring T below 1e-4
    # (T = 1.5e-4 .. 4.5e-4 before it, ~1e-6 after) and is not drawn.
    near, mid = np.argsort(depths)[:2]
    colors = np.maximum(reference.SH_C0 * np.array(sh0) + 0.5, 0)
    a1, a2 = min(opacities[near], 0.99), min(opacities[mid], 0.99)
    expected = a1 * colors[near] + (1 - a1) * a2 * colors[mid] + (1 - a1) * (1 - a2) * bg
    np.testing.assert_allclose(result.rgb[0, height // 2, width // 2].numpy(), expected, atol=1e-5)


def test_composite_matches_sequential_loop_with_skips_and_stops():
    gen = torch.Generator().manual_seed(0)
    alphas = torch.rand(64, 24, generator=gen, dtype=torch.float64) ** 3 * 0.99   # many < 1/255, some stops
    alphas[alphas < 1 / 255] = 0.0
    colors = torch.rand(24, 3, generator=gen, dtype=torch.float64)
    depths = torch.rand(24, generator=gen, dtype=torch.float64) + 1
    bg = np.array([0.3, 0.1, 0.7])
    rgb, trans, depth_sum = reference.composite(alphas, colors, depths)
    rgb_loop, alpha_loop, depth_loop = composite_sequential(alphas.numpy(), colors.numpy(), depths.numpy(), bg)
    np.testing.assert_allclose(rgb.numpy() + trans.numpy()[:, None] * bg, rgb_loop, atol=1e-12)
    np.testing.assert_allclose(1 - trans.numpy(), alpha_loop, atol=1e-12)
    np.testing.assert_allclose(depth_sum.numpy() / np.maximum(1 - trans.numpy(), 1e-10), depth_loop, atol=1e-12)
    assert (alpha_loop > 1 - 1e-3).any(), "the scene must exercise early termination"


def _border_scene(width, height, num_views=2):
    """random_scene plus Gaussians whose centres sit exactly on tile borders and image edges."""
    splats, cameras = random_scene(400, num_views, width, height, seed=5)
    targets = [(16, 16), (32, 8), (0, 20), (width, height / 2), (width - 1, height), (-3, 5),
               (48, 0), (16, height - 0.5), (width / 2, -4)]
    z = 3.0
    K = cameras.K[0].astype(np.float64)
    cam_pts = np.array([[(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z] for u, v in targets])
    c2w = np.linalg.inv(cameras.world2cam[0].astype(np.float64))
    world = cam_pts @ c2w[:3, :3].T + c2w[:3, 3]
    extra = len(targets)
    rng = np.random.default_rng(1)
    splats = Splats(
        means=np.concatenate([splats.means, world.astype(np.float32)]),
        quats=np.concatenate([splats.quats, rng.normal(size=(extra, 4)).astype(np.float32)]),
        scales=np.concatenate([splats.scales, np.full((extra, 3), 0.03, np.float32)]),
        opacities=np.concatenate([splats.opacities, np.full(extra, 0.9, np.float32)]),
        sh0=np.concatenate([splats.sh0, rng.normal(size=(extra, 3)).astype(np.float32)]),
    )
    return splats, cameras


def test_tiled_equals_tile_free_evaluation_on_border_straddling_scene():
    width, height = 72, 56                                    # not multiples of 16
    splats, cameras = _border_scene(width, height)
    ts, tc = to_torch(splats, cameras)
    bg = torch.tensor([[0.1, 0.5, 0.2], [0.9, 0.9, 0.9]])
    tiled = render_reference(ts, tc, width, height, bg, tiled=True)
    dense = render_reference(ts, tc, width, height, bg, tiled=False)
    for a, b in zip(tiled, dense, strict=True):                            # same Gaussians, summed in other orders
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    # The scene must exercise what it claims: footprints over several tiles and off the image.
    req = validate_request(ts, tc, width, height, bg)
    s, c = req.splats, req.cameras
    proj = reference.project_gaussians(s.means, s.quats, s.scales, s.opacities, c.world2cam, c.K, width, height)
    visible = (proj.radii > 0).all(-1)
    lo = torch.floor((proj.means2d - proj.radii) / TILE_SIZE)
    hi = torch.floor((proj.means2d + proj.radii) / TILE_SIZE)
    assert ((hi - lo).amax(-1) >= 1)[visible].sum() > 50
    off_edge = ((proj.means2d - proj.radii < 0) | (proj.means2d + proj.radii > torch.tensor([width, height]))).any(-1)
    assert (off_edge & visible).sum() > 5
    assert (tiled[1] > 0.5).float().mean() > 0.05               # and draws a fair part of the image


def test_empty_scene_renders_background_numpy_and_torch():
    empty = Splats(means=np.zeros((0, 3), np.float32), quats=np.zeros((0, 4), np.float32),
                   scales=np.zeros((0, 3), np.float32), opacities=np.zeros(0, np.float32),
                   sh0=np.zeros((0, 3), np.float32))
    _, cameras = random_scene(1, 2, 40, 24)
    bg = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], np.float32)
    result = rasterize(empty, cameras, 40, 24, background=bg, backend="reference")
    assert isinstance(result.rgb, np.ndarray) and result.rgb.shape == (2, 24, 40, 3)
    np.testing.assert_array_equal(result.rgb, np.broadcast_to(bg[:, None, None, :], (2, 24, 40, 3)))
    assert not result.alpha.any() and not result.depth.any()


def test_gaussians_behind_the_camera_render_background():
    splats, cameras = random_scene(200, 1, 48, 32, seed=3)
    ts, tc = to_torch(splats, cameras)
    assert float(rasterize(ts, tc, 48, 32, backend="reference").alpha.max()) > 0.5   # seen from the front
    turn = torch.diag(torch.tensor([-1.0, 1.0, -1.0, 1.0]))   # half a turn about the camera's y axis
    w2c = turn @ tc.world2cam                                  # the scene is now 3 m behind the camera
    result = rasterize(ts, Cameras(w2c, tc.K), 48, 32, background=[0.3, 0.6, 0.9], backend="reference")
    torch.testing.assert_close(result.rgb, torch.tensor([0.3, 0.6, 0.9]).expand(1, 32, 48, 3))
    assert float(result.alpha.abs().max()) == 0.0


def test_gradcheck_float64_tiny_scene():
    width, height = 20, 12
    splats, cameras = random_scene(4, 2, width, height, seed=11, focal_scale=0.5)
    splats = Splats(means=splats.means * 0.3, quats=splats.quats, scales=splats.scales * 3 + 0.05,
                    opacities=splats.opacities * 0.5 + 0.2, sh0=np.abs(splats.sh0))
    ts, tc = to_torch(splats, cameras, dtype=torch.float64, requires_grad=True)
    bg = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64)
    keys = list(ts.arrays())

    def fn(*arrays):
        splats = Splats(**dict(zip(keys, arrays, strict=True)))
        out = rasterize(splats, tc, width, height, background=bg, backend="reference")
        return out.rgb, out.alpha, out.depth

    out = fn(*ts.arrays().values())
    assert float(out[1].detach().max()) > 0.3                           # the Gaussians are on screen
    # fast_mode checks random directional derivatives (one backward instead of one per pixel).
    assert torch.autograd.gradcheck(fn, tuple(ts.arrays().values()), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


# ---------------------------------------------------------------------------------------------
# Batching, array types, helpers
# ---------------------------------------------------------------------------------------------
def test_per_view_splats_equal_separate_renders_and_shared_splats_broadcast():
    width, height = 48, 40
    splats, cameras = random_scene(300, 3, width, height, seed=2)
    ts, tc = to_torch(splats, cameras)
    shared = rasterize(ts, tc, width, height, backend="reference")
    # Shared [G] splats == the same splats repeated as [N, G].
    repeated = Splats(**{k: v.expand(3, *v.shape).clone() for k, v in ts.arrays().items()})
    torch.testing.assert_close(rasterize(repeated, tc, width, height, backend="reference").rgb, shared.rgb)
    # Per-view splats (e.g. animation frames): view i of a batch == rendering frame i alone.
    frames = Splats(**{k: v + 0.02 * torch.arange(3.0).reshape(3, *[1] * v.dim()) if k == "means" else
                       v.expand(3, *v.shape) for k, v in ts.arrays().items()})
    batched = rasterize(frames, tc, width, height, backend="reference")
    for i in range(3):
        one = rasterize(Splats(**{k: v[i] for k, v in frames.arrays().items()}),
                        Cameras(tc.world2cam[i], tc.K[i]), width, height, backend="reference")
        torch.testing.assert_close(one.rgb[0], batched.rgb[i])
        torch.testing.assert_close(one.depth[0], batched.depth[i])


def test_numpy_inputs_return_numpy_matching_torch():
    splats, cameras = random_scene(200, 2, 32, 24, seed=4)
    out_np = rasterize(splats, cameras, 32, 24, background=[0.5, 0.5, 0.5], backend="reference")
    out_t = rasterize(*to_torch(splats, cameras), 32, 24, background=[0.5, 0.5, 0.5], backend="reference")
    assert isinstance(out_np.rgb, np.ndarray) and out_np.backend == "reference"
    np.testing.assert_allclose(out_np.rgb, out_t.rgb.numpy(), atol=0)
    np.testing.assert_allclose(out_np.depth, out_t.depth.numpy(), atol=0)


def test_camera_helpers():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(5, 4))
    rot = reference.quat_to_rotmat(torch.tensor(q)).numpy()
    c2w = np.tile(np.eye(4), (5, 1, 1))
    c2w[:, :3, :3], c2w[:, :3, 3] = rot, rng.normal(size=(5, 3))
    w2c = world2cam_from_cam2world(c2w)
    np.testing.assert_allclose(w2c @ c2w, np.tile(np.eye(4), (5, 1, 1)), atol=1e-12)
    np.testing.assert_allclose(world2cam_from_cam2world(torch.tensor(c2w)).numpy(), np.linalg.inv(c2w), atol=1e-12)
    k_norm = np.array([[1.2, 0, 0.45], [0, 1.5, 0.55], [0, 0, 1]])
    np.testing.assert_allclose(pixel_intrinsics(k_norm, 640, 480), [[768, 0, 288], [0, 720, 264], [0, 0, 1]])
    np.testing.assert_allclose(pixel_intrinsics(torch.tensor(k_norm), 640, 480).numpy(),
                               pixel_intrinsics(k_norm, 640, 480))


def test_import_does_not_import_torch_or_triton():
    code = ("import sys, flexavatar.kernels as k; k.available_backends('cpu'); "
            "assert 'torch' not in sys.modules and 'triton' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def fake_backends():
    names = []

    def add(name, **kwargs):
        names.append(name)
        return register_backend(name, **kwargs)

    yield add
    for name in names:
        if name in registered_backends():
            unregister_backend(name)


def test_registry_dispatch_conversion_and_auto(fake_backends):
    seen = {}

    def numpy_backend(request):
        seen["types"] = {type(v) for v in request.splats.arrays().values()} | {type(request.background)}
        n, h, w = request.num_views, request.height, request.width
        return RenderResult(rgb=np.full((n, h, w, 3), 0.25, np.float32), alpha=np.zeros((n, h, w, 1), np.float32),
                            depth=np.zeros((n, h, w, 1), np.float32))

    fake_backends("test-numpy", render=numpy_backend, array_type="numpy", priorities={"cpu": 1000})
    splats, cameras = random_scene(10, 2, 16, 8)
    ts, tc = to_torch(splats, cameras)
    out = rasterize(ts, tc, 16, 8)                              # auto: highest priority on cpu
    assert out.backend == "test-numpy" and seen["types"] == {np.ndarray}
    assert isinstance(out.rgb, torch.Tensor) and float(out.rgb.mean()) == 0.25
    # A non-differentiable backend is skipped by "auto" when grads are needed, refused by name.
    ts_grad, _ = to_torch(splats, cameras, requires_grad=True)
    assert rasterize(ts_grad, tc, 16, 8).backend == "reference"
    with pytest.raises(BackendUnavailableError, match="not differentiable"):
        rasterize(ts_grad, tc, 16, 8, backend="test-numpy")
    with torch.no_grad():
        assert rasterize(ts_grad, tc, 16, 8).backend == "test-numpy"
    assert "test-numpy" in available_backends("cpu") and "test-numpy" not in available_backends("cuda")


def test_registry_errors(fake_backends):
    fake_backends("test-missing", render=lambda r: None, array_type="torch", priorities={"cpu": 5000},
                  availability=lambda device: "libfoo is not installed", install_hint="pip install foo")
    splats, cameras = random_scene(10, 1, 16, 8)
    with pytest.raises(BackendUnavailableError, match="libfoo is not installed.*pip install foo") as err:
        rasterize(splats, cameras, 16, 8, backend="test-missing")
    assert err.value.name == "test-missing" and err.value.install_hint == "pip install foo"
    assert rasterize(splats, cameras, 16, 8).backend != "test-missing"   # auto skips it
    with pytest.raises(UnknownBackendError, match="'nope'.*reference"):
        rasterize(splats, cameras, 16, 8, backend="nope")
    with pytest.raises(BackendRegistrationError, match="already registered"):
        register_backend("reference", render=lambda r: None, array_type="torch", priorities={"cpu": 0})
    with pytest.raises(BackendRegistrationError, match="array_type"):
        register_backend("test-bad", render=lambda r: None, array_type="jax", priorities={"cpu": 0})
    with pytest.raises(BackendUnavailableError, match="float64"):
        rasterize(*to_torch(splats, cameras, dtype=torch.float64), 16, 8, backend="triton")
    with pytest.raises(BackendUnavailableError, match="does not run on device 'cuda'"):
        from flexavatar.kernels import select_backend
        select_backend("test-missing", device="cuda")


# ---------------------------------------------------------------------------------------------
# Bad input: every typed error names the argument
# ---------------------------------------------------------------------------------------------
def _replace(splats, **changes):
    return Splats(**{**splats.arrays(), **changes})


def _bad_cases():
    s, c = random_scene(6, 2, 16, 8)
    f32 = np.float32
    bad_k = c.K.copy(); bad_k[1, 0, 0] = 0.0                              # noqa: E702
    skew = c.K.copy(); skew[0, 0, 1] = 0.5                                # noqa: E702
    row = c.K.copy(); row[0, 2, 2] = 2.0                                  # noqa: E702
    scaled = c.world2cam.copy(); scaled[0, :3, :3] *= 2                   # noqa: E702
    bottom = c.world2cam.copy(); bottom[1, 3, 0] = 1                      # noqa: E702
    nan_means = s.means.copy(); nan_means[3, 1] = np.nan                  # noqa: E702
    inf_sh0 = s.sh0.copy(); inf_sh0[0, 0] = np.inf                        # noqa: E702
    zero_scale = s.scales.copy(); zero_scale[2, 1] = 0                    # noqa: E702
    zero_quat = s.quats.copy(); zero_quat[4] = 0                          # noqa: E702
    nan_k = c.K.copy(); nan_k[0, 0, 2] = np.nan                           # noqa: E702
    return [
        ("quats-length", _replace(s, quats=s.quats[:5]), c, 16, 8, None, InputShapeError, "splats.quats"),
        ("opacity-shape", _replace(s, opacities=s.opacities[:, None]), c, 16, 8, None, InputShapeError, "splats.opacities"),
        ("views-mismatch", _replace(s, means=np.stack([s.means] * 3)), c, 16, 8, None, InputShapeError, "splats.means"),
        ("k-shape", s, Cameras(c.world2cam, c.K[:, :2]), 16, 8, None, InputShapeError, "cameras.K"),
        ("background-shape", s, c, 16, 8, [0.1, 0.2], InputShapeError, "background"),
        ("int-dtype", _replace(s, means=s.means.astype(np.int32)), c, 16, 8, None, InputTypeError, "splats.means"),
        ("float16", _replace(s, means=s.means.astype(np.float16)), c, 16, 8, None, InputTypeError, "splats.means"),
        ("mixed-precision", _replace(s, scales=s.scales.astype(np.float64)), c, 16, 8, None, InputTypeError, "splats.scales"),
        ("mixed-array-types", s, Cameras(torch.from_numpy(c.world2cam), c.K), 16, 8, None, InputTypeError, "cameras.world2cam"),
        ("not-splats", s.arrays(), c, 16, 8, None, InputTypeError, "splats"),
        ("nan-means", _replace(s, means=nan_means), c, 16, 8, None, NonFiniteInputError, "splats.means"),
        ("inf-sh0", _replace(s, sh0=inf_sh0), c, 16, 8, None, NonFiniteInputError, "splats.sh0"),
        ("nan-k", s, Cameras(c.world2cam, nan_k), 16, 8, None, NonFiniteInputError, "cameras.K"),
        ("nan-background", s, c, 16, 8, [0.0, np.nan, 0.0], NonFiniteInputError, "background"),
        ("zero-scale", _replace(s, scales=zero_scale), c, 16, 8, None, InputValueError, "splats.scales"),
        ("negative-scale", _replace(s, scales=-s.scales), c, 16, 8, None, InputValueError, "splats.scales"),
        ("zero-quat", _replace(s, quats=zero_quat), c, 16, 8, None, InputValueError, "splats.quats"),
        ("opacity-range", _replace(s, opacities=s.opacities + f32(1.5)), c, 16, 8, None, InputValueError, "splats.opacities"),
        ("focal", s, Cameras(c.world2cam, bad_k), 16, 8, None, InputValueError, "cameras.K"),
        ("skew", s, Cameras(c.world2cam, skew), 16, 8, None, InputValueError, "cameras.K"),
        ("k-last-row", s, Cameras(c.world2cam, row), 16, 8, None, InputValueError, "cameras.K"),
        ("non-rigid", s, Cameras(scaled, c.K), 16, 8, None, InputValueError, "cameras.world2cam"),
        ("w2c-last-row", s, Cameras(bottom, c.K), 16, 8, None, InputValueError, "cameras.world2cam"),
        ("width-zero", s, c, 0, 8, None, InputValueError, "width"),
        ("height-negative", s, c, 16, -2, None, InputValueError, "height"),
        ("width-float", s, c, 16.0, 8, None, InputTypeError, "width"),
        ("height-huge", s, c, 16, 100_000, None, InputValueError, "height"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda case: case[0])
def test_bad_input_raises_typed_error_naming_the_argument(case):
    _, splats, cameras, width, height, background, error, argument = case
    with pytest.raises(error) as info:
        rasterize(splats, cameras, width, height, background=background, backend="reference")
    assert info.value.argument == argument
    assert str(info.value).startswith(argument + ":") and "expected" in str(info.value)


def test_wrong_device_is_a_typed_error():
    splats, cameras = random_scene(6, 1, 16, 8)
    ts, tc = to_torch(splats, cameras)
    with pytest.raises(InputDeviceError) as info:
        rasterize(ts, Cameras(tc.world2cam, tc.K.to("meta")), 16, 8)
    assert info.value.argument == "cameras.K"


def test_zero_gaussians_and_value_check_opt_out_are_valid():
    s, c = random_scene(0, 1, 16, 8)
    assert s.means.shape == (0, 3)
    assert rasterize(s, c, 16, 8).alpha.shape == (1, 8, 16, 1)
    s2, _ = random_scene(5, 1, 16, 8)
    bad = _replace(s2, scales=-s2.scales)
    rasterize(bad, c, 16, 8, check_values=False)               # the caller vouches for the values
