"""Cameras of the runtime, in numpy (no torch): the model's conventions, the official demo's defaults.

A ``Camera`` holds cam2world ``[4, 4]`` or ``[T, 4, 4]`` (OpenCV axes: +x right, +y down, +z forward,
canonical FLAME head frame, metres) and *normalised* intrinsics ``[3, 3]`` or ``[T, 3, 3]`` (pixel K's
first two rows divided by the image width / height), so one camera works at any render size.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CameraInputError

DEMO_FOCAL_PX = 1500.0          # official demo: fx = fy = 1500 px at 512², c = 256
DEMO_SIZE = 512
MAX_NORMALISED_FOCAL = 50.0     # above this the intrinsics are almost certainly in pixels
RIGID_TOLERANCE = 1e-3
DEFAULT_EYE_DISTANCE = 0.063    # metres between the eyes (stereo_camera): an adult's average


@dataclass(frozen=True)
class Camera:
    """One camera ([4, 4] / [3, 3]), one per frame ([T, 4, 4] / [T, 3, 3]), or a rig of V cameras per frame
    ([T, V, 4, 4], with intrinsics [3, 3], one per view [V, 3, 3] or [T, V, 3, 3]; for ``multiview`` renders). A rig
    count of 1 on either side is shared by the other's T rigs (a fixed rig zooming: cam2world [1, V, 4, 4] with
    intrinsics [T, V, 3, 3])."""
    cam2world: np.ndarray
    intrinsics: np.ndarray

    def __post_init__(self):
        c2w = _float32(self.cam2world, "camera.cam2world")
        k = _float32(self.intrinsics, "camera.intrinsics")
        if c2w.shape[-2:] != (4, 4) or c2w.ndim not in (2, 3, 4):
            raise CameraInputError("camera.cam2world", f"has shape {list(c2w.shape)}",
                                   "[4, 4], [T, 4, 4] or a rig per frame [T, V, 4, 4]")
        rig = c2w.ndim == 4
        if k.shape[-2:] != (3, 3) or k.ndim not in ((2, 3, 4) if rig else (2, 3)):
            raise CameraInputError("camera.intrinsics", f"has shape {list(k.shape)}",
                                   "[3, 3], [V, 3, 3] or [T, V, 3, 3] for cam2world [T, V, 4, 4]" if rig
                                   else "[3, 3] or [T, 3, 3]")
        rigs_agree = k.ndim != 4 or k.shape[0] == c2w.shape[0] or 1 in (k.shape[0], c2w.shape[0])
        if rig and ((k.ndim == 3 and k.shape[0] != c2w.shape[1])
                    or (k.ndim == 4 and (k.shape[1] != c2w.shape[1] or not rigs_agree))):
            raise CameraInputError("camera.intrinsics", f"has shape {list(k.shape)} for cam2world "
                                   f"{list(c2w.shape)}", f"[3, 3], [{c2w.shape[1]}, 3, 3] (one per view) or "
                                   f"[T, {c2w.shape[1]}, 3, 3] with T = {c2w.shape[0]} or 1 (or cam2world's T = 1)")
        for name, m in (("camera.cam2world", c2w), ("camera.intrinsics", k)):
            if m.size == 0:
                raise CameraInputError(name, f"has shape {list(m.shape)} (no cameras)", "T ≥ 1 cameras")
        check_cam2world(c2w, "camera.cam2world")
        check_normalised_intrinsics(k, "camera.intrinsics")
        object.__setattr__(self, "cam2world", c2w)
        object.__setattr__(self, "intrinsics", k)

    @property
    def views(self) -> int:
        """V for a rig per frame ([T, V, 4, 4]), else 0."""
        return self.cam2world.shape[1] if self.cam2world.ndim == 4 else 0

    def __len__(self) -> int:
        """Number of distinct cameras (1 for a single camera shared by all frames); of rigs, for a rig camera."""
        if self.views:
            return max(self.cam2world.shape[0], self.intrinsics.shape[0] if self.intrinsics.ndim == 4 else 1)
        return max(_count(self.cam2world), _count(self.intrinsics))

    def for_frames(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(cam2world [n, 4, 4], intrinsics [n, 3, 3]): a single camera broadcast, or exactly n cameras."""
        if self.views:
            raise CameraInputError("camera", f"holds a rig of {self.views} views per frame (cam2world "
                                   f"{list(self.cam2world.shape)})", "multiview=True to render every view, or one "
                                   "camera a frame")
        out = []
        for name, m in (("cam2world", self.cam2world), ("intrinsics", self.intrinsics)):
            if m.ndim == 3 and m.shape[0] != 1 and m.shape[0] != n:
                raise CameraInputError(f"camera.{name}", f"holds {m.shape[0]} cameras for {n} frames",
                                       f"one camera or one per frame ({n})")
            m = m if m.ndim == 3 else m[None]
            out.append(m if m.shape[0] == n else np.broadcast_to(m, (n,) + m.shape[-2:]))   # (broadcast_to: ~10 µs)
        return out[0], out[1]

    def as_rigs(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(cam2world [n, V, 4, 4], intrinsics [n, V, 3, 3]) for n frames each seen by V cameras: a rig camera's
        rigs (one, or one per frame), or all of a camera's V cameras as one rig shared by every frame."""
        if not self.views:
            c2w, k = self.for_frames(len(self))                              # [V, 4, 4], [V, 3, 3]
            return np.broadcast_to(c2w, (n,) + c2w.shape), np.broadcast_to(k, (n,) + k.shape)
        t, v = len(self), self.views
        if t not in (1, n):
            raise CameraInputError("camera", f"holds {t} rigs for {n} frames", f"one rig or one per frame ({n})")
        # [3, 3], [V, 3, 3], [1 or n, V, 3, 3] intrinsics and [1 or n, V, 4, 4] cam2world all broadcast to n rigs
        return np.broadcast_to(self.cam2world, (n, v, 4, 4)), np.broadcast_to(self.intrinsics, (n, v, 3, 3))


def _count(m: np.ndarray) -> int:
    return 1 if m.ndim == 2 else m.shape[0]


def _float32(x, name: str) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        x = x.detach().cpu().numpy()
    try:
        a = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError):
        raise CameraInputError(name, f"is a {type(x).__name__}", "a numeric array") from None
    if not np.isfinite(a).all():
        raise CameraInputError(name, "contains NaN or inf", "finite values")
    return a


