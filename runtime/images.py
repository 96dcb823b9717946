"""The encoder's photo: an S×S RGB(A) array, PIL image or file → float32 [3, S, S] in [0, 1] on white."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from flexavatar.images import ImageModeError, pil_to_array

from .errors import ImageInputError

RANGE_SLACK = 1e-3


def load_image(image, size: int) -> np.ndarray:
    """image: [S, S, 3|4] uint8 (0–255) or float (0–1) array, a PIL image, or an image / .npy file path, or an
    in-the-wild example's .npz (its ``image``, the model-input crop; ``photo_camera`` reads its camera).

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


CROP_IMAGE_KEY = "image"     # the model-input crop of an in-the-wild example .npz (../shared/fixtures/driving/)


def _read_file(path: Path) -> np.ndarray:
    if not path.is_file():
        raise ImageInputError(f"image ({path})", "file not found", "an existing image (.png/.jpg), .npy or .npz file")
    if path.suffix.lower() == ".npz":
        expected = f"an .npz with {CROP_IMAGE_KEY} [S, S, 3] (an in-the-wild example's model-input crop)"
        try:
            with np.load(path, allow_pickle=False) as data:
                if CROP_IMAGE_KEY not in data.files:
                    raise ImageInputError(f"image ({path.name})", f"has no {CROP_IMAGE_KEY!r} array (keys: "
                                          f"{sorted(data.files)})", expected)
                return data[CROP_IMAGE_KEY]
        except (OSError, ValueError) as e:
            raise ImageInputError(f"image ({path.name})", f"cannot be read ({e})", expected) from None
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


def _from_pil(im, where: str = "image") -> np.ndarray:
    """flexavatar.images.pil_to_array, its error as this module's ImageInputError."""
    try:
        return pil_to_array(im, where)
    except ImageModeError as e:
        raise ImageInputError(e.argument, e.problem, e.expected) from None
