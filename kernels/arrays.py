"""Tiny helpers to treat numpy arrays and torch tensors alike without importing torch eagerly."""
from __future__ import annotations

import sys
from typing import Any

import numpy as np

NUMPY = "numpy"
TORCH = "torch"


def is_torch_tensor(x: Any) -> bool:
    # If torch was never imported, x cannot be a tensor: no need to import it to find out.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def array_kind(x: Any) -> str | None:
    """``"numpy"``, ``"torch"`` or None for anything else."""
    if isinstance(x, np.ndarray):
        return NUMPY
    if is_torch_tensor(x):
        return TORCH
    return None


def device_of(x: Any) -> str:
    """Device *type* of an array: ``"cpu"`` for numpy, ``tensor.device.type`` for torch."""
    return x.device.type if is_torch_tensor(x) else "cpu"


_DTYPE_NAMES: dict[Any, str] = {}      # numpy's str(dtype) costs ~15 µs: once per dtype, not per call


def dtype_name(x: Any) -> str:
    """``"float32"``, ``"float64"``, ``"int64"``... for numpy and torch alike."""
    dtype = x.dtype
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = str(dtype).removeprefix("torch.")
    return name


def to_numpy(x: Any) -> np.ndarray:
    if is_torch_tensor(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def to_torch(x: Any, like: Any = None):
    import torch

    t = x if is_torch_tensor(x) else torch.from_numpy(np.array(x, copy=True))  # owns writable memory
    if like is not None:
        t = t.to(device=like.device, dtype=like.dtype)
    return t


def convert(x: Any, kind: str):
    """Convert an array to ``kind`` (``"numpy"`` or ``"torch"``); no copy when already that kind."""
    return to_numpy(x) if kind == NUMPY else to_torch(x)
