"""Typed errors of ``flexavatar-export``; each names the argument, what was wrong and what was expected.

Model-side problems keep their own types (``CheckpointError``, ``TemplateError``, ``ConfigError``,
``InputError`` from ``flexavatar.errors``); all of them, and these, derive from ``FlexAvatarError``.
"""
from __future__ import annotations

from flexavatar.errors import FlexAvatarError


class ExportError(FlexAvatarError):
    """Base class of export failures. No partial bundle is ever left behind when one is raised."""


class ExportArgumentError(ExportError, ValueError):
    """An export argument (precision, target, opset, photo, camera file, ...) is invalid."""


class OutputDirError(ExportError):
    """The output folder cannot be written (parent missing or read-only, path is a file, ...)."""


class OutputExistsError(OutputDirError, FileExistsError):
    """The output folder already holds files and ``force`` was not given."""


class ExportStepError(ExportError):
    """A step of the export failed unexpectedly; ``step`` names it, the cause is chained."""

    def __init__(self, step: str, message: str):
        super().__init__(message)
        self.step = step


class ParityError(ExportError):
    """An exported file's outputs differ from PyTorch beyond the stated tolerance (or fp16 PSNR < target)."""
