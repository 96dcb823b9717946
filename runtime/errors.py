"""Typed errors of ``flexavatar.runtime``: every message names the argument, what was wrong and what was expected.

Bundle problems (missing files, hash mismatches, malformed manifest) keep the types of
``flexavatar.bundle`` (``BundleError`` and its subclasses); rasterizer problems keep those of
``flexavatar.kernels`` (``KernelError``). All of them derive from ``FlexAvatarError``.
"""
from __future__ import annotations

from flexavatar.errors import FlexAvatarError


class RuntimeFailure(FlexAvatarError):
    """Base class of the runtime's own errors (named so as not to shadow the builtin RuntimeError)."""


class RuntimeArgumentError(RuntimeFailure, ValueError):
    """An argument is invalid. ``argument`` names it; ``problem`` and ``expected`` say what and what instead."""

    def __init__(self, argument: str, problem: str, expected: str):
        self.argument, self.problem, self.expected = argument, problem, expected
        super().__init__(f"{argument}: {problem}; expected {expected}")


class ImageInputError(RuntimeArgumentError):
    """The photo has the wrong size, channel count, dtype or value range, or cannot be read."""


class ExpressionInputError(RuntimeArgumentError):
    """Expression codes have the wrong shape / dtype, contain NaN/inf, or the file cannot be read."""


class CameraInputError(RuntimeArgumentError):
    """A camera is not a rigid 4x4, intrinsics are not normalised, or the counts do not match the frames."""


class AvatarFileError(RuntimeArgumentError):
    """An avatar code file cannot be read or does not fit the bundle (shape, dtype, NaN/inf)."""


class EngineUnavailableError(RuntimeFailure):
    """The requested inference backend (or its device) cannot run here; ``reason`` says why, ``hint`` how to fix."""

    def __init__(self, backend: str, device: str, reason: str, hint: str | None = None):
        self.backend, self.device, self.reason, self.hint = backend, device, reason, hint
        text = f"inference backend {backend!r} on device {device!r} is unavailable: {reason}"
        super().__init__(text + (f" ({hint})" if hint else ""))


class ExecutionProviderError(EngineUnavailableError):
    """ONNX Runtime's session did not get the execution provider asked for, or the provider took none of the graph's
    nodes: the graph would run on the CPU, whichever file of the bundle it is."""


class UnknownEngineError(RuntimeArgumentError, LookupError):
    """No inference backend of that name is registered."""

    def __str__(self) -> str:  # LookupError would quote the message
        return self.args[0]


class EncoderUnavailableError(RuntimeFailure):
    """The bundle cannot encode this photo as asked: no encoder at all, or only the DINOv2-features variant."""


class ModelMismatchError(RuntimeFailure):
    """The PyTorch model given for ``backend="torch"`` is not the one the bundle was exported from."""


class OutputFileError(RuntimeArgumentError):
    """The output path of ``flexavatar-render`` cannot be written (unknown suffix, odd size for video, ...)."""
