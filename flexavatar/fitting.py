"""Avatar fitting ("inversion", SPEC §15): few-shot and video avatars, identity interpolation.

    from flexavatar.fitting import Observations, fit
    obs = Observations.from_folder("scan/")           # frames + cameras.json (see load_observations)
    result = fit(model, obs, steps=200)               # encoder on the first image, then optimisation
    result.code.save("avatar_code_me.npy")            # official (R², 1, D) layout

What is optimised: the avatar code (init = the encoder's output for the *first* image, or zeros with
``from_scratch=True``, or ``init_code=``) and one additive 135-d expression-code offset per
observation (init 0). Network weights are frozen. Adam (default betas), lr 1e-2 cosine-annealed to
5e-4 over the steps; every step renders one random observation (seeded) at its own camera and
resolution on white with dataset id 1, and minimises 0.8·L1 + 0.2·(1 − SSIM) (3DGS SSIM) plus, when
a DINOv2 module is available, 1.0 × a DINOv2 patch-feature loss. The official objective also has a
SAM-feature loss and its own DINOv2 loss; neither module was released, so the SAM term is absent
and the DINOv2 term is our stand-in (``losses.dino_feature_loss``).

Rendering uses ``flexavatar.kernels.rasterize`` with ``backend="auto"``, which picks the fastest
*differentiable* backend for the device: ``cuda`` (native, with backward), then ``triton``, then the
PyTorch ``reference`` (the only one on a CPU).
"""
from __future__ import annotations

import contextlib
import json
import math
import numbers
import operator
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from . import kernels
from .errors import FlexAvatarError, InputError
from .expression import EXPRESSION_CODE_DIM
from .images import ImageModeError, pil_to_array
from .losses import dino_feature_loss, photometric_loss, psnr
from .model import MULTI_VIEW_DATASET_ID, AvatarCode, FlexAvatarModel

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
METADATA_NAMES = ("observations.json", "cameras.json", "observations.npz", "cameras.npz")
MIN_IMAGE_SIZE = 11            # the SSIM window
MAX_NORMALISED_FOCAL = 50.0    # larger fx "looks like pixels" (as in FlexAvatarModel.encode)


# ---- errors -------------------------------------------------------------------------------------

class FittingError(FlexAvatarError):
    """Base class of the fitting errors."""


class ObservationError(FittingError, InputError):
    """Observations are invalid. ``argument`` names the field, ``problem`` what was wrong, ``expected``
    what was expected. Raised before any optimisation step."""

    def __init__(self, argument: str, problem: str, expected: str):
        self.argument, self.problem, self.expected = argument, problem, expected
        super().__init__(f"{argument}: {problem}; expected {expected}")


class ObservationCountError(ObservationError):
    """The numbers of images, cameras and expression codes differ (or there are none)."""


class MissingCameraError(ObservationError):
    """An observation has no camera (cam2world or intrinsics)."""


class ImageSizeError(ObservationError):
    """Images of different sizes, too small, or not square where the encoder needs a square photo."""


class ObservationShapeError(ObservationError):
    """Wrong rank or channel count (e.g. RGBA tensors instead of RGB matted on white)."""


class NonFiniteObservationError(ObservationError):
    """NaN or inf in images, cameras or expression codes."""


class ObservationValueError(ObservationError):
    """Finite but out of domain: pixels outside [0, 1], non-rigid cam2world, pixel-unit intrinsics."""


class ObservationFileError(ObservationError):
    """The observation folder, its metadata file or an image file is missing or unreadable."""


class FitArgumentError(FittingError, ValueError):
    """An argument of ``fit`` / ``interpolate`` is invalid (steps, init code shape, t, missing DINOv2)."""


# ---- observations -------------------------------------------------------------------------------

