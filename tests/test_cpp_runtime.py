"""The C++ embedding runtime (cpp/runtime, C API flexavatar/flexavatar.h) against the Python side.

Covered: decode and render (``runtime_dump``), the encoder (``runtime_encode``: photo + camera + DINOv2
features → avatar code, then a frame with it), the example application, and abuse of the C API
(``runtime_abuse``), including the CUDA rasterizer choice failing cleanly on machines without CUDA.

One bundle is exported during the run (the reduced official fixture, fp32 ONNX: encoder_features +
decoder, ≈ 70 s on 2 cores), and two more for this module: fp32 + fp16, each decoder also with ONNX Runtime's
fused kernels (target onnx-ort: ≈ 13 s), for the fp16 and fused-decoder tests, and fp32 + int8 ONNX (≈ 20 s) for
the int8 test; the C++ programs are built by
``cpp/tests/run_ctest.sh --build-only`` into ``build/ctest-{release,asan}`` (the same folders the later ctest run
in ``.ci/run`` reuses).

Oracles: the Python runtime (``flexavatar.runtime.Runtime``, onnxruntime's Python API on the same graph
and the native CPU rasterizer: Gaussians and images, tight tolerances) and the PyTorch model's decode
(Gaussians within the exporter's fp32 parity tolerance; its render within 60 dB PSNR). The
example application is installed and built as a separate CMake project (``find_package(flexavatar)``).
The abuse program (corrupt / truncated manifest and ONNX files, wrong shapes, null and destroyed
handles) runs in the plain and the AddressSanitizer + LeakSanitizer builds.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

from flexavatar.bundle import GAUSSIAN_OUTPUTS, PSNR_TARGET_DB, Bundle
from flexavatar.images import psnr
from flexavatar.runtime import RuntimeArgumentError

REPO = Path(__file__).resolve().parents[1]
FP32_TOLERANCE = 1e-4          # the exporter's fp32 parity tolerance (export/parity.py)
SAME_LIBRARY_TOLERANCE = 1e-5  # C++ and Python both through onnxruntime 1.32 on the same graph
WIDTHS = {"means": 3, "quats": 4, "scales": 3, "opacities": 1, "sh0": 3}
RENDER_SIZE = 96


@pytest.fixture(scope="module")
def release_build(cpp_build) -> Path:
    return cpp_build("release")


@pytest.fixture(scope="module")
def bundle_dir(onnx_features_bundle) -> Path:
    return onnx_features_bundle


@pytest.fixture(scope="module")
def inputs(bundle_dir, official_dir, tmp_path_factory):
    """A real avatar code (the bundle's encoder on the fixture's photo) and three expressions."""
    import onnxruntime as ort

    bundle = Bundle.open(bundle_dir)
    encoder = bundle.artifact("encoder_features")
    fixture = np.load(official_dir / "inputs.npz")
    feeds = {"image": fixture["images"][0], "cam2world": fixture["cam2world"][0],
             "intrinsics": fixture["intrinsics"][0], "features": fixture["features"][0]}
    session = ort.InferenceSession(str(bundle.path(encoder)), providers=["CPUExecutionProvider"])
    code = session.run(None, {k: v.astype(np.float32) for k, v in feeds.items()})[0]      # [1, R², D]
    expressions = np.concatenate([fixture["expression_codes"][0], np.zeros((1, 135))]).astype(np.float32)  # [3, 135]
    work = tmp_path_factory.mktemp("cpp_inputs")
    code_path = work / "avatar_code.npy"
    np.save(code_path, code.transpose(1, 0, 2))                                           # (R², 1, D)
    expressions_path = work / "expressions.npy"
    np.save(expressions_path, expressions)
    expressions.tofile(work / "expressions.f32")
    return {"code": code, "code_path": code_path, "expressions": expressions,
            "expressions_path": expressions_path, "expressions_f32": work / "expressions.f32"}


def _default_camera() -> tuple[np.ndarray, np.ndarray]:
    """flexavatar.cameras.default_camera (the C++ runtime's default for a bundle without avatar)."""
    c2w = np.array([[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 1], [0, 0, 0, 1]], dtype=np.float32)
    k = np.array([[1500 / 512, 0, 0.5], [0, 1500 / 512, 0.5], [0, 0, 1]], dtype=np.float32)
    return c2w, k


def _run_dump(build: Path, bundle: Path, inputs: dict, work: Path, precision: str = "fp32", fused: str = "auto",
              decoder_file: str | None = None) -> list[dict]:
    """runtime_dump on the inputs' code and expressions: per frame Gaussians, float frame and RGBA frame.
    fused: options.fused_decoders (auto, on, off); decoder_file: the decoder file the runtime must report."""
    c2w, k = _default_camera()
    camera = np.concatenate([c2w.ravel(), k.ravel(), [RENDER_SIZE, RENDER_SIZE], [1.0, 1.0, 1.0]]).astype(np.float32)
    camera.tofile(work / "camera.f32")
    proc = subprocess.run([str(build / "tests/runtime_dump"), str(bundle), str(inputs["code_path"]),
                           str(inputs["expressions_f32"]), str(work / "camera.f32"), str(work), precision, fused],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"provider CPUExecutionProvider precision {precision} decoder_file " in proc.stdout, proc.stdout
    if decoder_file is not None:
        assert f"decoder_file {decoder_file}\n" in proc.stdout, proc.stdout
    g = Bundle.open(bundle).manifest.conventions.n_gaussians
    frames = []
    for e in range(len(inputs["expressions"])):
        flat = np.fromfile(work / f"gaussians_{e}.f32", dtype=np.float32)
        assert flat.size == g * sum(WIDTHS.values())
        gaussians, start = {}, 0
        for name, width in WIDTHS.items():
            gaussians[name] = flat[start:start + g * width].reshape((g, width) if width > 1 else (g,))
            start += g * width
        pixels = RENDER_SIZE * RENDER_SIZE
        image = np.fromfile(work / f"frame_{e}.f32", dtype=np.float32)
        rgba = np.fromfile(work / f"frame_{e}.rgba", dtype=np.uint8).reshape(RENDER_SIZE, RENDER_SIZE, 4)
        frames.append({"gaussians": gaussians, "rgb": image[:3 * pixels].reshape(RENDER_SIZE, RENDER_SIZE, 3),
                       "alpha": image[3 * pixels:4 * pixels].reshape(RENDER_SIZE, RENDER_SIZE),
                       "depth": image[4 * pixels:].reshape(RENDER_SIZE, RENDER_SIZE), "rgba": rgba})
    return frames


@pytest.fixture(scope="module")
def cpp_outputs(release_build, bundle_dir, inputs, tmp_path_factory):
    """What the C++ runtime computes (fp32 files)."""
    return _run_dump(release_build, bundle_dir, inputs, tmp_path_factory.mktemp("cpp_dump"))


@pytest.fixture(scope="module")
def python_runtime(bundle_dir):
    from flexavatar.runtime import Runtime

    return Runtime(bundle_dir, backend="onnxruntime", device="cpu", rasterizer="cpu")


@pytest.fixture(scope="module")
def python_gaussians(python_runtime, inputs) -> list[dict[str, np.ndarray]]:
    """The Python runtime (flexavatar.runtime, onnxruntime's Python API on the same graph), frame by frame."""
    from flexavatar.runtime import Avatar

    avatar = Avatar(inputs["code"].copy())
    out = []
    for expression in inputs["expressions"]:
        g = python_runtime.decode(avatar, expression[None])
        out.append({name: np.asarray(v)[0] for name, v in g.arrays().items()})
    return out


@pytest.fixture(scope="module")
def torch_gaussians(official_dir, inputs) -> list[dict[str, np.ndarray]]:
    import torch

    from flexavatar.config import FlexConfig
    from flexavatar.model import AvatarCode, FlexAvatarModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = FlexConfig.from_official_json(official_dir / "config.json")
    model = FlexAvatarModel.from_checkpoint(official_dir / "state_dict.safetensors",
                                            template=official_dir / "gghead_template.obj", config=config)
    with torch.no_grad():
        g = model.decode(AvatarCode(torch.from_numpy(inputs["code"].copy()).transpose(0, 1)),
                         torch.from_numpy(inputs["expressions"]), dataset_id=1)
    return [{name: getattr(g, name)[e].numpy() for name in GAUSSIAN_OUTPUTS} for e in range(len(inputs["expressions"]))]


def _render_kernels(gaussians: dict[str, np.ndarray]):
    """Gaussians → rgb [H, W, 3] with flexavatar.kernels' native CPU rasterizer (for the PyTorch model's output)."""
    from flexavatar.kernels import Cameras, Splats, pixel_intrinsics, rasterize, world2cam_from_cam2world

    c2w, k = _default_camera()
    cams = Cameras(world2cam=world2cam_from_cam2world(c2w)[None], K=pixel_intrinsics(k, RENDER_SIZE, RENDER_SIZE)[None])
    splats = Splats(**{name: np.ascontiguousarray(v, dtype=np.float32) for name, v in gaussians.items()})
    return rasterize(splats, cams, RENDER_SIZE, RENDER_SIZE, background=(1.0, 1.0, 1.0), backend="cpu").rgb[0]


# ---- equality with the Python side ---------------------------------------------------------------------

def test_gaussians_equal_the_python_runtime_and_pytorch(cpp_outputs, python_gaussians, torch_gaussians):
    for frame, py, ref in zip(cpp_outputs, python_gaussians, torch_gaussians, strict=True):
        for name in GAUSSIAN_OUTPUTS:
            cpp = frame["gaussians"][name]
            assert cpp.shape == ref[name].shape, name
            assert np.isfinite(cpp).all(), name
            np.testing.assert_allclose(cpp, py[name], rtol=0, atol=SAME_LIBRARY_TOLERANCE, err_msg=name)
            np.testing.assert_allclose(cpp, ref[name], rtol=0, atol=FP32_TOLERANCE, err_msg=name)
    # the frames differ from one another (the expression reaches the decoder)
    assert np.abs(cpp_outputs[0]["gaussians"]["means"] - cpp_outputs[2]["gaussians"]["means"]).max() > 1e-3


def test_images_equal_the_python_runtime(cpp_outputs, python_runtime, inputs, torch_gaussians):
    from flexavatar.runtime import Avatar, Camera

    c2w, k = _default_camera()
    frames = python_runtime.render(Avatar(inputs["code"]), inputs["expressions"], Camera(c2w, k), RENDER_SIZE,
                                   RENDER_SIZE, output="float")                              # [E, H, W, 4]
    uint8 = python_runtime.render(Avatar(inputs["code"]), inputs["expressions"], Camera(c2w, k), RENDER_SIZE,
                                  RENDER_SIZE, output="uint8")                              # [E, H, W, 3]
    for frame, py, py_uint8, ref in zip(cpp_outputs, frames, uint8, torch_gaussians, strict=True):
        assert py[..., 3].max() > 0.5 and (py[..., 3] < 0.01).mean() > 0.05   # a head on a background, not empty
        np.testing.assert_allclose(frame["rgb"], py[..., :3], rtol=0, atol=1e-4)
        np.testing.assert_allclose(frame["alpha"], py[..., 3], rtol=0, atol=1e-4)
        assert np.abs(frame["rgba"][..., :3].astype(int) - py_uint8).max() <= 1
        # against the PyTorch model's Gaussians on the same rasterizer: image PSNR (fp16's target is 40 dB)
        mse = float(np.mean((frame["rgb"].astype(np.float64) - _render_kernels(ref)) ** 2))
        assert mse == 0 or 10 * np.log10(1 / mse) > 60


@pytest.fixture(scope="module")
def fused_bundle(official_dir, tmp_path_factory) -> Path:
    """The fixture exported with fp32 and fp16 ONNX decoders, each also with ONNX Runtime's fused kernels (target
    onnx-ort: decoder.<precision>.ort.onnx beside decoder.<precision>.onnx). Read-only."""
    from flexavatar.config import FlexConfig
    from flexavatar.export import export_bundle

    bundle = tmp_path_factory.mktemp("fused") / "bundle"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = FlexConfig.from_official_json(official_dir / "config.json")
        export_bundle(official_dir / "state_dict.safetensors", bundle, template=official_dir / "gghead_template.obj",
                      config=config, precisions=("fp32", "fp16"), targets=("onnx", "onnx-ort"), progress=None)
    return bundle


def test_fp16_files_run_when_asked_and_equal_the_python_runtime_fp16(release_build, fused_bundle, inputs,
                                                                    torch_gaussians, tmp_path):
    from flexavatar.runtime import Avatar, Runtime

    bundle = fused_bundle
    (tmp_path / "dump").mkdir()
    # fused_decoders AUTO on the CPU: the portable file first, as the Python runtime's default there
    frames = _run_dump(release_build, bundle, inputs, tmp_path / "dump", precision="fp16",
                       decoder_file="decoder.fp16.onnx")
    python = Runtime(bundle, backend="onnxruntime", device="cpu", rasterizer="cpu", precision="fp16")
    assert "decoder.fp16.onnx" in python.describe()
    avatar = Avatar(inputs["code"].copy())
    for frame, expression, ref in zip(frames, inputs["expressions"], torch_gaussians, strict=True):
        py = python.decode(avatar, expression[None]).arrays()
        worst = 0.0
        for name in GAUSSIAN_OUTPUTS:
            cpp = frame["gaussians"][name]
            np.testing.assert_allclose(cpp, np.asarray(py[name])[0], rtol=0, atol=SAME_LIBRARY_TOLERANCE, err_msg=name)
            worst = max(worst, float(np.abs(cpp - ref[name]).max()))
        assert 1e-4 < worst < 0.1, worst     # the fp16 decoder ran (not fp32), with fp16-sized errors only


def test_fused_decoder_runs_when_asked_and_equals_the_python_runtimes(release_build, fused_bundle, inputs,
                                                                      torch_gaussians, tmp_path):
    """options.fused_decoders ON runs the bundle's decoder with ONNX Runtime's fused kernels (decoder.fp32.ort.onnx)
    on the CPU too: its Gaussians and frames are the Python runtime's with fused_decoders=True (the same file on the
    same provider), and the PyTorch model's within the exporter's tolerance. AUTO (on the CPU) and OFF run the
    portable file."""
    from flexavatar.runtime import Avatar, Camera, Runtime

    (tmp_path / "dump").mkdir()
    frames = _run_dump(release_build, fused_bundle, inputs, tmp_path / "dump", fused="on",
                       decoder_file="decoder.fp32.ort.onnx")
    python = Runtime(fused_bundle, backend="onnxruntime", device="cpu", rasterizer="cpu", fused_decoders=True)
    assert "decoder.fp32.ort.onnx" in python.describe()
    avatar = Avatar(inputs["code"].copy())
    for frame, expression, ref in zip(frames, inputs["expressions"], torch_gaussians, strict=True):
        py = python.decode(avatar, expression[None]).arrays()
        for name in GAUSSIAN_OUTPUTS:
            cpp = frame["gaussians"][name]
            assert np.isfinite(cpp).all(), name
            np.testing.assert_allclose(cpp, np.asarray(py[name])[0], rtol=0, atol=SAME_LIBRARY_TOLERANCE, err_msg=name)
            np.testing.assert_allclose(cpp, ref[name], rtol=0, atol=FP32_TOLERANCE, err_msg=name)
    c2w, k = _default_camera()
    want = python.render(avatar, inputs["expressions"], Camera(c2w, k), RENDER_SIZE, RENDER_SIZE, output="float")
    for frame, py in zip(frames, want, strict=True):
        assert py[..., 3].max() > 0.5
        np.testing.assert_allclose(frame["rgb"], py[..., :3], rtol=0, atol=1e-4)
        np.testing.assert_allclose(frame["alpha"], py[..., 3], rtol=0, atol=1e-4)
    # the numerics check through each choice (runtime_check reports the decoder file that ran)
    import json

    for fused, file in (("auto", "decoder.fp32.onnx"), ("off", "decoder.fp32.onnx"), ("on", "decoder.fp32.ort.onnx")):
        proc = subprocess.run([str(release_build / "tests/runtime_check"), str(fused_bundle), "fp32", fused],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        got = json.loads(proc.stdout)
        assert got["decoder_file"] == file and got["passed"] is True, (fused, got)


@pytest.fixture(scope="module")
def int8_bundle(official_dir, tmp_path_factory) -> Path:
    """The fixture exported with fp32 and int8 ONNX decoders (decoder.int8.onnx: int8 MatMul weights, activations
    quantized at run time; no int8 encoder: the fp32 one serves both). Read-only."""
    from flexavatar.config import FlexConfig
    from flexavatar.export import export_bundle

    bundle = tmp_path_factory.mktemp("int8") / "bundle"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = FlexConfig.from_official_json(official_dir / "config.json")
        export_bundle(official_dir / "state_dict.safetensors", bundle, template=official_dir / "gghead_template.obj",
                      config=config, precisions=("fp32", "int8"), targets=("onnx",), progress=None)
    return bundle


def test_int8_decoder_runs_when_asked_and_equals_onnxruntime(release_build, int8_bundle, inputs, tmp_path):
    """precision int8 (FLEXAVATAR_PRECISION_INT8) runs decoder.int8.onnx on the CPU provider: its Gaussians are
    onnxruntime's (Python, CPU provider) on the same file and inputs (the same library and kernels), and its frames
    are within the int8 PSNR target of the fp32 decoder's frames through the same C++ runtime. The numerics check
    holds it (and the fp32 encoder whose code goes through it) to the int8 target."""
    import json

    import onnxruntime as ort

    (tmp_path / "int8").mkdir()
    (tmp_path / "fp32").mkdir()
    frames = _run_dump(release_build, int8_bundle, inputs, tmp_path / "int8", precision="int8",
                       decoder_file="decoder.int8.onnx")
    fp32_frames = _run_dump(release_build, int8_bundle, inputs, tmp_path / "fp32", decoder_file="decoder.fp32.onnx")
    session = ort.InferenceSession(str(int8_bundle / "decoder.int8.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    worst_psnr = float("inf")
    for frame, fp32, expression in zip(frames, fp32_frames, inputs["expressions"], strict=True):
        want = dict(zip(names, session.run(None, {"code": inputs["code"], "expressions": expression[None]}),
                        strict=True))
        for name in GAUSSIAN_OUTPUTS:
            cpp = frame["gaussians"][name]
            assert np.isfinite(cpp).all(), name
            np.testing.assert_allclose(cpp, want[name][0], rtol=0, atol=FP32_TOLERANCE, err_msg=name)
        # the int8 file ran, not the fp32 one: quantization-sized differences from the fp32 decoder's Gaussians
        assert max(float(np.abs(frame["gaussians"][n] - fp32["gaussians"][n]).max()) for n in GAUSSIAN_OUTPUTS) > 1e-3
        assert fp32["alpha"].max() > 0.5
        worst_psnr = min(worst_psnr, psnr(frame["rgb"], fp32["rgb"]))
    assert PSNR_TARGET_DB["int8"] <= worst_psnr < PSNR_TARGET_DB["fp32"], worst_psnr

    proc = subprocess.run([str(release_build / "tests/runtime_check"), str(int8_bundle), "int8"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["decoder_file"] == "decoder.int8.onnx" and got["target_db"] == PSNR_TARGET_DB["int8"], got
    assert got["passed"] is True and got["encoder_checked"] is True, got
    assert got["code_max_abs_error"] <= FP32_TOLERANCE, got      # the fp32 encoder ran: its code is PyTorch's
    assert PSNR_TARGET_DB["int8"] <= got["encoder_psnr_db"] < PSNR_TARGET_DB["fp32"], got


def test_numerics_check_equals_the_python_runtimes(release_build, bundle_dir, python_runtime):
    """flexavatar_runtime_check_numerics (tests/runtime_check) on the exported bundle gives the Python runtime's
    check of its decoder on the same engine (ONNX Runtime CPU provider, CPU rasterizer): the same max errors per
    output and the same worst-frame PSNR, read from the same check.npz (numpy's ZIP64-flavoured archive)."""
    import json

    proc = subprocess.run([str(release_build / "tests/runtime_check"), str(bundle_dir)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    checks = {c.name: c for c in python_runtime.check_numerics().checks}
    want = checks["decoder"]
    assert got["passed"] is True and got["target_db"] == want.target_db
    assert got["num_expressions"] == len(Bundle.open(bundle_dir).check_set().expressions)
    assert got["psnr_db"] == pytest.approx(want.psnr_db, abs=0.01) and want.psnr_db >= want.target_db
    for name, error in want.errors.items():
        assert got["max_abs_error"][name] == pytest.approx(error, rel=1e-3, abs=SAME_LIBRARY_TOLERANCE / 100)
    # the encoder row: the check photo (with its DINOv2 features: this bundle's encoder takes them) → code → frames
    encoder = checks["encoder"]
    assert got["encoder_checked"] is True
    assert got["code_max_abs_error"] == pytest.approx(encoder.errors["code"], rel=1e-3, abs=SAME_LIBRARY_TOLERANCE / 100)
    assert got["encoder_psnr_db"] == pytest.approx(encoder.psnr_db, abs=0.01)


def test_rgba_frame_is_the_quantised_float_frame(cpp_outputs):
    for frame in cpp_outputs:
        expect_rgb = np.floor(np.clip(frame["rgb"], 0, 1) * 255 + 0.5).astype(np.uint8)
        expect_alpha = np.floor(np.clip(frame["alpha"], 0, 1) * 255 + 0.5).astype(np.uint8)
        assert np.abs(frame["rgba"][..., :3].astype(int) - expect_rgb).max() <= 1  # float rounding at .5
        assert np.abs(frame["rgba"][..., 3].astype(int) - expect_alpha).max() <= 1
        assert (frame["rgba"][..., :3] == expect_rgb).mean() > 0.999


# ---- the encoder: photo → avatar code ------------------------------------------------------------------

def test_encoder_code_and_its_frame_equal_the_python_runtime(release_build, bundle_dir, official_dir, python_runtime,
                                                             tmp_path):
    """flexavatar_runtime_create_avatar_code (the bundle's encoder_features graph, lazily opened) against
    flexavatar.runtime.Runtime.create_avatar on the same photo, camera and DINOv2 features; then a frame
    rendered with the C++ code against the Python render of the Python avatar."""
    from flexavatar.runtime import Camera

    fixture = np.load(official_dir / "inputs.npz")
    image = fixture["images"][1][0].astype(np.float32)                     # [3, S, S], the second photo
    c2w, k = fixture["cam2world"][1][0].astype(np.float32), fixture["intrinsics"][1][0].astype(np.float32)
    features = fixture["features"][1][0].astype(np.float32)                # [C, h, w]
    expression = fixture["expression_codes"][1][0].astype(np.float32)      # [135]
    image.tofile(tmp_path / "image.f32")
    np.concatenate([c2w.ravel(), k.ravel()]).astype(np.float32).tofile(tmp_path / "photo.f32")
    features.tofile(tmp_path / "features.f32")
    expression.tofile(tmp_path / "expression.f32")
    rc2w, rk = _default_camera()
    np.concatenate([rc2w.ravel(), rk.ravel(), [RENDER_SIZE, RENDER_SIZE], [1.0, 1.0, 1.0]]).astype(
        np.float32).tofile(tmp_path / "camera.f32")
    proc = subprocess.run([str(release_build / "tests/runtime_encode"), str(bundle_dir), str(tmp_path / "image.f32"),
                           str(tmp_path / "photo.f32"), str(tmp_path / "features.f32"), *map(str, features.shape),
                           str(tmp_path / "expression.f32"), str(tmp_path / "camera.f32"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"encoders 2 feature_channels {features.shape[0]}" in proc.stdout   # FLEXAVATAR_ENCODER_FEATURES only
    # the encoder ran on the decoder's provider (no GPU / NPU provider to fall back from)
    assert "encoder_provider CPUExecutionProvider encoder_fallback ''" in proc.stdout, proc.stdout

    avatar = python_runtime.create_avatar(image.transpose(1, 2, 0), camera=Camera(c2w, k), features=features)
    expected = np.asarray(avatar.code)[0]                                   # [R², D]
    code = np.fromfile(tmp_path / "code.f32", dtype=np.float32)
    assert code.size == expected.size and np.isfinite(code).all()
    assert float(expected.std()) > 0.1                                      # a real code, not zeros
    assert float(np.abs(code - expected.ravel()).max()) <= FP32_TOLERANCE
    # the photo reaches the code: the first photo gives another one
    other = python_runtime.create_avatar(fixture["images"][0][0].transpose(1, 2, 0), camera=Camera(c2w, k),
                                         features=features)
    assert float(np.abs(np.asarray(other.code)[0].ravel() - code).max()) > 1e-2

    frame = python_runtime.render(avatar, expression[None], Camera(rc2w, rk), RENDER_SIZE, RENDER_SIZE,
                                  output="float")[0]                       # [H, W, 4]
    pixels = RENDER_SIZE * RENDER_SIZE
    cpp = np.fromfile(tmp_path / "frame.f32", dtype=np.float32)
    assert frame[..., 3].max() > 0.5
    np.testing.assert_allclose(cpp[:3 * pixels].reshape(frame.shape[:2] + (3,)), frame[..., :3], rtol=0, atol=1e-4)
    np.testing.assert_allclose(cpp[3 * pixels:4 * pixels].reshape(frame.shape[:2]), frame[..., 3], rtol=0, atol=1e-4)


def test_encoder_rebinds_its_features_per_shape(release_build, bundle_dir, official_dir, python_runtime, tmp_path):
    """One C++ runtime encodes the photo with feature maps of two shapes, then the first again: each code equals
    the Python runtime's for those features (the encoder's input is rebound per shape; on CUDA with graphs each
    shape has its own graph, runtime_cuda_check)."""
    from flexavatar.runtime import Camera

    fixture = np.load(official_dir / "inputs.npz")
    image = fixture["images"][1][0].astype(np.float32)
    c2w, k = fixture["cam2world"][1][0].astype(np.float32), fixture["intrinsics"][1][0].astype(np.float32)
    features = fixture["features"][1][0].astype(np.float32)                # [C, h, w]
    c, h, w = features.shape
    other = np.random.default_rng(7).standard_normal((c, h + 2, w + 1)).astype(np.float32)
    image.tofile(tmp_path / "image.f32")
    np.concatenate([c2w.ravel(), k.ravel()]).astype(np.float32).tofile(tmp_path / "photo.f32")
    features.tofile(tmp_path / "features.f32")
    other.tofile(tmp_path / "features2.f32")
    fixture["expression_codes"][1][0].astype(np.float32).tofile(tmp_path / "expression.f32")
    rc2w, rk = _default_camera()
    np.concatenate([rc2w.ravel(), rk.ravel(), [RENDER_SIZE, RENDER_SIZE], [1.0, 1.0, 1.0]]).astype(
        np.float32).tofile(tmp_path / "camera.f32")
    proc = subprocess.run([str(release_build / "tests/runtime_encode"), str(bundle_dir), str(tmp_path / "image.f32"),
                           str(tmp_path / "photo.f32"), str(tmp_path / "features.f32"), *map(str, features.shape),
                           str(tmp_path / "expression.f32"), str(tmp_path / "camera.f32"), str(tmp_path),
                           str(tmp_path / "features2.f32"), *map(str, other.shape)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    codes = {name: np.fromfile(tmp_path / f"{name}.f32", dtype=np.float32) for name in ("code", "code2", "code3")}
    for name, feats in (("code", features), ("code2", other), ("code3", features)):
        want = np.asarray(python_runtime.create_avatar(image.transpose(1, 2, 0), camera=Camera(c2w, k),
                                                       features=feats).code)[0].ravel()
        assert float(np.abs(codes[name] - want).max()) <= FP32_TOLERANCE, name
    assert float(np.abs(codes["code2"] - codes["code"]).max()) > 1e-2       # the second map reaches the code


# ---- the installed package and the example application ------------------------------------------------

@pytest.fixture(scope="module")
def example_app(release_build, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("example")
    prefix, build = work / "prefix", work / "build"
    subprocess.run(["cmake", "--install", str(release_build), "--prefix", str(prefix)], check=True,
                   capture_output=True)
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    for cmd in (["cmake", "-S", str(REPO / "cpp/examples/flexavatar_render"), "-B", str(build), *generator,
                 f"-DCMAKE_PREFIX_PATH={prefix}", "-DCMAKE_BUILD_TYPE=Release"],
                ["cmake", "--build", str(build)]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return build / "flexavatar_render"


def test_example_writes_png_frames_equal_to_the_runtime_and_reports_latency(example_app, bundle_dir, inputs,
                                                                            cpp_outputs, tmp_path):
    from PIL import Image

    out = tmp_path / "frames"
    proc = subprocess.run([str(example_app), str(bundle_dir), str(inputs["code_path"]), str(inputs["expressions_path"]),
                           str(out), "--size", str(RENDER_SIZE)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"p50 ([0-9.]+) ms, p95 ([0-9.]+) ms", proc.stdout)
    assert match and 0 < float(match[1]) <= float(match[2]), proc.stdout
    # CUDA graphs are the default but take effect on the zero-copy CUDA path only
    assert "decoder on CPUExecutionProvider, cpu rasterizer, decoder file decoder.fp32.onnx" in proc.stdout, \
        proc.stdout
    pngs = sorted(out.glob("frame_*.png"))
    assert [p.name for p in pngs] == [f"frame_{e:05d}.png" for e in range(len(inputs["expressions"]))]
    for png, frame in zip(pngs, cpp_outputs, strict=True):
        image = np.asarray(Image.open(png))
        assert image.shape == (RENDER_SIZE, RENDER_SIZE, 4) and image.dtype == np.uint8
        np.testing.assert_array_equal(image, frame["rgba"])


def test_example_renders_a_tracked_npz_sequence_as_its_npy(example_app, bundle_dir, inputs, driving_dir, tmp_path):
    """EXPRESSIONS may be a tracked sequence as recorded (np.savez_compressed, expression_codes beside members of other
    dtypes): read by the library (flexavatar_read_expressions), its frames are those of the same codes as a .npy."""
    with np.load(driving_dir / "EXP-4-lips.npz") as tracked:
        members = {name: tracked[name] for name in tracked.files}
    codes = members["expression_codes"][:4]
    members["expression_codes"] = codes
    np.savez_compressed(tmp_path / "lips.npz", **members)
    np.save(tmp_path / "lips.npy", codes)
    frames = {}
    for name in ("lips.npz", "lips.npy"):
        out = tmp_path / f"out_{name}"
        proc = subprocess.run([str(example_app), str(bundle_dir), str(inputs["code_path"]), str(tmp_path / name),
                               str(out), "--size", "48", "--device", "cpu"], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        frames[name] = [png.read_bytes() for png in sorted(out.glob("frame_*.png"))]
    assert len(frames["lips.npz"]) == 4 and frames["lips.npz"] == frames["lips.npy"]
    assert len(set(frames["lips.npz"])) > 1  # real expressions: the frames differ
    # a photo's crop (one 'expression_code', no sequence) is refused before anything is rendered, naming the members
    crop = next(path for path in sorted(driving_dir.glob("*.npz")) if "expression_codes" not in np.load(path).files)
    proc = subprocess.run([str(example_app), str(bundle_dir), str(inputs["code_path"]), str(crop),
                           str(tmp_path / "crop_out")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "no 'expression_codes' array (members: " in proc.stderr, proc.stderr
    assert not (tmp_path / "crop_out").exists()


def test_example_takes_float64_files_as_numpy_saves_them(example_app, bundle_dir, inputs, tmp_path):
    """np.save of float64 arrays (numpy's default): an avatar code and expressions in float64 are converted to
    float32 by the library, as the Python runtime's astype does: the frames equal those of the float32 files."""
    code64 = np.load(inputs["code_path"]).astype(np.float64)
    np.save(tmp_path / "code64.npy", code64)
    np.save(tmp_path / "expressions64.npy", inputs["expressions"].astype(np.float64))
    frames = {}
    for name, code, expressions in (("f32", inputs["code_path"], inputs["expressions_path"]),
                                    ("f64", tmp_path / "code64.npy", tmp_path / "expressions64.npy")):
        proc = subprocess.run([str(example_app), str(bundle_dir), str(code), str(expressions), str(tmp_path / name),
                               "--size", "48", "--device", "cpu"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        frames[name] = [png.read_bytes() for png in sorted((tmp_path / name).glob("frame_*.png"))]
    assert len(frames["f64"]) == len(inputs["expressions"]) and frames["f64"] == frames["f32"]


def test_example_fused_decoders_option_picks_the_decoder_file(example_app, fused_bundle, inputs, tmp_path):
    """--fused-decoders (options.fused_decoders): the file that runs is printed; auto is the portable one on the CPU."""
    for flag, file in (("on", "decoder.fp32.ort.onnx"), ("off", "decoder.fp32.onnx"), ("auto", "decoder.fp32.onnx")):
        proc = subprocess.run([str(example_app), str(fused_bundle), str(inputs["code_path"]),
                               str(inputs["expressions_path"]), str(tmp_path / flag), "--size", "32", "--device", "cpu",
                               "--fused-decoders", flag], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert f"cpu rasterizer, decoder file {file}\n" in proc.stdout, proc.stdout
        assert len(list((tmp_path / flag).glob("frame_*.png"))) == len(inputs["expressions"])
    proc = subprocess.run([str(example_app), str(fused_bundle), "-", "e.npy", "o", "--fused-decoders", "yes"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--fused-decoders: expected auto, on or off, got 'yes'" in proc.stderr


def test_example_verify_checks_the_numerics_before_rendering(example_app, bundle_dir, inputs, tmp_path):
    """--verify: the bundle's check set on the runtime first; frames only when it passes. A check set whose reference
    Gaussians were moved (a copy of the bundle, manifest hash updated) fails it, and nothing is written."""
    import hashlib
    import json

    args = [str(inputs["code_path"]), str(inputs["expressions_path"])]
    out = tmp_path / "frames"
    proc = subprocess.run([str(example_app), str(bundle_dir), *args, str(out), "--size", "32", "--verify"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"numerics \(CPUExecutionProvider, fp32, cpu rasterizer\): worst frame [0-9.]+ dB "
                     r"\(target 60 dB\).*: ok", proc.stdout), proc.stdout
    assert len(list(out.glob("frame_*.png"))) == len(inputs["expressions"])

    moved = tmp_path / "moved"
    shutil.copytree(bundle_dir, moved)
    with np.load(moved / "check.npz") as check:
        arrays = {k: check[k] for k in check.files}
    arrays["means"] = arrays["means"] + np.float32(0.05)
    with (moved / "check.npz").open("wb") as fh:
        np.savez(fh, **arrays)
    manifest = json.loads((moved / "manifest.json").read_text())
    data = (moved / "check.npz").read_bytes()
    manifest["check"]["file"].update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    (moved / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "not_written"
    proc = subprocess.run([str(example_app), str(moved), *args, str(out), "--verify"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1 and "numerics check failed" in proc.stderr, proc.stdout + proc.stderr
    assert "means 0.05" in proc.stdout and ": FAILED" in proc.stdout, proc.stdout
    assert not list(out.glob("frame_*.png"))


def test_example_shows_the_head_pose_like_the_python_runtime(example_app, bundle_dir, inputs, python_runtime,
                                                            driving_dir, tmp_path):
    """--head-pose (flexavatar_camera_apply_head_pose: the camera moved by the inverse pose) gives the frames of
    the Python runtime's render(apply_head_pose=True), on tracked codes with large head rotations."""
    from PIL import Image

    from flexavatar.runtime import Avatar, Camera, load_expressions

    codes = load_expressions(driving_dir / "EXP-1-head.npz")[::60][:3]
    np.save(tmp_path / "head.npy", codes)
    proc = subprocess.run([str(example_app), str(bundle_dir), str(inputs["code_path"]), str(tmp_path / "head.npy"),
                           str(tmp_path / "posed"), "--size", str(RENDER_SIZE), "--head-pose"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    c2w, k = _default_camera()
    want = python_runtime.render(Avatar(inputs["code"]), codes, Camera(c2w, k), RENDER_SIZE, RENDER_SIZE,
                                 apply_head_pose=True, output="float")
    unposed = python_runtime.render(Avatar(inputs["code"]), codes, Camera(c2w, k), RENDER_SIZE, RENDER_SIZE,
                                    output="float")
    for e in range(len(codes)):
        got = np.asarray(Image.open(tmp_path / "posed" / f"frame_{e:05d}.png"), np.float64)[..., :3] / 255
        diff = np.abs(got - want[e, ..., :3])
        assert diff.mean() <= 1e-3 + 0.5 / 255 and diff.max() <= 2 / 255 + 0.5 / 255, (e, diff.mean(), diff.max())
        assert np.abs(got - unposed[e, ..., :3]).mean() > 0.01                   # the pose does move the head


def test_example_camera_tracked_renders_from_the_sequences_cameras_like_the_python_runtime(
        example_app, bundle_dir, inputs, python_runtime, driving_dir, tmp_path):
    """--camera-tracked (flexavatar_read_sequence_cameras): each frame from the tracked sequence's own cam2world and
    intrinsics, as flexavatar-render --camera-tracked (runtime.sequence_cameras) renders them; on a tracked .npz
    (np.savez_compressed, every member of the recording, every 60th frame of a sequence with large head motion)."""
    from PIL import Image

    from flexavatar.runtime import Avatar, Camera, sequence_cameras

    with np.load(driving_dir / "EXP-1-head.npz") as tracked:
        frames = len(tracked["expression_codes"])
        members = {name: tracked[name][::60][:3] if tracked[name].ndim and len(tracked[name]) == frames
                   else tracked[name] for name in tracked.files}
    np.savez_compressed(tmp_path / "head.npz", **members)
    proc = subprocess.run([str(example_app), str(bundle_dir), str(inputs["code_path"]), str(tmp_path / "head.npz"),
                           str(tmp_path / "tracked"), "--size", str(RENDER_SIZE), "--camera-tracked"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    codes = members["expression_codes"]
    want = python_runtime.render(Avatar(inputs["code"]), codes, sequence_cameras(tmp_path / "head.npz"),
                                 RENDER_SIZE, RENDER_SIZE, output="float")
    c2w, k = _default_camera()
    frontal = python_runtime.render(Avatar(inputs["code"]), codes, Camera(c2w, k), RENDER_SIZE, RENDER_SIZE,
                                    output="float")
    pngs = sorted((tmp_path / "tracked").glob("frame_*.png"))
    assert len(pngs) == 3
    for e, png in enumerate(pngs):
        got = np.asarray(Image.open(png), np.float64)[..., :3] / 255
        diff = np.abs(got - want[e, ..., :3])
        assert diff.mean() <= 1e-3 + 0.5 / 255 and diff.max() <= 2 / 255 + 0.5 / 255, (e, diff.mean(), diff.max())
        assert np.abs(got - frontal[e, ..., :3]).mean() > 0.01              # not the default camera's view
    # one camera per frame, and cameras only where a recording has them
    members["cam2world"], members["intrinsics"] = members["cam2world"][:2], members["intrinsics"][:2]
    np.savez_compressed(tmp_path / "short.npz", **members)
    np.save(tmp_path / "head.npy", codes)
    for name, message in (("short.npz", "short.npz holds 2 cameras for 3 expression codes"),
                          ("head.npy", "not an .npz archive (expected a tracked sequence .npz with cam2world")):
        proc = subprocess.run([str(example_app), str(bundle_dir), str(inputs["code_path"]), str(tmp_path / name),
                               str(tmp_path / "refused"), "--camera-tracked"], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 1 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "refused").exists()


def test_example_stereo_eyes_from_one_decode_are_the_python_runtimes_multiview(example_app, bundle_dir, inputs,
                                                                              python_runtime, tmp_path):
    """--stereo (a render for the left eye, flexavatar_runtime_render_view for the right: one decode) gives the
    frames of the Python runtime's render(stereo_camera(...), multiview=True)."""
    from PIL import Image

    from flexavatar.runtime import Avatar, Camera, stereo_camera

    proc = subprocess.run([str(example_app), str(bundle_dir), str(inputs["code_path"]), str(inputs["expressions_path"]),
                           str(tmp_path / "eyes"), "--size", str(RENDER_SIZE), "--stereo", "0.08"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "(stereo: left and right eye, one decode)" in proc.stdout, proc.stdout
    c2w, k = _default_camera()
    want = python_runtime.render(Avatar(inputs["code"]), inputs["expressions"],
                                 stereo_camera(Camera(c2w, k), eye_distance=0.08), RENDER_SIZE, RENDER_SIZE,
                                 output="float", multiview=True)                      # [E, 2, H, W, 4]
    for e in range(len(inputs["expressions"])):
        eyes = [np.asarray(Image.open(tmp_path / "eyes" / f"frame_{e:05d}_{side}.png"), np.float64)[..., :3] / 255
                for side in ("left", "right")]
        for v, got in enumerate(eyes):
            diff = np.abs(got - want[e, v, ..., :3])
            assert diff.mean() <= 1e-3 + 0.5 / 255 and diff.max() <= 2 / 255 + 0.5 / 255, (e, v, diff.mean(),
                                                                                         diff.max())
        assert np.abs(eyes[0] - eyes[1]).mean() > 1e-3                                # the eyes see different images
    bad = subprocess.run([str(example_app), str(bundle_dir), "-", str(inputs["expressions_path"]), str(tmp_path / "x"),
                          "--stereo", "-1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--stereo: expected the distance between the eyes" in bad.stderr


def _raw_frames(data: bytes, height: int, width: int) -> np.ndarray:
    """rgb24 frames read back from a raw stream → [n, H, W, 3] uint8 (the stream holds whole frames only)."""
    frame = height * width * 3
    assert len(data) % frame == 0, (len(data), frame)
    return np.frombuffer(data, np.uint8).reshape(-1, height, width, 3)


def test_example_streams_codes_from_stdin_and_raw_frames_to_stdout(example_app, bundle_dir, inputs, cpp_outputs,
                                                                   tmp_path):
    """EXPRESSIONS - and OUT_DIR - (flexavatar-render's live protocol: 540-byte records in, rgb24 frames out): the
    frames of the .npy run, byte for byte, with the report on standard error; the same records into PNG frames;
    an empty stream renders nothing; a stream ending inside a record is an error after its whole frames."""
    from PIL import Image

    records = inputs["expressions_f32"].read_bytes()                      # [E, 135] little-endian float32
    proc = subprocess.run([str(example_app), str(bundle_dir), str(inputs["code_path"]), "-", "-", "--size",
                           str(RENDER_SIZE)], input=records, capture_output=True, timeout=300)
    report = proc.stderr.decode()
    assert proc.returncode == 0, report
    frames = _raw_frames(proc.stdout, RENDER_SIZE, RENDER_SIZE)
    assert len(frames) == len(inputs["expressions"])
    for got, want in zip(frames, cpp_outputs, strict=True):
        np.testing.assert_array_equal(got, want["rgba"][..., :3])
    assert f"{len(frames)} frames {RENDER_SIZE}x{RENDER_SIZE} -> standard output (rgb24)" in report, report
    assert re.search(r"p50 [0-9.]+ ms, p95 [0-9.]+ ms", report), report

    out = tmp_path / "pngs"
    proc = subprocess.run([str(example_app), str(bundle_dir), str(inputs["code_path"]), "-", str(out), "--size",
                           str(RENDER_SIZE)], input=records, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    pngs = sorted(out.glob("frame_*.png"))
    assert len(pngs) == len(frames)
    for png, want in zip(pngs, cpp_outputs, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(png)), want["rgba"])

    proc = subprocess.run([str(example_app), str(bundle_dir), str(inputs["code_path"]), "-", "-", "--size", "32"],
                          input=b"", capture_output=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout == b"", proc.stderr
    assert "no frames: the expression stream was empty" in proc.stderr.decode()

    record = 135 * 4
    proc = subprocess.run([str(example_app), str(bundle_dir), str(inputs["code_path"]), "-", "-", "--size", "32"],
                          input=records[:2 * record + 100], capture_output=True, timeout=300)
    assert proc.returncode == 1
    assert ("EXPRESSIONS -: stream ended inside record 2 (100 of 540 bytes; expected 135 little-endian float32 "
            "values per frame) (2 frames written)") in proc.stderr.decode(), proc.stderr
    assert len(_raw_frames(proc.stdout, 32, 32)) == 2


def test_example_latest_renders_the_newest_streamed_code(example_app, bundle_dir, inputs, cpp_outputs, tmp_path):
    """--latest (EXPRESSIONS -): a reader thread keeps the newest record; every frame is the runtime's frame of a
    streamed code, in stream order, the last one of the last code, and the report counts the skipped codes. Without
    a stream it is a usage error."""
    records = inputs["expressions_f32"].read_bytes()
    want = [f["rgba"][..., :3].tobytes() for f in cpp_outputs]                  # every code's frame
    assert len(set(want)) == len(want)
    proc = subprocess.run([str(example_app), str(bundle_dir), str(inputs["code_path"]), "-", "-", "--size",
                           str(RENDER_SIZE), "--latest"], input=records, capture_output=True, timeout=300)
    report = proc.stderr.decode()
    assert proc.returncode == 0, report
    frames = [f.tobytes() for f in _raw_frames(proc.stdout, RENDER_SIZE, RENDER_SIZE)]
    order = [want.index(f) for f in frames]
    assert order and order == sorted(order) and len(set(order)) == len(order) and order[-1] == len(want) - 1
    assert (f"--latest: rendered the newest of {len(want)} streamed codes each time; {len(want) - len(frames)} "
            "arrived while a frame rendered and were skipped") in report, report
    proc = subprocess.run([str(example_app), str(bundle_dir), str(inputs["code_path"]),
                           str(inputs["expressions_path"]), str(tmp_path / "o"), "--latest"], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "--latest needs EXPRESSIONS -" in proc.stderr


def test_example_raw_stream_equals_flexavatar_render_and_stereo_sits_side_by_side(example_app, bundle_dir, inputs,
                                                                                  tmp_path):
    """The C++ example's live stream against the Python CLI's (flexavatar-render --expressions - -o -) on the same
    records: the same frames within the runtime parity tolerance; --stereo streams the two eyes side by side, each
    the PNG of that eye."""
    from PIL import Image

    records = inputs["expressions_f32"].read_bytes()
    proc = subprocess.run([str(example_app), str(bundle_dir), str(inputs["code_path"]), "-", "-", "--size",
                           str(RENDER_SIZE)], input=records, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ours = _raw_frames(proc.stdout, RENDER_SIZE, RENDER_SIZE).astype(np.float64) / 255
    python = subprocess.run(["flexavatar-render", str(bundle_dir), "--avatar", str(inputs["code_path"]),
                             "--expressions", "-", "-o", "-", "--size", str(RENDER_SIZE), "--backend", "onnxruntime",
                             "--device", "cpu", "--rasterizer", "cpu"], input=records, capture_output=True,
                            timeout=300)
    assert python.returncode == 0, python.stderr.decode()
    theirs = _raw_frames(python.stdout, RENDER_SIZE, RENDER_SIZE).astype(np.float64) / 255
    assert ours.shape == theirs.shape
    diff = np.abs(ours - theirs)
    assert diff.mean() <= 1e-3 and diff.max() <= 2 / 255 + 1e-9, (diff.mean(), diff.max())
    assert ours.std() > 0.01                                                # a rendered head, not a blank stream

    proc = subprocess.run([str(example_app), str(bundle_dir), str(inputs["code_path"]), "-", "-", "--size",
                           str(RENDER_SIZE), "--stereo", "0.08"], input=records, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "(stereo: left and right eye side by side, one decode)" in proc.stderr.decode()
    pairs = _raw_frames(proc.stdout, RENDER_SIZE, 2 * RENDER_SIZE)
    subprocess.run([str(example_app), str(bundle_dir), str(inputs["code_path"]), str(inputs["expressions_path"]),
                    str(tmp_path / "eyes"), "--size", str(RENDER_SIZE), "--stereo", "0.08"], check=True,
                   capture_output=True, timeout=300)
    assert len(pairs) == len(inputs["expressions"])
    for e, pair in enumerate(pairs):
        for side, half in (("left", pair[:, :RENDER_SIZE]), ("right", pair[:, RENDER_SIZE:])):
            png = np.asarray(Image.open(tmp_path / "eyes" / f"frame_{e:05d}_{side}.png"))
            np.testing.assert_array_equal(half, png[..., :3])


def test_example_stops_cleanly_when_the_reader_closes_the_stream(example_app, bundle_dir, inputs, tmp_path):
    """OUT_DIR -: a reader that leaves after one frame (head -c, a closed viewer) ends the example with an error
    naming it (exit 1), not a SIGPIPE death, and it stops reading its input."""
    expressions = np.repeat(inputs["expressions"][:1], 200, axis=0).astype("<f4")
    (tmp_path / "codes.f32").write_bytes(expressions.tobytes())
    with (tmp_path / "codes.f32").open("rb") as codes:
        proc = subprocess.Popen([str(example_app), str(bundle_dir), str(inputs["code_path"]), "-", "-", "--size", "64"],
                                stdin=codes, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        first = proc.stdout.read(64 * 64 * 3)
        proc.stdout.close()
        stderr = proc.stderr.read().decode()
        assert proc.wait(timeout=300) == 1, stderr
    assert len(first) == 64 * 64 * 3
    assert "standard output was closed before the last frame" in stderr, stderr
    assert "frames written" in stderr


def test_example_warns_of_artifacts_it_leaves_aside(example_app, bundle_dir, inputs, tmp_path):
    """A newer exporter's artifact (format unknown here): the example says which it leaves aside
    (flexavatar_runtime_info.ignored_names) and renders with the rest."""
    import json

    newer = tmp_path / "newer"
    shutil.copytree(bundle_dir, newer)
    manifest = json.loads((newer / "manifest.json").read_text())
    extra = json.loads(json.dumps(next(a for a in manifest["artifacts"] if a["role"] == "decoder")))
    extra.update(name="decoder.fp32.plan", format="tensorrt")     # its file does not exist: never opened
    extra["files"] = [dict(f, path=f["path"].replace(".onnx", ".plan")) for f in extra["files"]]
    manifest["artifacts"].append(extra)
    (newer / "manifest.json").write_text(json.dumps(manifest))
    proc = subprocess.run([str(example_app), str(newer), str(inputs["code_path"]), str(inputs["expressions_path"]),
                           str(tmp_path / "frames"), "--size", "32"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert ("1 artifact(s) of this bundle are of a kind this flexavatar" in proc.stderr and
            "left aside: decoder.fp32.plan (format 'tensorrt')" in proc.stderr), proc.stderr
    assert len(list((tmp_path / "frames").glob("frame_*.png"))) == len(inputs["expressions"])
    proc = subprocess.run([str(example_app), str(bundle_dir), str(inputs["code_path"]), str(inputs["expressions_path"]),
                           str(tmp_path / "plain"), "--size", "32"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "left aside" not in proc.stderr, proc.stderr


def test_example_encodes_a_photo_and_renders_it_like_the_python_runtime(example_app, bundle_dir, official_dir,
                                                                       python_runtime, tmp_path):
    """AVATAR as a photo .npy [S, S, 3] (+ --features): the example runs the bundle's encoder through the C API."""
    from PIL import Image

    from flexavatar.runtime import Camera

    fixture = np.load(official_dir / "inputs.npz")
    photo = fixture["images"][1][0].transpose(1, 2, 0).astype(np.float32)                  # [S, S, 3]
    features = fixture["features"][1][0].astype(np.float32)
    expressions = fixture["expression_codes"][1].astype(np.float32)                        # [2, 135]
    for name, array in (("photo", photo), ("features", features), ("expressions", expressions)):
        np.save(tmp_path / f"{name}.npy", array)
    out = tmp_path / "frames"
    proc = subprocess.run([str(example_app), str(bundle_dir), str(tmp_path / "photo.npy"),
                           str(tmp_path / "expressions.npy"), str(out), "--size", str(RENDER_SIZE), "--features",
                           str(tmp_path / "features.npy"), "--device", "cpu"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "cpu rasterizer" in proc.stdout
    # The photo's camera is the encoder input's default (the demo camera), as create_avatar's camera=None.
    avatar = python_runtime.create_avatar(photo, features=features)
    c2w, k = _default_camera()
    want = python_runtime.render(avatar, expressions, Camera(c2w, k), RENDER_SIZE, RENDER_SIZE, output="float")
    pngs = sorted(out.glob("frame_*.png"))
    assert len(pngs) == len(expressions)
    for png, frame in zip(pngs, want, strict=True):
        image = np.asarray(Image.open(png)).astype(int)                                    # [H, W, 4]
        expect = np.floor(np.clip(frame, 0, 1) * 255 + 0.5).astype(int)
        assert frame[..., 3].max() > 0.5
        assert np.abs(image - expect).max() <= 1
    # Without --features this bundle's encoder cannot run: the runtime's message reaches the user.
    proc = subprocess.run([str(example_app), str(bundle_dir), str(tmp_path / "photo.npy"),
                           str(tmp_path / "expressions.npy"), str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "without DINOv2" in proc.stderr and "C = 32" in proc.stderr


def _encode_with_example(example_app, bundle_dir, avatar: Path, features, expressions, work: Path) -> list[Path]:
    """The example on AVATAR (a photo file) with --features: the PNG frames it wrote."""
    np.save(work / "features.npy", features)
    np.save(work / "expressions.npy", expressions)
    proc = subprocess.run([str(example_app), str(bundle_dir), str(avatar), str(work / "expressions.npy"),
                           str(work / "frames"), "--size", str(RENDER_SIZE), "--features", str(work / "features.npy"),
                           "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    pngs = sorted((work / "frames").glob("frame_*.png"))
    assert len(pngs) == len(expressions)
    return pngs


def _assert_frames_within_one_level(pngs: list[Path], want: np.ndarray) -> None:
    from PIL import Image

    for png, frame in zip(pngs, want, strict=True):
        image = np.asarray(Image.open(png)).astype(int)
        assert np.abs(image - np.floor(np.clip(frame, 0, 1) * 255 + 0.5).astype(int)).max() <= 1, png.name


def test_example_encodes_a_png_photo_like_the_python_runtime(example_app, bundle_dir, official_dir, python_runtime,
                                                            tmp_path):
    """AVATAR as a .png (flexavatar_read_png): an RGBA photo with a transparent border, composited onto white by the
    library as the Python runtime's create_avatar(path) does through Pillow; the encoded code's frames agree."""
    from PIL import Image

    from flexavatar.runtime import Camera

    fixture = np.load(official_dir / "inputs.npz")
    photo = np.clip(fixture["images"][1][0].transpose(1, 2, 0), 0, 1)                     # [S, S, 3]
    size = photo.shape[0]
    rgba = np.concatenate([np.round(photo * 255), np.full((size, size, 1), 255.0)], axis=-1).astype(np.uint8)
    rgba[:, : size // 8, 3] = 0                                                            # a clear border ...
    rgba[:, size // 8: size // 4, 3] = 90                                                  # ... and a soft one
    Image.fromarray(rgba, "RGBA").save(tmp_path / "photo.png")
    features = fixture["features"][1][0].astype(np.float32)
    expressions = fixture["expression_codes"][1].astype(np.float32)
    pngs = _encode_with_example(example_app, bundle_dir, tmp_path / "photo.png", features, expressions, tmp_path)
    avatar = python_runtime.create_avatar(tmp_path / "photo.png", features=features)
    c2w, k = _default_camera()
    _assert_frames_within_one_level(pngs, python_runtime.render(avatar, expressions, Camera(c2w, k), RENDER_SIZE,
                                                                RENDER_SIZE, output="float"))
    # a photo of another size is refused by name, before anything is rendered
    Image.fromarray(rgba[:-2, :-2], "RGBA").save(tmp_path / "small.png")
    proc = subprocess.run([str(example_app), str(bundle_dir), str(tmp_path / "small.png"),
                           str(tmp_path / "expressions.npy"), str(tmp_path / "refused"), "--features",
                           str(tmp_path / "features.npy")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and f"a {size - 2}x{size - 2} photo; this bundle's encoder expects {size}x{size}" \
        in proc.stderr, proc.stderr


def test_example_encodes_an_in_the_wild_crop_with_its_camera_like_the_python_runtime(
        example_app, bundle_dir, official_dir, python_runtime, driving_dir, tmp_path):
    """AVATAR einstein.npz (an in-the-wild example: uint8 crop + the camera it was taken with, resized here to the
    bundle's size): flexavatar_read_photo + flexavatar_read_photo_camera give the Python runtime's
    create_avatar(path, camera=photo_camera(path)) frames, which differ from the demo camera's."""
    from PIL import Image

    from flexavatar.runtime import Camera, photo_camera

    fixture = np.load(official_dir / "inputs.npz")
    size = fixture["images"].shape[-1]
    with np.load(driving_dir / "einstein.npz") as crop:
        members = {name: crop[name] for name in crop.files}
    members["image"] = np.asarray(Image.fromarray(members["image"]).resize((size, size), Image.BILINEAR))
    path = tmp_path / "einstein.npz"
    np.savez_compressed(path, **members)
    features = fixture["features"][0][0].astype(np.float32)
    expressions = fixture["expression_codes"][0].astype(np.float32)
    pngs = _encode_with_example(example_app, bundle_dir, path, features, expressions, tmp_path)
    c2w, k = _default_camera()
    view = Camera(c2w, k)
    avatar = python_runtime.create_avatar(path, camera=photo_camera(path), features=features)
    want = python_runtime.render(avatar, expressions, view, RENDER_SIZE, RENDER_SIZE, output="float")
    frontal = python_runtime.render(python_runtime.create_avatar(path, features=features), expressions, view,
                                    RENDER_SIZE, RENDER_SIZE, output="float")
    _assert_frames_within_one_level(pngs, want)
    assert np.abs(want - frontal).max(axis=(1, 2, 3)).min() > 0.02     # the photo's camera does change the avatar


def test_example_reports_bad_input_with_exit_code(example_app, bundle_dir, inputs, tmp_path):
    proc = subprocess.run([str(example_app)], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage" in proc.stderr
    np.save(tmp_path / "short.npy", np.zeros((2, 100), np.float32))
    proc = subprocess.run([str(example_app), str(bundle_dir), str(inputs["code_path"]), str(tmp_path / "short.npy"),
                           str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 1 and "135" in proc.stderr
    proc = subprocess.run([str(example_app), str(bundle_dir), "-", str(inputs["expressions_path"]),
                           str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 1 and "no avatar code" in proc.stderr
    for device, code in (("cuda:x", 2), ("cuda:", 2), ("cuda:1", 1)):      # cuda:1 parses; no CUDA here
        proc = subprocess.run([str(example_app), str(bundle_dir), str(inputs["code_path"]),
                               str(inputs["expressions_path"]), str(tmp_path / "o"), "--device", device,
                               "--no-cuda-graphs"], capture_output=True, text=True)
        assert proc.returncode == code, (device, proc.stderr)
    assert "cuda" in proc.stderr.lower()
    proc = subprocess.run([str(example_app), str(bundle_dir), "-", "e.npy", "o", "--cuda-graphs"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown option '--cuda-graphs'" in proc.stderr


def test_example_gpu_and_npu_devices_fail_unavailable_without_their_provider(example_app, bundle_dir, inputs,
                                                                             tmp_path):
    """--device gpu / gpu:N / npu (FLEXAVATAR_DEVICE_GPU / NPU: ONNX Runtime's DirectML, MIGraphX, ... or QNN, ...
    providers). The onnxruntime library here has none of them, so the runtime refuses with FLEXAVATAR_ERROR_UNAVAILABLE,
    naming the providers it looked for and those the library has, and no frame is written. Only this path and the
    argument checks are tested: no machine of this project has such a provider (a run on one is untested)."""
    from flexavatar.runtime.engines import ort_host_provider

    for device, kind, looked_for in (("gpu", "GPU", "DmlExecutionProvider"), ("gpu:1", "GPU", "DmlExecutionProvider"),
                                     ("npu", "NPU", "QNNExecutionProvider")):
        if ort_host_provider(kind.lower()) is not None:
            pytest.skip(f"this onnxruntime has a {kind} provider: the unavailable path cannot be tested here")
        out = tmp_path / device.replace(":", "_")
        proc = subprocess.run([str(example_app), str(bundle_dir), str(inputs["code_path"]),
                               str(inputs["expressions_path"]), str(out), "--device", device],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1, (device, proc.stdout, proc.stderr)
        assert f"error: unavailable: device {kind}: this ONNX Runtime build" in proc.stderr, proc.stderr
        # a CUDA build of onnxruntime is told to use device CUDA instead of listing the providers
        assert (f"looked for {looked_for}" in proc.stderr and "CPUExecutionProvider" in proc.stderr) or \
            (kind == "GPU" and "use device CUDA" in proc.stderr), proc.stderr
        assert not list(out.glob("*.png")), device
    proc = subprocess.run([str(example_app), str(bundle_dir), "-", "e.npy", "o", "--device", "npu:1"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--device: expected auto, cpu, cuda, cuda:N, gpu, gpu:N or npu" in proc.stderr


def test_gpu_and_npu_providers_are_the_python_runtimes(release_build):
    """The C++ runtime's GPU / NPU execution providers, their order and the options each gets for device indices 0
    and 1 (or its refusal of index 1) are the Python runtime's (engines.ORT_HOST_PROVIDERS via ort_host_provider)."""
    import onnxruntime as ort

    from flexavatar.runtime import engines

    proc = subprocess.run([str(release_build / "tests/host_providers")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    want = []
    for device in engines.HOST_ACCELERATORS:
        for name, _ in engines.ORT_HOST_PROVIDERS[device]:
            for index in (0, 1):
                with pytest.MonkeyPatch.context() as mp:
                    mp.setattr(ort, "get_available_providers", lambda n=name: [n, "CPUExecutionProvider"])
                    try:
                        _, options = engines.ort_host_provider(device, index)
                        got = ";".join(f"{k}={v}" for k, v in options.items())
                    except RuntimeArgumentError:
                        got = "refused"
                want.append(f"{device} {index} {name} {got}")
    assert proc.stdout.splitlines() == want


# ---- abuse: corrupt files, wrong shapes, bad handles (plain and ASan/LSan builds) ----------------------

def _run_abuse(build: Path, bundle_dir: Path, scratch: Path, env: dict | None = None) -> str:
    proc = subprocess.run([str(build / "tests/runtime_abuse"), str(bundle_dir), str(scratch)], capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    summary = re.search(r"^(\d+) passed, (\d+) failed$", proc.stdout, re.M)
    assert summary and int(summary[1]) >= 9 and summary[2] == "0", proc.stdout
    return proc.stdout + proc.stderr


def test_abuse_of_loader_and_c_api_returns_errors(release_build, bundle_dir, tmp_path):
    output = _run_abuse(release_build, bundle_dir, tmp_path)
    # These builds have no CUDA library (run_ctest.sh: FLEXAVATAR_CUDA=OFF): an explicit CUDA request must
    # fail with FLEXAVATAR_ERROR_UNAVAILABLE and say why (the abuse program prints the message).
    assert "rasterizer CUDA: unavailable: rasterizer CUDA was requested but the CUDA rasterizer cannot run: " \
           "the CUDA rasterizer library (libflexavatar_cuda.so) was not found" in output, output[-3000:]
    assert "device CUDA: unavailable: " in output and "pass rasterizer CPU" in output


def test_abuse_under_address_and_leak_sanitizer(cpp_build, bundle_dir, tmp_path):
    asan_build = cpp_build("asan")
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:abort_on_error=0",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    output = _run_abuse(asan_build, bundle_dir, tmp_path, env)
    assert "ERROR: AddressSanitizer" not in output and "ERROR: LeakSanitizer" not in output
