"""Native backends (C++ ``cpu``, CUDA ``cuda``) against the PyTorch reference, plus the strict
argument checks of ``flexavatar._native`` at the C++ boundary.

The oracle is ``backend="reference"`` on the same inputs: images and alpha within 1e-4, depth
within 1e-3; CUDA gradients within 1e-3 of the reference's autograd gradients.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest

from flexavatar.kernels import BackendUnavailableError, Cameras, Splats, rasterize
from flexavatar.kernels.testing import random_head_scene, random_scene

native = pytest.importorskip("flexavatar._native", reason="flexavatar._native is not built")

IMAGE_TOL, DEPTH_TOL, GRAD_TOL = 1e-4, 1e-3, 1e-3

# (Gaussians, views, width, height, seed): non-square, not multiples of 16, off-centre principal
# points (random_scene's default), several cameras.
SCENES = [
    (300, 3, 96, 64, 0),
    (1500, 2, 128, 80, 1),
    (2500, 1, 64, 64, 2),
    (800, 4, 72, 120, 3),
]


def _reference(splats: Splats, cameras: Cameras, width: int, height: int, background):
    import torch

    t = lambda x: torch.from_numpy(np.ascontiguousarray(x))  # noqa: E731
    result = rasterize(Splats(**{k: t(v) for k, v in splats.arrays().items()}),
                       Cameras(t(cameras.world2cam), t(cameras.K)), width, height,
                       background=t(background), backend="reference")
    return result.rgb.numpy(), result.alpha.numpy(), result.depth.numpy()


def _assert_matches(got, ref):
    rgb, alpha, depth = got
    rgb_ref, alpha_ref, depth_ref = ref
    assert rgb.shape == rgb_ref.shape and alpha.shape == alpha_ref.shape and depth.shape == depth_ref.shape
    np.testing.assert_allclose(rgb, rgb_ref, rtol=0, atol=IMAGE_TOL)
    np.testing.assert_allclose(alpha, alpha_ref, rtol=0, atol=IMAGE_TOL)
    np.testing.assert_allclose(depth, depth_ref, rtol=0, atol=DEPTH_TOL)


def _backgrounds(num_views: int, seed: int) -> np.ndarray:
    return np.random.default_rng(100 + seed).uniform(0, 1, size=(num_views, 3)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# CPU backend vs the reference
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_gaussians,num_views,width,height,seed", SCENES)
def test_cpu_matches_reference_on_random_scenes(num_gaussians, num_views, width, height, seed):
    splats, cameras = random_scene(num_gaussians, num_views, width, height, seed=seed)
    background = _backgrounds(num_views, seed)
    result = rasterize(splats, cameras, width, height, background=background, backend="cpu")
    assert result.backend == "cpu" and isinstance(result.rgb, np.ndarray)
    ref = _reference(splats, cameras, width, height, background)
    _assert_matches((result.rgb, result.alpha, result.depth), ref)
    assert result.alpha.mean() > 0.05, "the scene should cover a good part of the image"


def test_cpu_matches_reference_with_per_view_splats():
    """[N, G, ...] splats (one set per view, e.g. animation frames) go through as B = N batches."""
    splats, cameras = random_scene(600, 3, 80, 56, seed=5)
    rng = np.random.default_rng(6)
    per_view = Splats(
        means=splats.means[None] + rng.normal(0, 0.05, size=(3, 600, 3)).astype(np.float32),
        quats=np.repeat(splats.quats[None], 3, axis=0),
        scales=np.repeat(splats.scales[None], 3, axis=0),
        opacities=np.stack([splats.opacities, splats.opacities[::-1], splats.opacities]),
        sh0=np.repeat(splats.sh0[None], 3, axis=0),
    )
    background = _backgrounds(3, 5)
    result = rasterize(per_view, cameras, 80, 56, background=background, backend="cpu")
    _assert_matches((result.rgb, result.alpha, result.depth), _reference(per_view, cameras, 80, 56, background))


def test_cpu_matches_reference_on_a_small_head_scene():
    splats, cameras = random_head_scene(num_gaussians=6000, seed=3, width=128, height=128)
    background = np.array([[0.1, 0.2, 0.3]], dtype=np.float32)
    result = rasterize(splats, cameras, 128, 128, background=background, backend="cpu")
    _assert_matches((result.rgb, result.alpha, result.depth), _reference(splats, cameras, 128, 128, background))


def test_cpu_accepts_torch_cpu_tensors_and_is_chosen_by_auto():
    import torch

    splats, cameras = random_scene(200, 2, 48, 40, seed=8)
    t = lambda x: torch.from_numpy(x)  # noqa: E731
    tsplats = Splats(**{k: t(v) for k, v in splats.arrays().items()})
    with torch.no_grad():
        result = rasterize(tsplats, Cameras(t(cameras.world2cam), t(cameras.K)), 48, 40)
    assert result.backend == "cpu" and isinstance(result.rgb, torch.Tensor)
    direct = rasterize(splats, cameras, 48, 40, backend="cpu")
    np.testing.assert_array_equal(result.rgb.numpy(), direct.rgb)


def test_empty_and_behind_camera_scenes_give_background():
    splats, cameras = random_scene(50, 2, 40, 24, seed=9)
    background = _backgrounds(2, 9)
    empty = Splats(**{k: v[:0] for k, v in splats.arrays().items()})
    result = rasterize(empty, cameras, 40, 24, background=background, backend="cpu")
    np.testing.assert_array_equal(result.rgb, np.broadcast_to(background[:, None, None, :], result.rgb.shape))
    assert not result.alpha.any() and not result.depth.any()
    # Every Gaussian 2 m behind the first camera (camera centre minus 2 x its viewing axis).
    w2c = cameras.world2cam[:1]
    centre = -w2c[0, :3, :3].T @ w2c[0, :3, 3]
    behind_point = centre - 2.0 * w2c[0, 2, :3]
    behind = Splats(means=np.broadcast_to(behind_point, splats.means.shape).astype(np.float32), quats=splats.quats,
                    scales=splats.scales, opacities=splats.opacities, sh0=splats.sh0)
    result = rasterize(behind, Cameras(w2c, cameras.K[:1]), 40, 24, background=background[:1], backend="cpu")
    assert not result.alpha.any()
    np.testing.assert_array_equal(result.rgb[0], np.broadcast_to(background[0], (24, 40, 3)))


def test_cpu_backend_runs_without_torch():
    """The edge-device path: numpy in, numpy out, torch never imported."""
    code = textwrap.dedent("""
        import sys
        from flexavatar.kernels import rasterize
        from flexavatar.kernels.testing import random_scene
        splats, cameras = random_scene(100, 1, 32, 32, seed=0)
        result = rasterize(splats, cameras, 32, 32, backend="auto")
        assert result.backend == "cpu", result.backend
        assert result.alpha.max() > 0
        assert "torch" not in sys.modules, "torch was imported"
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_thread_count_does_not_change_the_result():
    splats, cameras = random_scene(1000, 2, 96, 96, seed=4)
    args = [np.ascontiguousarray(np.broadcast_to(x, (1, *x.shape))) for x in splats.arrays().values()]
    vm, ks = cameras.world2cam.reshape(1, 2, 4, 4), cameras.K.reshape(1, 2, 3, 3)
    one = native.rasterize_cpu(*args, vm, ks, 96, 96, num_threads=1)
    many = native.rasterize_cpu(*args, vm, ks, 96, 96, num_threads=3)
    for a, b in zip(one, many, strict=True):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# Bad input at the native boundary
