"""The C API's readers of expression sequence files (``flexavatar_read_expressions``) and of a tracked sequence's
cameras (``flexavatar_read_sequence_cameras``) against NumPy and zlib.

The tracked sequences in ``../shared/fixtures/driving/`` are ``np.savez_compressed`` archives: their
``expression_codes`` member is DEFLATE-compressed, which the C++ runtime decodes with its own inflater
(cpp/runtime/inflate.cpp, no zlib). Oracles: ``np.load`` for every real sequence, and zlib itself for streams of
every form it writes (levels 0-9, each strategy, small windows, flushes that split the stream into blocks, stored
blocks). Damaged, truncated, mislabelled and lying archives must give a typed error, never a crash or wrong
values. The library is called through ctypes, as an app would call it.
"""
from __future__ import annotations

import ctypes
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

EXPRESSION_DIM = 135
OK, NULL_POINTER, INVALID_SIZE, INVALID_ARGUMENT, IO = 0, 1, 2, 3, 13


class CCamera(ctypes.Structure):
    """flexavatar_camera (flexavatar/flexavatar.h)."""
    _fields_ = [("cam2world", ctypes.c_float * 16), ("intrinsics", ctypes.c_float * 9), ("width", ctypes.c_int32),
                ("height", ctypes.c_int32), ("background", ctypes.c_float * 3)]


class Reader:
    def __init__(self, build: Path):
        self.lib = ctypes.CDLL(str(build / "libflexavatar_runtime.so"))
        self.lib.flexavatar_read_expressions.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_float),
                                                         ctypes.c_int64, ctypes.POINTER(ctypes.c_int64)]
        self.lib.flexavatar_read_expressions.restype = ctypes.c_int
        self.lib.flexavatar_read_sequence_cameras.argtypes = [ctypes.c_char_p, ctypes.POINTER(CCamera),
                                                              ctypes.c_int64, ctypes.POINTER(ctypes.c_int64)]
        self.lib.flexavatar_read_sequence_cameras.restype = ctypes.c_int
        self.lib.flexavatar_last_error.restype = ctypes.c_char_p

    def cameras(self, path) -> tuple[int, list | str]:
        """(status, the cameras, each with width 7, height 5 and background (0.25, 0.5, 1) set before the call) or
        (status, message)."""
        frames = ctypes.c_int64(-1)
        status = self.lib.flexavatar_read_sequence_cameras(str(path).encode(), None, 0, ctypes.byref(frames))
        if status != OK:
            return status, self.lib.flexavatar_last_error().decode()
        cameras = (CCamera * frames.value)()
        for c in cameras:
            c.width, c.height, c.background[:] = 7, 5, (0.25, 0.5, 1.0)
        status = self.lib.flexavatar_read_sequence_cameras(str(path).encode(), cameras, frames.value,
                                                           ctypes.byref(frames))
        return status, (list(cameras) if status == OK else self.lib.flexavatar_last_error().decode())

    def call(self, path, codes=None, count=0, frames=True) -> tuple[int, int, str]:
        n = ctypes.c_int64(-1)
        pointer = codes.ctypes.data_as(ctypes.POINTER(ctypes.c_float)) if codes is not None else None
        status = self.lib.flexavatar_read_expressions(str(path).encode(), pointer, count,
                                                      ctypes.byref(n) if frames else None)
        return status, n.value, self.lib.flexavatar_last_error().decode()

    def read(self, path) -> np.ndarray:
        """Both calls, as flexavatar::read_expressions does; raises with the library's message on failure."""
        status, frames, message = self.call(path)
        if status != OK:
            raise ValueError(f"status {status}: {message}")
        codes = np.full((frames, EXPRESSION_DIM), np.nan, np.float32)
        status, again, message = self.call(path, codes, codes.size)
        assert (status, again) == (OK, frames), message
        return codes

    def error(self, path) -> tuple[int, str]:
        status, _, message = self.call(path)
        assert status != OK, f"{path} was accepted"
        return status, message


@pytest.fixture(scope="module")
def reader(cpp_build) -> Reader:
    return Reader(cpp_build("release"))


