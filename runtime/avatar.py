"""``Avatar``: the encoded photo (the avatar code), saved and loaded in the official ``.npy`` layout."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flexavatar.files import atomic_open

from .errors import AvatarFileError


@dataclass(frozen=True, eq=False)
class Avatar:
    """code: float32 ``[1, R², D]`` (batch-first, as the decoder graphs take it). ``source`` says where it came
    from; ``bundle_sha256`` is set when it is the bundle's own avatar (its specialised decoder then applies)."""
    code: np.ndarray
    source: str = ""
    bundle_sha256: str = ""
    _device_copies: dict = field(default_factory=dict, repr=False)   # device code buffers, per CUDA device

    def __post_init__(self):
        code = np.asarray(self.code)
        if code.ndim == 2:
            code = code[None]
        if code.ndim != 3 or code.shape[0] != 1 or math.isqrt(code.shape[1]) ** 2 != code.shape[1]:
            raise AvatarFileError("avatar code", f"has shape {list(code.shape)}", "[1, R², D], e.g. [1, 1024, 768]")
        if code.dtype.kind != "f":
            raise AvatarFileError("avatar code", f"has dtype {code.dtype}", "floating-point values")
        with np.errstate(over="ignore"):                          # checked after the cast: 1e300 becomes inf
            code = np.ascontiguousarray(code, dtype=np.float32)
        if not np.isfinite(code).all():
            raise AvatarFileError("avatar code", "has NaN/inf (or values beyond float32)", "finite values")
        code.flags.writeable = False            # device copies and the specialised decoder rely on it
        object.__setattr__(self, "code", code)

    @property
    def n_tokens(self) -> int:
        return self.code.shape[1]

    @property
    def width(self) -> int:
        return self.code.shape[2]

    def save(self, path: str | Path) -> Path:
        """``np.save`` in the official layout (R², 1, D) float32, atomically (temp file + rename)."""
        path = check_avatar_path(path)
        with atomic_open(path) as fh:
            np.save(fh, self.code.transpose(1, 0, 2))                 # [R², 1, D]
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Avatar":
        """Reads the official (R², 1, D) layout; (R², D) and [1, R², D] are accepted too."""
        path = Path(path)
        try:
            array = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise AvatarFileError("avatar", f"file {path} not found", "an avatar code .npy file") from None
        except (OSError, ValueError) as e:
            raise AvatarFileError("avatar", f"cannot read {path} ({e})", "a .npy file") from None
        if not isinstance(array, np.ndarray):            # an .npz archive
            array.close()
            raise AvatarFileError(f"avatar ({path.name})", f"is an .npz archive (arrays {array.files})",
                                  "an avatar code .npy file, (R², 1, D)")
        if array.ndim == 3 and array.shape[1] == 1:
            array = array.transpose(1, 0, 2)                          # official (R², 1, D) → [1, R², D]
        elif array.ndim == 2:
            array = array[None]
        if array.ndim != 3 or array.shape[0] != 1:
            raise AvatarFileError(f"avatar ({path.name})", f"has shape {list(array.shape)}",
                                  "(R², 1, D) as written by the official code, e.g. (1024, 1, 768)")
        return cls(array, source=str(path))

    def check_fits(self, n_tokens: int, width: int) -> None:
        if (self.n_tokens, self.width) != (n_tokens, width):
            raise AvatarFileError("avatar", f"code is [1, {self.n_tokens}, {self.width}] (from {self.source or '?'})",
                                  f"[1, {n_tokens}, {width}] for this bundle (another model's avatar?)")


def check_avatar_path(path: str | Path) -> Path:
    """Where ``Avatar.save`` can write: a .npy name in an existing folder (checked before any work)."""
    path = Path(path)
    if path.suffix != ".npy":
        raise AvatarFileError("path", f"{path.name} does not end in .npy", "a .npy file name")
    if not path.absolute().parent.is_dir():
        raise AvatarFileError("path", f"folder {path.absolute().parent} does not exist",
                              "an existing folder to write into")
    return path
