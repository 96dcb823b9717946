"""The C API's photo readers (``flexavatar_read_photo``: cpp/runtime/png.cpp, and input_files.cpp for in-the-wild
example .npz crops; ``flexavatar_read_photo_camera``) against the Python runtime's photo loading
(``runtime.images.load_image``, through Pillow; ``runtime.photo_camera``).

Every PNG colour type and bit depth, plain and Adam7-interlaced, with every row filter, palettes and tRNS
transparency, written by a small encoder here (Pillow writes only some of them) and by Pillow itself; the oracle
reads each file through Pillow as ``flexavatar-render --avatar photo.png`` does. Damaged, truncated and foreign
files give a typed error naming the file, never a crash.
"""
from __future__ import annotations

import ctypes
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

OK, NULL_POINTER, INVALID_SIZE, INVALID_ARGUMENT, IO = 0, 1, 2, 3, 13
ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


class PngReader:
    def __init__(self, build: Path):
        self.lib = ctypes.CDLL(str(build / "libflexavatar_runtime.so"))
        self.lib.flexavatar_read_photo.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64,
                                                 ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_int32)]
        self.lib.flexavatar_read_photo.restype = ctypes.c_int
        self.lib.flexavatar_last_error.restype = ctypes.c_char_p

    def call(self, path, image=None, count=0) -> tuple[int, int, int, str]:
        w, h = ctypes.c_int32(-1), ctypes.c_int32(-1)
        pointer = image.ctypes.data_as(ctypes.POINTER(ctypes.c_float)) if image is not None else None
        status = self.lib.flexavatar_read_photo(str(path).encode(), pointer, count, ctypes.byref(w), ctypes.byref(h))
        return status, w.value, h.value, self.lib.flexavatar_last_error().decode()

    def read(self, path) -> np.ndarray:
        status, w, h, message = self.call(path)
        assert status == OK, message
        image = np.full((3, h, w), np.nan, np.float32)
        status, w2, h2, message = self.call(path, image, image.size)
        assert (status, w2, h2) == (OK, w, h), message
        return image

    def error(self, path) -> tuple[int, str]:
        status, _, _, message = self.call(path)
        assert status != OK, f"{path} was accepted"
        return status, message


@pytest.fixture(scope="module")
def reader(cpp_build) -> PngReader:
    return PngReader(cpp_build("release"))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _pack_row(samples: np.ndarray, depth: int) -> bytes:
    """One row of samples (already interleaved channels) at `depth` bits, big-endian, sub-byte MSB first."""
    if depth == 16:
        return samples.astype(">u2").tobytes()
    if depth == 8:
        return samples.astype(np.uint8).tobytes()
    bits = np.unpackbits(samples.astype(np.uint8)[:, None], axis=1)[:, 8 - depth:].ravel()
    return np.packbits(bits).tobytes()


def _filter_row(kind: int, row: bytes, previous: bytes, step: int) -> bytes:
    out = bytearray(len(row))
    for i, x in enumerate(row):
        a = row[i - step] if i >= step else 0
        b = previous[i]
        c = previous[i - step] if i >= step else 0
        if kind == 0:
            predictor = 0
        elif kind == 1:
            predictor = a
        elif kind == 2:
            predictor = b
        elif kind == 3:
            predictor = (a + b) // 2
        else:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            predictor = a if pa <= pb and pa <= pc else b if pb <= pc else c
        out[i] = (x - predictor) & 0xFF
    return bytes([kind]) + bytes(out)


