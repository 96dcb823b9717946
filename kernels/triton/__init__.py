"""Triton backend of the rasterizer (``backend="triton"``).

Modules: ``projection`` (3D -> 2D Gaussians, forward and backward kernels), ``binning`` (tile
keys + ``torch.sort``), ``blend`` (per-tile compositing, forward and backward kernels),
``autograd`` (the ``torch.autograd.Function`` tying them together) and ``backend`` (the
registry entry point). Importing this package imports triton; on CPU tensors it runs only under
``TRITON_INTERPRET=1`` (set before triton is imported).
"""