def check_cam2world(c2w: np.ndarray, name: str) -> None:
    rot = c2w[..., :3, :3].astype(np.float64)
    ortho = np.abs(rot @ np.swapaxes(rot, -1, -2) - np.eye(3)).max()
    last = np.abs(c2w[..., 3, :].astype(np.float64) - np.array([0, 0, 0, 1.0])).max()
    if ortho > RIGID_TOLERANCE or last > 1e-6:
        raise CameraInputError(name, f"is not rigid (max |R Rᵀ − I| = {ortho:.2g}, last row off by {last:.2g})",
                               "rigid 4x4 cam2world matrices (orthonormal rotation, last row [0, 0, 0, 1])")
    det = np.linalg.det(rot)
    if (det < 0).any():     # a mirrored axis, e.g. an OpenGL camera (+y up, −z forward) with one axis flipped
        raise CameraInputError(name, f"mirrors the image (det R = {float(det.min()):.3g} in "
                               f"{int((det < 0).sum())} cameras)", "a rotation (det R = +1) in OpenCV axes: +x "
                               "right, +y down, +z forward (from OpenGL axes, negate the y and z columns)")


def check_normalised_intrinsics(k: np.ndarray, name: str) -> None:
    fx, fy = k[..., 0, 0], k[..., 1, 1]
    if (fx <= 0).any() or (fy <= 0).any():
        raise CameraInputError(name, "has fx or fy ≤ 0", "positive focal lengths")
    if (fx > MAX_NORMALISED_FOCAL).any() or (np.abs(k[..., :2, 2]) > 10).any():
        raise CameraInputError(name, f"looks like pixel units (fx up to {float(fx.max()):.4g})",
                               "normalised intrinsics: divide K's first row by the width and the second by the height")


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """OpenCV cam2world looking from eye to target.  eye/target/up: [..., 3] → [..., 4, 4]"""
    eye, target = np.asarray(eye, np.float64), np.asarray(target, np.float64)
    up = np.broadcast_to(np.asarray(up, np.float64), eye.shape)
    z = _normalise(target - eye)
    x = _normalise(np.cross(z, up))
    y = -_normalise(np.cross(x, z))
    m = np.zeros(eye.shape[:-1] + (4, 4))
    m[..., :3, 0], m[..., :3, 1], m[..., :3, 2], m[..., :3, 3] = x, y, z, eye
    m[..., 3, 3] = 1
    return m.astype(np.float32)


