"""The FLEX-1 decoder with and without ``export.graph_passes``, side by side on one GPU (issue #7's frame rate).

Exports the decoder of the checkpoint from one model (``export_graph(passes=False)``: the graph as traced
and folded; ``passes=True``: what bundles hold; "unjoined": every pass but ``joint_attention_streams``, to time
that pass alone), converts each to fp16 as the exporter does, then runs each
file through the runtime's ``OrtCudaModel`` (IO binding, CUDA graphs unless --no-graphs), alternating the
variants in rounds so clock and thermal drift fall on both. Prints nodes per op type, ms per call (median of
rounds) and the largest output difference between the two graphs.

    python benchmarks/device/graph_passes_ab.py CHECKPOINT.safetensors --template gghead_template.obj \
        --bundle BUNDLE [--frames 50 --rounds 5] [--json OUT.json]

BUNDLE (any bundle of the same model) supplies the decoder's input/output specs.
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
import time
from pathlib import Path


def _export(checkpoint: str, template: str, out_dir: Path) -> dict[str, Path]:
    import onnx
    import torch

    from flexavatar.export.exporter import DEFAULT_OPSET
    from flexavatar.export.graphs import DecoderGraph
    from flexavatar.export.onnx_tools import export_graph, to_fp16
    from flexavatar.model import FlexAvatarModel

    model = FlexAvatarModel.from_checkpoint(checkpoint, template=template)
    net = model.network
    gen = torch.Generator().manual_seed(0)
    code = torch.randn(1, net.cfg.n_head_tokens, net.cfg.d_hidden, generator=gen) * 0.5
    expressions = torch.randn(2, net.cfg.d_expression_codes, generator=gen) * 0.3
    files = {}
    for passes in (False, True):
        t0 = time.perf_counter()
        fp32 = export_graph(DecoderGraph(net), (code, expressions), DecoderGraph.spec(net), DEFAULT_OPSET, passes=passes)
        variants = {"slim" if passes else "plain": fp32}
        if not passes:
            variants["unjoined"] = _without_joined_streams(fp32)
        for name, graph32 in variants.items():
            for precision, graph in (("fp32", graph32), ("fp16", to_fp16(graph32))):
                path = out_dir / f"decoder.{name}.{precision}.onnx"
                onnx.save_model(graph, str(path))
                files[f"{name}-{precision}"] = path
                ops = collections.Counter(n.op_type for n in graph.graph.node)
                print(json.dumps({"graph": f"{name}-{precision}", "nodes": len(graph.graph.node),
                                  "ops": dict(ops.most_common())}), flush=True)
        print(f"exported {'/'.join(variants)} in {time.perf_counter() - t0:.1f} s", flush=True)
    return files


def _without_joined_streams(plain):
    """The bundles' passes but ``joint_attention_streams`` (the joined q / k / v streams, 2026-11-28): "slim" against
    this variant is what that pass alone buys."""
    import onnx

    from flexavatar.export import graph_passes

    model = onnx.ModelProto()
    model.CopyFrom(plain)
    graph_passes.merge_sibling_matmuls(model)
    graph_passes.attention_token_major(model)
    return model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--template", required=True)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-graphs", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()

    import torch

    import flexavatar.runtime.gpu as gpu
    from flexavatar.bundle import Bundle
    from flexavatar.runtime.engines import EngineOptions

    bundle = Bundle.open(args.bundle, verify="size")
    conv = bundle.manifest.conventions
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = _export(args.checkpoint, args.template, Path(tmp))
        stream = torch.cuda.Stream()
        gen = torch.Generator(device="cuda").manual_seed(0)
        code = 0.5 * torch.randn((1, conv.n_head_tokens, conv.d_code), device="cuda", generator=gen)
        expressions = 0.3 * torch.randn((1, conv.expression_dim), device="cuda", generator=gen)
        models, firsts = {}, {}
        for key, path in files.items():
            precision = key.split("-")[1]
            artifact = bundle.artifact("decoder", "onnx", precision)
            models[key] = gpu.OrtCudaModel(path, artifact, EngineOptions(precision=precision), stream,
                                           not args.no_graphs)
            with torch.cuda.stream(stream):
                out = models[key].run({"code": code, "expressions": expressions})
                firsts[key] = {k: v.clone() for k, v in out.items()}
                stream.synchronize()
        times: dict[str, list[float]] = {key: [] for key in models}
        for _ in range(args.rounds):
            for key, model in models.items():
                with torch.cuda.stream(stream):
                    stream.synchronize()
                    t0 = time.perf_counter()
                    for _ in range(args.frames):
                        model.run({"code": code, "expressions": expressions})
                    stream.synchronize()
                times[key].append((time.perf_counter() - t0) / args.frames * 1e3)
        for key in models:
            results[key] = {"ms_per_call": round(statistics.median(times[key]), 3),
                            "rounds_ms": [round(t, 3) for t in times[key]]}
        for precision in ("fp32", "fp16"):
            for name, base in (("slim", "plain"), ("slim", "unjoined"), ("unjoined", "plain")):
                a, b = firsts[f"{base}-{precision}"], firsts[f"{name}-{precision}"]
                diff = max(float((a[k] - b[k]).abs().max()) for k in a)
                speedup = results[f"{base}-{precision}"]["ms_per_call"] / results[f"{name}-{precision}"]["ms_per_call"]
                results[f"{name}-{precision}"].update({f"max_abs_diff_vs_{base}": diff,
                                                       f"speedup_vs_{base}": round(speedup, 3)})
    for key, row in results.items():
        print(json.dumps({"graph": key, **row}), flush=True)
    print(json.dumps({"device": torch.cuda.get_device_name(0), "cuda_graphs": not args.no_graphs}), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
