"""Input validation shared by every backend: one place, typed errors naming the argument.

``validate_request`` checks types, dtypes, devices, shapes and (optionally) values, then returns a
``RenderRequest`` with splats broadcast to ``[N, G, ...]``, cameras to ``[N, ...]`` and the
background to ``[N, 3]``. It works on numpy arrays and torch tensors without importing torch.
"""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from .arrays import NUMPY, TORCH, array_kind, dtype_name, to_torch
from .errors import (
    InputDeviceError,
    InputShapeError,
    InputTypeError,
    InputValueError,
    NonFiniteInputError,
)
from .types import Cameras, RenderRequest, Splats

FLOAT_DTYPES = ("float32", "float64")
MAX_IMAGE_SIZE = 16384
# Last dimensions of each splat attribute ([G, *tail] or [N, G, *tail]).
SPLAT_TAILS = {"means": (3,), "quats": (4,), "scales": (3,), "opacities": (), "sh0": (3,)}
ROTATION_TOLERANCE = 1e-3  # world2cam rotations must be orthonormal to this (max |R R^T - I|)


def _shape_str(shape) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _check_array(name: str, x: Any, like: Any) -> None:
    """Same array type, dtype and device as ``like`` (splats.means)."""
    kind = array_kind(like)
    if array_kind(x) != kind:
        raise InputTypeError(name, f"got {type(x).__module__}.{type(x).__name__}",
                             f"a {kind} array like splats.means (do not mix numpy and torch)")
    if dtype_name(x) != dtype_name(like):
        raise InputTypeError(name, f"dtype is {dtype_name(x)}", f"{dtype_name(like)}, the dtype of splats.means")
    if kind == TORCH and x.device != like.device:
        raise InputDeviceError(name, f"is on device {x.device}", f"the device of splats.means ({like.device})")


def _leading(name: str, x: Any, tail: tuple[int, ...], num_gaussians: int | None) -> tuple[int | None, int]:
    """Split ``x.shape`` into (views or None, G), checking the trailing dims."""
    shape = tuple(x.shape)
    rank = len(tail) + 1
    if len(shape) not in (rank, rank + 1) or shape[len(shape) - len(tail):] != tail:
        dims = "".join(f", {d}" for d in tail)
        raise InputShapeError(name, f"has shape {_shape_str(shape)}", f"[G{dims}] or [N, G{dims}]")
    g = shape[-len(tail) - 1]
    if num_gaussians is not None and g != num_gaussians:
        raise InputShapeError(name, f"has {g} Gaussians (shape {_shape_str(shape)})",
                              f"{num_gaussians} Gaussians, as in splats.means")
    return (shape[0] if len(shape) == rank + 1 else None), g


def _check_views(name: str, views: int | None, num_views: int, source: str) -> None:
    if views is not None and views not in (1, num_views):
        raise InputShapeError(name, f"has {views} views along its first axis",
                              f"1 (shared by all views) or {num_views} views, the batch size of {source}")


def _all(x) -> bool:
    return bool(x.all())


def _count(x) -> int:
    return int(x.sum())


def _check_finite(name: str, x: Any) -> None:
    finite = np.isfinite(x) if array_kind(x) == NUMPY else x.isfinite()
    if not _all(finite):
        raise NonFiniteInputError(name, f"{_count(~finite)} entries are NaN or inf", "finite values")


