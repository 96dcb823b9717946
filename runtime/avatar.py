"""``Avatar``: the encoded photo (the avatar code), saved and loaded in the official ``.npy`` layout."""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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
        if code.dtype.kind != "f" or not np.isfinite(code).all():
            raise AvatarFileError("avatar code", f"dtype {code.dtype}, finite: {bool(np.isfinite(code).all())}",
                                  "finite floating-point values")
        code = np.ascontiguousarray(code, dtype=np.float32)
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
        path = Path(path)
        if path.suffix != ".npy":
            raise AvatarFileError("path", f"{path.name} does not end in .npy", "a .npy file name")
        array = self.code.transpose(1, 0, 2)                          # [R², 1, D]
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npy", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, array)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
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
