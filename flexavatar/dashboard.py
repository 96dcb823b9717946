"""Benchmark history records and the latency dashboard.

Two halves of one file format:

* the *write* side, used by ``benchmarks/conftest.py``: turn one pytest-benchmark case into a small
  record (latency percentiles, fps, memory, FLOPs, fraction of the device's peak) and describe the
  machine (CPU, GPU, package versions, git commit);
* the *read* side, ``flexavatar-dashboard [HISTORY] -o dashboard.html``: validate every run file in
  the history folder and render one self-contained HTML page (inline SVG + a little inline JS; no
  network at view time).

A history file is one JSON object per benchmark run (``SCHEMA_VERSION``); see ``benchmarks/README.md``.
Nothing here imports torch at module import time.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import hashlib
import html
import json
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from .files import atomic_open

SCHEMA_VERSION = 1
RECORD_KIND = "flexavatar-benchmark-run"
# Canonical stage names (benchmarks may use others; the dashboard orders these first).
STAGES = ("encode", "decode", "rasterize", "whole_frame", "export")
DIRECTIONS = ("forward", "backward", "forward+backward")
DTYPES = ("fp32", "tf32", "fp16", "bf16", "int8")
_LABEL_RE = re.compile(r"^[a-z0-9][a-z0-9_.+-]*$")


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------
class BenchmarkHistoryError(Exception):
    """Base class of everything this module raises on bad input."""


class InvalidBenchMetaError(BenchmarkHistoryError, ValueError):
    """A benchmark attached metadata that does not fit the record (argument named in the message)."""


class HistoryError(BenchmarkHistoryError):
    """A history file or folder cannot be used. ``path`` names it, ``problem`` says why."""

    def __init__(self, path: Path | str, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class MissingHistoryError(HistoryError, FileNotFoundError):
    """The history folder/file does not exist or holds no run files."""


class MalformedHistoryError(HistoryError, ValueError):
    """A run file is not valid JSON or does not follow the schema."""


# ---------------------------------------------------------------------------------------------
# Write side: statistics, peaks, machine description
# ---------------------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """q-th percentile (0..100) with linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be within [0, 100], got {q}")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def latency_summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """Per-call times in seconds → mean/stddev/min/p50/p95/p99/max in milliseconds."""
    if not seconds:
        raise ValueError("no timings")
    n = len(seconds)
    mean = sum(seconds) / n
    var = sum((s - mean) ** 2 for s in seconds) / (n - 1) if n > 1 else 0.0
    ms = 1e3
    return {
        "mean": mean * ms,
        "stddev": math.sqrt(var) * ms,
        "min": min(seconds) * ms,
        "p50": percentile(seconds, 50) * ms,
        "p95": percentile(seconds, 95) * ms,
        "p99": percentile(seconds, 99) * ms,
        "max": max(seconds) * ms,
    }


@dataclasses.dataclass(frozen=True)
class GpuPeak:
    """Vendor datasheet peaks (dense, no sparsity, boost clock), FLOP/s per dtype."""

    pattern: str  # regex searched in the device name; first match in GPU_PEAKS wins
    label: str
    flops: Mapping[str, float]


def _tensor_peaks(fp16: float, tf32: float | None, fp32: float) -> dict[str, float]:
    peaks = {"fp16": fp16, "bf16": fp16, "fp32": fp32}
    if tf32 is not None:
        peaks["tf32"] = tf32
    return peaks


# Order matters: more specific names first ("H100 PCIe" before "H100", "L40S" before "L4").
# fp32 is the non-tensor-core FMA peak (what fp32 matmuls get without TF32).
GPU_PEAKS: tuple[GpuPeak, ...] = (
    GpuPeak(r"H100.*PCIe", "H100 PCIe", _tensor_peaks(756e12, 378e12, 51.2e12)),
    GpuPeak(r"H100.*NVL|H200.*NVL", "H100/H200 NVL", _tensor_peaks(835e12, 418e12, 60e12)),
    GpuPeak(r"H100|H200|GH200", "H100/H200 SXM", _tensor_peaks(989.4e12, 494.7e12, 66.9e12)),
    GpuPeak(r"A100", "A100", _tensor_peaks(312e12, 156e12, 19.5e12)),
    GpuPeak(r"L40S", "L40S", _tensor_peaks(362.05e12, 183e12, 91.6e12)),
    GpuPeak(r"\bL4\b", "L4", _tensor_peaks(121e12, 60e12, 30.3e12)),
    GpuPeak(r"RTX 4090", "RTX 4090", _tensor_peaks(165.2e12, 82.6e12, 82.6e12)),
    GpuPeak(r"\bT4\b", "T4", _tensor_peaks(65e12, None, 8.1e12)),
)


def gpu_peak_flops(gpu_name: str, dtype: str) -> tuple[float | None, str]:
    """(peak FLOP/s or None, where it came from / why it is unknown)."""
    for peak in GPU_PEAKS:
        if re.search(peak.pattern, gpu_name):
            if dtype in peak.flops:
                return peak.flops[dtype], f"datasheet {peak.label} {dtype} dense"
            return None, f"no {dtype} peak in the table for {peak.label}"
    return None, f"GPU {gpu_name!r} is not in the peak table (flexavatar.dashboard.GPU_PEAKS)"


def _cpu_flags_and_model() -> tuple[str, set[str], str, float | None, int | None]:
    """(model name, ISA flags, vendor, MHz, physical cores) from /proc/cpuinfo (Linux); best effort."""
    model, vendor, mhz = platform.processor() or platform.machine(), "", None
    flags: set[str] = set()
    cores: set[tuple[str, str]] = set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags, vendor, mhz, None
    phys = core = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name":
            model = value
        elif key == "vendor_id":
            vendor = value
        elif key == "cpu MHz" and mhz is None:
            try:
                mhz = float(value)
            except ValueError:
                pass
        elif key == "flags" and not flags:
            flags = set(value.split())
        elif key == "physical id":
            phys = value
        elif key == "core id":
            core = value
            cores.add((phys, core))
    return model, flags, vendor, mhz, (len(cores) or None)


def cpu_peak_fp32(
    cores: int | None, mhz: float | None, flags: set[str], vendor: str
) -> tuple[float | None, str]:
    """Estimated fp32 peak: physical cores × clock × FLOP/cycle/core (2 FMA pipes × SIMD lanes × 2).

    The clock is the one /proc/cpuinfo reports now (no turbo knowledge), so this is an estimate.
    """
    if not cores or not mhz:
        return None, "unknown core count or clock (needs /proc/cpuinfo)"
    if "avx512f" in flags and vendor == "GenuineIntel":
        per_cycle, isa = 64, "AVX-512, 2 FMA"
    elif "avx512f" in flags or ("avx2" in flags and "fma" in flags):
        per_cycle, isa = 32, "AVX2-width, 2 FMA"  # AMD Zen 4 runs AVX-512 as 2×256-bit
    elif "asimd" in flags:
        per_cycle, isa = 16, "NEON, 2 FMA"
    else:
        per_cycle, isa = 8, "SSE"
    peak = cores * mhz * 1e6 * per_cycle
    return peak, f"estimate: {cores} cores × {mhz / 1e3:.2f} GHz × {per_cycle} FLOP/cycle ({isa})"


def _run(cmd: Sequence[str], cwd: Path | None = None, timeout: float = 10.0) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(
            list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def gpu_info() -> dict | None:
    """GPU 0: name, driver, memory (nvidia-smi), else torch if it is already imported; None if none."""
    smi = _run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader,nounits"]
    )
    if smi:
        rows = [[c.strip() for c in line.split(",")] for line in smi.splitlines() if line.strip()]
        if rows and len(rows[0]) == 3:
            name, driver, mem = rows[0]
            return {
                "name": name,
                "driver": driver,
                "memory_mib": float(mem) if mem.replace(".", "", 1).isdigit() else None,
                "count": len(rows),
                "source": "nvidia-smi",
            }
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return {
            "name": props.name,
            "driver": None,
            "memory_mib": props.total_memory / 2**20,
            "count": torch.cuda.device_count(),
            "source": "torch",
        }
    return None


_PACKAGES = (
    "flexavatar", "torch", "numpy", "safetensors", "onnx", "onnxruntime", "onnxruntime-gpu",
    "openvino", "triton", "pybind11", "pytest", "pytest-benchmark",
)  # fmt: skip


def package_versions() -> dict[str, str]:
    from importlib import metadata

    versions: dict[str, str] = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    torch = sys.modules.get("torch")
    if torch is not None:
        versions["torch.version.cuda"] = str(torch.version.cuda)
    return versions


def git_info(repo: Path) -> dict:
    """Commit of ``repo``; FLEXAVATAR_GIT_COMMIT overrides (copies of a tree without .git)."""
    env_commit = os.environ.get("FLEXAVATAR_GIT_COMMIT")
    if env_commit:
        dirty_env = os.environ.get("FLEXAVATAR_GIT_DIRTY")
        return {
            "commit": env_commit,
            "short": env_commit[:8],
            "dirty": None if dirty_env is None else dirty_env == "1",
            "source": "env FLEXAVATAR_GIT_COMMIT",
        }
    commit = _run(["git", "rev-parse", "HEAD"], cwd=repo)
    if not commit:
        return {"commit": None, "short": None, "dirty": None, "source": "no git repository"}
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo)
    return {"commit": commit, "short": commit[:8], "dirty": bool(status), "source": "git"}


def machine_info() -> dict:
    """Who ran the benchmarks. ``id`` hashes the hardware (not the host name), so ephemeral cloud
    machines of the same kind share one series on the dashboard."""
    model, flags, vendor, mhz, phys_cores = _cpu_flags_and_model()
    threads = os.cpu_count() or 0
    try:
        threads_usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        threads_usable = threads
    cores = phys_cores or threads_usable
    peak, peak_note = cpu_peak_fp32(cores, mhz, flags, vendor)
    gpu = gpu_info()
    key = f"{model}|{threads}|{gpu['name'] if gpu else '-'}"
    label = f"{model} ({threads_usable} threads)"
    if gpu:
        label = f"{gpu['name']} · {label}"
    return {
        "id": hashlib.sha256(key.encode()).hexdigest()[:8],
        "label": label,
        "hostname": socket.gethostname(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu": {
            "model": model,
            "threads": threads,
            "threads_usable": threads_usable,
            "physical_cores": phys_cores,
            "mhz": mhz,
            "peak_flops_fp32": peak,
            "peak_note": peak_note,
        },
        "gpu": gpu,
    }


def peak_flops_for(device: str, dtype: str, machine: Mapping) -> tuple[float | None, str]:
    """Peak FLOP/s of the device a case ran on, with its source (or why it is unknown)."""
    if device.startswith("cuda"):
        gpu = machine.get("gpu")
        if not gpu:
            return None, "case ran on CUDA but no GPU was detected"
        return gpu_peak_flops(gpu["name"], dtype)
    if device == "cpu":
        cpu = machine.get("cpu") or {}
        if dtype != "fp32":
            return None, f"CPU peak is only estimated for fp32 (case dtype {dtype})"
        if cpu.get("peak_flops_fp32") is None:
            return None, cpu.get("peak_note", "CPU peak unknown")
        return cpu["peak_flops_fp32"], cpu["peak_note"]
    return None, f"no peak known for device {device!r}"


def validate_bench_meta(
    *,
    stage: str,
    backend: str,
    size: str,
    device: str = "cpu",
    dtype: str = "fp32",
    flops: float | None = None,
    frames: int = 1,
    direction: str = "forward",
) -> dict:
    """Check what a benchmark attaches through the ``bench_meta`` fixture; typed errors name the argument."""
    for arg, value in (("stage", stage), ("backend", backend), ("size", size)):
        if not isinstance(value, str) or not _LABEL_RE.match(value):
            raise InvalidBenchMetaError(
                f"{arg}={value!r}: expected a lowercase label like 'decode', 'torch-eager', 'flex1'"
            )
    if not isinstance(device, str) or not re.match(r"^(cpu|cuda(:\d+)?|[a-z]+)$", device):
        raise InvalidBenchMetaError(f"device={device!r}: expected 'cpu', 'cuda' or 'cuda:N'")
    if dtype not in DTYPES:
        raise InvalidBenchMetaError(f"dtype={dtype!r}: expected one of {DTYPES}")
    if direction not in DIRECTIONS:
        raise InvalidBenchMetaError(f"direction={direction!r}: expected one of {DIRECTIONS}")
    if flops is not None and (
        isinstance(flops, bool) or not isinstance(flops, (int, float)) or not flops > 0 or math.isinf(flops)
    ):
        raise InvalidBenchMetaError(f"flops={flops!r}: expected a positive finite FLOP count per call or None")
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise InvalidBenchMetaError(f"frames={frames!r}: expected a positive int (frames per call)")
    return {
        "stage": stage,
        "backend": backend,
        "size": size,
        "device": device,
        "dtype": dtype,
        "flops": None if flops is None else float(flops),
        "frames": frames,
        "direction": direction,
    }


_META_KEYS = ("stage", "backend", "size", "device", "dtype", "flops", "frames", "direction")


def case_record(
    *,
    case_id: str,
    name: str,
    group: str | None,
    timings_s: Sequence[float],
    extra_info: Mapping,
    machine: Mapping,
    host_peak_rss_mib: float | None = None,
    host_rss_before_mib: float | None = None,
    host_mem_note: str | None = None,
    device_peak_mib: float | None = None,
) -> dict:
    """One benchmark case → its history record. ``timings_s`` are seconds per call (one per round)."""
    meta = {k: extra_info[k] for k in _META_KEYS if k in extra_info}
    stage = meta.get("stage") or group or name.split("[")[0].removeprefix("test_")
    backend = meta.get("backend") or (name.split("[", 1)[1].rstrip("]") if "[" in name else "default")
    device = meta.get("device", "cpu")
    dtype = meta.get("dtype", "fp32")
    frames = int(meta.get("frames", 1))
    flops = meta.get("flops")
    latency = latency_summary_ms(timings_s)
    mean_s = latency["mean"] / 1e3
    peak, peak_source = peak_flops_for(device, dtype, machine)
    achieved = flops / mean_s if flops and mean_s > 0 else None
    fraction = achieved / peak if achieved is not None and peak else None
    floor_ms = flops / peak * 1e3 if flops and peak else None
    if not flops:
        peak_source = f"{peak_source}; no FLOP count attached" if peak else peak_source
    return {
        "id": case_id,
        "name": name,
        "group": group,
        "stage": str(stage),
        "backend": str(backend),
        "size": str(meta.get("size", "")),
        "device": device,
        "dtype": dtype,
        "direction": meta.get("direction", "forward"),
        "frames_per_call": frames,
        "rounds": len(timings_s),
        "latency_ms": latency,
        "fps": frames / mean_s if mean_s > 0 else None,
        "flops_per_call": flops,
        "achieved_flops": achieved,
        "peak_flops": peak,
        "peak_source": peak_source,
        "fraction_of_peak": fraction,
        "floor_ms": floor_ms,
        "host_peak_rss_mib": host_peak_rss_mib,
        "host_rss_before_mib": host_rss_before_mib,
        "host_mem_note": host_mem_note,
        # torch's allocator peak means something only for a case that ran on the GPU
        "device_peak_mib": device_peak_mib if device.startswith("cuda") else None,
        "extra": {k: v for k, v in extra_info.items() if k not in _META_KEYS},
    }


def utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def run_file_name(started: _dt.datetime, machine_id: str) -> str:
    return f"{started.strftime('%Y%m%dT%H%M%SZ')}_{machine_id}.json"


def _compact(obj: object) -> object:
    """Floats to 6 significant digits (keeps run files small; timings are not more precise)."""
    if isinstance(obj, float):
        return float(f"{obj:.6g}") if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _compact(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_compact(v) for v in obj]
    return obj


def write_json_atomic(path: Path, obj: object) -> None:
    """Write then rename, so an interrupted run never leaves half a file in the history."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(_compact(obj), indent=1, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------
