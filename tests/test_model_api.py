"""FLEX-1 structure, checkpoint loading, configs, typed errors for bad input, expression helpers."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from flexavatar.cameras import default_camera
from flexavatar.config import FLEX1, FlexConfig, small_config
from flexavatar.errors import CheckpointError, ConfigError, InputError, TemplateError
from flexavatar.expression import head_pose, matrix_to_rot6d, neutral_expression, rot6d_to_matrix
from flexavatar.model import AvatarCode, FlexAvatarModel
from flexavatar.template import Template


@pytest.fixture(scope="module")
def flex1_model(official_dir):
    template = Template.from_obj(official_dir / "gghead_template.obj")
    return FlexAvatarModel.random(FLEX1, template, seed=3)


def test_flex1_has_exactly_the_official_keys_shapes_and_parameter_count(flex1_model, official_dir):
    ref = json.loads((official_dir / "keys_flex1.json").read_text())
    state = flex1_model.official_state_dict()
    assert list(state) == list(ref["keys"])             # same 448 names, in the official state_dict order
    for name, info in ref["keys"].items():
        assert list(state[name].shape) == info["shape"], name
        assert str(state[name].dtype).removeprefix("torch.") == info["dtype"], name
    n_params = sum(p.numel() for p in flex1_model.network.parameters())
    assert n_params == ref["total_parameters"] == 182_410_142
    assert sum(t.numel() for t in state.values()) == ref["total_numel"]
    assert flex1_model.network.gaussian_xyz.shape == (1, 58_361, 3)


def test_flex1_checkpoint_round_trip_in_official_flat_layout(flex1_model, official_dir, tmp_path):
    path = tmp_path / "ckpt-random.pt"
    flex1_model.save_checkpoint(path)
    raw = torch.load(path, weights_only=True)
    assert isinstance(raw, dict) and len(raw) == 448
    loaded = FlexAvatarModel.from_checkpoint(path, template=flex1_model.template)
    loaded_state = loaded.network.state_dict()
    for name, value in flex1_model.network.state_dict().items():
        assert torch.equal(loaded_state[name], value), name
    code = AvatarCode(torch.randn(1024, 1, 768) * 0.5)
    expr = neutral_expression(1)
    a, b = flex1_model.decode(code, expr), loaded.decode(code, expr)
    assert torch.equal(a.means, b.means) and a.means.shape == (1, 58_361, 3)


def test_official_model_config_json_gives_flex1_and_names_ignored_fields(official_dir):
    with pytest.warns(UserWarning) as record:
        cfg = FlexConfig.from_official_json(official_dir / "model_config.json")
    assert cfg == FLEX1
    message = str(record[0].message)
    for field in ("scale_offset", "position_range", "use_qk_norm", "use_bfloat16", "res_uv_texture"):
        assert field in message


def test_config_rejects_other_architectures_and_reports_unknown_fields(official_dir):
    raw = json.loads((official_dir / "model_config.json").read_text())
    raw["gaussian_decoder"]["sh_degree"] = 3
    with pytest.raises(ConfigError, match="sh_degree"):
        FlexConfig.from_official_json(raw)
    raw = json.loads((official_dir / "model_config.json").read_text())
    raw["brand_new_field"] = 1
    with pytest.warns(UserWarning, match="unknown, not used: brand_new_field"):
        FlexConfig.from_official_json(raw)
    with pytest.raises(ConfigError, match="not divisible"):
        FlexConfig(d_hidden=100, n_heads=3)


# ---- checkpoint errors ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small():
    cfg = small_config()
    return FlexAvatarModel.random(cfg, Template.synthetic(cfg.res_head_tokens, cfg.res_gaussian_grid), seed=1)


@dataclasses.dataclass
class _Options:           # a training script's options object pickled beside the weights
    lr: float


def test_truncated_random_foreign_and_missing_checkpoints(small, tmp_path):
    good = tmp_path / "good.pt"
    small.save_checkpoint(good)
    data = good.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    torch.save({"state_dict": small.official_state_dict(), "step": 3}, tmp_path / "training.pt")
    torch.save({"weights": torch.zeros(2), "args": _Options(lr=1e-3)}, tmp_path / "objects.pt")
    for name, pattern in (("truncated.pt", "cannot read checkpoint .*cut short"),
                          ("random.pt", "cannot read checkpoint .*not a torch.save file"),
                          ("objects.pt", "Python objects besides tensors"),
                          ("training.pt", "training checkpoint"), ("absent.pt", "not found")):
        with pytest.raises(CheckpointError, match=pattern):
            FlexAvatarModel.from_checkpoint(tmp_path / name, template=small.template, config=small.config)
    FlexAvatarModel.from_checkpoint(good, template=small.template, config=small.config)  # control


def test_model_file_carries_weights_template_dinov2_and_configs(small, tmp_path):
    """FlexAvatarModel.save → load: one file, nothing else needed; the same codes and Gaussians, bit for bit (with
    and without DINOv2); other files are refused by name."""
    from safetensors.torch import save_file

    from flexavatar.dinov2 import DinoV2Config
    from flexavatar.export.testing import random_dinov2

    cfg = small.config
    with_dino = FlexAvatarModel.random(cfg, small.template, seed=1,
                                       dinov2=random_dinov2(DinoV2Config(dim=cfg.feature_dim, depth=1, n_heads=2,
                                                                         input_size=56), seed=2))
    images = torch.rand(1, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(0))
    c2w, k = default_camera()
    expressions = neutral_expression(2) + 0.1
    for model, name in ((small, "plain.safetensors"), (with_dino, "dino.safetensors")):
        model.save(tmp_path / name)
        loaded = FlexAvatarModel.load(tmp_path / name)
        assert loaded.config == cfg and loaded.template.sha256() == model.template.sha256()
        assert (loaded.dinov2 is None) == (model.dinov2 is None) and not loaded.training
        code = AvatarCode(torch.randn(cfg.n_head_tokens, 1, cfg.d_hidden, generator=torch.Generator().manual_seed(1)))
        want, got = model.decode(code, expressions), loaded.decode(code, expressions)
        for field in ("means", "quats", "scales", "opacities", "sh0"):
            assert torch.equal(getattr(got, field), getattr(want, field)), field
        if model.dinov2 is not None:
            assert torch.equal(loaded.encode(images, c2w[None], k[None]).tokens,
                               model.encode(images, c2w[None], k[None]).tokens)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dino.safetensors", "plain.safetensors"]   # no temp files
    save_file({k: v.contiguous() for k, v in small.official_state_dict().items()}, str(tmp_path / "ckpt.safetensors"))
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "plain.safetensors").read_bytes()[:5000])
    for name, pattern in (("ckpt.safetensors", "not a FlexAvatarModel file .*from_checkpoint"),
                          ("cut.safetensors", "cannot read model file"), ("absent.safetensors", "cannot read")):
        with pytest.raises(CheckpointError, match=pattern):
            FlexAvatarModel.load(tmp_path / name)


def test_renamed_key_and_wrong_shape_are_listed(small):
    state = small.official_state_dict()
    state["_feature_projection.weightx"] = state.pop("_feature_projection.weight")
    with pytest.raises(CheckpointError) as err:
        FlexAvatarModel.from_checkpoint(state, template=small.template, config=small.config)
    assert "1 missing keys: _feature_projection.weight" in str(err.value)
    assert "1 unexpected keys: _feature_projection.weightx" in str(err.value)
    state = small.official_state_dict()
    state["_conv_patchify.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match=r"_conv_patchify.weight: got \(3, 3\), expected \(64, 9, 16, 16\)"):
        FlexAvatarModel.from_checkpoint(state, template=small.template, config=small.config)
    # a FLEX-1-shaped file loaded with the small config: every mismatch counted, config hint given
    with pytest.raises(CheckpointError, match="pass the matching config"):
        FlexAvatarModel.from_checkpoint(small.official_state_dict(), template=Template.synthetic(32, 256))


def test_bad_template_path_and_file(tmp_path):
    with pytest.raises(TemplateError, match="not found"):
        Template.from_obj(tmp_path / "none.obj")
    bad = tmp_path / "bad.obj"
    bad.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    with pytest.raises(TemplateError, match="texture coordinates"):
        Template.from_obj(bad)


# ---- input errors -------------------------------------------------------------------------------

def _inputs(cfg, b=1):
    from flexavatar.cameras import default_camera
    c2w, k = default_camera()
    return torch.ones(b, 3, cfg.image_size, cfg.image_size), c2w.expand(b, 4, 4), k.expand(b, 3, 3)


def test_encode_rejects_wrong_size_range_dtype_camera(small):
    cfg = small.config
    img, c2w, k = _inputs(cfg)
    feats = torch.randn(1, 1, cfg.feature_dim, 4, 4)
    code = small.encode(img, c2w, k, features=feats)                    # control
    assert code.tokens.shape == (cfg.n_head_tokens, 1, cfg.d_hidden)
    cases = [
        ((torch.ones(1, 3, 100, 100), c2w, k), r"images must be \[B, 3, 128, 128\]"),
        ((img * 255, c2w, k), r"must be in \[0, 1\]"),
        (((img * 255).to(torch.uint8), c2w, k), "must be float"),
        ((img, c2w, k * torch.tensor([[512.0], [512.0], [1.0]])), "pixel units"),
        ((img, c2w * 2, k), "rigid"),
        ((img, c2w[:, :3], k), "cam2world must be"),
        ((img.clone().index_fill_(2, torch.tensor([5]), float("nan")), c2w, k), "NaN"),
    ]
    for args, pattern in cases:
        with pytest.raises(InputError, match=pattern):
            small.encode(*args, features=feats)
    with pytest.raises(InputError, match="needs DINOv2"):
        small.encode(img, c2w, k)


def test_decode_rejects_nan_wrong_shape_and_dataset_id(small):
    cfg = small.config
    code = AvatarCode(torch.randn(cfg.n_head_tokens, 1, cfg.d_hidden))
    expr = neutral_expression(2)
    assert small.decode(code, expr).means.shape[0] == 2                  # control
    bad = expr.clone()
    bad[1, 7] = float("nan")
    with pytest.raises(InputError, match="expressions contains 1 NaN"):
        small.decode(code, bad)
    with pytest.raises(InputError, match=r"expressions must be \[E, 135\]"):
        small.decode(code, torch.zeros(2, 100))
    with pytest.raises(InputError, match="dataset_id"):
        small.decode(code, expr, dataset_id=2)
    with pytest.raises(InputError, match="avatar code must be"):
        small.decode(torch.zeros(10, 1, cfg.d_hidden), expr)


def test_avatar_code_npy_round_trip_official_layout(small, tmp_path):
    cfg = small.config
    code = AvatarCode(torch.randn(cfg.n_head_tokens, 1, cfg.d_hidden))
    code.save(tmp_path / "avatar.npy")
    raw = np.load(tmp_path / "avatar.npy")
    assert raw.shape == (cfg.n_head_tokens, 1, cfg.d_hidden) and raw.dtype == np.float32
    loaded = AvatarCode.load(tmp_path / "avatar.npy")
    assert torch.equal(loaded.tokens, code.tokens)
    np.save(tmp_path / "wrong.npy", np.zeros((10, 3)))
    with pytest.raises(InputError, match="expected"):
        AvatarCode.load(tmp_path / "wrong.npy")


def test_decode_batches_avatars_times_expressions_in_b_major_order(small):
    cfg = small.config
    code = AvatarCode(torch.randn(cfg.n_head_tokens, 2, cfg.d_hidden))
    expr = neutral_expression(3) + torch.randn(3, 135) * 0.1
    both = small.decode(code, expr)
    assert both.means.shape == (6, small.template.n_gaussians, 3)
    second = small.decode(AvatarCode(code.tokens[:, 1:2]), expr[2:3])
    torch.testing.assert_close(both.means[5:6], second.means, atol=1e-5, rtol=0)
    assert torch.allclose(both.quats.norm(dim=-1), torch.ones(()), atol=1e-5)
    assert both.scales.max() <= 0.01 and both.opacities.min() > 0


# ---- expression helpers against the tracker's own matrices ------------------------------------

def test_rot6d_to_matrix_matches_tracked_head_rotation(driving_dir):
    seq = np.load(driving_dir / "EXP-1-head.npz")
    codes = torch.from_numpy(seq["expression_codes"]).double()
    mats = rot6d_to_matrix(codes[:, 126:132])
    torch.testing.assert_close(mats, torch.from_numpy(seq["head_rotation_matrix_tracked"]).double(), atol=3e-6, rtol=0)
    ortho = mats @ mats.transpose(-1, -2)
    torch.testing.assert_close(ortho, torch.eye(3, dtype=torch.float64).expand_as(ortho), atol=1e-12, rtol=0)
    torch.testing.assert_close(rot6d_to_matrix(matrix_to_rot6d(mats)), mats, atol=1e-12, rtol=0)
    pose = head_pose(codes)
    assert torch.equal(pose[:, :3, 3], codes[:, 132:135]) and torch.equal(pose[:, :3, :3], mats)


def test_neutral_expression_has_identity_rotations():
    code = neutral_expression(1)[0]
    for s in (slice(100, 106), slice(106, 112), slice(114, 120), slice(120, 126), slice(126, 132)):
        assert torch.equal(rot6d_to_matrix(code[s]), torch.eye(3))
    assert code[:100].abs().sum() == 0 and code.shape == (135,)
