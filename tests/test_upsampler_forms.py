"""benchmarks/device/upsampler_forms.py, the GPU session's A/B of the upsampler's forms, end to end on the CPU
provider (its timing needs a GPU; a wrong form would time the wrong thing). The passes: tests/test_graph_passes.py."""
from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def tool(device_script):
    return device_script("upsampler_forms")


def test_script_checks_and_times_every_form_and_the_bundle_decoder_on_the_cpu(tool, onnx_features_bundle, tmp_path,
                                                                              capsys):
    out = tmp_path / "forms.json"
    assert tool.main(["--device", "cpu", "--small", "--bundle", str(onnx_features_bundle), "--frames", "1",
                      "--rounds", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    upsampler = {f"upsampler-{f}-{p}" for f in tool.FORMS for p in ("fp32", "fp16")}
    assert set(rows) == upsampler | {f"decoder-{f}-fp32" for f in tool.FORMS}
    for key in upsampler:
        # against the model's float64 forward: fp32 to rounding, fp16 as the exporter's fp16 files
        assert rows[key]["relative_error"] <= (2e-2 if rows[key]["precision"] == "fp16" else 1e-5), key
    assert all(row["ms_per_call"] > 0 for row in rows.values())
    assert rows["upsampler-transposed-fp32"]["speedup"] == rows["decoder-transposed-fp32"]["speedup"] == 1.0
    ops = {f: set(rows[f"upsampler-{f}-fp32"]["ops"]) for f in tool.FORMS}
    # the forms differ in the kernels they ask for, which is their point: two upsampling blocks, six convolutions
    assert rows["upsampler-subpixel-fp32"]["rewritten"] == [2] and rows["upsampler-gemm-fp32"]["rewritten"] == [2, 6]
    assert "ConvTranspose" in ops["transposed"] and "ConvTranspose" not in ops["subpixel"]
    assert {"Conv", "DepthToSpace"} <= ops["subpixel"]
    assert not ops["gemm"] & {"Conv", "ConvTranspose"} and {"MatMul", "Gather"} <= ops["gemm"]
    # the bundle's decoder in each form: the Gaussians of the exported graph, to rounding
    for form in ("subpixel", "gemm"):
        row = rows[f"decoder-{form}-fp32"]
        assert row["rewritten"][0] >= 1 and row["max_abs_diff_vs_exported"] <= 1e-4, form
    assert '"device": "cpu"' in capsys.readouterr().out


def test_a_form_that_fails_is_recorded_and_the_others_still_timed(tool, tmp_path, monkeypatch):
    # GPU minutes are scarce: one refused form (e.g. ONNX Runtime declining a CUDA graph) must not cost the others
    real = tool.OrtRunner

    def runner(path, *args, **kwargs):
        if ".gemm." in path.name:
            raise RuntimeError("CUDA graphs refused\nsecond line")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(tool, "OrtRunner", runner)
    out = tmp_path / "forms.json"
    assert tool.main(["--device", "cpu", "--small", "--frames", "1", "--rounds", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    for precision in ("fp32", "fp16"):
        failed = rows[f"upsampler-gemm-{precision}"]
        assert failed["error"] == "RuntimeError: CUDA graphs refused" and "ms_per_call" not in failed
        assert rows[f"upsampler-subpixel-{precision}"]["ms_per_call"] > 0
        assert rows[f"upsampler-subpixel-{precision}"]["speedup"] > 0
