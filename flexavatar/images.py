"""PIL image → numpy array, keeping 16-bit grey and every kind of transparency; the PSNR of two images.

One implementation for the fitting loader (``flexavatar.fitting``) and the runtime's photo loader
(``flexavatar.runtime.images``); ``psnr`` for the exporter's and the runtime's numerics checks. Needs only numpy
(PIL images are passed in).
"""
from __future__ import annotations

import math

import numpy as np

from .errors import InputError

SIXTEEN_BIT_GREY = ("I;16", "I;16L", "I;16B", "I;16N")     # PIL's modes of a 16-bit grey PNG / TIFF
EXIF_ORIENTATION = 0x0112


class ImageModeError(InputError):
    """A PIL image mode without a known value range (32-bit integer ``I`` or float ``F`` grey).
    ``argument``, ``problem`` and ``expected`` as in the callers' own error types."""

    def __init__(self, argument: str, problem: str, expected: str):
        self.argument, self.problem, self.expected = argument, problem, expected
        super().__init__(f"{argument}: {problem}; expected {expected}")


def pil_to_array(im, where: str = "image") -> np.ndarray:
    """A PIL image → uint8 [H, W, 3|4] (RGBA whenever it has transparency: an alpha channel, a tRNS colour key,
    premultiplied RGBa), or float32 [H, W, 3] in [0, 1] for 16-bit grey (not clipped to 8 bits); turned upright
    when its EXIF orientation says it is stored rotated or mirrored.

    ``where`` names the image in the ImageModeError raised for modes ``I`` and ``F``.
    """
    if im.getexif().get(EXIF_ORIENTATION, 1) != 1:    # a phone photo stored sideways: upright, as viewers show it
        from PIL import ImageOps
        im = ImageOps.exif_transpose(im)
    if im.mode in SIXTEEN_BIT_GREY:
        grey = np.asarray(im, np.float32) / 65535.0
        return np.repeat(grey[..., None], 3, axis=-1)
    if im.mode in ("I", "F"):
        raise ImageModeError(where, f"is a PIL image of mode {im.mode!r} (32-bit integer / float grey, no known "
                             "value range)", "an 8- or 16-bit RGB(A) or grey image, or a float array in [0, 1]")
    has_alpha = getattr(im, "has_transparency_data", None)
    if has_alpha is None:                                     # Pillow < 10.1
        has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    return np.asarray(im.convert("RGBA" if has_alpha else "RGB"))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two images in [0, 1] (inf when identical)."""
    mse = float(np.mean((np.clip(a, 0, 1).astype(np.float64) - np.clip(b, 0, 1).astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)
