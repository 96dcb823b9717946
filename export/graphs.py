"""The four exported graphs as small ``nn.Module`` wrappers around ``FlexNetwork`` (no model logic here).

Each wrapper fixes the bundle's tensor layout (batch-first avatar code ``[B, R², D]``, one avatar per
decoder call, dataset id 1) and describes its inputs/outputs (``GraphSpec``) for torch.onnx and the
manifest. All of them compute exactly what ``FlexAvatarModel`` computes; the parity checks prove it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from flexavatar.bundle import (GAUSSIAN_OUTPUTS, ROLE_DECODER, ROLE_DECODER_AVATAR, ROLE_ENCODER,
                               ROLE_ENCODER_FEATURES, TensorSpec)
from flexavatar.dinov2 import DinoV2
from flexavatar.model import MULTI_VIEW_DATASET_ID, FlexNetwork

# Dynamic dimension names (also the dim_params of the ONNX graphs).
DIM_BATCH, DIM_EXPRESSIONS, DIM_FEAT_H, DIM_FEAT_W = "B", "E", "h", "w"
MAX_BATCH, MAX_EXPRESSIONS = 256, 4096


@dataclass(frozen=True)
class GraphSpec:
    role: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_shapes(self) -> dict[str, dict[int, torch.export.Dim] | None]:
        """torch.export dynamic_shapes keyed by input name (one Dim object per dim name)."""
        bounds = {DIM_BATCH: (1, MAX_BATCH), DIM_EXPRESSIONS: (1, MAX_EXPRESSIONS),
                  DIM_FEAT_H: (2, 1024), DIM_FEAT_W: (2, 1024)}
        dims = {name: torch.export.Dim(name, min=lo, max=hi) for name, (lo, hi) in bounds.items()}
        return {t.name: ({i: dims[d] for i, d in enumerate(t.shape) if isinstance(d, str)} or None)
                for t in self.inputs}


def _gaussian_outputs(n_gaussians: int) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(name, (DIM_EXPRESSIONS, n_gaussians, *trail), "float32")
                 for name, trail in GAUSSIAN_OUTPUTS.items())


def _as_outputs(out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """FlexNetwork.decode's dict → (means, quats, scales, opacities, sh0): the GAUSSIAN_OUTPUTS order."""
    return out["positions"], out["rotations"], out["scales"], out["opacities"], out["colors"]


# ---- decoder ------------------------------------------------------------------------------------------

