"""flexavatar.kernels: the tile-based Gaussian rasterizer (gsplat classic mode, SH degree 0).

    from flexavatar.kernels import Splats, Cameras, rasterize
    result = rasterize(Splats(means, quats, scales, opacities, sh0), Cameras(world2cam, K), 512, 512)
    result.rgb, result.alpha, result.depth, result.backend   # [N,H,W,3], [N,H,W,1], [N,H,W,1], "triton"

Backends plug in through ``registry.register_backend`` (see its module docstring). Importing this
package imports numpy only: torch and triton are imported by the backends that need them.
For compiled code (``torch.compile``, CUDA graphs) the native backends are also a PyTorch operator,
``torch.ops.flexavatar.rasterize`` (``kernels.torch_op.rasterize_op()`` registers it).
"""
import importlib.util as _importlib_util

from .api import rasterize
from .builtin_backends import register_builtin_backends as _register_builtin_backends
from .cameras import pixel_intrinsics, world2cam_from_cam2world
from .errors import (
    BackendError,
    BackendRegistrationError,
    BackendUnavailableError,
    InputDeviceError,
    InputShapeError,
    InputTypeError,
    InputValueError,
    InvalidInputError,
    KernelError,
    NonFiniteInputError,
    UnknownBackendError,
)
from .registry import (
    GRAD_INPUTS,
    SPLAT_GRADS,
    BackendSpec,
    available_backends,
    get_backend,
    register_backend,
    registered_backends,
    select_backend,
    unregister_backend,
)
from .types import Cameras, RenderRequest, RenderResult, Splats
from .validation import validate_request

_register_builtin_backends()
# Native cpu/cuda backends register themselves from kernels/native.py when it exists.
if _importlib_util.find_spec(__name__ + ".native") is not None:
    from . import native  # noqa: F401

__all__ = [
    "rasterize", "Splats", "Cameras", "RenderRequest", "RenderResult", "validate_request",
    "register_backend", "unregister_backend", "registered_backends", "available_backends",
    "get_backend", "select_backend", "BackendSpec", "GRAD_INPUTS", "SPLAT_GRADS", "pixel_intrinsics",
    "world2cam_from_cam2world",
    "KernelError", "InvalidInputError", "InputShapeError", "InputTypeError", "InputDeviceError",
    "NonFiniteInputError", "InputValueError", "BackendError", "UnknownBackendError",
    "BackendUnavailableError", "BackendRegistrationError",
]
