"""``Runtime``: load a bundle once, create avatars from photos, render frames from expressions and cameras.

    rt = Runtime("bundle/", backend="auto", device="auto", rasterizer="auto")
    avatar = rt.create_avatar("me.png")                      # once per person (or Avatar.load("avatar.npy"))
    frames = rt.render(avatar, expressions, orbit_camera(len(expressions)))   # uint8 [T, 512, 512, 3]

Every frame: decoder (the bundle's graph on the chosen engine) → rasterizer (``flexavatar.kernels``), the
optional rigid head pose folded into the camera. On the ONNX Runtime / OpenVINO engines with the native CPU
rasterizer nothing imports PyTorch. One ``Runtime`` may be used from several threads at once (engines keep
per-thread state where their library needs it; see ``engines.py`` and ``gpu.py``); with CUDA graphs (ONNX
Runtime's, or compiled frames on CUDA) its frames run one at a time.
"""
from __future__ import annotations

import collections
import contextlib
import importlib.util
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from flexavatar import kernels
from flexavatar.bundle import (GAUSSIAN_OUTPUTS, PRECISIONS, ROLE_DECODER, ROLE_DECODER_AVATAR, ROLE_ENCODER,
                               ROLE_ENCODER_FEATURES, VERIFY_MODES, Bundle)
from flexavatar.errors import FlexAvatarError
from flexavatar.kernels.arrays import NUMPY, TORCH, array_kind, to_numpy
from flexavatar.kernels.validation import MAX_IMAGE_SIZE, MAX_INTERSECTION_CAPACITY

from .avatar import Avatar
from .cameras import Camera, as_camera, pixel_intrinsics, world2cam
from .engines import INFERENCE_PRECISIONS, EngineOptions, EngineSpec, InferenceBackend, select_engine
from .errors import CameraInputError, EncoderUnavailableError, EngineUnavailableError, RuntimeArgumentError
from .expressions import as_expressions, head_pose, head_pose_matrix, quaternion_from_matrix, quaternion_multiply
from .images import load_image
from .intersections import CountReadback, IntersectionBudget
from .timing import StageTimes

log = logging.getLogger("flexavatar.runtime")
WHITE = (1.0, 1.0, 1.0)
MAX_RENDER_SIZE = MAX_IMAGE_SIZE          # the rasterizers' limit (also the C API's)


