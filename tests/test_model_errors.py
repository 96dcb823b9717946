"""Malformed model inputs: avatar codes, configs, template OBJs, checkpoints, DINOv2 weights. Each gets a typed
error that names the file / field and what was expected; files are written whole or not at all."""
from __future__ import annotations

import json
import os
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from flexavatar.config import FlexConfig, small_config
from flexavatar.dinov2 import DinoV2, DinoV2Config
from flexavatar.errors import CheckpointError, ConfigError, InputError, TemplateError
from flexavatar.export.testing import random_dinov2
from flexavatar.model import AvatarCode, FlexAvatarModel
from flexavatar.template import Template


@pytest.fixture(scope="module")
def small():
    cfg = small_config()
    return FlexAvatarModel.random(cfg, Template.synthetic(cfg.res_head_tokens, cfg.res_gaussian_grid), seed=1)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---- avatar codes -------------------------------------------------------------------------------------

def test_avatar_code_save_picks_an_avatar_python_style_and_rejects_out_of_range(tmp_path):
    code = AvatarCode(torch.randn(64, 2, 16))
    code.save(tmp_path / "last.npy", index=-1)
    np.testing.assert_array_equal(np.load(tmp_path / "last.npy"), code.tokens[:, 1:2].numpy())
    for index in (2, 5, -3):
        with pytest.raises(InputError, match=rf"avatar index {index} is out of range .* holding 2 avatars"):
            code.save(tmp_path / "bad.npy", index=index)
    with pytest.raises(InputError, match="folder .* does not exist"):
        code.save(tmp_path / "missing" / "a.npy")
    assert sorted(os.listdir(tmp_path)) == ["last.npy"]                   # no empty (64, 0, 16) code written
    assert stat.S_IMODE(os.stat(tmp_path / "last.npy").st_mode) == 0o666 & ~_umask()


def test_avatar_code_save_failing_midway_leaves_nothing(tmp_path, monkeypatch):
    import flexavatar.model as model_module

    def disk_full(file, array):          # np.save gets a file object (or, before the fix, a path)
        if isinstance(file, (str, os.PathLike)):
            Path(file).write_bytes(b"partial")
        else:
            file.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model_module.np, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        AvatarCode(torch.randn(64, 1, 16)).save(tmp_path / "a.npy")
    assert os.listdir(tmp_path) == []


def test_avatar_code_load_names_an_npz_archive(tmp_path):
    np.savez(tmp_path / "code.npz", code=np.zeros((64, 1, 16), np.float32))
    with pytest.raises(InputError, match=r"code\.npz is an \.npz archive; expected an \.npy file .*\(R², 1, D\)"):
        AvatarCode.load(tmp_path / "code.npz")


# ---- configs ------------------------------------------------------------------------------------------

def _official(official_dir, edit) -> dict:
    raw = json.loads((official_dir / "config.json").read_text())
    edit(raw)
    return raw


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.__setitem__("head_transformer", []), "'head_transformer' must be a JSON object, got an array"),
    (lambda d: d["head_transformer"].__setitem__("transformer", None),
     "'head_transformer.transformer' must be a JSON object, got null"),
    (lambda d: d.__setitem__("patch_size", 0), "expected integers ≥ 1, got patch_size=0"),
    (lambda d: d["head_transformer"]["transformer"].__setitem__("n_heads", 0), "got n_heads=0"),
    (lambda d: d["head_transformer"]["transformer"].__setitem__("n_heads", None), "got n_heads=None"),
    (lambda d: d.__setitem__("n_layers_encoder", "1"), "got n_layers_encoder='1'"),
], ids=["section-list", "section-null", "patch-0", "heads-0", "heads-null", "string"])
def test_malformed_official_config_names_the_field(official_dir, edit, match):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ConfigError, match=match):
            FlexConfig.from_official_json(_official(official_dir, edit))


def test_config_file_that_is_not_an_object_a_folder_or_utf8(tmp_path):
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "latin1.json").write_bytes(b'{"caf\xe9": 1}')
    for path, match in ((tmp_path / "list.json", "must be a JSON object, got an array"),
                        (tmp_path, "is a folder; expected a JSON file"),
                        (tmp_path / "latin1.json", "not valid UTF-8 JSON")):
        with pytest.raises(ConfigError, match=match):
            FlexConfig.from_official_json(path)
    with pytest.raises(ConfigError, match="JSON object of fields, got an array"):
        FlexConfig.from_dict([1, 2])


# ---- template OBJ -------------------------------------------------------------------------------------

_TRIANGLE = "v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\nf 1/1 2/2 3/3\n"


