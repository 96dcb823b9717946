"""benchmarks/device/ort_placement.py (the GPU session's node-placement report), run on the CPU provider."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import onnx

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device" / "ort_placement.py"


def _load():
    spec = importlib.util.spec_from_file_location("ort_placement", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_node_of_the_bundle_is_counted_on_the_provider_that_ran_it(onnx_features_bundle, tmp_path, capsys):
    tool = _load()
    decoder = onnx_features_bundle / "decoder.fp32.onnx"
    report = tool.placement(decoder, tool.PROVIDERS["cpu"], tmp_path)
    # ONNX Runtime fuses some nodes, so the profiled count is positive and at most the graph's node count
    n_graph = len(onnx.load(str(decoder)).graph.node)
    assert 0 < report["providers"]["CPUExecutionProvider"] <= n_graph
    assert set(report["providers"]) == {"CPUExecutionProvider"}
    assert report["memcpy"] == 0 and report["off_provider"] == {} and report["compute_off_provider"] == []
    assert "cuda_graphs" not in report                       # only asked of the CUDA provider
    times = report["kernel_ms_per_op"]                       # one run's kernel time per op type, largest first
    assert "MatMul" in times and all(ms >= 0 for ms in times.values()) and list(times.values()) == sorted(
        times.values(), reverse=True)

    assert tool.main([str(onnx_features_bundle), "--provider", "cpu", "--times", "--json",
                      str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "decoder.fp32.onnx: {'CPUExecutionProvider'" in out and (tmp_path / "r.json").is_file()
    assert "kernel time: " in out and " ms (" in out
