"""Typed errors of ``flexavatar.kernels``.

Every message names the argument (or backend), what was wrong and what was expected, and every
error carries those facts as attributes so callers and tests need not parse messages.
"""
from __future__ import annotations

from flexavatar.errors import FlexAvatarError


class KernelError(FlexAvatarError):
    """Base class of all rasterizer errors (one exception hierarchy for the whole package)."""


# --- bad input -------------------------------------------------------------------------------

class InvalidInputError(KernelError, ValueError):
    """An argument of ``rasterize`` is invalid. ``argument`` names it (e.g. ``"splats.scales"``)."""

    def __init__(self, argument: str, problem: str, expected: str):
        self.argument, self.problem, self.expected = argument, problem, expected
        super().__init__(f"{argument}: {problem}; expected {expected}")


class InputShapeError(InvalidInputError):
    """Wrong rank/shape, or lengths that do not match between arguments."""


class InputTypeError(InvalidInputError, TypeError):
    """Wrong array type (numpy vs torch) or dtype (integer, float16, mixed precisions)."""


class InputDeviceError(InvalidInputError):
    """Torch tensors on different devices."""


class NonFiniteInputError(InvalidInputError):
    """NaN or ±inf in an array."""


class InputValueError(InvalidInputError):
    """Finite but out-of-domain values: non-positive scales, zero quaternions, bad K, bad size."""


# --- backends --------------------------------------------------------------------------------

class BackendError(KernelError):
    """Base class of backend registry errors."""


class UnknownBackendError(BackendError, LookupError):
    """No backend of that name is registered."""

    def __init__(self, name: str, registered: list[str]):
        self.name, self.registered = name, registered
        super().__init__(f"unknown rasterizer backend {name!r}; registered backends: {registered}")

    def __str__(self) -> str:  # LookupError would quote the whole message
        return self.args[0]


class BackendUnavailableError(BackendError, RuntimeError):
    """A backend exists but cannot run here (missing package, no GPU, wrong device or dtype), or
    cannot differentiate some inputs that require grad: ``inputs`` names those (e.g. ``("cameras.K",)``)."""

    def __init__(self, name: str, reason: str, install_hint: str | None = None, inputs: tuple[str, ...] = ()):
        self.name, self.reason, self.install_hint, self.inputs = name, reason, install_hint, inputs
        message = f"rasterizer backend {name!r} is unavailable: {reason}"
        if install_hint:
            message += f" (to enable it: {install_hint})"
        super().__init__(message)


class BackendRegistrationError(BackendError, ValueError):
    """``register_backend`` was called with an invalid specification or a duplicate name."""
