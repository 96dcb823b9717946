"""Avatar fitting (SPEC §15): time per optimisation step, per differentiable rasterizer backend.

One step = decode (expression transformer + upsampler) forward and backward, rasterize forward and
backward, 0.8·L1 + 0.2·(1 − SSIM), Adam update. Cases are grouped per (device, size), so
pytest-benchmark's table shows each backend's ratio to the fastest side by side in one run:

* ``small`` (small_config, synthetic template, 3600 Gaussians, 64²): CPU and GPU. On the CPU the
  only differentiable backend is ``reference`` (the native ``cpu`` one is forward-only; ``triton``
  runs on CPU only under TRITON_INTERPRET=1), so the CPU case reports the decode/rasterize split
  instead: ``decode`` (the same step with the rasterizer replaced by a sum of the Gaussians).
* ``flex1`` (FLEX-1 random weights, synthetic template, 512²): GPU only (a CPU step takes minutes
  with the reference rasterizer), plus one whole 200-step fit (the issue's "well under a minute").

    pytest benchmarks/bench_fitting.py --benchmark-only
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from flexavatar import kernels  # noqa: E402
from flexavatar.cameras import orbit_cameras  # noqa: E402
from flexavatar.config import small_config  # noqa: E402
from flexavatar.demo import synthetic_expressions  # noqa: E402
from flexavatar.fitting import FitConfig, Fitter, Observations, fit, frozen_weights  # noqa: E402
from flexavatar.model import FlexAvatarModel  # noqa: E402
from flexavatar.template import Template  # noqa: E402

BACKENDS = ["reference", "triton", "cuda"]
DEVICES = ["cpu", "cuda"]
N_OBSERVATIONS = 4
FLEX1_FIT_STEPS = 200


@pytest.fixture(scope="module")
def small_model():
    cfg = small_config()
    return FlexAvatarModel.random(cfg, Template.synthetic(cfg.res_head_tokens, cfg.res_gaussian_grid), seed=0)




def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device (torch.cuda.is_available() is False)")
    return torch.device(name)


def _skip_unless_differentiable_here(backend: str, device: str) -> None:
    spec = kernels.get_backend(backend) if backend in kernels.registered_backends() else None
    if spec is None:
        pytest.skip(f"rasterizer backend {backend!r} is not registered here")
    reason = spec.unavailable_reason(device, "float32", requires_grad=kernels.SPLAT_GRADS)
    if reason is not None:
        pytest.skip(f"{backend} on {device}: {reason}")


def _observations(model: FlexAvatarModel, size: int, device) -> Observations:
    """Targets rendered from a random code (content does not change the cost; it keeps the loss sane)."""
    from flexavatar.fitting import render_observations
    fx = 1500 / 512
    k = torch.tensor([[fx, 0, 0.5], [0, fx, 0.5], [0, 0, 1.0]]).expand(N_OBSERVATIONS, 3, 3)
    obs = Observations(torch.ones(N_OBSERVATIONS, 3, size, size), orbit_cameras(N_OBSERVATIONS, radius=0.2), k,
                       synthetic_expressions(N_OBSERVATIONS)).to(device)
    code = torch.randn(model.config.n_head_tokens, 1, model.config.d_hidden, generator=torch.Generator().manual_seed(0))
    targets = render_observations(model, code.to(device), obs, backend="reference" if device.type == "cpu" else "auto")
    return Observations(targets.clamp(0, 1), obs.cam2world, obs.intrinsics, obs.expressions)


def _initial(model: FlexAvatarModel, device) -> torch.Tensor:
    cfg = model.config
    return 0.5 * torch.randn(cfg.n_head_tokens, 1, cfg.d_hidden, generator=torch.Generator().manual_seed(1)).to(device)


def _time_steps(benchmark, model, obs, backend: str, device, rounds: int | None = None):
    model = model.to(device)
    with frozen_weights(model):
        fitter = Fitter(model, obs, _initial(model, device), steps=10_000, config=FitConfig(), backend=backend)
        fitter.step(0, check_values=True)                                  # warm-up, validates once
        counter = iter(range(10**9))

        def step():
            loss, _ = fitter.step(next(counter) % len(obs))
            if device.type == "cuda":
                torch.cuda.synchronize()
            return loss

        loss = benchmark.pedantic(step, rounds=rounds, warmup_rounds=1) if rounds else benchmark(step)
    assert fitter.backend_used == backend
    assert torch.isfinite(loss)


@pytest.mark.parametrize("device_name", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_step_small(benchmark, bench_meta, small_model, backend, device_name):
    _skip_unless_differentiable_here(backend, device_name)
    device = _device(device_name)
    benchmark.group = f"fit_step small {device_name}"
    bench_meta(stage="fit_step", backend=backend, size="small", device=device_name, dtype="fp32",
               direction="forward+backward", frames=1, resolution=64)
    _time_steps(benchmark, small_model, _observations(small_model.to(device), 64, device), backend, device)


@pytest.mark.parametrize("device_name", DEVICES)
def test_fit_step_small_decode_only(benchmark, bench_meta, small_model, device_name):
    """The step without the rasterizer (Gaussians summed into the loss): the network's share of a step."""
    device = _device(device_name)
    model = small_model.to(device)
    benchmark.group = f"fit_step small {device_name}"
    bench_meta(stage="fit_step", backend="decode-only", size="small", device=device_name, dtype="fp32",
               direction="forward+backward", frames=1)
    with frozen_weights(model):
        code = _initial(model, device).requires_grad_(True)
        expr = synthetic_expressions(1).to(device)[None]
        ids = torch.ones(1, dtype=torch.long, device=device)
        optimizer = torch.optim.Adam([code], lr=1e-2)

        def step():
            out = model.network.decode(code, expr, ids)
            loss = sum(v.float().mean() for v in out.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            return loss.detach()

        assert torch.isfinite(benchmark(step))


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_step_flex1(benchmark, bench_meta, flex1_model, backend):
    _skip_unless_differentiable_here(backend, "cuda")
    device = _device("cuda")
    model = flex1_model.to(device)
    benchmark.group = "fit_step flex1 cuda"
    bench_meta(stage="fit_step", backend=backend, size="flex1", device="cuda", dtype="fp32",
               direction="forward+backward", frames=1, resolution=512)
    _time_steps(benchmark, model, _observations(model, 512, device), backend, device, rounds=10)


def test_fit_200_steps_flex1(benchmark, bench_meta, flex1_model):
    """The whole fit as a user runs it (backend "auto": the fastest differentiable one), 200 steps at 512²."""
    device = _device("cuda")
    model = flex1_model.to(device)
    obs = _observations(model, 512, device)
    init = _initial(model, device)
    bench_meta(stage="fit", backend=kernels.select_backend("auto", device="cuda", dtype="float32",
                                                            requires_grad=kernels.SPLAT_GRADS).name,
               size="flex1", device="cuda", dtype="fp32", direction="forward+backward", frames=FLEX1_FIT_STEPS)

    def run():
        result = fit(model, obs, FLEX1_FIT_STEPS, init_code=init)
        torch.cuda.synchronize()
        return result

    result = benchmark.pedantic(run, rounds=1, iterations=1)
    print(f"\nFLEX-1 fit: {FLEX1_FIT_STEPS} steps at 512² in {result.seconds:.1f} s with {result.backend}; "
          f"loss {result.losses[0]:.4f} → {result.losses[-1]:.4f}")
    assert result.losses[-1] < result.losses[0]
