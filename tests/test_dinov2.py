"""DINOv2 ViT-B/14-reg module vs an independent implementation (HF transformers) on random weights."""
from __future__ import annotations

import pytest
import torch

from flexavatar.dinov2 import DinoV2, DinoV2Config
from flexavatar.errors import CheckpointError

transformers = pytest.importorskip("transformers", reason="transformers is a test dependency (pip install .[test])")

CFG = DinoV2Config(dim=48, depth=2, n_heads=3, trained_grid=37, input_size=224)


def _hf_model(seed: int = 0):
    config = transformers.Dinov2WithRegistersConfig(
        hidden_size=CFG.dim, num_hidden_layers=CFG.depth, num_attention_heads=CFG.n_heads,
        intermediate_size=CFG.dim * CFG.mlp_ratio, patch_size=CFG.patch_size, image_size=CFG.trained_grid * CFG.patch_size,
        num_register_tokens=CFG.n_registers, layerscale_value=1.0, layer_norm_eps=1e-6, hidden_act="gelu")
    torch.manual_seed(seed)
    model = transformers.Dinov2WithRegistersModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():          # make every tensor (layer scales, tokens, norms) non-trivial
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _hub_state_dict(hf) -> dict[str, torch.Tensor]:
    """HF key layout → the torch-hub layout that DinoV2.from_file reads."""
    s = hf.state_dict()
    out = {"cls_token": s["embeddings.cls_token"], "pos_embed": s["embeddings.position_embeddings"],
           "register_tokens": s["embeddings.register_tokens"], "mask_token": s["embeddings.mask_token"].reshape(1, -1),
           "patch_embed.proj.weight": s["embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": s["embeddings.patch_embeddings.projection.bias"],
           "norm.weight": s["layernorm.weight"], "norm.bias": s["layernorm.bias"]}
    for i in range(CFG.depth):
        p = f"encoder.layer.{i}."
        q = f"blocks.{i}."
        for name in ("weight", "bias"):
            out[q + f"attn.qkv.{name}"] = torch.cat([s[p + f"attention.{t}_proj.{name}"] for t in "qkv"])
            out[q + f"attn.proj.{name}"] = s[p + f"attention.o_proj.{name}"]
            out[q + f"norm1.{name}"] = s[p + f"norm1.{name}"]
            out[q + f"norm2.{name}"] = s[p + f"norm2.{name}"]
            out[q + f"mlp.fc1.{name}"] = s[p + f"mlp.fc1.{name}"]
            out[q + f"mlp.fc2.{name}"] = s[p + f"mlp.fc2.{name}"]
        out[q + "ls1.gamma"] = s[p + "layer_scale1.lambda1"]
        out[q + "ls2.gamma"] = s[p + "layer_scale2.lambda1"]
    return out


def test_matches_transformers_dinov2_with_registers_at_224(tmp_path):
    hf = _hf_model()
    path = tmp_path / "dinov2_small_random.pth"
    torch.save(_hub_state_dict(hf), path)
    ours = DinoV2.from_file(path, CFG)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = hf(pixel_values=x).last_hidden_state                 # [2, 1 + 4 + 256, dim], final norm applied
        got = ours.forward_tokens(x)
    assert got.shape == ref.shape == (2, 1 + 4 + 256, CFG.dim)
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)
    # the position table really was resampled (37 → 16) and matters
    assert ours.position_table(16).shape == (1, 257, CFG.dim)


def test_forward_returns_patch_feature_map_from_512_images(tmp_path):
    hf = _hf_model(1)
    path = tmp_path / "w.pth"
    torch.save(_hub_state_dict(hf), path)
    ours = DinoV2.from_file(path, CFG)
    images = torch.rand(1, 3, 512, 512)
    with torch.no_grad():
        feats = ours(images)
        x = torch.nn.functional.interpolate(images, size=(224, 224), mode="bilinear", antialias=True)
        x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        ref = hf(pixel_values=x).last_hidden_state[:, 5:]           # patch tokens only
    assert feats.shape == (1, CFG.dim, 16, 16)
    torch.testing.assert_close(feats.flatten(2).transpose(1, 2), ref, atol=2e-5, rtol=1e-4)


def test_bad_weight_files(tmp_path):
    with pytest.raises(CheckpointError, match="DINOv2 weights not found.*dinov2_vitb14_reg4_pretrain.pth"):
        DinoV2.from_file(tmp_path / "missing.pth", CFG)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match="cannot read DINOv2 weights .*not a torch.save file"):
        DinoV2.from_file(junk, CFG)
    sd = _hub_state_dict(_hf_model())
    sd.pop("norm.weight")
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="1 missing keys: norm.weight"):
        DinoV2.from_file(tmp_path / "partial.pth", CFG)