@dataclass
class Observations:
    """V posed photos of one person, matted on white.

    images:      [V, 3, H, W] float RGB in [0, 1] (one resolution for all)
    cam2world:   [V, 4, 4] OpenCV axes, canonical head frame (rigid)
    intrinsics:  [V, 3, 3] normalised: row 0 divided by W, row 1 by H (fx ≈ 2.93 for the demo camera)
    expressions: [V, 135] FLEX expression codes (SPEC §14)
    names:       optional labels (file names) used in messages
    """
    images: torch.Tensor
    cam2world: torch.Tensor
    intrinsics: torch.Tensor
    expressions: torch.Tensor
    names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        self.images = _as_float_tensor(self.images, "images")
        self.cam2world = _as_float_tensor(self.cam2world, "cam2world", MissingCameraError)
        self.intrinsics = _as_float_tensor(self.intrinsics, "intrinsics", MissingCameraError)
        self.expressions = _as_float_tensor(self.expressions, "expressions")
        self.names = tuple(self.names)
        _check_observations(self)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def height(self) -> int:
        return self.images.shape[2]

    @property
    def width(self) -> int:
        return self.images.shape[3]

    def name(self, index: int) -> str:
        return self.names[index] if self.names else f"observation {index}"

    def to(self, device=None, dtype=torch.float32) -> "Observations":
        move = lambda x: x.to(device=device, dtype=dtype)  # noqa: E731
        return replace(self, images=move(self.images), cam2world=move(self.cam2world),
                       intrinsics=move(self.intrinsics), expressions=move(self.expressions))

    def pixel_intrinsics(self) -> torch.Tensor:
        """[V, 3, 3] intrinsics in pixels of this resolution (the renderer's K)."""
        return kernels.pixel_intrinsics(self.intrinsics, self.width, self.height)

    @classmethod
    def from_folder(cls, path: str | Path) -> "Observations":
        return load_observations(path)


def _as_float_tensor(x, argument: str, missing_error=ObservationShapeError) -> torch.Tensor:
    if x is None:
        raise missing_error(argument, "is missing (None)", "a tensor with one entry per observation")
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise ObservationShapeError(argument, f"is a {type(x).__name__}", "a torch.Tensor or numpy array")
    if not x.is_floating_point():
        raise ObservationValueError(argument, f"has dtype {x.dtype}",
                                    "floating point (divide uint8 images by 255)")
    return x


def _check_observations(obs: Observations) -> None:
    images, c2w, k, expr = obs.images, obs.cam2world, obs.intrinsics, obs.expressions
    if images.ndim != 4 or images.shape[1] != 3:
        raise ObservationShapeError("images", f"has shape {tuple(images.shape)}",
                                    "[V, 3, H, W] RGB matted on white (composite RGBA over white first)")
    v, _, h, w = images.shape
    if v == 0:
        raise ObservationCountError("images", "holds no observation", "at least one image")
    if min(h, w) < MIN_IMAGE_SIZE:
        raise ImageSizeError("images", f"are {h}×{w} pixels", f"at least {MIN_IMAGE_SIZE}×{MIN_IMAGE_SIZE} "
                             "(the SSIM window)")
    for argument, x, tail in (("cam2world", c2w, (4, 4)), ("intrinsics", k, (3, 3)),
                              ("expressions", expr, (EXPRESSION_CODE_DIM,))):
        if tuple(x.shape[1:]) != tail or x.ndim != 1 + len(tail):
            raise ObservationShapeError(argument, f"has shape {tuple(x.shape)}",
                                        f"[V, {', '.join(map(str, tail))}]")
    counts = {"images": v, "cam2world": c2w.shape[0], "intrinsics": k.shape[0], "expressions": expr.shape[0]}
    if obs.names:
        counts["names"] = len(obs.names)
    if len(set(counts.values())) != 1:
        problem = ", ".join(f"{n} {c}" for n, c in counts.items())
        culprit = next(n for n, c in counts.items() if c != v)
        error = MissingCameraError if culprit in ("cam2world", "intrinsics") and counts[culprit] < v \
            else ObservationCountError
        raise error(culprit, f"counts differ ({problem})", f"one entry per image ({v})")
    for argument, x in (("images", images), ("cam2world", c2w), ("intrinsics", k), ("expressions", expr)):
        bad = ~torch.isfinite(x)
        if bad.any():
            first = int(bad.reshape(v, -1).any(1).nonzero()[0, 0])
            raise NonFiniteObservationError(argument, f"{int(bad.sum())} NaN/inf values (first in "
                                            f"{obs.name(first)})", "finite values")
    lo, hi = images.min().item(), images.max().item()
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ObservationValueError("images", f"values lie in [{lo:.4g}, {hi:.4g}]",
                                    "RGB in [0, 1] matted on white (divide uint8 by 255)")
    rot = c2w[:, :3, :3].double()
    ortho_err = (rot @ rot.transpose(-1, -2) - torch.eye(3, dtype=torch.float64, device=rot.device)).abs().amax((1, 2))
    row_err = (c2w[:, 3].double() - c2w.new_tensor([0, 0, 0, 1.0]).double()).abs().amax(1)
    bad_cam = (ortho_err > 1e-3) | (row_err > 1e-6) | (torch.linalg.det(rot) < 0)
    if bad_cam.any():
        i = int(bad_cam.nonzero()[0, 0])
        raise ObservationValueError("cam2world", f"{obs.name(i)} is not a rigid transform",
                                    "a rotation (orthonormal, det +1) and last row [0, 0, 0, 1]")
    fx, fy = k[:, 0, 0], k[:, 1, 1]
    if (fx <= 0).any() or (fy <= 0).any():
        i = int(((fx <= 0) | (fy <= 0)).nonzero()[0, 0])
        raise ObservationValueError("intrinsics", f"{obs.name(i)} has fx={fx[i].item():.4g}, "
                                    f"fy={fy[i].item():.4g}", "positive focal lengths")
    if (fx > MAX_NORMALISED_FOCAL).any() or (k[:, :2, 2].abs() > 10).any():
        raise ObservationValueError("intrinsics", f"fx up to {fx.max().item():.4g} looks like pixel units",
                                    f"normalised intrinsics: row 0 divided by the width ({w}), row 1 by the "
                                    f"height ({h})")