def _npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def _zip(members: dict[str, tuple[bytes, int, bytes]], method_override: int | None = None) -> bytes:
    """A ZIP archive of members name → (uncompressed bytes, method, data as stored), written by hand so that the
    DEFLATE stream is any we make (zipfile only writes its own)."""
    out, central = bytearray(), bytearray()
    for name, (raw, method, data) in members.items():
        method = method if method_override is None else method_override
        crc, encoded = zlib.crc32(raw), name.encode()
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, len(data), len(raw), len(encoded), 0)
        out += encoded + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, crc, len(data), len(raw),
                               len(encoded), 0, 0, 0, 0, 0, offset)
        central += encoded
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(out), 0)
    return bytes(out + central + end)


def _deflate(raw: bytes, level: int = 6, strategy: int = zlib.Z_DEFAULT_STRATEGY, wbits: int = -15,
             flush_every: int = 0, flush_mode: int = zlib.Z_SYNC_FLUSH) -> bytes:
    c = zlib.compressobj(level, zlib.DEFLATED, wbits, 8, strategy)
    if not flush_every:
        return c.compress(raw) + c.flush()
    parts = [c.compress(raw[i:i + flush_every]) + c.flush(flush_mode) for i in range(0, len(raw), flush_every)]
    return b"".join(parts) + c.flush()


def _codes(seed: int = 0, frames: int = 240) -> np.ndarray:
    """Expression-like codes with what compressors exploit: repeated frames (long matches, far back), constant
    runs (overlapping copies), and noise (literals)."""
    rng = np.random.default_rng(seed)
    codes = (rng.standard_normal((frames, EXPRESSION_DIM)) * 0.3).astype(np.float32)
    codes[10:40] = codes[3]                 # repeats of one frame
    codes[50:60] = 0.0                      # a run of zeros
    codes[100:110, :60] = 1.25              # runs inside frames
    codes[200:] = codes[40:80]              # a copy from ~85 KB back (beyond a 32 KB window: re-coded)
    return codes


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_every_tracked_sequence_reads_as_numpy_loads_it(reader, driving_dir):
    archives = sorted(driving_dir.glob("*.npz"))
    sequences = [path for path in archives if "expression_codes" in np.load(path).files]
    assert len(sequences) >= 18
    for path in sequences:
        expected = np.load(path)["expression_codes"]
        got = reader.read(path)
        assert got.shape == expected.shape and got.tobytes() == expected.tobytes(), path.name
    # the example input crops hold one 'expression_code' of their photo, not a sequence: said, as flexavatar-render
    for path in sorted(set(archives) - set(sequences)):
        status, message = reader.error(path)
        assert status == INVALID_ARGUMENT and "no 'expression_codes' array (members: " in message, message


def test_float64_and_float16_files_are_converted_as_the_python_runtime(reader, tmp_path):
    """np.save of a float array without a dtype writes float64: read as the Python runtime's load_expressions
    (astype float32: rounded to nearest), and float16 exactly, subnormals, zeros and signs included."""
    from flexavatar.runtime import load_expressions

    rng = np.random.default_rng(11)
    codes = rng.standard_normal((6, 135)) * np.logspace(-8, 3, 135)        # float64, magnitudes 1e-8 .. 1e3
    np.save(tmp_path / "f64.npy", codes)
    np.savez_compressed(tmp_path / "f64.npz", expression_codes=codes)
    half = np.concatenate([rng.standard_normal((3, 135)), np.zeros((1, 135))]).astype(np.float16)
    half[3, :4] = [np.float16(6e-8), -np.float16(6e-8), np.float16(-0.0), np.float16(65504)]   # subnormal, -0, max
    np.save(tmp_path / "f16.npy", half)
    for name in ("f64.npy", "f64.npz", "f16.npy"):
        want = load_expressions(tmp_path / name)
        got = reader.read(tmp_path / name)
        assert got.dtype == want.dtype == np.float32 and got.tobytes() == want.tobytes(), name


def test_npy_files_and_savez_archives(reader, tmp_path):
    codes = _codes(1)
    np.save(tmp_path / "seq.npy", codes)
    np.save(tmp_path / "one.npy", codes[7])
    np.savez(tmp_path / "stored.npz", frame_ids=np.arange(len(codes), dtype=np.int32), expression_codes=codes,
             sequence=np.array("EXP-4"))
    np.savez_compressed(tmp_path / "deflated.npz", expression_codes=codes, fps=np.float32(73.0))
    assert reader.read(tmp_path / "seq.npy").tobytes() == codes.tobytes()
    assert reader.read(tmp_path / "one.npy").tobytes() == codes[7:8].tobytes()
    assert reader.read(tmp_path / "stored.npz").tobytes() == codes.tobytes()
    # the format is told by the bytes, not the name
    renamed = _write(tmp_path, "deflated.bin", (tmp_path / "deflated.npz").read_bytes())
    assert reader.read(renamed).tobytes() == codes.tobytes()