def _normalise(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def demo_intrinsics(aspect: float = 1.0, focal: float = DEMO_FOCAL_PX / DEMO_SIZE) -> np.ndarray:
    """The official demo's intrinsics, normalised: fx = fy = 1500/512 (``focal``), c = 0.5, for a square image.
    aspect = width / height of another image shape: square pixels, the focal length scaled to the shorter side
    (the head as large as in the square render, more background on the longer side).  → [3, 3]"""
    if not (isinstance(aspect, (int, float)) and math.isfinite(aspect) and aspect > 0):
        raise CameraInputError("aspect", f"is {aspect!r}", "width / height, a positive number")
    fx, fy = focal / max(aspect, 1.0), focal * min(aspect, 1.0)      # pixels: fx·W = fy·H = focal·min(W, H)
    return np.array([[fx, 0, 0.5], [0, fy, 0.5], [0, 0, 1]], np.float32)


def default_camera(aspect: float = 1.0) -> Camera:
    """The official demo's frontal camera: 1 m in front of the head looking at the origin, up = +y (``aspect``:
    width / height of the render, see ``demo_intrinsics``)."""
    return Camera(look_at(np.array([0.0, 0, 1]), np.zeros(3), np.array([0.0, 1, 0])), demo_intrinsics(aspect))


def orbit_camera(n: int, radius: float = 0.3, distance: float = 1.0, intrinsics: np.ndarray | None = None,
                 aspect: float = 1.0) -> Camera:
    """The demo's frontal trajectory: eyes on a circle of ``radius`` in the plane z = ``distance``, looking
    at the origin, first pose at (0, radius, distance), one full turn over n frames (intrinsics: default
    ``demo_intrinsics(aspect)``)."""
    if not isinstance(n, int) or n < 1:
        raise CameraInputError("n", f"is {n!r}", "a positive number of frames")
    t = np.arange(n) * (2 * math.pi / n)
    eye = np.stack([radius * np.sin(t), radius * np.cos(t), np.full(n, distance)], -1)     # [n, 3]
    c2w = look_at(eye, np.zeros_like(eye), np.array([0.0, 1, 0]))
    return Camera(c2w, demo_intrinsics(aspect) if intrinsics is None else intrinsics)


def stereo_camera(camera: Camera | None = None, eye_distance: float = DEFAULT_EYE_DISTANCE) -> Camera:
    """The left and right eyes of a camera (default: the demo camera), or of each of a sequence's cameras, for
    ``Runtime.render(..., multiview=True)`` → a rig camera [T, 2] ([left, right]): the same orientation and
    intrinsics, the centres ``eye_distance`` metres apart along each camera's own x axis (default 63 mm, an adult's
    average). A headset gives its own per-eye poses and projections: pass those as a rig instead."""
    camera = as_camera(camera)
    if camera.views:
        raise CameraInputError("camera", f"is a rig of {camera.views} views per frame", "one camera, or one per frame "
                               "(the point between the eyes)")
    if not (isinstance(eye_distance, numbers.Real) and math.isfinite(eye_distance) and eye_distance >= 0):
        raise CameraInputError("eye_distance", f"is {eye_distance!r}", "metres between the eyes, ≥ 0")
    c2w, k = camera.for_frames(len(camera))                                            # [T, 4, 4], [T, 3, 3]
    eyes = np.repeat(c2w[:, None].astype(np.float64), 2, axis=1)                       # [T, 2, 4, 4]
    half = np.array([-0.5, 0.5])[None, :, None] * eye_distance                         # ∓ half along the camera's x
    eyes[:, :, :3, 3] += half * c2w[:, None, :3, 0]
    intrinsics = camera.intrinsics if camera.intrinsics.ndim == 2 else np.repeat(k[:, None], 2, axis=1)
    return Camera(eyes.astype(np.float32), intrinsics)


def _npz_cameras(path: str | Path, argument: str, expected: str, leading: tuple) -> Camera:
    """``cam2world`` [*leading, 4, 4] and ``intrinsics`` [*leading, 3, 3] of an ``.npz``; leading () or (None,) (any
    one length, the same for both)."""
    path = Path(path)
    if path.suffix.lower() != ".npz" or not path.is_file():
        raise CameraInputError(argument, f"{path} is not an .npz file", expected)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("cam2world", "intrinsics") if k not in data.files]
            if missing:
                raise CameraInputError(argument, f"{path.name} has no {' / '.join(missing)} (keys: "
                                       f"{sorted(data.files)})", expected)
            c2w, k = data["cam2world"], data["intrinsics"]
    except (OSError, ValueError) as e:
        raise CameraInputError(argument, f"cannot read {path} ({e})", expected) from None
    lead = len(leading)
    if (c2w.shape[lead:], k.shape[lead:]) != ((4, 4), (3, 3)) or c2w.ndim != lead + 2 or k.ndim != lead + 2 \
            or c2w.shape[:lead] != k.shape[:lead]:
        raise CameraInputError(argument, f"{path.name} holds cam2world {list(c2w.shape)} and intrinsics "
                               f"{list(k.shape)}", expected)
    return Camera(c2w, k)


