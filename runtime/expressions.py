"""Expression codes (the 135-d FLEX code) and the rigid head pose, in numpy (no torch).

Layout (SPEC §14): ``[0:100]`` expression, ``[100:112]`` eyes 6D, ``[112:114]`` eyelids, ``[114:120]`` neck 6D,
``[120:126]`` jaw 6D, ``[126:132]`` head rotation 6D, ``[132:135]`` head translation. The decoded Gaussians
stay in the canonical head frame; the official GUI then applies the rigid pose
``[rot6d(code[126:132]) | code[132:135]]`` to their positions and rotations (``apply_head_pose``).
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import ExpressionInputError

EXPRESSION_DIM = 135
EXPRESSION_COEFFICIENTS = slice(0, 100)
EYES = slice(100, 112)                 # left eye 6D, right eye 6D
EYELIDS = slice(112, 114)
NECK = slice(114, 120)
JAW = slice(120, 126)
HEAD_ROTATION = slice(126, 132)
HEAD_TRANSLATION = slice(132, 135)
ROTATION_SLOTS = (slice(100, 106), slice(106, 112), NECK, JAW, HEAD_ROTATION)
IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
NPZ_KEY = "expression_codes"      # key of the tracked sequences in ../shared/fixtures/driving/*.npz


def neutral_expression(n: int = 1) -> np.ndarray:
    """Zeros with identity 6D in the five rotation slots (the GUI's neutral code).  → [n, 135] float32"""
    codes = np.zeros((n, EXPRESSION_DIM), np.float32)
    for s in ROTATION_SLOTS:
        codes[:, s] = IDENTITY_6D
    return codes


def synthetic_expressions(n: int) -> np.ndarray:
    """A talking-like sequence: the neutral code + sinusoids on the first ten expression coefficients and
    the jaw's 6D rows.  → [n, 135] float32"""
    codes = neutral_expression(n)
    t = np.arange(n, dtype=np.float32)
    for k in range(10):
        codes[:, k] = 1.5 * np.sin(0.4 * t * (1 + 0.1 * k) + k)
    codes[:, JAW.start + 4] += 0.2 * np.sin(0.5 * t)
    return codes


def as_expressions(x, argument: str = "expressions") -> np.ndarray:
    """[135] or [T, 135] float array (numpy / torch / list) → [T, 135] float32, checked."""
    if type(x).__module__.startswith("torch"):
        x = x.detach().cpu().numpy()
    try:
        a = np.asarray(x)
    except (TypeError, ValueError):
        raise ExpressionInputError(argument, f"is a {type(x).__name__}", "a [T, 135] float array") from None
    if a.dtype.kind != "f":
        raise ExpressionInputError(argument, f"has dtype {a.dtype}", "floating point expression codes")
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[1] != EXPRESSION_DIM or a.shape[0] == 0:
        raise ExpressionInputError(argument, f"has shape {list(a.shape)}", f"[T, {EXPRESSION_DIM}] with T ≥ 1")
    with np.errstate(over="ignore"):                  # checked after the cast: 1e300 becomes inf
        a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        bad = np.flatnonzero(~np.isfinite(a).all(axis=1))
        raise ExpressionInputError(argument, f"has NaN/inf (or values beyond float32) in {len(bad)} frames, the "
                                   f"first is frame {int(bad[0])}", "finite values")
    return a


def load_expressions(path: str | Path) -> np.ndarray:
    """A sequence file → [T, 135] float32: ``.npy`` [T, 135] (or [135]), or ``.npz`` with ``expression_codes``
    (the layout of the tracked sequences in ``../shared/fixtures/driving/``)."""
    path = Path(path)
    if not path.is_file():
        raise ExpressionInputError("expressions", f"file {path} not found", "a .npy [T, 135] or .npz file")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ExpressionInputError("expressions", f"cannot read {path} ({e})", "a .npy or .npz file") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            if NPZ_KEY not in data.files:
                raise ExpressionInputError("expressions", f"{path.name} has no {NPZ_KEY!r} array (keys: "
                                           f"{sorted(data.files)})", f"an .npz with {NPZ_KEY} [T, 135]")
            try:
                data = data[NPZ_KEY]
            except (OSError, ValueError) as e:        # e.g. an object array (needs pickle) or a damaged member
                raise ExpressionInputError("expressions", f"cannot read {NPZ_KEY} of {path.name} ({e})",
                                           f"a float array {NPZ_KEY} [T, 135]") from None
    return as_expressions(data, f"expressions ({path.name})")


RECORD_BYTES = 4 * EXPRESSION_DIM     # a streamed expression: 135 little-endian float32 values


def read_expression_records(stream: BinaryIO) -> Iterator[np.ndarray]:
    """Expression codes as they arrive on a binary stream (e.g. a tracker's pipe on standard input): records of
    135 little-endian float32 values (540 bytes), each yielded as [1, 135] float32 once it is complete. A stream
    that ends inside a record raises ``ExpressionInputError`` after the complete ones."""
    frame = 0
    while True:
        record = bytearray()
        while len(record) < RECORD_BYTES:           # a pipe may deliver a record in pieces
            chunk = stream.read(RECORD_BYTES - len(record))
            if not chunk:
                break
            record += chunk
        if not record:
            return
        if len(record) < RECORD_BYTES:
            raise ExpressionInputError("expressions", f"stream ended inside record {frame} ({len(record)} of "
                                       f"{RECORD_BYTES} bytes)", f"{EXPRESSION_DIM} little-endian float32 values "
                                       "per frame")
        yield as_expressions(np.frombuffer(bytes(record), dtype="<f4"), f"expressions (streamed record {frame})")
        frame += 1


class LatestRecords:
    """Expression records of a live stream, the newest first: a reader thread takes each record as it arrives
    (``read_expression_records``) and keeps only the newest; each iteration yields the newest record not yet yielded,
    waiting for one, so a renderer slower than its source renders the present instead of a growing queue of the past
    (``flexavatar-render --expressions - --latest``). ``received`` counts the records read, ``skipped`` those replaced
    before they were yielded. A stream that ends inside a record raises ``ExpressionInputError`` once the newest
    whole record has been yielded."""

    def __init__(self, stream: BinaryIO):
        self.received = 0
        self.skipped = 0
        self._newest: np.ndarray | None = None
        self._done = False
        self._error: BaseException | None = None
        self._changed = threading.Condition()
        # a daemon: a consumer that stops early leaves it blocked on the stream, which must not keep the process
        threading.Thread(target=self._read, args=(stream,), name="flexavatar-latest-records", daemon=True).start()

    def _read(self, stream: BinaryIO) -> None:
        try:
            for record in read_expression_records(stream):
                with self._changed:
                    self.skipped += self._newest is not None
                    self._newest = record
                    self.received += 1
                    self._changed.notify_all()
        except BaseException as e:              # handed to the consumer, after the records before it
            with self._changed:
                self._error = e
        finally:
            with self._changed:
                self._done = True
                self._changed.notify_all()

    def wait_received(self, count: int, timeout: float | None = None) -> bool:
        """Wait until ``count`` records were read or the stream ended (for tests and callers that pace a source)."""
        with self._changed:
            return self._changed.wait_for(lambda: self.received >= count or self._done, timeout)

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._newest is not None or self._done)
                record, self._newest = self._newest, None
                if record is None:
                    if self._error is not None:
                        raise self._error
                    return
            yield record


