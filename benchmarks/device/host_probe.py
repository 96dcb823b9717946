"""Where the Python runtime's host time goes, one frame at a time (issue #7: the Python live loop is host-bound).

The GPU session of 2026-11-27 (H200) measured ≈ 2.5 ms of host work a frame against 2.1 ms of GPU work, and cProfile
put 0.65 ms of it into ``kernels/native.py render_cuda`` itself, unexplained by its callees (a call cProfile does not
see, a hidden wait, a garbage collection?). This script answers with four measurements of the same frames, without
cProfile:

- ``frame``: ``rt.render`` of one frame, p50 wall (pixels on the host), and ``submit`` / ``wait``: the same frame
  as ``rt.render_async`` (host time until the work is queued) and ``.result()`` (the wait for the pixels). In a live
  loop, the frame rate is set by the larger of ``submit`` (+ the caller's own work) and the GPU's time;
- ``gc``: Python's garbage collections during those frames (``gc.callbacks``): count and ms a frame per generation;
- ``stages``: inclusive host ms a frame of the functions a frame goes through (each wrapped by a timer);
- ``lines``: per-line host ms a frame of one function (the rasterizer backend's entry, ``render_cuda`` on CUDA; with
  compiled frames ``Runtime._compiled_frames_of``), traced with ``sys.settrace`` for that function's code only: a
  line's time runs from its start to the next line's, callees included, so a line that hides a wait or an
  allocation stands out.

With the torch-compile engine on CUDA the frames are compiled whole (``Runtime(compiled_frames=None)``): the
rasterizer's Python entry then runs only in the first frame; ``--separate-calls`` probes the decoder and rasterizer
called one after the other. ``--compiled-frames`` compiles the rasterizer and pixels behind another engine's decoder.

    python benchmarks/device/host_probe.py BUNDLE [--device cuda|cpu] [--engine onnxruntime|torch-compile]
        [--separate-calls | --compiled-frames] [--precision fp16] [--frames 200] [--size 512] [--json OUT]
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

# (module, attribute) of the functions ``stages`` times, named where their callers look them up at each call (a
# module global, a class attribute); a missing one is skipped and named in the report. The rasterizer backend's
# entry is timed through the registry (``StageTimer.wrap_backend``).
STAGES = (
    ("flexavatar.runtime.runtime", "Runtime._plan"),
    ("flexavatar.runtime.runtime", "Runtime._decode_chunk"),
    ("flexavatar.runtime.runtime", "Runtime._frames_of"),
    ("flexavatar.runtime.runtime", "Runtime._rasterize"),
    ("flexavatar.runtime.runtime", "Runtime._compiled_chunk"),
    ("flexavatar.runtime.engines", "TorchCompiledDecoderModel.frames"),
    ("flexavatar.runtime.engines", "CompiledNetworkDecode.__call__"),
    ("flexavatar.runtime.runtime", "_uint8_rgb"),
    ("flexavatar.runtime.runtime", "_HostFrames.result"),
    ("flexavatar.runtime.gpu", "to_cuda"),
    ("flexavatar.runtime.gpu", "copy_to_host_async"),
    ("flexavatar.kernels", "rasterize"),
    ("flexavatar.kernels.api", "validate_request"),
    ("flexavatar.kernels.native", "_cuda_forward"),
)


def _resolve(module_name: str, dotted: str):
    owner = importlib.import_module(module_name)
    *path, name = dotted.split(".")
    for part in path:
        owner = getattr(owner, part)
    return owner, name


class StageTimer:
    """Wraps functions (module or class attributes) with perf_counter timers; ``restore()`` puts them back.
    A wrapped function that calls itself (or another wrapped one) is timed inclusively at each level."""

    def __init__(self, targets=STAGES):
        self.ns: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        self.missing: list[str] = []
        self._restore: list[tuple] = []
        for module_name, dotted in targets:
            key = f"{module_name.rsplit('.', 1)[-1]}.{dotted}"
            try:
                owner, name = _resolve(module_name, dotted)
                original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
            except (ImportError, AttributeError, KeyError):
                self.missing.append(key)
                continue
            self._wrap(owner, name, original, key)

    def _wrap(self, owner, name, original, key):
        ns, calls, clock = self.ns, self.calls, time.perf_counter_ns
        ns[key] = calls[key] = 0

        def timed(*args, **kwargs):
            t0 = clock()
            try:
                return original(*args, **kwargs)
            finally:
                ns[key] += clock() - t0
                calls[key] += 1

        setattr(owner, name, timed)
        self._restore.append((owner, name, original))
        # callers that imported the function by name (``from .gpu import to_cuda`` inside a function) look it up
        # again at each call; module-level imports of it elsewhere are not re-pointed (listed by their own key)

    def wrap_backend(self, name: str) -> None:
        """Time the registered rasterizer backend ``name`` (``kernels.rasterize`` calls its ``spec.render``)."""
        import dataclasses

        from flexavatar.kernels import registry
        spec = registry._BACKENDS[name]
        box = type("Box", (), {})()                       # a settable stand-in for the frozen spec's field
        box.render = spec.render
        self._wrap(box, "render", spec.render, f"backend {name} ({spec.render.__name__})")
        registry._BACKENDS[name] = dataclasses.replace(spec, render=box.render)
        self._restore.append((registry._BACKENDS, name, spec))

    def restore(self):
        for owner, name, original in reversed(self._restore):
            if isinstance(owner, dict):
                owner[name] = original
            else:
                setattr(owner, name, original)
        self._restore.clear()

    def per_frame(self, frames: int) -> dict[str, dict]:
        return {key: {"ms_per_frame": round(self.ns[key] / 1e6 / frames, 4),
                      "calls_per_frame": round(self.calls[key] / frames, 2)}
                for key in sorted(self.ns, key=self.ns.get, reverse=True) if self.calls[key]}


class LineTimer:
    """Per-line wall time of one function (its code object only), by ``sys.settrace``: each line's time runs from
    its line event to the next line or return event in the same frame, callees included."""

    def __init__(self, function):
        self.code = getattr(function, "__code__", None)
        if self.code is None:
            raise TypeError(f"{function!r} has no Python code to trace")
        self.ns: dict[int, int] = {}
        self.hits: dict[int, int] = {}
        self.calls = 0

    def _global(self, frame, event, arg):
        if event == "call" and frame.f_code is self.code:
            self.calls += 1
            state = {"line": None, "t": time.perf_counter_ns()}

            def local(frame, event, arg):
                now = time.perf_counter_ns()
                if state["line"] is not None:
                    self.ns[state["line"]] = self.ns.get(state["line"], 0) + now - state["t"]
                if event == "line":
                    state["line"] = frame.f_lineno
                    self.hits[frame.f_lineno] = self.hits.get(frame.f_lineno, 0) + 1
                elif event == "return":
                    state["line"] = None
                state["t"] = time.perf_counter_ns()
                return local
            return local
        return None

    @contextlib.contextmanager
    def tracing(self):
        previous = sys.gettrace()
        sys.settrace(self._global)
        try:
            yield self
        finally:
            sys.settrace(previous)

    def per_frame(self, frames: int) -> list[dict]:
        import linecache
        path = self.code.co_filename
        return [{"line": line, "ms_per_frame": round(self.ns.get(line, 0) / 1e6 / frames, 4),
                 "hits_per_frame": round(self.hits[line] / frames, 2),
                 "source": linecache.getline(path, line).strip()[:120]}
                for line in sorted(self.hits)]


class GcTimer:
    """Python's garbage collections while active: count and wall time per generation (``gc.callbacks``)."""

    def __init__(self):
        self.count = [0, 0, 0]
        self.ns = [0, 0, 0]
        self._t0 = 0

    def _callback(self, phase, info):
        if phase == "start":
            self._t0 = time.perf_counter_ns()
        else:
            generation = info["generation"]
            self.count[generation] += 1
            self.ns[generation] += time.perf_counter_ns() - self._t0

    @contextlib.contextmanager
    def active(self):
        gc.callbacks.append(self._callback)
        try:
            yield self
        finally:
            gc.callbacks.remove(self._callback)

    def per_frame(self, frames: int) -> dict:
        return {f"gen{g}": {"collections_per_frame": round(self.count[g] / frames, 3),
                            "ms_per_frame": round(self.ns[g] / 1e6 / frames, 4)} for g in range(3)}


