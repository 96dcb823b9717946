"""Registration of the PyTorch reference and Triton backends (lazy: nothing heavy is imported here)."""
from __future__ import annotations

import functools
import importlib.util
import os

from .registry import GRAD_INPUTS, SPLAT_AND_BACKGROUND_GRADS, register_backend
from .types import RenderRequest, RenderResult


@functools.cache
def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _torch_device_available(device: str) -> str | None:
    if not _installed("torch"):
        return "PyTorch is not installed"
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return "no CUDA device is visible to PyTorch"
    return None


def _render_reference(request: RenderRequest) -> RenderResult:
    from .reference import render_request

    return render_request(request)


def _triton_available(device: str) -> str | None:
    if not _installed("triton"):
        return "the triton package is not installed"
    reason = _torch_device_available(device)
    if reason is not None:
        return reason
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "Triton runs on CPU tensors only in interpreter mode (set TRITON_INTERPRET=1 before importing triton)"
    return None


def _render_triton(request: RenderRequest) -> RenderResult:
    from .triton.backend import render_request

    return render_request(request)


def register_builtin_backends() -> None:
    register_backend(
        "reference", _render_reference, array_type="torch", priorities={"cpu": 0, "cuda": 0},
        dtypes=("float32", "float64"), differentiable=GRAD_INPUTS, availability=_torch_device_available,
        install_hint="pip install torch",
        description="pure PyTorch, readable oracle; differentiable through autograd",
    )
    register_backend(
        "triton", _render_triton, array_type="torch", priorities={"cuda": 100, "cpu": -100},
        # the fused backward computes no world2cam / K gradients
        dtypes=("float32",), differentiable=SPLAT_AND_BACKGROUND_GRADS, availability=_triton_available,
        install_hint="pip install 'flexavatar[triton]'",
        description="Triton kernels: projection, tile binning, tile blending, fused backward (no camera gradients)",
    )
