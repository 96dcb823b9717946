"""flexavatar: FlexAvatar (FLEX-1) in PyTorch, its export bundle, runtimes and rasterizers.

The model lives here (``flexavatar.model``); ``flexavatar.export``, ``flexavatar.runtime`` and
``flexavatar.kernels`` are the sibling top-level folders ``export/``, ``runtime/`` and ``kernels/``
of the repository, mapped into this package at install time. Importing ``flexavatar`` itself does
not import PyTorch: the model classes load on first use.
"""

__version__ = "0.1.0"

_LAZY = {
    "FlexAvatarModel": "flexavatar.model", "Gaussians": "flexavatar.model", "AvatarCode": "flexavatar.model",
    "FlexConfig": "flexavatar.config", "Template": "flexavatar.template", "DinoV2": "flexavatar.dinov2",
    "interpolate": "flexavatar.fitting", "fit": "flexavatar.fitting", "Observations": "flexavatar.fitting",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'flexavatar' has no attribute {name!r}")
