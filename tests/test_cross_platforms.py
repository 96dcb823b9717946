"""The C++ runtime cross-built for other platforms and run under an emulator on an exported bundle, with each
platform's own ONNX Runtime library: aarch64 Linux (ARM edge devices: Jetson, Raspberry Pi, Graviton; ONNX
Runtime's NEON kernels) under qemu-user, and 64-bit Windows (MinGW-w64 against ONNX Runtime's MSVC-built DLL) under
Wine. Oracles: the numbers PyTorch gave at export time (the bundle's check set) and the frames of this host's
Python runtime.

``cpp/tests/cross/run_cross.sh TARGET --build-only`` builds into ``build/cross-TARGET`` (its ctest run, in
``.ci/run``, covers the unit tests there); ``cpp/tests/cross/qemu_aarch64.sh`` / ``wine_run.sh`` run the programs.
Without a target's toolchain or emulator (Debian: g++-aarch64-linux-gnu qemu-user; g++-mingw-w64-x86-64-posix
wine64) its tests skip with that reason; CI installs them and sets FLEXAVATAR_REQUIRE_CROSS=1, which turns a skip
into a failure.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flexavatar.bundle import GAUSSIAN_OUTPUTS, PSNR_TARGET_DB, Bundle

REPO = Path(__file__).resolve().parents[1]
BUILD_ROOT = Path(os.environ.get("FLEXAVATAR_CTEST_BUILD_ROOT", REPO / "build"))
FP32_TOLERANCE = 1e-4          # the exporter's fp32 parity tolerance (export/parity.py)
RENDER_SIZE = 64
MISSING_TOOLS = 3              # run_cross.sh's exit code when the toolchain or the emulator is missing
# target → (emulator script, program suffix, the programs' binary format: ELF e_machine or PE machine)
TARGETS = {"aarch64": ("qemu_aarch64.sh", "", ("ELF", 183)), "windows": ("wine_run.sh", ".exe", ("PE", 0x8664))}


def _unavailable(reason: str):
    if os.environ.get("FLEXAVATAR_REQUIRE_CROSS") == "1":
        pytest.fail(f"FLEXAVATAR_REQUIRE_CROSS=1 but {reason}")
    pytest.skip(reason)


class CrossBuild:
    """A cross build's test programs and how to run them (the emulator and its environment)."""

    def __init__(self, target: str):
        self.target = target
        emulator, self.suffix, self.format = TARGETS[target]
        self.emulator = REPO / "cpp/tests/cross" / emulator
        self.work = BUILD_ROOT / f"cross-{target}"
        self.env = dict(os.environ)
        for line in (self.work / "emulator.env").read_text().splitlines():
            key, _, value = line.partition("=")
            self.env[key] = value

    def program(self, name: str) -> Path:
        return self.work / "build/tests" / f"{name}{self.suffix}"

    @functools.cached_property
    def example(self) -> Path:
        """The example application, (re)built against the installed package (ctest install_example) on first use."""
        built = subprocess.run(["ctest", "--test-dir", str(self.work / "build"), "-R", "install_example",
                                "--output-on-failure"], env=self.env, capture_output=True, text=True, timeout=900)
        assert built.returncode == 0, built.stdout[-4000:]
        return self.work / f"build/tests/install_example/build/flexavatar_render{self.suffix}"

    def run(self, name: str, *args, timeout: int = 900) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.emulator), str(self.program(name)), *map(str, args)], env=self.env,
                              capture_output=True, text=True, timeout=timeout)


