"""Reading checkpoints (a flat state dict, SPEC §1) with typed, specific errors."""
from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from .errors import CheckpointError
from .files import atomic_path

# Stored in the official checkpoint but unused at inference (SPEC §1): accepted, loaded, never read.
DEAD_KEY_SUFFIXES = ("_head_transformer._head_token_embeddings", ".affine.weight")
_SHOW = 5  # list at most this many offending keys per category


def read_state_dict(path: str | Path, what: str = "checkpoint",
                    expected: str = "a torch.save'd flat state dict (like ckpt-900k.pt) or a .safetensors file"
                    ) -> dict[str, torch.Tensor]:
    """Load a flat {name: tensor} mapping from a torch.save file (weights_only) or a .safetensors file.
    ``what`` names the file in errors ("checkpoint", "DINOv2 weights"), ``expected`` says what it should be."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{what} {path} is a folder; expected a file: {expected}")
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path} (expected {expected})")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{what} {path} is empty (0 bytes)")
    safetensors = _is_safetensors(path)     # by content: the name's extension may be wrong or upper-case
    try:
        if safetensors:
            from safetensors.torch import load_file
            obj = load_file(str(path))
        else:
            with path.open("rb") as f:   # a file object: torch.load would pick safetensors by the name's extension
                obj = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every reader failure means the same thing to the user
        raise CheckpointError(f"cannot read {what} {path} ({size} bytes): {_unreadable_reason(path, e, safetensors)}; "
                              f"expected {expected}") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{what} {path} holds a {type(obj).__name__}, expected a flat state dict "
                              "mapping parameter names to tensors")
    nested = [k for k in ("state_dict", "model", "model_state_dict", "ema") if k in obj
              and isinstance(obj[k], Mapping)]
    if nested:
        raise CheckpointError(f"{what} {path} looks like a training checkpoint (keys {sorted(obj)[:6]}); "
                              f"expected the model's flat state dict — try extracting obj[{nested[0]!r}]")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{what} {path}: {len(bad)} entries are not name → tensor, e.g. {bad[:_SHOW]}")
    return dict(obj)


def _is_safetensors(path: Path) -> bool:
    """safetensors files start with their JSON header's length (8 bytes, little-endian), then '{'."""
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < path.stat().st_size


def _unreadable_reason(path: Path, error: Exception, safetensors: bool) -> str:
    """Why a weight file did not load, in a line (torch.load's own message is a page that suggests
    weights_only=False — i.e. running the file's code — which is never the fix here)."""
    if not safetensors:
        with path.open("rb") as f:
            head = f.read(4)
        if head.startswith(b"PK") and not zipfile.is_zipfile(path):    # torch.save writes a zip archive
            return "a torch.save zip archive cut short (truncated: did the download or copy finish?)"
        if not head.startswith((b"PK", b"\x80")):                          # 0x80: a legacy pickle
            return f"not a torch.save file nor a safetensors file (it starts with {head!r})"
        if "Weights only load failed" in str(error):
            return ("it holds Python objects besides tensors, which are not loaded (that would run code from the "
                    "file): save just the state dict (torch.save(model.state_dict(), ...))")
    first_line = next((line for line in str(error).splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {first_line[:200]} — the file may be truncated or of another format"


def check_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str = "checkpoint",
                     size_hint: str = "the file may be of another model size — pass the matching config "
                                      "(e.g. config=model_config.json)") -> None:
    """Raise CheckpointError listing missing / unexpected keys, shape or dtype mismatches and tensors holding
    NaN/inf. ``size_hint`` says what to do when tensor sizes differ (it depends on what is being loaded)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: got {tuple(state[k].shape)}, expected {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    dtypes = [f"{k}: {state[k].dtype}" for k in expected if k in state and not state[k].is_floating_point()]
    layouts = [f"{k}: {state[k].layout}" for k in expected if k in state and state[k].layout != torch.strided]
    if missing or unexpected or shapes or dtypes or layouts:
        parts = [f"{what} does not fit the model ({len(expected)} tensors expected, {len(state)} found)"]
        for name, items in (("missing keys", missing), ("unexpected keys", unexpected),
                            ("shape mismatches", shapes), ("non-floating tensors", dtypes),
                            ("non-dense tensors (expected torch.strided)", layouts)):
            if items:
                parts.append(f"{len(items)} {name}: " + _listing(items))
        if shapes:
            parts.append(f"tensor sizes differ: {size_hint}")
        raise CheckpointError("\n  ".join(parts))
    # NaN/inf weights load fine and only show up later as NaN outputs (or a misleading export parity error)
    bad = [f"{k} ({(~torch.isfinite(state[k])).sum().item()} of {state[k].numel()} values)"
           for k in expected if not torch.isfinite(state[k]).all()]
    if bad:
        raise CheckpointError(f"{what} has NaN/inf values in {len(bad)} tensors: {_listing(bad)}; expected finite "
                              "weights (a corrupt file, or saved from a diverged training run)")


def _listing(items: list[str]) -> str:
    more = f" … and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return ", ".join(items[:_SHOW]) + more


def atomic_save(obj, path: str | Path) -> None:
    """torch.save through a temp file in the target folder, renamed when complete: never a half-written checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
