"""Registry of rasterizer backends: ``rasterize(..., backend=NAME)`` looks the name up here.

How to add a backend (the native ``cpu``/``cuda`` backends do this from ``kernels/native.py``,
which ``flexavatar.kernels`` imports when present)::

    from flexavatar.kernels.registry import register_backend
    from flexavatar.kernels.types import RenderRequest, RenderResult

    def render_cpu(request: RenderRequest) -> RenderResult:
        # request.splats.means: [N, G, 3] numpy float32 (maybe a stride-0 broadcast along N),
        # request.cameras.world2cam: [N, 4, 4], request.cameras.K: [N, 3, 3],
        # request.width, request.height: int, request.background: [N, 3].
        # Inputs are already validated (validation.py): no checks needed here.
        rgb, alpha, depth = my_native_module.render(...)           # [N,H,W,3], [N,H,W,1], [N,H,W,1]
        return RenderResult(rgb=rgb, alpha=alpha, depth=depth)     # ``backend`` is filled in for you

    register_backend(
        "cpu", render_cpu,
        array_type="numpy",             # what render() receives and returns: "numpy" or "torch"
        priorities={"cpu": 100},        # devices it runs on -> rank for backend="auto" (highest wins)
        dtypes=("float32",),            # input dtypes it accepts
        differentiable=False,           # which inputs get gradients through torch outputs: False,
                                        # True (all of GRAD_INPUTS) or some names from GRAD_INPUTS
        availability=lambda device: None if native_ok() else "flexavatar._native was not built",
        install_hint="pip install flexavatar (a wheel with the native module)",
    )

Rules: registering must not import torch or triton (import them inside ``render`` or
``availability``); ``availability(device)`` returns None when the backend can run on that device
type, else a short reason; it is asked on every selection, so cache anything slow. Arrays are
converted between numpy and torch for you when the caller's type differs from ``array_type``
(results come back in the caller's type). ``backend="auto"`` only picks a backend whose
``differentiable`` covers every input that requires grad; naming one that does not is an error
(a backend that returned None for such an input would silently drop its gradient). Priorities
in use: reference 0 (cpu, cuda), triton 100 (cuda) and -100 (cpu, interpreter only: slower than
the reference).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Collection, Iterable, Mapping

from .arrays import NUMPY, TORCH
from .errors import (BackendRegistrationError, BackendUnavailableError, InputTypeError, InputValueError,
                     UnknownBackendError)
from .types import SPLAT_FIELDS, RenderRequest, RenderResult

RenderFn = Callable[[RenderRequest], RenderResult]
AvailabilityFn = Callable[[str], "str | None"]
# The inputs of ``rasterize`` a backend may differentiate (names as in the typed input errors).
GRAD_INPUTS = (*(f"splats.{f}" for f in SPLAT_FIELDS), "cameras.world2cam", "cameras.K", "background")
SPLAT_AND_BACKGROUND_GRADS = tuple(name for name in GRAD_INPUTS if not name.startswith("cameras."))
SPLAT_GRADS = tuple(name for name in GRAD_INPUTS if name.startswith("splats."))      # e.g. fitting a decoder


def _always_available(device: str) -> None:
    return None


@dataclass(frozen=True)
class BackendSpec:
    """One registered backend (see the module docstring for the meaning of each field)."""

    name: str
    render: RenderFn
    array_type: str
    priorities: Mapping[str, int]
    dtypes: tuple[str, ...] = ("float32",)
    grad_inputs: frozenset[str] = frozenset()      # inputs whose gradients it computes
    availability: AvailabilityFn = _always_available
    install_hint: str = ""
    description: str = ""
    _order: int = field(default=0, compare=False, repr=False)

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(self.priorities)

    @property
    def differentiable(self) -> bool:
        return bool(self.grad_inputs)

    def missing_grads(self, requires_grad: Collection[str]) -> list[str]:
        """The inputs among ``requires_grad`` (names from GRAD_INPUTS) this backend gives no gradient."""
        return [name for name in requires_grad if name not in self.grad_inputs]

    def unavailable_reason(self, device: str, dtype: str | None = None,
                           requires_grad: Collection[str] = ()) -> str | None:
        """None if this backend can render inputs of that device type and dtype and differentiate
        every input named in ``requires_grad``, else why not."""
        return self._unavailable_reason(device, dtype, _grad_names(requires_grad))

    def _unavailable_reason(self, device: str, dtype: str | None, requires_grad: tuple[str, ...]) -> str | None:
        """``unavailable_reason`` with ``requires_grad`` already checked (select_backend checks it once a call)."""
        if device not in self.priorities:
            return f"it does not run on device {device!r} (it runs on: {', '.join(self.devices)})"
        if dtype is not None and dtype not in self.dtypes:
            return f"it does not accept dtype {dtype} (it accepts: {', '.join(self.dtypes)})"
        missing = self.missing_grads(requires_grad)
        if missing:
            names, verb = ", ".join(missing), "requires" if len(missing) == 1 else "require"
            what = (f"it is not differentiable and {names} {verb} grad" if not self.differentiable
                    else f"it computes no gradient for {names}, which {verb} grad")
            return f"{what} (use torch.no_grad() or detach it, or pick a backend that differentiates it)"
        return self.availability(device)


_BACKENDS: dict[str, BackendSpec] = {}


def register_backend(name: str, render: RenderFn, *, array_type: str, priorities: Mapping[str, int],
                     dtypes: tuple[str, ...] = ("float32",), differentiable: bool | Iterable[str] = False,
                     availability: AvailabilityFn | None = None, install_hint: str = "",
                     description: str = "", replace: bool = False) -> BackendSpec:
    """Add a backend under ``name``; ``replace=True`` overrides an existing one of that name."""
    if not isinstance(name, str) or not name or name == "auto":
        raise BackendRegistrationError(f"backend name must be a non-empty string other than 'auto', got {name!r}")
    if name in _BACKENDS and not replace:
        raise BackendRegistrationError(f"a backend named {name!r} is already registered; pass replace=True to override it")
    if not callable(render):
        raise BackendRegistrationError(f"backend {name!r}: render must be callable, got {type(render).__name__}")
    if array_type not in (NUMPY, TORCH):
        raise BackendRegistrationError(f"backend {name!r}: array_type must be 'numpy' or 'torch', got {array_type!r}")
    if not priorities or not all(isinstance(k, str) and isinstance(v, int) for k, v in priorities.items()):
        raise BackendRegistrationError(f"backend {name!r}: priorities must map device types (str) to ints, got {priorities!r}")
    grad_inputs = frozenset(GRAD_INPUTS if differentiable is True else (differentiable or ()))
    if not grad_inputs <= set(GRAD_INPUTS):
        raise BackendRegistrationError(f"backend {name!r}: differentiable must be a bool or names from {GRAD_INPUTS}, "
                                       f"got {sorted(grad_inputs - set(GRAD_INPUTS))}")
    order = _BACKENDS[name]._order if name in _BACKENDS else len(_BACKENDS)
    spec = BackendSpec(name=name, render=render, array_type=array_type, priorities=dict(priorities),
                       dtypes=tuple(dtypes), grad_inputs=grad_inputs,
                       availability=availability or _always_available, install_hint=install_hint,
                       description=description, _order=order)
    _BACKENDS[name] = spec
    return spec


def unregister_backend(name: str) -> None:
    if name not in _BACKENDS:
        raise UnknownBackendError(name, registered_backends())
    del _BACKENDS[name]


def registered_backends() -> list[str]:
    """Names of all registered backends, available here or not."""
    return list(_BACKENDS)


def get_backend(name: str) -> BackendSpec:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise UnknownBackendError(name, registered_backends()) from None


def _grad_names(requires_grad) -> tuple[str, ...]:
    """``requires_grad`` checked: a collection of names from GRAD_INPUTS (not a bool: which inputs?)."""
    if isinstance(requires_grad, (str, bytes, bool)) or not isinstance(requires_grad, Collection):
        raise InputTypeError("requires_grad", f"is {requires_grad!r}",
                             f"a collection of input names from {GRAD_INPUTS}, e.g. SPLAT_GRADS {SPLAT_GRADS} "
                             "for the splats, or () for none")
    unknown = [n for n in requires_grad if n not in GRAD_INPUTS]
    if unknown:
        raise InputValueError("requires_grad", f"names {unknown}", f"names from {GRAD_INPUTS}")
    return tuple(requires_grad)


def available_backends(device: str | None = None) -> list[str]:
    """Backends that can run here: on ``device`` (a device type such as "cpu"), or on any device."""
    names = []
    for spec in _BACKENDS.values():
        devices = [device] if device is not None else list(spec.devices)
        if any(spec.unavailable_reason(d) is None for d in devices):
            names.append(spec.name)
    return names


def select_backend(name: str, *, device: str, dtype: str | None = None,
                   requires_grad: Collection[str] = ()) -> BackendSpec:
    """The backend to use: ``name`` itself (checked), or for "auto" the highest-priority usable one.
    ``requires_grad``: names from GRAD_INPUTS of the inputs that need gradients."""
    requires_grad = _grad_names(requires_grad)
    if name != "auto":
        spec = get_backend(name)
        reason = spec._unavailable_reason(device, dtype, requires_grad)
        if reason is not None:
            # Installing something helps only when the backend itself is missing here.
            missing = device in spec.priorities and reason == spec.availability(device)
            raise BackendUnavailableError(name, reason, spec.install_hint if missing else None,
                                          inputs=tuple(spec.missing_grads(requires_grad)))
        return spec
    usable, rejected = [], []
    for spec in _BACKENDS.values():
        reason = spec._unavailable_reason(device, dtype, requires_grad)
        if reason is None:
            usable.append(spec)
        else:
            rejected.append(f"{spec.name}: {reason}")
    if not usable:
        raise BackendUnavailableError("auto", f"no backend can render {dtype} inputs on {device!r}: "
                                              + "; ".join(rejected), "pip install 'flexavatar[triton]' or torch")
    return max(usable, key=lambda s: (s.priorities[device], -s._order))
