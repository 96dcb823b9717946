"""Model stages at FLEX-1 size with random weights: encode (once per avatar) and decode (per frame).

FLOPs per call are counted with torch's FlopCounterMode on the same call and printed beside the
latency (SPEC §17: ≈199.6 GFLOP per decoded frame; ≈181.7 GFLOP encode without DINOv2, +≈47 with it).
Expressions come from a real tracked sequence when ../shared is present, else a synthetic one.

    pytest benchmarks/bench_model.py --benchmark-only
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from flexavatar.cameras import default_camera  # noqa: E402
from flexavatar.config import FLEX1  # noqa: E402
from flexavatar.demo import synthetic_expressions  # noqa: E402
from flexavatar.model import AvatarCode, FlexAvatarModel, init_random_weights  # noqa: E402
from flexavatar.template import Template  # noqa: E402

DRIVING = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "driving" / "EMO-1-shout+laugh.npz"
DEVICES = ["cpu", "cuda"]


@pytest.fixture(scope="module")
def flex1(weights_cache):
    template = Template.synthetic(FLEX1.res_head_tokens, FLEX1.res_gaussian_grid)   # G differs slightly from 58,361

    def make():
        model = FlexAvatarModel(FLEX1, template)
        init_random_weights(model.network, seed=0)
        return model.official_state_dict()

    state = weights_cache.get("flex1-random-seed0", make)
    return FlexAvatarModel.from_checkpoint(state, template=template)


def _expressions(n: int) -> torch.Tensor:
    if DRIVING.is_file():
        return torch.from_numpy(np.load(DRIVING)["expression_codes"][:n])
    return synthetic_expressions(n)


def _count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def _device(name: str):
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device(name)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("device_name", DEVICES)
def test_decode_flex1(benchmark, bench_meta, flex1, device_name):
    device = _device(device_name)
    model = flex1.to(device)
    code = AvatarCode(torch.randn(1024, 1, 768, device=device) * 0.5)
    expr = _expressions(1).to(device)
    flops = _count_flops(lambda: model.decode(code, expr))
    print(f"\ndecode FLEX-1: {flops / 1e9:.1f} GFLOP per frame counted (SPEC: ≈199.6 incl. attention)")
    bench_meta(stage="decode", backend="torch-eager", size="flex1", device=device_name, dtype="fp32",
               flops=flops, frames=1)

    def run():
        g = model.decode(code, expr)
        _sync(device)
        return g

    g = benchmark.pedantic(run, rounds=5 if device_name == "cpu" else 30, warmup_rounds=1)
    assert torch.isfinite(g.means).all() and g.means.shape[1] == model.template.n_gaussians


@pytest.mark.parametrize("device_name", DEVICES)
def test_encode_flex1(benchmark, bench_meta, flex1, device_name):
    device = _device(device_name)
    model = flex1.to(device)
    c2w, k = default_camera()
    image = torch.rand(1, 3, 512, 512, device=device)
    feats = torch.randn(1, 1, 768, 16, 16, device=device)   # DINOv2 stand-in (weights are user-supplied)
    args = (image, c2w[None].to(device), k[None].to(device))
    flops = _count_flops(lambda: model.encode(*args, features=feats))
    print(f"\nencode FLEX-1 (without DINOv2): {flops / 1e9:.1f} GFLOP counted (SPEC: ≈181.7; DINOv2 adds ≈47)")
    bench_meta(stage="encode", backend="torch-eager", size="flex1", device=device_name, dtype="fp32",
               flops=flops, frames=1)

    def run():
        c = model.encode(*args, features=feats)
        _sync(device)
        return c

    code = benchmark.pedantic(run, rounds=3 if device_name == "cpu" else 20, warmup_rounds=1)
    assert code.tokens.shape == (1024, 1, 768) and torch.isfinite(code.tokens).all()