# ---------------------------------------------------------------------------------------------
def _valid_native_args(b=1, g=20, c=2):
    rng = np.random.default_rng(0)
    f32 = lambda *shape: rng.uniform(0.1, 1.0, size=shape).astype(np.float32)  # noqa: E731
    viewmats = np.broadcast_to(np.eye(4, dtype=np.float32), (b, c, 4, 4)).copy()
    viewmats[..., 2, 3] = 3.0
    ks = np.broadcast_to(np.float32([[40, 0, 16], [0, 40, 16], [0, 0, 1]]), (b, c, 3, 3)).copy()
    return dict(means=f32(b, g, 3) - 0.5, quats=f32(b, g, 4), scales=f32(b, g, 3) * 0.1, opacities=f32(b, g),
                sh0=f32(b, g, 3), viewmats=viewmats, Ks=ks, width=32, height=32)


def test_valid_native_call_works():
    image, alpha, depth = native.rasterize_cpu(**_valid_native_args())
    assert image.shape == (1, 2, 32, 32, 3) and alpha.shape == depth.shape == (1, 2, 32, 32)
    assert alpha.max() > 0.1


@pytest.mark.parametrize("name,value,error,words", [
    ("means", None, "InputError", ["means", "None"]),
    ("quats", "bad", "InputError", ["quats", "numpy"]),
    ("scales", np.ones((1, 20, 3), np.float64), "DTypeError", ["scales", "float32", "float64"]),
    ("opacities", np.ones((1, 20), np.int32), "DTypeError", ["opacities", "float32"]),
    ("means", np.ones((1, 40, 3), np.float32)[:, ::2], "InputError", ["means", "contiguous"]),
    ("quats", np.ones((1, 19, 4), np.float32), "InputError", ["quats", "[1, 20, 4]", "[1, 19, 4]"]),
    ("sh0", np.ones((1, 20, 4), np.float32), "InputError", ["sh0", "[B, G, 3]"]),
    ("opacities", np.ones((1, 20, 1), np.float32), "InputError", ["opacities", "[B, G]"]),
    ("viewmats", np.ones((1, 2, 3, 4), np.float32), "InputError", ["viewmats", "[B, C, 4, 4]"]),
    ("Ks", np.ones((1, 3, 3, 3), np.float32), "InputError", ["Ks", "[1, 2, 3, 3]"]),
    ("Ks", np.zeros((1, 2, 3, 3), np.float32), "InputError", ["Ks", "fx"]),
    ("means", np.ones((20, 3), np.float32), "InputError", ["means", "[B, G, 3]"]),
    ("width", -5, "InputError", ["width", "-5"]),
    ("height", 0, "InputError", ["height"]),
    ("backgrounds", np.ones((1, 2, 4), np.float32), "InputError", ["backgrounds", "[B, C, 3]"]),
    ("num_threads", -1, "InputError", ["num_threads"]),
])
def test_bad_native_arguments_raise_typed_errors(name, value, error, words):
    args = _valid_native_args()
    args[name] = value
    with pytest.raises(getattr(native, error)) as info:
        native.rasterize_cpu(**args)
    assert isinstance(info.value, native.NativeError) and isinstance(info.value, ValueError)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