def sequence_fps(path: str | Path, default: float) -> float:
    """The ``fps`` scalar of a tracked ``.npz`` sequence, else ``default``."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        return default
    with np.load(path, allow_pickle=False) as data:
        return float(data["fps"]) if "fps" in data.files and data["fps"].shape == () else default


# ---- building codes from a FLAME tracker's parameters ---------------------------------------------------

def axis_angle_to_matrix(axis_angle) -> np.ndarray:
    """Rodrigues: rotation vectors (axis × angle in radians, FLAME's pose convention) → rotation matrices
    R = I + sin θ K + (1 − cos θ) K² (a Taylor series below θ = 1e-4).  [..., 3] → [..., 3, 3] float64"""
    v = np.asarray(axis_angle, np.float64)
    theta = np.linalg.norm(v, axis=-1)[..., None, None]                              # [..., 1, 1]
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    zero = np.zeros_like(x)
    k = np.stack([np.stack([zero, -z, y], -1), np.stack([z, zero, -x], -1), np.stack([-y, x, zero], -1)], -2)
    small = theta < 1e-4
    safe = np.where(small, 1.0, theta)
    sin_term = np.where(small, 1.0 - theta ** 2 / 6.0, np.sin(safe) / safe)          # sin θ / θ
    cos_term = np.where(small, 0.5 - theta ** 2 / 24.0, (1.0 - np.cos(safe)) / safe ** 2)   # (1 − cos θ) / θ²
    return np.eye(3) + sin_term * k + cos_term * (k @ k)


def _matrix_as_6d(m: np.ndarray) -> np.ndarray:
    """The code's 6D convention: a matrix's first two rows.  [..., 3, 3] → [..., 6]"""
    return m[..., :2, :].reshape(m.shape[:-2] + (6,))


def _as_given(v: np.ndarray) -> np.ndarray:
    return v


ROTATION_FORMS = {        # trailing shape of one rotation → its 6D code
    (3,): lambda v: _matrix_as_6d(axis_angle_to_matrix(v)),
    (6,): _as_given,      # raw 6D, not orthonormalised (the model consumes tracked values as they are)
    (3, 3): _matrix_as_6d,
}


def _part(value, name: str, lead: tuple, convert, expected: str, frames: int | None,
          frames_from: str) -> tuple[np.ndarray, int]:
    """One named part [T, *lead, *trailing] → (its code values [T, n] float64, T). ``convert(trailing shape)``
    gives the conversion to code values, or None for a shape it does not take; ``frames`` is T so far (from
    ``frames_from``), or None."""
    if type(value).__module__.startswith("torch"):
        value = value.detach().cpu().numpy()
    a = np.asarray(value)
    if a.dtype.kind not in "fiu":
        raise ExpressionInputError(name, f"has dtype {a.dtype}", "real numbers")
    to_code = convert(a.shape[1 + len(lead):]) if a.shape[1:1 + len(lead)] == lead else None
    if a.ndim < 2 or to_code is None:
        raise ExpressionInputError(name, f"has shape {list(a.shape)}", expected)
    if frames is not None and a.shape[0] != frames:
        raise ExpressionInputError(name, f"has {a.shape[0]} frames", f"{frames}, as {frames_from}")
    if a.shape[0] == 0:
        raise ExpressionInputError(name, "has 0 frames", "T ≥ 1")
    with np.errstate(over="ignore", invalid="ignore"):
        values = to_code(a.astype(np.float64)).reshape(a.shape[0], -1)
        if not np.isfinite(values.astype(np.float32)).all():
            raise ExpressionInputError(name, "has NaN/inf (or values beyond float32)", "finite values")
    return values, a.shape[0]


def _vector(size_ok):
    """convert() for a plain vector part whose length passes ``size_ok``."""
    return lambda shape: _as_given if len(shape) == 1 and size_ok(shape[0]) else None


def compose_expression(expression=None, *, eyes=None, eyelids=None, neck=None, jaw=None, head_rotation=None,
                       head_translation=None, frames: int | None = None) -> np.ndarray:
    """A FLAME tracker's per-frame parameters → expression codes [T, 135] float32 (SPEC §14); parts not given
    stay neutral (zeros, identity rotations). Every part has a leading frame axis T, the same for all.

    expression: [T, K] FLAME expression coefficients, K ≤ 100 (fewer are zero-padded: FLAME's basis is ordered).
    eyes: [T, 2, R] (left, right); neck, jaw, head_rotation: [T, R], where a rotation R is an axis-angle vector
    [3] (radians, FLAME's pose convention), a 6D code [6] (the first two matrix rows; kept as given) or a
    matrix [3, 3]. eyelids: [T, 2] blendshape weights. head_translation: [T, 3].
    frames: T when no part is given (→ neutral codes), else a check.

    Tracked Pixel3DMM codes (the NeRSemble sequences) hold raw, un-orthonormalised 6D values, which the model
    consumes as they are: ``compose_expression(**expression_parts(codes))`` gives them back bit for bit, while
    a rotation passed as a matrix or axis-angle gives orthonormal rows, as the official live (SHeaP) path does.
    """
    rotation = "R = [3] axis-angle, [6] 6D or [3, 3] matrix"
    parts = [   # (value, argument, lead axes, convert, expected, slot in the code)
        (expression, "expression", (), _vector(lambda k: 1 <= k <= 100), "[T, K] with 1 ≤ K ≤ 100",
         EXPRESSION_COEFFICIENTS),
        (eyes, "eyes", (2,), ROTATION_FORMS.get, f"[T, 2, R] (left, right), {rotation}", EYES),
        (eyelids, "eyelids", (), _vector(lambda k: k == 2), "[T, 2]", EYELIDS),
        (neck, "neck", (), ROTATION_FORMS.get, f"[T, R], {rotation}", NECK),
        (jaw, "jaw", (), ROTATION_FORMS.get, f"[T, R], {rotation}", JAW),
        (head_rotation, "head_rotation", (), ROTATION_FORMS.get, f"[T, R], {rotation}", HEAD_ROTATION),
        (head_translation, "head_translation", (), _vector(lambda k: k == 3), "[T, 3]", HEAD_TRANSLATION),
    ]
    if frames is not None and (not isinstance(frames, (int, np.integer)) or frames < 1):
        raise ExpressionInputError("frames", f"is {frames!r}", "an int ≥ 1")
    given, frames_from = [], "frames="
    for value, name, lead, convert, expected, slot in parts:
        if value is not None:
            values, frames = _part(value, name, lead, convert, expected, frames, frames_from)
            given.append((slot, values))
            frames_from = name
    codes = neutral_expression(1 if frames is None else int(frames))
    for slot, values in given:
        codes[:, slot.start:slot.start + values.shape[1]] = values
    return codes


def expression_parts(codes) -> dict[str, np.ndarray]:
    """Expression codes [T, 135] → their parts, raw as stored (float32; rotations as 6D codes), under the names
    ``compose_expression`` takes: expression [T, 100], eyes [T, 2, 6], eyelids [T, 2], neck, jaw,
    head_rotation [T, 6], head_translation [T, 3]. For editing a sequence, e.g. zeroing the head motion:
    ``compose_expression(**{**expression_parts(codes), "head_rotation": None, "head_translation": None})``."""
    c = as_expressions(codes, "codes")
    return {"expression": c[:, EXPRESSION_COEFFICIENTS].copy(), "eyes": c[:, EYES].reshape(-1, 2, 6),
            "eyelids": c[:, EYELIDS].copy(), "neck": c[:, NECK].copy(), "jaw": c[:, JAW].copy(),
            "head_rotation": c[:, HEAD_ROTATION].copy(), "head_translation": c[:, HEAD_TRANSLATION].copy()}


# ---- the rigid head pose ------------------------------------------------------------------------------

def rot6d_to_matrix(r6: np.ndarray) -> np.ndarray:
    """Gram–Schmidt of the two raw rows; the matrix *rows* are (b1, b2, b1 × b2).  [..., 6] → [..., 3, 3]"""
    r6 = np.asarray(r6, np.float64)
    b1 = r6[..., 0:3] / np.linalg.norm(r6[..., 0:3], axis=-1, keepdims=True)
    a2 = r6[..., 3:6]
    b2 = a2 - (b1 * a2).sum(-1, keepdims=True) * b1
    b2 = b2 / np.linalg.norm(b2, axis=-1, keepdims=True)
    return np.stack([b1, b2, np.cross(b1, b2)], axis=-2)


MIN_ROT6D_NORM = 1e-6      # a 6D rotation's first vector, and its second's part orthogonal to it (cpp/runtime too)


def head_pose(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The GUI's rigid pose of each code: rotation [T, 3, 3] and translation [T, 3] (float64).
    Raises ExpressionInputError when a head rotation (code[126:132]) is no 6D rotation (e.g. all zeros) or the
    pose holds NaN/inf (the same rule as cpp/runtime/head_pose.cpp)."""
    codes = np.asarray(codes, np.float64)
    r6 = codes[..., HEAD_ROTATION]
    a1, a2 = r6[..., 0:3], r6[..., 3:6]
    n1 = np.linalg.norm(a1, axis=-1)
    ortho = a2 - (a1 * a2).sum(-1, keepdims=True) * a1 / np.maximum(n1, MIN_ROT6D_NORM)[..., None] ** 2
    finite = np.isfinite(codes[..., HEAD_ROTATION.start:HEAD_TRANSLATION.stop]).all(-1)
    bad = ~finite | ~(n1 >= MIN_ROT6D_NORM) | ~(np.linalg.norm(ortho, axis=-1) >= MIN_ROT6D_NORM)
    if bad.any():
        frames = np.flatnonzero(bad.reshape(-1))
        raise ExpressionInputError("expressions", f"frame {int(frames[0])} (of {len(frames)} such frames) has the head "
                                   f"rotation code[126:132] = {np.round(r6.reshape(-1, 6)[frames[0]], 6).tolist()}",
                                   "a finite 6D rotation (two non-parallel 3-vectors, e.g. 1 0 0 0 1 0 for none) and "
                                   "translation to apply the head pose; without apply_head_pose they are not used")
    return rot6d_to_matrix(r6), codes[..., HEAD_TRANSLATION]


def head_pose_matrix(codes: np.ndarray) -> np.ndarray:
    """The GUI's rigid pose of each code as head-to-world transforms [T, 4, 4] (float64): x' = R x + t."""
    rot, trans = head_pose(codes)
    m = np.zeros(rot.shape[:-2] + (4, 4))
    m[..., :3, :3], m[..., :3, 3], m[..., 3, 3] = rot, trans, 1.0
    return m


def quaternion_from_matrix(rot: np.ndarray) -> np.ndarray:
    """Rotation matrices → unit quaternions (w, x, y, z) with w ≥ 0 (Shepperd: largest pivot, stable).
    [..., 3, 3] → [..., 4]"""
    m = np.asarray(rot, np.float64)
    xx, yy, zz = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    s_x, s_y, s_z = m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]   # 4w·x, ..
    xy, xz, yz = m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1]      # 4xy, ..
    # four candidate solutions (each 4·q_k·q for one component k), well conditioned when the pivot 4q_k² is large
    pivots = np.stack([1 + xx + yy + zz, 1 + xx - yy - zz, 1 - xx + yy - zz, 1 - xx - yy + zz], -1)
    candidates = np.stack([np.stack([pivots[..., 0], s_x, s_y, s_z], -1),
                           np.stack([s_x, pivots[..., 1], xy, xz], -1),
                           np.stack([s_y, xy, pivots[..., 2], yz], -1),
                           np.stack([s_z, xz, yz, pivots[..., 3]], -1)], -2)           # [..., 4 candidates, 4]
    best = np.argmax(pivots, axis=-1)[..., None, None]
    q = np.take_along_axis(candidates, np.broadcast_to(best, best.shape[:-1] + (4,)), axis=-2)[..., 0, :]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


def quaternion_multiply(a, b, stack):
    """Hamilton product a ⊗ b of (w, x, y, z) quaternions; numpy or torch (``stack`` = np.stack / torch.stack)."""
    aw, ax, ay, az = a[..., 0], a[..., 1], a[..., 2], a[..., 3]
    bw, bx, by, bz = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return stack([aw * bw - ax * bx - ay * by - az * bz,
                  aw * bx + ax * bw + ay * bz - az * by,
                  aw * by - ax * bz + ay * bw + az * bx,
                  aw * bz + ax * by - ay * bx + az * bw], -1)