@pytest.mark.parametrize("old, new, match", [
    ("v 0 0 0", "v 0 0", r":1: bad vertex \(v x y z\): 'v 0 0'; expected 3 finite numbers"),
    ("v 0 0 0", "v nan 0 0", ":1: bad vertex"),
    ("vt 0 0", "vt 0", r":4: bad texture coordinate \(vt u v\)"),
    ("vt 0 0", "vt inf 0", ":4: bad texture coordinate"),
    ("vt 0 0", "vt 1e300 0", ":4: bad texture coordinate"),
    ("f 1/1 2/2 3/3", "f 1/1 2/2", ":7: face with 2 corners; expected 3 or more"),
    ("f 1/1 2/2 3/3", "f 1/1 2/x 3/3", ":7: face indices are not integers"),
])
def test_malformed_obj_names_file_and_line(tmp_path, old, new, match):
    path = tmp_path / "head.obj"
    path.write_text(_TRIANGLE.replace(old, new))
    with pytest.raises(TemplateError, match="head.obj" + match):
        Template.from_obj(path, 8, 64)
    with pytest.raises(TemplateError, match="is a folder"):
        Template.from_obj(tmp_path, 8, 64)


# ---- checkpoints --------------------------------------------------------------------------------------

def test_checkpoint_format_is_read_from_the_content_not_the_name(small, tmp_path):
    from safetensors.torch import save_file
    state = small.official_state_dict()
    save_file(state, str(tmp_path / "as_safetensors.pt"))
    save_file(state, str(tmp_path / "upper.SAFETENSORS"))
    torch.save(state, tmp_path / "torch.safetensors")
    for name in ("as_safetensors.pt", "upper.SAFETENSORS", "torch.safetensors"):
        loaded = FlexAvatarModel.from_checkpoint(tmp_path / name, template=small.template, config=small.config)
        assert torch.equal(loaded.network._conv_patchify.weight, small.network._conv_patchify.weight), name
    (tmp_path / "folder.pt").mkdir()
    with pytest.raises(CheckpointError, match="folder.pt is a folder; expected a file"):
        FlexAvatarModel.from_checkpoint(tmp_path / "folder.pt", template=small.template, config=small.config)


def test_checkpoint_with_nan_or_sparse_weights_is_refused(small, tmp_path):
    state = small.official_state_dict()
    state["_feature_projection.bias"][3] = float("nan")
    state["_conv_patchify.weight"][0, 0, 0, :2] = float("inf")
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=r"nan.pt has NaN/inf values in 2 tensors: .*"
                                              r"_feature_projection.bias \(1 of 64 values\)"):
        FlexAvatarModel.from_checkpoint(tmp_path / "nan.pt", template=small.template, config=small.config)
    state = small.official_state_dict()
    state["_feature_projection.bias"] = state["_feature_projection.bias"].to_sparse()
    with pytest.raises(CheckpointError, match="non-dense tensors"):
        FlexAvatarModel.from_checkpoint(state, template=small.template, config=small.config)


def test_saved_checkpoint_has_normal_permissions_and_no_temp_file(small, tmp_path):
    small.save_checkpoint(tmp_path / "ckpt.pt")
    assert os.listdir(tmp_path) == ["ckpt.pt"]
    assert stat.S_IMODE(os.stat(tmp_path / "ckpt.pt").st_mode) == 0o666 & ~_umask()     # mkstemp's was 0o600


# ---- DINOv2 -------------------------------------------------------------------------------------------

def test_dinov2_of_another_width_is_refused_when_loading(small):
    dino = random_dinov2(DinoV2Config(dim=48, depth=1, n_heads=2, input_size=56))
    with pytest.raises(CheckpointError, match="DINOv2 gives 48-channel features.*feature_dim=32"):
        FlexAvatarModel.from_checkpoint(small.official_state_dict(), template=small.template, config=small.config,
                                        dinov2=dino)


def test_dinov2_file_of_another_size_hints_at_the_expected_weights(tmp_path):
    torch.save(DinoV2(DinoV2Config(dim=48, depth=1, n_heads=2)).state_dict(), tmp_path / "vits.pth")
    with pytest.raises(CheckpointError) as err:
        DinoV2.from_file(tmp_path / "vits.pth")
    assert "dinov2_vitb14_reg4_pretrain.pth (dim 768" in str(err.value)
    assert "model_config" not in str(err.value)


def test_command_failed_gives_the_exit_status_and_one_line(capsys):
    from flexavatar.errors import CheckpointError, command_failed
    assert command_failed("flexavatar-x", CheckpointError("ckpt.pt: truncated")) == 2
    assert capsys.readouterr().err == "flexavatar-x: error: CheckpointError: ckpt.pt: truncated\n"
    assert command_failed("flexavatar-x", KeyboardInterrupt(), interrupted="interrupted; nothing was written") == 130
    assert capsys.readouterr().err == "flexavatar-x: interrupted; nothing was written\n"
