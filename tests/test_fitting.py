"""Avatar fitting (SPEC §15), its SSIM, the observation loader, identity interpolation and the CLI.

The recovery test renders targets from a known avatar code with known expression offsets on a small
random-weight model, starts from a perturbed code and checks that the fit lowers the objective by a
stated factor and reproduces the targets (and a held-out view) to a PSNR threshold.
"""
from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import flexavatar
from flexavatar import fitting_cli, kernels
from flexavatar.cameras import orbit_cameras
from flexavatar.config import small_config
from flexavatar.demo import synthetic_expressions
from flexavatar.dinov2 import DinoV2, DinoV2Config
from flexavatar.fitting import (FitArgumentError, FitConfig, ImageSizeError, MissingCameraError,
                                NonFiniteObservationError, ObservationCountError, ObservationError,
                                ObservationFileError, ObservationShapeError, ObservationValueError,
                                Observations, fit, interpolate, load_observations, render_observations)
from flexavatar.losses import dino_feature_loss, photometric_loss, psnr, ssim
from flexavatar.model import AvatarCode, FlexAvatarModel
from flexavatar.template import Template

SIZE = 32                 # render resolution of the fitting tests (the reference rasterizer is slow on CPU)
FOCAL = 2.5               # normalised fx = fy: the head fills most of the frame
GAUSSIAN_GRID = 32        # 784 Gaussians instead of 3600 (same network, coarser UV sampling)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: thread start-up costs more than it saves (fit test 11 s vs 32 s on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> FlexAvatarModel:
    cfg = small_config()
    return FlexAvatarModel.random(cfg, Template.synthetic(cfg.res_head_tokens, GAUSSIAN_GRID), seed=0)


def _intrinsics(n: int, fx: float = FOCAL) -> torch.Tensor:
    return torch.tensor([[fx, 0, 0.5], [0, fx, 0.5], [0, 0, 1.0]]).expand(n, 3, 3).clone()


def _observations(n: int, size: int = SIZE, images=None) -> Observations:
    images = torch.full((n, 3, size, size), 0.5) if images is None else images
    return Observations(images, orbit_cameras(n), _intrinsics(n), synthetic_expressions(n))


def _state(model):
    return {k: v.clone() for k, v in model.network.state_dict().items()}


# ---- the fit -------------------------------------------------------------------------------------

def test_fit_recovers_renders_of_a_known_code(model):
    gen = torch.Generator().manual_seed(1)
    cfg = model.config
    true_code = torch.randn(cfg.n_head_tokens, 1, cfg.d_hidden, generator=gen)
    true_offsets = 0.3 * torch.randn(3, 135, generator=gen)
    cams = Observations(torch.ones(3, 3, SIZE, SIZE), orbit_cameras(3, radius=0.3), _intrinsics(3),
                        synthetic_expressions(3))
    targets = render_observations(model, true_code, cams, offsets=true_offsets).clamp(0, 1)   # [3, 3, S, S]
    train = Observations(targets[:2], cams.cam2world[:2], cams.intrinsics[:2], cams.expressions[:2])
    held_out = Observations(targets[2:], cams.cam2world[2:], cams.intrinsics[2:],
                            cams.expressions[2:] + true_offsets[2:])      # a view the fit never sees
    init = true_code + 0.3 * torch.randn(true_code.shape, generator=gen)

    def evaluate(code, offsets):
        renders = render_observations(model, code, train, offsets=offsets)
        held = render_observations(model, code, held_out)
        return (photometric_loss(renders, train.images).item(), psnr(renders, train.images).item(),
                psnr(held, held_out.images).item())

    loss0, psnr0, held0 = evaluate(init, None)
    weights_before = _state(model)
    flags_before = [p.requires_grad for p in model.network.parameters()]
    seen = []
    result = fit(model, train, steps=40, init_code=init, callback=seen.append)
    loss1, psnr1, held1 = evaluate(result.code, result.expression_offsets)
    print(f"\nfit 40 steps at {SIZE}²: objective {loss0:.4f} → {loss1:.4f} (÷{loss0 / loss1:.2f}), "
          f"PSNR {psnr0:.2f} → {psnr1:.2f} dB, held-out {held0:.2f} → {held1:.2f} dB, "
          f"{result.seconds / 40 * 1e3:.0f} ms/step ({result.backend})")
    assert loss1 < loss0 / 2.5                      # measured ÷3.4
    assert psnr1 > 30.0 and psnr1 > psnr0 + 6.0     # measured 24.0 → 32.2 dB
    assert held1 > held0 + 3.0                      # measured 23.8 → 28.5 dB: the code, not only the offsets
    # weights frozen and untouched, flags restored; the progress callback saw every step
    after = model.network.state_dict()
    assert all(torch.equal(weights_before[k], after[k]) for k in weights_before)
    assert [p.requires_grad for p in model.network.parameters()] == flags_before
    assert [p.step for p in seen] == list(range(1, 41))
    assert [p.loss for p in seen] == pytest.approx(result.losses)
    assert [p.observation for p in seen] == result.observation_indices
    assert result.backend == "reference"
    assert result.code.tokens.shape == (cfg.n_head_tokens, 1, cfg.d_hidden)
    assert result.expression_offsets.abs().max() > 0     # offsets are optimised too


