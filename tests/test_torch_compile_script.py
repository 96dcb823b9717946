"""benchmarks/device/torch_compile.py, the GPU session's A/B of a compiled PyTorch decoder against the bundle's
ONNX Runtime decoders, end to end on the CPU (torch.compile with the aot_eager backend: the plumbing and the error
bookkeeping; Inductor and CUDA graphs are the GPU stage's)."""
from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def tool(device_script):
    return device_script("torch_compile")


def test_every_variant_is_timed_and_compared_with_eager_fp32(tool, official_dir, onnx_features_bundle, tmp_path):
    out = tmp_path / "compile.json"
    assert tool.main(["--checkpoint", str(official_dir / "state_dict.safetensors"),
                      "--template", str(official_dir / "gghead_template.obj"),
                      "--config", str(official_dir / "config.json"), "--bundle", str(onnx_features_bundle),
                      "--device", "cpu", "--backend", "aot_eager", "--calls", "2", "--rounds", "1",
                      "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {r["variant"]: r for r in report["variants"]}
    assert report["n_gaussians"] == 3405
    assert set(rows) == {"eager-fp32", "eager-fp16", "compiled-fp32", "compiled-fp16", "compiled-fp16-fir-conv",
                         "ort-fp16", "ort-fp32"}
    assert "no fp16 decoder" in rows["ort-fp16"]["error"]               # this bundle has fp32 files only
    for name in ("eager-fp32", "compiled-fp32", "ort-fp32"):            # the same fp32 model three ways
        assert rows[name]["ms_per_call"] > 0 and max(rows[name]["relative_error"].values()) <= 1e-4, rows[name]
    assert rows["eager-fp32"]["speedup_vs_eager_fp32"] == 1.0
    for name in ("eager-fp16", "compiled-fp16", "compiled-fp16-fir-conv"):   # half precision: off, not far off
        errors = rows[name]["relative_error"]
        assert 1e-5 < max(errors.values()) <= 5e-2, errors
    # aot_eager runs the ops it captured: with the FIR as a convolution, eager's own ops
    assert rows["compiled-fp16-fir-conv"]["relative_error"] == rows["eager-fp16"]["relative_error"]


def test_relative_error_is_against_the_reference_scale(tool):
    import torch

    want = {name: torch.full((1, 4, 3), 2.0) for name in tool.OUTPUTS}
    got = {name: t.clone() for name, t in want.items()}
    got["scales"][0, 1, 2] = 2.5
    errors = tool.relative_errors(got, want)
    assert errors["scales"] == pytest.approx(0.25) and errors["positions"] == 0.0


def test_variants_are_chosen_and_unknown_ones_refused(tool, official_dir, tmp_path):
    common = ["--checkpoint", str(official_dir / "state_dict.safetensors"),
              "--template", str(official_dir / "gghead_template.obj"), "--config", str(official_dir / "config.json"),
              "--device", "cpu", "--backend", "aot_eager", "--calls", "1", "--rounds", "1"]
    out = tmp_path / "one.json"
    assert tool.main([*common, "--variants", "compiled-fp32", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["variants"]
    assert [r["variant"] for r in rows] == ["eager-fp32", "compiled-fp32"]      # the reference always runs
    assert max(rows[1]["relative_error"].values()) <= 1e-5
    with pytest.raises(SystemExit, match="unknown \\['compiled-bf16'\\]"):
        tool.main([*common, "--variants", "compiled-bf16"])