# ---- loading a folder ---------------------------------------------------------------------------

def load_observations(path: str | Path) -> Observations:
    """Frames in a folder plus their cameras and expression codes.

    ``path``: a folder holding one of ``observations.json``, ``cameras.json``, ``observations.npz``,
    ``cameras.npz`` (first found), or the metadata file itself; image paths are relative to its folder.

    JSON::

        {"intrinsics": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],     # optional default for every frame
         "cam2world": [[...4×4...]],                                # optional default for every frame
         "frames": [{"image": "000.png", "cam2world": [[...]], "intrinsics": [[...]],
                     "expression": [135 numbers]}, ...]}

    NPZ: ``cam2world`` [V, 4, 4] or [4, 4], ``intrinsics`` [V, 3, 3] or [3, 3], ``expressions`` [V, 135]
    and optionally ``images`` [V] file names (default: the folder's image files in sorted order).

    Intrinsics are normalised (row 0 / width, row 1 / height). RGBA images are composited over white;
    all images must have one size.
    """
    path = Path(path)
    if path.is_dir():
        meta = next((path / n for n in METADATA_NAMES if (path / n).is_file()), None)
        if meta is None:
            raise ObservationFileError(str(path), "holds no camera/expression file",
                                       f"one of {', '.join(METADATA_NAMES)} beside the frames")
    elif path.is_file():
        meta = path
    else:
        raise ObservationFileError(str(path), "does not exist", "a folder of frames or its metadata file")
    reader = _METADATA_READERS.get(meta.suffix.lower())
    if reader is None:
        raise ObservationFileError(str(meta), f"has suffix {meta.suffix!r}", "a .json or .npz file")
    files, cam2world, intrinsics, expressions = reader(meta)
    images = _read_images(meta.parent, files)
    as32 = lambda x: np.asarray(x, dtype=np.float32)  # noqa: E731
    return Observations(as32(images), as32(cam2world), as32(intrinsics), as32(expressions), names=tuple(files))