def test_zero_gaussians_is_valid_at_the_boundary():
    args = _valid_native_args(g=0)
    image, alpha, depth = native.rasterize_cpu(**args)
    assert not alpha.any() and not image.any()


def test_read_only_inputs_are_accepted_without_copy():
    args = _valid_native_args()
    for key in ("means", "quats", "scales", "opacities", "sh0"):
        args[key].setflags(write=False)
    native.rasterize_cpu(**args)


def test_cuda_entry_points_fail_cleanly_without_a_usable_device():
    info = native.cuda_info()
    assert set(info) >= {"available", "reason", "device_count", "library_loaded"}
    if native.build_info()["cuda"]:
        # Built with nvcc: the CUDA library sits beside the module and loads even without a driver.
        assert info["library_loaded"], info["reason"]
    if info["available"]:
        pytest.skip("a CUDA device is present: covered by the gpu tests")
    assert info["reason"]
    if info["library_loaded"]:
        # the CUDA runtime's own reason (no driver, a driver too old for the runtime, no device), not a guess
        assert "cudaError" in info["reason"], info["reason"]
    args = _valid_native_args()
    with pytest.raises(native.NativeError) as err:  # numpy arrays are not CUDA arrays / no library
        native.cuda_forward(args["means"], args["quats"], args["scales"], args["opacities"], args["sh0"],
                            args["viewmats"], args["Ks"], None, np.zeros((1, 2, 32, 32, 3), np.float32),
                            np.zeros((1, 2, 32, 32), np.float32), np.zeros((1, 2, 32, 32), np.float32), 32, 32)
    assert isinstance(err.value, (native.InputError, native.UnavailableError))
    splats, cameras = random_scene(10, 1, 16, 16)
    with pytest.raises(BackendUnavailableError, match="cuda"):
        rasterize(splats, cameras, 16, 16, backend="cuda")


