"""The benchmark history format and the dashboard (flexavatar.dashboard, benchmarks/conftest.py).

Oracles: numpy's percentile for the statistics, closed-form fps/floor/fraction from the synthetic
timings, the datasheet table for GPU peaks, the page's own pixels (headless Chromium) for rendering.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flexavatar import dashboard as db

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------
# A synthetic history: two machines, three commits, the stage × backend × size matrix
# --------------------------------------------------------------------------------------------
H100 = {
    "id": "h100aaaa", "label": "NVIDIA H100 80GB HBM3 · Intel Xeon (32 threads)", "hostname": "gpu-1",
    "os": "Linux", "python": "3.12",
    "cpu": {"model": "Intel Xeon", "threads": 32, "threads_usable": 32, "physical_cores": 16, "mhz": 2000.0,
            "peak_flops_fp32": 16 * 2e9 * 64, "peak_note": "estimate"},
    "gpu": {"name": "NVIDIA H100 80GB HBM3", "driver": "580.1", "memory_mib": 81559.0, "count": 1,
            "source": "nvidia-smi"},
}  # fmt: skip
LAPTOP = {
    "id": "cpu0bbbb", "label": "AMD EPYC (2 threads)", "hostname": "vm", "os": "Linux", "python": "3.11",
    "cpu": {"model": "AMD EPYC", "threads": 2, "threads_usable": 2, "physical_cores": 2, "mhz": 2450.0,
            "peak_flops_fp32": 2 * 2.45e9 * 32, "peak_note": "estimate"},
    "gpu": None,
}  # fmt: skip
# (stage, backend, size, device, dtype, base ms, GFLOP per call)
GPU_CASES = [
    ("encode", "torch-eager", "flex1", "cuda", "fp16", 9.0, 228.7),
    ("decode", "torch-eager", "flex1", "cuda", "fp16", 1.6, 199.6),
    ("decode", "ort-cuda", "flex1", "cuda", "fp16", 1.2, 199.6),
    ("rasterize", "triton", "flex1", "cuda", "fp32", 0.62, None),
    ("rasterize", "cuda", "flex1", "cuda", "fp32", 0.31, None),
    ("whole_frame", "torch-eager+cuda", "flex1", "cuda", "fp16", 1.8, 199.6),
]
CPU_CASES = [
    ("decode", "torch-eager", "small", "cpu", "fp32", 40.0, 0.8),
    ("decode", "ort-cpu", "small", "cpu", "fp32", 25.0, 0.8),
    ("decode", "openvino", "small", "cpu", "fp32", 18.0, 0.8),
    ("rasterize", "reference", "small", "cpu", "fp32", 900.0, None),
    ("rasterize", "cpp-cpu", "small", "cpu", "fp32", 30.0, None),
    ("export", "onnx", "small", "cpu", "fp32", 4000.0, None),
]


def _run_record(machine: dict, commit: str, day: int, cases: list, seed: int) -> dict:
    rng = random.Random(seed)
    records = []
    for stage, backend, size, device, dtype, base_ms, gflop in cases:
        drift = 1.0 - 0.08 * day  # each commit a little faster
        timings = [base_ms * drift * rng.lognormvariate(0, 0.05) / 1e3 for _ in range(40)]
        records.append(
            db.case_record(
                case_id=f"benchmarks/bench_x.py::test_{stage}[{backend}-{size}]",
                name=f"test_{stage}[{backend}-{size}]",
                group=None,
                timings_s=timings,
                extra_info=db.validate_bench_meta(
                    stage=stage, backend=backend, size=size, device=device, dtype=dtype,
                    flops=None if gflop is None else gflop * 1e9,
                ),  # fmt: skip
                machine=machine,
                host_peak_rss_mib=1500.0,
                device_peak_mib=900.0 if device == "cuda" else None,
            )
        )
    started = f"2025-11-{10 + day:02d}T12:00:00+00:00"
    return {
        "kind": db.RECORD_KIND, "schema": db.SCHEMA_VERSION, "run_id": f"{day}_{machine['id']}",
        "started_utc": started, "finished_utc": started, "complete": True, "machine": machine,
        "packages": {}, "git": {"commit": commit * 5, "short": commit, "dirty": False, "source": "test"},
        "pytest_args": [], "benchmark_options": {}, "cases": records,
    }  # fmt: skip


def write_history(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for day, commit in enumerate(["aaaa1111", "bbbb2222", "cccc3333"]):
        for machine, cases in ((H100, GPU_CASES), (LAPTOP, CPU_CASES)):
            run = _run_record(machine, commit, day, cases, seed=day * 7 + len(cases))
            db.write_json_atomic(folder / db.run_file_name(db.utc_now(), machine["id"] + str(day)), run)
    return folder


@pytest.fixture
def history(tmp_path: Path) -> Path:
    return write_history(tmp_path / "history")


# --------------------------------------------------------------------------------------------
# Write side: statistics and peaks
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 7, 100, 1001])
def test_latency_summary_matches_numpy(n):
    rng = np.random.default_rng(n)
    xs = rng.lognormal(-6, 0.5, size=n)
    summary = db.latency_summary_ms(list(xs))
    for q in (50, 95, 99):
        assert summary[f"p{q}"] == pytest.approx(np.percentile(xs, q) * 1e3, rel=1e-12)
    assert summary["mean"] == pytest.approx(xs.mean() * 1e3, rel=1e-12)
    assert summary["stddev"] == pytest.approx((xs.std(ddof=1) if n > 1 else 0.0) * 1e3, rel=1e-9, abs=1e-15)
    assert summary["min"] == pytest.approx(xs.min() * 1e3) and summary["max"] == pytest.approx(xs.max() * 1e3)


def test_case_record_derives_fps_floor_and_fraction():
    timings = [0.002, 0.004, 0.003, 0.003]  # mean 3 ms
    rec = db.case_record(
        case_id="x", name="test_decode[a]", group=None, timings_s=timings,
        extra_info={**db.validate_bench_meta(stage="decode", backend="a", size="flex1", device="cuda",
                                             dtype="fp16", flops=199.6e9, frames=2), "note": "kept"},
        machine=H100,
    )  # fmt: skip
    peak = 989.4e12  # H100 SXM dense fp16 (datasheet)
    assert rec["fps"] == pytest.approx(2 / 0.003)
    assert rec["floor_ms"] == pytest.approx(199.6e9 / peak * 1e3)
    assert rec["fraction_of_peak"] == pytest.approx((199.6e9 / 0.003) / peak)
    assert rec["peak_flops"] == peak and "H100/H200 SXM" in rec["peak_source"]
    assert rec["latency_ms"]["p50"] == pytest.approx(3.0)
    assert rec["extra"] == {"note": "kept"}


@pytest.mark.parametrize(
    "name, dtype, expected",
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989.4e12),
        ("NVIDIA H100 80GB HBM3", "fp32", 66.9e12),
        ("NVIDIA H100 PCIe", "fp16", 756e12),  # must not fall through to the SXM row
        ("NVIDIA H200", "fp16", 989.4e12),
        ("NVIDIA A100-SXM4-80GB", "tf32", 156e12),
        ("NVIDIA L40S", "fp32", 91.6e12),  # must not match "L4"
        ("NVIDIA L4", "fp32", 30.3e12),
        ("Tesla T4", "tf32", None),
        ("Some Future GPU", "fp16", None),
    ],
)
def test_gpu_peak_table_lookup(name, dtype, expected):
    peak, source = db.gpu_peak_flops(name, dtype)
    assert peak == expected
    assert source  # says where it came from, or why it is unknown


def test_cpu_peak_estimate_formula():
    peak, note = db.cpu_peak_fp32(4, 3000.0, {"avx2", "fma"}, "AuthenticAMD")
    assert peak == 4 * 3.0e9 * 32 and "4 cores" in note
    peak, _ = db.cpu_peak_fp32(4, 3000.0, {"avx512f", "avx2", "fma"}, "GenuineIntel")
    assert peak == 4 * 3.0e9 * 64
    assert db.cpu_peak_fp32(None, 3000.0, set(), "")[0] is None
    # only fp32 has a CPU peak; other dtypes say why
    assert db.peak_flops_for("cpu", "bf16", LAPTOP) == (None, "CPU peak is only estimated for fp32 (case dtype bf16)")


@pytest.mark.parametrize(
    "kwargs, arg",
    [
        (dict(stage="Decode"), "stage"),
        (dict(backend="torch eager"), "backend"),
        (dict(size=""), "size"),
        (dict(dtype="float16"), "dtype"),
        (dict(flops=-1.0), "flops"),
        (dict(flops=float("inf")), "flops"),
        (dict(frames=0), "frames"),
        (dict(direction="sideways"), "direction"),
        (dict(device="gpu0!"), "device"),
    ],
)
def test_bench_meta_rejects_bad_labels(kwargs, arg):
    good = dict(stage="decode", backend="torch-eager", size="flex1")
    with pytest.raises(db.InvalidBenchMetaError, match=rf"^{arg}="):
        db.validate_bench_meta(**{**good, **kwargs})


# --------------------------------------------------------------------------------------------
# The HTML page
# --------------------------------------------------------------------------------------------
def _series_in(html_text: str, figure_id: str) -> set[str]:
    """Series drawn in one figure's SVG (not its legend)."""
    match = re.search(rf'<figure[^>]*id="{re.escape(figure_id)}".*?</figure>', html_text, re.S)
    assert match, f"figure {figure_id} missing"
    svg = match.group(0).split('<div class="legend">')[0]
    return set(re.findall(r'<(?:g|rect|path) data-series="([^"]+)"', svg))


