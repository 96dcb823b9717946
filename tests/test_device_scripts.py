"""The GPU-session scripts (benchmarks/run_gpu.sh, benchmarks/device/gpu_session.sh) run only on a lent GPU
machine, minutes at a time: their plumbing is checked here, where a mistake costs nothing. Each stage runs its
command in a child bash (`timeout ... bash -c`), which sees only exported functions: a stage whose function is
not exported fails with "command not found" on the GPU (it happened once)."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN_GPU = (REPO / "benchmarks" / "run_gpu.sh").read_text()
GPU_SESSION = (REPO / "benchmarks" / "device" / "gpu_session.sh").read_text()
BUILTINS = {"bash", "pyrun"}


def _stage_lines() -> dict[str, str]:
    """stage name → the first word of its command, from the `case` of run_gpu.sh."""
    return {m["name"]: m["command"] for m in re.finditer(
        r"^\s+(?P<name>[\w-]+)\) (?:RESERVE=0 )?stage [\w-]+ \S+ (?P<command>[\w-]+)", RUN_GPU, re.M)}


def _exported() -> set[str]:
    line = next(ln for ln in RUN_GPU.splitlines() if ln.startswith("export -f "))
    return set(line.split()[2:])


def _defined() -> set[str]:
    return set(re.findall(r"^(\w+)\(\) \{", RUN_GPU, re.M))


def test_every_stage_command_is_an_exported_function():
    stages = _stage_lines()
    assert len(stages) >= 15, stages
    functions = _defined()
    for name, command in stages.items():
        if command in BUILTINS:
            continue
        assert command in functions, f"stage {name}: {command} is not defined in run_gpu.sh"
        assert command in _exported(), f"stage {name}: {command} is not in run_gpu.sh's export -f list"


def test_session_default_stages_exist_and_wait_for_the_flex1_bundle_first():
    default = re.search(r"FLEXAVATAR_GPU_STAGES:-([^}]*)\}", GPU_SESSION)[1].split()
    default = [s for s in default if not s.startswith("$")]
    known = set(_stage_lines())
    assert not set(default) - known, f"unknown stages in gpu_session.sh: {set(default) - known}"
    # stages that read the FLEX-1 bundle prewarm.sh exports come after wait-prewarm
    needs_bundle = {name for name, command in _stage_lines().items()
                    if re.search(rf"^{command}\(\) \{{[^}}]*flex1_fp16_bundle", RUN_GPU, re.M | re.S)}
    assert {"interleave", "ort-conv", "verify", "upsampler-forms"} <= needs_bundle
    assert default.index("bench-cpp") > default.index("cpp-runtime")      # its C++ runtime is cpp-runtime's build
    wait = default.index("wait-prewarm")
    for name in needs_bundle & set(default):
        assert default.index(name) > wait, f"{name} runs before wait-prewarm"
