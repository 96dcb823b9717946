"""benchmarks/device/upsampler_forms.py: the upsampler's GPU candidate forms compute the model's function (their
timing needs a GPU; a wrong form would time the wrong thing). The sub-pixel pass itself: tests/test_graph_passes.py."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device" / "upsampler_forms.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("upsampler_forms", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gemm_form_equals_the_model_in_float64(tool):
    # 64@8² → 16@16² (c = 32) → 4@32² (c = 16): both blocks, every layer kind
    up = tool.flex1_upsampler(seed=3, d_in=64, res_in=8, channel_base=512, channel_max=32).double()
    x = torch.randn(1, 64, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = up(x)
        got = tool.GemmUpsampler(up)(x)
    assert got.shape == expected.shape == (1, 4, 32, 32)
    assert float((got - expected).abs().max()) <= 1e-12 * float(expected.abs().max())


def test_conv_as_gemm_matches_conv2d_for_1x1_and_3x3(tool):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, 7, 6, dtype=torch.float64, generator=gen)
    for k in (1, 3):
        w = torch.randn(4, 5, k, k, dtype=torch.float64, generator=gen)
        expected = torch.nn.functional.conv2d(x, w, padding=k // 2)
        assert torch.allclose(tool.conv_as_gemm(x, w), expected, rtol=0, atol=1e-12)


def test_script_checks_and_times_every_form_and_the_bundle_decoder_on_the_cpu(tool, onnx_features_bundle, tmp_path,
                                                                              capsys):
    # the GPU run's path end to end, on ONNX Runtime's CPU provider at the small size
    out = tmp_path / "forms.json"
    assert tool.main(["--device", "cpu", "--small", "--bundle", str(onnx_features_bundle), "--frames", "1",
                      "--rounds", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    upsampler = {f"upsampler-{f}-{p}" for f in tool.FORMS for p in ("fp32", "fp16")}
    assert set(rows) == upsampler | {"decoder-plain-fp32", "decoder-subpixel-fp32"}
    for key in upsampler:
        # against the model's float64 forward: fp32 to rounding, fp16 as the exporter's fp16 files
        assert rows[key]["relative_error"] <= (2e-2 if rows[key]["precision"] == "fp16" else 1e-5), key
    assert all(row["ms_per_call"] > 0 for row in rows.values())
    assert rows["upsampler-transposed-fp32"]["speedup"] == rows["decoder-plain-fp32"]["speedup"] == 1.0
    ops = {f: set(rows[f"upsampler-{f}-fp32"]["ops"]) for f in tool.FORMS}
    # the forms differ in the kernels they ask for, which is their point
    assert "ConvTranspose" in ops["transposed"] and "ConvTranspose" not in ops["subpixel"]
    assert {"Conv", "DepthToSpace"} <= ops["subpixel"]
    assert not ops["gemm"] & {"Conv", "ConvTranspose"} and {"MatMul", "Gather"} <= ops["gemm"]
    # the bundle's decoder: every upsampling block rewritten, the Gaussians unchanged to rounding
    fused = rows["decoder-subpixel-fp32"]
    assert fused["rewritten_pairs"] >= 1 and fused["max_abs_diff_vs_plain"] <= 1e-4
    assert '"device": "cpu"' in capsys.readouterr().out