@functools.cache
def _cross_build(target: str) -> CrossBuild:
    """run_cross.sh TARGET --build-only, once a session; unavailable (skip, or fail under FLEXAVATAR_REQUIRE_CROSS)
    without the target's tools or where its emulator cannot run."""
    if platform.machine() != "x86_64":
        _unavailable(f"the cross builds run on x86-64 hosts (this is {platform.machine()})")
    proc = subprocess.run(["bash", str(REPO / "cpp/tests/cross/run_cross.sh"), target, "--build-only"], cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode == MISSING_TOOLS:
        _unavailable(proc.stderr.strip())
    assert proc.returncode == 0, f"the {target} cross build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    build = CrossBuild(target)
    probe = build.run("test_errors", timeout=300)
    if probe.returncode != 0 and "passed" not in probe.stdout:   # e.g. no mount namespace for qemu here
        _unavailable(f"{build.emulator.name} cannot run {target} programs here: {probe.stderr.strip()[-500:]}")
    return build


@pytest.fixture(scope="module", params=sorted(TARGETS))
def cross_build(request) -> CrossBuild:
    return _cross_build(request.param)


@pytest.fixture(scope="module")
def windows_build() -> CrossBuild:
    return _cross_build("windows")


def _binary_format(path: Path) -> tuple[str, int]:
    """("ELF", e_machine) or ("PE", machine) of an executable (183: AArch64; 0x8664: x86-64 Windows)."""
    data = path.read_bytes()[:4096]
    if data[:4] == b"\x7fELF":
        return "ELF", int.from_bytes(data[18:20], "little")
    if data[:2] == b"MZ":
        pe = int.from_bytes(data[0x3C:0x40], "little")
        assert data[pe:pe + 4] == b"PE\0\0"
        return "PE", int.from_bytes(data[pe + 4:pe + 6], "little")
    raise AssertionError(f"{path}: neither ELF nor PE")


def test_cross_runtime_passes_the_bundles_numerics_check(cross_build, onnx_features_bundle):
    """flexavatar_runtime_check_numerics on the target: the bundle's check set (PyTorch's outputs at export) through
    the target's ONNX Runtime and the C++ CPU rasterizer, within the exporter's fp32 tolerances; the same
    worst-frame PSNR class as this host's Python runtime."""
    from flexavatar.runtime import Runtime

    assert _binary_format(cross_build.program("runtime_check")) == cross_build.format   # really the target's
    proc = cross_build.run("runtime_check", onnx_features_bundle)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["passed"] is True and got["target_db"] == PSNR_TARGET_DB["fp32"]
    assert got["num_expressions"] == len(Bundle.open(onnx_features_bundle).check_set().expressions)
    for name in GAUSSIAN_OUTPUTS:
        assert 0 <= got["max_abs_error"][name] <= FP32_TOLERANCE, (name, got["max_abs_error"])
    assert got["encoder_checked"] is True and got["code_max_abs_error"] <= FP32_TOLERANCE
    assert got["psnr_db"] >= PSNR_TARGET_DB["fp32"] and got["encoder_psnr_db"] >= PSNR_TARGET_DB["fp32"]
    host = {c.name: c for c in Runtime(onnx_features_bundle, backend="onnxruntime", device="cpu",
                                       rasterizer="cpu").check_numerics().checks}["decoder"]
    # both far above the target: the two architectures' float32 kernels differ by rounding only
    assert abs(got["psnr_db"] - host.psnr_db) < 20, (got["psnr_db"], host.psnr_db)


@pytest.fixture(scope="module")
def avatar(onnx_features_bundle, official_dir, tmp_path_factory) -> dict:
    """A real avatar code (the bundle's encoder on the fixture's photo; saved as the official (R², 1, D) .npy), two
    tracked-style expressions, and the host's Python runtime (ONNX Runtime, Linux x86-64, CPU rasterizer)."""
    import onnxruntime as ort

    from flexavatar.runtime import Runtime

    bundle = Bundle.open(onnx_features_bundle)
    fixture = np.load(official_dir / "inputs.npz")
    feeds = {"image": fixture["images"][0], "cam2world": fixture["cam2world"][0],
             "intrinsics": fixture["intrinsics"][0], "features": fixture["features"][0]}
    session = ort.InferenceSession(str(bundle.path(bundle.artifact("encoder_features"))),
                                   providers=["CPUExecutionProvider"])
    code = session.run(None, {k: v.astype(np.float32) for k, v in feeds.items()})[0]          # [1, R², D]
    work = tmp_path_factory.mktemp("cross_avatar")
    np.save(work / "code.npy", code.transpose(1, 0, 2))                                       # (R², 1, D)
    return {"code": code, "code_path": work / "code.npy",
            "expressions": fixture["expression_codes"][0][:2].astype("<f4"),                  # [2, 135]
            "host": Runtime(onnx_features_bundle, backend="onnxruntime", device="cpu", rasterizer="cpu")}


def _demo_camera():
    """flexavatar.cameras.default_camera: the C++ runtime's default for a bundle without its own avatar."""
    from flexavatar.runtime import Camera

    c2w = np.array([[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 1], [0, 0, 0, 1]], np.float32)
    k = np.array([[1500 / 512, 0, 0.5], [0, 1500 / 512, 0.5], [0, 0, 1]], np.float32)
    return Camera(c2w, k)


def test_cross_runtime_frames_equal_the_host_python_runtime(cross_build, onnx_features_bundle, avatar, tmp_path):
    """runtime_dump on the target: its Gaussians within the fp32 tolerance of this host's Python runtime, its
    frames within the runtime parity tolerances (≤ 1e-3 mean, ≤ 2/255 max)."""
    from flexavatar.runtime import Avatar

    expressions, camera = avatar["expressions"], _demo_camera()
    expressions.tofile(tmp_path / "expressions.f32")
    np.concatenate([camera.cam2world.ravel(), camera.intrinsics.ravel(), [RENDER_SIZE, RENDER_SIZE],
                    [1, 1, 1]]).astype("<f4").tofile(tmp_path / "camera.f32")
    out = tmp_path / "out"
    out.mkdir()
    proc = cross_build.run("runtime_dump", onnx_features_bundle, avatar["code_path"], tmp_path / "expressions.f32",
                           tmp_path / "camera.f32", out)
    assert proc.returncode == 0, proc.stderr

    host = avatar["host"]
    want = host.decode(Avatar(avatar["code"]), expressions)
    frames = host.render(Avatar(avatar["code"]), expressions, camera, RENDER_SIZE, RENDER_SIZE, output="float")
    g = Bundle.open(onnx_features_bundle).manifest.conventions.n_gaussians
    widths = {"means": 3, "quats": 4, "scales": 3, "opacities": 1, "sh0": 3}
    for e in range(len(expressions)):
        flat = np.fromfile(out / f"gaussians_{e}.f32", dtype="<f4")
        assert flat.size == g * sum(widths.values())
        start = 0
        for name, width in widths.items():
            got = flat[start:start + g * width].reshape(g, width)
            start += g * width
            expect = np.asarray(getattr(want, name))[e].reshape(g, width)
            np.testing.assert_allclose(got, expect, atol=FP32_TOLERANCE, rtol=0, err_msg=f"frame {e} {name}")
        image = np.fromfile(out / f"frame_{e}.f32", dtype="<f4")[:3 * RENDER_SIZE ** 2]
        diff = np.abs(image.reshape(RENDER_SIZE, RENDER_SIZE, 3) - frames[e, ..., :3])
        assert diff.mean() <= 1e-3 and diff.max() <= 2 / 255, (e, diff.mean(), diff.max())
        assert frames[e, ..., 3].max() > 0.5                                  # the head is in view


def test_cross_example_streams_frames_through_stdin_and_stdout(cross_build, onnx_features_bundle, avatar):
    """The example application, built against the installed package on the target (ctest install_example), in its
    live mode: expression records on standard input, raw rgb24 frames on standard output. The records hold the bytes
    CR, LF and ^Z, which a text-mode stream (Windows' default) would translate or stop at; the frames equal the
    host's Python runtime within the runtime parity tolerances."""
    from flexavatar.runtime import Avatar

    example = cross_build.example
    expressions = avatar["expressions"].copy()
    expressions[0, 5] = np.frombuffer(b"\r\n\x1a\n", "<f4")[0]         # a tiny value, ~7e-33
    proc = subprocess.run([str(cross_build.emulator), str(example), str(onnx_features_bundle), str(avatar["code_path"]),
                           "-", "-", "--size", str(RENDER_SIZE)], input=expressions.tobytes(), env=cross_build.env,
                          capture_output=True, timeout=900)
    report = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, report
    assert f"2 frames {RENDER_SIZE}x{RENDER_SIZE} -> standard output (rgb24)" in report, report
    assert len(proc.stdout) == 2 * RENDER_SIZE * RENDER_SIZE * 3, len(proc.stdout)
    got = np.frombuffer(proc.stdout, np.uint8).reshape(2, RENDER_SIZE, RENDER_SIZE, 3).astype(np.float64) / 255
    want = avatar["host"].render(Avatar(avatar["code"]), expressions, _demo_camera(), RENDER_SIZE, RENDER_SIZE,
                                 output="float")[..., :3]
    diff = np.abs(got - want)
    assert diff.mean() <= 1e-3 and diff.max() <= 2 / 255 + 0.5 / 255, (diff.mean(), diff.max())
    # --latest: the reader thread on the target; its last frame is the last code's
    latest = subprocess.run([str(cross_build.emulator), str(example), str(onnx_features_bundle),
                             str(avatar["code_path"]), "-", "-", "--size", str(RENDER_SIZE), "--latest"],
                            input=expressions.tobytes(), env=cross_build.env, capture_output=True, timeout=900)
    assert latest.returncode == 0, latest.stderr.decode(errors="replace")
    assert 0 < len(latest.stdout) <= len(proc.stdout) and latest.stdout.endswith(proc.stdout[-RENDER_SIZE ** 2 * 3:])
    assert b"--latest: rendered the newest of 2 streamed codes each time" in latest.stderr


def test_cross_example_takes_non_ascii_paths(cross_build, onnx_features_bundle, avatar, tmp_path):
    """A bundle, an avatar code, expressions and an output folder under non-ASCII names (bündel_头像): the example
    renders their frames. On Windows that takes the arguments as UTF-16 (main's argv is in the ANSI code page, which
    has no 头) and every file opened by its UTF-16 name, down to ONNX Runtime's model path. The expressions are a
    tracked sequence's .npz (np.savez_compressed): the target's build inflates it."""
    import shutil

    from PIL import Image

    from flexavatar.runtime import Avatar

    folder = tmp_path / "b\u00fcndel_\u5934\u50cf"
    bundle = folder / "bundle"
    shutil.copytree(onnx_features_bundle, bundle)
    shutil.copy(avatar["code_path"], folder / "c\u00f6de.npy")
    np.savez_compressed(folder / "\u8868\u60c5.npz", expression_codes=avatar["expressions"],
                        frame_ids=np.arange(len(avatar["expressions"]), dtype=np.int32))
    out = folder / "fr\u00e4mes"
    proc = subprocess.run([str(cross_build.emulator), str(cross_build.example), str(bundle),
                           str(folder / "c\u00f6de.npy"), str(folder / "\u8868\u60c5.npz"), str(out), "--size",
                           str(RENDER_SIZE)], env=cross_build.env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pngs = sorted(out.glob("frame_*.png"))
    assert [p.name for p in pngs] == ["frame_00000.png", "frame_00001.png"]
    want = avatar["host"].render(Avatar(avatar["code"]), avatar["expressions"], _demo_camera(), RENDER_SIZE,
                                 RENDER_SIZE, output="float")[..., :3]
    for png, frame in zip(pngs, want, strict=True):
        diff = np.abs(np.asarray(Image.open(png), np.float64)[..., :3] / 255 - frame)
        assert diff.mean() <= 1e-3 and diff.max() <= 2 / 255 + 0.5 / 255, (png.name, diff.mean(), diff.max())


def test_cross_example_encodes_a_png_photo_like_the_host(cross_build, onnx_features_bundle, official_dir, avatar,
                                                        tmp_path):
    """AVATAR photo.png on the target: its build decodes the PNG (RGBA with a soft transparent border, composited
    onto white; the interlaced form is in the target's ctest units), runs the bundle's encoder and renders; the
    frames are the host Python runtime's create_avatar(path) frames within the parity tolerances."""
    from PIL import Image

    fixture = np.load(official_dir / "inputs.npz")
    photo = np.clip(fixture["images"][0][0].transpose(1, 2, 0), 0, 1)
    size = photo.shape[0]
    rgba = np.concatenate([np.round(photo * 255), np.full((size, size, 1), 255.0)], axis=-1).astype(np.uint8)
    rgba[:, : size // 6, 3] = 100
    Image.fromarray(rgba, "RGBA").save(tmp_path / "photo.png")
    features = fixture["features"][0][0].astype(np.float32)
    np.save(tmp_path / "features.npy", features)
    np.save(tmp_path / "expressions.npy", avatar["expressions"])
    out = tmp_path / "frames"
    proc = subprocess.run([str(cross_build.emulator), str(cross_build.example), str(onnx_features_bundle),
                           str(tmp_path / "photo.png"), str(tmp_path / "expressions.npy"), str(out), "--size",
                           str(RENDER_SIZE), "--features", str(tmp_path / "features.npy")], env=cross_build.env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    host = avatar["host"]
    want = host.render(host.create_avatar(tmp_path / "photo.png", features=features), avatar["expressions"],
                       _demo_camera(), RENDER_SIZE, RENDER_SIZE, output="float")[..., :3]
    pngs = sorted(out.glob("frame_*.png"))
    assert len(pngs) == len(want)
    for png, frame in zip(pngs, want, strict=True):
        diff = np.abs(np.asarray(Image.open(png), np.float64)[..., :3] / 255 - frame)
        assert diff.mean() <= 1e-3 and diff.max() <= 2 / 255 + 0.5 / 255, (png.name, diff.mean(), diff.max())


def test_windows_gpu_device_takes_directml_from_a_directml_build(windows_build, onnx_features_bundle, avatar,
                                                                tmp_path):
    """--device gpu on Windows with ONNX Runtime's DirectML build (the onnxruntime-directml wheel's DLLs beside the
    example): the runtime picks DmlExecutionProvider from that build's providers and adds it through ONNX Runtime's
    generic entry point, whose DirectML factory runs; Wine here has no DXGI adapter, so the answer is the typed
    'unavailable' error naming the provider and ONNX Runtime's reason (exit 1), never a session quietly on the CPU."""
    import shutil
    import zipfile

    wheels = windows_build.work / "onnxruntime-directml"
    if not list(wheels.glob("onnxruntime_directml-*.whl")):
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                               "--dest", str(wheels), "--platform", "win_amd64", "--python-version",
                               f"{sys.version_info[0]}{sys.version_info[1]}", "onnxruntime-directml>=1.23"],
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            _unavailable(f"cannot download the onnxruntime-directml wheel: {proc.stderr.strip()[-500:]}")
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(windows_build.example, app)
    shutil.copy(windows_build.work / "build/flexavatar_runtime.dll", app)
    with zipfile.ZipFile(next(wheels.glob("onnxruntime_directml-*.whl"))) as wheel:
        for member in wheel.namelist():
            if member.startswith("onnxruntime/capi/") and member.endswith(".dll"):   # DirectML.dll, onnxruntime.dll
                (app / Path(member).name).write_bytes(wheel.read(member))
    assert (app / "DirectML.dll").exists()
    np.save(tmp_path / "expressions.npy", avatar["expressions"])
    env = dict(windows_build.env, FLEXAVATAR_WINE_DLL_DIRS="")      # only the app's own DLLs: the DirectML build
    proc = subprocess.run([str(windows_build.emulator), str(app / "flexavatar_render.exe"), str(onnx_features_bundle),
                           str(avatar["code_path"]), str(tmp_path / "expressions.npy"), str(tmp_path / "frames"),
                           "--device", "gpu", "--size", "32"], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "error: unavailable: ONNX Runtime could not add DmlExecutionProvider" in proc.stderr, proc.stderr
    assert not list((tmp_path / "frames").glob("frame_*.png"))
