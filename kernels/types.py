"""Plain containers passed to and returned by ``rasterize``.

They hold numpy arrays or torch tensors (never mixed inside one call) and import neither library,
so ``import flexavatar.kernels`` stays free of torch.

Shapes (G Gaussians, N views):

* ``Splats``: ``means [G,3] | [N,G,3]``, ``quats [G,4] | [N,G,4]`` (w, x, y, z; normalised inside),
  ``scales [G,3] | [N,G,3]`` (standard deviations, > 0), ``opacities [G] | [N,G]`` (in [0, 1]),
  ``sh0 [G,3] | [N,G,3]`` (degree-0 SH coefficients). ``[G, ...]`` is shared by all views;
  ``[N, G, ...]`` gives each view its own Gaussians (e.g. one animation frame per view).
* ``Cameras``: ``world2cam [N,4,4] | [4,4]`` (OpenCV axes: +x right, +y down, +z forward, rigid),
  ``K [N,3,3] | [3,3]`` pixel intrinsics (fx, fy, cx, cy; zero skew).
* ``RenderResult``: ``rgb [N,H,W,3]`` (composited over the background), ``alpha [N,H,W,1]``
  (1 - final transmittance), ``depth [N,H,W,1]`` (expected depth, gsplat "ED":
  sum(w z) / max(alpha, 1e-10), z = camera-space depth; 0 where nothing was drawn),
  ``backend``, the name of the backend that produced it, and ``intersections``, the number of
  (tile, Gaussian) pairs it blended where the backend reports it (see ``rasterize``'s
  ``intersection_capacity``).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

Array = Any  # numpy.ndarray or torch.Tensor


@dataclass(frozen=True)
class Splats:
    """3D Gaussians (see module docstring for shapes)."""

    means: Array
    quats: Array
    scales: Array
    opacities: Array
    sh0: Array

    def arrays(self) -> dict[str, Array]:
        return {name: getattr(self, name) for name in SPLAT_FIELDS}


SPLAT_FIELDS = tuple(f.name for f in fields(Splats))     # means, quats, scales, opacities, sh0


@dataclass(frozen=True)
class Cameras:
    """Pinhole cameras: rigid world-to-camera transforms and pixel intrinsics."""

    world2cam: Array
    K: Array

    def __len__(self) -> int:
        return 1 if len(self.world2cam.shape) == 2 else int(self.world2cam.shape[0])


@dataclass(frozen=True)
class RenderRequest:
    """A validated, normalised request, as a backend's ``render`` function receives it.

    All arrays are of the backend's array type, one dtype and one device. Splats are always
    ``[N, G, ...]``; splats shared by N > 1 cameras are broadcasts (stride 0 along N, no copy; call
    ``numpy.ascontiguousarray`` / ``.contiguous()`` if contiguous memory is needed). Cameras are
    ``[N, 4, 4]`` and ``[N, 3, 3]``; ``background`` is ``[N, 3]``. Arrays may be views of the
    caller's memory: backends read them, never write them.
    """

    splats: Splats
    cameras: Cameras
    width: int
    height: int
    background: Array
    intersection_capacity: int = 0   # > 0: sort into this many slots, no host sync (cuda, triton)

    @property
    def num_views(self) -> int:
        return int(self.cameras.world2cam.shape[0])

    @property
    def num_gaussians(self) -> int:
        return int(self.splats.means.shape[1])


@dataclass(frozen=True)
class RenderResult:
    """Rendered views. ``backend`` names the backend that produced them. ``intersections``: None (not
    reported), an int (the exact count, read back to the host), or, from a sync-free render
    (``intersection_capacity`` > 0), an int64 ``[1]`` array on the render's device holding it: read it after a
    synchronisation; above the capacity, these views are incomplete."""

    rgb: Array
    alpha: Array
    depth: Array
    backend: str = ""
    intersections: Any = None