def test_dashboard_contains_expected_series(history, tmp_path):
    out = tmp_path / "dash.html"
    assert db.main([str(history), "-o", str(out)]) == 0
    page = out.read_text()
    assert "<script src" not in page and "http://" not in page and "https://" not in page  # offline
    # latency over commits: one chart per stage per machine, one series per backend · size
    assert _series_in(page, "latency-h100aaaa-decode") == {"torch-eager · flex1 · fp16", "ort-cuda · flex1 · fp16"}
    assert _series_in(page, "latency-cpu0bbbb-rasterize") == {"reference · small", "cpp-cpu · small"}
    # each series has one point per run (3 commits)
    fig = re.search(r'id="latency-cpu0bbbb-rasterize".*?</figure>', page, re.S).group(0)
    assert fig.count("<circle") == 2 * 3
    assert "cccc3333" in fig and "aaaa1111" in fig
    # fps side by side: every backend of the latest CPU run
    assert _series_in(page, "fps-cpu0bbbb") == {b for _, b, *_ in CPU_CASES}
    # breakdown: decode + rasterize pairs on the same device and size, with the measured whole frame
    assert "flex1 · torch-eager + cuda" in page and 'data-series="measured whole frame"' in page
    assert "small · openvino + cpp-cpu" in page


def test_targets_table_judges_latest_run(history):
    runs = db.load_history([history])
    latest = {r.machine_id: r for r in runs}  # oldest first → the last one wins
    gpu, cpu = latest["h100aaaa"], latest["cpu0bbbb"]
    by_backend = {(c.stage, c.backend): c for c in gpu.cases + cpu.cases}
    # rasterizer ≤ 0.5 ms on H100: cuda (0.31 ms × 0.84) meets it, triton (0.62 ms × 0.84) does not
    [cuda] = db.targets_for(by_backend["rasterize", "cuda"], gpu)
    [triton] = db.targets_for(by_backend["rasterize", "triton"], gpu)
    assert cuda.met is True and triton.met is False
    # whole frame fps ≥ 500 on H100 fp16: 1 / (1.8 ms × 0.84) ≈ 660 fps
    [whole] = db.targets_for(by_backend["whole_frame", "torch-eager+cuda"], gpu)
    assert whole.met is True
    # the runtime's fp16 whole frame vs PyTorch eager fp32 in the same run: ≥ 3×
    eager = dataclasses.replace(by_backend["whole_frame", "torch-eager+cuda"], dtype="fp32")
    ort = dataclasses.replace(eager, backend="ort-cuda-graphs+cuda", dtype="fp16")
    for speed, met in ((4.0, True), (2.2, False)):
        fast = dataclasses.replace(ort, latency_ms={**ort.latency_ms, "p50": eager.latency_ms["p50"] / speed})
        both = dataclasses.replace(gpu, cases=[eager, fast])
        fps_target, vs_eager = db.targets_for(fast, both)
        assert vs_eager.met is met and vs_eager.measured == f"{speed:.2f}×"
    [_, alone] = db.targets_for(fast, dataclasses.replace(gpu, cases=[fast]))
    assert alone.met is None                                     # no eager case in that run: not decidable
    assert db.targets_for(eager, both) == []                     # the fp32 eager baseline itself: no target
    # C++ CPU rasterizer vs reference in the same run: 900 / 30 = 30× ≥ 20×
    [speedup] = db.targets_for(by_backend["rasterize", "cpp-cpu"], cpu)
    case, ref = by_backend["rasterize", "cpp-cpu"], by_backend["rasterize", "reference"]
    ratio = ref.latency_ms["p50"] / case.latency_ms["p50"]
    assert speedup.met is True and speedup.measured == f"{ratio:.1f}×" and 25 < ratio < 36
    for label in ("cpu", "native-cpu"):    # the suite's labels of the same rasterizer (registry / bench_native)
        assert db.targets_for(dataclasses.replace(case, backend=label), cpu) == [speedup]
    # spec FLOPs of the FLEX-1 decoder (199.6 GFLOP) recorded as such
    [flops] = db.targets_for(by_backend["decode", "ort-cuda"], gpu)
    assert flops.met is True
    # floor = FLOPs / peak, shown in the table
    dec = by_backend["decode", "ort-cuda"]
    assert dec.floor_ms == pytest.approx(199.6e9 / 989.4e12 * 1e3, rel=1e-5)