def test_learning_rate_schedule_and_seeded_order(model):
    obs = _observations(3)
    seen = []
    config = FitConfig(seed=7)
    result = fit(model, obs, steps=5, from_scratch=True, config=config, callback=seen.append)
    # cosine annealing from lr to lr_min over the steps (closed form, step t uses lr_t)
    expected = [config.lr_min + (config.lr - config.lr_min) * (1 + math.cos(math.pi * t / 5)) / 2 for t in range(5)]
    assert [p.lr for p in seen] == pytest.approx(expected, rel=1e-6)
    assert result.observation_indices == torch.randint(3, (5,), generator=torch.Generator().manual_seed(7)).tolist()
    again = fit(model, obs, steps=5, from_scratch=True, config=config)
    assert torch.equal(again.code.tokens, result.code.tokens)
    assert torch.equal(result.initial_code.tokens, torch.zeros_like(result.initial_code.tokens))
    numpy_seed = fit(model, _observations(3, size=16), steps=2, from_scratch=True, config=FitConfig(seed=np.int64(7)))
    assert numpy_seed.observation_indices == torch.randint(3, (2,), generator=torch.Generator().manual_seed(7)).tolist()


def test_render_matches_the_camera_conventions(model):
    """Independent oracle: public decode + rasterize with K built by hand (row 0 × W, row 1 × H),
    world2cam = inverse(cam2world), white background; a non-square image catches swapped rows."""
    obs = Observations(torch.ones(2, 3, 24, 40), orbit_cameras(2), _intrinsics(2, 1.9), synthetic_expressions(2))
    code = torch.randn(model.config.n_head_tokens, 1, model.config.d_hidden, generator=torch.Generator().manual_seed(3))
    offsets = 0.2 * torch.randn(2, 135, generator=torch.Generator().manual_seed(4))
    ours = render_observations(model, code, obs, offsets=offsets)                      # [2, 3, 24, 40]
    for i in range(2):
        g = model.decode(AvatarCode(code), (obs.expressions[i] + offsets[i])[None], dataset_id=1)
        k = obs.intrinsics[i].clone()
        k[0] *= 40
        k[1] *= 24
        out = kernels.rasterize(kernels.Splats(g.means[0], g.quats[0], g.scales[0], g.opacities[0], g.sh0[0]),
                                kernels.Cameras(torch.linalg.inv(obs.cam2world[i])[None], k[None]), 40, 24,
                                background=[1.0, 1.0, 1.0], backend="reference")
        torch.testing.assert_close(ours[i], out.rgb[0].permute(2, 0, 1), atol=1e-5, rtol=0)
    assert (ours < 0.99).float().mean() > 0.05      # the head is in view, not a blank frame


