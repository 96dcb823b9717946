"""One frame's Gaussians as a 3D Gaussian Splatting PLY: the layout of the original 3DGS code (Kerbl et al.
2023), which splat viewers and editors (SuperSplat, gsplat's tools, nerfstudio, ...) read.

    x y z · nx ny nz (zeros) · f_dc_0..2 · opacity · scale_0..2 · rot_0..3        (17 float32 per Gaussian)

Stored *before* activation, as that code keeps its parameters: ``f_dc`` = the SH DC coefficients (our sh0:
colour = 0.5 + C0 · sh0), ``opacity`` = logit(opacity), ``scale`` = log(scale), ``rot`` = the quaternion w, x, y, z
(viewers normalise it). SH degree 0: no ``f_rest`` properties (FLEX-1 predicts colour only). Positions are in the
avatar's head frame (OpenCV axes), the frame the runtime's cameras look at. numpy only; read it back with any
PLY reader (the tests use plyfile, the reader of the 3DGS code).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from flexavatar.files import atomic_open

from .errors import OutputFileError, RuntimeArgumentError

PLY_PROPERTIES = ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                  "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
# logit / log of what float32 can hold: an opacity of exactly 0 or 1 (or a scale that underflowed) would
# otherwise be ±inf in the file, which viewers do not survive
_OPACITY_EPS = 1e-7
_MIN_SCALE = 1e-30


def check_ply_path(path: str | Path) -> None:
    """A .ply path in an existing folder (checked before any work, and again when writing)."""
    path = Path(path)
    if path.suffix.lower() != ".ply":
        raise OutputFileError("ply", f"{path.name} has the suffix {path.suffix!r}", "a .ply file")
    if not path.absolute().parent.is_dir():
        raise OutputFileError("ply", f"folder {path.absolute().parent} does not exist", "an existing folder")


def write_ply(path: str | Path, means: np.ndarray, quats: np.ndarray, scales: np.ndarray, opacities: np.ndarray,
              sh0: np.ndarray, comment: str = "") -> Path:
    """means [G, 3], quats [G, 4] (w, x, y, z), scales [G, 3], opacities [G], sh0 [G, 3] (activated, as the
    decoder gives them) → binary little-endian PLY at ``path`` (written to a temporary file, then renamed)."""
    path = Path(path)
    arrays = {"means": means, "quats": quats, "scales": scales, "opacities": opacities, "sh0": sh0}
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}
    g = arrays["means"].shape[0] if arrays["means"].ndim == 2 else -1
    for name, trail in (("means", (3,)), ("quats", (4,)), ("scales", (3,)), ("opacities", ()), ("sh0", (3,))):
        if arrays[name].shape != (g, *trail) or g < 1:
            expected = "[G" + "".join(f", {d}" for d in trail) + "]"
            raise RuntimeArgumentError(name, f"has shape {list(arrays[name].shape)}",
                                       f"{expected} for one frame, with G ≥ 1 the same for every attribute")
        if not np.isfinite(arrays[name]).all():
            raise RuntimeArgumentError(name, "contains NaN or inf", "finite Gaussians")
    check_ply_path(path)
    opacity = np.clip(arrays["opacities"], _OPACITY_EPS, 1 - _OPACITY_EPS)
    columns = [arrays["means"], np.zeros((g, 3)), arrays["sh0"], np.log(opacity / (1 - opacity))[:, None],
               np.log(np.maximum(arrays["scales"], _MIN_SCALE)), arrays["quats"]]
    table = np.concatenate(columns, axis=1).astype("<f4")                         # [G, 17]
    header = ["ply", "format binary_little_endian 1.0"]
    # PLY headers are ASCII: other characters of a comment (e.g. a sequence's file name) become "?"
    header += [f"comment {line.encode('ascii', 'replace').decode('ascii')}" for line in comment.splitlines()
               if line.strip()]
    header += [f"element vertex {g}", *(f"property float {p}" for p in PLY_PROPERTIES), "end_header"]
    with atomic_open(path) as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(np.ascontiguousarray(table).tobytes())
    return path