# Read side: validated runs
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    stage: str
    backend: str
    size: str
    device: str
    dtype: str
    direction: str
    rounds: int
    latency_ms: Mapping[str, float]
    fps: float | None
    flops_per_call: float | None
    frames_per_call: int
    peak_flops: float | None
    peak_source: str | None
    fraction_of_peak: float | None
    floor_ms: float | None
    host_peak_rss_mib: float | None
    device_peak_mib: float | None
    psnr_db: float | None = None    # fidelity of the case's output (extra_info "psnr_db": whole-frame records)

    @property
    def key(self) -> str:
        """Identity of a case across runs: stage · backend · size (· dtype/direction when not default)."""
        parts = [self.stage, self.backend, self.size or "-"]
        if self.dtype != "fp32":
            parts.append(self.dtype)
        if self.direction != "forward":
            parts.append(self.direction)
        return " · ".join(parts)

    @property
    def series(self) -> str:
        """Name within one stage's chart (the key without the stage)."""
        return self.key.split(" · ", 1)[1]


@dataclasses.dataclass(frozen=True)
class Run:
    path: Path
    run_id: str
    started: _dt.datetime
    complete: bool
    machine_id: str
    machine_label: str
    gpu_name: str | None
    commit: str | None
    dirty: bool | None
    cases: tuple[Case, ...]

    @property
    def commit_label(self) -> str:
        label = (self.commit or "unknown")[:8]
        return label + ("+" if self.dirty else "")