def test_encoder_initialises_from_the_first_image_only(model):
    cfg = model.config
    s = cfg.image_size
    images = torch.rand(2, 3, s, s, generator=torch.Generator().manual_seed(5))
    obs = _observations(2, size=s, images=images)
    features = torch.randn(1, cfg.feature_dim, 8, 8, generator=torch.Generator().manual_seed(6))
    result = fit(model, obs, steps=1, features=features)
    expected = model.encode(images[:1], obs.cam2world[:1], obs.intrinsics[:1], features=features[:, None])
    torch.testing.assert_close(result.initial_code.tokens, expected.tokens, atol=0, rtol=0)
    assert not result.dino_loss                     # no DINOv2 anywhere: photometric loss only

    # with a DINOv2 module: the encoder runs it on the first image, and the feature loss is on
    torch.manual_seed(0)
    dino = DinoV2(DinoV2Config(dim=cfg.feature_dim, depth=1, n_heads=2)).eval()
    with_dino = FlexAvatarModel(cfg, model.template, dino)
    with_dino.network.load_state_dict(model.network.state_dict())
    dino_weights = {k: v.clone() for k, v in dino.state_dict().items()}
    result = fit(with_dino, obs, steps=1)
    torch.testing.assert_close(result.initial_code.tokens,
                               with_dino.encode(images[:1], obs.cam2world[:1], obs.intrinsics[:1]).tokens)
    assert result.dino_loss
    assert all(torch.equal(dino_weights[k], v) for k, v in dino.state_dict().items())
    # the objective is the photometric loss + 1.0 × the feature loss of this very step
    render = render_observations(with_dino, result.initial_code, obs, indices=[result.observation_indices[0]])
    target = images[result.observation_indices[0]][None]
    expected_loss = photometric_loss(render, target) + dino_feature_loss(dino(render), dino(target))
    assert result.losses[0] == pytest.approx(expected_loss.item(), rel=1e-4)
    no_dino = fit(with_dino, obs, steps=1, config=FitConfig(dino_weight=0.0))
    assert not no_dino.dino_loss


# ---- losses --------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (1, 3, 45, 23), (3, 1, 11, 64)])
def test_ssim_matches_pytorch_msssim(shape):
    pytorch_msssim = pytest.importorskip("pytorch_msssim", reason="test extra: pip install pytorch-msssim")
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.rand(shape, generator=gen, dtype=torch.float64)
    y = (x + 0.2 * torch.randn(shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    # their default window is built in float32 (taps off by ~1e-8); the float64 one isolates the formula
    taps = np.exp(-np.arange(-5.0, 6.0) ** 2 / (2 * 1.5 ** 2))
    win = torch.from_numpy(taps / taps.sum()).view(1, 1, 1, 11).repeat(shape[1], 1, 1, 1)
    theirs = pytorch_msssim.ssim(x, y, data_range=1.0, win=win, K=(0.01, 0.03))
    torch.testing.assert_close(ssim(x, y, padding="valid"), theirs, atol=1e-12, rtol=0)
    theirs_default = pytorch_msssim.ssim(x, y, data_range=1.0, win_size=11, win_sigma=1.5, K=(0.01, 0.03))
    torch.testing.assert_close(ssim(x, y, padding="valid"), theirs_default, atol=1e-6, rtol=0)
    # 3DGS "same" padding = valid windows over the zero-padded images
    pad = lambda t: F.pad(t, (5, 5, 5, 5))  # noqa: E731
    theirs_same = pytorch_msssim.ssim(pad(x), pad(y), data_range=1.0, win=win)
    torch.testing.assert_close(ssim(x, y), theirs_same, atol=1e-12, rtol=0)
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-12)
    assert ssim(x, y).item() < 0.9


def test_dino_feature_loss_is_scale_free_and_zero_for_equal_features():
    f = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    assert dino_feature_loss(f, 3.0 * f).item() == pytest.approx(0.0, abs=1e-6)
    assert dino_feature_loss(f, -f).item() == pytest.approx(2.0, abs=1e-6)


# ---- bad input: typed errors before any optimisation step ----------------------------------------

def _bad(field: str, value):
    def make():
        base = dict(images=torch.full((3, 3, SIZE, SIZE), 0.5), cam2world=orbit_cameras(3),
                    intrinsics=_intrinsics(3), expressions=synthetic_expressions(3))
        base[field] = value(base[field]) if callable(value) else value
        return Observations(**base)
    return make


@pytest.mark.parametrize("make, error, argument", [
    (_bad("expressions", lambda e: e[:2]), ObservationCountError, "expressions"),
    (_bad("images", lambda im: im[:0]), ObservationCountError, "images"),
    (_bad("cam2world", None), MissingCameraError, "cam2world"),
    (_bad("cam2world", lambda c: c[:2]), MissingCameraError, "cam2world"),
    (_bad("intrinsics", None), MissingCameraError, "intrinsics"),
    (_bad("images", torch.full((3, 3, 8, 8), 0.5)), ImageSizeError, "images"),
    (_bad("images", torch.full((3, 4, SIZE, SIZE), 0.5)), ObservationShapeError, "images"),
    (_bad("images", lambda im: im.index_put((torch.tensor([1]),), torch.tensor(float("nan")))),
     NonFiniteObservationError, "images"),
    (_bad("expressions", lambda e: e.index_put((torch.tensor([2]),), torch.tensor(float("inf")))),
     NonFiniteObservationError, "expressions"),
    (_bad("images", lambda im: im * 255), ObservationValueError, "images"),
    (_bad("images", lambda im: (im * 255).to(torch.uint8)), ObservationValueError, "images"),
    (_bad("intrinsics", lambda k: k * torch.tensor([[SIZE], [SIZE], [1.0]])), ObservationValueError, "intrinsics"),
    (_bad("cam2world", lambda c: c * 2), ObservationValueError, "cam2world"),
])
def test_bad_observations_raise_typed_errors(make, error, argument):
    with pytest.raises(error) as info:
        make()
    assert isinstance(info.value, ObservationError) and isinstance(info.value, flexavatar.errors.InputError)
    assert info.value.argument == argument and info.value.expected


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(steps=0, from_scratch=True), FitArgumentError, "steps"),
    (dict(init_code=torch.zeros(16, 1, 64)), FitArgumentError, r"\(64, 1, 64\)"),
    (dict(init_code=torch.full((64, 1, 64), float("nan"))), FitArgumentError, "NaN"),
    (dict(), FitArgumentError, "DINOv2"),                                     # no encoder features
    (dict(from_scratch=True, config=FitConfig(lr=-1.0)), FitArgumentError, "lr"),
    (dict(from_scratch=True, config=FitConfig(dataset_id=2)), FitArgumentError, "dataset_id"),
    (dict(from_scratch=True, config=FitConfig(dataset_id=0.5)), FitArgumentError, "dataset_id"),   # not truncated
    (dict(from_scratch=True, config=FitConfig(dataset_id=True)), FitArgumentError, "dataset_id"),
    (dict(from_scratch=True, config=FitConfig(seed="a")), FitArgumentError, "seed"),
    (dict(from_scratch=True, config=FitConfig(lr=1e-3, lr_min=1e-2)), FitArgumentError, "lr_min"),  # would rise
])
def test_bad_fit_arguments_fail_before_any_step(model, kwargs, error, match):
    steps = kwargs.pop("steps", 3)
    calls, before = [], _state(model)
    with pytest.raises(error, match=match):
        fit(model, _observations(2), steps=steps, callback=calls.append, **kwargs)
    assert calls == [] and all(torch.equal(before[k], v) for k, v in model.network.state_dict().items())


