"""ONNX → OpenVINO IR (.xml + .bin) with the flexavatar metadata in the IR's rt_info."""
from __future__ import annotations

from pathlib import Path

from flexavatar.bundle import METADATA_PREFIX

# The CPU plugin runs bf16 by default on CPUs with AMX/AVX512-bf16: pin f32 when checking accuracy.
ACCURATE_CPU_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}


def save_ir(onnx_path: Path, xml_path: Path, props: dict[str, str]) -> None:
    """Convert and save with the ONNX file's own weight precisions (an fp16 ONNX gives the fp16 IR)."""
    import openvino as ov

    model = ov.Core().read_model(str(onnx_path))   # the ONNX frontend; save_model applies the MOC passes
    for key, value in props.items():
        model.set_rt_info(value, ["flexavatar", key.removeprefix(METADATA_PREFIX)])
    ov.save_model(model, str(xml_path), compress_to_fp16=False)


def compile_ir(xml_path: Path, config: dict | None = None):
    import openvino as ov

    return ov.Core().compile_model(str(xml_path), "CPU", dict(ACCURATE_CPU_CONFIG if config is None else config))


def run_compiled(compiled, feeds: dict) -> list:
    result = compiled(feeds)
    return [result[out] for out in compiled.outputs]