def png_bytes(samples: np.ndarray, color: int, depth: int, *, interlace: bool = False, palette=None, trns=None,
              seed: int = 0, filters=None) -> bytes:
    """samples: [H, W, channels] integers at `depth` bits → a PNG file, each row's filter type drawn at random
    (or from `filters`)."""
    h, w, n = samples.shape
    assert n == CHANNELS[color]
    rng = np.random.default_rng(seed)
    step = max(1, n * depth // 8)
    raw = bytearray()
    for x0, y0, dx, dy in (ADAM7 if interlace else [(0, 0, 1, 1)]):
        sub = samples[y0::dy, x0::dx]
        if sub.size == 0:
            continue
        previous = bytes(len(_pack_row(sub[0].ravel(), depth)))
        for r, row in enumerate(sub):
            packed = _pack_row(row.ravel(), depth)
            kind = int(filters[r % len(filters)]) if filters is not None else int(rng.integers(0, 5))
            raw += _filter_row(kind, packed, previous, step)
            previous = packed
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, int(interlace)))
    if palette is not None:
        out += _chunk(b"PLTE", np.asarray(palette, np.uint8).tobytes())
    if trns is not None:
        out += _chunk(b"tRNS", trns)
    data = zlib.compress(bytes(raw), 9)
    out += _chunk(b"IDAT", data[:len(data) // 2]) + _chunk(b"IDAT", data[len(data) // 2:])  # split: both read
    return out + _chunk(b"IEND", b"")


def _python_photo(path: Path) -> np.ndarray:
    from flexavatar.runtime.images import load_image
    from PIL import Image

    with Image.open(path) as im:
        size = im.size[0]
    return load_image(path, size)


def _samples(rng, size: int, color: int, depth: int, palette_size: int = 0) -> np.ndarray:
    top = palette_size if color == 3 else 1 << depth
    samples = rng.integers(0, top, size=(size, size, CHANNELS[color]))
    samples[: size // 3, : size // 2] = samples[0, 0]            # flat areas: long runs for the filters
    if CHANNELS[color] in (2, 4):                                  # alpha: opaque, clear and in between
        samples[::3, :, -1] = top - 1
        samples[1::5, :, -1] = 0
    return samples


COMBINATIONS = [(0, 1), (0, 2), (0, 4), (0, 8), (0, 16), (2, 8), (2, 16), (3, 1), (3, 2), (3, 4), (3, 8), (4, 8),
                (4, 16), (6, 8), (6, 16)]


@pytest.mark.parametrize("interlace", [False, True], ids=["plain", "adam7"])
@pytest.mark.parametrize("color,depth", COMBINATIONS, ids=[f"type{c}-{d}bit" for c, d in COMBINATIONS])
def test_every_colour_type_and_depth_reads_as_the_python_runtime(reader, tmp_path, color, depth, interlace):
    rng = np.random.default_rng(color * 100 + depth)
    size = 37                                                      # odd: Adam7's passes of every size, 0 included
    palette = rng.integers(0, 256, size=(min(1 << depth, 256), 3)) if color == 3 else None
    samples = _samples(rng, size, color, depth, len(palette) if palette is not None else 0)
    path = tmp_path / "photo.png"
    path.write_bytes(png_bytes(samples, color, depth, interlace=interlace, palette=palette, seed=depth))
    got = reader.read(path)
    want = _python_photo(path)
    assert got.shape == want.shape == (3, size, size)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("case", ["grey8", "rgb8", "palette"])
def test_trns_transparency_is_composited_onto_white_as_the_python_runtime(reader, tmp_path, case):
    rng = np.random.default_rng(5)
    size = 16
    if case == "palette":
        palette = rng.integers(0, 256, size=(6, 3))
        samples = rng.integers(0, 6, size=(size, size, 1))
        path_bytes = png_bytes(samples, 3, 8, palette=palette, trns=bytes([0, 128, 255, 40]))  # entries 4, 5: opaque
    elif case == "rgb8":
        samples = rng.integers(0, 4, size=(size, size, 3)) * 60
        samples[3, :] = (60, 120, 0)
        path_bytes = png_bytes(samples, 2, 8, trns=struct.pack(">HHH", 60, 120, 0))
    else:
        samples = rng.integers(0, 4, size=(size, size, 1))
        path_bytes = png_bytes(samples, 0, 8, trns=struct.pack(">H", 1), interlace=True)
    path = tmp_path / "photo.png"
    path.write_bytes(path_bytes)
    got, want = reader.read(path), _python_photo(path)
    np.testing.assert_array_equal(got, want)
    assert (want == 1.0).all(axis=0).any()                        # some pixels did turn white


def test_colour_keys_on_rescaled_samples_follow_the_png_specification(reader, tmp_path):
    """A tRNS colour key is compared with the raw samples (PNG specification 11.3.2.1): 16-bit RGB, 2-bit grey.
    Pillow rescales those samples to 8 bits first and then finds no pixel of the key, so the oracle here is the
    specification, written out: the key's pixels white, the others as Pillow reads them."""
    samples = np.full((4, 4, 3), 0x1234)
    samples[1, 2] = (0xABCD, 0x0102, 0xFFFF)
    path = tmp_path / "rgb16.png"
    path.write_bytes(png_bytes(samples, 2, 16, trns=struct.pack(">HHH", 0xABCD, 0x0102, 0xFFFF)))
    want = np.full((3, 4, 4), np.float32(0x12) / np.float32(255), np.float32)
    want[:, 1, 2] = 1.0
    np.testing.assert_array_equal(reader.read(path), want)
    grey = np.random.default_rng(4).integers(0, 4, size=(9, 9, 1))
    path = tmp_path / "grey2.png"
    path.write_bytes(png_bytes(grey, 0, 2, trns=struct.pack(">H", 1), interlace=True))
    want = np.repeat((grey[..., 0] * 85).astype(np.float32)[None] / np.float32(255), 3, axis=0)
    want[:, grey[..., 0] == 1] = 1.0
    np.testing.assert_array_equal(reader.read(path), want)
    assert (grey == 1).any()


def test_pillow_written_photos_and_sizes(reader, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(7)
    rgba = rng.integers(0, 256, size=(29, 53, 4), dtype=np.uint8)
    for mode in ("RGB", "RGBA", "L", "LA", "P", "1", "I;16"):
        image = Image.fromarray(rgba).convert(mode) if mode != "I;16" else \
            Image.fromarray(rng.integers(0, 65536, size=(29, 53), dtype=np.uint16))
        for optimize in (False, True):
            path = tmp_path / f"{mode.replace(';', '')}_{optimize}.png"
            image.save(path, optimize=optimize)
            got = reader.read(path)
            assert got.shape == (3, 29, 53)                          # H, W: not only square photos
            from flexavatar.images import pil_to_array
            with Image.open(path) as im:
                array = pil_to_array(im)
            if array.dtype == np.uint8:
                array = array.astype(np.float32) / np.float32(255)
            if array.shape[2] == 4:
                array = array[..., :3] * array[..., 3:] + (np.float32(1) - array[..., 3:])
            np.testing.assert_array_equal(got, array.transpose(2, 0, 1), err_msg=f"{mode} optimize={optimize}")


def test_bad_files_give_typed_errors_naming_the_problem(reader, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(8)
    samples = rng.integers(0, 256, size=(8, 8, 3))
    good = png_bytes(samples, 2, 8)
    jpeg = io.BytesIO()
    Image.fromarray(samples.astype(np.uint8)).save(jpeg, format="JPEG")
    flipped = bytearray(good)
    flipped[40] ^= 0x01
    palette_over = png_bytes(np.full((2, 2, 1), 5), 3, 8, palette=np.zeros((3, 3)))
    ihdr_big = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 1, 8, 2, 0, 0, 0)) + \
        _chunk(b"IEND", b"")
    wrong_depth = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 4, 2, 0, 0, 0))
    not_zlib = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)) + \
        _chunk(b"IDAT", b"\x00\x00" + zlib.compress(b"\x00\x07")[2:]) + _chunk(b"IEND", b"")
    critical = good[:33] + _chunk(b"ABCD", b"x") + good[33:]
    cases = {
        "jpeg": (jpeg.getvalue(), INVALID_ARGUMENT, "a JPEG file; this reader takes PNG"),
        "text": (b"P3\n1 1\n255\n0 0 0\n", INVALID_ARGUMENT, "not a PNG file"),
        "crc": (bytes(flipped), INVALID_ARGUMENT, "the CRC of chunk"),
        "filter 7": (png_bytes(samples, 2, 8, filters=[7]), INVALID_ARGUMENT, "unknown filter type 7 in row 0"),
        "palette index": (palette_over, INVALID_ARGUMENT, "palette index 5 beyond the PLTE chunk's 3 entries"),
        "no PLTE": (png_bytes(np.zeros((2, 2, 1)), 3, 8), INVALID_ARGUMENT, "a palette image without a PLTE chunk"),
        "too big": (ihdr_big, INVALID_ARGUMENT, "20000x1 pixels (at most 16384 a side)"),
        "depth": (wrong_depth, INVALID_ARGUMENT, "colour type 2 with bit depth 4"),
        "not zlib": (not_zlib, INVALID_ARGUMENT, "not a zlib stream"),
        "critical": (critical, INVALID_ARGUMENT, "an unknown critical chunk 'ABCD'"),
        "no IEND": (good[:-12], INVALID_ARGUMENT, "has no IEND"),
    }
    for name, (data, status, text) in cases.items():
        path = tmp_path / f"{name}.png"
        path.write_bytes(data)
        got, message = reader.error(path)
        assert got == status and text in message and str(path) in message, (name, message)
    got, message = reader.error(tmp_path / "absent.png")
    assert got == IO and "absent.png: cannot open" in message
    path = tmp_path / "ok.png"
    path.write_bytes(good)
    small = np.zeros((3, 8, 7), np.float32)
    status, _, _, message = reader.call(path, small, small.size)
    assert status == INVALID_SIZE and "count is 168, the 8x8 photo needs 3 x 8 x 8 = 192 floats" in message
    assert reader.lib.flexavatar_read_photo(str(path).encode(), None, 0, None, None) == NULL_POINTER