@pytest.mark.parametrize("form", [
    *[dict(level=level) for level in range(10)],
    dict(strategy=zlib.Z_FILTERED), dict(strategy=zlib.Z_HUFFMAN_ONLY), dict(strategy=zlib.Z_RLE),
    dict(strategy=zlib.Z_FIXED), dict(strategy=zlib.Z_FIXED, level=1),
    dict(wbits=-9), dict(wbits=-12, level=9),
    dict(flush_every=4096), dict(flush_every=777, flush_mode=zlib.Z_FULL_FLUSH), dict(flush_every=1, level=1),
    dict(flush_every=30000, level=0),
], ids=lambda form: ",".join(f"{k}={v}" for k, v in form.items()))
def test_every_deflate_form_zlib_writes(reader, tmp_path, form):
    codes = _codes(2)
    raw = _npy(codes)
    data = _deflate(raw, **form)
    path = _write(tmp_path, "seq.npz", _zip({"expression_codes.npy": (raw, 8, data)}))
    assert reader.read(path).tobytes() == codes.tobytes()


def test_random_and_empty_like_streams(reader, tmp_path):
    rng = np.random.default_rng(3)
    for frames in (1, 2, 5, 1000):
        codes = rng.standard_normal((frames, EXPRESSION_DIM)).astype(np.float32)  # incompressible: stored blocks
        raw = _npy(codes)
        for level in (0, 1, 9):
            path = _write(tmp_path, "seq.npz", _zip({"expression_codes.npy": (raw, 8, _deflate(raw, level))}))
            assert reader.read(path).tobytes() == codes.tobytes(), (frames, level)


