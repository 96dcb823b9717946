"""Bad input to ``export_bundle`` / ``flexavatar-export``: typed errors, clear messages, nothing written.

All of these fail before anything is traced, so they are fast. (A failure injected after the first
file is written is tested in test_export.py, where exported graphs are at hand.)
"""
from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path

import pytest
import torch

from flexavatar.config import FlexConfig
from flexavatar.dinov2 import DinoV2Config
from flexavatar.errors import CheckpointError, FlexAvatarError, TemplateError
from flexavatar.export import ExportArgumentError, OutputDirError, OutputExistsError, export_bundle
from flexavatar.export.cli import main as cli_main
from flexavatar.export.exporter import _check_output_dir, _Staging, _versions
from flexavatar.export.testing import random_dinov2, write_synthetic_photo


@pytest.fixture()
def fx(official_dir, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = FlexConfig.from_official_json(official_dir / "config.json")
    return {"ckpt": official_dir / "state_dict.safetensors", "template": official_dir / "gghead_template.obj",
            "config": cfg, "out": tmp_path / "out" / "bundle", "tmp": tmp_path}


def _export(fx, **overrides):
    args = {"template": fx["template"], "config": fx["config"], "progress": None} | overrides
    ckpt = args.pop("ckpt", fx["ckpt"])
    out = args.pop("out", fx["out"])
    return export_bundle(ckpt, out, **args)


def _assert_nothing_written(fx):
    assert not fx["out"].exists()
    assert [p.name for p in fx["out"].parent.iterdir()] == []      # no staging folder left either


@pytest.fixture(autouse=True)
def _out_parent(fx):
    fx["out"].parent.mkdir()


def _truncated(fx) -> Path:
    data = fx["ckpt"].read_bytes()
    path = fx["tmp"] / "truncated.safetensors"
    path.write_bytes(data[: len(data) // 2])
    return path


def _foreign(fx) -> Path:
    path = fx["tmp"] / "foreign.pt"
    torch.save({"conv.weight": torch.zeros(3, 3), "fc.bias": torch.zeros(4)}, path)
    return path


def _text(fx) -> Path:
    path = fx["tmp"] / "notes.pt"
    path.write_text("not a checkpoint")
    return path


@pytest.mark.parametrize("make, match", [
    (lambda fx: fx["tmp"] / "missing.pt", "checkpoint not found"),
    (_truncated, "truncated or of another format"),
    (_foreign, "missing keys"),
    (_text, "cannot read checkpoint"),
    (lambda fx: fx["tmp"], "is a folder; expected the checkpoint file"),
], ids=["missing", "truncated", "foreign", "text", "folder"])
def test_bad_checkpoint(fx, make, match):
    with pytest.raises(CheckpointError, match=match):
        _export(fx, ckpt=make(fx))
    _assert_nothing_written(fx)


def test_missing_checkpoint_is_named_before_the_template_looked_for_beside_it(fx):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        _export(fx, ckpt=fx["tmp"] / "missing.pt", template=None)
    _assert_nothing_written(fx)


def test_bad_template(fx):
    not_obj = fx["tmp"] / "template.obj"
    not_obj.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    no_uv = fx["tmp"] / "no_uv.obj"
    no_uv.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    for template, match in ((fx["tmp"] / "missing.obj", "not found"), (not_obj, "not a readable OBJ"),
                            (no_uv, "face without texture coordinates")):
        with pytest.raises(TemplateError, match=match):
            _export(fx, template=template)
    # no template argument and none beside the checkpoint
    ckpt = fx["tmp"] / "lonely.safetensors"
    shutil.copy(fx["ckpt"], ckpt)
    with pytest.raises(TemplateError, match="--template"):
        _export(fx, ckpt=ckpt, template=None)
    _assert_nothing_written(fx)


def test_existing_output_folder_is_not_touched_without_force(fx):
    fx["out"].mkdir()
    (fx["out"] / "keep.txt").write_text("precious")
    with pytest.raises(OutputExistsError, match="--force"):
        _export(fx)
    assert (fx["out"] / "keep.txt").read_text() == "precious"
    assert [p.name for p in fx["out"].iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("where, match", [
    ("parent_missing", "does not exist"),
    ("is_file", "is a file"),
    ("unwritable", "cannot (write into|create a staging folder)"),
])
def test_unwritable_output(fx, where, match):
    out = {"parent_missing": fx["tmp"] / "no" / "such" / "bundle", "is_file": fx["tmp"] / "file.txt",
           "unwritable": Path("/proc/flexavatar-export-test/bundle")}[where]
    if where == "is_file":
        out.write_text("x")
    if where == "unwritable":
        out = Path("/proc") / "flexavatar-export-test"          # /proc refuses new entries, even to root
    with pytest.raises(OutputDirError, match=match):
        _export(fx, out=out)


@pytest.mark.parametrize("overrides, match", [
    ({"precisions": ("fp8",)}, "precisions must be"),
    ({"targets": "onnx,tensorrt"}, "targets must be"),
    ({"targets": ()}, "non-empty"),
    ({"opset": 13}, "opset must be"),
    ({"opset": 26}, r"opset must be an integer in \[18, 25\]"),
    ({"camera": "cam.json"}, "needs avatar"),
    ({"avatar": "me.png"}, "needs DINOv2 to encode the photo: pass --dinov2"),   # not random features
])
def test_bad_arguments(fx, overrides, match):
    with pytest.raises(ExportArgumentError, match=match):
        _export(fx, **overrides)


def test_bad_photo_and_camera(fx):
    from PIL import Image
    dino = random_dinov2(DinoV2Config(dim=32, depth=1, n_heads=2, input_size=56))   # a photo needs DINOv2
    wide = fx["tmp"] / "wide.png"
    Image.new("RGB", (300, 200), (255, 255, 255)).save(wide)
    with pytest.raises(ExportArgumentError, match="300x200; expected a square"):
        _export(fx, avatar=wide, dinov2=dino)
    square = fx["tmp"] / "square.png"
    Image.new("RGB", (64, 64), (200, 100, 50)).save(square)
    camera = fx["tmp"] / "cam.json"
    camera.write_text('{"cam2world": [[1, 0, 0, 0]], "intrinsics": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}')
    with pytest.raises(ExportArgumentError, match="must be 4x4"):
        _export(fx, avatar=square, camera=camera, dinov2=dino)
    camera.write_text('{"cam2world": [[1,0,0,0],[0,1,0,0],[0,0,1,1],[0,0,0,1]], '
                      '"intrinsics": [[1500,0,256],[0,1500,256],[0,0,1]]}')
    with pytest.raises(FlexAvatarError, match="pixel units"):      # the model's own input check
        _export(fx, avatar=square, camera=camera, dinov2=dino)
    _assert_nothing_written(fx)


def test_cli_reports_typed_errors(fx, capsys):
    rc = cli_main([str(fx["tmp"] / "missing.pt"), "-o", str(fx["out"]), "--template", str(fx["template"])])
    assert rc == 2
    err = capsys.readouterr().err
    assert "CheckpointError" in err and "checkpoint not found" in err
    assert not fx["out"].exists()


def test_cli_refuses_avatar_without_dinov2(fx, capsys):
    photo = write_synthetic_photo(fx["tmp"] / "me.png", 64)
    rc = cli_main([str(fx["ckpt"]), "-o", str(fx["out"]), "--template", str(fx["template"]), "--avatar", str(photo)])
    assert rc == 2
    assert "ExportArgumentError" in capsys.readouterr().err
    _assert_nothing_written(fx)


# ---- --force never deletes the user's input files ------------------------------------------------------

def _inputs_inside(fx, which: str) -> tuple[Path, dict]:
    """A folder holding one export input (in a subfolder for "nested"); → (folder, export overrides)."""
    folder = fx["tmp"] / "work"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("my only copy")
    if which == "checkpoint":
        shutil.copy(fx["ckpt"], folder / "my_ckpt.safetensors")
        return folder, {"ckpt": folder / "my_ckpt.safetensors"}
    if which == "template":
        shutil.copy(fx["template"], folder / "head_v2.obj")
        return folder, {"template": folder / "head_v2.obj"}
    if which == "config":
        shutil.copy(fx["template"].parent / "config.json", folder / "config.json")
        return folder, {"config": folder / "config.json"}
    photo = write_synthetic_photo(folder / "sub" / "me.png", 64)          # "nested": deeper inside
    return folder, {"avatar": photo, "dinov2": random_dinov2(DinoV2Config(dim=32, depth=1, n_heads=2))}


@pytest.mark.parametrize("which", ["checkpoint", "template", "config", "nested"])
def test_force_refuses_an_output_folder_that_holds_an_input(fx, which):
    folder, overrides = _inputs_inside(fx, which)
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    with pytest.raises(OutputDirError, match="holds the .* replacing the folder would delete it"):
        _export(fx, out=folder, force=True, **overrides)
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
    assert (folder / "notes.txt").read_text() == "my only copy"
    assert sorted(p.name for p in folder.parent.iterdir()) == ["out", "work"]   # no staging folder


def test_force_refuses_the_current_folder_and_its_parents(fx, monkeypatch):
    cwd = fx["out"] / "inside"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    for out in (Path("."), cwd, fx["out"]):
        with pytest.raises(OutputDirError, match="current folder or one above it"):
            _export(fx, out=out, force=True)
    assert sorted(p.name for p in fx["out"].parent.iterdir()) == ["bundle"]
    assert [p.name for p in fx["out"].iterdir()] == ["inside"]


def test_force_replaces_a_symlinked_output_and_keeps_its_target(fx):
    target = fx["out"].parent / "v3"
    target.mkdir()
    (target / "manifest.json").write_text("{}")
    link = fx["out"].parent / "bundle"
    link.symlink_to(target, target_is_directory=True)
    _check_output_dir(link, force=True)
    with _Staging(link, force=True) as staging:
        (staging.path / "manifest.json").write_text('{"new": true}')
        staging.commit()
    assert sorted(p.name for p in link.parent.iterdir()) == ["bundle", "v3"]     # no hidden .bundle.old-* link
    assert not link.is_symlink() and (link / "manifest.json").read_text() == '{"new": true}'
    assert (target / "manifest.json").read_text() == "{}"


def test_versions_without_openvino_say_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)          # `import openvino` raises ImportError
    versions = _versions()
    assert versions["openvino"] == "not installed" and versions["onnx"]
