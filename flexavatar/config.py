"""The FLEX-1 configuration: one dataclass, defaults = the official FLEX-1 release (SPEC §2)."""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class FlexConfig:
    d_hidden: int = 768               # D: token width of every transformer
    n_heads: int = 4                  # head dim = D / n_heads (192 for FLEX-1)
    image_size: int = 512             # input image is image_size² RGB
    patch_size: int = 16              # patchify conv kernel/stride → (512/16)² = 1024 image tokens
    n_layers_encoder: int = 1         # causal GPT encoder blocks
    n_position_rows: int = 1024       # GPT position table rows; hard-wired to (512/patch)² · views officially
    feature_dim: int = 768            # DINOv2 feature width (fused after the GPT encoder)
    res_head_tokens: int = 32         # R: the avatar code is an R×R UV grid of tokens
    n_layers_head: int = 4            # head transformer (encode) joint layers
    n_layers_expression: int = 8      # expression transformer (per frame) joint layers
    d_expression_codes: int = 135     # expression code layout, SPEC §14
    n_expression_tokens: int = 4      # MLP(code) → this many context tokens
    n_dataset_ids: int = 2            # bias-sink tokens: 0 monocular, 1 multi-view/3D
    upscale_uv_texture: int = 4       # upsampler: R → R·4 (two ×2 blocks)
    oversampling_factor: int = 2      # Gaussian template grid = R·upscale·oversampling
    channel_base: int = 32768         # StyleGAN channels per resolution: min(base / res, max)
    channel_max: int = 512
    w_dim: int = 512                  # width of the (identically zero) StyleGAN latent
    n_input_views: int = 1

    def __post_init__(self) -> None:
        # every size is a count: check types first, so the arithmetic below cannot fail untyped
        bad = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
               if not _is_count(getattr(self, f.name))]
        if bad:
            raise ConfigError(f"invalid FlexConfig: expected integers ≥ 1, got {', '.join(bad)}")
        problems = []
        if self.d_hidden % self.n_heads:
            problems.append(f"d_hidden={self.d_hidden} is not divisible by n_heads={self.n_heads}")
        if self.image_size % self.patch_size:
            problems.append(f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}")
        if self.upscale_uv_texture < 2 or self.upscale_uv_texture & (self.upscale_uv_texture - 1):
            problems.append(f"upscale_uv_texture={self.upscale_uv_texture} must be a power of two ≥ 2")
        if self.d_hidden % (4 ** self.n_upsampler_blocks):
            problems.append(f"d_hidden={self.d_hidden} must be divisible by 4^{self.n_upsampler_blocks} (pixel-shuffle skip path)")
        if self.n_image_tokens > self.n_position_rows:
            problems.append(f"{self.n_image_tokens} image tokens exceed the {self.n_position_rows}-row position table")
        if problems:
            raise ConfigError("invalid FlexConfig: " + "; ".join(problems))

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.d_hidden // self.n_heads

    @property
    def token_grid(self) -> int:
        """Image tokens per side (32 for FLEX-1)."""
        return self.image_size // self.patch_size

    @property
    def n_image_tokens(self) -> int:
        return self.token_grid ** 2 * self.n_input_views

    @property
    def n_head_tokens(self) -> int:
        """Tokens in the avatar code (1024 for FLEX-1)."""
        return self.res_head_tokens ** 2

    @property
    def n_upsampler_blocks(self) -> int:
        return int(math.log2(self.upscale_uv_texture))

    @property
    def res_gaussian_grid(self) -> int:
        """Side of the UV sample grid that defines the Gaussians (256 for FLEX-1)."""
        return self.res_head_tokens * self.upscale_uv_texture * self.oversampling_factor

    @property
    def d_gaussian_features(self) -> int:
        """Channels of the upsampled UV feature map (48 for FLEX-1)."""
        return self.d_hidden // 4 ** self.n_upsampler_blocks

    def upsampler_channels(self, res: int) -> int:
        return min(self.channel_base // res, self.channel_max)

    # ---- I/O -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        rows = [f"  {k:<22} {v}" for k, v in self.to_dict().items()]
        return "FlexConfig(\n" + "\n".join(rows) + "\n)"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "FlexConfig":
        if not isinstance(values, dict):
            raise ConfigError(f"a FlexConfig must be a JSON object of fields, got {_json_type(values)}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown FlexConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_official_json(cls, path_or_dict: str | Path | dict) -> "FlexConfig":
        """Read the official ``model_config.json`` schema (also the fixtures' ``config.json``).

        Fields that the FLEX-1 inference path ignores (SPEC §2) and fields this reader does not know
        are named in one warning; settings that would select another architecture raise ConfigError.
        """
        raw = path_or_dict if isinstance(path_or_dict, dict) else _read_json(Path(path_or_dict))
        raw = json.loads(json.dumps(raw))  # deep copy: we pop what we consume
        if not isinstance(raw, dict):
            raise ConfigError(f"official config must be a JSON object, got {_json_type(raw)}")
        if "head_transformer" not in raw or "gaussian_decoder" not in raw:
            raise ConfigError("official config needs 'head_transformer' and 'gaussian_decoder' sections")
        head = _section(raw, "head_transformer", "head_transformer")
        gdec = _section(raw, "gaussian_decoder", "gaussian_decoder")
        tf = _section(head, "transformer", "head_transformer.transformer")
        fixture = _section(raw, "_fixture", "_fixture")
        ignored: list[str] = []
        unknown: list[str] = []

        def take(section: dict, key: str, where: str, default: Any = None, required: bool = True) -> Any:
            if key in section:
                return section.pop(key)
            if required:
                raise ConfigError(f"official config is missing '{where}.{key}'")
            return default

        def expect(section: dict, key: str, where: str, value: Any) -> None:
            if key in section and section.pop(key) != value:
                raise ConfigError(f"'{where}.{key}' must be {value!r} for the FLEX-1 architecture")

        values: dict[str, Any] = {}
        values["d_hidden"] = take(tf, "d_hidden", "head_transformer.transformer")
        values["n_heads"] = take(tf, "n_heads", "head_transformer.transformer")
        values["n_layers_head"] = take(tf, "n_layers", "head_transformer.transformer")
        expect(tf, "use_causal_attention", "head_transformer.transformer", True)
        for key in ("use_custom_attention", "use_qk_norm", "use_layer_norm_keys", "use_alternating_self_attention"):
            if key in tf:
                tf.pop(key)
                ignored.append(f"head_transformer.transformer.{key}")
        unknown += [f"head_transformer.transformer.{k}" for k in tf]

        values["res_head_tokens"] = take(head, "res_head_tokens", "head_transformer")
        values["n_layers_expression"] = take(head, "n_layers_expression_transformer", "head_transformer")
        values["d_expression_codes"] = take(head, "d_expression_codes", "head_transformer")
        values["n_expression_tokens"] = take(head, "n_expression_tokens", "head_transformer")
        for key, val in (("head_transformer_type", "UV_TEXTURE"), ("cross_attention_type", "Q2K"),
                         ("use_lam_transformer", True), ("use_lam_point_embedder", True),
                         ("use_head_tokens", True), ("use_dataset_ids", True)):
            expect(head, key, "head_transformer", val)
        views = head.pop("n_input_views", 1)
        for key in ("res_image_tokens", "block_size_estimate_version", "head_template"):
            if key in head:
                head.pop(key)
                ignored.append(f"head_transformer.{key}")
        unknown += [f"head_transformer.{k}" for k in head]

        values["upscale_uv_texture"] = take(gdec, "upscale_uv_texture", "gaussian_decoder")
        values["oversampling_factor"] = take(gdec, "oversampling_factor", "gaussian_decoder")
        for key, val in (("sh_degree", 0), ("use_stylegan_pixelshuffle_upsampler", True),
                         ("initialize_with_image", True), ("use_lam_gs_decoder", True),
                         ("use_norm_before_mlp", False), ("n_gaussians_per_token", 1),
                         ("head_transformer_type", "UV_TEXTURE"), ("n_channels_color", 3)):
            expect(gdec, key, "gaussian_decoder", val)
        for key in ("res_head_tokens", "d_hidden"):
            if key in gdec and gdec.pop(key) != values["res_head_tokens" if key == "res_head_tokens" else "d_hidden"]:
                raise ConfigError(f"gaussian_decoder.{key} disagrees with head_transformer")
        for key in ("n_mlp_layers", "scale_offset", "scale_max", "scale_min", "position_range", "res_uv_texture",
                    "res_image_tokens", "fix_mlp_order", "use_head_tokens", "head_template", "d_expression_codes"):
            if key in gdec:
                gdec.pop(key)
                ignored.append(f"gaussian_decoder.{key}")
        unknown += [f"gaussian_decoder.{k}" for k in gdec]

        values["patch_size"] = take(raw, "patch_size", "")
        values["n_layers_encoder"] = take(raw, "n_layers_encoder", "")
        values["feature_dim"] = take(raw, "feature_dim", "")
        values["n_input_views"] = raw.pop("n_input_views", views)
        for key, val in (("in_channels", 3), ("use_feature_projection", True), ("use_plucker", True)):
            expect(raw, key, "", val)
        for key in ("use_bfloat16", "compile", "use_gsplat"):
            if key in raw:
                raw.pop(key)
                ignored.append(key)  # inference is float32, eager; rendering is ours
        unknown += list(raw)

        # The fixture block records settings the official JSON cannot express (README "reduced configuration").
        if fixture:
            values["image_size"] = fixture.get("image_height", 512)
            if fixture.get("image_width", values["image_size"]) != values["image_size"]:
                raise ConfigError("only square input images are supported")
            ups = _section(fixture, "stylegan_upsampler", "_fixture.stylegan_upsampler")
            for key in ("channel_base", "channel_max", "w_dim"):
                if key in ups:
                    values[key] = ups[key]
        if _is_count(values["patch_size"]) and _is_count(values["n_input_views"]):   # else FlexConfig names them
            values["n_position_rows"] = (512 // values["patch_size"]) ** 2 * values["n_input_views"]

        if ignored or unknown:
            msg = []
            if ignored:
                msg.append("ignored (no effect on the FLEX-1 inference path, SPEC §2): " + ", ".join(ignored))
            if unknown:
                msg.append("unknown, not used: " + ", ".join(unknown))
            warnings.warn("official config fields " + "; ".join(msg), stacklevel=2)
        return cls(**values)


def _read_json(path: Path) -> dict:
    if path.is_dir():
        raise ConfigError(f"config {path} is a folder; expected a JSON file (model_config.json)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid UTF-8 JSON: {e}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None


def _section(parent: dict, key: str, where: str) -> dict:
    """parent[key] popped; an optional section, but when present it must be a JSON object."""
    value = parent.pop(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"official config '{where}' must be a JSON object, got {_json_type(value)}")
    return value


def _is_count(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


FLEX1 = FlexConfig()


def small_config() -> FlexConfig:
    """A small random-weight configuration for demos and tests (same code path as FLEX-1)."""
    return FlexConfig(d_hidden=64, n_heads=4, image_size=128, patch_size=16, n_layers_encoder=1,
                      n_position_rows=64, feature_dim=32, res_head_tokens=8, n_layers_head=2,
                      n_layers_expression=2, channel_base=512)