# ---- decoded Gaussians --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Gaussians:
    """Decoded Gaussians of E frames: means [E, G, 3], quats [E, G, 4] (w, x, y, z), scales [E, G, 3],
    opacities [E, G], sh0 [E, G, 3]. numpy arrays, or CUDA torch tensors on the GPU path."""
    means: Any
    quats: Any
    scales: Any
    opacities: Any
    sh0: Any

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def n_gaussians(self) -> int:
        return int(self.means.shape[1])

    def arrays(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def numpy(self) -> "Gaussians":
        return Gaussians(**{k: to_numpy(v) for k, v in self.arrays().items()})

    def __getitem__(self, index) -> "Gaussians":
        return Gaussians(**{k: v[index] for k, v in self.arrays().items()})

    def save_ply(self, path: str | Path, frame: int = 0, comment: str = "flexavatar") -> Path:
        """Frame ``frame``'s Gaussians as a 3D Gaussian Splatting PLY (see ``ply.py``), for splat viewers."""
        from .ply import write_ply
        if not isinstance(frame, (int, np.integer)) or not -len(self) <= frame < len(self):
            raise RuntimeArgumentError("frame", f"is {frame!r}", f"an index into the {len(self)} decoded frames")
        one = self[int(frame)].numpy()
        return write_ply(path, one.means, one.quats, one.scales, one.opacities, one.sh0, comment=comment)


def _concat(parts: list[Gaussians]) -> Gaussians:
    if len(parts) == 1:
        return parts[0]
    kind = array_kind(parts[0].means)
    cat = _CONCAT[kind]
    return Gaussians(**{k: cat([getattr(p, k) for p in parts]) for k in GAUSSIAN_OUTPUTS})


def _torch_cat(xs):
    import torch
    return torch.cat(xs, 0)


def _torch_stack(xs, axis):
    import torch
    return torch.stack(xs, axis)


_CONCAT = {NUMPY: lambda xs: np.concatenate(xs, 0), TORCH: _torch_cat}
_STACK = {NUMPY: np.stack, TORCH: _torch_stack}


def _like(x: np.ndarray, like):
    """A small host array as the type/device of ``like`` (numpy, or a torch tensor's device); host → CUDA
    copies are enqueued on the current stream without a host sync."""
    if array_kind(like) == TORCH:
        if like.device.type == "cuda":
            from .gpu import to_cuda
            return to_cuda(x, like.device)
        import torch
        return torch.from_numpy(np.array(x, dtype=np.float32, order="C")).to(like.device)   # own, writable copy
    return x.astype(np.float32)


def _cameras_like(viewmats: np.ndarray, ks: np.ndarray, background: np.ndarray, like) -> list:
    """A frame chunk's cameras where ``like`` lives: world2cam [E, 4, 4], K [E, 3, 3] and the background [3] per
    frame [E, 3]. On a torch device one transfer (on CUDA one page-locked copy instead of three), each result a
    contiguous view of it."""
    arrays = (viewmats, ks, np.broadcast_to(background, (len(viewmats), 3)))
    if array_kind(like) != TORCH:
        return [_like(x, like) for x in arrays]
    flat = [np.asarray(x, np.float32).reshape(-1) for x in arrays]
    moved = _like(np.concatenate(flat), like)
    return [part.view(np.shape(x)) for part, x in zip(moved.split([f.size for f in flat]), arrays, strict=True)]


def _per_view(splats: dict, views: int) -> dict:
    """A chunk's splats ([E, G, …]) for E·V images, frame-major: one frame's are shared by all its views as they
    are (the rasterizer broadcasts a batch of 1), several frames' are repeated V times each."""
    if views == 1 or len(splats["means"]) == 1:
        return splats
    return {k: np.repeat(v, views, axis=0) if array_kind(v) == NUMPY else v.repeat_interleave(views, 0)
            for k, v in splats.items()}


def apply_pose(gaussians: Gaussians, expressions: np.ndarray) -> Gaussians:
    """Move each frame's Gaussians by the GUI's rigid head pose ``[rot6d(code[126:132]) | code[132:135]]``:
    means' = R·means + t, quats' = q(R) ⊗ quats (scales, opacities and colours are unchanged)."""
    rot, trans = head_pose(expressions)                                              # [E, 3, 3], [E, 3]
    means = gaussians.means
    r, t = _like(rot, means), _like(trans, means)
    q = _like(quaternion_from_matrix(rot), means)                                    # [E, 4]
    kind = array_kind(means)
    new_means = (means @ r.swapaxes(-1, -2)) + t[:, None, :]                         # [E, G, 3]
    new_quats = quaternion_multiply(q[:, None, :], gaussians.quats, _STACK[kind])    # [E, G, 4]
    return Gaussians(new_means, new_quats, gaussians.scales, gaussians.opacities, gaussians.sh0)


# ---- frame formats ------------------------------------------------------------------------------------------

def _uint8_rgb(rgb, alpha):
    """→ uint8 [E, H, W, 3] (rounded), where the rasterizer made it (converted on the device: the copy to the host
    is then a quarter of the float frame's)."""
    if array_kind(rgb) == TORCH:
        import torch
        return (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def _float_rgba(rgb, alpha):
    """→ float32 [E, H, W, 4] (rgb composited over the background, and alpha), where the rasterizer made it."""
    if array_kind(rgb) == TORCH:
        import torch
        return torch.cat([rgb, alpha], -1)
    return np.concatenate([rgb, alpha], -1)


class _HostFrames:
    """Frames on their way to the host: a CUDA tensor is copied into page-locked memory on the current stream
    (queued, no wait); ``result()`` waits for that copy only and hands out an ordinary copy, so the page-locked
    block goes back to torch's host cache at once (a long render keeps one or two, not one per frame; a copy
    to pageable memory stages through such a buffer anyway). Other arrays are on the host already.
    readback: the intersection count of a sync-free render (queued before the frames); when it did not fit,
    ``result()`` hands out ``redo()``'s frames instead (rendered again, sized exactly)."""

    def __init__(self, frames, readback: CountReadback | None = None, budget: IntersectionBudget | None = None,
                 redo=None):
        self.readback, self.budget, self.redo = readback, budget, redo
        self.done = None
        if array_kind(frames) == TORCH and frames.is_cuda:
            from .gpu import copy_to_host_async
            self.frames, self.done = copy_to_host_async(frames)
        else:
            self.frames = frames

    def result(self) -> np.ndarray:
        if self.done is None:
            frames = to_numpy(self.frames)
        else:
            self.done.synchronize()
            staged, self.frames = self.frames, None
            frames = staged.numpy().copy()
        if self.readback is not None and not self.readback.fits(self.budget):
            self.budget.rerendered()
            log.info("a frame needed %d intersection slots, more than its %d: rendered again",
                     self.readback.value(), self.readback.capacity)
            again = self.redo()
            return again.result() if isinstance(again, _HostFrames) else again
        return frames


@dataclass(frozen=True)
class _FramePlan:
    """A render's checked arguments: expressions [T, 135], world→camera viewmats [T·V, 4, 4] and pixel intrinsics
    ks [T·V, 3, 3] (float32, frame-major), the size, the background RGB and the output kind. views: V cameras see
    every frame (multiview: frames [T, V, H, W, C]), or 0: one camera a frame (frames [T, H, W, C])."""
    expressions: np.ndarray
    viewmats: np.ndarray
    ks: np.ndarray
    width: int
    height: int
    background: np.ndarray
    output: str
    views: int = 0

    @property
    def images_per_frame(self) -> int:
        return max(self.views, 1)


class PendingFrames:
    """Frames of ``Runtime.render_async``, queued; ``result()`` waits for them (once) and returns them as
    ``render`` does."""

    def __init__(self, runtime: "Runtime", chunks: list):
        self._runtime, self._chunks, self._frames = runtime, chunks, None
        self._lock = threading.Lock()

    def result(self):
        with self._lock:
            if self._frames is None:
                rt = self._runtime
                # the host waits inside the frame lock (see iter_render); a frame rendered again goes on the
                # engine's stream
                with rt._frame_lock, rt.engine.stream():
                    parts = [c.result() if isinstance(c, _HostFrames) else c for c in self._chunks]
                self._chunks = []
                if array_kind(parts[0]) == TORCH:
                    rt.engine.hand_over(parts)               # CUDA frames: to the caller's current stream
                self._frames = parts[0] if len(parts) == 1 else _CONCAT[array_kind(parts[0])](parts)
            return self._frames


# output → the frames from the rasterizer's rgb and alpha, on its device; every output but "device" then goes to
# the host
FRAME_FORMATS = {"uint8": _uint8_rgb, "float": _float_rgba, "device": _float_rgba}


# ---- the runtime --------------------------------------------------------------------------------------------

class Runtime:
    """A loaded bundle on one inference engine and one rasterizer.

    bundle_dir: a folder written by ``flexavatar-export``. backend: "onnxruntime", "openvino", "torch",
    "torch-compile" or "auto" (registry of ``engines.py``; the fastest one that can run this bundle here).
    device: "cpu", "cuda", "gpu" (a GPU without CUDA: OpenVINO's Intel GPU plugin, or ONNX Runtime's DirectML,
    MIGraphX, CoreML, ... provider, ``engines.ORT_HOST_PROVIDERS``), "npu" (OpenVINO's NPU plugin, or ONNX Runtime's
    QNN, VitisAI, CoreML provider) or "auto" (CUDA when the engine can use it, else CPU). device_id: the CUDA
    device, or the GPU of the DirectML / MIGraphX / ROCm providers.
    rasterizer: a ``flexavatar.kernels`` backend name or "auto" (the fastest for the decoder's arrays;
    ``self.rasterizer`` names the one chosen). precision: which artifacts, "fp32", "fp16" or "int8" (the
    decoders with int8 MatMul weights, for CPUs: onnxruntime on cpu only; lossy, checked at export against a 30 dB
    rendered-PSNR target); the encoder runs its fp32 file when the bundle has none of that precision.
    verify: "full" (sha256 of every file, default), "size" or "none". batch: frames per decoder call.
    cuda_graphs: ONNX Runtime on CUDA replays the bundle's graphs (decoders and encoder) as CUDA graphs; None
    (default) = on there: faster (6.1 vs 8.6 ms a FLEX-1 fp16 frame on an H200, before cuDNN's HEURISTIC choice
    made it 3.05 ms) and the mode in which
    onnxruntime-gpu 1.31.1 never aborted (without it, it did at random calls and at exit;
    benchmarks/device/README.md). False turns it off (with a warning on 1.31); other engines ignore it.
    fused_decoders: ONNX Runtime runs the bundle's decoders with its fused kernels when the bundle has them (export
    target ``onnx-ort``): None (default) = on CUDA (fewer kernels a frame), the portable files first on the CPU;
    True = fused first everywhere; False = the portable files only. ``describe()`` names the file that runs.
    num_threads: CPU threads per call (0: the library's default). inference_precision: OpenVINO only, its
    INFERENCE_PRECISION_HINT: None (f32 for fp32 artifacts, else the device's choice), "f32", "f16" or "bf16"
    (the other engines compute at the artifacts' precision and ignore it, with a warning).
    For backend="torch" / "torch-compile": ``model=`` (FlexAvatarModel) or ``checkpoint=`` + ``template=``
    (+ ``dinov2=``), or nothing when the bundle carries the model (export target pytorch); "torch-compile" decodes
    under torch.compile (fp16 autocast with precision="fp16"; on CUDA the model's weights are frozen into the
    compiled decoder: do not change them while the runtime is in use).
    compiled_frames: the rasterizer (``torch.ops.flexavatar.rasterize``, the native one) and the pixel format, and
    with "torch-compile" the decoder too, compiled as one function (``torch.compile``; on CUDA replayed as CUDA graphs),
    so that a frame's host work is a call or two instead of the rasterizer's Python wrapper, checks and conversions
    (the Python live loop was bound by its host work, ≈ 2.5 ms a frame on an H200). None (default) = on for
    "torch-compile" on CUDA; True = on for any engine with the native rasterizer of its device (PyTorch needed; on the
    CPU the Gaussians then go unchecked for NaN, as on CUDA, and it does not pay: Inductor's OpenMP threads spin after
    its kernels and slow the C++ rasterizer's: 6.5 against 3.2 ms a 64² fixture frame on 2 cores, 3.0 against 2.9
    with OMP_WAIT_POLICY=passive); False = off. Renders with ``timings``, and those whose
    sort must be sized exactly (a CUDA runtime's first frame, a frame rendered again), take the separate calls.
    Every pixel format, size and batch compiles once (tens of seconds for a whole frame on CUDA). A frame that fails
    to compile or capture is rendered by the separate calls, and so is every later one (with a warning).
    """

    def __init__(self, bundle_dir: str | Path, backend: str = "auto", device: str = "auto", rasterizer: str = "auto",
                 *, precision: str = "fp32", verify: str = "full", batch: int = 1, num_threads: int = 0,
                 inference_precision: str | None = None, cuda_graphs: bool | None = None,
                 fused_decoders: bool | None = None, device_id: int = 0, model=None, checkpoint=None, template=None,
                 dinov2=None, compiled_frames: bool | None = None):
        for name, value in (("backend", backend), ("device", device), ("rasterizer", rasterizer)):
            if not isinstance(value, str):
                raise RuntimeArgumentError(name, f"is {value!r}", "a name (a string), or 'auto'")
        if precision not in PRECISIONS:
            raise RuntimeArgumentError("precision", f"is {precision!r}", f"one of {list(PRECISIONS)}")
        if not _is_count(batch) or batch < 1:
            raise RuntimeArgumentError("batch", f"is {batch!r}", "a positive number of frames per decoder call")
        if verify not in VERIFY_MODES:
            raise RuntimeArgumentError("verify", f"is {verify!r}", f"one of {list(VERIFY_MODES)}")
        if not _is_count(num_threads) or num_threads < 0:
            raise RuntimeArgumentError("num_threads", f"is {num_threads!r}", "CPU threads per call ≥ 1, or 0 for "
                                       "the inference library's default")
        if cuda_graphs is not None and not isinstance(cuda_graphs, bool):
            raise RuntimeArgumentError("cuda_graphs", f"is {cuda_graphs!r}", "True, False or None (on for ONNX Runtime "
                                       "on CUDA)")
        if fused_decoders is not None and not isinstance(fused_decoders, bool):
            raise RuntimeArgumentError("fused_decoders", f"is {fused_decoders!r}", "True, False or None (ONNX "
                                       "Runtime's fused decoders first on CUDA when the bundle has them)")
        if compiled_frames is not None and not isinstance(compiled_frames, bool):
            raise RuntimeArgumentError("compiled_frames", f"is {compiled_frames!r}", "True, False or None (on for "
                                       "backend='torch-compile' on CUDA)")
        if not _is_count(device_id) or device_id < 0:
            raise RuntimeArgumentError("device_id", f"is {device_id!r}", "a device index ≥ 0")
        if inference_precision is not None and (not isinstance(inference_precision, str)
                                                or inference_precision not in INFERENCE_PRECISIONS):
            raise RuntimeArgumentError("inference_precision", f"is {inference_precision!r}",
                                       f"None or one of {list(INFERENCE_PRECISIONS)} (OpenVINO's precision hint)")
        self.bundle = Bundle.open(bundle_dir, verify=verify)
        self.manifest = self.bundle.manifest
        c = self.manifest.conventions
        self.image_size, self.n_tokens, self.code_width = c.image_size, c.n_head_tokens, c.d_code
        self.precision, self.batch = precision, batch
        options = EngineOptions(precision=precision, num_threads=num_threads, inference_precision=inference_precision,
                                cuda_graphs=cuda_graphs, fused_decoders=fused_decoders, device_id=device_id,
                                model=model, checkpoint=checkpoint, template=template, dinov2=dinov2)
        # backend: the registered name (a factory registered by an app may wrap a built-in engine)
        self.backend, self.engine = self._open_engine(backend, device, options)
        self.device = self.engine.device
        if inference_precision is not None and self.engine.name != "openvino":
            log.warning("inference_precision=%r applies to OpenVINO only: ignored by %s", inference_precision,
                        self.backend)
        self.decoder = self.engine.load(ROLE_DECODER)
        self.array_device = "cuda" if self.decoder.array_type == TORCH and self.device == "cuda" else "cpu"
        spec = kernels.select_backend(rasterizer, device=self.array_device, dtype="float32")
        self.rasterizer = spec.name
        self._check_values = self.array_device == "cpu"     # value checks sync the GPU: skipped there
        self._compiled_frames = self._wants_compiled_frames(compiled_frames)
        self._rasters: dict[Any, Any] = {}        # compiled rasterizer + pixel format, per format (compiled frames)
        # CUDA graphs: the decoder's outputs are fixed buffers that the next replay overwrites, and ONNX Runtime
        # captures in CUDA's global mode: one frame at a time (see gpu.py). So do compiled frames on CUDA behind
        # any engine: their rasterizer replays CUDA graphs (one set of buffers for every thread), and marking a
        # step (cudagraph_mark_step_begin) is process-wide. Otherwise frames run concurrently.
        graphs = getattr(self.decoder, "cuda_graphs", False) or (self._compiled_frames and self.array_device == "cuda")
        self._frame_lock = threading.Lock() if graphs else contextlib.nullcontext()
        # the GPU rasterizer's sort sizes (intersections.py): no host sync inside a frame after the first
        self.intersections = IntersectionBudget()
        self._unchecked: collections.deque[CountReadback] = collections.deque()   # device frames' counts
        log.info("flexavatar runtime: %s", self.describe())

    def _open_engine(self, backend: str, device: str, options: EngineOptions) -> tuple[str, InferenceBackend]:
        def runs_bundle(spec: EngineSpec, device: str) -> str | None:
            # a factory function registered with register_engine may not say: it is offered every precision
            precisions = getattr(spec.factory, "precisions_for", lambda device: PRECISIONS)(device)
            if options.precision not in precisions:
                return (f"it runs {' and '.join(precisions)} files on {device}"
                        + (" (int8 decoders: onnxruntime on the CPU)" if options.precision == "int8" else ""))
            formats = spec.factory.formats_for(device, options) if hasattr(spec.factory, "formats_for") else (None,)
            if formats != (None,) and not any(self.bundle.artifacts(ROLE_DECODER, f, options.precision)
                                              for f in formats):
                return (f"the bundle has no {options.precision} decoder in format "
                        f"{' or '.join(repr(f) for f in formats)}")
            if (getattr(spec.factory, "requires_model", False) and options.model is None and options.checkpoint is None
                    and self.bundle.manifest.torch_model is None):
                return ("it runs the PyTorch model itself: pass model= (FlexAvatarModel) or checkpoint= + template= "
                        "(flexavatar-render: --checkpoint CKPT --template OBJ), or export the bundle with --targets "
                        "...,pytorch")
            return None

        spec, dev = select_engine(backend, device, runs_bundle)
        try:
            engine = spec.factory(self.bundle, dev, options)
            engine.load(ROLE_DECODER)
            return spec.name, engine
        except EngineUnavailableError as e:
            if device != "auto" or dev == "cpu":
                raise
            log.warning("%s; falling back to the CPU", e)     # e.g. the CUDA session fell back to the CPU
            spec, dev = select_engine(spec.name, "cpu", runs_bundle)
            return spec.name, spec.factory(self.bundle, dev, options)

    def _wants_compiled_frames(self, asked: bool | None) -> bool:
        """Whether frames go through compiled frames (see the class docstring)."""
        native = self.array_device          # torch.ops.flexavatar.rasterize runs the native backend of that name
        if asked and self.rasterizer != native:
            raise RuntimeArgumentError("compiled_frames", "is True", f"rasterizer={native!r} here (the native "
                                       f"rasterizer, which compiled frames call), got {self.rasterizer!r}")
        if asked and importlib.util.find_spec("torch") is None:
            raise RuntimeArgumentError("compiled_frames", "is True", "PyTorch installed (torch.compile)")
        whole = hasattr(self.decoder, "frames")                       # torch-compile: the decoder compiles too
        return self.rasterizer == native and bool(asked or (asked is None and whole and self.array_device == "cuda"))

    @property
    def compiled_frames(self) -> bool:
        """Whether frames go through compiled frames (``compiled_frames=``); False once one failed to compile."""
        return self._compiled_frames

    def describe(self) -> str:
        decoder = f"{self.engine.artifact(ROLE_DECODER).files[0].path}" if self.engine.format else self.precision
        frames = " · compiled frames" if self._compiled_frames else ""
        return (f"{self.engine.describe()} · {decoder} · rasterizer {self.rasterizer}{frames} · "
                f"bundle {self.bundle.root.name} (G = {self.manifest.conventions.n_gaussians})")

    # ---- avatars ----------------------------------------------------------------------------------------
    def create_avatar(self, image, camera: Camera | tuple | None = None, features=None) -> Avatar:
        """Encode a photo once. image: [S, S, 3] RGB on white (uint8 or float in [0, 1]), [S, S, 4] RGBA
        (composited onto white), a PIL image or a file; S is the bundle's image size (512 for FLEX-1).
        camera: the photo's camera (default: the official demo's frontal camera). features: DINOv2 patch
        features [C, h, w] for bundles exported without DINOv2 (their encoder takes them as an input)."""
        pixels = load_image(image, self.image_size)[None]                                   # [1, 3, S, S]
        cam = as_camera(camera)
        if len(cam) != 1:
            raise CameraInputError("camera", f"holds {len(cam)} cameras", "the single camera of the photo")
        c2w, k = cam.for_frames(1)
        feeds = {"image": pixels, "cam2world": np.ascontiguousarray(c2w), "intrinsics": np.ascontiguousarray(k)}
        role = self._encoder_role(features is not None)
        if role == ROLE_ENCODER_FEATURES:
            feeds["features"] = self._features(features)
        # CUDA: the read-back is ordered after the encoder on its stream; with CUDA graphs the code is the graph's
        # fixed output buffer until it is read back, so the frame lock covers both
        with self._frame_lock, self.engine.stream():
            code = to_numpy(self.engine.load(role).run(feeds)["code"])
        return Avatar(code, source=str(image) if isinstance(image, (str, Path)) else "photo")

    def _encoder_role(self, with_features: bool) -> str:
        has = self.engine.has
        if with_features:
            if has(ROLE_ENCODER_FEATURES):
                return ROLE_ENCODER_FEATURES
            raise EncoderUnavailableError("features= was given but this bundle's encoder computes DINOv2 itself "
                                          "(role 'encoder'); call create_avatar without features")
        if has(ROLE_ENCODER):
            return ROLE_ENCODER
        if has(ROLE_ENCODER_FEATURES):
            raise EncoderUnavailableError(
                "this bundle was exported without DINOv2 weights: its encoder takes DINOv2 features as an input. "
                "Pass features=[C, h, w] (DINOv2 ViT-B/14-reg patch features of the photo), or re-export with "
                "flexavatar-export --dinov2 dinov2_vitb14_reg4_pretrain.pth to encode photos directly")
        raise EncoderUnavailableError(f"this bundle has no encoder for {self.backend} at {self.precision} (it has: "
                                      f"{self.manifest.inventory()}); load a saved avatar code instead (Avatar.load) "
                                      "or re-export")

    def _features(self, features) -> np.ndarray:
        spec = self.engine.artifact(ROLE_ENCODER_FEATURES).input("features") if self.engine.format else None
        channels = spec.shape[1] if spec is not None else self.manifest.model.config.get("feature_dim")
        f = np.asarray(to_numpy(features), dtype=np.float32)
        if f.ndim == 3:
            f = f[None]
        expected = f"finite DINOv2 features [{channels}, h, w]"
        if f.ndim != 4 or f.shape[:2] != (1, channels) or min(f.shape[2:]) < 1:
            raise RuntimeArgumentError("features", f"has shape {list(f.shape)}", expected)
        if not np.isfinite(f).all():
            raise RuntimeArgumentError("features", "contains NaN/inf", expected)
        return np.ascontiguousarray(f)

    def load_avatar(self, path: str | Path) -> Avatar:
        """An avatar code file (official (R², 1, D) .npy), checked against this bundle."""
        avatar = Avatar.load(path)
        avatar.check_fits(self.n_tokens, self.code_width)
        return avatar

    def bundle_avatar(self) -> Avatar:
        """The avatar encoded at export time (``flexavatar-export --avatar``); decoded by the bundle's
        decoder specialised to it when the engine has that graph."""
        info = self.manifest.avatar
        return Avatar(self.bundle.avatar_code(), source=f"{self.bundle.root.name}/{info.code.path}" if info else "",
                      bundle_sha256=info.code.sha256 if info else "")

    # ---- decode -----------------------------------------------------------------------------------------
    def decode(self, avatar: Avatar, expressions, apply_head_pose: bool = False) -> Gaussians:
        """Gaussians of every expression code [T, 135]: numpy arrays on the CPU engines, CUDA torch tensors on
        the GPU path (ordered before later work on the caller's current CUDA stream; no host sync).
        In the canonical head frame unless apply_head_pose (the GUI's rigid pose)."""
        expressions = as_expressions(expressions)
        if apply_head_pose:
            head_pose(expressions)        # every frame's pose checked before any decoding (errors name the frame)
        with self._frame_lock, self.engine.stream():
            parts = [self._decode_chunk(avatar, expressions[i:i + self.batch], apply_head_pose, copy=True)
                     for i in range(0, len(expressions), self.batch)]
            g = _concat(parts)
        self.engine.hand_over(g.arrays().values())
        return g

    def _decode_chunk(self, avatar: Avatar, expressions: np.ndarray, posed: bool, copy: bool) -> Gaussians:
        # One call a frame where the decoder takes one (a GPU / NPU with static shapes: engine.frames_per_call), and
        # for int8: its activations are quantized with one range per call, so a frame decoded beside others would
        # depend on them, by as much as the quantization error itself (the fixture model: 0.08 on sh0). One call a
        # frame keeps every frame its own whatever the batch (the CPU is compute-bound: no speed lost).
        if (self.precision == "int8" or self.engine.frames_per_call == 1) and len(expressions) > 1:
            return _concat([self._decode_chunk(avatar, expressions[i:i + 1], posed, copy)
                            for i in range(len(expressions))])
        model, feeds = self._decoder_for(avatar)
        feeds["expressions"] = expressions
        out = model.run(feeds)
        if copy and getattr(model, "cuda_graphs", False):
            out = {k: v.clone() for k, v in out.items()}         # graph outputs are overwritten by the next call
        g = Gaussians(**{k: out[k] for k in GAUSSIAN_OUTPUTS})
        return apply_pose(g, expressions) if posed else g

    def _decoder_for(self, avatar: Avatar) -> tuple[Any, dict]:
        if not isinstance(avatar, Avatar):
            raise RuntimeArgumentError("avatar", f"is a {type(avatar).__name__}",
                                       "a flexavatar.runtime.Avatar (create_avatar, load_avatar or bundle_avatar)")
        avatar.check_fits(self.n_tokens, self.code_width)
        info = self.manifest.avatar
        if (avatar.bundle_sha256 and info is not None and avatar.bundle_sha256 == info.code.sha256
                and self.engine.has(ROLE_DECODER_AVATAR)):
            return self.engine.load(ROLE_DECODER_AVATAR), {}     # the code is folded into this graph
        return self.decoder, {"code": self._device_code(avatar)}

    def _device_code(self, avatar: Avatar):
        if self.decoder.array_type != TORCH or self.device != "cuda":
            return avatar.code
        key = ("cuda", self.engine.options.device_id)   # read-only: shared by the runtimes on that device
        code = avatar._device_copies.get(key)
        if code is None:                          # uploaded once per avatar and device
            import torch

            from .gpu import to_cuda
            code = to_cuda(avatar.code, torch.device("cuda", self.engine.options.device_id))
            avatar._device_copies[key] = code
        return code

    # ---- render -----------------------------------------------------------------------------------------
    def render(self, avatar: Avatar, expressions, cameras: Camera | tuple | None = None, width: int = 512,
               height: int = 512, background: Sequence[float] = WHITE, apply_head_pose: bool = False,
               output: str = "uint8", timings: StageTimes | None = None, multiview: bool = False) -> np.ndarray:
        """Frames of ``expressions`` [T, 135] seen by ``cameras`` (one camera or T; default: the demo camera, with
        square pixels at any width × height). A Camera's normalised intrinsics are per axis (K's first row ×
        width, second row × height): for a non-square render give fy/fx = width/height, e.g.
        ``orbit_camera(T, aspect=width / height)``.

        output "uint8": RGB uint8 [T, H, W, 3]; "float": float32 [T, H, W, 4], RGB over ``background`` + alpha;
        "device": the "float" frames left where they were rendered, without a host sync: a CUDA torch tensor on
        the GPU path (ordered before later work on the caller's current CUDA stream), numpy or a torch CPU tensor
        (the torch engine) otherwise.
        apply_head_pose: show the GUI's rigid head pose of each code (``head_pose_matrix``); rendered by folding
        it into the camera, which gives the pixels of the posed Gaussians (``decode(apply_head_pose=True)``).
        timings: a StageTimes to fill with per-frame decode / rasterize / readback latency (on a GPU this adds a
        host sync per stage).
        multiview: every frame is seen by V cameras, each frame decoded once → frames [T, V, H, W, C]: all the
        cameras of ``cameras`` (a Camera of V: a turntable, a light-field display's views), or a rig camera's
        ([T, V, 4, 4]: one rig per frame, e.g. ``stereo_camera`` of a moving camera; [1, V, 4, 4]: one for all).
        The head pose, with apply_head_pose, moves the head in every view. (Compiled frames take one camera a
        frame: multiview frames take the separate calls.)"""
        chunks = list(self.iter_render(avatar, expressions, cameras, width, height, background, apply_head_pose,
                                       output, timings, multiview))
        if len(chunks) == 1:
            return chunks[0]                                                     # one frame a call: no copy
        return _CONCAT[array_kind(chunks[0])](chunks)

    def iter_render(self, avatar: Avatar, expressions, cameras: Camera | tuple | None = None, width: int = 512,
                    height: int = 512, background: Sequence[float] = WHITE, apply_head_pose: bool = False,
                    output: str = "uint8", timings: StageTimes | None = None,
                    multiview: bool = False) -> Iterator[np.ndarray]:
        """``render`` as a generator: yields the frames of each decoder call ([≤ batch, H, W, C]; multiview
        [≤ batch, V, H, W, C])."""
        plan = self._plan(expressions, cameras, width, height, background, apply_head_pose, output, multiview)
        n = len(plan.expressions)
        times = timings if timings is not None else _NO_TIMES
        sync = self.engine.synchronize if timings is not None else None

        # Host waits (the pixels' readback) stay inside the frame lock: with CUDA graphs, another thread may be
        # capturing outside it, and CUDA forbids other threads' synchronising calls during a global-mode capture.
        pipelined = self._pipelines(n, output, timings)
        pending = None
        for start in range(0, n, self.batch):
            stop = min(n, start + self.batch)
            with self._frame_lock, self.engine.stream():  # CUDA: decoder, rasterizer, readback: one stream
                self._check_device_frames(wait=output != "device")     # a wait, so inside the lock (see above)
                queued = self._compiled_chunk(avatar, plan, start, stop) if timings is None else None
                if queued is not None:      # the whole chunk is queued; pipelined, the previous one's pixels
                    if pipelined:           # (their copy was queued before this chunk) are handed out meanwhile
                        ready, pending = (pending.result() if pending is not None else None), queued
                    else:
                        ready = queued.result() if isinstance(queued, _HostFrames) else queued
            if queued is not None:
                if output == "device" and array_kind(ready) == TORCH:
                    self.engine.hand_over([ready])       # outside the engine's stream: to the caller's current one
                if ready is not None:
                    yield ready
                continue
            with self._frame_lock, self.engine.stream():
                with times.stage("decode", stop - start, sync):
                    # pipelined, the lock is let go before rasterizing: a copy out of a CUDA graph's fixed outputs
                    g = self._decode_chunk(avatar, plan.expressions[start:stop], False, copy=pipelined)
                if not pipelined:
                    frames = self._frames_of(plan, g, start, stop, times, sync)
                    frames = frames.result() if isinstance(frames, _HostFrames) else frames
                else:   # the previous chunk's readback was queued before this decoder: a short wait
                    ready, pending = (pending.result() if pending is not None else None), None
            if not pipelined:
                if output == "device" and array_kind(frames) == TORCH:
                    self.engine.hand_over([frames])      # outside the engine's stream: to the caller's current one
                yield frames
                continue
            if ready is not None:
                yield ready                              # the caller works on it while the GPU decodes this chunk
            with self._frame_lock, self.engine.stream():
                pending = self._frames_of(plan, g, start, stop, times, sync)
        if pending is not None:
            with self._frame_lock, self.engine.stream():     # (a frame rendered again goes on the engine's stream)
                last = pending.result()
            yield last

    def render_async(self, avatar: Avatar, expressions, cameras: Camera | tuple | None = None, width: int = 512,
                     height: int = 512, background: Sequence[float] = WHITE, apply_head_pose: bool = False,
                     output: str = "uint8", multiview: bool = False) -> "PendingFrames":
        """``render`` without waiting for the pixels: returns once the frames' work is queued (on CUDA: decoder,
        rasterizer and the copy to page-locked host memory, on the engine's stream; on the CPU engines the work is
        done by then), and ``.result()`` waits for them and returns what ``render`` would have.

        For a render loop at the GPU's rate, one frame a call (e.g. every display refresh, with the tracker's latest
        code): submit frame i + 1, then take frame i's result. The host's work on one frame (the next code, the
        caller's use of the pixels) then overlaps the GPU's on the other, and the frame rate is set by the slower
        of the two instead of their sum; latency is one rendered frame more. A source slower than the renderer
        gains nothing: render each code as it arrives.
        Results may be taken in any order; each is handed out once. The sync-free sort's check holds (a frame
        that outgrew its capacity is rendered again, decoder included, when its result is taken).
        A VR headset's loop renders each code with ``multiview=True`` and the frame's two eye cameras
        (``stereo_camera``): one decode, two images [1, 2, H, W, C]."""
        plan = self._plan(expressions, cameras, width, height, background, apply_head_pose, output, multiview)
        chunks = []
        for start in range(0, len(plan.expressions), self.batch):
            stop = min(len(plan.expressions), start + self.batch)
            with self._frame_lock, self.engine.stream():  # decode and rasterize under one hold: no graph-output copy
                self._check_device_frames(wait=output != "device")
                chunks.append(self._submit_chunk(avatar, plan, start, stop))
        return PendingFrames(self, chunks)

    def _submit_chunk(self, avatar: Avatar, plan: "_FramePlan", start: int, stop: int, exact: bool = False):
        """Decode and rasterize frames start:stop, the pixels' readback queued (frame lock held, engine stream)."""
        queued = None if exact else self._compiled_chunk(avatar, plan, start, stop)
        if queued is not None:
            return queued
        g = self._decode_chunk(avatar, plan.expressions[start:stop], False, copy=False)
        return self._frames_of(plan, g, start, stop, _NO_TIMES, None, exact,
                               redo=lambda: self._submit_chunk(avatar, plan, start, stop, exact=True))

    def _plan(self, expressions, cameras, width: int, height: int, background, apply_head_pose: bool,
              output: str, multiview: bool = False) -> "_FramePlan":
        """A render's arguments, checked, with its cameras as the rasterizer takes them."""
        expressions = as_expressions(expressions)
        if not isinstance(multiview, bool):
            raise RuntimeArgumentError("multiview", f"is {multiview!r}", "True (every camera sees every frame) or "
                                       "False (one camera a frame)")
        if output not in FRAME_FORMATS:
            raise RuntimeArgumentError("output", f"is {output!r}", f"one of {list(FRAME_FORMATS)}")
        for name, v in (("width", width), ("height", height)):
            if not isinstance(v, int) or not 1 <= v <= MAX_RENDER_SIZE:
                raise RuntimeArgumentError(name, f"is {v!r}", f"an integer in [1, {MAX_RENDER_SIZE}]")
        try:
            bg = np.asarray(background, np.float32)
        except (TypeError, ValueError):
            bg = np.full(0, np.nan, np.float32)
        if bg.shape != (3,) or not np.isfinite(bg).all() or bg.min() < 0 or bg.max() > 1:
            raise RuntimeArgumentError("background", f"is {background!r}",
                                       "3 floats, RGB in [0, 1] (divide 0–255 values by 255)")
        n = len(expressions)
        camera = as_camera(cameras, width / height)
        views = 0
        if multiview:                                   # [T, V, 4, 4], [T, V, 3, 3] → [T·V, …], frame-major
            c2w, k = camera.as_rigs(n)
            views = c2w.shape[1]
            k = k.reshape(n * views, 3, 3)
        else:
            c2w, k = camera.for_frames(n)                                                 # [T, 4, 4], [T, 3, 3]
        w2c = world2cam(c2w.astype(np.float64))
        if apply_head_pose:
            # moving the Gaussians by the rigid pose M is rendering them unmoved from the camera w2c · M: exact,
            # and no per-Gaussian work (decode(apply_head_pose=True) moves them, to return them posed)
            pose = head_pose_matrix(expressions)                                          # [T, 4, 4]
            w2c = w2c @ (pose[:, None] if views else pose)
        w2c = w2c.reshape(-1, 4, 4)
        return _FramePlan(expressions, w2c.astype(np.float32), pixel_intrinsics(k, width, height), width, height,
                          bg, output, views)

    def _frames_of(self, plan: "_FramePlan", g: Gaussians, start: int, stop: int, times, sync, exact: bool = False,
                   redo=None):
        """Rasterize frames start:stop of ``plan`` from their Gaussians ``g`` → device frames (output "device"), or
        ``_HostFrames`` on their way to the host (their one host sync is ``result()``, which also checks that the
        frames fit their sort's capacity and otherwise hands out ``redo()``'s; default: ``g`` rasterized again,
        sized exactly)."""
        e, v = stop - start, plan.images_per_frame
        budget = self.intersections
        capacity = 0 if exact else budget.capacity(e * v)
        with times.stage("rasterize", e, sync):
            result = self._rasterize(_per_view(g.arrays(), v), plan.viewmats[start * v:stop * v],
                                     plan.ks[start * v:stop * v], plan.width, plan.height, plan.background,
                                     intersection_capacity=capacity)
        count, readback = result.intersections, None
        if capacity and count is not None:
            readback = CountReadback(count, capacity, e * v)     # queued ahead of the frame's pixels
        elif isinstance(count, int):
            budget.observe(count, e * v)                         # an exact render's count, on the host already
        with times.stage("to host" if plan.output != "device" else "frame", e):
            frames = FRAME_FORMATS[plan.output](result.rgb, result.alpha)
            if plan.views:
                frames = frames.reshape(e, v, *frames.shape[1:])     # [E, V, H, W, C]
            if plan.output == "device":
                if readback is not None:
                    self._unchecked.append(readback)             # checked once its frame is done (a later call)
                return frames                                    # no host sync at all
            redo = redo or (lambda: self._frames_of(plan, g, start, stop, times, sync, exact=True))
            host = _HostFrames(frames, readback, budget, redo)
            return host if times is _NO_TIMES else host.result()

    def _compiled_chunk(self, avatar: Avatar, plan: "_FramePlan", start: int, stop: int):
        """Frames start:stop through compiled frames (frame lock held, engine stream) → as ``_frames_of``; None where
        they do not apply: off (or off since one failed), or a CUDA sort to size exactly (its host sync cannot be
        part of a CUDA graph)."""
        if not self._compiled_frames or plan.views:
            return None
        e = stop - start
        capacity = _compiled_capacity(self.intersections.capacity(e))
        if capacity == 0 and self.array_device == "cuda":
            return None
        try:
            frames, count = self._compiled_frames_of(avatar, plan, start, stop, capacity)
        except FlexAvatarError:
            raise                                          # a typed error (the caller's input): not the compiler's
        except Exception as err:  # noqa: BLE001 - compiling or capturing a frame is an optimisation
            # (Dynamo, Inductor and CUDA-graph capture can each refuse one on some version or GPU): the separate
            # calls still render it, and every frame after it
            text = str(err).strip().splitlines()
            log.warning("compiled frames failed (%s: %s); rendering with the decoder and the rasterizer called one "
                        "after the other from now on", type(err).__name__, text[0][:300] if text else "")
            self._compiled_frames = False
            return None
        # everything that reads the compiled outputs is queued now, before the next call overwrites them (on CUDA
        # they are CUDA-graph buffers)
        readback = CountReadback(count, capacity, e) if capacity else None
        if plan.output == "device":
            if readback is not None:
                self._unchecked.append(readback)          # checked once its frame is done (a later call)
            return frames.clone() if self.array_device == "cuda" else frames
        return _HostFrames(frames, readback, self.intersections,
                           redo=lambda: self._submit_chunk(avatar, plan, start, stop, exact=True))

    def _compiled_frames_of(self, avatar: Avatar, plan: "_FramePlan", start: int, stop: int, capacity: int):
        """(frames, count) of frames start:stop: the torch-compile engine's whole frame (``frames``), or this engine's
        decoder then the compiled rasterizer and pixel format (``engines.raster_function``)."""
        pixels = FRAME_FORMATS[plan.output]
        if hasattr(self.decoder, "frames"):              # torch-compile (it has no code-folded decoder)
            model, feeds = self._decoder_for(avatar)
            return model.frames(feeds["code"], plan.expressions[start:stop], plan.viewmats[start:stop],
                                plan.ks[start:stop], plan.background, plan.width, plan.height, capacity, pixels)
        import torch

        from .engines import CompiledNetworkDecode, raster_function
        raster = self._rasters.get(pixels)
        if raster is None:
            raster = self._rasters[pixels] = CompiledNetworkDecode(None, self.array_device, half=False, freeze=False,
                                                                   function=raster_function(pixels))
        g = self._decode_chunk(avatar, plan.expressions[start:stop], False, copy=False)
        splats = [torch.from_numpy(x) if isinstance(x, np.ndarray) else x for x in g.arrays().values()]
        e = stop - start
        world2cam, intrinsics, backgrounds = _cameras_like(plan.viewmats[start:stop], plan.ks[start:stop],
                                                           plan.background, splats[0])
        return raster(*splats, world2cam.view(e, 1, 4, 4), intrinsics.view(e, 1, 3, 3), backgrounds.view(e, 1, 3),
                      plan.width, plan.height, capacity)

    # device frames whose counts may stay unchecked: past this many, the oldest's rasterizer is waited for
    UNCHECKED_BACKLOG = 3

    def _check_device_frames(self, wait: bool = False) -> None:
        """Counts of the frames handed out on the device, those whose rasterizer has finished (no wait: a live loop
        of device frames queues frame i + 1 while frame i runs), the oldest past UNCHECKED_BACKLOG, and with
        ``wait`` all (a render whose pixels go to the host waits for the GPU anyway); one over its capacity warns
        (IncompleteFrameWarning) and grows the budget."""
        while self._unchecked:
            try:
                readback = self._unchecked.popleft()
            except IndexError:                          # another thread took the last one
                return
            if not (wait or readback.ready()) and len(self._unchecked) < self.UNCHECKED_BACKLOG:
                self._unchecked.appendleft(readback)    # its frame still runs: checked at a later call
                return
            if not readback.fits(self.intersections):
                self.intersections.report_incomplete(readback.value(), readback.capacity)

    def _pipelines(self, n_frames: int, output: str, timings: StageTimes | None) -> bool:
        """On CUDA without timings, a render of several chunks hands out each chunk's pixels once the next chunk's
        decoder is queued: the caller works on them (writes the video, shows them) while the GPU decodes."""
        return timings is None and self.array_device == "cuda" and output != "device" and n_frames > self.batch

    def _rasterize(self, splats: dict, viewmats: np.ndarray, ks: np.ndarray, width: int, height: int,
                   background: np.ndarray, like=None, intersection_capacity: int = 0) -> kernels.RenderResult:
        """One image per frame of ``splats`` (Splats fields, [E, G, …]) with this runtime's rasterizer; host arrays
        are moved to where ``like`` (default: the means) lives. viewmats [E, 4, 4] world→camera, ks [E, 3, 3].
        intersection_capacity: see ``kernels.rasterize`` (0: sized exactly)."""
        like = splats["means"] if like is None else like
        world2cam, intrinsics, backgrounds = _cameras_like(viewmats, ks, background, like)
        arrays = {k: v if array_kind(v) == array_kind(like) else _like(v, like) for k, v in splats.items()}
        return kernels.rasterize(kernels.Splats(**arrays), kernels.Cameras(world2cam=world2cam, K=intrinsics),
                                 width, height, background=backgrounds, backend=self.rasterizer,
                                 check_values=self._check_values, intersection_capacity=intersection_capacity)

    def _rasterize_frames(self, splats: dict, viewmats: np.ndarray, ks: np.ndarray, width: int, height: int,
                          like=None) -> np.ndarray:
        """``_rasterize`` on white → float RGB [E, H, W, 3] on the host."""
        with self.engine.stream():
            return to_numpy(self._rasterize(splats, viewmats, ks, width, height, np.asarray(WHITE, np.float32),
                                            like).rgb)

    # ---- numerics on this machine -----------------------------------------------------------------------
    def check_numerics(self):
        """Run the bundle's check set (check.npz: inputs with the PyTorch fp32 outputs recorded at export)
        through this engine, precision, device and rasterizer → ``NumericsReport`` (``report.passed``,
        ``print(report.table())``). What the export checked on its own machine, checked where this runs."""
        from .numerics import check_numerics
        return check_numerics(self)


def _compiled_capacity(capacity: int) -> int:
    """The budget's sort capacity as compiled frames take it: rounded up to a power of two. A compiled frame is
    compiled for its capacity (an int, specialised by Dynamo); powers of two keep it the same as the count creeps
    up and from one run to the next (Inductor's cache on disk then serves it), for at most 2× the slots."""
    if capacity <= 0:
        return capacity
    rounded = 1 << (capacity - 1).bit_length()
    return rounded if rounded <= MAX_INTERSECTION_CAPACITY else capacity


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _NoTimes:
    """StageTimes stand-in that records nothing (no syncs, no clock reads)."""

    def stage(self, name, frames=1, sync=None):
        return _NULL_CONTEXT


class _NullContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NULL_CONTEXT = _NullContext()
_NO_TIMES = _NoTimes()


__all__ = ["Runtime", "Gaussians", "PendingFrames", "apply_pose", "FRAME_FORMATS", "WHITE"]
