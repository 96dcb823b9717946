"""Shared machinery of the benchmark suite: ``pytest benchmarks --benchmark-only``.

Benchmarks use pytest-benchmark's ``benchmark`` fixture as usual; this file adds

* ``bench_meta(stage=..., backend=..., size=..., device=..., dtype=..., flops=..., frames=..., direction=...)``:
  labels the case for the history record and the dashboard (written into ``benchmark.extra_info``);
* ``weights_cache.get(name, make)``: a state dict built once by ``make()`` and cached on disk as
  safetensors in ``benchmarks/.cache/`` (git-ignored), e.g. random FLEX-1-size weights;
* ``cuda_device``: a torch CUDA device, or a skip with the reason;
* a ``[k/N]`` progress line per case, and one JSON run record in ``benchmarks/history/`` per run
  (rewritten after every case, so a run killed by a time limit still leaves its finished cases).

``--bench-history DIR`` (or FLEXAVATAR_BENCH_HISTORY) moves the history; ``--bench-history none`` writes none.
The record format and the dashboard live in ``flexavatar/dashboard.py``.
"""

from __future__ import annotations

import os
import re
import resource
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from flexavatar import dashboard as record
from flexavatar.dev_fixtures import fixtures_dir
from flexavatar.files import atomic_path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEFAULT_HISTORY = BENCH_DIR / "history"
CACHE_DIR = BENCH_DIR / ".cache"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# ---------------------------------------------------------------------------------------------
# Options and collection
# ---------------------------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("flexavatar benchmarks")
    group.addoption(
        "--bench-history",
        default=os.environ.get("FLEXAVATAR_BENCH_HISTORY", str(DEFAULT_HISTORY)),
        help="folder for the per-run JSON record ('none' to write nothing; default benchmarks/history)",
    )


def pytest_configure(config: pytest.Config) -> None:
    # Benchmark modules are named bench_*.py; collect them too (functions are still test_*).
    config.addinivalue_line("python_files", "bench_*.py")
    if config.pluginmanager.hasplugin("benchmark"):
        config.pluginmanager.register(_RunRecorder(config), "flexavatar-run-recorder")


# ---------------------------------------------------------------------------------------------
# Fixtures for benchmark authors
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def bench_meta(benchmark) -> Callable[..., None]:
    """``bench_meta(stage="decode", backend="torch-eager", size="flex1", device="cuda", dtype="fp16",
    flops=199.6e9, frames=1, direction="forward", **extra)``; extra keys are kept in the record."""

    def attach(**kwargs) -> None:
        known = {k: kwargs.pop(k) for k in list(kwargs) if k in record._META_KEYS}
        benchmark.extra_info.update(record.validate_bench_meta(**known))
        benchmark.extra_info.update(kwargs)

    return attach


class WeightsCache:
    """State dicts built once and kept as ``<cache_dir>/<name>.safetensors`` (and in memory per session).

    Put everything that changes the weights into ``name`` (model size, seed, config hash): the cache
    never checks whether ``make`` would now build something else.
    """

    def __init__(self, cache_dir: Path):
        self.cache_dir = cache_dir
        self._memory: dict[str, dict] = {}

    def path(self, name: str) -> Path:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise record.InvalidBenchMetaError(
                f"name={name!r}: expected a file-name-safe key like 'flex1-random-seed0'"
            )
        return self.cache_dir / f"{name}.safetensors"

    def get(self, name: str, make: Callable[[], Mapping]) -> dict:
        """Tensors on the CPU: torch tensors if ``make`` returned torch tensors, else numpy arrays."""
        if name in self._memory:
            return self._memory[name]
        path = self.path(name)
        state = None
        if path.exists():
            try:
                state = _load_safetensors(path)
            except Exception as err:  # a truncated or foreign file: rebuild rather than fail the run
                print(f"\n[bench] cache {path.name} unreadable ({err}); rebuilding", file=sys.stderr)
        if state is None:
            state = dict(make())
            _save_safetensors(path, state)
        self._memory[name] = state
        return state


def _save_safetensors(path: Path, state: Mapping) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        _write_safetensors(tmp, state)


def _write_safetensors(tmp: Path, state: Mapping) -> None:
    values = list(state.values())
    if values and all(type(v).__module__ == "numpy" for v in values):
        from safetensors.numpy import save_file

        save_file({k: v for k, v in state.items()}, str(tmp), metadata={"format": "np"})
    else:
        from safetensors.torch import save_file

        seen: set[int] = set()
        tensors = {}
        for key, value in state.items():
            t = value.detach().to("cpu").contiguous()
            ptr = t.untyped_storage().data_ptr()
            tensors[key] = t.clone() if ptr in seen else t  # safetensors refuses shared storage
            seen.add(ptr)
        save_file(tensors, str(tmp), metadata={"format": "pt"})