def test_render_observations_checks_its_arguments_and_follows_the_model_dtype(model):
    import copy
    obs = _observations(2, size=16)
    code = torch.randn(model.config.n_head_tokens, 1, model.config.d_hidden, generator=torch.Generator().manual_seed(8))
    for kwargs, match in ((dict(indices=[5]), r"indices \[5\].*\[0, 2\)"), (dict(indices=[-1]), "indices"),
                          (dict(indices=[0.5]), "indices"), (dict(indices=[]), "indices"),
                          (dict(offsets=torch.zeros(1, 135)), r"offsets.*\[2, 135\].*\(1, 135\)")):
        with pytest.raises(FitArgumentError, match=match):
            render_observations(model, code, obs, **kwargs)
    ours = render_observations(model, code, obs, indices=np.array([1]))
    double = render_observations(copy.deepcopy(model).double(), code, obs, indices=[1])   # float32 observations
    assert double.dtype == torch.float64
    torch.testing.assert_close(double.float(), ours, atol=1e-4, rtol=0)


def test_encoder_needs_square_photos(model):
    obs = Observations(torch.full((2, 3, 24, 32), 0.5), orbit_cameras(2), _intrinsics(2), synthetic_expressions(2))
    features = torch.zeros(1, model.config.feature_dim, 8, 8)
    calls = []
    with pytest.raises(ImageSizeError, match="square"):
        fit(model, obs, steps=2, features=features, callback=calls.append)
    assert calls == []


# ---- the folder loader ---------------------------------------------------------------------------