class _Checker:
    """Reads typed fields out of a parsed run file; errors name the file and the JSON path."""

    _KINDS: dict[str, tuple[type, ...]] = {
        "str": (str,), "int": (int,), "number": (int, float), "bool": (bool,),
        "dict": (dict,), "list": (list,),
    }  # fmt: skip

    def __init__(self, path: Path):
        self.path = path

    def fail(self, where: str, problem: str) -> MalformedHistoryError:
        return MalformedHistoryError(self.path, f"{where}: {problem}")

    def get(self, obj: Mapping, key: str, where: str, kind: str, *, nullable: bool = False):
        at = f"{where}.{key}" if where else key
        if key not in obj:
            raise self.fail(at, f"missing (expected {kind})")
        value = obj[key]
        if value is None and nullable:
            return None
        types = self._KINDS[kind]
        ok = isinstance(value, types) and not (kind in ("int", "number") and isinstance(value, bool))
        if ok and kind == "number" and not math.isfinite(value):
            ok = False
        if not ok:
            expected = kind + (" or null" if nullable else "")
            raise self.fail(at, f"expected {expected}, got {json.dumps(value)[:60]}")
        return value

    def non_negative(self, obj: Mapping, key: str, where: str, *, nullable: bool = False):
        value = self.get(obj, key, where, "number", nullable=nullable)
        if value is not None and value < 0:
            raise self.fail(f"{where}.{key}", f"expected a non-negative number, got {value}")
        return value


def _parse_case(check: _Checker, raw: object, where: str) -> Case:
    if not isinstance(raw, dict):
        raise check.fail(where, "expected an object")
    latency_raw = check.get(raw, "latency_ms", where, "dict")
    latency = {
        q: check.non_negative(latency_raw, q, f"{where}.latency_ms")
        for q in ("mean", "p50", "p95", "p99", "min", "max")
    }
    if not latency["min"] <= latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]:
        raise check.fail(f"{where}.latency_ms", "expected min ≤ p50 ≤ p95 ≤ p99 ≤ max")
    rounds = check.get(raw, "rounds", where, "int")
    if rounds < 1:
        raise check.fail(f"{where}.rounds", f"expected ≥ 1, got {rounds}")
    opt = dict(nullable=True)
    return Case(
        id=check.get(raw, "id", where, "str"),
        stage=check.get(raw, "stage", where, "str"),
        backend=check.get(raw, "backend", where, "str"),
        size=check.get(raw, "size", where, "str"),
        device=check.get(raw, "device", where, "str"),
        dtype=check.get(raw, "dtype", where, "str"),
        direction=check.get(raw, "direction", where, "str"),
        rounds=rounds,
        latency_ms=latency,
        fps=check.non_negative(raw, "fps", where, **opt),
        flops_per_call=check.non_negative(raw, "flops_per_call", where, **opt),
        frames_per_call=check.get(raw, "frames_per_call", where, "int"),
        peak_flops=check.non_negative(raw, "peak_flops", where, **opt),
        peak_source=check.get(raw, "peak_source", where, "str", **opt),
        fraction_of_peak=check.non_negative(raw, "fraction_of_peak", where, **opt),
        floor_ms=check.non_negative(raw, "floor_ms", where, **opt),
        host_peak_rss_mib=check.non_negative(raw, "host_peak_rss_mib", where, **opt),
        device_peak_mib=check.non_negative(raw, "device_peak_mib", where, **opt),
        psnr_db=_psnr_of(raw.get("extra")),
    )