# --------------------------------------------------------------------------------------------
# Bad history: a clear message naming the file and the problem, exit code 2, no traceback
# --------------------------------------------------------------------------------------------
def _corrupt(history: Path, text: str) -> Path:
    bad = history / "zz_bad.json"
    bad.write_text(text)
    return bad


@pytest.mark.parametrize(
    "mutate, problem",
    [
        (lambda run: "{not json", r"not valid JSON \(line 1, column 2"),
        (lambda run: "", r"not valid JSON"),
        (lambda run: json.dumps([1, 2]), r"expected a JSON object, got list"),
        (lambda run: json.dumps({**run, "kind": "other"}), r"kind: expected 'flexavatar-benchmark-run'"),
        (lambda run: json.dumps({**run, "schema": 99}), r"schema: version 99 is not supported"),
        (lambda run: json.dumps({**run, "started_utc": "yesterday"}), r"started_utc: expected an ISO 8601"),
        (lambda run: json.dumps({k: v for k, v in run.items() if k != "machine"}), r"machine: missing"),
        (
            lambda run: json.dumps({**run, "cases": [{**run["cases"][0], "latency_ms": {
                **run["cases"][0]["latency_ms"], "p50": "fast"}}]}),
            r"cases\[0\]\.latency_ms\.p50: expected number, got \"fast\"",
        ),
        (
            lambda run: json.dumps({**run, "cases": [{**run["cases"][0], "rounds": 0}]}),
            r"cases\[0\]\.rounds: expected ≥ 1, got 0",
        ),
    ],
)
def test_malformed_history_gives_clear_message(history, tmp_path, capsys, mutate, problem):
    good = json.loads(next(history.glob("*.json")).read_text())
    bad = _corrupt(history, mutate(good))
    with pytest.raises(db.MalformedHistoryError, match=problem) as err:
        db.load_history([history])
    assert err.value.path == bad
    assert db.main([str(history), "-o", str(tmp_path / "d.html")]) == 2
    message = capsys.readouterr().err
    assert str(bad) in message and "Traceback" not in message
    assert re.search(problem, message)
    # --skip-invalid renders the rest and names the skipped file
    assert db.main([str(history), "-o", str(tmp_path / "d.html"), "--skip-invalid"]) == 0
    assert str(bad) in capsys.readouterr().err