def _write_frames(folder, n: int, size=(20, 16), rgba: bool = True) -> np.ndarray:
    """PNG frames with a known alpha; returns the expected images composited on white [n, 3, H, W]."""
    from PIL import Image
    rng = np.random.default_rng(0)
    expected = []
    for i in range(n):
        pixels = rng.integers(0, 256, (size[1], size[0], 4 if rgba else 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"frame_{i:03d}.png")
        rgb = pixels[..., :3] / 255.0
        alpha = pixels[..., 3:] / 255.0 if rgba else 1.0
        expected.append((rgb * alpha + 1.0 - alpha).transpose(2, 0, 1))
    return np.stack(expected)


def test_load_observations_json_with_shared_intrinsics(tmp_path):
    expected = _write_frames(tmp_path, 3)
    c2w, expr = orbit_cameras(3), synthetic_expressions(3)
    k = _intrinsics(1)[0]
    doc = {"intrinsics": k.tolist(), "frames": [
        {"image": f"frame_{i:03d}.png", "cam2world": c2w[i].tolist(), "expression": expr[i].tolist()}
        for i in range(3)]}
    (tmp_path / "cameras.json").write_text(json.dumps(doc))
    obs = load_observations(tmp_path)
    assert (obs.width, obs.height, len(obs)) == (20, 16, 3)
    np.testing.assert_allclose(obs.images.numpy(), expected, atol=1e-6)       # RGBA over white
    torch.testing.assert_close(obs.cam2world, c2w)
    torch.testing.assert_close(obs.intrinsics, k.expand(3, 3, 3))
    torch.testing.assert_close(obs.expressions, expr)
    assert obs.names == ("frame_000.png", "frame_001.png", "frame_002.png")


def test_load_observations_npz(tmp_path):
    expected = _write_frames(tmp_path, 2, rgba=False)
    c2w, expr = orbit_cameras(2), synthetic_expressions(2)
    np.savez(tmp_path / "observations.npz", cam2world=c2w.numpy(), intrinsics=_intrinsics(2).numpy(),
             expressions=expr.numpy())
    obs = load_observations(tmp_path / "observations.npz")
    np.testing.assert_allclose(obs.images.numpy(), expected, atol=1e-6)
    torch.testing.assert_close(obs.cam2world, c2w)


def test_loader_errors(tmp_path):
    from PIL import Image
    with pytest.raises(ObservationFileError, match="does not exist"):
        load_observations(tmp_path / "nowhere")
    with pytest.raises(ObservationFileError, match="cameras.json"):
        load_observations(tmp_path)
    _write_frames(tmp_path, 2)
    frames = [{"image": f"frame_{i:03d}.png", "cam2world": orbit_cameras(1)[0].tolist(),
               "intrinsics": _intrinsics(1)[0].tolist(), "expression": [0.0] * 135} for i in range(2)]
    del frames[1]["cam2world"]
    (tmp_path / "cameras.json").write_text(json.dumps({"frames": frames}))
    with pytest.raises(MissingCameraError, match="frame_001.png"):
        load_observations(tmp_path)
    frames[1]["cam2world"] = frames[0]["cam2world"]
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "frame_001.png")   # another size
    (tmp_path / "cameras.json").write_text(json.dumps({"frames": frames}))
    with pytest.raises(ImageSizeError, match="frame_001.png"):
        load_observations(tmp_path)
    frames[1]["image"] = "missing.png"
    (tmp_path / "cameras.json").write_text(json.dumps({"frames": frames}))
    with pytest.raises(ObservationFileError, match="missing.png"):
        load_observations(tmp_path)
    (tmp_path / "cameras.json").unlink()
    np.savez(tmp_path / "cameras.npz", cam2world=orbit_cameras(2).numpy(), intrinsics=_intrinsics(2).numpy(),
             expressions=np.zeros((3, 135), np.float32))                 # 3 codes for 2 frames
    (tmp_path / "frame_001.png").unlink()
    _write_frames(tmp_path, 2)
    with pytest.raises(ObservationCountError, match="expressions"):
        load_observations(tmp_path)


def _one_frame_folder(folder, image_name: str) -> None:
    (folder / "observations.json").write_text(json.dumps({"frames": [
        {"image": image_name, "cam2world": orbit_cameras(1)[0].tolist(), "intrinsics": _intrinsics(1)[0].tolist(),
         "expression": [0.0] * 135}]}))


