"""Parity of the PyTorch model with the official FLEX-1 code on the reduced fixture (README tolerances)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from flexavatar.cameras import plucker_rays
from flexavatar.config import FlexConfig
from flexavatar.model import AvatarCode, FlexAvatarModel
from flexavatar.template import Template

# README "Recommended parity test"
ATOL_INTERMEDIATE = 1e-4
ATOL_FINAL = {"positions": 2e-5, "offsets": 2e-5, "scales": 2e-5, "opacities": 2e-5, "rotations": 1e-4, "colors": 1e-4}


@pytest.fixture(scope="module")
def fixture(official_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ignored official fields are reported; tested elsewhere
        cfg = FlexConfig.from_official_json(official_dir / "config.json")
    model = FlexAvatarModel.from_checkpoint(official_dir / "state_dict.safetensors",
                                            template=official_dir / "gghead_template.obj", config=cfg)
    inputs = {k: torch.from_numpy(v) for k, v in np.load(official_dir / "inputs.npz").items()}
    outputs = dict(np.load(official_dir / "outputs.npz"))
    return model, inputs, outputs


def _capture(model: FlexAvatarModel) -> tuple[dict, list]:
    """Forward hooks on the official sub-modules, named as in outputs.npz."""
    net, cap, handles = model.network, {}, []

    def hook(module, fn):
        def f(mod, args, out):
            fn(args, out)
        handles.append(module.register_forward_hook(f))

    hook(net._conv_patchify, lambda a, o: cap.update(patch_tokens=o))
    hook(net._transformer_encoder, lambda a, o: cap.update(encoder_out=o))
    hook(net._feature_projection, lambda a, o: cap.update(feature_projection_out=o))
    hook(net._head_transformer._query_point_embedder, lambda a, o: cap.update(head_queries=o))
    hook(net._head_transformer._transformer, lambda a, o: cap.update(head_tf_keys_in=a[1], avatar_code=o))
    hook(net._head_transformer._transformer.layers[0], lambda a, o: cap.update(head_tf_layer0_x=o[0], head_tf_layer0_ctx=o[1]))
    hook(net._head_transformer._expression_mlp, lambda a, o: cap.update(expression_mlp_out=o))
    hook(net._head_transformer._expression_transformer,
         lambda a, o: cap.update(expr_tf_x_in=a[0], expr_tf_keys_in=a[1], expr_tf_out=o))
    for i, block in enumerate(net._gaussian_decoder._stylegan_upsampler.blocks):
        hook(block, lambda a, o, i=i: cap.update({f"ups_block{i}_x": o[0], f"ups_block{i}_img": o[1]}))
    hook(net._gaussian_decoder._stylegan_upsampler, lambda a, o: cap.update(upsampled=o))
    hook(net._gaussian_decoder._mlp_decoder, lambda a, o: cap.update(gs_in=a[0], offsets=o["offsets"]))
    return cap, handles


def _final(g) -> dict[str, torch.Tensor]:
    return {"positions": g.means, "scales": g.scales, "rotations": g.quats, "colors": g.sh0,
            "opacities": g.opacities[..., None]}


def test_full_path_matches_every_intermediate(fixture):
    model, inp, out = fixture
    cap, handles = _capture(model)
    try:
        code = model.encode(inp["images"], inp["cam2world"], inp["intrinsics"], features=inp["features"])
        g = model.decode(code, inp["expression_codes"], dataset_id=inp["dataset_ids"][:, 0])
    finally:
        for h in handles:
            h.remove()
    b = inp["images"].shape[0]
    cap["plucker"] = plucker_rays(inp["cam2world"].reshape(b, 4, 4), inp["intrinsics"].reshape(b, 3, 3),
                                  128, 128).reshape(out["plucker"].shape)
    checked = 0
    for name, value in cap.items():
        ref = torch.from_numpy(out[name])
        assert value.shape == ref.shape, name
        atol = ATOL_FINAL.get(name, ATOL_INTERMEDIATE)
        torch.testing.assert_close(value, ref, atol=atol, rtol=1e-4, msg=lambda m: f"{name}: {m}")
        checked += 1
    # every intermediate of outputs.npz except the final attributes and template buffers (tested below)
    assert checked == len(out) - 5 - 3 == 20
    for name, value in _final(g).items():
        torch.testing.assert_close(value, torch.from_numpy(out[name]), atol=ATOL_FINAL[name], rtol=0,
                                   msg=lambda m: f"{name}: {m}")
    # the scale clamp is an active non-linearity: check both regimes are exercised and matched
    clamped = torch.from_numpy(out["scales"]) == 0.01
    assert 0 < clamped.float().mean() < 1
    assert torch.equal(g.scales == 0.01, clamped)


def test_per_frame_path_from_cached_avatar_code(fixture):
    model, inp, out = fixture
    code = AvatarCode(torch.from_numpy(out["avatar_code"]))
    g = model.decode(code, inp["expression_codes"], dataset_id=inp["dataset_ids"][:, 0])
    for name, value in _final(g).items():
        torch.testing.assert_close(value, torch.from_numpy(out[name]), atol=ATOL_FINAL[name], rtol=0,
                                   msg=lambda m: f"{name}: {m}")


def test_float64_run_matches_f64_reference(fixture, official_dir):
    model, inp, _ = fixture
    ref = np.load(official_dir / "outputs_f64.npz")
    model64 = FlexAvatarModel(model.config, model.template).double()
    model64.network.load_state_dict(model.official_state_dict())
    d = {k: v.double() if v.is_floating_point() else v for k, v in inp.items()}
    code = model64.encode(d["images"], d["cam2world"], d["intrinsics"], features=d["features"])
    torch.testing.assert_close(code.tokens, torch.from_numpy(ref["avatar_code"]), atol=1e-6, rtol=0)
    g = model64.decode(code, d["expression_codes"], dataset_id=d["dataset_ids"][:, 0])
    for name, value in _final(g).items():
        torch.testing.assert_close(value, torch.from_numpy(ref[name]), atol=1e-6, rtol=0,
                                   msg=lambda m: f"{name}: {m}")


def test_fir_as_taps_decodes_the_f64_reference(fixture, official_dir):
    """The upsampler's FIR as multiply-adds (``fir_as_taps``, the compiled decoders' form) decodes the official
    float64 outputs as the convolution does (float64 run, so only the order of the sums differs)."""
    model, inp, _ = fixture
    ref = np.load(official_dir / "outputs_f64.npz")
    model64 = FlexAvatarModel(model.config, model.template).double()
    model64.network.load_state_dict(model.official_state_dict())
    args = model64._check_decode_inputs(AvatarCode(torch.from_numpy(ref["avatar_code"])),
                                        inp["expression_codes"].double(), inp["dataset_ids"][:, 0])
    conv = model64.network.decode(*args)
    taps = model64.network.decode(*args, fir_as_taps=True)
    for name in ATOL_FINAL:
        torch.testing.assert_close(taps[name], conv[name], atol=1e-12, rtol=0, msg=lambda m: f"{name}: {m}")
        if name in ref:
            torch.testing.assert_close(taps[name].reshape(ref[name].shape), torch.from_numpy(ref[name]), atol=1e-6,
                                       rtol=0, msg=lambda m: f"{name}: {m}")


def test_fir_taps_is_the_depthwise_convolution():
    """``fir_taps`` against ``F.conv2d(groups=C)`` in float64, with an asymmetric filter (a flipped or transposed
    tap would show) on a non-square map."""
    from flexavatar.upsampler import fir_taps
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 11, 9, generator=gen, dtype=torch.float64)
    fir = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    want = torch.nn.functional.conv2d(x, fir.expand(5, 1, 4, 4), groups=5)
    got = fir_taps(x, fir)
    assert got.shape == want.shape == (2, 5, 8, 6)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_templates_equal_official_buffers_exactly(official_dir):
    obj = official_dir / "gghead_template.obj"
    full = Template.from_obj(obj, 32, 256)
    ref = np.load(official_dir / "template_flex1.npz")
    assert full.n_gaussians == 58_361 and full.head_query_xyz.shape == (1, 1024, 3)
    assert torch.equal(full.head_query_xyz, torch.from_numpy(ref["head_initial_xyz"]))
    assert torch.equal(full.gaussian_xyz, torch.from_numpy(ref["gaussian_initial_positions"]))
    assert torch.equal(full.uv_samples, torch.from_numpy(ref["uv_samples"]))
    reduced = Template.from_obj(obj, 8, 64)
    out = np.load(official_dir / "outputs.npz")
    assert reduced.n_gaussians == 3405
    assert torch.equal(reduced.head_query_xyz, torch.from_numpy(out["head_initial_xyz"]))
    assert torch.equal(reduced.gaussian_xyz, torch.from_numpy(out["gaussian_initial_positions"]))
    assert torch.equal(reduced.uv_samples, torch.from_numpy(out["uv_samples"]))