# ---------------------------------------------------------------------------------------------
# CUDA backend (needs a GPU; skipped by tests/conftest.py otherwise)
# ---------------------------------------------------------------------------------------------
def _torch_scene(splats: Splats, cameras: Cameras, device, requires_grad=False):
    import torch

    ts = {k: torch.tensor(v, device=device, requires_grad=requires_grad) for k, v in splats.arrays().items()}
    return Splats(**ts), Cameras(torch.tensor(cameras.world2cam, device=device), torch.tensor(cameras.K, device=device))


class _RecordingNative:
    """Stands in for flexavatar._native's CUDA entry point on the CPU: records what the wrapper hands over and
    fills the outputs with values derived from the inputs."""

    def __init__(self):
        self.calls = []

    def cuda_forward(self, *args, **kwargs):
        if any(getattr(a, "requires_grad", False) for a in args):   # as the native module's array views refuse them
            raise TypeError("got a tensor that requires grad; pass tensor.detach()")
        self.calls.append((args, kwargs))
        means, image, alpha, depth = args[0], args[8], args[9], args[10]
        image.fill_(float(means.sum())), alpha.fill_(0.5), depth.fill_(float(args[5].sum()))
        return _RecordedState()


class _RecordedState:
    """The stand-in's forward state: an exact sort's count (the native one reads it back to the host)."""
    num_intersections = 1234
    released = False

    def release(self):
        self.released = True


