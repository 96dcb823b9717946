"""flexavatar: FlexAvatar (FLEX-1) in PyTorch, its export bundle, runtimes and rasterizers.

The model lives here (``flexavatar.model``); ``flexavatar.export``, ``flexavatar.runtime`` and
``flexavatar.kernels`` are the sibling top-level folders ``export/``, ``runtime/`` and ``kernels/``
of the repository, mapped into this package at install time.
"""

__version__ = "0.1.0"
