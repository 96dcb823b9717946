"""FlexAvatar FLEX-1 in PyTorch (SPEC §3–§12), split into the encoder and the per-frame decoder.

``FlexNetwork`` holds exactly the official parameter names (its ``state_dict()`` is the flat checkpoint
layout of ``ckpt-900k.pt``); ``FlexAvatarModel`` wraps it with the template, optional DINOv2 and the
typed public API: ``encode`` (once per avatar) and ``decode`` (every frame).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .cameras import plucker_rays
from .checkpoint import atomic_save, check_state_dict, read_state_dict
from .config import FlexConfig
from .dinov2 import DinoV2, DinoV2Config
from .errors import CheckpointError, InputError
from .expression import EXPRESSION_CODE_DIM
from .files import atomic_open, atomic_path
from .layers import GPTEncoder, JointTransformer, PointEmbedder
from .template import Template
from .upsampler import StyleGANUpsampler

MAX_SCALE = 0.01        # metres: per-axis std-dev clamp of the Gaussian head
MAX_OFFSET = 0.1        # metres: offsets are (sigmoid − 0.5) · 0.2
MULTI_VIEW_DATASET_ID = 1


# ---- outputs ------------------------------------------------------------------------------------

@dataclass
class Gaussians:
    """Per-frame 3D Gaussians in the canonical head frame; N = avatars × expressions (n = b·E + e)."""
    means: torch.Tensor       # [N, G, 3] metres
    quats: torch.Tensor       # [N, G, 4] unit quaternions (w, x, y, z)
    scales: torch.Tensor      # [N, G, 3] per-axis std-devs, ≤ 0.01
    opacities: torch.Tensor   # [N, G] in (0, 1)
    sh0: torch.Tensor         # [N, G, 3] SH degree-0 coefficients; colour = max(0.2821·sh0 + 0.5, 0)

    @property
    def n_gaussians(self) -> int:
        return self.means.shape[1]

    def __getitem__(self, index) -> "Gaussians":
        return Gaussians(*(getattr(self, f.name)[index] for f in fields(self)))

    def to(self, *args, **kwargs) -> "Gaussians":
        return Gaussians(*(getattr(self, f.name).to(*args, **kwargs) for f in fields(self)))


@dataclass
class AvatarCode:
    """The head-transformer output that identifies an avatar: tokens [R², B, D] (official layout)."""
    tokens: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[1]

    def save(self, path: str | Path, index: int = 0) -> None:
        """np.save avatar ``index`` (negative counts from the end) in the official layout (R², 1, D) float32,
        atomically."""
        b = self.batch_size
        if not -b <= index < b:
            raise InputError(f"avatar index {index} is out of range for a code holding {b} avatars "
                             f"(expected -{b} ≤ index < {b})")
        index %= b
        folder = Path(path).absolute().parent
        if not folder.is_dir():
            raise InputError(f"cannot save avatar code {path}: folder {folder} does not exist")
        array = self.tokens[:, index:index + 1].detach().to(torch.float32).cpu().numpy()
        with atomic_open(path) as fh:
            np.save(fh, array)

    @classmethod
    def load(cls, path: str | Path) -> "AvatarCode":
        """Accepts the official (R², 1, D) layout and (R², D)."""
        try:
            array = np.load(Path(path), allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read avatar code {path}: {e}") from None
        if not isinstance(array, np.ndarray):     # an .npz archive
            array.close()
            raise InputError(f"avatar code {path} is an .npz archive; expected an .npy file holding one "
                             "(R², 1, D) float array, e.g. (1024, 1, 768)")
        if array.ndim == 2:
            array = array[:, None]
        if array.ndim != 3 or array.shape[1] != 1 or math.isqrt(array.shape[0]) ** 2 != array.shape[0]:
            raise InputError(f"avatar code {path} has shape {array.shape}, expected (R², 1, D) e.g. (1024, 1, 768)")
        if not np.issubdtype(array.dtype, np.floating):
            raise InputError(f"avatar code {path} has dtype {array.dtype}, expected float32")
        if not np.isfinite(array).all():
            raise InputError(f"avatar code {path} contains NaN or inf")
        return cls(torch.from_numpy(array.astype(np.float32)))

    @staticmethod
    def interpolate(a: "AvatarCode", b: "AvatarCode", t: float) -> "AvatarCode":
        """Identity blend (1 − t)·a + t·b in the avatar-code space."""
        return AvatarCode(torch.lerp(a.tokens, b.tokens, t))


# ---- network (official parameter names) ---------------------------------------------------------

class HeadTransformer(nn.Module):
    def __init__(self, cfg: FlexConfig):
        super().__init__()
        d = cfg.d_hidden
        self._head_token_embeddings = nn.Parameter(torch.zeros(cfg.n_head_tokens, 1, d))   # dead (SPEC §1)
        self._query_point_embedder = PointEmbedder(d)
        self._transformer = JointTransformer(d, cfg.n_heads, cfg.n_layers_head)
        # torchvision-style MLP: Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear → keys 0, 3, 6
        self._expression_mlp = nn.Sequential(
            nn.Linear(cfg.d_expression_codes, 256), nn.ReLU(), nn.Identity(),
            nn.Linear(256, 256), nn.ReLU(), nn.Identity(),
            nn.Linear(256, cfg.n_expression_tokens * d))
        self._expression_transformer = JointTransformer(d, cfg.n_heads, cfg.n_layers_expression)
        self._dataset_embedding = nn.Embedding(cfg.n_dataset_ids, d)


class GaussianHead(nn.Module):
    """Five Linear(C → n) layers on UV-sampled features (SPEC §12.3)."""

    def __init__(self, c: int):
        super().__init__()
        self.out_layers = nn.ModuleDict({"shs": nn.Linear(c, 3), "scaling": nn.Linear(c, 3), "xyz": nn.Linear(c, 3),
                                         "opacity": nn.Linear(c, 1), "rotation": nn.Linear(c, 4)})

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:    # [N, G, C]
        out = self.out_layers
        rotation = out["rotation"](features)
        return {
            "colors": out["shs"](features),
            "scales": out["scaling"](features).exp().clamp(0.0, MAX_SCALE),  # float bounds: exportable
            "offsets": (torch.sigmoid(out["xyz"](features)) - 0.5) * (2 * MAX_OFFSET),
            "opacities": torch.sigmoid(out["opacity"](features))[..., 0],
            "rotations": rotation / rotation.norm(dim=-1, keepdim=True).clamp_min(1e-12),
        }


class GaussianDecoder(nn.Module):
    def __init__(self, cfg: FlexConfig):
        super().__init__()
        self._mlp_decoder = GaussianHead(cfg.d_gaussian_features)
        self._stylegan_upsampler = StyleGANUpsampler(cfg.d_hidden, cfg.res_head_tokens, cfg.n_upsampler_blocks,
                                                     cfg.channel_base, cfg.channel_max, cfg.w_dim)


class FlexNetwork(nn.Module):
    """All FLEX-1 weights under their official names, plus the template as non-persistent buffers."""

    def __init__(self, cfg: FlexConfig, template: Template):
        super().__init__()
        if template.res_head_tokens != cfg.res_head_tokens:
            raise InputError(f"template was built for res_head_tokens={template.res_head_tokens}, "
                             f"config needs {cfg.res_head_tokens}")
        self.cfg = cfg
        d = cfg.d_hidden
        self._conv_patchify = nn.Conv2d(9, d, cfg.patch_size, cfg.patch_size, bias=False)
        self._transformer_encoder = GPTEncoder(d, cfg.n_heads, cfg.n_layers_encoder, cfg.n_position_rows)
        self._head_transformer = HeadTransformer(cfg)
        self._gaussian_decoder = GaussianDecoder(cfg)
        self._feature_projection = nn.Linear(d + cfg.feature_dim, d)
        self.register_buffer("head_query_xyz", template.head_query_xyz.clone(), persistent=False)   # [1, R², 3]
        self.register_buffer("gaussian_xyz", template.gaussian_xyz.clone(), persistent=False)       # [1, G, 3]
        self.register_buffer("uv_samples", template.uv_samples.clone(), persistent=False)           # [1, G, 1, 2]

    # -- encoder: once per avatar -------------------------------------------------------------
    def encode(self, images: torch.Tensor, cam2world: torch.Tensor, intrinsics: torch.Tensor,
               features: torch.Tensor) -> torch.Tensor:
        """images [B, V, 3, S, S], cam2world [B, V, 4, 4], intrinsics [B, V, 3, 3] (normalised),
        features [B, V, C, h, w] (DINOv2 patch features) → avatar code [R², B, D]."""
        b, v, _, h, w = images.shape
        g = self.cfg.token_grid
        rays = plucker_rays(cam2world.reshape(b * v, 4, 4), intrinsics.reshape(b * v, 3, 3), h, w)
        x = torch.cat([images.reshape(b * v, 3, h, w), rays.to(images.dtype)], dim=1)   # [B·V, 9, S, S]
        x = self._conv_patchify(x)                                                       # [B·V, D, g, g]
        tokens = x.reshape(b, v, -1, g * g).permute(1, 3, 0, 2).reshape(v * g * g, b, -1)  # [V·g², B, D]
        tokens = self._transformer_encoder(tokens)
        tokens = self._feature_projection(torch.cat([tokens, self._resample_features(features)], dim=-1))
        queries = self.head_queries().expand(-1, b, -1)                                  # [R², B, D]
        return self._head_transformer._transformer(queries, tokens)

    def head_queries(self) -> torch.Tensor:
        """Point-embedded template texels; input-independent. → [R², 1, D]"""
        return self._head_transformer._query_point_embedder(self.head_query_xyz).transpose(0, 1)

    def _resample_features(self, features: torch.Tensor) -> torch.Tensor:
        """[B, V, C, h, w] → [V·g², B, C] on the image-token grid (corner-aligned coords, align_corners=False)."""
        b, v, c, h, w = features.shape
        g = self.cfg.token_grid
        lin = torch.linspace(-1, 1, g, dtype=features.dtype, device=features.device)
        gy, gx = torch.meshgrid(lin, lin, indexing="ij")
        grid = torch.stack([gx, gy], -1)[None].expand(b * v, -1, -1, -1)
        f = F.grid_sample(features.reshape(b * v, c, h, w), grid, mode="bilinear", align_corners=False,
                          padding_mode="zeros")                                          # [B·V, C, g, g]
        return f.reshape(b, v, c, g * g).permute(1, 3, 0, 2).reshape(v * g * g, b, c)

    # -- decoder: every frame -----------------------------------------------------------------
    def expression_context(self, expressions: torch.Tensor, dataset_ids: torch.Tensor) -> torch.Tensor:
        """expressions [B, E, 135], dataset_ids [B] → context tokens [1 + n_expr, B·E, D]."""
        b, e, _ = expressions.shape
        d = self.cfg.d_hidden
        head = self._head_transformer
        expr_tokens = head._expression_mlp(expressions).reshape(b * e, self.cfg.n_expression_tokens, d)
        dataset_token = head._dataset_embedding(dataset_ids).repeat_interleave(e, dim=0)[:, None]  # [B·E, 1, D]
        return torch.cat([dataset_token, expr_tokens], dim=1).transpose(0, 1)

    def decode(self, code: torch.Tensor, expressions: torch.Tensor, dataset_ids: torch.Tensor,
               fir_as_taps: bool = False) -> dict[str, torch.Tensor]:
        """code [R², B, D], expressions [B, E, 135], dataset_ids [B] → attributes [B·E, G, …].
        ``fir_as_taps``: the upsampler's FIR as multiply-adds, for compiled decoders (``StyleGANUpsampler``)."""
        e = expressions.shape[1]
        context = self.expression_context(expressions, dataset_ids)
        # one avatar: its code is shared by the E frames (layer 0 projects it once, then broadcasts)
        queries = code if code.shape[1] == 1 else code.repeat_interleave(e, dim=1)       # [R², 1 | B·E, D]
        x = self._head_transformer._expression_transformer(queries, context)            # [R², B·E, D]
        r = self.cfg.res_head_tokens
        uv_map = x.permute(1, 2, 0).reshape(x.shape[1], -1, r, r)                        # [B·E, D, R, R]
        upsampled = self._gaussian_decoder._stylegan_upsampler(uv_map, fir_as_taps)     # [B·E, C, 4R, 4R]
        return self.gaussians_from_uv_features(upsampled)

    def gaussians_from_uv_features(self, upsampled: torch.Tensor) -> dict[str, torch.Tensor]:
        n = upsampled.shape[0]
        grid = self.uv_samples.to(upsampled.dtype).expand(n, -1, -1, -1)                # [N, G, 1, 2]
        feats = F.grid_sample(upsampled, grid, mode="bilinear", align_corners=False, padding_mode="zeros")
        out = self._gaussian_decoder._mlp_decoder(feats[..., 0].transpose(1, 2))         # [N, G, C] in
        out["positions"] = self.gaussian_xyz.to(upsampled.dtype) + out["offsets"]
        return out