@pytest.mark.parametrize("shared_splats", [True, False])
def test_cuda_wrapper_hands_the_same_arguments_with_and_without_autograd(monkeypatch, shared_splats):
    """The inference path (no autograd node: every runtime frame) and the autograd.Function give the native
    forward the same arrays, layout and settings, and return the same images. CPU tensors + a recording stand-in
    for the CUDA library: the numerics themselves are compared with the reference on a GPU (tests below)."""
    import torch

    from flexavatar.kernels import native as native_backend
    from flexavatar.kernels.validation import validate_request

    recorder = _RecordingNative()
    monkeypatch.setattr(native_backend, "native_module", lambda: recorder)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: type("S", (), {"cuda_stream": 7})())
    native_backend._rasterize_function.cache_clear()
    try:
        splats, cameras = random_scene(50, 3, 24, 16, seed=4)
        if not shared_splats:       # one frame of Gaussians per view
            splats = Splats(**{k: np.ascontiguousarray(np.stack([v] * 3)) for k, v in splats.arrays().items()})
        results = []
        for grad in (False, True):
            ts, tc = _torch_scene(splats, cameras, "cpu", requires_grad=grad)
            request = validate_request(ts, tc, 24, 16, torch.tensor(_backgrounds(3, 4)), check_values=False)
            results.append(native_backend.render_cuda(request))
            assert results[-1].rgb.requires_grad == grad     # an autograd node only when gradients are wanted
        ts, tc = _torch_scene(splats, cameras, "cpu", requires_grad=True)     # leaves that need grad, no_grad on
        with torch.no_grad():
            request = validate_request(ts, tc, 24, 16, torch.tensor(_backgrounds(3, 4)), check_values=False)
            no_grad = native_backend.render_cuda(request)
        assert not no_grad.rgb.requires_grad
        torch.testing.assert_close(no_grad.rgb, results[0].rgb, rtol=0, atol=0)
        (plain_args, plain_kwargs), (grad_args, grad_kwargs), _ = recorder.calls
        assert plain_kwargs == grad_kwargs and plain_kwargs["stream"] == 7
        assert plain_args[11:] == grad_args[11:] == (24, 16)
        b, c = (1, 3) if shared_splats else (3, 1)
        assert tuple(plain_args[0].shape) == (b, 50, 3) and tuple(plain_args[5].shape) == (b, c, 4, 4)
        for x, y in zip(plain_args[:8], grad_args[:8], strict=True):
            assert x.is_contiguous() and y.is_contiguous() and not x.requires_grad and not y.requires_grad
            torch.testing.assert_close(x, y, rtol=0, atol=0)
        for field in ("rgb", "alpha", "depth"):
            torch.testing.assert_close(getattr(results[0], field), getattr(results[1], field).detach(), rtol=0, atol=0)
        assert plain_kwargs["intersection_capacity"] == 0 and plain_kwargs["num_intersections_out"] is None
        assert results[0].intersections == _RecordedState.num_intersections      # exact: the host count
        assert results[1].intersections is None                                 # autograd keeps its state

        # sync-free: the capacity and an int64 [1] count on the splats' device go in; the count comes back
        ts, tc = _torch_scene(splats, cameras, "cpu")
        request = replace(validate_request(ts, tc, 24, 16, torch.tensor(_backgrounds(3, 4)), check_values=False),
                          intersection_capacity=4096)
        sync_free = native_backend.render_cuda(request)
        kwargs = recorder.calls[-1][1]
        count = kwargs["num_intersections_out"]
        assert kwargs["intersection_capacity"] == 4096
        assert count.dtype == torch.int64 and tuple(count.shape) == (1,) and count.device == ts.means.device
        assert sync_free.intersections is count
        torch.testing.assert_close(sync_free.rgb, results[0].rgb, rtol=0, atol=0)
        # a differentiable render sorts exactly whatever the capacity (the backward needs every intersection)
        gs, gc = _torch_scene(splats, cameras, "cpu", requires_grad=True)
        request = replace(validate_request(gs, gc, 24, 16, torch.tensor(_backgrounds(3, 4)), check_values=False),
                          intersection_capacity=4096)
        native_backend.render_cuda(request)
        assert recorder.calls[-1][1]["intersection_capacity"] == 0
    finally:
        native_backend._rasterize_function.cache_clear()


@pytest.mark.gpu
@pytest.mark.parametrize("num_gaussians,num_views,width,height,seed", SCENES)
def test_cuda_forward_matches_reference(num_gaussians, num_views, width, height, seed):
    import torch

    splats, cameras = random_scene(num_gaussians, num_views, width, height, seed=seed)
    tsplats, tcams = _torch_scene(splats, cameras, "cuda")
    bg = torch.tensor(_backgrounds(num_views, seed), device="cuda")
    got = rasterize(tsplats, tcams, width, height, background=bg, backend="cuda")
    ref = rasterize(tsplats, tcams, width, height, background=bg, backend="reference")
    assert got.backend == "cuda"
    _assert_matches([x.cpu().numpy() for x in (got.rgb, got.alpha, got.depth)],
                    [x.cpu().numpy() for x in (ref.rgb, ref.alpha, ref.depth)])
    # inputs that require grad take the autograd.Function: the same kernels, bit for bit
    gsplats, gcams = _torch_scene(splats, cameras, "cuda", requires_grad=True)
    with_grad = rasterize(gsplats, gcams, width, height, background=bg, backend="cuda")
    assert with_grad.rgb.requires_grad
    for a, b in ((got.rgb, with_grad.rgb), (got.alpha, with_grad.alpha), (got.depth, with_grad.depth)):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)