def _psnr_of(extra: object) -> float | None:
    """extra_info's "psnr_db" when it is a finite number (free-form extras are never an error)."""
    value = extra.get("psnr_db") if isinstance(extra, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        else None


def parse_run(path: Path, raw: object) -> Run:
    """Validate one parsed run file; MalformedHistoryError names the first problem."""
    check = _Checker(path)
    if not isinstance(raw, dict):
        raise check.fail("(top level)", f"expected a JSON object, got {type(raw).__name__}")
    if raw.get("kind") != RECORD_KIND:
        raise check.fail("kind", f"expected {RECORD_KIND!r}, got {raw.get('kind')!r} (not a run file)")
    schema = check.get(raw, "schema", "", "int")
    if schema != SCHEMA_VERSION:
        raise check.fail("schema", f"version {schema} is not supported (expected {SCHEMA_VERSION})")
    started_text = check.get(raw, "started_utc", "", "str")
    try:
        started = _dt.datetime.fromisoformat(started_text.replace("Z", "+00:00"))
    except ValueError:
        raise check.fail("started_utc", f"expected an ISO 8601 time, got {started_text!r}") from None
    if started.tzinfo is None:
        started = started.replace(tzinfo=_dt.timezone.utc)
    machine = check.get(raw, "machine", "", "dict")
    gpu = check.get(machine, "gpu", "machine", "dict", nullable=True)
    git = check.get(raw, "git", "", "dict")
    cases_raw = check.get(raw, "cases", "", "list")
    cases = tuple(_parse_case(check, c, f"cases[{i}]") for i, c in enumerate(cases_raw))
    return Run(
        path=path,
        run_id=check.get(raw, "run_id", "", "str"),
        started=started,
        complete=check.get(raw, "complete", "", "bool"),
        machine_id=check.get(machine, "id", "machine", "str"),
        machine_label=check.get(machine, "label", "machine", "str"),
        gpu_name=check.get(gpu, "name", "machine.gpu", "str") if gpu else None,
        commit=check.get(git, "commit", "git", "str", nullable=True),
        dirty=check.get(git, "dirty", "git", "bool", nullable=True),
        cases=cases,
    )


def load_run(path: Path) -> Run:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingHistoryError(path, "file does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise MalformedHistoryError(path, f"cannot be read ({err})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise MalformedHistoryError(
            path, f"not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})"
        ) from None
    return parse_run(path, raw)


def history_files(sources: Iterable[Path]) -> list[Path]:
    """JSON files named by ``sources`` (folders are searched, files taken as they are)."""
    files: list[Path] = []
    for source in sources:
        if source.is_dir():
            found = sorted(p for p in source.glob("*.json") if not p.name.startswith("."))
            if not found:
                raise MissingHistoryError(source, "no run files (*.json) in this folder")
            files.extend(found)
        elif source.exists():
            files.append(source)
        else:
            raise MissingHistoryError(source, "does not exist (expected a history folder or run file)")
    return files


def load_history(
    sources: Iterable[Path], *, on_invalid: Callable[[HistoryError], None] | None = None
) -> list[Run]:
    """All runs, oldest first. A bad file raises, unless ``on_invalid`` is given (then it is told and skipped)."""
    runs: list[Run] = []
    for path in history_files(sources):
        try:
            runs.append(load_run(path))
        except HistoryError as err:
            if on_invalid is None:
                raise
            on_invalid(err)
    if not runs:
        raise MissingHistoryError(Path(", ".join(str(s) for s in sources)), "no valid run files")
    return sorted(runs, key=lambda r: r.started)


# ---------------------------------------------------------------------------------------------
# Targets (stated in the project issues)
# ---------------------------------------------------------------------------------------------
FLEX1_DECODE_FLOPS = 199.6e9  # per decoded frame
FLEX1_ENCODE_FLOPS = 181.7e9 + 47e9  # encoder + DINOv2 features, per encoded image
REFERENCE_BACKEND = "reference"  # the PyTorch reference rasterizer
# the C++ CPU rasterizer: its kernels registry name (bench_rasterizer), bench_native's label, and an older label
CPP_CPU_BACKENDS = ("cpu", "native-cpu", "cpp-cpu")


@dataclasses.dataclass(frozen=True)
class TargetResult:
    target: str
    measured: str
    met: bool | None  # None: not decidable (missing counterpart)


def _is_flex1(case: Case) -> bool:
    return case.size.startswith("flex1")


def _h100_class(run: Run) -> bool:
    return bool(run.gpu_name and re.search(r"H100|H200", run.gpu_name))


def _target_whole_frame(case: Case, run: Run) -> TargetResult | None:
    if case.stage != "whole_frame" or not case.device.startswith("cuda") or case.dtype != "fp16":
        return None
    if not _h100_class(run) or case.fps is None:
        return None
    return TargetResult("≥ 500 fps (H100-class fp16)", f"{case.fps:,.0f} fps", case.fps >= 500)


EAGER_WHOLE_FRAME = "torch-eager+cuda"  # bench_runtime's PyTorch eager fp32 pipeline on CUDA


def _speedup_over(case: Case, run: Run, label: str, missing: str, minimum: float, digits: int,
                  **baseline: str) -> TargetResult:
    """case's p50 per frame against the baseline case of the same run (same stage and size, the given fields)."""
    base = next((c for c in run.cases if c.stage == case.stage and c.size == case.size
                 and all(getattr(c, k) == v for k, v in baseline.items())), None)
    if base is None:
        return TargetResult(label, missing, None)
    ratio = (base.latency_ms["p50"] / base.frames_per_call) / (case.latency_ms["p50"] / case.frames_per_call)
    return TargetResult(label, f"{ratio:.{digits}f}×", ratio >= minimum)


def _target_whole_frame_vs_eager(case: Case, run: Run) -> TargetResult | None:
    """The runtime's fp16 whole frame against the PyTorch eager fp32 pipeline of the same run (issue #7: ≥ 3×)."""
    if case.stage != "whole_frame" or not case.device.startswith("cuda") or case.dtype != "fp16":
        return None
    if case.backend.startswith("torch-eager") or case.backend.startswith(("cpp-", "python-")):
        return None
    return _speedup_over(case, run, "≥ 3× PyTorch eager fp32", "no PyTorch eager case in this run", 3, 2,
                         backend=EAGER_WHOLE_FRAME, dtype="fp32", device=case.device)


def _target_rasterize_gpu(case: Case, run: Run) -> TargetResult | None:
    if case.stage != "rasterize" or not case.device.startswith("cuda") or case.direction != "forward":
        return None
    if case.backend == REFERENCE_BACKEND or not _h100_class(run) or not _is_flex1(case):
        return None
    p50 = case.latency_ms["p50"] / case.frames_per_call
    return TargetResult("≤ 0.5 ms fwd (H100)", f"{p50:.3f} ms", p50 <= 0.5)


def _target_cpp_speedup(case: Case, run: Run) -> TargetResult | None:
    if case.stage != "rasterize" or case.backend not in CPP_CPU_BACKENDS or case.device != "cpu":
        return None
    return _speedup_over(case, run, "≥ 20× reference", "no reference case in this run", 20, 1,
                         backend=REFERENCE_BACKEND, device="cpu", direction=case.direction)


def _flops_target(stage: str, stated: float) -> Callable[[Case, Run], TargetResult | None]:
    def check(case: Case, run: Run) -> TargetResult | None:
        if case.stage != stage or not _is_flex1(case):
            return None
        label = f"≈ {stated / 1e9:.1f} GFLOP (spec)"
        if case.flops_per_call is None:
            return TargetResult(label, "no FLOP count recorded", None)
        per_frame = case.flops_per_call / case.frames_per_call
        return TargetResult(label, f"{per_frame / 1e9:.1f} GFLOP", abs(per_frame / stated - 1) <= 0.02)

    return check


# Each target looks at one case (and its run); None means "does not apply to this case".
TARGETS: tuple[Callable[[Case, Run], TargetResult | None], ...] = (
    _target_whole_frame,
    _target_whole_frame_vs_eager,
    _target_rasterize_gpu,
    _target_cpp_speedup,
    _flops_target("decode", FLEX1_DECODE_FLOPS),
    _flops_target("encode", FLEX1_ENCODE_FLOPS),
)


SESSION_GAP = _dt.timedelta(hours=6)


def latest_session(runs: list[Run]) -> Run:
    """One machine's runs (oldest first) → its latest session as one run: the newest run and the runs before it of
    the same commit within SESSION_GAP (a GPU session writes one record per benchmark invocation), their cases
    merged, a case id measured twice taken from the newer run. Targets and side-by-side figures read this."""
    latest = runs[-1]
    session = [latest]
    for run in reversed(runs[:-1]):
        if run.commit != latest.commit or latest.started - run.started > SESSION_GAP:
            break
        session.append(run)
    if len(session) == 1:
        return latest
    cases: dict[str, Case] = {}
    for run in reversed(session):                        # oldest first: newer runs overwrite
        cases.update({c.id: c for c in run.cases})
    return dataclasses.replace(latest, started=session[-1].started, complete=all(r.complete for r in session),
                               cases=tuple(cases.values()))


def targets_for(case: Case, run: Run) -> list[TargetResult]:
    return [r for check in TARGETS if (r := check(case, run)) is not None]


# ---------------------------------------------------------------------------------------------
# SVG charts (rendered here; the page's JS only adds tooltips and legend toggles)
# ---------------------------------------------------------------------------------------------
PALETTE = (
    "#4e79a7", "#f28e2b", "#e15759", "#59a14f", "#b07aa1", "#76b7b2",
    "#edc948", "#ff9da7", "#9c755f", "#17becf", "#bcbd22", "#7f3c8d",
)  # fmt: skip
DECODE_COLOR, RASTER_COLOR = "#4e79a7", "#f28e2b"
_FONT = 'font-family="system-ui, -apple-system, Segoe UI, sans-serif"'


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if value == 0:
        return f"0{unit}"
    mag = abs(value)
    if mag >= 100:
        text = f"{value:,.0f}"
    elif mag >= 10:
        text = f"{value:.1f}"
    elif mag >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    return f"{text}{unit}"


def _log_ticks(lo: float, hi: float) -> tuple[float, float, list[float]]:
    """Axis range snapped to decades (or to 1-2-5 steps over ≤ 2 decades) and the ticks inside it."""
    lo = max(lo, 1e-12)
    hi = max(hi, lo * 1.001)
    d_lo, d_hi = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    steps = (1, 2, 5) if d_hi - d_lo <= 2 else (1,)
    candidates = [m * 10.0**d for d in range(d_lo - 1, d_hi + 1) for m in steps]
    axis_lo = max(t for t in candidates if t <= lo * (1 + 1e-9))
    axis_hi = min(t for t in candidates if t >= hi * (1 - 1e-9))
    return axis_lo, axis_hi, [t for t in candidates if axis_lo <= t <= axis_hi]


def _linear_ticks(hi: float) -> tuple[float, list[float]]:
    if hi <= 0:
        hi = 1.0
    raw = hi / 5
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    top = math.ceil(hi / step) * step
    return top, [i * step for i in range(int(round(top / step)) + 1)]


@dataclasses.dataclass
class _Frame:
    """Plot area inside an SVG of width × height."""

    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int

    @property
    def x0(self) -> float:
        return self.left

    @property
    def x1(self) -> float:
        return self.width - self.right

    @property
    def y0(self) -> float:
        return self.height - self.bottom

    @property
    def y1(self) -> float:
        return self.top

    def open(self) -> list[str]:
        return [
            f'<svg viewBox="0 0 {self.width} {self.height}" width="{self.width}" height="{self.height}" '
            f'{_FONT} font-size="11" role="img">',
            f'<rect class="plot-area" x="{self.x0}" y="{self.y1}" width="{self.x1 - self.x0}" '
            f'height="{self.y0 - self.y1}" fill="#ffffff" stroke="#d0d5dd"/>',
        ]


def _y_log_axis(frame: _Frame, lo: float, hi: float, unit: str) -> tuple[list[str], Callable[[float], float]]:
    axis_lo, axis_hi, ticks = _log_ticks(lo, hi)
    span = math.log10(axis_hi) - math.log10(axis_lo)

    def y_of(v: float) -> float:
        v = min(max(v, axis_lo), axis_hi)
        return frame.y0 - (math.log10(v) - math.log10(axis_lo)) / span * (frame.y0 - frame.y1)

    out = []
    for t in ticks:
        y = y_of(t)
        out.append(f'<line x1="{frame.x0}" x2="{frame.x1}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eceff3"/>')
        out.append(
            f'<text x="{frame.x0 - 6}" y="{y + 3.5:.1f}" text-anchor="end" fill="#475467">{_esc(_fmt(t))}</text>'
        )
    out.append(
        f'<text x="14" y="{(frame.y0 + frame.y1) / 2:.1f}" fill="#475467" text-anchor="middle" '
        f'transform="rotate(-90 14 {(frame.y0 + frame.y1) / 2:.1f})">{_esc(unit)} (log)</text>'
    )
    return out, y_of


@dataclasses.dataclass
class _Point:
    x: int
    y: float
    tip: str


@dataclasses.dataclass
class _Series:
    name: str
    color: str
    dashed: bool
    points: list[_Point]


def _legend(series: Sequence[tuple[str, str, bool]]) -> str:
    items = "".join(
        f'<span class="lg" data-series="{_esc(name)}"><i style="background:{color}'
        f'{";opacity:.55" if dashed else ""}"></i>{_esc(name)}</span>'
        for name, color, dashed in series
    )
    return f'<div class="legend">{items}</div>'


def line_chart_svg(categories: Sequence[str], series: Sequence[_Series], unit: str) -> str:
    """Log-y line chart over categorical x (runs in time order)."""
    values = [p.y for s in series for p in s.points if p.y > 0]
    frame = _Frame(width=560, height=300, left=62, right=16, top=14, bottom=80)
    out = frame.open()
    if not values:
        return "\n".join(out + ['<text x="280" y="140" text-anchor="middle">no data</text></svg>'])
    axis, y_of = _y_log_axis(frame, min(values), max(values), unit)
    out += axis
    n = len(categories)
    step = (frame.x1 - frame.x0) / max(n, 1)

    def x_of(i: int) -> float:
        return frame.x0 + step * (i + 0.5)

    every = max(1, math.ceil(n / 10))
    for i, label in enumerate(categories):
        if i % every == 0 or i == n - 1:
            x = x_of(i)
            out.append(
                f'<text x="{x:.1f}" y="{frame.y0 + 14}" text-anchor="end" fill="#475467" font-size="10" '
                f'transform="rotate(-25 {x:.1f} {frame.y0 + 14})">{_esc(label)}</text>'
            )
    for s in series:
        pts = sorted(s.points, key=lambda p: p.x)
        group = [f'<g data-series="{_esc(s.name)}">']
        if len(pts) > 1:
            path = " ".join(f"{x_of(p.x):.1f},{y_of(p.y):.1f}" for p in pts)
            dash = ' stroke-dasharray="5 3"' if s.dashed else ""
            group.append(f'<polyline points="{path}" fill="none" stroke="{s.color}" stroke-width="2"{dash}/>')
        for p in pts:
            group.append(
                f'<circle cx="{x_of(p.x):.1f}" cy="{y_of(p.y):.1f}" r="4" fill="{s.color}" '
                f'stroke="#fff" stroke-width="1" data-tip="{_esc(p.tip)}"/>'
            )
        group.append("</g>")
        out += group
    out.append("</svg>")
    return "\n".join(out)


@dataclasses.dataclass
class _Bar:
    series: str
    color: str
    value: float
    tip: str


def grouped_bar_svg(groups: Sequence[tuple[str, Sequence[_Bar]]], unit: str, width: int = 1120) -> str:
    """Log-y grouped bars: one group per x label, bars side by side within it."""
    values = [b.value for _, bars in groups for b in bars if b.value > 0]
    frame = _Frame(width=width, height=280, left=62, right=16, top=14, bottom=30)
    out = frame.open()
    if not values:
        return "\n".join(out + ['<text x="50%" y="150" text-anchor="middle">no data</text></svg>'])
    axis, y_of = _y_log_axis(frame, min(values) / 1.5, max(values) * 1.2, unit)
    out += axis
    gw = (frame.x1 - frame.x0) / max(len(groups), 1)
    for gi, (label, bars) in enumerate(groups):
        gx = frame.x0 + gi * gw
        bw = min(34.0, (gw * 0.8) / max(len(bars), 1))
        start = gx + (gw - bw * len(bars)) / 2
        for bi, bar in enumerate(bars):
            x, y = start + bi * bw, y_of(bar.value)
            out.append(
                f'<rect data-series="{_esc(bar.series)}" x="{x + 1:.1f}" y="{y:.1f}" width="{bw - 2:.1f}" '
                f'height="{max(frame.y0 - y, 1):.1f}" fill="{bar.color}" data-tip="{_esc(bar.tip)}"/>'
            )
        cx = gx + gw / 2
        out.append(
            f'<text x="{cx:.1f}" y="{frame.y0 + 16}" text-anchor="middle" fill="#344054">'
            f"{_esc(label)}</text>"
        )
    out.append("</svg>")
    return "\n".join(out)


@dataclasses.dataclass
class _StackRow:
    label: str
    decode_ms: float
    raster_ms: float
    measured_ms: float | None
    tip: str


def breakdown_svg(rows: Sequence[_StackRow], width: int = 1120) -> str:
    """Horizontal stacked bars: decode + rasterize per frame, ◆ = measured whole frame."""
    height = 40 + 26 * max(len(rows), 1) + 30
    frame = _Frame(width=width, height=height, left=300, right=24, top=12, bottom=36)
    out = frame.open()
    hi = max([r.decode_ms + r.raster_ms for r in rows] + [r.measured_ms or 0 for r in rows] + [1e-6])
    top, ticks = _linear_ticks(hi * 1.05)

    def x_of(v: float) -> float:
        return frame.x0 + v / top * (frame.x1 - frame.x0)

    for t in ticks:
        x = x_of(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{frame.y1}" y2="{frame.y0}" stroke="#eceff3"/>')
        out.append(f'<text x="{x:.1f}" y="{frame.y0 + 14}" text-anchor="middle" fill="#475467">{_fmt(t)}</text>')
    out.append(
        f'<text x="{(frame.x0 + frame.x1) / 2:.1f}" y="{frame.y0 + 30}" text-anchor="middle" '
        f'fill="#475467">ms per frame (p50)</text>'
    )
    if 2.0 <= top <= 40:  # the 500 fps target only reads well next to GPU-scale bars
        x = x_of(2.0)
        out.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{frame.y1}" y2="{frame.y0}" stroke="#d92d20" '
            f'stroke-dasharray="4 3"/><text x="{x - 4:.1f}" y="{frame.y1 + 11}" fill="#d92d20" '
            'text-anchor="end">500 fps target</text>'
        )
    for i, row in enumerate(rows):
        y = frame.y1 + 10 + i * 26
        out.append(f'<text x="{frame.x0 - 8}" y="{y + 12}" text-anchor="end" fill="#344054">{_esc(row.label)}</text>')
        xd, xr = x_of(row.decode_ms), x_of(row.decode_ms + row.raster_ms)
        tip = _esc(row.tip)
        out.append(
            f'<rect data-series="decode" x="{frame.x0:.1f}" y="{y}" width="{max(xd - frame.x0, 1):.1f}" '
            f'height="17" fill="{DECODE_COLOR}" data-tip="{tip}"/>'
        )
        out.append(
            f'<rect data-series="rasterize" x="{xd:.1f}" y="{y}" width="{max(xr - xd, 1):.1f}" '
            f'height="17" fill="{RASTER_COLOR}" data-tip="{tip}"/>'
        )
        if row.measured_ms is not None:
            xm, ym = x_of(row.measured_ms), y + 8.5
            out.append(
                f'<path data-series="measured whole frame" d="M{xm:.1f},{ym - 7} l6,7 l-6,7 l-6,-7 z" '
                f'fill="#101828" data-tip="{tip}"/>'
            )
    out.append("</svg>")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Page assembly
# ---------------------------------------------------------------------------------------------
def _stage_order(stage: str) -> tuple[int, str]:
    return (STAGES.index(stage) if stage in STAGES else len(STAGES), stage)


def _case_tip(case: Case, run: Run) -> str:
    lat = case.latency_ms
    lines = [
        case.key,
        f"{run.machine_label}",
        f"commit {run.commit_label} · {run.started:%Y-%m-%d %H:%M} UTC",
        f"p50 {_fmt(lat['p50'], ' ms')} · p95 {_fmt(lat['p95'], ' ms')} · p99 {_fmt(lat['p99'], ' ms')}",
        f"mean {_fmt(lat['mean'], ' ms')} · n={case.rounds} rounds",
        f"{_fmt(case.fps, ' fps')}",
    ]
    if case.flops_per_call:
        lines.append(
            f"{case.flops_per_call / 1e9:.1f} GFLOP/call · "
            f"{'%.1f%% of peak' % (100 * case.fraction_of_peak) if case.fraction_of_peak is not None else 'peak unknown'}"
        )
    return "\n".join(lines)


class _Colors:
    """Stable colour per backend across the whole page."""

    def __init__(self, backends: Iterable[str]):
        self.map = {b: PALETTE[i % len(PALETTE)] for i, b in enumerate(sorted(set(backends)))}

    def __call__(self, backend: str) -> str:
        return self.map[backend]


def _latency_figures(machine_runs: Sequence[Run], colors: _Colors, mid: str) -> str:
    categories = [f"{r.commit_label} {r.started:%m-%d %H:%M}" for r in machine_runs]
    stages = sorted({c.stage for r in machine_runs for c in r.cases}, key=_stage_order)
    sizes = sorted({c.size for r in machine_runs for c in r.cases})
    figs = []
    for stage in stages:
        by_series: dict[str, _Series] = {}
        for i, run in enumerate(machine_runs):
            for case in run.cases:
                if case.stage != stage:
                    continue
                s = by_series.setdefault(
                    case.series,
                    _Series(case.series, colors(case.backend), sizes.index(case.size) % 2 == 1, []),
                )
                s.points.append(_Point(i, case.latency_ms["p50"], _case_tip(case, run)))
        series = sorted(by_series.values(), key=lambda s: s.name)
        if len({s.color for s in series}) < len(series):  # one backend, several series: tell them apart
            for k, s in enumerate(series):
                s.color = PALETTE[k % len(PALETTE)]
        figs.append(
            f'<figure class="chart" id="latency-{mid}-{_esc(stage)}" data-stage="{_esc(stage)}">'
            f"<figcaption>{_esc(stage)} — p50 latency per run</figcaption>"
            + line_chart_svg(categories, series, "ms")
            + _legend([(s.name, s.color, s.dashed) for s in series])
            + "</figure>"
        )
    return '<div class="grid2">' + "".join(figs) + "</div>"


def _fps_figure(run: Run, colors: _Colors, mid: str) -> str:
    groups: dict[str, list[_Bar]] = {}
    for case in sorted(run.cases, key=lambda c: (_stage_order(c.stage), c.size, c.dtype, c.direction, c.backend)):
        if case.fps is None:
            continue
        label = " · ".join(
            [case.stage, case.size or "-"]
            + ([case.dtype] if case.dtype != "fp32" else [])
            + ([case.direction] if case.direction != "forward" else [])
        )
        groups.setdefault(label, []).append(
            _Bar(case.backend, colors(case.backend), case.fps, _case_tip(case, run))
        )
    backends = sorted({b.series for bars in groups.values() for b in bars})
    return (
        f'<figure class="chart wide" id="fps-{mid}"><figcaption>fps per backend, side by side '
        f"(latest session, from {run.started:%Y-%m-%d %H:%M} UTC)</figcaption>"
        + grouped_bar_svg(list(groups.items()), "fps")
        + _legend([(b, colors(b), False) for b in backends])
        + "</figure>"
    )


def breakdown_rows(run: Run) -> list[_StackRow]:
    """Decode + rasterize per frame for every decode/rasterizer pair on the same device and size."""
    def per_frame(c: Case) -> float:
        return c.latency_ms["p50"] / c.frames_per_call

    def device_kind(c: Case) -> str:
        return "cuda" if c.device.startswith("cuda") else c.device

    decodes = [c for c in run.cases if c.stage == "decode" and c.direction == "forward"]
    rasters = [c for c in run.cases if c.stage == "rasterize" and c.direction == "forward"]
    wholes = [c for c in run.cases if c.stage == "whole_frame"]
    rows = []
    for d in decodes:
        for r in rasters:
            if device_kind(d) != device_kind(r) or d.size != r.size:
                continue
            measured = next(
                (w for w in wholes if w.size == d.size and w.backend in (f"{d.backend}+{r.backend}", d.backend)
                 and device_kind(w) == device_kind(d)),
                None,
            )  # fmt: skip
            dm, rm = per_frame(d), per_frame(r)
            tip = (
                f"{d.size} on {device_kind(d)}\ndecode {d.backend} ({d.dtype}): {_fmt(dm, ' ms')}\n"
                f"rasterize {r.backend}: {_fmt(rm, ' ms')}\nsum {_fmt(dm + rm, ' ms')} "
                f"→ {_fmt(1e3 / (dm + rm), ' fps')}"
            )
            if measured is not None:
                tip += f"\nmeasured whole frame ({measured.backend}): {_fmt(per_frame(measured), ' ms')}"
            rows.append(
                _StackRow(
                    f"{d.size} · {d.backend} + {r.backend}",
                    dm,
                    rm,
                    per_frame(measured) if measured is not None else None,
                    tip,
                )
            )
    return sorted(rows, key=lambda r: (r.label.split(" · ")[0], r.decode_ms + r.raster_ms))[:24]


def _breakdown_figure(run: Run, mid: str) -> str:
    rows = breakdown_rows(run)
    if not rows:
        return (
            f'<figure class="chart wide" id="breakdown-{mid}"><figcaption>per-frame latency breakdown'
            "</figcaption><p class=\"muted\">This run has no decode and rasterize cases on the same device "
            "and size.</p></figure>"
        )
    return (
        f'<figure class="chart wide" id="breakdown-{mid}"><figcaption>per-frame latency breakdown: '
        "decode + rasterize (latest session)</figcaption>"
        + breakdown_svg(rows)
        + _legend([("decode", DECODE_COLOR, False), ("rasterize", RASTER_COLOR, False)]
                  + ([("measured whole frame", "#101828", False)] if any(r.measured_ms for r in rows) else []))
        + "</figure>"
    )


def _targets_table(run: Run, mid: str) -> str:
    head = (
        "<tr><th>stage</th><th>backend</th><th>size</th><th>device</th><th>p50 / p95 / p99 ms</th>"
        "<th>fps</th><th>GFLOP</th><th>floor ms</th><th>of peak</th><th>MiB host / dev</th>"
        "<th title=\"rendered PSNR vs PyTorch + the reference rasterizer (whole-frame cases)\">PSNR dB</th>"
        "<th>target</th><th>measured</th><th></th></tr>"
    )
    body = []
    for case in sorted(run.cases, key=lambda c: (_stage_order(c.stage), c.size, c.backend, c.direction)):
        results = targets_for(case, run) or [None]
        lat = case.latency_ms
        for k, res in enumerate(results):
            if k == 0:
                stage = case.stage + ("" if case.direction == "forward" else f" ({case.direction})")
                cells = [
                    _esc(stage), _esc(case.backend), _esc(case.size), _esc(f"{case.device} {case.dtype}"),
                    f"{_fmt(lat['p50'])} / {_fmt(lat['p95'])} / {_fmt(lat['p99'])}",
                    _fmt(case.fps), _fmt(case.flops_per_call / 1e9 if case.flops_per_call else None),
                    f'<span title="{_esc(case.peak_source or "")}">{_fmt(case.floor_ms)}</span>',
                    "—" if case.fraction_of_peak is None else f"{100 * case.fraction_of_peak:.1f}%",
                    f"{_fmt(case.host_peak_rss_mib)} / {_fmt(case.device_peak_mib)}",
                    _fmt(case.psnr_db),
                ]  # fmt: skip
            else:
                cells = [""] * 11
            tds = "".join(f"<td>{c}</td>" for c in cells)
            if res is None:
                tds += '<td class="muted">—</td><td></td><td></td>'
            else:
                badge = {True: ("ok", "met"), False: ("bad", "missed"), None: ("na", "n/a")}[res.met]
                tds += (
                    f"<td>{_esc(res.target)}</td><td>{_esc(res.measured)}</td>"
                    f'<td><span class="badge {badge[0]}">{badge[1]}</span></td>'
                )
            body.append(f"<tr>{tds}</tr>")
    return (
        f'<figure class="wide" id="targets-{mid}"><figcaption>latest session against the stated targets '
        f"(from {run.started:%Y-%m-%d %H:%M} UTC, commit {_esc(run.commit_label)}"
        f"{'' if run.complete else ', INCOMPLETE run'}) · floor = FLOPs / device peak (hover for the peak)"
        f'</figcaption><div class="tablewrap"><table><thead>{head}</thead><tbody>{"".join(body)}</tbody>'
        "</table></div></figure>"
    )


_CSS = """
*{box-sizing:border-box}body{margin:0;background:#f5f7fa;color:#101828;
font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif}
header{background:#101828;color:#fff;padding:18px 32px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#cbd5e1;font-size:13px}
main{max-width:1200px;margin:0 auto;padding:16px 24px 40px}
section.machine{background:#fff;border:1px solid #e4e7ec;border-radius:10px;padding:16px 20px;margin:18px 0;
box-shadow:0 1px 2px rgba(16,24,40,.05)}
section.machine h2{margin:0 0 2px;font-size:17px}.muted{color:#667085;font-size:12.5px}
h3{font-size:14px;margin:18px 0 6px;color:#344054;text-transform:uppercase;letter-spacing:.04em}
figure{margin:8px 0}figcaption{font-weight:600;font-size:13px;margin:0 0 4px;color:#344054}
.grid2{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:10px 18px}
.chart svg{max-width:100%;height:auto;display:block}
.legend{display:flex;flex-wrap:wrap;gap:4px 12px;font-size:12px;margin-top:4px}
.lg{cursor:pointer;user-select:none;display:inline-flex;align-items:center;gap:5px}
.lg i{width:12px;height:12px;border-radius:3px;display:inline-block}.lg.off{opacity:.35;text-decoration:line-through}
table{border-collapse:collapse;font-size:12px;width:100%}th,td{padding:4px 6px;border-bottom:1px solid #eaecf0;
text-align:right;white-space:nowrap}th{background:#f9fafb;color:#475467;font-weight:600;position:sticky;top:0}
td:nth-child(-n+4),th:nth-child(-n+4),td:nth-child(n+11),th:nth-child(n+11){text-align:left}.tablewrap{overflow-x:auto}
.badge{padding:1px 7px;border-radius:9px;font-size:11px;font-weight:600}
.badge.ok{background:#dcfae6;color:#067647}.badge.bad{background:#fee4e2;color:#b42318}
.badge.na{background:#f2f4f7;color:#475467}
#tip{position:fixed;display:none;pointer-events:none;background:#101828;color:#fff;font-size:12px;
padding:7px 9px;border-radius:6px;white-space:pre;z-index:10;box-shadow:0 4px 12px rgba(0,0,0,.2)}
svg .hot{stroke:#101828;stroke-width:2}
"""

_JS = """
(function () {
  var tip = document.getElementById('tip');
  function place(e) {
    var w = tip.offsetWidth, h = tip.offsetHeight, x = e.clientX + 14, y = e.clientY + 14;
    if (x + w > innerWidth - 8) x = e.clientX - w - 14;
    if (y + h > innerHeight - 8) y = e.clientY - h - 14;
    tip.style.left = x + 'px'; tip.style.top = y + 'px';
  }
  document.addEventListener('mouseover', function (e) {
    var t = e.target.closest && e.target.closest('[data-tip]');
    if (!t) return;
    tip.textContent = t.getAttribute('data-tip'); tip.style.display = 'block';
    t.classList.add('hot'); place(e);
  });
  document.addEventListener('mousemove', function (e) { if (tip.style.display === 'block') place(e); });
  document.addEventListener('mouseout', function (e) {
    var t = e.target.closest && e.target.closest('[data-tip]');
    if (t) { t.classList.remove('hot'); tip.style.display = 'none'; }
  });
  // Legend: click hides/shows a series in its own chart; hover dims the others.
  document.querySelectorAll('.legend .lg').forEach(function (item) {
    var fig = item.closest('figure'), name = item.getAttribute('data-series');
    function members() {
      return Array.prototype.filter.call(fig.querySelectorAll('svg [data-series]'),
        function (el) { return el.getAttribute('data-series') === name; });
    }
    item.addEventListener('click', function () {
      var off = item.classList.toggle('off');
      members().forEach(function (el) { el.style.display = off ? 'none' : ''; });
    });
    item.addEventListener('mouseenter', function () {
      fig.querySelectorAll('svg [data-series]').forEach(function (el) {
        el.style.opacity = el.getAttribute('data-series') === name ? '1' : '0.2';
      });
    });
    item.addEventListener('mouseleave', function () {
      fig.querySelectorAll('svg [data-series]').forEach(function (el) { el.style.opacity = ''; });
    });
  });
  // Plot areas in page coordinates, for automated screenshot checks.
  var rects = Array.prototype.map.call(document.querySelectorAll('svg .plot-area'), function (r) {
    var b = r.getBoundingClientRect();
    return {figure: r.closest('figure').id, x: b.left + scrollX, y: b.top + scrollY, w: b.width, h: b.height};
  });
  document.body.setAttribute('data-plot-rects', JSON.stringify(rects));
  document.body.setAttribute('data-page-height', String(document.documentElement.scrollHeight));
})();
"""


def render_dashboard(runs: Sequence[Run], title: str = "flexavatar benchmarks") -> str:
    """The whole page as one HTML string (CSS, SVG and JS inline)."""
    if not runs:
        raise ValueError("render_dashboard needs at least one run")
    colors = _Colors(c.backend for r in runs for c in r.cases)
    machines: dict[str, list[Run]] = {}
    for run in runs:
        machines.setdefault(run.machine_id, []).append(run)
    # Most recently active machine first.
    order = sorted(machines, key=lambda m: (machines[m][-1].started, machines[m][-1].gpu_name is not None),
                   reverse=True)
    sections = []
    for mid in order:
        mruns = machines[mid]
        latest = mruns[-1]
        session = latest_session(mruns)
        sections.append(
            f'<section class="machine" id="machine-{_esc(mid)}"><h2>{_esc(latest.machine_label)}</h2>'
            f'<div class="muted">machine {_esc(mid)} · {len(mruns)} run(s) · latest '
            f"{latest.started:%Y-%m-%d %H:%M} UTC, commit {_esc(latest.commit_label)}, "
            f"{len(latest.cases)} cases · {_esc(latest.path.name)}</div>"
            "<h3>Latency per stage over commits</h3>"
            + _latency_figures(mruns, colors, mid)
            + "<h3>Throughput</h3>"
            + _fps_figure(session, colors, mid)
            + "<h3>Per-frame breakdown</h3>"
            + _breakdown_figure(session, mid)
            + "<h3>Targets</h3>"
            + _targets_table(session, mid)
            + "</section>"
        )
    generated = utc_now().strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{_esc(title)}</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<header><h1>{_esc(title)}</h1><p>{len(runs)} run(s) on {len(machines)} machine(s) · "
        f"generated {generated} · p50 unless stated; hover for p95/p99, click a legend entry to hide it</p>"
        f"</header><main>{''.join(sections)}</main><div id=\"tip\"></div>"
        f"<script>{_JS}</script></body></html>\n"
    )


def build_dashboard(sources: Sequence[Path], output: Path, *, skip_invalid: bool = False,
                    warn: Callable[[str], None] | None = None) -> list[Run]:  # fmt: skip
    """Load the history and write the page; returns the runs shown."""
    skipped: list[HistoryError] = []
    runs = load_history(sources, on_invalid=skipped.append if skip_invalid else None)
    for err in skipped:
        (warn or (lambda m: print(m, file=sys.stderr)))(f"skipped {err}")
    output.parent.mkdir(parents=True, exist_ok=True)
    page = render_dashboard(runs)
    with atomic_open(output, "w", encoding="utf-8") as fh:
        fh.write(page)
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="flexavatar-dashboard",
        description="Render the benchmark history (one JSON per run) as a self-contained HTML dashboard.",
    )
    parser.add_argument(
        "history", nargs="*", type=Path, default=[Path("benchmarks/history")],
        help="history folder(s) or run file(s) (default: benchmarks/history)",
    )  # fmt: skip
    parser.add_argument("-o", "--output", type=Path, default=Path("dashboard.html"), help="HTML file to write")
    parser.add_argument(
        "--skip-invalid", action="store_true", help="warn about malformed run files and leave them out"
    )
    args = parser.parse_args(argv)
    try:
        runs = build_dashboard(args.history, args.output, skip_invalid=args.skip_invalid)
    except HistoryError as err:
        print(f"flexavatar-dashboard: error: {err}", file=sys.stderr)
        return 2
    machines = len({r.machine_id for r in runs})
    print(f"wrote {args.output} ({len(runs)} runs, {machines} machines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
