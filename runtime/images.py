"""The encoder's photo: an S×S RGB(A) array, PIL image or file → float32 [3, S, S] in [0, 1] on white."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ImageInputError

RANGE_SLACK = 1e-3


def load_image(image, size: int) -> np.ndarray:
    """image: [S, S, 3|4] uint8 (0–255) or float (0–1) array, a PIL image, or an image / .npy file path.

    RGB is taken as already matted on white; RGBA is composited onto white (rgb·α + 1 − α).
    → [3, S, S] float32 in [0, 1]. Wrong size, channels, dtype or range → ImageInputError.
    """
    where = "image"
    if isinstance(image, (str, Path)):
        where = f"image ({Path(image).name})"
        image = _read_file(Path(image))
    if type(image).__module__.startswith("PIL"):
        image = _from_pil(image, where)
    if type(image).__module__.startswith("torch"):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise ImageInputError(where, f"is a {type(image).__name__}",
                              f"an [{size}, {size}, 3] array, a PIL image or an image file path")
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ImageInputError(where, f"has shape {list(image.shape)}",
                              f"[{size}, {size}, 3] RGB or [{size}, {size}, 4] RGBA (height, width, channels)")
    if image.shape[:2] != (size, size):
        raise ImageInputError(where, f"is {image.shape[1]}x{image.shape[0]} pixels",
                              f"{size}x{size} (this bundle's encoder input; crop the head square and resize first)")
    rgba = _to_unit_float(image, where)
    rgb = rgba[..., :3]
    if rgba.shape[2] == 4:
        alpha = rgba[..., 3:]
        rgb = rgb * alpha + (1.0 - alpha)                    # composite onto white
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)


def _to_unit_float(image: np.ndarray, where: str) -> np.ndarray:
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype.kind != "f":
        raise ImageInputError(where, f"has dtype {image.dtype}", "uint8 (0–255) or float (0–1)")
    a = image.astype(np.float32)
    if not np.isfinite(a).all():
        raise ImageInputError(where, "contains NaN or inf", "finite values in [0, 1]")
    lo, hi = float(a.min()), float(a.max())
    if lo < -RANGE_SLACK or hi > 1 + RANGE_SLACK:
        raise ImageInputError(where, f"has values in [{lo:.4g}, {hi:.4g}]",
                              "float values in [0, 1] (divide 0–255 data by 255, or pass uint8)")
    return np.clip(a, 0.0, 1.0)


def _read_file(path: Path) -> np.ndarray:
    if not path.is_file():
        raise ImageInputError(f"image ({path})", "file not found", "an existing image (.png/.jpg) or .npy file")
    if path.suffix.lower() == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ImageInputError(f"image ({path.name})", f"cannot be read ({e})", "an [S, S, 3] .npy array") from None
    try:
        from PIL import Image
        with Image.open(path) as im:
            im.load()
            return _from_pil(im, f"image ({path.name})")
    except OSError as e:
        raise ImageInputError(f"image ({path.name})", f"cannot be read ({e})", "a PNG/JPEG image") from None


SIXTEEN_BIT_GREY = ("I;16", "I;16L", "I;16B", "I;16N")     # PIL's modes of a 16-bit grey PNG / TIFF


def _from_pil(im, where: str = "image") -> np.ndarray:
    """A PIL image → uint8 [S, S, 3|4] (RGBA whenever it has transparency: an alpha channel, a tRNS colour key,
    premultiplied RGBa), or float32 [S, S, 3] in [0, 1] for 16-bit grey (not clipped to 8 bits)."""
    if im.mode in SIXTEEN_BIT_GREY:
        grey = np.asarray(im, np.float32) / 65535.0
        return np.repeat(grey[..., None], 3, axis=-1)
    if im.mode in ("I", "F"):
        raise ImageInputError(where, f"is a PIL image of mode {im.mode!r} (32-bit integer / float grey, no known "
                              "value range)", "an 8- or 16-bit RGB(A) or grey image, or a float array in [0, 1]")
    has_alpha = getattr(im, "has_transparency_data", None)
    if has_alpha is None:                                     # Pillow < 10.1
        has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    return np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