def _loss_weights(shape_rgb, shape_alpha, device, seed):
    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed)
    return [torch.randn(s, generator=gen).to(device) for s in (shape_rgb, shape_alpha, shape_alpha)]


def _grads(backend, splats, cameras, width, height, bg, weights):

    tsplats, tcams = _torch_scene(splats, cameras, "cuda", requires_grad=True)
    out = rasterize(tsplats, tcams, width, height, background=bg, backend=backend)
    w_rgb, w_alpha, w_depth = weights
    # Depth is weighted by alpha so that nearly transparent pixels (depth = D / alpha) do not dominate.
    loss = (out.rgb * w_rgb).sum() + (out.alpha * w_alpha).sum() + (out.depth * w_depth * out.alpha.detach()).sum()
    loss.backward()
    return {k: getattr(tsplats, k).grad for k in ("means", "quats", "scales", "opacities", "sh0")}, out


@pytest.mark.gpu
@pytest.mark.parametrize("num_gaussians,num_views,width,height,seed", SCENES[:3])
def test_cuda_backward_matches_reference(num_gaussians, num_views, width, height, seed):
    import torch

    splats, cameras = random_scene(num_gaussians, num_views, width, height, seed=seed)
    bg = torch.tensor(_backgrounds(num_views, seed), device="cuda")
    weights = _loss_weights((num_views, height, width, 3), (num_views, height, width, 1), "cuda", seed)
    got, _ = _grads("cuda", splats, cameras, width, height, bg, weights)
    ref, _ = _grads("reference", splats, cameras, width, height, bg, weights)
    for name in ref:
        scale = ref[name].abs().max().item()
        assert scale > 0, name
        torch.testing.assert_close(got[name], ref[name], rtol=GRAD_TOL, atol=GRAD_TOL * scale, msg=name)


@pytest.mark.gpu
def test_cuda_backward_with_per_view_splats():
    import torch

    splats, cameras = random_scene(400, 2, 64, 48, seed=12)
    per_view = Splats(**{k: np.ascontiguousarray(np.stack([v, v])) for k, v in splats.arrays().items()})
    per_view.means[1] += 0.03
    results = {}
    for backend in ("cuda", "reference"):
        tsplats, tcams = _torch_scene(per_view, cameras, "cuda", requires_grad=True)
        bg = torch.tensor(_backgrounds(2, 12), device="cuda")
        out = rasterize(tsplats, tcams, 64, 48, background=bg, backend=backend)
        (out.rgb.square().sum() + out.alpha.sum()).backward()
        results[backend] = [getattr(tsplats, k).grad for k in ("means", "quats", "scales", "opacities", "sh0")]
    for got, ref in zip(results["cuda"], results["reference"], strict=True):
        torch.testing.assert_close(got, ref, rtol=GRAD_TOL, atol=GRAD_TOL * ref.abs().max().item())


@pytest.mark.gpu
def test_cuda_accepts_dlpack_only_arrays_and_rejects_host_memory():
    import torch

    splats, cameras = random_scene(300, 1, 48, 48, seed=2)
    t = {k: torch.tensor(v, device="cuda")[None] for k, v in splats.arrays().items()}
    vm = torch.tensor(cameras.world2cam, device="cuda")[None]
    ks = torch.tensor(cameras.K, device="cuda")[None]

    class DLPackOnly:  # no __cuda_array_interface__: forces the DLPack path
        def __init__(self, tensor):
            self.tensor = tensor

        def __dlpack__(self, stream=None):
            return self.tensor.__dlpack__()

    outs = [torch.zeros(1, 1, 48, 48, 3, device="cuda"), torch.zeros(1, 1, 48, 48, device="cuda"),
            torch.zeros(1, 1, 48, 48, device="cuda")]
    args = [t["means"], t["quats"], t["scales"], t["opacities"], t["sh0"], vm, ks, None]
    native.cuda_forward(*[DLPackOnly(a) if a is not None else None for a in args], *outs, 48, 48)
    ref = rasterize(Splats(**{k: v[0] for k, v in t.items()}), Cameras(vm[0], ks[0]), 48, 48, backend="reference")
    torch.testing.assert_close(outs[1][0, 0], ref.alpha[0, ..., 0], rtol=0, atol=IMAGE_TOL)
    with pytest.raises(native.InputError, match="means"):
        native.cuda_forward(t["means"].cpu(), *args[1:], *outs, 48, 48)
    with pytest.raises(native.InputError, match="image"):
        native.cuda_forward(*args, outs[0][..., :2], outs[1], outs[2], 48, 48)
    with pytest.raises(native.InputError, match="detach"):
        native.cuda_forward(t["means"].clone().requires_grad_(), *args[1:], *outs, 48, 48)


