"""benchmarks/device/host_probe.py, the GPU session's breakdown of the Python runtime's host time a frame: its timers
against known work, and a whole run on the CPU (ONNX Runtime + the C++ rasterizer on the fixture bundle)."""
from __future__ import annotations

import gc
import json
import time

import pytest


@pytest.fixture(scope="module")
def tool(device_script):
    return device_script("host_probe")


def _work(n: int) -> int:
    total = 0
    time.sleep(0.02)
    for i in range(n):
        total += i
    return total


def test_line_timer_puts_a_wait_on_its_line(tool):
    timer = tool.LineTimer(_work)
    with timer.tracing():
        assert _work(10) == 45 and _work(10) == 45
        _ = [i for i in range(5)]                     # untraced code: not counted
    rows = {row["source"]: row for row in timer.per_frame(2)}
    assert timer.calls == 2
    assert rows["time.sleep(0.02)"]["ms_per_frame"] >= 19.0
    assert rows["time.sleep(0.02)"]["hits_per_frame"] == 1
    assert rows["total += i"]["hits_per_frame"] == 10
    assert max(rows.values(), key=lambda r: r["ms_per_frame"])["source"] == "time.sleep(0.02)"


def test_gc_timer_counts_collections_by_generation(tool):
    timer = tool.GcTimer()
    with timer.active():
        gc.collect()
        gc.collect(0)
    report = timer.per_frame(1)
    assert report["gen2"]["collections_per_frame"] == 1 and report["gen0"]["collections_per_frame"] == 1
    assert report["gen2"]["ms_per_frame"] > 0
    assert timer._callback not in gc.callbacks


def test_probe_runs_on_the_cpu_and_leaves_the_runtime_as_it_was(tool, onnx_features_bundle, tmp_path):
    from flexavatar.kernels import registry
    from flexavatar.runtime.runtime import Runtime
    plan, cpu_backend = Runtime._plan, registry.get_backend("cpu")
    out = tmp_path / "probe.json"
    assert tool.main([str(onnx_features_bundle), "--device", "cpu", "--precision", "fp32", "--frames", "3",
                      "--size", "48", "--json", str(out)]) == 0
    assert Runtime._plan is plan and registry.get_backend("cpu") is cpu_backend      # timers taken off
    report = json.loads(out.read_text())
    assert report["frames"] == 3 and report["frame"]["wall_ms_p50"] > 0
    stages = {k: v["ms_per_frame"] for k, v in report["stages"].items()}
    # inclusive timers of nested calls: the inner one never exceeds the outer one
    assert stages["backend cpu (render_cpu)"] <= stages["kernels.rasterize"] <= stages["runtime.Runtime._rasterize"]
    assert stages["runtime.Runtime._rasterize"] <= stages["runtime.Runtime._frames_of"]
    assert report["stages"]["runtime.Runtime._decode_chunk"]["calls_per_frame"] == 1
    assert "gpu.to_cuda" not in report["stages"]                    # CPU frames upload nothing
    lines = report["lines"]
    assert lines["function"].endswith("render_cpu") and lines["calls_per_frame"] == 1
    heaviest = max(lines["rows"], key=lambda r: r["ms_per_frame"])
    assert "native.rasterize_cpu(" in heaviest["source"]               # the C++ rasterizer does the work


def test_probe_with_compiled_frames_times_the_compiled_calls(tool, onnx_features_bundle, tmp_path, monkeypatch):
    """--compiled-frames on the CPU ("aot_eager"): the frames go through the compiled rasterizer, which the stage
    timers see, and the rasterizer backend's Python entry is not called."""
    from flexavatar.runtime import engines
    monkeypatch.setattr(engines, "TORCH_COMPILE_BACKEND", "aot_eager")
    out = tmp_path / "probe.json"
    assert tool.main([str(onnx_features_bundle), "--device", "cpu", "--precision", "fp32", "--frames", "2",
                      "--size", "32", "--compiled-frames", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert "compiled frames" in report["runtime"]
    assert report["stages"]["runtime.Runtime._compiled_chunk"]["calls_per_frame"] == 1
    assert "backend cpu (render_cpu)" not in report["stages"]
    lines = report["lines"]                                    # the compiled frames' Python side, line by line
    assert lines["function"].endswith("Runtime._compiled_frames_of") and lines["calls_per_frame"] == 1
    assert any("raster(" in row["source"] for row in lines["rows"])


def test_probe_drives_with_the_benchmarks_sequence(tool, driving_dir, tmp_path, monkeypatch):
    """By default the driving sequence bench_runtime.py renders (its first frame, hence its sort capacity, is the
    benchmark's: the compiled frames prewarm.sh makes are then the ones it uses); a given file; synthetic codes
    where the fixtures are not there."""
    import numpy as np

    from flexavatar.runtime import load_expressions, synthetic_expressions
    driving = driving_dir / "EMO-1-shout+laugh.npz"
    monkeypatch.setenv("FLEXAVATAR_FIXTURES", str(driving_dir.parent))
    np.testing.assert_array_equal(tool.driving_expressions(None), load_expressions(driving))
    codes = np.zeros((3, 135), np.float32)
    np.save(tmp_path / "codes.npy", codes)
    np.testing.assert_array_equal(tool.driving_expressions(tmp_path / "codes.npy"), codes)
    monkeypatch.setenv("FLEXAVATAR_FIXTURES", str(tmp_path))
    np.testing.assert_array_equal(tool.driving_expressions(None), synthetic_expressions(64))