def _load_safetensors(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        fmt = (f.metadata() or {}).get("format", "pt")
    if fmt == "np":
        from safetensors.numpy import load_file
    else:
        from safetensors.torch import load_file
    return load_file(str(path))


@pytest.fixture(scope="session")
def weights_cache() -> WeightsCache:
    return WeightsCache(CACHE_DIR)


@pytest.fixture(scope="session")
def cuda_device():
    """``torch.device("cuda")``, or skip the case saying why there is none."""
    try:
        import torch
    except ImportError:
        pytest.skip("torch is not installed")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device (torch.cuda.is_available() is False)")
    return torch.device("cuda")


# ---------------------------------------------------------------------------------------------
# Memory probes around each test call
# ---------------------------------------------------------------------------------------------
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _proc_status_kib(field: str) -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_peak_rss() -> bool:
    """Linux ≥ 4.0: writing 5 to clear_refs resets VmHWM to the current RSS, giving a per-case peak."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


class _MemoryProbe:
    def __init__(self) -> None:
        self.per_case = _reset_peak_rss()
        self.rss_before = _proc_status_kib("VmRSS")
        torch = sys.modules.get("torch")
        self.cuda = bool(torch is not None and torch.cuda.is_available())
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def finish(self) -> dict:
        hwm = _proc_status_kib("VmHWM")
        if hwm is not None and self.per_case:
            peak, note = hwm / 1024, "VmHWM during the case (reset before it)"
        else:  # ru_maxrss: KiB on Linux, bytes on macOS; the process-wide peak so far
            scale = 1 if sys.platform == "darwin" else 1024
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
            note = "process peak so far (ru_maxrss); per-case reset unavailable"
        device_peak = None
        torch = sys.modules.get("torch")  # may have been imported by this very case
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            device_peak = torch.cuda.max_memory_allocated() / 2**20
        return {
            "host_peak_rss_mib": peak,
            "host_rss_before_mib": None if self.rss_before is None else self.rss_before / 1024,
            "host_mem_note": note,
            "device_peak_mib": device_peak,
        }


# ---------------------------------------------------------------------------------------------
# The run recorder: progress lines and the history file
# ---------------------------------------------------------------------------------------------
class _RunRecorder:
    def __init__(self, config: pytest.Config):
        self.config = config
        default = os.environ.get("FLEXAVATAR_BENCH_HISTORY", str(DEFAULT_HISTORY))
        target = str(config.getoption("--bench-history", default=default))
        self.history_dir = None if target.lower() in ("none", "off", "") else Path(target)
        self.started = record.utc_now()
        self.t0 = time.perf_counter()
        self.total = 0
        self.done = 0
        self.cases: list[dict] = []
        self.memory: dict[str, dict] = {}
        self.machine: dict | None = None
        self.path: Path | None = None

    # progress --------------------------------------------------------------------------------
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.total = len(session.items)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item: pytest.Item):
        probe = _MemoryProbe() if "benchmark" in getattr(item, "fixturenames", ()) else None
        yield
        if probe is not None:
            self.memory[item.nodeid] = probe.finish()

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        finished = (report.when == "call") or (report.when == "setup" and not report.passed)
        if not finished:
            return
        self.done += 1
        line = f"[{self.done}/{self.total}] {report.nodeid}"
        if report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            line += f"  skipped: {reason.removeprefix('Skipped: ')}"
        elif report.failed:
            line += f"  FAILED ({report.when})"
        else:
            case = next((c for c in reversed(self.cases) if c["id"] == report.nodeid), None)
            if case is not None:
                lat = case["latency_ms"]
                line += f"  p50 {lat['p50']:.3g} ms  p99 {lat['p99']:.3g} ms  {case['fps']:.4g} fps"
        line += f"  ({time.perf_counter() - self.t0:.0f} s)"
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            if getattr(reporter._tw, "width_of_current_line", 0):  # -q prints dots without a file prefix
                reporter.write("\n")
            reporter.write_line(line)

    # records ---------------------------------------------------------------------------------
    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call):
        outcome = yield
        report = outcome.get_result()
        if report.when != "call" or not report.passed:
            return
        fixture = getattr(item, "funcargs", {}).get("benchmark")
        stats = getattr(fixture, "stats", None)
        if stats is None or fixture.has_error or not stats.stats.data:
            return  # --benchmark-disable, or the benchmark fixture was not called
        if self.machine is None:
            self.machine = record.machine_info()
        self.cases.append(
            record.case_record(
                case_id=item.nodeid,
                name=item.name,
                group=stats.group,
                timings_s=list(stats.stats.data),
                extra_info=dict(stats.extra_info),
                machine=self.machine,
                **self.memory.pop(item.nodeid, {}),
            )
        )
        self._write(complete=False)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.cases:
            self._write(complete=True)
            reporter = self.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None and self.path is not None:
                reporter.write("\n")
                reporter.write_line(f"[bench] {len(self.cases)} cases recorded in {self.path}")

    def _write(self, *, complete: bool) -> None:
        if self.history_dir is None:
            return
        assert self.machine is not None
        if self.path is None:
            self.path = self.history_dir / record.run_file_name(self.started, self.machine["id"])
        bs = getattr(self.config, "_benchmarksession", None)
        options = getattr(bs, "options", {}) or {}
        run = {
            "kind": record.RECORD_KIND,
            "schema": record.SCHEMA_VERSION,
            "run_id": self.path.stem,
            "started_utc": self.started.isoformat(),
            "finished_utc": record.utc_now().isoformat(),
            "complete": complete,
            "machine": self.machine,
            "packages": record.package_versions(),
            "git": record.git_info(REPO_ROOT),
            "pytest_args": [_relative_to_repo(str(a)) for a in self.config.invocation_params.args],
            "benchmark_options": {
                k: (float(v) if k in ("max_time", "min_time") else v)
                for k, v in options.items()
                if k in ("max_time", "min_time", "min_rounds", "warmup", "warmup_iterations")
            },
            "cases": self.cases,
        }
        record.write_json_atomic(self.path, run)


# ---- the FLEX-1 random-weight model shared by the model, runtime and fitting benchmarks ---------------

_TEMPLATE_OBJ = fixtures_dir() / "official_flex" / "gghead_template.obj"


@pytest.fixture(scope="module")
def flex1_model(weights_cache):
    """FLEX-1 with seeded random weights (cached on disk as "flex1-random-seed0"). Template: the official OBJ
    from ../shared when present (58,361 Gaussians), else the synthetic one. Module scope: tests may move it."""
    from flexavatar.config import FLEX1
    from flexavatar.model import FlexAvatarModel, init_random_weights
    from flexavatar.template import Template

    if _TEMPLATE_OBJ.is_file():
        template = Template.from_obj(_TEMPLATE_OBJ, FLEX1.res_head_tokens, FLEX1.res_gaussian_grid)
    else:
        template = Template.synthetic(FLEX1.res_head_tokens, FLEX1.res_gaussian_grid)

    def make():
        model = FlexAvatarModel(FLEX1, template)
        init_random_weights(model.network, seed=0)
        return model.official_state_dict()

    state = weights_cache.get("flex1-random-seed0", make)
    return FlexAvatarModel.from_checkpoint(state, template=template)


def _relative_to_repo(arg: str) -> str:
    """Record paths inside the repo relative to it: no machine paths in the committed history."""
    root = str(Path(__file__).resolve().parents[1])
    return "." + arg[len(root):] if arg.startswith(root) else arg


@pytest.fixture(scope="module")
def flex1_bundle(weights_cache, flex1_model) -> Path:
    """The FLEX-1 bundle of flex1_model's cached weights (runtime and C++ runtime benchmarks), exported once into
    benchmarks/.cache and reused while its files verify (sizes), it holds exactly these weights (the
    checkpoint's sha256) and the model and exporter sources are those that wrote it (a code change re-exports:
    the graphs depend on it). CPU machine: fp32 ONNX + OpenVINO, and the int8 decoders (CPU files). CUDA machine:
    fp32 + fp16 ONNX only (the export's CPU parity checks dominate its time; OpenVINO is a CPU engine, measured on CPU
    machines), and there also the decoders with ONNX Runtime's fused kernels (target onnx-ort: the CUDA runtime's
    default)."""
    import shutil

    import torch

    from flexavatar.bundle import Bundle, BundleError, sha256_file
    from flexavatar.export import export_bundle
    from flexavatar.export.exporter import DEFAULT_OPSET

    gpu = torch.cuda.is_available()
    precisions, targets = ((("fp32", "fp16"), ("onnx", "onnx-ort")) if gpu
                           else (("fp32", "int8"), ("onnx", "openvino")))
    checkpoint = weights_cache.path("flex1-random-seed0")             # written by flex1_model's weights_cache.get
    tag = "obj" if _TEMPLATE_OBJ.is_file() else "synthetic"
    name = f"bundle-flex1-random-seed0-{tag}-{'-'.join(precisions + targets)}-opset{DEFAULT_OPSET}"
    folder = checkpoint.parent / name
    stamp = folder / ".exported_by"                                   # not a bundle file: the manifest ignores it
    sources = _export_sources_sha256()
    try:
        if (Bundle.open(folder, verify="size").manifest.model.checkpoint_sha256 == sha256_file(checkpoint)
                and stamp.is_file() and stamp.read_text() == sources):
            return folder
    except BundleError:
        pass
    shutil.rmtree(folder, ignore_errors=True)
    export_bundle(checkpoint, folder, template=flex1_model.template, precisions=precisions, targets=targets,
                  force=True, progress=lambda msg: print(msg, flush=True))
    stamp.write_text(sources)
    return folder


def _export_sources_sha256() -> str:
    """sha256 over the sources that decide a bundle's graphs: the model package and the exporter."""
    import hashlib

    import flexavatar
    import flexavatar.export

    digest = hashlib.sha256()
    for package in (flexavatar, flexavatar.export):
        for path in sorted(Path(package.__file__).parent.glob("*.py")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()
