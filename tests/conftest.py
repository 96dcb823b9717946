"""Shared test fixtures: paths to the read-only official fixtures beside the repo (../shared)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flexavatar.dev_fixtures import fixtures_dir

REPO = Path(__file__).resolve().parents[1]
SHARED = fixtures_dir()
OFFICIAL = SHARED / "official_flex"
DRIVING = SHARED / "driving"
BUILD_ROOT = Path(os.environ.get("FLEXAVATAR_CTEST_BUILD_ROOT", REPO / "build"))


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="run tests marked slow (FLEX-1 size); or set FLEXAVATAR_SLOW=1")


def _slow_enabled(config) -> bool:
    return config.getoption("--runslow") or os.environ.get("FLEXAVATAR_SLOW", "") not in ("", "0")


def pytest_collection_modifyitems(config, items):
    if not _slow_enabled(config):
        skip_slow = pytest.mark.skip(reason="slow (FLEX-1 size): run with --runslow or FLEXAVATAR_SLOW=1")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip_slow)
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def official_dir() -> Path:
    if not OFFICIAL.is_dir():
        pytest.fail(f"official fixtures not found at {OFFICIAL}: the repo expects ../shared beside it")
    return OFFICIAL


@pytest.fixture(scope="session")
def driving_dir() -> Path:
    if not DRIVING.is_dir():
        pytest.fail(f"driving fixtures not found at {DRIVING}")
    return DRIVING


@pytest.fixture(scope="session")
def onnx_features_bundle(tmp_path_factory, official_dir) -> Path:
    """The fixture checkpoint exported once per session as fp32 ONNX, features encoder (no DINOv2 weights),
    no avatar: shared by the runtime and C++ runtime tests. Read-only: copy it before tampering."""
    import warnings

    from flexavatar.config import FlexConfig
    from flexavatar.export import export_bundle

    out = tmp_path_factory.mktemp("onnx_features") / "bundle"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # official config fields without effect on inference
        config = FlexConfig.from_official_json(official_dir / "config.json")
        export_bundle(official_dir / "state_dict.safetensors", out, template=official_dir / "gghead_template.obj",
                      config=config, precisions=("fp32",), targets=("onnx",), progress=None)
    return out


@pytest.fixture(scope="session")
def fp16_int8_bundle(tmp_path_factory, official_dir) -> Path:
    """The fixture checkpoint with a small random DINOv2 (seed 3, the runtime and int8 tests' model), exported once
    per session as ONNX in precisions fp16 + int8, no avatar: fp16 and fp32 encoders, fp16 and int8 decoders.
    Read-only."""
    from flexavatar.export import export_bundle
    from flexavatar.export.testing import FIXTURE_DINO, fixture_config, random_dinov2

    out = tmp_path_factory.mktemp("fp16_int8") / "bundle"
    export_bundle(official_dir / "state_dict.safetensors", out, template=official_dir / "gghead_template.obj",
                  config=fixture_config(official_dir), dinov2=random_dinov2(FIXTURE_DINO, seed=3),
                  precisions=("fp16", "int8"), targets=("onnx",), progress=None)
    return out


@pytest.fixture(scope="session")
def cpp_build():
    """Builds the C++ test programs and runtime of a ``cpp/tests/run_ctest.sh`` suite ("release", "asan") once per
    session, into ``build/ctest-SUITE`` (the folders the later ctest run in ``.ci/run`` reuses); returns that folder."""
    built: dict[str, Path] = {}

    def build(suite: str) -> Path:
        if suite not in built:
            env = dict(os.environ, FLEXAVATAR_RUNTIME="ON")
            proc = subprocess.run(["bash", str(REPO / "cpp/tests/run_ctest.sh"), "--build-only", suite], cwd=REPO,
                                  env=env, capture_output=True, text=True)
            assert proc.returncode == 0, (f"building the C++ runtime ({suite}) failed:\n{proc.stdout[-4000:]}\n"
                                          f"{proc.stderr[-4000:]}")
            built[suite] = BUILD_ROOT / f"ctest-{suite}"
        return built[suite]

    return build


@pytest.fixture(scope="session")
def device_script():
    """name → benchmarks/device/<name>.py loaded as a module (the GPU session's scripts are not a package)."""
    loaded = {}

    def load(name: str):
        if name not in loaded:
            spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / "device" / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module        # as an import would: dataclasses look their module up there
            spec.loader.exec_module(module)
            loaded[name] = module
        return loaded[name]
    return load
