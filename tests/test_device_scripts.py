"""The GPU-session scripts (benchmarks/run_gpu.sh, benchmarks/device/gpu_session.sh) run only on a lent GPU
machine, minutes at a time: their plumbing is checked here, where a mistake costs nothing. Each stage runs its
command in a child bash (`timeout ... bash -c`), which sees only exported functions: a stage whose function is
not exported fails with "command not found" on the GPU (it happened once)."""
from __future__ import annotations

import re
import subprocess
import sys
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


def _wait_prewarm_command(repo: Path) -> str:
    """run_gpu.sh's wait-prewarm stage command, for the repository ``repo``."""
    line = next(ln for ln in RUN_GPU.splitlines() if ln.strip().startswith("wait-prewarm)"))
    command = re.search(r'bash -c "(.*)" ;;', line)[1]
    return command.replace("$REPO", str(repo)).replace("'", "")


def test_wait_prewarm_waits_only_for_a_prewarm_that_started(tmp_path):
    """Without prewarm.sh on the machine (a one-call session, a fresh machine) there is nothing to wait for: the
    stage once slept out its whole cap there, and the budget then skipped every stage after it."""
    def waits(seconds: float = 3) -> bool:
        try:
            subprocess.run(["bash", "-c", _wait_prewarm_command(tmp_path)], timeout=seconds, check=True)
            return False
        except subprocess.TimeoutExpired:
            return True

    assert not waits()                                   # no prewarm: done at once
    marks = tmp_path / "build" / "gpu-prewarm"
    marks.mkdir(parents=True)
    (marks / "started").write_text("0\n")
    assert waits(1.5)                                    # prewarm running: waits
    (marks / "done").touch()
    assert not waits()                                   # prewarm finished


def test_sort_ab_fallback_reads_the_line_time_cuda_prints():
    """run_gpu.sh keeps the old CUDA sort for the later stages unless sort-ab's log holds its confirmation line:
    the line it greps for must be the one time_cuda.py prints (else every run would fall back)."""
    wanted = re.search(r'grep -q "([^"]+)" "\$LOGS/sort-ab.log"', RUN_GPU)[1]
    source = (REPO / "cpp" / "tests" / "gpu" / "time_cuda.py").read_text()
    printed = re.search(r"print\(f\"intersections \{n\}; the two forms' (frames bit-identical: )\{same\}", source)
    assert printed and wanted == printed[1] + "True"


def test_bench_graphs_selects_the_target_cases_first():
    """The bench-graphs stage must time issue #7's candidates and the eager baseline, the candidates before the
    rest (a session's budget may cut the stage short): its -k expression, collected as pytest collects it."""
    line = next(ln for ln in RUN_GPU.splitlines() if ln.strip().startswith("bench-graphs)"))
    selection = re.search(r'bench -k "([^"]+)"', line)[1]
    out = subprocess.run([sys.executable, "-m", "pytest", str(REPO / "benchmarks" / "bench_runtime.py"),
                          "--collect-only", "-q", "-p", "no:cacheprovider", "-k", selection],
                         capture_output=True, text=True, cwd=REPO, check=True).stdout
    ids = [ln.split("::")[-1] for ln in out.splitlines() if "::" in ln]
    for case in ("test_whole_frame[torch-eager+cuda-fp32]", "test_whole_frame[torch-compile-frames+cuda-fp16]",
                 "test_live_clip_torch_compile[torch-compile-frames+cuda-fp16-clip-live]",
                 "test_clip[ort-cuda-graphs+cuda-fp16-clip-live-fused-frames]"):
        assert case in ids, (case, ids)
    assert ids.index("test_live_clip_torch_compile[torch-compile-frames+cuda-fp16-clip-live]") < len(ids) // 2