def test_every_truncation_and_corruption_is_an_error_not_a_crash(reader, tmp_path):
    rng = np.random.default_rng(9)
    data = png_bytes(_samples(rng, 11, 6, 8), 6, 8, interlace=True)
    path = tmp_path / "photo.png"
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        status, message = reader.error(path)
        assert status == INVALID_ARGUMENT and str(path) in message, (cut, message)
    want = reader.read(_write(tmp_path / "whole.png", data))
    for _ in range(300):
        damaged = bytearray(data)
        for at in rng.integers(8, len(data), size=rng.integers(1, 4)):
            damaged[at] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(damaged))
        status, _, _, message = reader.call(path)
        if status == OK:                                         # a byte of an ancillary field no check covers
            np.testing.assert_array_equal(reader.read(path), want)
        else:
            assert status == INVALID_ARGUMENT, message


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_in_the_wild_crops_and_their_cameras_read_as_the_python_runtime(reader, driving_dir, tmp_path):
    """flexavatar_read_photo on an in-the-wild example .npz: its uint8 crop / 255 (float crops in [0, 1], RGBA
    composited onto white), equal to load_image; flexavatar_read_photo_camera: its cam2world and intrinsics, equal to
    photo_camera. A PNG has no camera; a sequence's [T, 4, 4] cameras are not a photo's."""
    from flexavatar.runtime import photo_camera
    from flexavatar.runtime.images import load_image

    lib = reader.lib
    lib.flexavatar_read_photo_camera.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_float),
                                                 ctypes.POINTER(ctypes.c_float)]
    lib.flexavatar_read_photo_camera.restype = ctypes.c_int

    def camera(path):
        c2w, k = (ctypes.c_float * 16)(), (ctypes.c_float * 9)()
        status = lib.flexavatar_read_photo_camera(str(path).encode(), c2w, k)
        if status != OK:
            return status, lib.flexavatar_last_error().decode()
        return status, (np.frombuffer(c2w, np.float32).reshape(4, 4), np.frombuffer(k, np.float32).reshape(3, 3))

    crops = [p for p in sorted(driving_dir.glob("*.npz")) if "image" in np.load(p).files]
    assert len(crops) >= 4
    for path in crops:
        np.testing.assert_array_equal(reader.read(path), load_image(path, 512), err_msg=path.name)
        status, (c2w, k) = camera(path)
        want = photo_camera(path)
        assert status == OK and c2w.tobytes() == want.cam2world.tobytes() and k.tobytes() == want.intrinsics.tobytes()
    rng = np.random.default_rng(13)
    rgba = rng.random((9, 9, 4)).astype(np.float32)
    rgba[0, 0] = [0.25, 1.0005, -0.0004, 0.5]                 # within the 1e-3 slack: clipped, as Python
    np.savez(tmp_path / "float_rgba.npz", image=rgba)
    np.testing.assert_array_equal(reader.read(tmp_path / "float_rgba.npz"), load_image(rgba, 9))
    np.savez(tmp_path / "bright.npz", image=rgba * 2)
    status, message = reader.error(tmp_path / "bright.npz")
    assert status == INVALID_ARGUMENT and "expected uint8 0-255, or float in [0, 1]" in message
    np.savez(tmp_path / "grey.npz", image=np.zeros((9, 9), np.uint8))
    status, message = reader.error(tmp_path / "grey.npz")
    assert status == INVALID_ARGUMENT and "image [9, 9]" in message
    path = tmp_path / "photo.png"
    path.write_bytes(png_bytes(rng.integers(0, 256, size=(4, 4, 3)), 2, 8))
    status, message = camera(path)
    assert status == INVALID_ARGUMENT and "not an .npz archive, so no camera" in message
    status, message = camera(driving_dir / "EXP-4-lips.npz")
    assert status == INVALID_ARGUMENT and "cam2world [193, 4, 4] and intrinsics [193, 3, 3]" in message
