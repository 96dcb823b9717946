"""The C++ runtime cross-built for aarch64 Linux (ARM edge devices: Jetson, Raspberry Pi, Graviton) and run under
qemu-user on an exported bundle, with ONNX Runtime's own aarch64 library (its NEON kernels, not this host's x86
ones): the numbers PyTorch gave at export time and the frames of this host's Python runtime.

``cpp/tests/cross/run_aarch64.sh --build-only`` builds into ``build/cross-aarch64`` (its ctest run, in ``.ci/run``,
covers the unit tests); ``cpp/tests/cross/qemu_aarch64.sh`` runs the programs. Without the cross toolchain or
qemu-user (Debian: g++-aarch64-linux-gnu qemu-user) the tests skip with that reason; CI installs both and sets
FLEXAVATAR_REQUIRE_CROSS=1, which turns the skip into a failure.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import numpy as np
import pytest

from flexavatar.bundle import GAUSSIAN_OUTPUTS, PSNR_TARGET_DB, Bundle

REPO = Path(__file__).resolve().parents[1]
BUILD_ROOT = Path(os.environ.get("FLEXAVATAR_CTEST_BUILD_ROOT", REPO / "build"))
QEMU = REPO / "cpp/tests/cross/qemu_aarch64.sh"
FP32_TOLERANCE = 1e-4          # the exporter's fp32 parity tolerance (export/parity.py)
RENDER_SIZE = 64
MISSING_TOOLS = 3              # run_aarch64.sh's exit code when the toolchain or qemu-user is missing


def _unavailable(reason: str):
    if os.environ.get("FLEXAVATAR_REQUIRE_CROSS") == "1":
        pytest.fail(f"FLEXAVATAR_REQUIRE_CROSS=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def aarch64_build() -> Path:
    if platform.machine() != "x86_64":
        _unavailable(f"the cross build runs on x86-64 hosts (this is {platform.machine()})")
    proc = subprocess.run(["bash", str(REPO / "cpp/tests/cross/run_aarch64.sh"), "--build-only"], cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode == MISSING_TOOLS:
        _unavailable(proc.stderr.strip())
    assert proc.returncode == 0, f"the aarch64 cross build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    build = BUILD_ROOT / "cross-aarch64/build"
    probe = subprocess.run([str(QEMU), str(build / "tests/test_errors")], capture_output=True, text=True,
                           timeout=300)
    if probe.returncode != 0 and "passed" not in probe.stdout:   # e.g. no mount namespace without root
        _unavailable(f"qemu_aarch64.sh cannot run aarch64 programs here: {probe.stderr.strip()[-500:]}")
    return build


def _elf_machine(path: Path) -> int:
    """e_machine of an ELF file (183: AArch64, 62: x86-64)."""
    return int.from_bytes(path.read_bytes()[18:20], "little")


def test_aarch64_runtime_passes_the_bundles_numerics_check(aarch64_build, onnx_features_bundle):
    """flexavatar_runtime_check_numerics on aarch64: the bundle's check set (PyTorch's outputs at export) through
    ONNX Runtime's aarch64 kernels and the C++ CPU rasterizer, within the exporter's fp32 tolerances; the same
    worst-frame PSNR class as this host's Python runtime."""
    from flexavatar.runtime import Runtime

    tool = aarch64_build / "tests/runtime_check"
    assert _elf_machine(tool) == 183                                  # really an aarch64 program
    proc = subprocess.run([str(QEMU), str(tool), str(onnx_features_bundle)], capture_output=True, text=True,
                          timeout=900)
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


def test_aarch64_runtime_frames_equal_the_host_python_runtime(aarch64_build, onnx_features_bundle, official_dir,
                                                              tmp_path):
    """runtime_dump on aarch64 (a real avatar code from the bundle's encoder, two tracked-style expressions): its
    Gaussians within the fp32 tolerance of this host's Python runtime (ONNX Runtime x86), its frames within the
    runtime parity tolerances (≤ 1e-3 mean, ≤ 2/255 max)."""
    import onnxruntime as ort

    from flexavatar.runtime import Avatar, Camera, Runtime

    bundle = Bundle.open(onnx_features_bundle)
    fixture = np.load(official_dir / "inputs.npz")
    feeds = {"image": fixture["images"][0], "cam2world": fixture["cam2world"][0],
             "intrinsics": fixture["intrinsics"][0], "features": fixture["features"][0]}
    session = ort.InferenceSession(str(bundle.path(bundle.artifact("encoder_features"))),
                                   providers=["CPUExecutionProvider"])
    code = session.run(None, {k: v.astype(np.float32) for k, v in feeds.items()})[0]          # [1, R², D]
    np.save(tmp_path / "code.npy", code.transpose(1, 0, 2))                                   # (R², 1, D)
    expressions = fixture["expression_codes"][0][:2].astype("<f4")                            # [2, 135]
    expressions.tofile(tmp_path / "expressions.f32")
    c2w = np.array([[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 1], [0, 0, 0, 1]], np.float32)   # the demo camera
    k = np.array([[1500 / 512, 0, 0.5], [0, 1500 / 512, 0.5], [0, 0, 1]], np.float32)
    np.concatenate([c2w.ravel(), k.ravel(), [RENDER_SIZE, RENDER_SIZE], [1, 1, 1]]).astype("<f4").tofile(
        tmp_path / "camera.f32")
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([str(QEMU), str(aarch64_build / "tests/runtime_dump"), str(onnx_features_bundle),
                           str(tmp_path / "code.npy"), str(tmp_path / "expressions.f32"), str(tmp_path / "camera.f32"),
                           str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr

    host = Runtime(onnx_features_bundle, backend="onnxruntime", device="cpu", rasterizer="cpu")
    want = host.decode(Avatar(code), expressions)
    frames = host.render(Avatar(code), expressions, Camera(c2w, k), RENDER_SIZE, RENDER_SIZE, output="float")
    g = bundle.manifest.conventions.n_gaussians
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