# ---- the public model ---------------------------------------------------------------------------

MODEL_FILE_KIND = "flexavatar-model"   # the "kind" metadata of FlexAvatarModel.save files


class FlexAvatarModel(nn.Module):
    """FLEX-1: ``encode`` (image + camera → AvatarCode, once) and ``decode`` (code + expressions → Gaussians)."""

    def __init__(self, config: FlexConfig, template: Template, dinov2: DinoV2 | None = None):
        super().__init__()
        self.config = config
        self.template = template
        self.network = FlexNetwork(config, template)
        self.dinov2 = dinov2

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path | dict, template: str | Path | Template,
                        dinov2: str | Path | DinoV2 | None = None,
                        config: str | Path | FlexConfig | None = None) -> "FlexAvatarModel":
        """Load the official flat state dict strictly (448 keys for FLEX-1).

        checkpoint: path (.pt / .safetensors) or a state dict; template: gghead_template.obj path or a
        Template; dinov2: the public dinov2_vitb14_reg weight file (needed only to encode photos);
        config: FlexConfig or model_config.json (default: FLEX-1).
        """
        state = checkpoint if isinstance(checkpoint, dict) else read_state_dict(checkpoint)  # first: its errors
        cfg = config if isinstance(config, FlexConfig) else (
            FlexConfig() if config is None else FlexConfig.from_official_json(config))
        tmpl = template if isinstance(template, Template) else Template.from_obj(
            template, cfg.res_head_tokens, cfg.res_gaussian_grid)
        dino = dinov2 if (dinov2 is None or isinstance(dinov2, DinoV2)) else DinoV2.from_file(dinov2)
        if dino is not None and dino.cfg.dim != cfg.feature_dim:
            raise CheckpointError(f"DINOv2 gives {dino.cfg.dim}-channel features, but the model's feature "
                                  f"projection expects feature_dim={cfg.feature_dim}: pass the DINOv2 weights "
                                  "the checkpoint was trained with (FLEX-1: dinov2_vitb14_reg4_pretrain.pth, dim 768)")
        model = cls(cfg, tmpl, dino)
        what = "state dict" if isinstance(checkpoint, dict) else f"checkpoint {Path(checkpoint).name}"
        check_state_dict(model.network, state, what)
        model.network.load_state_dict(state, strict=True)
        return model.eval()

    @classmethod
    def random(cls, config: FlexConfig, template: Template, seed: int = 0,
               dinov2: DinoV2 | None = None) -> "FlexAvatarModel":
        """Random, non-degenerate weights (NOT a trained avatar model): for demos, tests, benchmarks."""
        model = cls(config, template, dinov2)
        init_random_weights(model.network, seed)
        return model.eval()

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """The flat checkpoint layout of ckpt-900k.pt."""
        return {k: v.detach().clone() for k, v in self.network.state_dict().items()}

    def save_checkpoint(self, path: str | Path) -> None:
        atomic_save(self.official_state_dict(), path)

    def save(self, path: str | Path) -> None:
        """Everything ``load`` needs in one safetensors file: the network's weights (the official key names), the
        template's tensors (``template.*``), DINOv2's (``dinov2.*``, when the model has it), and the configs in
        its metadata. Written to a temporary file beside ``path``, then renamed."""
        from safetensors.torch import save_file

        tensors = {k: v.contiguous() for k, v in self.official_state_dict().items()}
        for f in fields(Template):
            tensors[f"template.{f.name}"] = getattr(self.template, f.name).detach().contiguous()
        metadata = {"kind": MODEL_FILE_KIND, "config": json.dumps(self.config.to_dict())}
        if self.dinov2 is not None:
            tensors.update({f"dinov2.{k}": v.detach().contiguous() for k, v in self.dinov2.state_dict().items()})
            metadata["dinov2_config"] = json.dumps(dataclasses.asdict(self.dinov2.cfg))
        with atomic_path(path, suffix=".safetensors") as tmp:
            save_file(tensors, str(tmp), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> "FlexAvatarModel":
        """A ``save`` file → the model (eval mode), loaded strictly (network, template and DINOv2 tensors)."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        expected = "a file written by FlexAvatarModel.save (a checkpoint loads with from_checkpoint)"
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()} if metadata.get("kind") == MODEL_FILE_KIND else {}
        except (OSError, SafetensorError) as e:
            raise CheckpointError(f"cannot read model file {path}: {e}; expected {expected}") from None
        if metadata.get("kind") != MODEL_FILE_KIND:
            raise CheckpointError(f"{path} is not a FlexAvatarModel file (metadata kind "
                                  f"{metadata.get('kind')!r}); expected {expected}")
        missing = [f"template.{f.name}" for f in fields(Template) if f"template.{f.name}" not in tensors]
        if missing:
            raise CheckpointError(f"model file {path} has no {missing}; expected {expected}")
        template = Template(*(tensors.pop(f"template.{f.name}") for f in fields(Template)))
        dinov2 = None
        if "dinov2_config" in metadata:
            dinov2 = DinoV2(DinoV2Config(**json.loads(metadata["dinov2_config"])))
            state = {k[len("dinov2."):]: tensors.pop(k) for k in list(tensors) if k.startswith("dinov2.")}
            check_state_dict(dinov2, state, what=f"DINOv2 tensors of {path.name}")
            dinov2.load_state_dict(state)
            dinov2.eval()
        config = FlexConfig.from_dict(json.loads(metadata["config"]))
        return cls.from_checkpoint(tensors, template=template, dinov2=dinov2, config=config)

    # -- encode ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor, cam2world: torch.Tensor, intrinsics: torch.Tensor,
               features: torch.Tensor | None = None) -> AvatarCode:
        """images [B, 3, S, S] or [B, V, 3, S, S] RGB in [0, 1] on white; cam2world [B, (V,) 4, 4] OpenCV,
        head frame; intrinsics [B, (V,) 3, 3] normalised (pixels / S). features: DINOv2 patch features
        [B, V, C, h, w] to use instead of running DINOv2."""
        images, cam2world, intrinsics = self._check_encode_inputs(images, cam2world, intrinsics)
        if features is None:
            if self.dinov2 is None:
                raise InputError("encoding a photo needs DINOv2 features: load the model with "
                                 "dinov2=path/to/dinov2_vitb14_reg4_pretrain.pth or pass features=")
            b, v = images.shape[:2]
            feats = self.dinov2(images.reshape(b * v, *images.shape[2:]))
            features = feats.reshape(b, v, *feats.shape[1:])
        elif features.ndim != 5 or features.shape[:2] != images.shape[:2] or features.shape[2] != self.config.feature_dim:
            raise InputError(f"features must be [B, V, {self.config.feature_dim}, h, w] matching images "
                             f"{tuple(images.shape[:2])}, got {tuple(features.shape)}")
        return AvatarCode(self.network.encode(images, cam2world, intrinsics, features))

    def _check_encode_inputs(self, images, cam2world, intrinsics):
        s = self.config.image_size
        images = _as_tensor(images, "images")
        if images.ndim == 4:
            images, cam2world, intrinsics = images[:, None], _as_tensor(cam2world, "cam2world")[:, None], \
                _as_tensor(intrinsics, "intrinsics")[:, None]
        cam2world, intrinsics = _as_tensor(cam2world, "cam2world"), _as_tensor(intrinsics, "intrinsics")
        if images.ndim != 5 or images.shape[2:] != (3, s, s):
            raise InputError(f"images must be [B, 3, {s}, {s}] or [B, V, 3, {s}, {s}] RGB, got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise InputError(f"images must be float in [0, 1], got dtype {images.dtype} (divide uint8 by 255)")
        _check_finite(images, "images")
        lo, hi = images.min().item(), images.max().item()
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise InputError(f"images must be in [0, 1] (white background), got values in [{lo:.3g}, {hi:.3g}]")
        b, v = images.shape[:2]
        if v > self.config.n_input_views:
            raise InputError(f"{v} views per avatar given; the position table holds {self.config.n_input_views}")
        if cam2world.shape != (b, v, 4, 4):
            raise InputError(f"cam2world must be [{b}, 4, 4] (or [{b}, {v}, 4, 4]), got {tuple(cam2world.shape)}")
        if intrinsics.shape != (b, v, 3, 3):
            raise InputError(f"intrinsics must be [{b}, 3, 3] (or [{b}, {v}, 3, 3]), got {tuple(intrinsics.shape)}")
        _check_finite(cam2world, "cam2world")
        _check_finite(intrinsics, "intrinsics")
        c2w = cam2world.detach().to("cpu", torch.float64)          # small: check on the host, any device
        rot = c2w[..., :3, :3]
        if (rot @ rot.transpose(-1, -2) - torch.eye(3, dtype=torch.float64)).abs().max() > 1e-3 or \
                (c2w[..., 3, :] - torch.tensor([0, 0, 0, 1.0], dtype=torch.float64)).abs().max() > 1e-6:
            raise InputError("cam2world must be rigid 4×4 matrices (orthonormal rotation, last row [0, 0, 0, 1])")
        fx, fy = intrinsics[..., 0, 0], intrinsics[..., 1, 1]
        if (fx <= 0).any() or (fy <= 0).any():
            raise InputError("intrinsics: fx and fy must be positive")
        if (fx > 50).any() or (intrinsics[..., :2, 2].abs() > 10).any():
            raise InputError(f"intrinsics look like pixel units (fx up to {fx.max().item():.4g}); the model takes "
                             f"normalised intrinsics: divide K's first two rows by the image size {s}")
        weight = self.network._conv_patchify.weight
        return (images.to(weight.device, weight.dtype), cam2world.to(weight.device, weight.dtype),
                intrinsics.to(weight.device, weight.dtype))

    # -- decode ---------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, code: AvatarCode | torch.Tensor, expressions: torch.Tensor,
               dataset_id: int | torch.Tensor = MULTI_VIEW_DATASET_ID) -> Gaussians:
        """code: AvatarCode / tokens [R², B, D]; expressions [E, 135] (same for every avatar) or
        [B, E, 135]; dataset_id: 1 (multi-view, the demo default) or 0, or a tensor [B]. → Gaussians [B·E, G]."""
        tokens, expressions, ids = self._check_decode_inputs(code, expressions, dataset_id)
        out = self.network.decode(tokens, expressions, ids)
        return Gaussians(means=out["positions"], quats=out["rotations"], scales=out["scales"],
                         opacities=out["opacities"], sh0=out["colors"])

    def _check_decode_inputs(self, code, expressions, dataset_id):
        cfg = self.config
        tokens = code.tokens if isinstance(code, AvatarCode) else _as_tensor(code, "code")
        if tokens.ndim != 3 or tokens.shape[0] != cfg.n_head_tokens or tokens.shape[2] != cfg.d_hidden:
            raise InputError(f"avatar code must be [{cfg.n_head_tokens}, B, {cfg.d_hidden}], got {tuple(tokens.shape)}")
        _check_finite(tokens, "avatar code")
        b = tokens.shape[1]
        expressions = _as_tensor(expressions, "expressions")
        if expressions.ndim == 2:
            expressions = expressions[None].expand(b, -1, -1)
        if expressions.ndim != 3 or expressions.shape[0] != b or expressions.shape[2] != EXPRESSION_CODE_DIM:
            raise InputError(f"expressions must be [E, {EXPRESSION_CODE_DIM}] or [{b}, E, {EXPRESSION_CODE_DIM}], "
                             f"got {tuple(expressions.shape)}")
        if not expressions.is_floating_point():
            raise InputError(f"expressions must be floating point, got {expressions.dtype}")
        _check_finite(expressions, "expressions")
        ids = torch.as_tensor(dataset_id, dtype=torch.long).reshape(-1)
        if ids.numel() == 1:
            ids = ids.expand(b)
        if ids.shape != (b,) or ids.min() < 0 or ids.max() >= cfg.n_dataset_ids:
            raise InputError(f"dataset_id must be 0 (monocular) or 1 (multi-view), one or one per avatar ({b}); "
                             f"got {dataset_id}")
        dtype = self.network._conv_patchify.weight.dtype
        device = self.network._conv_patchify.weight.device
        return tokens.to(device, dtype), expressions.to(device, dtype), ids.to(device)


def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    raise InputError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")


def _check_finite(x: torch.Tensor, name: str) -> None:
    if x.is_floating_point() and not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).sum().item()
        raise InputError(f"{name} contains {bad} NaN/inf values")


# ---- random weights -----------------------------------------------------------------------------

@torch.no_grad()
def init_random_weights(network: FlexNetwork, seed: int = 0) -> None:
    """Seeded, non-degenerate random weights in the spirit of the fixture's perturbation (README
    "Weights"): linear N(0, 1/fan_in), norm gains 1 + N(0, 0.1²), biases N(0, 0.05²); StyleGAN conv
    weights N(0, 1), styles 1 + N(0, 0.25²), conv biases N(0, 0.1²); Gaussian head scale bias −5 + N(0, 0.7²)."""
    gen = torch.Generator().manual_seed(seed)

    def normal(t: torch.Tensor, mean: float = 0.0, std: float = 1.0) -> None:
        t.copy_(torch.randn(t.shape, generator=gen) * std + mean)

    for name, module in network.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and "_stylegan_upsampler" not in name:
            fan_in = module.weight[0].numel()
            normal(module.weight, std=fan_in ** -0.5)
            if module.bias is not None:
                normal(module.bias, std=0.05)
        elif isinstance(module, nn.LayerNorm) and module.weight is not None:
            normal(module.weight, 1.0, 0.1)
            normal(module.bias, std=0.05)
        elif isinstance(module, nn.Embedding):
            normal(module.weight)
    for name, p in network.named_parameters():
        if name.endswith(("norm_q.weight", "norm_k.weight", "norm_added_q.weight", "norm_added_k.weight")):
            normal(p, 1.0, 0.1)
        elif "_stylegan_upsampler" in name:
            if name.endswith("affine.bias"):
                normal(p, 1.0, 0.25)
            elif name.endswith("affine.weight"):
                normal(p, std=p.shape[1] ** -0.5)
            elif name.endswith(".weight"):
                normal(p)
            elif name.endswith(".bias"):
                normal(p, std=0.1)
        elif name == "_transformer_encoder.transformer.wpe.weight" or name.endswith("_head_token_embeddings"):
            normal(p, std=0.02)
    head = network._gaussian_decoder._mlp_decoder.out_layers
    normal(head["scaling"].bias, -5.0, 0.7)
    normal(head["opacity"].weight, std=2 * head["opacity"].weight.shape[1] ** -0.5)
    normal(head["opacity"].bias, 0.0, 0.5)