def sequence_cameras(path: str | Path) -> Camera:
    """The tracked camera of every frame of a tracked ``.npz`` sequence (``cam2world`` [T, 4, 4] in the canonical
    head frame and normalised ``intrinsics`` [T, 3, 3], the layout of ``../shared/fixtures/driving/``). Rendering
    the decoded (unposed) Gaussians from them shows the head as the tracked video saw it, head motion included
    (the head's motion is in the cameras: cam2world = head_pose⁻¹ · the fixed tracking camera)."""
    return _npz_cameras(path, "sequence", "a tracked .npz sequence with cam2world [T, 4, 4] and intrinsics "
                        "[T, 3, 3]", (None,))


def photo_camera(path: str | Path) -> Camera:
    """The input camera of an in-the-wild example ``.npz`` (``cam2world`` [4, 4] in the canonical head frame and
    normalised ``intrinsics`` [3, 3] of its model-input crop ``image``; the layout of ``../shared/fixtures/driving/``
    einstein.npz and the others): encoding the crop with it, as the official pipeline does, rather than with the demo's
    frontal camera, gives the avatar the geometry the photo was taken with."""
    return _npz_cameras(path, "photo camera", "an in-the-wild example .npz with cam2world [4, 4] and intrinsics "
                        "[3, 3] (its photo's camera)", ())


def as_camera(camera, aspect: float = 1.0) -> Camera:
    """None → the demo camera (for a width / height = ``aspect`` render); a Camera; or a (cam2world, intrinsics)
    pair."""
    if camera is None:
        return default_camera(aspect)
    if isinstance(camera, Camera):
        return camera
    if isinstance(camera, (tuple, list)) and len(camera) == 2:
        return Camera(camera[0], camera[1])
    raise CameraInputError("camera", f"is a {type(camera).__name__}",
                           "None (demo camera), a flexavatar.runtime.Camera or a (cam2world, intrinsics) pair")


def world2cam(cam2world: np.ndarray) -> np.ndarray:
    """Rigid inverse [R | t]⁻¹ = [Rᵀ | −Rᵀ t].  [..., 4, 4] → [..., 4, 4]"""
    rot_t = np.swapaxes(cam2world[..., :3, :3], -1, -2)
    out = np.zeros_like(cam2world)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -(rot_t @ cam2world[..., :3, 3:])[..., 0]
    out[..., 3, 3] = 1
    return out


def pixel_intrinsics(k: np.ndarray, width: int, height: int) -> np.ndarray:
    """Normalised → pixel intrinsics for a width × height image: the first row × width, the second × height (so
    fx = fy gives square pixels on a square image only; ``demo_intrinsics(aspect)`` for other shapes).
    [..., 3, 3]"""
    return (k * np.array([[width], [height], [1.0]], np.float32)).astype(np.float32)