def test_loader_keeps_16_bit_grey_and_transparency(tmp_path):
    from PIL import Image
    Image.fromarray(np.full((16, 16), 32768, np.uint16)).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"
    _one_frame_folder(tmp_path, "grey16.png")
    np.testing.assert_allclose(load_observations(tmp_path).images.numpy(), 32768 / 65535, atol=1e-6)   # not white
    rgb = np.full((16, 16, 3), 100, np.uint8)
    rgb[:8] = 0
    Image.fromarray(rgb).save(tmp_path / "keyed.png", transparency=(0, 0, 0))        # tRNS: black = transparent
    _one_frame_folder(tmp_path, "keyed.png")
    images = load_observations(tmp_path).images.numpy()
    np.testing.assert_allclose(images[0, :, :8], 1.0)                                 # composited onto white
    np.testing.assert_allclose(images[0, :, 8:], 100 / 255, atol=1e-6)
    Image.fromarray(np.full((16, 16), 0.5, np.float32)).save(tmp_path / "float.tif")   # mode F: no value range
    _one_frame_folder(tmp_path, "float.tif")
    with pytest.raises(ObservationFileError, match=r"float.tif: is a PIL image of mode 'F'"):
        load_observations(tmp_path)


def test_image_conversion_is_shared_and_torch_free():
    """flexavatar.images is the one PIL → array conversion; the runtime calls it, the model package imports
    neither torch (for it) nor the runtime."""
    import subprocess
    code = ("import sys, flexavatar.images; "
            "assert not {'torch', 'flexavatar.runtime', 'runtime'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    source = (REPO / "runtime" / "images.py").read_text()
    assert "from flexavatar.images import" in source and "has_transparency_data" not in source


# ---- identity interpolation ----------------------------------------------------------------------

def test_interpolate_is_the_linear_blend(tmp_path):
    gen = torch.Generator().manual_seed(2)
    a, b = (AvatarCode(torch.randn(64, 1, 32, generator=gen, dtype=torch.float64)) for _ in range(2))
    for t in (0.0, 0.25, 0.5, 1.0, 1.5):
        torch.testing.assert_close(interpolate(a, b, t).tokens, (1 - t) * a.tokens + t * b.tokens,
                                   atol=1e-12, rtol=0)
    assert torch.equal(interpolate(a, b, 0.0).tokens, a.tokens) and torch.equal(interpolate(a, b, 1.0).tokens, b.tokens)
    assert flexavatar.interpolate is interpolate
    a.save(tmp_path / "a.npy")
    b.save(tmp_path / "b.npy")
    blend = flexavatar.interpolate(tmp_path / "a.npy", str(tmp_path / "b.npy"), 0.3)
    torch.testing.assert_close(blend.tokens, (0.7 * a.tokens + 0.3 * b.tokens).float())
    with pytest.raises(FitArgumentError, match="shape"):
        interpolate(a, AvatarCode(torch.zeros(16, 1, 32)), 0.5)
    with pytest.raises(FitArgumentError, match="finite"):
        interpolate(a, b, float("nan"))
    with pytest.raises(FitArgumentError, match="avatar_b"):
        interpolate(a, [1, 2], 0.5)
    for t in (np.float32(0.25), np.array(0.25), torch.tensor(0.25), torch.tensor(0.25, dtype=torch.float64)):
        torch.testing.assert_close(interpolate(a, b, t).tokens, interpolate(a, b, 0.25).tokens, atol=0, rtol=0)
    for t in (True, torch.tensor(True), torch.tensor([0.25]), np.array([0.25]), "0.25", 1j, np.float32("inf")):
        with pytest.raises(FitArgumentError, match="finite real"):
            interpolate(a, b, t)


# ---- the CLI -------------------------------------------------------------------------------------

def test_cli_is_registered():
    scripts = (REPO / "pyproject.toml").read_text().split("[project.scripts]")[1].split("\n[")[0]
    assert 'flexavatar-fit = "flexavatar.fitting_cli:main"' in scripts


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
    """A small random checkpoint (config 'small', synthetic template) and an observation folder."""
    from PIL import Image
    root = tmp_path_factory.mktemp("fit_cli")
    cfg = small_config()
    model = FlexAvatarModel.random(cfg, Template.synthetic(cfg.res_head_tokens, cfg.res_gaussian_grid), seed=1)
    model.save_checkpoint(root / "ckpt.pt")
    code = torch.randn(cfg.n_head_tokens, 1, cfg.d_hidden, generator=torch.Generator().manual_seed(9))
    obs = _observations(2)
    renders = render_observations(model, code, obs).clamp(0, 1)
    folder = root / "frames"
    folder.mkdir()
    frames = []
    for i in range(2):
        Image.fromarray((renders[i].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)).save(folder / f"{i}.png")
        frames.append({"image": f"{i}.png", "cam2world": obs.cam2world[i].tolist(),
                       "intrinsics": obs.intrinsics[i].tolist(), "expression": obs.expressions[i].tolist()})
    (folder / "observations.json").write_text(json.dumps({"frames": frames}))
    return root, model, folder


def test_cli_fit_writes_code_and_comparison(cli_setup, capsys):
    from PIL import Image
    root, model, folder = cli_setup
    out = root / "avatar.npy"
    rc = fitting_cli.main([str(root / "ckpt.pt"), str(folder), "-o", str(out), "--steps", "3", "--from-scratch",
                           "--template", "synthetic", "--config", "small", "--seed", "4"])
    assert rc == 0
    code = np.load(out)
    assert code.shape == (64, 1, 64) and code.dtype == np.float32
    direct = fit(model, load_observations(folder), steps=3, from_scratch=True, config=FitConfig(seed=4))
    np.testing.assert_allclose(code, direct.code.tokens.numpy(), atol=1e-5)
    sheet = np.asarray(Image.open(root / "avatar_comparison.png"))
    assert sheet.shape == (3 * SIZE, 2 * SIZE, 3)                   # rows target / before / after, 2 views
    frame0 = np.asarray(Image.open(folder / "0.png").convert("RGB"))
    np.testing.assert_array_equal(sheet[:SIZE, :SIZE], frame0)
    err = capsys.readouterr().err
    assert "3/3" in err and "PSNR" in err


def test_cli_errors_are_reported_not_raised(cli_setup, capsys):
    root, _, folder = cli_setup
    rc = fitting_cli.main([str(root / "ckpt.pt"), str(folder), "-o", str(root / "x.npy"), "--template", "synthetic",
                           "--config", "small"])                                   # neither --dinov2 nor a start
    assert rc == 2 and "--from-scratch" in capsys.readouterr().err
    rc = fitting_cli.main([str(root / "ckpt.pt"), str(root), "-o", str(root / "x.npy"), "--from-scratch",
                           "--template", "synthetic", "--config", "small"])        # no cameras file
    assert rc == 2 and "observations.json" in capsys.readouterr().err
    assert not (root / "x.npy").exists()


def test_cli_checks_output_paths_before_loading_or_fitting(cli_setup, tmp_path, capsys, monkeypatch):
    root, _, folder = cli_setup
    monkeypatch.setattr(fitting_cli, "load_model", lambda *a, **k: pytest.fail("loaded the model"))
    args = [str(root / "ckpt.pt"), str(folder), "--steps", "2", "--from-scratch", "--template", "synthetic",
            "--config", "small"]
    for extra, message in (
            (["-o", str(tmp_path / "no_such_dir" / "a.npy")], "no_such_dir does not exist; create it first"),
            (["-o", str(tmp_path / "a.txt")], "expected a file name ending in .npy"),
            (["-o", str(tmp_path)], "is a folder"),
            (["-o", str(tmp_path / "a.npy"), "--comparison", str(tmp_path / "a.npy")], "ending in .png")):
        assert fitting_cli.main(args + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("flexavatar-fit: error: ") and message in err and err.count("\n") == 1
    rc = fitting_cli.main(["interpolate", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"),
                           "-o", str(tmp_path / "missing" / "c.npy")])
    assert rc == 2 and "missing does not exist" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_interpolate_with_preview(cli_setup, tmp_path):
    from PIL import Image
    root, model, _ = cli_setup
    gen = torch.Generator().manual_seed(11)
    a, b = (AvatarCode(torch.randn(64, 1, 64, generator=gen)) for _ in range(2))
    a.save(tmp_path / "a.npy")
    b.save(tmp_path / "b.npy")
    rc = fitting_cli.main(["interpolate", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--t", "0.25",
                           "-o", str(tmp_path / "c.npy"), "--preview", str(tmp_path / "blend.png"),
                           "--checkpoint", str(root / "ckpt.pt"), "--template", "synthetic", "--config", "small",
                           "--size", "24"])
    assert rc == 0
    np.testing.assert_allclose(np.load(tmp_path / "c.npy"), (0.75 * a.tokens + 0.25 * b.tokens).numpy(), atol=1e-6)
    assert np.asarray(Image.open(tmp_path / "blend.png")).shape == (24, 72, 3)


def _assert_cli_error(capsys, rc: int, prog: str, message: str) -> None:
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"{prog}: error: ") and err.count("\n") == 1, err
    assert message in err, err


def test_cli_device_is_checked_before_any_work(cli_setup, tmp_path, capsys, monkeypatch):
    root, _, _ = cli_setup
    monkeypatch.setattr(fitting_cli, "load_model", lambda *a, **k: pytest.fail("loaded the model"))
    args = [str(root / "ckpt.pt"), str(tmp_path / "no_frames"), "-o", str(tmp_path / "a.npy"), "--from-scratch",
            "--template", "synthetic", "--config", "small", "--device"]
    _assert_cli_error(capsys, fitting_cli.main(args + ["bogus"]), "flexavatar-fit", "--device 'bogus'")
    if not torch.cuda.is_available():                      # a CPU build: torch asserts, deep in the first .to()
        _assert_cli_error(capsys, fitting_cli.main(args + ["cuda"]), "flexavatar-fit", "--device cuda: not usable")
    _assert_cli_error(capsys, fitting_cli.main(["interpolate", "a.npy", "b.npy", "-o", str(tmp_path / "c.npy"),
                                                "--preview", str(tmp_path / "p.png"), "--checkpoint", "x.pt",
                                                "--device", "bogus"]), "flexavatar-fit interpolate", "--device")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def two_codes(tmp_path):
    gen = torch.Generator().manual_seed(12)
    for name, shape in (("a", (64, 1, 64)), ("b", (64, 1, 64)), ("small_a", (16, 1, 8)), ("small_b", (16, 1, 8))):
        AvatarCode(torch.randn(shape, generator=gen)).save(tmp_path / f"{name}.npy")
    return tmp_path


@pytest.mark.parametrize("codes, extra, message", [
    (("a", "b"), ["--size", "5"], "--size 5: expected at least 11"),
    (("a", "b"), ["--size", "0"], "--size 0"),
    (("small_a", "small_b"), ["--size", "16"], "shape (16, 1, 8); --checkpoint"),
])
def test_cli_interpolate_preview_errors_write_nothing(cli_setup, two_codes, capsys, codes, extra, message):
    root, _, _ = cli_setup
    out = two_codes / "out"
    out.mkdir()
    rc = fitting_cli.main(["interpolate", *(str(two_codes / f"{c}.npy") for c in codes), "-o", str(out / "c.npy"),
                           "--preview", str(out / "p.png"), "--checkpoint", str(root / "ckpt.pt"),
                           "--template", "synthetic", "--config", "small", *extra])
    _assert_cli_error(capsys, rc, "flexavatar-fit interpolate", message)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("extra", [["--size", "24"], ["--device", "cpu"], ["--checkpoint", "ckpt.pt"],
                                   ["--template", "synthetic", "--config", "small"]])
def test_cli_interpolate_preview_options_need_preview(two_codes, capsys, extra):
    rc = fitting_cli.main(["interpolate", str(two_codes / "a.npy"), str(two_codes / "b.npy"),
                           "-o", str(two_codes / "c.npy"), *extra])
    _assert_cli_error(capsys, rc, "flexavatar-fit interpolate", "only apply to --preview")
    assert not (two_codes / "c.npy").exists()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _progress(bar, steps: int) -> None:
    from flexavatar.fitting import FitProgress
    for step in range(1, steps + 1):
        bar(FitProgress(step, steps, 0.1, 20.0, 1e-2, 0))


def test_progress_bar_rewrites_one_line_on_the_default_terminal(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)            # the default stream, as the CLI uses it
    _progress(fitting_cli.ProgressBar(), 3)
    text = terminal.getvalue()
    assert text.count("\r") == 3 and text.count("\n") == 1 and text.endswith("\n")    # one line, redrawn


@pytest.mark.parametrize("steps, lines", [(15, 10), (19, 10), (25, 10), (200, 10), (5, 5), (1, 1)])
def test_progress_bar_prints_about_every_10_percent_elsewhere(steps, lines):
    stream = io.StringIO()
    _progress(fitting_cli.ProgressBar(stream), steps)
    printed = stream.getvalue().splitlines()
    assert len(printed) == lines and f" {steps}/{steps} " in printed[-1] and "\r" not in stream.getvalue()
