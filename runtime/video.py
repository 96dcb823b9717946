"""Frame writers chosen by the output path: ``.mp4`` (H.264 through imageio-ffmpeg, which ships its own
ffmpeg), ``.gif`` (Pillow), a folder of PNG frames, or ``-`` (raw frames on standard output). A registry keyed
by suffix; files are written under a temporary name and renamed into place when complete."""
from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from flexavatar.files import default_permissions

from .errors import OutputFileError


class FrameWriter:
    """write(frames uint8 [n, H, W, C]) any number of times, then close() → frames written. C is 3 (RGB), or 4
    (RGBA, straight alpha: ``straight_rgba``) for writers whose format keeps transparency."""
    keeps_alpha = False

    def __init__(self, path: Path, width: int, height: int, fps: float, channels: int = 3):
        self.path, self.width, self.height, self.fps, self.channels = path, width, height, fps, channels
        self.count = 0

    def write(self, frames: np.ndarray) -> None:
        shape = (self.height, self.width, self.channels)
        if frames.ndim != 4 or frames.shape[1:] != shape or frames.dtype != np.uint8:
            raise OutputFileError("frames", f"are {frames.dtype} {list(frames.shape)}",
                                  f"uint8 [n, {', '.join(map(str, shape))}]")
        for frame in frames:
            self._write(np.ascontiguousarray(frame))
            self.count += 1

    def _write(self, frame: np.ndarray) -> None:
        raise NotImplementedError

    def close(self) -> int:
        return self.count

    def abort(self) -> None:
        """Remove what was written so far (an interrupted render leaves no half file)."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
            return False
        try:
            self.close()
        except BaseException:       # e.g. the encoder failed while finishing the file: leave nothing behind
            self.abort()
            raise
        return False


def _partial(path: Path) -> Path:
    """A hidden name beside ``path``, unique to this writer (two renders to one path do not collide), with the
    same suffix (the encoders pick the format from it)."""
    return path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial{path.suffix}")


def check_fps(fps: float) -> float:
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise OutputFileError("fps", f"is {fps!r}", "a finite, positive frame rate")
    return float(fps)


class Mp4Writer(FrameWriter):
    """H.264 (libx264, yuv420p: even width and height) at ``fps``, through imageio-ffmpeg's bundled ffmpeg."""

    def __init__(self, path, width, height, fps, channels=3):
        super().__init__(path, width, height, fps, channels)
        try:
            import imageio_ffmpeg
        except ImportError:
            raise OutputFileError("output", f"{path.name} needs imageio-ffmpeg",
                                  "pip install 'flexavatar[runtime]' (or write a .gif / frames folder)") from None
        self.tmp = _partial(path)
        self._gen = imageio_ffmpeg.write_frames(str(self.tmp), (width, height), fps=fps, codec="libx264",
                                                pix_fmt_in="rgb24", pix_fmt_out="yuv420p", quality=8,
                                                macro_block_size=2, ffmpeg_log_level="error")
        self._gen.send(None)                      # starts ffmpeg

    def _write(self, frame):
        self._gen.send(frame)

    def close(self) -> int:
        if self._gen is not None:
            self._gen.close()
            self._gen = None
            os.replace(self.tmp, self.path)
        return self.count

    def abort(self) -> None:
        if self._gen is not None:
            try:
                self._gen.close()
            finally:
                self._gen = None
                self.tmp.unlink(missing_ok=True)


class GifWriter(FrameWriter):
    """Animated GIF through Pillow (palette per frame, loops forever). Pillow merges consecutive identical
    frames into one longer frame, as GIF allows."""

    def __init__(self, path, width, height, fps, channels=3):
        super().__init__(path, width, height, fps, channels)
        self.frames: list = []

    def _write(self, frame):
        from PIL import Image
        self.frames.append(Image.fromarray(frame, "RGB"))

    def close(self) -> int:
        if self.frames:
            tmp = _partial(self.path)
            first, *rest = self.frames
            try:
                first.save(tmp, format="GIF", save_all=True, append_images=rest, duration=round(1000 / self.fps),
                           loop=0, optimize=False)
                os.replace(tmp, self.path)
            finally:
                tmp.unlink(missing_ok=True)
                self.frames = []
        return self.count

    def abort(self) -> None:
        self.frames = []