def _p50_ms(samples_ns: list[int]) -> float:
    return round(statistics.median(samples_ns) / 1e6, 4)


def probe(rt, avatar, expressions: np.ndarray, cameras, size: int, frames: int, line_function=None) -> dict:
    """The four measurements over ``frames`` frames each (cycling through ``expressions`` and ``cameras``)."""
    from flexavatar.runtime import Camera

    def camera(i: int):
        return Camera(cameras.cam2world[i % len(cameras.cam2world)], cameras.intrinsics)

    def render(i: int):
        return rt.render(avatar, expressions[i % len(expressions)][None], camera(i), size, size)

    for i in range(10):                                 # warm-up: graph capture, the sort's budget, caches
        render(i)
    report = {"frames": frames}

    gc_timer = GcTimer()
    walls, submits, waits = [], [], []
    clock = time.perf_counter_ns
    with gc_timer.active():
        for i in range(frames):
            t0 = clock()
            out = render(i)
            walls.append(clock() - t0)
        for i in range(frames):
            t0 = clock()
            pending = rt.render_async(avatar, expressions[i % len(expressions)][None], camera(i), size, size)
            t1 = clock()
            out = pending.result()
            submits.append(t1 - t0)
            waits.append(clock() - t1)
    assert out.shape == (1, size, size, 3)
    report["frame"] = {"wall_ms_p50": _p50_ms(walls), "submit_ms_p50": _p50_ms(submits),
                       "wait_ms_p50": _p50_ms(waits), "wall_ms_p95": round(float(np.percentile(walls, 95)) / 1e6, 4)}
    report["gc"] = gc_timer.per_frame(2 * frames)
    gc.disable()
    try:
        no_gc = []
        for i in range(frames):
            t0 = clock()
            render(i)
            no_gc.append(clock() - t0)
    finally:
        gc.enable()
    report["frame"]["wall_ms_p50_gc_disabled"] = _p50_ms(no_gc)

    stages = StageTimer()
    stages.wrap_backend(rt.rasterizer)
    try:
        for i in range(frames):
            render(i)
    finally:
        stages.restore()
    report["stages"] = stages.per_frame(frames)
    report["stages_missing"] = stages.missing

    if line_function is not None:
        lines = LineTimer(line_function)
        with lines.tracing():
            for i in range(frames):
                render(i)
        report["lines"] = {"function": f"{line_function.__module__}.{line_function.__qualname__}",
                           "calls_per_frame": round(lines.calls / frames, 2), "rows": lines.per_frame(frames)}
    return report