@pytest.mark.gpu
def test_cuda_head_scene_matches_reference():

    splats, cameras = random_head_scene(num_gaussians=20000, seed=1, width=256, height=256)
    tsplats, tcams = _torch_scene(splats, cameras, "cuda")
    got = rasterize(tsplats, tcams, 256, 256, backend="cuda")
    ref = rasterize(tsplats, tcams, 256, 256, backend="reference")
    _assert_matches([x.cpu().numpy() for x in (got.rgb, got.alpha, got.depth)],
                    [x.cpu().numpy() for x in (ref.rgb, ref.alpha, ref.depth)])


@pytest.mark.gpu
@pytest.mark.parametrize("scene", ["head-512", "views-3"])
def test_cuda_sync_free_sort_gives_the_exact_frames_and_count(scene):
    """intersection_capacity > 0 (no host sync inside the call): while the count fits, the same pixels bit for bit
    as the exact sort and the exact count on the device. 512² is 32 × 32 tiles, a power of two: the sentinel keys
    then need the sort's extra bit. Below the count, the frame is incomplete (the caller renders it again) and
    nothing is written out of bounds."""
    import torch

    if scene == "head-512":
        splats, cameras = random_head_scene(num_gaussians=20000, seed=3, width=512, height=512)
        width = height = 512
    else:
        num_gaussians, num_views, width, height, seed = SCENES[0]
        splats, cameras = random_scene(num_gaussians, num_views, width, height, seed=seed)
    tsplats, tcams = _torch_scene(splats, cameras, "cuda")
    exact = rasterize(tsplats, tcams, width, height, backend="cuda")
    n = exact.intersections
    assert isinstance(n, int) and n > 0
    for capacity in (n, 2 * n + 1, 1 << 20):
        free = rasterize(tsplats, tcams, width, height, backend="cuda", intersection_capacity=capacity)
        count = free.intersections
        assert count.dtype == torch.int64 and tuple(count.shape) == (1,) and count.is_cuda
        assert int(count.item()) == n, capacity
        for a, b in ((free.rgb, exact.rgb), (free.alpha, exact.alpha), (free.depth, exact.depth)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    short = rasterize(tsplats, tcams, width, height, backend="cuda", intersection_capacity=n // 2)
    assert int(short.intersections.item()) == n
    assert float((short.alpha - exact.alpha).abs().max()) > 1e-2          # Gaussians missing: not the exact frame
    torch.cuda.synchronize()                                              # and the device is still healthy
    again = rasterize(tsplats, tcams, width, height, backend="cuda")
    torch.testing.assert_close(again.rgb, exact.rgb, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("scene", ["head-512", "views-4", "per-view-splats"])
def test_cuda_depth_first_sort_gives_the_frames_and_gradients_of_tile_depth_keys(scene, monkeypatch):
    """The default sort (Gaussians by depth, then a stable sort of the intersections by tile) orders every tile's
    Gaussians as the (tile << 31 | depth)-key sort does, ties by (view, Gaussian): the same frames bit for bit,
    exact and sync-free, the same count, and the same gradients (up to the backward's atomic summation order)."""
    import torch

    if scene == "head-512":
        splats, cameras = random_head_scene(num_gaussians=20000, seed=4, width=512, height=512)
        width = height = 512
    else:
        num_gaussians, num_views, width, height, seed = SCENES[3] if scene == "views-4" else SCENES[1]
        splats, cameras = random_scene(num_gaussians, num_views, width, height, seed=seed)
        # equal depths: the ties must break the same way in both forms
        splats.means[1::7] = splats.means[0::7][: len(splats.means[1::7])]
    if scene == "per-view-splats":
        splats = Splats(**{k: np.ascontiguousarray(np.stack([v] * cameras.K.shape[0]))
                           for k, v in splats.arrays().items()})
        splats.means[1:] += 0.02
    num_views = cameras.K.shape[0]
    weights = _loss_weights((num_views, height, width, 3), (num_views, height, width, 1), "cuda", 7)
    frames = {}
    for form in ("tile-depth-keys", "depth-first"):
        monkeypatch.setenv("FLEXAVATAR_CUDA_SORT", form)
        tsplats, tcams = _torch_scene(splats, cameras, "cuda")
        exact = rasterize(tsplats, tcams, width, height, backend="cuda")
        free = rasterize(tsplats, tcams, width, height, backend="cuda",
                         intersection_capacity=2 * exact.intersections + 1)
        grads, _ = _grads("cuda", splats, cameras, width, height, None, weights)   # autograd: sorted exactly
        frames[form] = (exact, free, grads)
    (old, old_free, old_grads), (new, new_free, new_grads) = frames["tile-depth-keys"], frames["depth-first"]
    assert new.intersections == old.intersections > 0
    assert int(new_free.intersections.item()) == new.intersections
    for got, want in ((new, old), (new_free, old_free), (new_free, new)):
        for a, b in ((got.rgb, want.rgb), (got.alpha, want.alpha), (got.depth, want.depth)):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=0)
    for name in old_grads:   # the backward sums with atomics (order not fixed): within float rounding
        scale = old_grads[name].abs().max().item()
        torch.testing.assert_close(new_grads[name], old_grads[name], rtol=1e-5, atol=1e-5 * scale, msg=name)
    monkeypatch.setenv("FLEXAVATAR_CUDA_SORT", "bitonic")
    with pytest.raises(native.NativeError, match="FLEXAVATAR_CUDA_SORT: expected depth-first or tile-depth-keys"):
        rasterize(tsplats, tcams, width, height, backend="cuda")


@pytest.mark.gpu
def test_cuda_sync_free_arguments_are_checked():
    import torch

    splats, cameras = random_scene(300, 2, 48, 48, seed=5)
    t, c = _torch_scene(splats, cameras, "cuda")
    args = [x.reshape(1, *x.shape) for x in (t.means, t.quats, t.scales, t.opacities, t.sh0)]
    args += [c.world2cam.reshape(1, 2, 4, 4), c.K.reshape(1, 2, 3, 3), None]
    outs = [torch.empty(s, device="cuda") for s in ((1, 2, 48, 48, 3), (1, 2, 48, 48), (1, 2, 48, 48))]
    with pytest.raises(native.InputError, match="num_intersections_out"):
        native.cuda_forward(*args, *outs, 48, 48, intersection_capacity=1024)
    with pytest.raises(native.InputError, match="intersection_capacity"):
        native.cuda_forward(*args, *outs, 48, 48, intersection_capacity=-1)
    with pytest.raises(native.DTypeError, match="int64"):
        native.cuda_forward(*args, *outs, 48, 48, intersection_capacity=1024,
                            num_intersections_out=torch.zeros(1, device="cuda"))
    count = torch.zeros(1, dtype=torch.int64, device="cuda")
    state = native.cuda_forward(*args, *outs, 48, 48, intersection_capacity=1024, num_intersections_out=count)
    assert state.num_intersections == -1 and int(count.item()) > 0
    grads = [torch.empty_like(x) for x in args[:5]]
    with pytest.raises(native.NativeError, match="sync-free"):
        native.cuda_backward(state, *args, None, outs[1], None, *grads)
