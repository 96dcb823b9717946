"""Typed errors of the model package. Every message names what was wrong and what was expected."""


class FlexAvatarError(Exception):
    """Base class of all flexavatar errors."""


class ConfigError(FlexAvatarError, ValueError):
    """A model configuration is invalid or uses an unsupported setting."""


class CheckpointError(FlexAvatarError):
    """A checkpoint file cannot be read, or its tensors do not fit the model."""


class TemplateError(FlexAvatarError):
    """The head template (OBJ) is missing, unreadable or malformed, or its UV layout covers no Gaussian sample.

    The Gaussian count G follows from the mesh's UV layout (58 361 for the official gghead_template.obj at
    FLEX-1 size) and no checkpoint tensor depends on it, so a different, e.g. cut-short, template cannot be
    detected here: compare ``Template.n_gaussians`` / ``Template.sha256()`` with the expected ones."""


class InputError(FlexAvatarError, ValueError):
    """A tensor argument has the wrong shape, dtype, range or contains NaN/inf."""


def command_failed(prog: str, error: BaseException, interrupted: str = "interrupted") -> int:
    """The exit status of a command line tool stopped by a typed error (2) or Ctrl-C (130); prints its one line."""
    import sys
    if isinstance(error, KeyboardInterrupt):
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130
    print(f"{prog}: error: {type(error).__name__}: {error}", file=sys.stderr)
    return 2
