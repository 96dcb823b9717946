"""Typed errors of the model package. Every message names what was wrong and what was expected."""


class FlexAvatarError(Exception):
    """Base class of all flexavatar errors."""


class ConfigError(FlexAvatarError, ValueError):
    """A model configuration is invalid or uses an unsupported setting."""


class CheckpointError(FlexAvatarError):
    """A checkpoint file cannot be read, or its tensors do not fit the model."""


class TemplateError(FlexAvatarError):
    """The head template (OBJ) is missing, malformed, or gives the wrong Gaussian count."""


class InputError(FlexAvatarError, ValueError):
    """A tensor argument has the wrong shape, dtype, range or contains NaN/inf."""