def driving_expressions(path: Path | None) -> np.ndarray:
    """[T, 135]: ``path``, else the sequence bench_runtime.py drives its frames with (the same first frame, so the
    same sort capacity: prewarm.sh's compiled frames are then the benchmark's), else 64 synthetic ones."""
    from flexavatar.runtime import load_expressions, synthetic_expressions
    if path is None:
        from flexavatar.dev_fixtures import fixtures_dir
        candidate = fixtures_dir() / "driving" / "EMO-1-shout+laugh.npz"
        path = candidate if candidate.is_file() else None
    return load_expressions(path) if path is not None else synthetic_expressions(64)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--engine", default="onnxruntime", choices=("onnxruntime", "torch-compile"))
    ap.add_argument("--precision", default="fp16", choices=("fp32", "fp16"))
    ap.add_argument("--rasterizer", help="default: cuda on CUDA, cpu on the CPU")
    frames = ap.add_mutually_exclusive_group()
    frames.add_argument("--separate-calls", action="store_true", help="torch-compile: the decoder and the rasterizer "
                        "called one after the other (Runtime(compiled_frames=False)), not the compiled whole frame")
    frames.add_argument("--compiled-frames", action="store_true", help="other engines: the rasterizer and pixels "
                        "compiled as one behind the decoder (Runtime(compiled_frames=True))")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--checkpoint", type=Path, help="torch-compile, when the bundle carries no model.safetensors: "
                    "its checkpoint (default: the FLEX-1 benchmarks' benchmarks/.cache/flex1-random-seed0.safetensors)")
    ap.add_argument("--template", type=Path, help="with --checkpoint (default: the fixtures' gghead_template.obj)")
    ap.add_argument("--expressions", type=Path, help="a [T, 135] .npy or tracked .npz (default: the benchmarks' "
                    "driving sequence, EMO-1-shout+laugh.npz, when the fixtures are there; else synthetic)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    from flexavatar.kernels import native
    from flexavatar.runtime import Avatar, Runtime, orbit_camera

    rasterizer = args.rasterizer or ("cuda" if args.device == "cuda" else "cpu")
    options = {}
    if args.engine == "torch-compile" and not (Path(args.bundle) / "model.safetensors").is_file():
        from flexavatar.dev_fixtures import fixtures_dir
        repo = Path(__file__).resolve().parents[2]
        options = {"checkpoint": args.checkpoint or repo / "benchmarks" / ".cache" / "flex1-random-seed0.safetensors",
                   "template": args.template or fixtures_dir() / "official_flex" / "gghead_template.obj"}
    if args.separate_calls or args.compiled_frames:
        options["compiled_frames"] = args.compiled_frames
    rt = Runtime(args.bundle, backend=args.engine, device=args.device, rasterizer=rasterizer,
                 precision=args.precision, verify="size", **options)
    conventions = rt.manifest.conventions
    code = np.random.default_rng(0).standard_normal((1, conventions.n_head_tokens, conventions.d_code))
    avatar = Avatar((0.5 * code).astype(np.float32))
    expressions = driving_expressions(args.expressions)
    # the compiled frames' Python side, or the rasterizer's entry that the separate calls go through
    line_function = (Runtime._compiled_frames_of if rt.compiled_frames
                     else {"cuda": native.render_cuda, "cpu": native.render_cpu}.get(rasterizer))
    report = {"runtime": rt.describe(), "device": args.device, "python": sys.version.split()[0],
              **probe(rt, avatar, expressions, orbit_camera(64), args.size, args.frames, line_function)}
    print(json.dumps({k: report[k] for k in ("runtime", "python", "frames", "frame", "gc")}), flush=True)
    for key, row in report["stages"].items():
        print(json.dumps({"stage": key, **row}), flush=True)
    for row in report.get("lines", {}).get("rows", []):
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