def _check_size(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputTypeError(name, f"got {type(value).__name__} {value!r}", "a positive int")
    if not 1 <= int(value) <= MAX_IMAGE_SIZE:
        raise InputValueError(name, f"is {value}", f"an int in [1, {MAX_IMAGE_SIZE}]")
    return int(value)


MAX_INTERSECTION_CAPACITY = 2**31 - 1   # the CUDA sort indexes its slots with int32


def check_intersection_capacity(value: Any) -> int:
    """``rasterize``'s intersection_capacity: an int in [0, 2^31 - 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputTypeError("intersection_capacity", f"got {type(value).__name__} {value!r}", "an int")
    if not 0 <= int(value) <= MAX_INTERSECTION_CAPACITY:
        raise InputValueError("intersection_capacity", f"is {value}",
                              f"0 (sized exactly) or a number of slots in [1, {MAX_INTERSECTION_CAPACITY}]")
    return int(value)


def _broadcast(x: Any, shape: tuple[int, ...]):
    have = tuple(x.shape)
    if have == shape:
        return x
    if shape[0] == 1 and have == shape[1:]:
        return x[None]                # one view: a plain view (numpy's broadcast_to costs ~10 µs a call)
    return np.broadcast_to(x, shape) if array_kind(x) == NUMPY else x.expand(shape)


def _background_array(background: Any, like: Any) -> Any:
    """The background colour as an array of ``like``'s type, dtype and device (it is plain data:
    lists, numpy arrays and tensors are all accepted and converted)."""
    if background is None:
        background = [0.0, 0.0, 0.0]
    if array_kind(background) == TORCH:
        if array_kind(like) == TORCH:
            return background.to(device=like.device, dtype=like.dtype)   # not detached: it may need grad
        if background.requires_grad:   # numpy splats: the gradient could never reach it
            raise InputTypeError("background", "is a torch tensor that requires grad while splats.means is numpy",
                                 "torch splats and cameras, or a background that does not require grad")
        background = background.cpu().numpy()
    try:
        background = np.asarray(background, dtype=dtype_name(like))
    except (TypeError, ValueError) as exc:
        raise InputTypeError("background", f"cannot be read as numbers ({exc})",
                             "None, 3 floats, or an array [3] / [N, 3]") from None
    return background if array_kind(like) == NUMPY else to_torch(background, like=like)


def validate_request(splats: Splats, cameras: Cameras, width: Any, height: Any,
                     background: Any = None, *, check_values: bool = True) -> RenderRequest:
    """Check every argument of ``rasterize`` and return the normalised request (see module doc)."""
    if not isinstance(splats, Splats):
        raise InputTypeError("splats", f"got {type(splats).__name__}", "a flexavatar.kernels.Splats")
    if not isinstance(cameras, Cameras):
        raise InputTypeError("cameras", f"got {type(cameras).__name__}", "a flexavatar.kernels.Cameras")
    width, height = _check_size("width", width), _check_size("height", height)

    means = splats.means
    kind = array_kind(means)
    if kind is None:
        raise InputTypeError("splats.means", f"got {type(means).__name__}", "a numpy array or torch tensor")
    dtype = dtype_name(means)
    if dtype not in FLOAT_DTYPES:
        raise InputTypeError("splats.means", f"dtype is {dtype}", "float32 or float64")

    background = _background_array(background, means)
    named = {f"splats.{k}": v for k, v in splats.arrays().items()}
    named.update({"cameras.world2cam": cameras.world2cam, "cameras.K": cameras.K})
    # fast path (this runs every frame of a real-time renderer): the same class, dtype and device as means;
    # anything else (subclasses included) gets the full check, which names what is wrong
    same_class, same_dtype, same_device = type(means), means.dtype, getattr(means, "device", None)
    for name, x in named.items():
        if not (type(x) is same_class and x.dtype == same_dtype and getattr(x, "device", None) == same_device):
            _check_array(name, x, means)

    # --- shapes ---------------------------------------------------------------------------
    views: dict[str, int | None] = {}
    num_gaussians = None
    for key, tail in SPLAT_TAILS.items():
        views[f"splats.{key}"], num_gaussians = _leading(f"splats.{key}", getattr(splats, key), tail, num_gaussians)
    for name, side in (("cameras.world2cam", 4), ("cameras.K", 3)):
        shape = tuple(named[name].shape)
        if len(shape) not in (2, 3) or shape[-2:] != (side, side):
            raise InputShapeError(name, f"has shape {_shape_str(shape)}", f"[{side}, {side}] or [N, {side}, {side}]")
        views[name] = shape[0] if len(shape) == 3 else None
    bg_shape = tuple(background.shape)
    if len(bg_shape) not in (1, 2) or bg_shape[-1] != 3:
        raise InputShapeError("background", f"has shape {_shape_str(bg_shape)}", "[3] or [N, 3]")
    views["background"] = bg_shape[0] if len(bg_shape) == 2 else None

    # N: the cameras' batch size when it exceeds 1, else the largest batch of the splats or
    # background; a batch of 1 (or none) is shared by all N views, so one camera may render N
    # per-view splat batches.
    batched = {k: v for k, v in views.items() if v is not None}
    sizes = {k: v for k, v in batched.items() if k.startswith("cameras.") and v > 1} or batched
    source = max(sizes, key=sizes.get) if sizes else "cameras.world2cam"
    num_views = sizes.get(source, 1)
    if num_views == 0:
        raise InputShapeError(source, "has 0 views", "at least one view")
    for name, v in views.items():
        _check_views(name, v, num_views, source)

    # --- values ---------------------------------------------------------------------------
    if check_values:
        _check_values(splats, cameras, background)

    g = num_gaussians
    n = num_views
    normalised = Splats(**{
        key: _broadcast(getattr(splats, key), (n, g, *tail)) for key, tail in SPLAT_TAILS.items()
    })
    return RenderRequest(
        splats=normalised,
        cameras=Cameras(world2cam=_broadcast(cameras.world2cam, (n, 4, 4)), K=_broadcast(cameras.K, (n, 3, 3))),
        width=width,
        height=height,
        background=_broadcast(background, (n, 3)),
    )


def _check_values(splats: Splats, cameras: Cameras, background: Any) -> None:
    detach = lambda x: x.detach() if array_kind(x) == TORCH else x  # noqa: E731  (checks need no graph)
    splats = Splats(**{k: detach(v) for k, v in splats.arrays().items()})
    cameras, background = Cameras(detach(cameras.world2cam), detach(cameras.K)), detach(background)
    for key, x in splats.arrays().items():
        _check_finite(f"splats.{key}", x)
    _check_finite("cameras.world2cam", cameras.world2cam)
    _check_finite("cameras.K", cameras.K)
    _check_finite("background", background)

    scales = splats.scales
    bad = scales <= 0
    if not _all(~bad):
        raise InputValueError("splats.scales", f"{_count(bad)} values are <= 0 (min {float(scales.min()):.3g})",
                              "standard deviations > 0")
    quats = splats.quats
    with np.errstate(over="ignore"):
        norm2 = (quats * quats).sum(-1)
    zero = norm2 <= 1e-24
    if not _all(~zero):
        raise InputValueError("splats.quats", f"{_count(zero)} quaternions have zero norm",
                              "non-zero quaternions (w, x, y, z); they are normalised inside")
    # |q|^2 overflows (float32: |q| > ~1.8e19): every backend would normalise q to 0, i.e. no rotation
    huge = ~(np.isfinite(norm2) if array_kind(norm2) == NUMPY else norm2.isfinite())
    if not _all(~huge):
        raise InputValueError("splats.quats", f"{_count(huge)} quaternions have a norm too large (|q|^2 overflows)",
                              "quaternions of moderate norm; normalise them before rendering")
    opac = splats.opacities
    outside = (opac < 0) | (opac > 1)
    if not _all(~outside):
        raise InputValueError("splats.opacities", f"{_count(outside)} values lie outside [0, 1]",
                              "opacities in [0, 1] (after the sigmoid)")

    K = cameras.K
    if not (_all(K[..., 0, 0] > 0) and _all(K[..., 1, 1] > 0)):
        raise InputValueError("cameras.K", "has a focal length fx or fy <= 0", "fx > 0 and fy > 0 in pixels")
    if not (_all(K[..., 0, 1] == 0) and _all(K[..., 1, 0] == 0)):
        raise InputValueError("cameras.K", "has a non-zero skew or K[1, 0]", "[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]")
    if not (_all(K[..., 2, 0] == 0) and _all(K[..., 2, 1] == 0) and _all(K[..., 2, 2] == 1)):
        raise InputValueError("cameras.K", "has a last row other than [0, 0, 1]", "[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]")

    w2c = cameras.world2cam
    bottom = w2c[..., 3, :]
    if not (_all(bottom[..., :3] == 0) and _all(bottom[..., 3] == 1)):
        raise InputValueError("cameras.world2cam", "has a last row other than [0, 0, 0, 1]", "a rigid 4x4 transform")
    rot = w2c[..., :3, :3]
    gram = rot @ rot.swapaxes(-1, -2)
    eye = np.eye(3, dtype=gram.dtype) if array_kind(gram) == NUMPY else to_torch(np.eye(3), like=gram)
    err = float(abs(gram - eye).max())
    if err > ROTATION_TOLERANCE:
        raise InputValueError("cameras.world2cam", f"has a rotation block that is not orthonormal (max |R R^T - I| = {err:.3g})",
                              f"a rigid transform (tolerance {ROTATION_TOLERANCE})")
