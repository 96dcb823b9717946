"""benchmarks/device/upsampler_forms.py: the upsampler's GPU candidate forms compute the model's function (their
timing needs a GPU; a wrong form would time the wrong thing)."""
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


def _small(tool):
    # 64@8² → 16@16² (c = 32) → 4@32² (c = 16): both blocks, every layer kind, milliseconds to run
    return tool.flex1_upsampler(seed=3, d_in=64, res_in=8, channel_base=512, channel_max=32)


def test_subpixel_weight_equals_transposed_conv_then_fir_in_float64(tool):
    up = _small(tool).double()
    x = torch.randn(2, 64, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    conv0 = up.blocks[0].conv0
    weight = tool.subpixel_weight(conv0)
    assert weight.shape == (4 * 32, 64, 3, 3)
    with torch.no_grad():
        expected = conv0(x)
        got = tool._activation(torch.nn.functional.pixel_shuffle(torch.nn.functional.conv2d(x, weight, padding=1), 2),
                               conv0)
    assert got.shape == expected.shape == (2, 32, 16, 16)
    assert float((got - expected).abs().max()) <= 1e-12 * float(expected.abs().max())
    # a wrong parity order is not within rounding: swapping the sub-pixel phases breaks it
    swapped = weight.reshape(32, 2, 2, 64, 3, 3).flip(1).reshape(128, 64, 3, 3)
    with torch.no_grad():
        wrong = torch.nn.functional.pixel_shuffle(torch.nn.functional.conv2d(x, swapped, padding=1), 2)
    assert float((tool._activation(wrong, conv0) - expected).abs().max()) > 1e-2


@pytest.mark.parametrize("form", ["subpixel", "gemm"])
def test_every_form_equals_the_model_in_float64(tool, form):
    up = _small(tool).double()
    x = torch.randn(1, 64, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = up(x)
        got = tool.UpsamplerForm(up, form)(x)
    assert got.shape == expected.shape == (1, 4, 32, 32)
    assert float((got - expected).abs().max()) <= 1e-12 * float(expected.abs().max())


def test_conv_as_gemm_matches_conv2d_for_1x1_and_3x3(tool):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, 7, 6, dtype=torch.float64, generator=gen)
    for k in (1, 3):
        w = torch.randn(4, 5, k, k, dtype=torch.float64, generator=gen)
        expected = torch.nn.functional.conv2d(x, w, padding=k // 2)
        assert torch.allclose(tool.conv_as_gemm(x, w), expected, rtol=0, atol=1e-12)


def test_script_exports_checks_and_times_every_form_on_the_cpu_provider(tool, tmp_path, capsys):
    # the GPU run's path end to end, on ONNX Runtime's CPU provider at the small size
    out = tmp_path / "forms.json"
    assert tool.main(["--device", "cpu", "--small", "--frames", "1", "--rounds", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert set(rows) == ({f"ort-{f}-{p}-none" for f in tool.FORMS for p in ("fp32", "fp16")}
                         | {f"eager-{f}-fp32" for f in tool.FORMS})
    for key, row in rows.items():
        # errors against the model's float64 forward: fp32 to rounding, fp16 as the exporter's fp16 files
        assert row["relative_error"] <= (2e-2 if row["precision"] == "fp16" else 1e-5), key
        assert row["ms_per_call"] > 0
    assert rows["ort-transposed-fp32-none"]["speedup_vs_transposed"] == 1.0
    ops = {f: set(rows[f"ort-{f}-fp32-none"]["ops"]) for f in tool.FORMS}
    # the forms differ in the kernels they ask for, which is their point
    assert "ConvTranspose" in ops["transposed"] and "ConvTranspose" not in ops["subpixel"]
    assert {"Conv", "DepthToSpace"} <= ops["subpixel"]
    assert not ops["gemm"] & {"Conv", "ConvTranspose"} and {"MatMul", "Gather"} <= ops["gemm"]
    assert '"device": "cpu"' in capsys.readouterr().out
