"""Where ONNX Runtime runs each node of a bundle's graphs, from one profiled run per file.

    python benchmarks/device/ort_placement.py [BUNDLE] [--provider cuda|cpu] [--times] [--json out.json]

Without BUNDLE it exports the reduced official fixture (fp32 + fp16 ONNX, the default opset; seconds) into a
temporary folder: the op types, and so the placement, are those of FLEX-1. For every ONNX file it reports
the nodes per execution provider, the op types of nodes that did not land on the requested provider,
Memcpy nodes (each one a device↔host copy inside the frame), and whether the session accepts CUDA graphs
(ONNX Runtime refuses them unless every compute node is on the CUDA provider). Exit status 1 when a compute
node of a decoder falls back to the CPU on the CUDA provider: the GPU path would copy inside every frame.
``--times`` also prints each file's kernel time per op type (share of the profiled run, after one warm-up run):
where a frame's time goes on that provider.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

# Shape-only ops that ONNX Runtime deliberately keeps on the CPU next to a GPU graph (no copy of data)
SHAPE_OPS = frozenset({"Shape", "Size", "Gather", "Concat", "Unsqueeze", "Squeeze", "Slice", "Reshape", "Cast",
                       "ConstantOfShape", "Range", "Equal", "Where", "Mul", "Add", "Sub", "Div"})
PROVIDERS = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


def _feeds(session) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        data = rng.standard_normal(shape).astype(np.float32) * 0.5
        if i.name == "image":
            data = rng.uniform(0, 1, shape).astype(np.float32)
        feeds[i.name] = data
    if {"cam2world", "intrinsics"} <= feeds.keys():     # a valid camera: identity pose, normalised K
        feeds["cam2world"] = np.broadcast_to(np.eye(4, dtype=np.float32), feeds["cam2world"].shape).copy()
        k = np.array([[2.9, 0, 0.5], [0, 2.9, 0.5], [0, 0, 1]], np.float32)
        feeds["intrinsics"] = np.broadcast_to(k, feeds["intrinsics"].shape).copy()
    return feeds


def _session(ort, path: Path, provider: str, profile_prefix: str | None, cuda_graph: bool = False):
    so = ort.SessionOptions()
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    providers = [(provider, {"enable_cuda_graph": "1"} if cuda_graph else {})]
    if provider != PROVIDERS["cpu"]:
        providers.append(PROVIDERS["cpu"])
    return ort.InferenceSession(str(path), so, providers=providers)


def _load_onnxruntime(provider: str):
    if provider == PROVIDERS["cuda"]:
        try:        # torch first: it loads the CUDA / cuDNN libraries the CUDA provider links to (as runtime/gpu.py)
            import torch  # noqa: F401
        except ImportError:
            pass
    import onnxruntime as ort

    if provider == PROVIDERS["cuda"] and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    return ort


def placement(path: Path, provider: str, workdir: Path) -> dict:
    """One profiled run → {"providers": {ep: n}, "off_provider": {op: n}, "memcpy": n, "cuda_graphs": str}."""
    ort = _load_onnxruntime(provider)

    session = _session(ort, path, provider, str(workdir / path.stem))
    active = session.get_providers()
    feeds = _feeds(session)
    for _ in range(2):                    # a warm-up run (first-run allocations), then the run that is reported
        session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    kernels = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    kernels = kernels[len(kernels) // 2:]                                         # the second run's nodes
    nodes = [e["args"] for e in kernels]
    op_us = Counter()
    for e in kernels:
        op_us[e["args"].get("op_name", "?")] += e.get("dur", 0)
    per_provider = Counter(a.get("provider", "?") for a in nodes)
    off = Counter(a.get("op_name", "?") for a in nodes if a.get("provider") != provider)
    memcpy = sum(n for op, n in off.items() if op.startswith("Memcpy")) + sum(
        1 for a in nodes if a.get("op_name", "").startswith("Memcpy") and a.get("provider") == provider)
    report = {"file": path.name, "session_providers": active, "providers": dict(per_provider),
              "kernel_ms_per_op": {op: us / 1e3 for op, us in op_us.most_common()},
              "off_provider": dict(off), "memcpy": memcpy,
              "compute_off_provider": sorted(op for op in off if op not in SHAPE_OPS and not op.startswith("Memcpy"))}
    if provider == PROVIDERS["cuda"]:
        try:
            _session(ort, path, provider, None, cuda_graph=True)
            report["cuda_graphs"] = "accepted"
        except Exception as e:  # noqa: BLE001 — reported, not fatal: the message says why
            report["cuda_graphs"] = f"refused: {str(e).splitlines()[0][:300]}"
    return report


def _fixture_bundle(folder: Path) -> Path:
    import warnings

    from flexavatar.config import FlexConfig
    from flexavatar.dev_fixtures import fixtures_dir
    from flexavatar.export import export_bundle

    official = fixtures_dir() / "official_flex"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = FlexConfig.from_official_json(official / "config.json")
    result = export_bundle(official / "state_dict.safetensors", folder / "bundle", template=official / "gghead_template.obj",
                           config=config, precisions=("fp32", "fp16"), targets=("onnx",), progress=None)
    return result.path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", nargs="?", type=Path, help="bundle folder (default: export the reduced fixture)")
    p.add_argument("--provider", choices=sorted(PROVIDERS), default="cuda")
    p.add_argument("--times", action="store_true", help="print the kernel time per op type of each file")
    p.add_argument("--json", type=Path, help="also write the reports here")
    args = p.parse_args(argv)
    provider = PROVIDERS[args.provider]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = args.bundle or _fixture_bundle(work)
        reports = [placement(f, provider, work) for f in sorted(bundle.glob("*.onnx"))]
    bad = False
    for r in reports:
        decoder = r["file"].startswith("decoder")
        fell_back = r["session_providers"][0] != provider
        misplaced = bool(r["compute_off_provider"]) or fell_back
        bad |= decoder and misplaced
        print(f"{r['file']}: {r['providers']}; memcpy {r['memcpy']}"
              + (f"; compute ops off {provider}: {r['compute_off_provider']}" if r["compute_off_provider"] else "")
              + (f"; off-provider (shape) ops: {r['off_provider']}" if r["off_provider"] else "")
              + (f"; session fell back to {r['session_providers']}" if fell_back else "")
              + (f"; CUDA graphs {r['cuda_graphs']}" if "cuda_graphs" in r else ""))
        if args.times:
            total = sum(r["kernel_ms_per_op"].values()) or 1.0
            print("  kernel time: " + ", ".join(f"{op} {ms:.1f} ms ({100 * ms / total:.0f} %)"
                                                 for op, ms in list(r["kernel_ms_per_op"].items())[:8])
                  + f"; all {total:.1f} ms")
    if args.json:
        args.json.write_text(json.dumps(reports, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
