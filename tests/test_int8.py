"""Precision "int8": the decoders exported with int8 MatMul weights (export.onnx_tools.to_int8) and run by
flexavatar.runtime on ONNX Runtime's CPU provider. Lossy by design, so the oracle is the rendered image: the PyTorch
fp32 model + the reference rasterizer, against the int8 target PSNR_TARGET_DB["int8"], on real tracked expressions.

One export per module (≈ 20 s on 2 cores): the reduced official fixture with a small random DINOv2 inside the
encoder and an avatar photo (so the specialised avatar decoder is quantized too), precisions fp32 + int8, ONNX.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from flexavatar import kernels
from flexavatar.bundle import PSNR_TARGET_DB, ROLE_DECODER, ROLE_DECODER_AVATAR, ROLE_ENCODER, Bundle
from flexavatar.cameras import default_camera as torch_default_camera
from flexavatar.cameras import orbit_cameras as torch_orbit_cameras
from flexavatar.export import ExportArgumentError, export_bundle
from flexavatar.export.onnx_tools import INT8_OPS
from flexavatar.export.testing import fixture_config, fixture_model, write_synthetic_photo
from flexavatar.images import psnr
from flexavatar.model import AvatarCode, FlexAvatarModel
from flexavatar.runtime import EngineUnavailableError, Runtime, load_expressions, orbit_camera
from flexavatar.runtime.cli import main as render_main
from flexavatar.runtime.numerics import check_numerics

SIZE = 128                                    # the fixture model's image size; render size too
FIELDS = ("means", "quats", "scales", "opacities", "sh0")
INT8_TARGET_DB = PSNR_TARGET_DB["int8"]
# an int8 file that silently ran as fp32 would render at the fp32 files' ~100 dB
FP32_LIKE_DB = PSNR_TARGET_DB["fp32"]


@pytest.fixture(scope="module")
def model(official_dir) -> FlexAvatarModel:
    return fixture_model(official_dir)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    return write_synthetic_photo(tmp_path_factory.mktemp("photo") / "photo.png", SIZE, seed=5)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, official_dir, model, photo) -> Path:
    out = tmp_path_factory.mktemp("int8") / "bundle"
    export_bundle(official_dir / "state_dict.safetensors", out, template=official_dir / "gghead_template.obj",
                  config=fixture_config(official_dir), dinov2=model.dinov2, precisions=("fp32", "int8"), avatar=photo,
                  targets=("onnx",), progress=None)
    return out


@pytest.fixture(scope="module")
def runtime(bundle) -> Runtime:
    return Runtime(bundle, backend="onnxruntime", device="cpu", rasterizer="cpu", precision="int8")


@pytest.fixture(scope="module")
def expressions(driving_dir) -> np.ndarray:
    return load_expressions(driving_dir / "EMO-1-shout+laugh.npz")[40:44]          # [4, 135], real tracked codes


def _reference_frames(model: FlexAvatarModel, code: np.ndarray, expressions: np.ndarray) -> np.ndarray:
    """PyTorch fp32 decode of code [1, R², D] → reference rasterizer at the orbit cameras → rgb [E, H, W, 3]."""
    g = model.decode(AvatarCode(torch.from_numpy(np.array(code)).transpose(0, 1)),
                     torch.from_numpy(np.array(expressions)), dataset_id=1)
    n = len(expressions)
    cams = kernels.Cameras(world2cam=kernels.world2cam_from_cam2world(torch_orbit_cameras(n)),
                           K=kernels.pixel_intrinsics(torch_default_camera()[1], SIZE, SIZE).expand(n, 3, 3))
    splats = kernels.Splats(**{f: getattr(g, f) for f in FIELDS})
    return kernels.rasterize(splats, cams, SIZE, SIZE, background=(1.0, 1.0, 1.0), backend="reference").rgb.numpy()


def _matmul_weights(model: onnx.ModelProto) -> int:
    """MatMul nodes of a float graph whose second input is a constant (the ones to_int8 quantizes)."""
    constants = {i.name for i in model.graph.initializer}
    return sum(1 for n in model.graph.node if n.op_type in INT8_OPS and n.input[1] in constants)


def test_export_writes_checked_int8_decoders_only(bundle):
    m = Bundle.open(bundle).manifest
    assert sorted(a.name for a in m.artifacts) == sorted([
        "encoder.fp32.onnx", "decoder.fp32.onnx", "decoder_avatar.fp32.onnx",
        "decoder.int8.onnx", "decoder_avatar.int8.onnx"])            # no int8 encoder: it runs once per avatar
    b = Bundle.open(bundle)
    for role in (ROLE_DECODER, ROLE_DECODER_AVATAR):
        art = b.artifact(role, "onnx", "int8")
        fp32 = b.artifact(role, "onnx", "fp32")
        assert art.parity.passed and art.parity.psnr_target_db == INT8_TARGET_DB
        assert INT8_TARGET_DB <= art.parity.psnr_db < FP32_LIKE_DB, art.parity
        assert b.metadata(art).precision == "int8"
        assert any("MatMul" in op for op in art.fp32_ops)
        quantized, source = onnx.load(str(b.path(art))), onnx.load(str(b.path(fp32)))
        ops = [n.op_type for n in quantized.graph.node]
        # every constant-weight MatMul of the fp32 graph became an integer MatMul, none is left in float
        assert ops.count("MatMulInteger") == _matmul_weights(source) > 0
        assert _matmul_weights(quantized) == 0
        assert b.path(art).stat().st_size < 0.6 * b.path(fp32).stat().st_size


def test_export_check_decodes_int8_one_frame_per_call_as_the_runtime_does(bundle):
    """The manifest's errors of an int8 decoder are those of the runtime's calls (one expression each, its own
    activation ranges) on the check set, not of one call over every check expression."""
    import onnxruntime as ort

    b = Bundle.open(bundle)
    check, art = b.check_set(), b.artifact(ROLE_DECODER, "onnx", "int8")
    session = ort.InferenceSession(str(b.path(art)), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    frames = [dict(zip(names, session.run(None, {"code": check.code, "expressions": e[None]})))
              for e in check.expressions]
    assert len(frames) > 1
    for f in FIELDS:
        got = np.concatenate([frame[f] for frame in frames])
        err = float(np.abs(got.astype(np.float64) - check.gaussians[f]).max())
        assert art.parity.output(f).max_abs_error == pytest.approx(err, rel=1e-6, abs=1e-9), f
    assert "one frame per call" in art.parity.runtime


def test_an_int8_bundle_always_lists_the_fp32_encoder(fp16_int8_bundle, runtime, photo):
    """int8 files are decoders only: asked for int8 without fp32, the export still lists the fp32 encoder (the one
    an int8 runtime opens), so every int8 bundle turns photos into avatars."""
    m = Bundle.open(fp16_int8_bundle).manifest
    assert sorted(a.name for a in m.artifacts) == sorted([
        "encoder.fp32.onnx", "encoder.fp16.onnx", "decoder.fp16.onnx", "decoder.int8.onnx"])
    int8 = Runtime(fp16_int8_bundle, backend="onnxruntime", device="cpu", rasterizer="cpu", precision="int8")
    assert int8.engine.artifact(ROLE_ENCODER).name == "encoder.fp32.onnx"
    # the same model's fp32 encoder as the fp32 + int8 bundle's: the same code
    np.testing.assert_allclose(int8.create_avatar(photo).code, runtime.create_avatar(photo).code, atol=1e-6)


def test_int8_render_is_within_target_of_pytorch(runtime, model, photo, expressions):
    # the photo through the fp32 encoder (the int8 runtime's fallback), then the int8 decoder: a photo end to end
    assert runtime.engine.artifact(ROLE_ENCODER).name == "encoder.fp32.onnx"
    assert runtime.engine.artifact(ROLE_DECODER).name == "decoder.int8.onnx"
    avatar = runtime.create_avatar(photo)
    frames = runtime.render(avatar, expressions, orbit_camera(len(expressions)), SIZE, SIZE, output="float")
    reference = _reference_frames(model, avatar.code, expressions)
    scores = [psnr(f[..., :3], r) for f, r in zip(frames, reference, strict=True)]
    assert all(INT8_TARGET_DB <= s < FP32_LIKE_DB for s in scores), scores
    assert 0.01 < frames[..., 3].mean() < 0.9                        # the head is in view


def test_int8_avatar_decoder_is_within_target(runtime, bundle, model, expressions):
    bundle_avatar = runtime.bundle_avatar()
    assert runtime.engine.artifact(ROLE_DECODER_AVATAR).name == "decoder_avatar.int8.onnx"
    frames = runtime.render(bundle_avatar, expressions, orbit_camera(len(expressions)), SIZE, SIZE, output="float")
    reference = _reference_frames(model, bundle_avatar.code, expressions)
    scores = [psnr(f[..., :3], r) for f, r in zip(frames, reference, strict=True)]
    assert all(INT8_TARGET_DB <= s < FP32_LIKE_DB for s in scores), scores


def test_int8_frames_do_not_depend_on_the_batch(bundle, runtime, expressions):
    """The int8 decoder's activation ranges are per call: the runtime decodes one frame a call whatever its batch, so
    a frame is the same alone or among others (decoded together, the same file gives each frame other values)."""
    import onnxruntime as ort

    batched = Runtime(bundle, backend="onnxruntime", device="cpu", rasterizer="cpu", precision="int8", batch=4)
    avatar = runtime.bundle_avatar()
    together, alone = batched.decode(avatar, expressions).numpy(), runtime.decode(avatar, expressions[2:3]).numpy()
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(together, f)[2:3], getattr(alone, f), err_msg=f)
    session = ort.InferenceSession(str(bundle / "decoder_avatar.int8.onnx"), providers=["CPUExecutionProvider"])
    one_call = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"expressions": expressions})))
    assert max(float(np.abs(one_call[f][2] - getattr(alone, f)[0]).max()) for f in FIELDS) > 1e-3


def test_numerics_check_judges_int8_against_its_target(runtime):
    report = check_numerics(runtime)
    assert report.passed, report.table()
    assert {c.artifact for c in report.checks} == {"encoder.fp32.onnx", "decoder.int8.onnx",
                                                   "decoder_avatar.int8.onnx"}
    assert all(c.target_db == INT8_TARGET_DB and INT8_TARGET_DB <= c.psnr_db < FP32_LIKE_DB for c in report.checks)


@pytest.mark.parametrize("backend", ["openvino", "torch"])
def test_int8_is_refused_by_engines_that_run_float_files(bundle, model, backend):
    with pytest.raises(EngineUnavailableError, match=r"fp32 and fp16 files on cpu \(int8 decoders: onnxruntime"):
        Runtime(bundle, backend=backend, device="cpu", precision="int8",
                model=model if backend == "torch" else None)


def test_int8_needs_an_int8_bundle(onnx_features_bundle):
    with pytest.raises(EngineUnavailableError, match="the bundle has no int8 decoder"):
        Runtime(onnx_features_bundle, backend="onnxruntime", device="cpu", precision="int8")


def test_export_int8_needs_the_onnx_target(official_dir, tmp_path):
    with pytest.raises(ExportArgumentError, match="int8 is written as ONNX only"):
        export_bundle(official_dir / "state_dict.safetensors", tmp_path / "b",
                      template=official_dir / "gghead_template.obj", config=fixture_config(official_dir),
                      precisions="fp32,int8", targets="openvino", progress=None)
    assert not (tmp_path / "b").exists()


def test_render_cli_runs_int8(bundle, driving_dir, tmp_path, capsys):
    rc = render_main([str(bundle), "--expressions", str(driving_dir / "EMO-1-shout+laugh.npz"), "--frames", "3",
                      "--size", "64", "--backend", "onnxruntime", "--device", "cpu", "--precision", "int8",
                      "-o", str(tmp_path / "frames"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "decoder.int8.onnx" in out                                # the runtime line names the int8 decoder
    assert len(list((tmp_path / "frames").glob("frame_*.png"))) == 3