def _read_json_metadata(meta: Path):
    try:
        doc = json.loads(meta.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ObservationFileError(str(meta), f"cannot be read as JSON ({e})", "a JSON document") from None
    frames = doc.get("frames") if isinstance(doc, dict) else None
    if not isinstance(frames, list) or not frames:
        raise ObservationFileError(str(meta), "has no non-empty 'frames' list",
                                   '{"frames": [{"image": ..., "cam2world": ..., "intrinsics": ..., '
                                   '"expression": ...}, ...]}')
    files, c2ws, ks, exprs = [], [], [], []
    for i, frame in enumerate(frames):
        where = f"{meta.name} frames[{i}]"
        if not isinstance(frame, dict) or "image" not in frame:
            raise ObservationFileError(where, "has no 'image' entry", "the frame's image file name")
        files.append(str(frame["image"]))
        for key, out, shape, error in (("cam2world", c2ws, (4, 4), MissingCameraError),
                                       ("intrinsics", ks, (3, 3), MissingCameraError),
                                       ("expression", exprs, (EXPRESSION_CODE_DIM,), ObservationCountError)):
            value = frame.get(key, doc.get(key) if key != "expression" else None)
            if value is None:
                raise error(f"{where} ({frame['image']})", f"has no '{key}'",
                            f"a {'×'.join(map(str, shape))} array in the frame"
                            + (" or a default at the top level" if key != "expression" else ""))
            out.append(_json_array(value, shape, f"{where}.{key}"))
    return files, np.stack(c2ws), np.stack(ks), np.stack(exprs)


def _json_array(value, shape: tuple[int, ...], where: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ObservationShapeError(where, "is not a numeric array", f"shape {shape}") from None
    if array.shape != shape:
        raise ObservationShapeError(where, f"has shape {array.shape}", f"shape {shape}")
    return array


def _read_npz_metadata(meta: Path):
    try:
        with np.load(meta, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise ObservationFileError(str(meta), f"cannot be read as .npz ({e})",
                                   "an npz with cam2world, intrinsics, expressions (and images)") from None
    for key, error in (("cam2world", MissingCameraError), ("intrinsics", MissingCameraError),
                       ("expressions", ObservationCountError)):
        if key not in arrays:
            raise error(f"{meta.name}", f"has no array '{key}' (it has {sorted(arrays)})",
                        "cam2world [V, 4, 4], intrinsics [V, 3, 3], expressions [V, 135]")
    if "images" in arrays:
        files = [str(f) for f in arrays["images"].reshape(-1)]
    else:
        files = sorted(p.name for p in meta.parent.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    v = len(files)
    c2w, k = arrays["cam2world"], arrays["intrinsics"]
    c2w = np.broadcast_to(c2w, (v, 4, 4)) if c2w.shape == (4, 4) else c2w
    k = np.broadcast_to(k, (v, 3, 3)) if k.shape == (3, 3) else k
    return files, np.array(c2w), np.array(k), arrays["expressions"]


_METADATA_READERS: dict[str, Callable[[Path], tuple]] = {".json": _read_json_metadata, ".npz": _read_npz_metadata}


def _read_images(folder: Path, files: list[str]) -> np.ndarray:
    """→ [V, 3, H, W] float32 in [0, 1], RGBA composited over white, 16-bit grey at full depth."""
    from PIL import Image, UnidentifiedImageError

    if not files:
        raise ObservationCountError(str(folder), "holds no image files", f"frames with suffix {IMAGE_SUFFIXES}")
    images, size = [], None
    for name in files:
        file = folder / name
        if not file.is_file():
            raise ObservationFileError(str(file), "does not exist", "the frame's image file")
        try:
            with Image.open(file) as im:
                pixels = pil_to_array(im, str(file))     # uint8 [H, W, 3|4], or float [H, W, 3] (16-bit grey)
        except (OSError, UnidentifiedImageError) as e:
            raise ObservationFileError(str(file), f"cannot be decoded ({e})", "a PNG/JPEG image") from None
        except ImageModeError as e:
            raise ObservationFileError(e.argument, e.problem, e.expected) from None
        if size is None:
            size = pixels.shape[:2]
        elif pixels.shape[:2] != size:
            raise ImageSizeError(name, f"is {pixels.shape[1]}×{pixels.shape[0]} (W×H)",
                                 f"the size of {files[0]}, {size[1]}×{size[0]}: every frame one resolution")
        rgba = pixels.astype(np.float32) / 255.0 if pixels.dtype == np.uint8 else pixels
        rgb = rgba[..., :3]
        if rgba.shape[2] == 4:
            alpha = rgba[..., 3:]
            rgb = rgb * alpha + (1.0 - alpha)                                        # over white
        images.append(rgb.transpose(2, 0, 1))
    return np.stack(images)


# ---- rendering ----------------------------------------------------------------------------------

def render_code(model: FlexAvatarModel, tokens: torch.Tensor, expressions: torch.Tensor, cam2world: torch.Tensor,
                pixel_k: torch.Tensor, width: int, height: int, backend: str = "auto",
                dataset_id: int = MULTI_VIEW_DATASET_ID, check_values: bool = True) -> tuple[torch.Tensor, str]:
    """Differentiable render of one avatar code under N (expression, camera) pairs on white.

    tokens [R², 1, D], expressions [N, 135], cam2world [N, 4, 4], pixel_k [N, 3, 3]
    → (rgb [N, 3, H, W], rasterizer backend name)
    """
    n = expressions.shape[0]
    ids = torch.full((1,), dataset_id, dtype=torch.long, device=tokens.device)
    out = model.network.decode(tokens, expressions[None], ids)                        # [N, G, …]
    splats = kernels.Splats(out["positions"], out["rotations"], out["scales"], out["opacities"], out["colors"])
    cameras = kernels.Cameras(kernels.world2cam_from_cam2world(cam2world), pixel_k)
    white = torch.ones(n, 3, dtype=tokens.dtype, device=tokens.device)
    result = kernels.rasterize(splats, cameras, width, height, background=white, backend=backend,
                               check_values=check_values)
    return result.rgb.permute(0, 3, 1, 2), result.backend


@torch.no_grad()
def render_observations(model: FlexAvatarModel, code: AvatarCode | torch.Tensor, observations: Observations,
                        offsets: torch.Tensor | None = None, indices=None, backend: str = "auto") -> torch.Tensor:
    """Render ``code`` at the observations' cameras with their expression codes (+ ``offsets`` [V, 135]).

    → [K, 3, H, W] in the model's dtype for ``indices`` (default all, each in [0, V)), one view at a time
    (bounded memory).
    """
    tokens = _code_tokens(model, code)
    obs = observations.to(tokens.device, tokens.dtype)
    v = len(obs)
    indices = range(v) if indices is None else _check_indices(indices, v)
    if offsets is not None:
        if not isinstance(offsets, torch.Tensor) or tuple(offsets.shape) != (v, EXPRESSION_CODE_DIM):
            shape = tuple(offsets.shape) if isinstance(offsets, torch.Tensor) else type(offsets).__name__
            raise FitArgumentError(f"offsets must be a tensor [V, {EXPRESSION_CODE_DIM}] = [{v}, "
                                   f"{EXPRESSION_CODE_DIM}] (one per observation), got {shape}")
        offsets = offsets.to(tokens.device, tokens.dtype)
    k_pix = obs.pixel_intrinsics()
    renders = []
    for i in indices:
        expr = obs.expressions[i:i + 1] + (0 if offsets is None else offsets[i:i + 1])
        rgb, _ = render_code(model, tokens, expr, obs.cam2world[i:i + 1], k_pix[i:i + 1], obs.width,
                             obs.height, backend)
        renders.append(rgb)
    return torch.cat(renders)


def _check_indices(indices, v: int) -> list[int]:
    """Observation indices → ints in [0, v); anything else is a FitArgumentError."""
    try:
        indices = [operator.index(i) for i in indices]
    except TypeError:
        raise FitArgumentError(f"indices must be a sequence of ints, got {indices!r}") from None
    bad = [i for i in indices if not 0 <= i < v]
    if bad:
        raise FitArgumentError(f"indices {bad} out of range; expected observation indices in [0, {v})")
    if not indices:
        raise FitArgumentError("indices is empty; expected at least one observation index")
    return indices


# ---- fitting ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FitConfig:
    """Hyper-parameters of ``fit`` (defaults: SPEC §15)."""
    lr: float = 1e-2                 # Adam, default betas
    lr_min: float = 5e-4             # cosine annealing floor: CosineAnnealingLR's eta_min at T_max = steps, one
                                     # step past the last (step t = 0…steps−1 uses lr_min + (lr − lr_min)·
                                     # (1 + cos(π·t/steps))/2), so never used exactly
    l1_weight: float = 0.8
    ssim_weight: float = 0.2
    dino_weight: float = 1.0         # used only when a DINOv2 module is available; 0 turns it off
    dataset_id: int = MULTI_VIEW_DATASET_ID
    seed: int = 0                    # the per-step random choice of observation


@dataclass
class FitProgress:
    """Passed to the ``callback`` of ``fit`` after every step (step counts from 1)."""
    step: int
    steps: int
    loss: float
    psnr: float
    lr: float                        # the learning rate this step used
    observation: int                 # which observation this step rendered


@dataclass
class FitResult:
    code: AvatarCode                 # fitted avatar code [R², 1, D]
    expression_offsets: torch.Tensor  # [V, 135] added to the observations' expression codes
    initial_code: AvatarCode         # where the optimisation started
    losses: list[float]              # per step
    psnrs: list[float]               # per step, dB, of the rendered observation
    observation_indices: list[int]   # per step
    backend: str                     # rasterizer backend used
    seconds: float                   # wall time of the optimisation loop (after initialisation)
    dino_loss: bool                  # whether the DINOv2 feature loss was part of the objective

    def save(self, path: str | Path) -> None:
        """The fitted code in the official ``.npy`` layout (R², 1, D) float32."""
        self.code.save(path)


def fit(model: FlexAvatarModel, observations: Observations, steps: int = 200, *,
        init_code: AvatarCode | torch.Tensor | None = None, from_scratch: bool = False,
        features: torch.Tensor | None = None, dinov2: torch.nn.Module | None = None,
        config: FitConfig = FitConfig(), backend: str = "auto",
        callback: Callable[[FitProgress], None] | None = None) -> FitResult:
    """Fit an avatar code (and per-observation expression offsets) to posed photos (SPEC §15).

    Initial code, in order of precedence: ``init_code``; zeros if ``from_scratch``; else the encoder on
    the first observation (resized to the model's square input size), with DINOv2 ``features``
    [1, C, h, w] if given, else the model's DINOv2. ``dinov2``: module for the feature loss (default
    the model's). ``backend``: rasterizer backend ("auto": fastest differentiable one for the device).
    All inputs are checked before the first step. The model's weights are not modified.
    """
    if not isinstance(model, FlexAvatarModel):
        raise FitArgumentError(f"model must be a FlexAvatarModel, got {type(model).__name__}")
    if not isinstance(observations, Observations):
        raise FitArgumentError(f"observations must be an Observations (see load_observations), "
                               f"got {type(observations).__name__}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise FitArgumentError(f"steps must be a positive int, got {steps!r}")
    _check_config(config, model)
    weight = model.network._conv_patchify.weight
    device, dtype = weight.device, weight.dtype
    obs = observations.to(device, dtype)
    dino = (dinov2 if dinov2 is not None else model.dinov2) if config.dino_weight > 0 else None
    if dino is not None:
        dino = dino.to(device)

    initial = _initial_code(model, obs, init_code, from_scratch, features)          # [R², 1, D]
    with frozen_weights(model, dino):
        fitter = Fitter(model, obs, initial, steps, config, dino, backend)
        order = torch.randint(len(obs), (steps,), generator=torch.Generator().manual_seed(int(config.seed))).tolist()
        losses, psnrs = [], []
        t0 = time.perf_counter()
        for step, i in enumerate(order):
            lr = fitter.lr
            loss, step_psnr = fitter.step(i, check_values=step == 0)   # value checks sync a GPU: once
            losses.append(loss)
            psnrs.append(step_psnr)
            if callback is not None:
                callback(FitProgress(step + 1, steps, loss.item(), step_psnr.item(), lr, i))
        seconds = time.perf_counter() - t0
    return FitResult(code=AvatarCode(fitter.code.detach()), expression_offsets=fitter.offsets.detach(),
                     initial_code=AvatarCode(initial), losses=torch.stack(losses).tolist(),
                     psnrs=torch.stack(psnrs).tolist(), observation_indices=order, backend=fitter.backend_used,
                     seconds=seconds, dino_loss=dino is not None)


class Fitter:
    """The optimisation state of one fit: ``step(i)`` is one Adam step on observation ``i``.

    Use inside ``frozen_weights(model, dino)``; ``fit`` drives it (benchmarks time ``step`` alone).
    """

    def __init__(self, model: FlexAvatarModel, observations: Observations, initial: torch.Tensor, steps: int,
                 config: FitConfig = FitConfig(), dino: torch.nn.Module | None = None, backend: str = "auto"):
        self.model, self.obs, self.config, self.dino, self.backend = model, observations, config, dino, backend
        self.backend_used = backend
        self.k_pix = observations.pixel_intrinsics()                                 # [V, 3, 3]
        self.code = initial.clone().requires_grad_(True)                             # [R², 1, D]
        self.offsets = torch.zeros(len(observations), EXPRESSION_CODE_DIM, device=initial.device,
                                   dtype=initial.dtype, requires_grad=True)          # [V, 135]
        self.optimizer = torch.optim.Adam([self.code, self.offsets], lr=config.lr)
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=steps,
                                                                   eta_min=config.lr_min)
        self.target_features: dict[int, torch.Tensor] = {}                          # DINOv2, per observation

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def step(self, i: int, check_values: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """→ (loss, PSNR of the render) as detached 0-d tensors on the model's device (no sync)."""
        obs, config = self.obs, self.config
        expr = obs.expressions[i:i + 1] + self.offsets[i:i + 1]
        render, self.backend_used = render_code(self.model, self.code, expr, obs.cam2world[i:i + 1],
                                                self.k_pix[i:i + 1], obs.width, obs.height, self.backend,
                                                config.dataset_id, check_values=check_values)
        target = obs.images[i:i + 1]
        loss = photometric_loss(render, target, config.l1_weight, config.ssim_weight)
        if self.dino is not None:
            if i not in self.target_features:
                with torch.no_grad():
                    self.target_features[i] = self.dino(target)
            loss = loss + config.dino_weight * dino_feature_loss(self.dino(render), self.target_features[i])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        return loss.detach(), psnr(render.detach(), target)


def _check_config(config: FitConfig, model: FlexAvatarModel) -> None:
    if not isinstance(config, FitConfig):
        raise FitArgumentError(f"config must be a FitConfig, got {type(config).__name__}")
    for name in ("lr", "lr_min", "l1_weight", "ssim_weight", "dino_weight"):
        value = getattr(config, name)
        positive = name.startswith("lr")                 # learning rates > 0, loss weights ≥ 0
        if not _is_real(value) or not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise FitArgumentError(f"FitConfig.{name} must be a finite number {'> 0' if positive else '≥ 0'}, "
                                   f"got {value!r}")
    if config.lr_min > config.lr:
        raise FitArgumentError(f"FitConfig.lr_min ({config.lr_min}) must not exceed FitConfig.lr ({config.lr}): "
                               "the learning rate is annealed down from lr to lr_min")
    n_ids = model.config.n_dataset_ids
    if not _is_int(config.dataset_id) or not 0 <= config.dataset_id < n_ids:
        raise FitArgumentError(f"FitConfig.dataset_id must be an int in [0, {n_ids}) (0 monocular, 1 multi-view), "
                               f"got {config.dataset_id!r}")
    if not _is_int(config.seed) or not -2 ** 63 <= config.seed < 2 ** 64:
        raise FitArgumentError(f"FitConfig.seed must be an int in [-2**63, 2**64) (torch.Generator.manual_seed), "
                               f"got {config.seed!r}")


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _code_tokens(model: FlexAvatarModel, code) -> torch.Tensor:
    """AvatarCode / tensor / .npy path → tokens [R², 1, D] on the model's device, checked."""
    cfg = model.config
    if isinstance(code, (str, Path)):
        code = AvatarCode.load(code)
    tokens = code.tokens if isinstance(code, AvatarCode) else code
    if not isinstance(tokens, torch.Tensor):
        raise FitArgumentError(f"avatar code must be an AvatarCode, a tensor or an .npy path, "
                               f"got {type(code).__name__}")
    if tokens.ndim == 2:
        tokens = tokens[:, None]
    expected = (cfg.n_head_tokens, 1, cfg.d_hidden)
    if tuple(tokens.shape) != expected:
        raise FitArgumentError(f"avatar code has shape {tuple(tokens.shape)}; this model needs {expected} "
                               "(one avatar, official layout)")
    if not torch.isfinite(tokens).all():
        raise FitArgumentError("avatar code contains NaN or inf")
    weight = model.network._conv_patchify.weight
    return tokens.detach().to(weight.device, weight.dtype)


def _initial_code(model, obs: Observations, init_code, from_scratch: bool, features) -> torch.Tensor:
    cfg = model.config
    weight = model.network._conv_patchify.weight
    if init_code is not None:
        return _code_tokens(model, init_code).clone()
    if from_scratch:
        return torch.zeros(cfg.n_head_tokens, 1, cfg.d_hidden, device=weight.device, dtype=weight.dtype)
    if features is None and model.dinov2 is None:
        raise FitArgumentError("the encoder needs DINOv2 features of the first image: load the model with "
                               "dinov2=..., pass features=, init_code= or from_scratch=True")
    if obs.height != obs.width:
        raise ImageSizeError("images", f"are {obs.width}×{obs.height} (W×H); the encoder runs on the first "
                             "one", "square photos for the encoder (or init_code= / from_scratch=True)")
    image = obs.images[:1]
    if obs.height != cfg.image_size:   # normalised intrinsics do not change with the resolution
        image = F.interpolate(image, size=(cfg.image_size, cfg.image_size), mode="bilinear",
                              antialias=True, align_corners=False).clamp(0, 1)
    if features is not None:
        features = torch.as_tensor(features).to(weight.device, weight.dtype)
        features = features[:, None] if features.ndim == 4 else features
    return model.encode(image, obs.cam2world[:1], obs.intrinsics[:1], features=features).tokens


@contextlib.contextmanager
def frozen_weights(*modules: torch.nn.Module | None) -> Iterator[None]:
    """Weights frozen (requires_grad False) and eval mode inside; flags restored after."""
    modules = [m for m in modules if m is not None]
    params = [p for m in modules for p in m.parameters()]
    grad_flags = [p.requires_grad for p in params]
    train_flags = [m.training for m in modules]
    try:
        for p in params:
            p.requires_grad_(False)
        for m in modules:
            m.eval()
        yield
    finally:
        for p, flag in zip(params, grad_flags, strict=True):
            p.requires_grad_(flag)
        for m, flag in zip(modules, train_flags, strict=True):
            m.train(flag)


# ---- identity interpolation ---------------------------------------------------------------------

def interpolate(avatar_a: AvatarCode | torch.Tensor | str | Path, avatar_b: AvatarCode | torch.Tensor | str | Path,
                t: float | np.ndarray | torch.Tensor) -> AvatarCode:
    """Identity blend (1 − t)·a + t·b of two avatar codes (AvatarCode, tokens tensor or .npy path).

    t = 0 gives a, t = 1 gives b; values outside [0, 1] extrapolate (caricatures), any finite real scalar is
    allowed (Python, numpy or a 0-d array / tensor).
    """
    a, b = _load_code(avatar_a, "avatar_a"), _load_code(avatar_b, "avatar_b")
    if a.tokens.shape != b.tokens.shape:
        raise FitArgumentError(f"avatar codes differ in shape: avatar_a {tuple(a.tokens.shape)}, avatar_b "
                               f"{tuple(b.tokens.shape)}; expected codes of one model (R², 1, D)")
    if isinstance(t, (np.ndarray, torch.Tensor)) and t.ndim == 0:
        t = t.item()                                     # 0-d array / tensor → Python scalar
    if not _is_real(t) or not math.isfinite(t):
        raise FitArgumentError(f"t must be a finite real number (0 → avatar_a, 1 → avatar_b), got {t!r}")
    b_tokens = b.tokens.to(a.tokens.device, a.tokens.dtype)
    return AvatarCode.interpolate(a, AvatarCode(b_tokens), float(t))


def _load_code(code, argument: str) -> AvatarCode:
    if isinstance(code, (str, Path)):
        return AvatarCode.load(code)
    if isinstance(code, torch.Tensor):
        code = AvatarCode(code[:, None] if code.ndim == 2 else code)
    if not isinstance(code, AvatarCode):
        raise FitArgumentError(f"{argument} must be an AvatarCode, a tensor [R², 1, D] or an .npy path, "
                               f"got {type(code).__name__}")
    if code.tokens.ndim != 3 or not code.tokens.is_floating_point():
        raise FitArgumentError(f"{argument} must be float tokens [R², B, D], got {tuple(code.tokens.shape)} "
                               f"{code.tokens.dtype}")
    if not torch.isfinite(code.tokens).all():
        raise FitArgumentError(f"{argument} contains NaN or inf")
    return code