class PngFolderWriter(FrameWriter):
    """frame_00000.png, frame_00001.png, ... in a folder (created if needed); RGB or RGBA. The frames go to a
    hidden sibling folder first: close() moves them in (replacing the frame_*.png of an earlier render there),
    abort() removes them, so the folder never holds half a render or frames of two."""
    keeps_alpha = True

    def __init__(self, path, width, height, fps, channels=3):
        super().__init__(path, width, height, fps, channels)
        if path.exists() and not path.is_dir():
            raise OutputFileError("output", f"{path} exists and is a file", "a folder for the PNG frames")
        self.staging: Path | None = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.absolute().parent))

    def _write(self, frame):
        from PIL import Image
        Image.fromarray(frame, "RGBA" if self.channels == 4 else "RGB").save(
            self.staging / f"frame_{self.count:05d}.png", format="PNG")

    def close(self) -> int:
        if self.staging is not None:
            default_permissions(self.staging)
            if not self.path.exists():
                os.replace(self.staging, self.path)
            else:
                for old in self.path.glob("frame_[0-9]*.png"):
                    old.unlink()
                for frame in sorted(self.staging.iterdir()):
                    os.replace(frame, self.path / frame.name)
                self.staging.rmdir()
            self.staging = None
        return self.count

    def abort(self) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None


class RawStreamWriter(FrameWriter):
    """Raw frames to standard output (``-o -``): rgb24 (or rgba with alpha) bytes, frame after frame, for a pipe
    into ffmpeg, a virtual camera or a compositor, e.g.
    ``... -o - | ffmpeg -f rawvideo -pix_fmt rgb24 -s 512x512 -r 25 -i - out.mp4``."""
    keeps_alpha = True

    def __init__(self, path, width, height, fps, channels=3):
        super().__init__(path, width, height, fps, channels)
        self.stream = sys.stdout.buffer

    def _write(self, frame):
        self.stream.write(frame.tobytes())

    def close(self) -> int:
        self.stream.flush()
        return self.count


STDOUT = "-"            # the output path that means "raw frames to standard output"
WRITERS: dict[str, Callable[..., FrameWriter]] = {".mp4": Mp4Writer, ".gif": GifWriter, "": PngFolderWriter,
                                                  STDOUT: RawStreamWriter}


def output_kind(path: str | Path, width: int, height: int, channels: int = 3) -> str:
    """Check that frames of width x height (x channels) can go to ``path`` (before any work is done) → the
    WRITERS key: the suffix, "" (a PNG folder) for a path without one or ending in '/', or "-" (stdout)."""
    text = str(path)
    if text == STDOUT:
        return STDOUT
    path = Path(path)
    suffix = "" if text.endswith(("/", os.sep)) or path.is_dir() else path.suffix.lower()
    if suffix not in WRITERS:
        raise OutputFileError("output", f"{path.name} has the suffix {suffix!r}",
                              f"one of {[s for s in WRITERS if s.startswith('.')]}, a folder (no suffix) for PNG "
                              "frames, or - for raw frames on standard output")
    parent = path.absolute().parent
    if not parent.is_dir():
        raise OutputFileError("output", f"folder {parent} does not exist", "an existing folder to write into")
    if channels == 4 and not WRITERS[suffix].keeps_alpha:
        raise OutputFileError("output", f"{path.name} cannot keep transparency (RGBA frames)",
                              "a folder (no suffix) for RGBA PNG frames, or - for raw rgba frames")
    if suffix == ".mp4" and (width % 2 or height % 2):
        raise OutputFileError("size", f"is {width}x{height}", "even width and height for H.264 .mp4 (yuv420p), "
                              "or write a .gif or a frames folder")
    return suffix


def open_writer(path: str | Path, width: int, height: int, fps: float, channels: int = 3) -> FrameWriter:
    """The writer for ``path`` (see ``output_kind``); channels 4 for RGBA frames (PNG folders only)."""
    suffix = output_kind(path, width, height, channels)
    return WRITERS[suffix](Path(path), width, height, check_fps(fps), channels)


def straight_rgba(rgba: np.ndarray, background) -> np.ndarray:
    """Float frames [n, H, W, 4] (colour composited over ``background`` + alpha, the runtime's "float" output)
    → uint8 [n, H, W, 4] with straight (not premultiplied) colour, as PNG stores it: colour =
    (rgb − (1 − α) · background) / α. Composited over any colour c it gives the render over c (± rounding)."""
    rgb, alpha = rgba[..., :3].astype(np.float64), np.clip(rgba[..., 3:].astype(np.float64), 0, 1)
    premultiplied = rgb - (1 - alpha) * np.asarray(background, np.float64)
    colour = np.divide(premultiplied, alpha, out=np.zeros_like(premultiplied), where=alpha > 0.5 / 255)
    return (np.clip(np.concatenate([colour, alpha], -1), 0, 1) * 255 + 0.5).astype(np.uint8)