class DecoderGraph(nn.Module):
    """code [1, R², D] + expressions [E, 135] → means [E, G, 3], quats [E, G, 4], scales [E, G, 3],
    opacities [E, G], sh0 [E, G, 3]; dataset id 1 (a constant: its token is folded into the graph)."""

    def __init__(self, network: FlexNetwork):
        super().__init__()
        self.network = network
        self.register_buffer("dataset_ids", torch.full((1,), MULTI_VIEW_DATASET_ID, dtype=torch.long),
                             persistent=False)

    def forward(self, code: torch.Tensor, expressions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.network.decode(code.transpose(0, 1), expressions[None], self.dataset_ids)
        return _as_outputs(out)

    @staticmethod
    def spec(network: FlexNetwork) -> GraphSpec:
        cfg = network.cfg
        return GraphSpec(ROLE_DECODER,
                         (TensorSpec("code", (1, cfg.n_head_tokens, cfg.d_hidden), "float32"),
                          TensorSpec("expressions", (DIM_EXPRESSIONS, cfg.d_expression_codes), "float32")),
                         _gaussian_outputs(network.gaussian_xyz.shape[1]))


def avatar_decoder_spec(network: FlexNetwork) -> GraphSpec:
    """The avatar's decoder: expressions [E, 135] → Gaussians, its code a constant of the graph (built from
    the generic decoder's ONNX by ``onnx_tools.specialise``, so everything that depends only on the code —
    the first expression layer's LayerNorm and q/k/v projections of the code tokens, ... — is folded)."""
    full = DecoderGraph.spec(network)
    return GraphSpec(ROLE_DECODER_AVATAR, full.inputs[1:], full.outputs)


# ---- encoders -----------------------------------------------------------------------------------------

def _encode(network: FlexNetwork, image, cam2world, intrinsics, features) -> torch.Tensor:
    """Single-view batch → code [B, R², D]."""
    code = network.encode(image[:, None], cam2world[:, None], intrinsics[:, None], features[:, None])
    return code.transpose(0, 1)


def _encoder_inputs(network: FlexNetwork) -> tuple[TensorSpec, ...]:
    s = network.cfg.image_size
    return (TensorSpec("image", (DIM_BATCH, 3, s, s), "float32"),
            TensorSpec("cam2world", (DIM_BATCH, 4, 4), "float32"),
            TensorSpec("intrinsics", (DIM_BATCH, 3, 3), "float32"))


def _code_output(network: FlexNetwork) -> tuple[TensorSpec, ...]:
    return (TensorSpec("code", (DIM_BATCH, network.cfg.n_head_tokens, network.cfg.d_hidden), "float32"),)


class EncoderFeaturesGraph(nn.Module):
    """image [B, 3, S, S] + cam2world [B, 4, 4] + intrinsics [B, 3, 3] + DINOv2 features [B, C, h, w]
    → code [B, R², D]. For models exported without DINOv2 weights (features computed elsewhere)."""

    def __init__(self, network: FlexNetwork):
        super().__init__()
        self.network = network

    def forward(self, image, cam2world, intrinsics, features) -> torch.Tensor:
        return _encode(self.network, image, cam2world, intrinsics, features)

    @staticmethod
    def spec(network: FlexNetwork) -> GraphSpec:
        feats = TensorSpec("features", (DIM_BATCH, network.cfg.feature_dim, DIM_FEAT_H, DIM_FEAT_W), "float32")
        return GraphSpec(ROLE_ENCODER_FEATURES, _encoder_inputs(network) + (feats,), _code_output(network))


def resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """The linear map of ``F.interpolate(bilinear, antialias=True)`` along one axis: [n_out, n_in].

    Antialiased Resize is implemented differently (or not at all) by ONNX runtimes; as two MatMuls it
    is exact everywhere. Built by resizing the identity along rows only.
    """
    eye = torch.eye(n_in, dtype=torch.float64)[None, None]                       # [1, 1, n_in, n_in]
    return F.interpolate(eye, size=(n_out, n_in), mode="bilinear", antialias=True,
                         align_corners=False)[0, 0].to(torch.float32)


class EncoderGraph(nn.Module):
    """image [B, 3, S, S] in [0, 1] + cam2world [B, 4, 4] + intrinsics [B, 3, 3] → code [B, R², D],
    DINOv2 inside: resize (antialiased bilinear, as two MatMuls) + ImageNet normalisation + ViT."""

    def __init__(self, network: FlexNetwork, dinov2: DinoV2):
        super().__init__()
        self.network, self.dinov2 = network, dinov2
        resize = resize_matrix(network.cfg.image_size, dinov2.cfg.input_size)   # [224, S]
        self.register_buffer("resize_rows", resize, persistent=False)
        self.register_buffer("resize_cols_t", resize.T.contiguous(), persistent=False)

    def dino_features(self, image: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] → [B, C, g, g], as DinoV2.forward computes them."""
        dino = self.dinov2
        # normalise, then resize: the same (resize rows sum to 1), and OpenVINO's CPU plugin mis-fuses a
        # per-channel Sub/Div that follows a MatMul ("data.size() == OC" at compile time)
        x = (image - dino.mean) / dino.std
        x = self.resize_rows @ x @ self.resize_cols_t                            # [B, 3, 224, 224]
        patches = dino.forward_tokens(x)[:, 1 + dino.cfg.n_registers:]           # [B, g², C]
        g = dino.cfg.out_grid
        return patches.transpose(1, 2).reshape(image.shape[0], dino.cfg.dim, g, g)

    def forward(self, image, cam2world, intrinsics) -> torch.Tensor:
        return _encode(self.network, image, cam2world, intrinsics, self.dino_features(image))

    @staticmethod
    def spec(network: FlexNetwork) -> GraphSpec:
        return GraphSpec(ROLE_ENCODER, _encoder_inputs(network), _code_output(network))