def _error_cases(tmp_path: Path) -> dict[str, tuple[Path, int, str]]:
    codes = _codes(4, frames=20)
    raw = _npy(codes)
    good = _deflate(raw, 9)
    cases: dict[str, tuple[bytes, int, str]] = {}
    cases["text"] = (b"frame,code\n1,2\n", INVALID_ARGUMENT, "neither a .npy file nor an .npz archive")
    cases["no key"] = (_zip({"codes.npy": (raw, 8, good), "fps.npy": (_npy(np.float32(30)), 0,
                                                                          _npy(np.float32(30)))}),
                       INVALID_ARGUMENT, "no 'expression_codes' array (members: codes, fps")
    ints = _npy((codes * 100).astype(np.int32))
    cases["int32"] = (_zip({"expression_codes.npy": (ints, 0, ints)}), INVALID_ARGUMENT,
                      "dtype '<i4', expected float32 ('<f4'; float64 and float16 are converted)")
    huge = codes.astype(np.float64)
    huge[3, 5] = 1e300
    cases["beyond float32"] = (_npy(huge), INVALID_ARGUMENT,
                               "NaN/inf (or values beyond float32) in 1 of 20 frames, the first is frame 3")
    narrow = _npy(codes[:, :134])
    cases["134 wide"] = (_zip({"expression_codes.npy": (narrow, 0, narrow)}), INVALID_ARGUMENT,
                         "shape [20, 134], expected [E, 135]")
    bad = codes.copy()
    bad[7, 3], bad[12, 0] = np.nan, np.inf
    cases["nan"] = (_npy(bad), INVALID_ARGUMENT, "NaN/inf (or values beyond float32) in 2 of 20 frames, the first is frame 7")
    empty = _npy(np.zeros((0, EXPRESSION_DIM), np.float32))
    cases["no frames"] = (empty, INVALID_ARGUMENT, "shape [0, 135]")
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0x10
    cases["flipped byte"] = (_zip({"expression_codes.npy": (raw, 8, bytes(flipped))}), INVALID_ARGUMENT,
                             "expression_codes")
    wrong_crc = bytearray(_zip({"expression_codes.npy": (raw, 8, good)}))
    central = wrong_crc.rfind(b"PK\x01\x02")
    wrong_crc[central + 16] ^= 0xFF
    cases["wrong crc"] = (bytes(wrong_crc), INVALID_ARGUMENT, "CRC-32")
    cases["bzip2"] = (_zip({"expression_codes.npy": (raw, 12, good)}), INVALID_ARGUMENT, "compression method 12")
    cases["cut stream"] = (_zip({"expression_codes.npy": (raw, 8, good[:len(good) // 2])}), INVALID_ARGUMENT,
                           "ends early")
    cases["longer"] = (_zip({"expression_codes.npy": (raw[:-100], 8, good)}), INVALID_ARGUMENT,
                       "more than the")
    # a member that claims 4 GB from a few bytes: refused before anything is allocated
    bomb = bytearray(_zip({"expression_codes.npy": (raw, 8, good)}))
    central = bomb.rfind(b"PK\x01\x02")
    bomb[central + 24:central + 28] = struct.pack("<I", 0xFFFFFFF0)
    cases["bomb"] = (bytes(bomb), INVALID_ARGUMENT, "cannot hold the 4294967280 bytes claimed")
    cases["stored block liar"] = (_zip({"expression_codes.npy": (raw, 8, b"\x01\x05\x00\x00\x00hello")}),
                                  INVALID_ARGUMENT, "complement")
    cases["block type 3"] = (_zip({"expression_codes.npy": (raw, 8, b"\x07" + good)}), INVALID_ARGUMENT,
                             "invalid block type 3")
    out = {name: (_write(tmp_path, f"case{i}.npz", data), status, text)
           for i, (name, (data, status, text)) in enumerate(cases.items())}
    out["missing"] = (tmp_path / "absent.npz", IO, "cannot open")
    return out


def test_bad_files_give_typed_errors_naming_the_problem(reader, tmp_path):
    for name, (path, status, text) in _error_cases(tmp_path).items():
        got, message = reader.error(path)
        assert got == status and text in message and str(path) in message, (name, got, message)


def test_every_truncation_and_corruption_is_an_error_not_a_crash(reader, tmp_path):
    codes = _codes(5, frames=12)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, expression_codes=codes, frame_ids=np.arange(12, dtype=np.int32))
    archive = buffer.getvalue()
    path = tmp_path / "seq.npz"
    for cut in range(0, len(archive), 7):
        path.write_bytes(archive[:cut])
        status, message = reader.error(path)
        assert status == INVALID_ARGUMENT and str(path) in message, (cut, message)
    rng = np.random.default_rng(6)
    for _ in range(300):
        damaged = bytearray(archive)
        for at in rng.integers(0, len(archive), size=rng.integers(1, 4)):
            damaged[at] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(damaged))
        status, frames, message = reader.call(path)
        if status == OK:  # a byte the reader never looks at (a header's time stamp, another member's data)
            assert reader.read(path).tobytes() == codes.tobytes()
        else:
            assert status == INVALID_ARGUMENT, message


def test_two_call_protocol_checks_its_arguments(reader, tmp_path):
    codes = _codes(7, frames=9)
    path = tmp_path / "seq.npy"
    np.save(path, codes)
    status, frames, _ = reader.call(path)
    assert (status, frames) == (OK, 9)
    small = np.zeros((8, EXPRESSION_DIM), np.float32)
    status, _, message = reader.call(path, small, small.size)
    assert status == INVALID_SIZE and "count is 1080, the file holds 9 x 135 = 1215 floats" in message
    assert not small.any()  # nothing written on failure
    status, _, message = reader.call(path, frames=False)
    assert status == NULL_POINTER and "frames is NULL" in message
    status = reader.lib.flexavatar_read_expressions(None, None, 0, ctypes.byref(ctypes.c_int64()))
    assert status == NULL_POINTER


def test_tracked_cameras_read_as_the_python_runtimes_sequence_cameras(reader, driving_dir, tmp_path):
    from flexavatar.runtime import sequence_cameras

    sequences = [path for path in sorted(driving_dir.glob("*.npz")) if "expression_codes" in np.load(path).files]
    for path in sequences:
        status, cameras = reader.cameras(path)
        assert status == OK, cameras
        want = sequence_cameras(path)
        assert len(cameras) == len(want) == len(np.load(path)["expression_codes"])
        got_c2w = np.array([np.frombuffer(c.cam2world, np.float32) for c in cameras]).reshape(-1, 4, 4)
        got_k = np.array([np.frombuffer(c.intrinsics, np.float32) for c in cameras]).reshape(-1, 3, 3)
        assert got_c2w.tobytes() == np.asarray(want.cam2world, np.float32).tobytes(), path.name
        assert got_k.tobytes() == np.asarray(want.intrinsics, np.float32).tobytes(), path.name
        # only the matrices are the file's: the caller's size and background stay
        assert all((c.width, c.height, tuple(c.background)) == (7, 5, (0.25, 0.5, 1.0)) for c in cameras)
    c2w = np.tile(np.eye(4, dtype=np.float32), (3, 1, 1))
    k = np.tile(np.eye(3, dtype=np.float32), (3, 1, 1))
    bad_k = k.copy()
    bad_k[2, 0, 0] = np.inf
    cases = {
        "codes only": (dict(expression_codes=np.zeros((3, 135), np.float32)), "no 'cam2world' / 'intrinsics' array"),
        "no intrinsics": (dict(cam2world=c2w), "no 'intrinsics' array (members: cam2world;"),
        "frames differ": (dict(cam2world=c2w, intrinsics=k[:2]), "cam2world [3, 4, 4] and intrinsics [2, 3, 3]"),
        "3x4": (dict(cam2world=c2w[:, :3], intrinsics=k), "cam2world [3, 3, 4]"),
        "int64": (dict(cam2world=c2w.astype(np.int64), intrinsics=k), "expected float32"),
        "inf": (dict(cam2world=c2w, intrinsics=bad_k), "NaN/inf (or values beyond float32) in the camera of frame 2"),
    }
    for name, (members, message) in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez_compressed(path, **members)
        status, got = reader.cameras(path)
        assert status == INVALID_ARGUMENT and message in got and str(path) in got, (name, got)
    np.save(tmp_path / "codes.npy", np.zeros((3, 135), np.float32))
    status, got = reader.cameras(tmp_path / "codes.npy")
    assert status == INVALID_ARGUMENT and "not an .npz archive" in got
    np.savez(tmp_path / "ok.npz", cam2world=c2w, intrinsics=k)
    status = reader.lib.flexavatar_read_sequence_cameras(str(tmp_path / "ok.npz").encode(), (CCamera * 2)(), 2,
                                                         ctypes.byref(ctypes.c_int64()))
    assert status == INVALID_SIZE and "count is 2, the file holds 3 cameras" in reader.lib.flexavatar_last_error().decode()


def test_npy_reader_gives_shape_and_float32_values(reader, tmp_path):
    """flexavatar_read_npy: any float .npy as float32 (numpy's astype), its shape first; other dtypes, more than
    FLEXAVATAR_NPY_MAX_DIMS dimensions and a wrong count are typed errors."""
    lib = reader.lib
    lib.flexavatar_read_npy.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64,
                                        ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int32)]
    lib.flexavatar_read_npy.restype = ctypes.c_int

    def read(path, count=None):
        shape, ndim = (ctypes.c_int64 * 8)(), ctypes.c_int32(-1)
        status = lib.flexavatar_read_npy(str(path).encode(), None, 0, shape, ctypes.byref(ndim))
        if status != OK:
            return status, lib.flexavatar_last_error().decode()
        dims = tuple(shape[:ndim.value])
        values = np.zeros(int(np.prod(dims)), np.float32)
        status = lib.flexavatar_read_npy(str(path).encode(), values.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                                         values.size if count is None else count, shape, ctypes.byref(ndim))
        return status, (values.reshape(dims) if status == OK else lib.flexavatar_last_error().decode())

    rng = np.random.default_rng(12)
    for dtype in (np.float32, np.float64, np.float16):
        array = rng.standard_normal((2, 3, 4)).astype(dtype)
        np.save(tmp_path / "a.npy", array)
        status, got = read(tmp_path / "a.npy")
        assert status == OK and got.tobytes() == array.astype(np.float32).tobytes(), dtype
    np.save(tmp_path / "scalar.npy", np.float64(2.5))
    assert read(tmp_path / "scalar.npy")[1].tolist() == 2.5                 # shape (): one value
    np.save(tmp_path / "deep.npy", np.zeros((1,) * 9, np.float32))
    status, message = read(tmp_path / "deep.npy")
    assert status == INVALID_ARGUMENT and "9 dimensions (at most 8)" in message
    np.save(tmp_path / "bool.npy", np.zeros(3, bool))
    status, message = read(tmp_path / "bool.npy")
    assert status == INVALID_ARGUMENT and "dtype '|b1', expected float32" in message
    status, message = read(tmp_path / "a.npy", count=5)
    assert status == INVALID_SIZE and "count is 5" in message and "holds 24 values" in message