def test_missing_history_gives_clear_message(tmp_path, capsys):
    with pytest.raises(db.MissingHistoryError, match="does not exist"):
        db.load_history([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    assert db.main([str(tmp_path / "empty"), "-o", str(tmp_path / "d.html")]) == 2
    err = capsys.readouterr().err
    assert "empty: no run files (*.json) in this folder" in err and "Traceback" not in err


def test_cli_exit_code_and_message_from_a_subprocess(tmp_path):
    """The console entry point itself: exit status 2 and one line on stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "flexavatar.dashboard", str(tmp_path / "missing"), "-o", str(tmp_path / "x.html")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"flexavatar-dashboard: error: {tmp_path / 'missing'}: does not exist " \
        "(expected a history folder or run file)"


# --------------------------------------------------------------------------------------------
# The suite's conftest end to end: `--benchmark-only` overrides the project's `--benchmark-skip`,
# and the run record it writes loads in the dashboard.
# --------------------------------------------------------------------------------------------
BENCH_FILE = '''
import time, pytest

@pytest.mark.parametrize("ms", [1, 3])
def test_sleep(benchmark, bench_meta, ms):
    bench_meta(stage="rasterize", backend=f"sleep{ms}", size="small", flops=1e6)
    benchmark.pedantic(time.sleep, args=(ms / 1e3,), rounds=12, iterations=1)

def test_weights(benchmark, bench_meta, weights_cache):
    import numpy as np
    calls = []
    def make():
        calls.append(1)
        return {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    first = weights_cache.get("tiny-seed0", make)
    weights_cache._memory.clear()
    second = weights_cache.get("tiny-seed0", make)  # from disk this time
    assert calls == [1] and (second["w"] == first["w"]).all()
    bench_meta(stage="decode", backend="numpy", size="small")
    benchmark.pedantic(lambda: second["w"].sum(), rounds=5)

def test_not_a_benchmark():
    pass
'''


def test_benchmark_suite_records_a_run(tmp_path):
    (tmp_path / "benchmarks").mkdir()
    shutil.copy(REPO / "benchmarks" / "conftest.py", tmp_path / "benchmarks" / "conftest.py")
    (tmp_path / "benchmarks" / "bench_demo.py").write_text(BENCH_FILE)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\ntestpaths = ["tests"]\naddopts = "-ra --benchmark-skip"\n'
    )
    env = {**os.environ, "FLEXAVATAR_GIT_COMMIT": "0123456789abcdef"}
    env.pop("FLEXAVATAR_BENCH_HISTORY", None)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks", "--benchmark-only", "-p", "no:cacheprovider"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"\[1/4\] benchmarks/bench_demo.py::test_sleep\[1\]  p50 \S+ ms", run.stdout)
    assert "[4/4] benchmarks/bench_demo.py::test_not_a_benchmark  skipped" in run.stdout
    [path] = (tmp_path / "benchmarks" / "history").glob("*.json")
    assert (tmp_path / "benchmarks" / ".cache" / "tiny-seed0.safetensors").exists()
    [loaded] = db.load_history([path])
    assert loaded.complete and loaded.commit == "0123456789abcdef"
    cases = {c.backend: c for c in loaded.cases}
    assert set(cases) == {"sleep1", "sleep3", "numpy"} and cases["sleep3"].rounds == 12
    # time.sleep(ms) takes at least ms: a physical lower bound on the recorded percentiles
    assert cases["sleep1"].latency_ms["min"] >= 1.0 and cases["sleep3"].latency_ms["min"] >= 3.0
    assert cases["sleep3"].latency_ms["p50"] > cases["sleep1"].latency_ms["p50"]
    assert cases["sleep1"].fps == pytest.approx(1e3 / cases["sleep1"].latency_ms["mean"], rel=1e-5)
    assert cases["sleep1"].host_peak_rss_mib and cases["sleep1"].host_peak_rss_mib > 10
    # without --benchmark-only the project's addopts skip the suite and nothing is recorded
    path.unlink()
    plain = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks", "-p", "no:cacheprovider"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert plain.returncode == 0 and "3 skipped" in plain.stdout
    assert not list((tmp_path / "benchmarks" / "history").glob("*.json"))


# --------------------------------------------------------------------------------------------
# Rendering in a real browser (Debian's chromium; .ci/run installs it)
# --------------------------------------------------------------------------------------------
def _chromium() -> str:
    exe = os.environ.get("FLEXAVATAR_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.fail("chromium not found: install it with `apt-get install -y chromium` (as .ci/run does)")
    return exe


def _chromium_run(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
        "--no-first-run", "--force-device-scale-factor=1", f"--user-data-dir={profile}",
        "--virtual-time-budget=3000", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def _hex_rgb(color: str) -> np.ndarray:
    return np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)])


def test_dashboard_renders_in_headless_chromium(history, tmp_path):
    from PIL import Image

    exe = _chromium()
    page = tmp_path / "dashboard.html"
    db.main([str(history), "-o", str(page)])
    width = 1280
    # 1) Let the page lay itself out and report where its plot areas are.
    dom = _chromium_run(exe, tmp_path / "profile", f"--window-size={width},900", "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    rects_attr = re.search(r'data-plot-rects="([^"]*)"', dom.stdout)
    assert rects_attr, "the page's script did not run (no data-plot-rects on <body>)"
    rects = json.loads(rects_attr.group(1).replace("&quot;", '"'))
    height = int(re.search(r'data-page-height="(\d+)"', dom.stdout).group(1))
    figures = {r["figure"] for r in rects}
    assert {"latency-h100aaaa-decode", "fps-h100aaaa", "breakdown-h100aaaa", "fps-cpu0bbbb"} <= figures
    # 2) Screenshot the whole page and look inside every plot area.
    shot = tmp_path / "dashboard.png"
    res = _chromium_run(exe, tmp_path / "profile", f"--window-size={width},{height}", f"--screenshot={shot}",
                        page.as_uri())  # fmt: skip
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (height, width)
    colored = (pixels.max(axis=2) - pixels.min(axis=2)) > 40  # series colours; greys/white are not
    for r in rects:
        x0, y0 = int(math.ceil(r["x"])) + 1, int(math.ceil(r["y"])) + 1
        x1, y1 = int(r["x"] + r["w"]) - 1, int(r["y"] + r["h"]) - 1
        inside = colored[y0:y1, x0:x1]
        assert inside.size and inside.sum() >= 60, f"plot area of {r['figure']} is blank ({inside.sum()} px)"
    # the CPU machine's rasterize chart shows both of its series' colours
    colors = db._Colors(c[1] for c in GPU_CASES + CPU_CASES)
    [r] = [r for r in rects if r["figure"] == "latency-cpu0bbbb-rasterize"]
    area = pixels[int(r["y"]) + 1 : int(r["y"] + r["h"]) - 1, int(r["x"]) + 1 : int(r["x"] + r["w"]) - 1]
    for backend in ("reference", "cpp-cpu"):
        near = np.abs(area - _hex_rgb(colors(backend))).sum(axis=2) < 30
        assert near.sum() >= 30, f"no {backend} colour in the rasterize latency chart"
    # outside the charts (the page margin right of <main>) stays background
    margin = colored[:, width - 30 :]
    assert margin.sum() == 0
    if os.environ.get("FLEXAVATAR_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["FLEXAVATAR_KEEP_SCREENSHOT"])


def test_latest_session_merges_the_records_of_one_gpu_session(history):
    """A GPU session writes one record per benchmark invocation: the targets read them together (same commit,
    within SESSION_GAP), newer measurements of a case winning; another commit or a long gap starts a new session."""
    runs = [r for r in db.load_history([history]) if r.machine_id == "h100aaaa"]
    last = runs[-1]
    eager = next(c for c in last.cases if c.backend == "torch-eager+cuda")
    later = last.started + db.SESSION_GAP / 2
    ort = dataclasses.replace(eager, id="bench_runtime.py::ort", backend="ort-cuda-graphs+cuda")
    remeasured = dataclasses.replace(eager, latency_ms={**eager.latency_ms, "p50": 99.0})
    second = dataclasses.replace(last, started=later, cases=(ort, remeasured))
    session = db.latest_session(runs + [second])
    ids = [c.id for c in session.cases]
    assert sorted(ids) == sorted({c.id for c in last.cases} | {ort.id}) and len(ids) == len(set(ids))
    assert next(c for c in session.cases if c.id == eager.id).latency_ms["p50"] == 99.0     # the newer record
    assert session.started == last.started
    other_commit = dataclasses.replace(second, commit="ffff9999")
    assert db.latest_session(runs + [other_commit]).cases == other_commit.cases
    too_late = dataclasses.replace(second, started=last.started + 2 * db.SESSION_GAP)
    assert db.latest_session(runs + [too_late]).cases == too_late.cases


def test_psnr_of_a_case_reaches_the_targets_table(tmp_path):
    """A whole-frame record's "psnr_db" (bench_runtime) is read back and shown beside the speed; a missing,
    non-numeric or non-finite value shows as a dash, never as an error."""
    machine = H100
    run = _run_record(machine, "dddd4444", 0, [("whole_frame", "ort-cuda-graphs+cuda", "flex1", "cuda", "fp16",
                                                 2.0, None)] * 4, seed=1)
    for case, value in zip(run["cases"], (48.7, "high", None, 200), strict=True):
        case["extra"]["psnr_db"] = value
        case["id"] += f"-{value}"
    folder = tmp_path / "history"
    folder.mkdir()
    db.write_json_atomic(folder / db.run_file_name(db.utc_now(), machine["id"]), run)
    [loaded] = db.load_history([folder])
    assert [c.psnr_db for c in loaded.cases] == [48.7, None, None, 200.0]
    out = tmp_path / "dash.html"
    db.main([str(folder), "-o", str(out)])
    page = out.read_text()
    assert "<th title=" in page and ">PSNR dB</th>" in page and "<td>48.7</td>" in page
