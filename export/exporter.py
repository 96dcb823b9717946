"""``export_bundle``: checkpoint → checked avatar bundle (ONNX fp32/fp16, OpenVINO IR, manifest.json).

Steps (each reported through ``progress``):
  1. load the model (checkpoint, template, config, optional DINOv2) and, with ``avatar``, the photo;
  2. build fixed, seeded reference inputs and the PyTorch fp32 reference outputs (public model API);
  3. per artifact: export / convert into a staging folder (with target ``onnx-ort``, the decoders also with ONNX
     Runtime's fused contrib kernels, ``ort_fusions``), run it (ONNX Runtime or OpenVINO, CPU) on the
     reference inputs and compare with PyTorch (fp32: max abs error ≤ 1e-4 on every output; fp16: errors
     reported, PSNR of a rendered 512² image against the fp32 render ≥ 40 dB) — a failure aborts;
  4. write manifest.json, re-open the staged bundle (hashes + metadata), rename it into place.

Writing is atomic: everything goes to ``.<name>.partial-*`` beside the output folder, renamed at the end;
any failure (Ctrl-C included) removes it, and an existing bundle is only replaced with ``force=True``.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

import flexavatar
from flexavatar.bundle import (CHECK_FILE, FORMAT_ONNX, FORMAT_ONNX_ORT, FORMAT_OPENVINO, GAUSSIAN_OUTPUTS,
                               PRECISIONS, PSNR_TARGET_DB, ROLE_DECODER, ROLE_DECODER_AVATAR, SCHEMA, SCHEMA_VERSION,
                               TORCH_MODEL_FILE, AvatarInfo, Bundle, CheckInfo, Conventions, FileRecord,
                               Manifest, ModelArtifact, ModelInfo, ModelMetadata, OutputParity, ParityReport,
                               TemplateInfo, file_record, sha256_file)
from flexavatar.cameras import default_camera, orbit_cameras
from flexavatar.config import FlexConfig
from flexavatar.dinov2 import DinoV2
from flexavatar.errors import CheckpointError, FlexAvatarError, TemplateError
from flexavatar import expression as expr_layout
from flexavatar.expression import EXPRESSION, ROTATION_SLOTS, neutral_expression
from flexavatar.model import MULTI_VIEW_DATASET_ID, AvatarCode, FlexAvatarModel
from flexavatar.template import Template

from .errors import ExportArgumentError, ExportStepError, OutputDirError, OutputExistsError, ParityError
from .graph_passes import GPU_CONV_FORMS, apply_gpu_conv_form
from .graphs import DecoderGraph, EncoderFeaturesGraph, EncoderGraph, GraphSpec, avatar_decoder_spec
from .ort_fusions import fuse_for_onnxruntime
from .onnx_tools import (FP16_FP32_OPS, INT8_OPS, export_graph, save_checked, set_metadata, specialise, to_fp16,
                         to_int8)
from .openvino_tools import save_ir
from .parity import FP32_TOLERANCE, MAX_RECORDED_PSNR_DB, RENDER_DESCRIPTION, RUNNERS, compare, psnr, render_frontal

TARGET_PYTORCH = "pytorch"          # model.safetensors: the PyTorch model itself (FlexAvatarModel.save)
TARGETS = (FORMAT_ONNX, FORMAT_ONNX_ORT, FORMAT_OPENVINO, TARGET_PYTORCH)
# onnx-ort (the decoders with ONNX Runtime's fused kernels, export.ort_fusions) runs on ONNX Runtime only; on an
# H200 it made the fp16 decoder 1.13x and the whole frame 1.07x (Python) / 1.12x (C++) faster (2026-11-27), so it
# is written by default. pytorch (model.safetensors, as large as the checkpoint) is written on request.
DEFAULT_TARGETS = (FORMAT_ONNX, FORMAT_ONNX_ORT, FORMAT_OPENVINO)
# int8 (lossy: ~33 dB against fp32 on the random-weight FLEX-1 decoder, 1.5x faster on a CPU) on request
DEFAULT_PRECISIONS = ("fp32", "fp16")
INT8 = "int8"
# int8 files: the decoders (every frame; the encoder runs once per avatar and stays fp32) as standard ONNX
INT8_ROLES = (ROLE_DECODER, ROLE_DECODER_AVATAR)
# 23: one node each for attention, RMS norm and GELU (checked with ONNX Runtime 1.31-1.32 and OpenVINO 2026.4);
# --opset 18 writes them out as primitive ops for older runtimes
DEFAULT_OPSET = 23
# the upsampler's convolutions in the fp16 ONNX decoders as exported (graph_passes.GPU_CONV_FORMS): the GPU forms
# are measured on a GPU before one becomes the default (benchmarks/device/upsampler_forms.py)
DEFAULT_GPU_CONV_FORM = "transposed"
MIN_OPSET = 18
MAX_OPSET = 25         # torch 2.13's exporter: asked for 26 or more it silently writes opset 18 with newer nodes
TEMPLATE_FILE_NAME = "gghead_template.obj"
AVATAR_CODE_FILE = "avatar_code.npy"
FP16_MAX = float(np.finfo(np.float16).max)
FP16_MIN_HEADROOM = 8     # warn when an fp16 tensor of the check comes within this factor of FP16_MAX
N_CHECK_EXPRESSIONS = 3          # parity inputs use E = 3; graphs are traced with E = 2 (dynamic E exercised)
TRACE_EXPRESSIONS = 2
REFERENCE_SEED = 1234
Progress = Callable[[str], None]


@dataclass(frozen=True)
class ExportResult:
    path: Path
    manifest: Manifest
    summary: str          # the table printed at the end
    seconds: float


# ---- public entry point -------------------------------------------------------------------------------

def export_bundle(checkpoint: str | Path | dict, out_dir: str | Path, *, template: str | Path | Template | None = None,
                  dinov2: str | Path | DinoV2 | None = None, config: str | Path | FlexConfig | None = None,
                  precisions: Iterable[str] = DEFAULT_PRECISIONS, targets: Iterable[str] = DEFAULT_TARGETS,
                  avatar: str | Path | None = None, camera: str | Path | None = None, opset: int = DEFAULT_OPSET,
                  force: bool = False, strict_fp16: bool = False, gpu_conv_form: str = DEFAULT_GPU_CONV_FORM,
                  progress: Progress | None = print) -> ExportResult:
    """Export a FlexAvatar checkpoint into a checked bundle folder ``out_dir`` (see the module docstring).

    checkpoint: flat state dict file (.pt / .safetensors); template: gghead_template.obj (default: beside the
    checkpoint); dinov2: DINOv2 weight file or module (without it the encoder takes DINOv2 features as an
    input: role ``encoder_features``); config: FlexConfig or model_config.json (default FLEX-1);
    avatar: a photo (square RGB(A) image file or .npy [S, S, 3] in [0, 1]) to encode and specialise a
    decoder to; camera: JSON {"cam2world": 4×4, "intrinsics": 3×3 normalised} for that photo.
    precisions: subset of ``PRECISIONS`` (default ``DEFAULT_PRECISIONS``); "int8" adds the decoders as ONNX with int8
    MatMul weights (``<role>.int8.onnx``, for CPUs; needs the onnx target). fp32 files that miss the 1e-4 tolerance
    always abort the export; fp16 / int8 files below their PSNR target (``PSNR_TARGET_DB``: 40 / 30 dB) are kept,
    flagged (``parity.passed = false`` in the manifest) and warned about — or abort with ``strict_fp16``.
    gpu_conv_form: the upsampler's convolutions in the fp16 ONNX decoders (the GPU files; fp32 files and OpenVINO
    IRs keep the exported form): a key of ``graph_passes.GPU_CONV_FORMS``, checked like any other conversion.
    targets: subset of ``TARGETS`` (default ``DEFAULT_TARGETS``); ``onnx-ort`` adds each decoder (both roles, every
    precision asked for) with ONNX Runtime's fused kernels as ``<role>.<precision>.ort.onnx``, checked like the rest.
    """
    started = time.perf_counter()
    say = progress or (lambda _msg: None)
    precisions, targets = _choices(precisions, PRECISIONS, "precisions"), _choices(targets, TARGETS, "targets")
    _require_packages(with_openvino="openvino" in targets)
    if INT8 in precisions and FORMAT_ONNX not in targets:
        raise ExportArgumentError(f"precision int8 is written as ONNX only (the decoders, for ONNX Runtime's CPU "
                                  f"provider): add onnx to the targets (got {list(targets)})")
    if set(targets) == {FORMAT_ONNX_ORT}:
        say(f"WARNING: targets {list(targets)} hold decoders only: the bundle will have no encoder, so photos cannot "
            "be turned into avatars with it (add onnx or openvino to the targets)")
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportArgumentError(f"opset must be an integer in [{MIN_OPSET}, {MAX_OPSET}] (default {DEFAULT_OPSET}), "
                                  f"got {opset!r}")
    if gpu_conv_form not in GPU_CONV_FORMS:
        raise ExportArgumentError(f"gpu_conv_form must be one of {list(GPU_CONV_FORMS)}, got {gpu_conv_form!r}")
    if camera is not None and avatar is None:
        raise ExportArgumentError("camera is the photo's camera: it needs avatar=PHOTO")
    if avatar is not None and dinov2 is None:   # else the photo would be encoded with made-up DINOv2 features
        raise ExportArgumentError("avatar=PHOTO needs DINOv2 to encode the photo: pass --dinov2 "
                                  "dinov2_vitb14_reg4_pretrain.pth (dinov2=...)")
    out_dir = Path(out_dir)
    inputs = {"checkpoint": checkpoint, "template": template, "config": config, "dinov2": dinov2,
              "avatar photo": avatar, "camera file": camera}
    _check_output_dir(out_dir, force, {k: Path(v) for k, v in inputs.items() if isinstance(v, (str, Path))})

    steps = _Steps(say)
    with steps.step("load model"):
        model, ckpt_info, template_source = _load_model(checkpoint, template, dinov2, config)
        photo = _load_photo(Path(avatar), model.config.image_size) if avatar is not None else None
        photo_cam = _load_camera(Path(camera)) if camera is not None else None
    with steps.step("PyTorch reference"):
        ref = _References.build(model, photo, photo_cam)
    with _Staging(out_dir, force) as staging:
        if photo is not None:
            AvatarCode(torch.from_numpy(ref.decoder_code).transpose(0, 1)).save(staging.path / AVATAR_CODE_FILE)
            ref.avatar_code_sha256 = sha256_file(staging.path / AVATAR_CODE_FILE)
        check_info = _write_check_set(staging.path, ref)
        jobs = _plan(model, ref, precisions, targets, opset, gpu_conv_form)
        steps.total = steps.done + len(jobs) + 1 + (TARGET_PYTORCH in targets)
        artifacts: list[ModelArtifact] = []
        for i, job in enumerate(jobs):
            with steps.step(f"{job.name}"):
                artifact = job.run(staging.path, opset, strict_fp16, say)
                if job.listed:
                    artifacts.append(artifact)
                say(f"      {_row_text(artifact, staging.path)}")
            if all(later.graph is not job.graph for later in jobs[i + 1:]):
                job.release()
        torch_model = None
        if TARGET_PYTORCH in targets:
            with steps.step(TORCH_MODEL_FILE):
                torch_model = _write_torch_model(staging.path, model, ref)
                say(f"      {TORCH_MODEL_FILE}: {torch_model.size / 2**20:.1f} MiB, reloaded: the same Gaussians")
        with steps.step("manifest + verify"):
            avatar_info = _avatar_info(staging.path, ref, Path(avatar)) if photo is not None else None
            for job in jobs:
                if not job.listed:
                    for f in job.written:
                        (staging.path / f).unlink(missing_ok=True)
            manifest = Manifest(
                schema=SCHEMA, schema_version=SCHEMA_VERSION,
                created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                versions=_versions(), opset=opset, model=ckpt_info, template=_template_info(model, template_source),
                conventions=_conventions(model), artifacts=tuple(artifacts), avatar=avatar_info,
                export_seconds=round(time.perf_counter() - started, 2), check=check_info, torch_model=torch_model)
            manifest.write(staging.path)
            bundle = Bundle.open(staging.path, verify="full")
            for artifact in bundle.manifest.artifacts:
                bundle.metadata(artifact)
            leftovers = sorted({p.name for p in staging.path.iterdir()}
                               - {Path(f.path).name for f in manifest.files()} - {"manifest.json"})
            if leftovers:
                raise ExportStepError("manifest", f"unlisted files in the staged bundle: {leftovers}")
        staging.commit()
    summary = summary_table(manifest, out_dir)
    say(summary)
    return ExportResult(out_dir, manifest, summary, time.perf_counter() - started)


# ---- progress -----------------------------------------------------------------------------------------

class _Steps:
    """`[k/N] name ... done in x s`; wraps unexpected (non-flexavatar) exceptions as ExportStepError."""

    def __init__(self, say: Progress):
        self.say, self.done, self.total = say, 0, 0

    def step(self, name: str):
        return _Step(self, name)


class _Step:
    def __init__(self, steps: _Steps, name: str):
        self.steps, self.name = steps, name

    def __enter__(self):
        s = self.steps
        total = f"/{s.total}" if s.total else ""
        s.say(f"[{s.done + 1}{total}] {self.name} ...")
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.steps.done += 1
            self.steps.say(f"      done in {time.perf_counter() - self.t0:.1f} s")
            return False
        if isinstance(exc, (FlexAvatarError, KeyboardInterrupt, SystemExit, MemoryError)):
            return False
        first = next((line for line in str(exc).splitlines() if line.strip()), "")[:300]
        raise ExportStepError(self.name, f"export step '{self.name}' failed: {type(exc).__name__}: {first} "
                                         "(nothing was written; the cause is chained below)") from exc


# ---- atomic output folder -----------------------------------------------------------------------------

def _check_output_dir(out_dir: Path, force: bool, inputs: dict[str, Path] | None = None) -> None:
    """Fails early, before minutes of export. ``inputs``: the argument files, which replacing the output
    folder (force) must never delete."""
    out = out_dir.resolve()
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents:
        raise OutputDirError(f"output folder {out_dir} is the current folder or one above it; choose a new "
                             "folder for the bundle (e.g. -o my_bundle)")
    for what, path in (inputs or {}).items():
        # the path as given (a symlink inside the folder would go too) and the file it points to
        if any(out == p or out in p.parents for p in (path.absolute().parent.resolve() / path.name, path.resolve())):
            raise OutputDirError(f"output folder {out_dir} holds the {what} {path}; replacing the folder would "
                                 "delete it: choose a new folder for the bundle")
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputDirError(f"output path {out_dir} exists and is a file; expected a folder path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise OutputExistsError(f"output folder {out_dir} already exists and is not empty; pass --force "
                                "(force=True) to replace it, or choose another folder")
    parent = out_dir.absolute().parent
    if not parent.is_dir():
        raise OutputDirError(f"parent folder of the output {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputDirError(f"cannot write into {parent} (no write permission); choose a writable output folder")
    try:   # fail now rather than after minutes of export (read-only file systems, /proc, ...)
        os.rmdir(tempfile.mkdtemp(prefix=f".{out_dir.name}.probe-", dir=parent))
    except OSError as e:
        raise OutputDirError(f"cannot create a staging folder in {parent}: {e.strerror}; choose a writable "
                             "output folder") from None


class _Staging:
    """A temp folder beside the output; removed on any exception, renamed into place by commit()."""

    def __init__(self, out_dir: Path, force: bool):
        self.out_dir, self.force = out_dir.absolute(), force
        self.path: Path | None = None

    def __enter__(self) -> "_Staging":
        try:
            self.path = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.partial-", dir=self.out_dir.parent))
        except OSError as e:
            raise OutputDirError(f"cannot create a staging folder in {self.out_dir.parent}: {e}") from None
        return self

    def commit(self) -> None:
        out, old = self.out_dir, None
        if out.exists() or out.is_symlink():
            if out.is_dir() and any(out.iterdir()) and not self.force:   # appeared while exporting
                raise OutputExistsError(f"output folder {out} appeared during the export; pass --force")
            old = out.with_name(f".{out.name}.old-{os.getpid()}-{time.time_ns()}")
            os.rename(out, old)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(self.path, 0o777 & ~mask)   # mkdtemp made it private
        try:
            os.rename(self.path, out)
        except BaseException:
            if old is not None:
                os.rename(old, out)
            raise
        self.path = None
        if old is not None and old.is_symlink():
            old.unlink()       # the output was a link (to a folder): rmtree refuses links; the target is kept
        elif old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def __exit__(self, exc_type, exc, tb):
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
        return False


# ---- loading ------------------------------------------------------------------------------------------

def _require_packages(with_openvino: bool) -> None:
    import importlib.util
    needed = ("onnx", "onnxscript", "onnxruntime") + (("openvino",) if with_openvino else ())
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportArgumentError(f"export needs {missing}: pip install 'flexavatar[export,runtime]' (CPU) or "
                                  "'flexavatar[export,gpu]' (CUDA)")


def _choices(values: Iterable[str], allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    values = tuple(values) if not isinstance(values, str) else tuple(v.strip() for v in values.split(","))
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise ExportArgumentError(f"{what} must be a non-empty subset of {list(allowed)}, got {list(values)}")
    return tuple(v for v in allowed if v in values)


def _load_model(checkpoint, template, dinov2, config) -> tuple[FlexAvatarModel, ModelInfo, str]:
    """→ the model, its manifest record and the template's source (file name) for the manifest."""
    if isinstance(checkpoint, (str, Path)) and Path(checkpoint).is_dir():
        raise CheckpointError(f"checkpoint {checkpoint} is a folder; expected the checkpoint file (.pt / .safetensors)")
    if isinstance(checkpoint, (str, Path)) and not Path(checkpoint).is_file():
        raise CheckpointError(f"checkpoint not found: {checkpoint}")        # before "no template beside it"
    if template is None:
        if not isinstance(checkpoint, (str, Path)):
            raise ExportArgumentError("template is required when the checkpoint is not a file")
        template = Path(checkpoint).parent / TEMPLATE_FILE_NAME
        if not template.is_file():
            raise TemplateError(f"no template given and no {TEMPLATE_FILE_NAME} beside the checkpoint; pass "
                                "--template path/to/gghead_template.obj (it is not shipped with flexavatar)")
    if isinstance(config, (str, Path)):
        config = FlexConfig.from_official_json(config)
    model = FlexAvatarModel.from_checkpoint(checkpoint, template=template, dinov2=dinov2, config=config)
    n_params = sum(p.numel() for p in model.network.parameters())
    n_params += sum(p.numel() for p in model.dinov2.parameters()) if model.dinov2 is not None else 0
    is_file = isinstance(checkpoint, (str, Path))
    info = ModelInfo(config=model.config.to_dict(),
                     checkpoint=Path(checkpoint).name if is_file else "<state dict>",
                     checkpoint_sha256=sha256_file(checkpoint) if is_file else _state_hash(checkpoint),
                     n_parameters=int(n_params),
                     dinov2=(Path(dinov2).name if isinstance(dinov2, (str, Path)) else
                             "<module>" if dinov2 is not None else None))
    return model, info, Path(template).name if isinstance(template, (str, Path)) else "<Template object>"


def _state_hash(state: dict) -> str:
    import hashlib
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def _load_photo(path: Path, size: int) -> torch.Tensor:
    """A square photo → [3, S, S] float32 in [0, 1] on white (alpha composited over white)."""
    if not path.is_file():
        raise ExportArgumentError(f"avatar photo not found: {path}")
    if path.suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False).astype(np.float32)
        except (OSError, ValueError) as e:
            raise ExportArgumentError(f"cannot read avatar photo {path}: {e}") from None
        if array.shape != (size, size, 3) or array.min() < 0 or array.max() > 1:
            raise ExportArgumentError(f"avatar photo {path}: expected float [{size}, {size}, 3] in [0, 1], got "
                                      f"{array.shape} in [{array.min():.3g}, {array.max():.3g}]")
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()
    try:
        from PIL import Image
    except ImportError:
        raise ExportArgumentError("reading photos needs Pillow: pip install 'flexavatar[export]'") from None
    try:
        with Image.open(path) as im:
            im.load()
            rgba = im.convert("RGBA")
    except OSError as e:
        raise ExportArgumentError(f"cannot read avatar photo {path}: {e}") from None
    if rgba.width != rgba.height:
        raise ExportArgumentError(f"avatar photo {path} is {rgba.width}x{rgba.height}; expected a square, "
                                  f"head-centred crop on white (it is resized to {size}x{size})")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB")
    if rgb.width != size:
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def _load_camera(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        raw = json.loads(path.read_text())
        c2w = torch.tensor(raw["cam2world"], dtype=torch.float32)
        k = torch.tensor(raw["intrinsics"], dtype=torch.float32)
    except FileNotFoundError:
        raise ExportArgumentError(f"camera file not found: {path}") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ExportArgumentError(f"camera file {path}: expected JSON {{\"cam2world\": 4x4 (OpenCV, head frame), "
                                  f"\"intrinsics\": 3x3 normalised}}; {type(e).__name__}: {e}") from None
    if c2w.shape != (4, 4) or k.shape != (3, 3):
        raise ExportArgumentError(f"camera file {path}: cam2world must be 4x4 and intrinsics 3x3, got "
                                  f"{tuple(c2w.shape)} and {tuple(k.shape)}")
    return c2w, k


# ---- reference inputs and outputs ---------------------------------------------------------------------

@dataclass
class _References:
    """Fixed inputs (numpy, float32) and PyTorch fp32 outputs shared by all checks."""
    model: FlexAvatarModel
    encoder_feeds: dict[str, np.ndarray]
    code: np.ndarray                        # PyTorch code of the encoder inputs [B, R², D]
    decoder_code: np.ndarray                # [1, R², D]: image 0's code (the photo's with avatar=)
    expressions: np.ndarray                 # [E, 135]
    decoded: list[np.ndarray]               # PyTorch decoder outputs for (decoder_code, expressions)
    render: np.ndarray                      # rgb [H, W, 3] of decoded frame 0
    cam2world: np.ndarray                   # [4, 4] render camera (= encoder camera 0)
    intrinsics: np.ndarray                  # [3, 3] normalised
    avatar_code_sha256: str = ""            # set once avatar_code.npy is written (avatar= given)

    @classmethod
    def build(cls, model: FlexAvatarModel, photo: torch.Tensor | None,
              photo_cam: tuple[torch.Tensor, torch.Tensor] | None) -> "_References":
        cfg = model.config
        gen = np.random.default_rng(REFERENCE_SEED)
        images = torch.from_numpy(np.stack([_synthetic_photo(gen, cfg.image_size) for _ in range(2)]))
        c2w0, k0 = default_camera()
        cam2world = torch.stack([c2w0, orbit_cameras(8, radius=0.2)[1]])
        intrinsics = torch.stack([k0, k0])
        if photo is not None:
            images[0] = photo
            if photo_cam is not None:
                cam2world[0], intrinsics[0] = photo_cam
        feeds = {"image": images.numpy(), "cam2world": cam2world.numpy(), "intrinsics": intrinsics.numpy()}
        features = None
        if model.dinov2 is None:
            g = 16  # DINOv2's 224/14 patch grid
            features = torch.from_numpy(gen.standard_normal((2, 1, cfg.feature_dim, g, g)).astype(np.float32))
            feeds["features"] = features[:, 0].numpy()
        code = model.encode(images, cam2world, intrinsics, features=features).tokens      # [R², B, D]
        expressions = neutral_expression(N_CHECK_EXPRESSIONS)
        expressions[:, EXPRESSION] += torch.from_numpy(gen.standard_normal((N_CHECK_EXPRESSIONS, 100))
                                                       .astype(np.float32)) * 0.7
        for s in ROTATION_SLOTS:
            expressions[:, s] += torch.from_numpy(gen.standard_normal((N_CHECK_EXPRESSIONS, 6))
                                                  .astype(np.float32)) * 0.05
        expressions[0] = neutral_expression(1)[0]
        code0 = code[:, :1]
        decoded = _decode(model, code0, expressions)
        ref = cls(model=model, encoder_feeds=feeds, code=code.transpose(0, 1).contiguous().numpy(),
                  decoder_code=code0.transpose(0, 1).contiguous().numpy(), expressions=expressions.numpy(),
                  decoded=decoded, render=np.zeros(0), cam2world=cam2world[0].numpy(), intrinsics=intrinsics[0].numpy())
        ref.render = ref.render_of(decoded)
        return ref

    def render_of(self, decoded: list[np.ndarray]) -> np.ndarray:
        from flexavatar.bundle import GAUSSIAN_OUTPUTS
        return render_frontal(dict(zip(GAUSSIAN_OUTPUTS, decoded, strict=True)), self.cam2world, self.intrinsics)

    def decode_with_torch(self, code: np.ndarray) -> list[np.ndarray]:
        """[1, R², D] code (e.g. from an fp16 encoder) → PyTorch decoder outputs on self.expressions."""
        return _decode(self.model, torch.from_numpy(code).transpose(0, 1), torch.from_numpy(self.expressions))


def _decode(model: FlexAvatarModel, code: torch.Tensor, expressions: torch.Tensor) -> list[np.ndarray]:
    g = model.decode(AvatarCode(code), expressions, dataset_id=MULTI_VIEW_DATASET_ID)
    return [t.numpy() for t in (g.means, g.quats, g.scales, g.opacities, g.sh0)]


def _synthetic_photo(gen: np.random.Generator, size: int) -> np.ndarray:
    """A smooth coloured ellipse ("head") on white: [3, S, S] in [0, 1]."""
    low = torch.from_numpy(gen.uniform(0.1, 0.9, (1, 3, 8, 8)).astype(np.float32))
    colour = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    mask = torch.from_numpy((((xx - 0.5) / 0.3) ** 2 + ((yy - 0.5) / 0.4) ** 2 < 1).astype(np.float32))
    return (colour * mask + (1 - mask)).numpy()


# ---- artifacts ----------------------------------------------------------------------------------------

@dataclass
class _Graph:
    """One exportable graph with its reference feeds, expected outputs and how to judge fp16."""
    spec: GraphSpec
    build: Callable[[], object]                     # → its fp32 ONNX ModelProto
    feeds: dict[str, np.ndarray]
    expected: list[np.ndarray]
    fp16_render: Callable[[list[np.ndarray]], np.ndarray]   # outputs → rgb to compare with the fp32 render
    inputs_text: str
    notes: str = ""
    avatar_code_sha256: str = ""
    forget: Callable[[], None] = lambda: None       # drops the traced protos only this graph still reads


@dataclass
class _Job:
    graph: _Graph
    format: str
    precision: str
    listed: bool                                  # False: built only as the source of other artifacts
    ref: _References
    source: Callable[[], object]                  # → a copy of the graph's fp32 ONNX ModelProto (built once)
    release: Callable[[], None] = lambda: None    # after the graph's last job: frees its fp32 proto (GBs at FLEX-1)
    # fp16 decoders: the graph's fp16 ONNX file holds this GPU convolution form (graph_passes.GPU_CONV_FORMS)
    gpu_conv_form: str = DEFAULT_GPU_CONV_FORM
    written: tuple[str, ...] = ()
    fusions: str = ""                             # onnx-ort: what fuse_for_onnxruntime wrote (the manifest's notes)

    @property
    def name(self) -> str:
        return f"{self.graph.spec.role}.{self.precision}.{self.format}"

    @property
    def rewrites_convs(self) -> bool:
        """This file is (derived from) the fp16 ONNX decoder in a GPU convolution form other than the exported one."""
        return self.format in (FORMAT_ONNX, FORMAT_ONNX_ORT) and self.gpu_conv_form != DEFAULT_GPU_CONV_FORM

    @property
    def notes(self) -> str:
        parts = [self.graph.notes]
        if self.rewrites_convs:
            parts.append(f"upsampler convolutions in the GPU form {self.gpu_conv_form!r} (export.graph_passes)")
        if self.fusions:
            parts.append(f"ONNX Runtime only: {self.fusions} (export.ort_fusions)")
        return "; ".join(p for p in parts if p)

    @property
    def file_names(self) -> tuple[str, ...]:
        stem = f"{self.graph.spec.role}.{self.precision}"
        return {FORMAT_ONNX: (f"{stem}.onnx",), FORMAT_ONNX_ORT: (f"{stem}.ort.onnx",),
                FORMAT_OPENVINO: (f"{stem}.xml", f"{stem}.bin")}[self.format]

    def run(self, folder: Path, opset: int, strict_fp16: bool, warn: Progress) -> ModelArtifact:
        props = _metadata(self.ref.model, self.graph, self.precision).to_props()
        WRITERS[(self.format, self.precision)](self, folder, opset, props)
        self.written = self.file_names
        return self.check(folder, strict_fp16, warn)

    def check(self, folder: Path, strict_fp16: bool, warn: Progress) -> ModelArtifact:
        g = self.graph
        runner = RUNNERS[(self.format, self.precision)]
        result = runner.run(folder / self.file_names[0], g.feeds)
        got, peak = result.outputs, result.fp16_peak_abs
        names = g.spec.output_names
        fp32 = self.precision == "fp32"
        rows = compare(names, got, g.expected, FP32_TOLERANCE if fp32 else None)
        overflow = peak is not None and not peak < FP16_MAX
        if not fp32 and (overflow or not all(np.isfinite(o).all() for o in got)):
            bad = [n for n, o in zip(names, got, strict=True) if not np.isfinite(o).all()]
            where = f"non-finite values on {bad}" if bad else f"an fp16 tensor reaching {peak:g}"
            why = (f"an activation exceeds the fp16 range (±{FP16_MAX:g}) with these weights"
                   if self.precision == "fp16" else "the quantized graph is not finite with these weights")
            raise ParityError(f"{self.name} gives {where} ({runner.describe()}): {why}; export fp32 only "
                              "(--precision fp32)")
        if peak is not None and peak > FP16_MAX / FP16_MIN_HEADROOM:
            warn(f"      WARNING: {self.name}: an fp16 tensor reaches {peak:.4g}, within {FP16_MIN_HEADROOM}x of fp16's "
                 f"{FP16_MAX:g}: other inputs may overflow on a GPU (prefer the fp32 files there)")
        psnr_db, target_db = None, None if fp32 else PSNR_TARGET_DB[self.precision]
        if not fp32:
            # identical renders give inf, which strict JSON (the manifest) cannot hold: recorded as the cap
            psnr_db = round(min(psnr(g.fp16_render(got), self.ref.render), MAX_RECORDED_PSNR_DB), 2)
        passed = all(r.passed for r in rows) and (psnr_db is None or psnr_db >= target_db)
        report = ParityReport(
            reference="pytorch-fp32", runtime=runner.describe(), inputs=g.inputs_text, outputs=rows, passed=passed,
            psnr_db=psnr_db, psnr_target_db=target_db,
            render=None if fp32 else RENDER_DESCRIPTION,
            fp16_peak_abs=None if peak is None else float(f"{peak:.4g}"))
        artifact = ModelArtifact(
            name=self.name, role=g.spec.role, format=self.format, precision=self.precision,
            files=tuple(file_record(folder, f) for f in self.file_names), inputs=g.spec.inputs,
            outputs=g.spec.outputs, parity=report, fp32_ops=() if fp32 else _fp32_ops(self.format, self.precision),
            notes=self.notes)
        if not passed and (fp32 or strict_fp16 or not all(r.passed for r in rows)):
            raise ParityError(f"{self.name} does not match PyTorch: " + _failure_text(report))
        if not passed:
            warn(f"      WARNING: {self.name}: {_failure_text(report)}; kept and flagged (parity.passed = false "
                 "in manifest.json); strict_fp16 / --strict-fp16 makes this an error")
        return artifact


def _fp32_ops(fmt: str, precision: str) -> tuple[str, ...]:
    # OpenVINO's fp16 IR stores the fp16 ONNX's weights; the device picks the compute precision (f32 on
    # CPU when INFERENCE_PRECISION_HINT=f32, as checked here), so every op computes in float32 there.
    if fmt == FORMAT_OPENVINO:
        return ("all (fp16 weights only; compute precision set by the device)",)
    if precision == INT8:
        return (f"all but {' and '.join(INT8_OPS)} (int8 weights per output channel, inputs quantized to uint8 per "
                "tensor at run time)",)
    return FP16_FP32_OPS


def _failure_text(report: ParityReport) -> str:
    bad = [f"{o.name}: max abs error {o.max_abs_error:.3g} > {o.tolerance}" for o in report.outputs if not o.passed]
    if report.psnr_db is not None and report.psnr_target_db is not None and report.psnr_db < report.psnr_target_db:
        bad.append(f"rendered PSNR {report.psnr_db:.1f} dB < target {report.psnr_target_db:.0f} dB")
    return "; ".join(bad) + f" (runtime {report.runtime})"


def _write_onnx_fp32(job: _Job, folder: Path, opset: int, props: dict[str, str]) -> None:
    model = job.source()
    set_metadata(model, props, _doc(job))
    save_checked(model, folder / job.file_names[0])


def _write_onnx_fp16(job: _Job, folder: Path, opset: int, props: dict[str, str]) -> None:
    source = job.source()
    if job.rewrites_convs:
        apply_gpu_conv_form(source, job.gpu_conv_form)      # on the fp32 graph: weights fused before rounding
    model = to_fp16(source)
    set_metadata(model, props, _doc(job))
    save_checked(model, folder / job.file_names[0])


def _write_onnx_int8(job: _Job, folder: Path, opset: int, props: dict[str, str]) -> None:
    model = to_int8(job.source())                 # from the fp32 graph (the exported convolution form)
    set_metadata(model, props, _doc(job))
    save_checked(model, folder / job.file_names[0])


def _write_onnx_ort(job: _Job, folder: Path, opset: int, props: dict[str, str]) -> None:
    # from the ONNX file of the same precision (written first, see _plan): the same weights, fp16 rounding and GPU
    # convolution form, with ONNX Runtime's fused kernels where the patterns allow (checked like every file)
    model = onnx.load(str(folder / f"{job.graph.spec.role}.{job.precision}.onnx"))
    report = fuse_for_onnxruntime(model)
    job.fusions = ", ".join(f"{n} {what}" for what, n in report.counts.items())
    set_metadata(model, props, _doc(job))
    save_checked(model, folder / job.file_names[0])


def _write_ir(job: _Job, folder: Path, opset: int, props: dict[str, str]) -> None:
    # from the ONNX file of the same precision (always written first, see _plan): the fp16 IR keeps the
    # fp16 ONNX's choice of which constants stay float32 (OpenVINO's own compress_to_fp16 would round
    # every constant, GridSample's UV grid included). An fp16 ONNX decoder in a GPU convolution form is not the
    # source: the IR (CPUs, Intel GPUs) keeps the exported form, converted the same way.
    source = folder / f"{job.graph.spec.role}.{job.precision}.onnx"
    if job.gpu_conv_form == DEFAULT_GPU_CONV_FORM:
        save_ir(source, folder / job.file_names[0], props)
        return
    plain = folder / f".{job.graph.spec.role}.{job.precision}.exported-form.onnx"
    try:
        onnx.save_model(to_fp16(job.source()), str(plain))
        save_ir(plain, folder / job.file_names[0], props)
    finally:
        plain.unlink(missing_ok=True)


WRITERS: dict[tuple[str, str], Callable[[_Job, Path, int, dict[str, str]], None]] = {
    (FORMAT_ONNX, "fp32"): _write_onnx_fp32,
    (FORMAT_ONNX, "fp16"): _write_onnx_fp16,
    (FORMAT_ONNX, INT8): _write_onnx_int8,
    (FORMAT_ONNX_ORT, "fp32"): _write_onnx_ort,
    (FORMAT_ONNX_ORT, "fp16"): _write_onnx_ort,
    (FORMAT_OPENVINO, "fp32"): _write_ir,
    (FORMAT_OPENVINO, "fp16"): _write_ir,
}


def _doc(job: _Job) -> str:
    return (f"FlexAvatar {job.graph.spec.role} ({job.precision}), exported by flexavatar {flexavatar.__version__}. "
            "Conventions: see the bundle's manifest.json and the flexavatar.* metadata_props.")


DECODER_ROLES = (ROLE_DECODER, ROLE_DECODER_AVATAR)


def _plan(model: FlexAvatarModel, ref: _References, precisions: tuple[str, ...],
          targets: tuple[str, ...], opset: int, gpu_conv_form: str = DEFAULT_GPU_CONV_FORM) -> list[_Job]:
    """Jobs in order. The ONNX files of each graph come first (fp32, then fp16 from it; each fused decoder and
    each IR derives from the ONNX of its precision); an ONNX file built only as a source is kept out of the
    manifest (and deleted) when ONNX was not asked for in that precision. Fused files are for decoders only."""
    jobs = []
    for graph in _graphs(model, ref, opset):
        cache: dict[str, object] = {}

        def source(graph=graph, cache=cache):
            if "model" not in cache:
                cache["model"] = graph.build()
            copy = type(cache["model"])()
            copy.CopyFrom(cache["model"])
            return copy

        def release(graph=graph, cache=cache):
            cache.clear()
            graph.forget()

        derived = {FORMAT_OPENVINO} | ({FORMAT_ONNX_ORT} if graph.spec.role in DECODER_ROLES else set())
        graph_jobs = []
        for fmt in (FORMAT_ONNX, FORMAT_ONNX_ORT, FORMAT_OPENVINO):
            if fmt == FORMAT_ONNX_ORT and graph.spec.role not in DECODER_ROLES:
                continue                            # the encoder runs once per avatar: nothing to gain
            for precision in PRECISIONS:
                if precision == INT8 and (fmt != FORMAT_ONNX or graph.spec.role not in INT8_ROLES):
                    continue
                # an int8 bundle's encoder is its fp32 ONNX file (the runtime opens it for int8): always listed
                int8_encoder = (INT8 in precisions and (fmt, precision) == (FORMAT_ONNX, "fp32")
                                and graph.spec.role not in INT8_ROLES)
                wanted = fmt in targets and (precision in precisions or int8_encoder)
                source_of_derived = fmt == FORMAT_ONNX and bool(derived & set(targets)) and precision in precisions
                if wanted or source_of_derived or (fmt, precision) == (FORMAT_ONNX, "fp32"):
                    form = gpu_conv_form if precision == "fp16" and graph.spec.role in DECODER_ROLES \
                        else DEFAULT_GPU_CONV_FORM
                    graph_jobs.append(_Job(graph, fmt, precision, listed=wanted, ref=ref, source=source,
                                           release=release, gpu_conv_form=form))
        if any(job.listed for job in graph_jobs):      # a graph no target asks for (onnx-ort's encoder) is skipped
            jobs += graph_jobs
    return jobs


def _graphs(model: FlexAvatarModel, ref: _References, opset: int) -> list[_Graph]:
    net = model.network
    feeds = ref.encoder_feeds
    trace_enc = tuple(torch.from_numpy(v) for v in feeds.values())
    traced: dict[str, object] = {}

    def trace(module: torch.nn.Module, args: tuple, spec: GraphSpec) -> Callable[[], object]:
        def build():
            if spec.role not in traced:
                traced[spec.role] = export_graph(module, args, spec, opset)
            return traced[spec.role]
        return build

    def encoder_render(outputs: list[np.ndarray]) -> np.ndarray:
        return ref.render_of(ref.decode_with_torch(outputs[0][:1]))

    if model.dinov2 is not None:
        encoder = _Graph(EncoderGraph.spec(net), trace(EncoderGraph(net, model.dinov2), trace_enc,
                                                       EncoderGraph.spec(net)), feeds, [ref.code],
                         encoder_render, "2 seeded synthetic photos (or the --avatar photo first), two cameras",
                         notes="DINOv2 inside; its antialiased bilinear resize is two MatMuls")
    else:
        encoder = _Graph(EncoderFeaturesGraph.spec(net), trace(EncoderFeaturesGraph(net), trace_enc,
                                                               EncoderFeaturesGraph.spec(net)), feeds, [ref.code],
                         encoder_render, "2 seeded synthetic photos, two cameras, seeded 16x16 features",
                         notes="no DINOv2 weights given: DINOv2 features [B, C, h, w] are an input")
    trace_expr = torch.from_numpy(ref.expressions[:TRACE_EXPRESSIONS])
    code = torch.from_numpy(ref.decoder_code)
    dec_inputs = f"the reference code + {N_CHECK_EXPRESSIONS} seeded expressions (frame 0 neutral)"
    build_decoder = trace(DecoderGraph(net), (code, trace_expr), DecoderGraph.spec(net))
    decoder = _Graph(DecoderGraph.spec(net), build_decoder,
                     {"code": ref.decoder_code, "expressions": ref.expressions}, ref.decoded, ref.render_of,
                     dec_inputs, notes=f"dataset id {MULTI_VIEW_DATASET_ID} folded in; constant-folded")
    encoder.forget = lambda: traced.pop(encoder.spec.role, None)
    decoder.forget = lambda: traced.pop(decoder.spec.role, None)
    graphs = [encoder, decoder]
    if ref.avatar_code_sha256:
        def build_avatar_decoder():   # the generic decoder, its code input made a constant, folded
            return specialise(build_decoder(), {"code": ref.decoder_code})

        graphs.append(_Graph(avatar_decoder_spec(net), build_avatar_decoder,
                             {"expressions": ref.expressions}, ref.decoded, ref.render_of,
                             f"{N_CHECK_EXPRESSIONS} seeded expressions (frame 0 neutral)",
                             notes="avatar code folded in; code-only work precomputed by constant folding",
                             avatar_code_sha256=ref.avatar_code_sha256, forget=decoder.forget))
        decoder.forget = lambda: None               # the avatar decoder is built from the traced decoder later
    return graphs


# ---- manifest pieces ----------------------------------------------------------------------------------

def _metadata(model: FlexAvatarModel, graph: _Graph, precision: str) -> ModelMetadata:
    c = _conventions(model)
    return ModelMetadata(
        schema_version=SCHEMA_VERSION, role=graph.spec.role, precision=precision, n_gaussians=c.n_gaussians,
        template_sha256=model.template.sha256(), image_size=c.image_size, n_head_tokens=c.n_head_tokens,
        d_code=c.d_code, expression_dim=c.expression_dim, dataset_id=c.dataset_id, axes=c.axes,
        intrinsics=c.intrinsics, quaternion_order=c.quaternion_order, color=c.color, code_layout=c.code_layout,
        flexavatar_version=flexavatar.__version__, avatar_code_sha256=graph.avatar_code_sha256)


def _conventions(model: FlexAvatarModel) -> Conventions:
    cfg = model.config
    return Conventions(image_size=cfg.image_size, n_gaussians=model.template.n_gaussians,
                       n_head_tokens=cfg.n_head_tokens, d_code=cfg.d_hidden,
                       expression_dim=cfg.d_expression_codes, expression_layout=_expression_layout(),
                       dataset_id=MULTI_VIEW_DATASET_ID)


def _expression_layout() -> dict[str, tuple[int, int]]:
    names = ("EXPRESSION", "EYE_LEFT", "EYE_RIGHT", "EYELIDS", "NECK", "JAW", "HEAD_ROTATION", "HEAD_TRANSLATION")
    return {n.lower(): (getattr(expr_layout, n).start, getattr(expr_layout, n).stop) for n in names}


def _template_info(model: FlexAvatarModel, source: str) -> TemplateInfo:
    cfg = model.config
    return TemplateInfo(sha256=model.template.sha256(), n_gaussians=model.template.n_gaussians,
                        res_head_tokens=cfg.res_head_tokens, res_gaussian_grid=cfg.res_gaussian_grid,
                        source=source)


def _write_torch_model(folder: Path, model: FlexAvatarModel, ref: _References) -> FileRecord:
    """model.safetensors (``FlexAvatarModel.save``), checked: the file loads back into a model whose Gaussians on
    the reference inputs are PyTorch's reference outputs, bit for bit (the same weights on the same machine)."""
    path = folder / TORCH_MODEL_FILE
    model.save(path)
    reloaded = FlexAvatarModel.load(path)
    got = _decode(reloaded, torch.from_numpy(ref.decoder_code).transpose(0, 1), torch.from_numpy(ref.expressions))
    bad = [name for name, g, w in zip(GAUSSIAN_OUTPUTS, got, ref.decoded, strict=True) if not np.array_equal(g, w)]
    if bad or reloaded.template.sha256() != model.template.sha256():
        raise ParityError(f"{TORCH_MODEL_FILE} does not reload into the exported model: "
                          f"{bad or 'its template'} differ")
    return file_record(folder, TORCH_MODEL_FILE)


def _write_check_set(folder: Path, ref: _References) -> CheckInfo:
    """check.npz: image 0 of the reference inputs and the PyTorch outputs it gave (the code; the Gaussians of
    that code on the check expressions), so that any engine can be checked where it runs (flexavatar-verify)."""
    arrays = {name: np.ascontiguousarray(value[:1], dtype=np.float32) for name, value in ref.encoder_feeds.items()}
    arrays["code"] = ref.decoder_code
    arrays["expressions"] = ref.expressions
    arrays.update({name: value for name, value in zip(GAUSSIAN_OUTPUTS, ref.decoded, strict=True)})
    with (folder / CHECK_FILE).open("wb") as fh:
        np.savez(fh, **{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()})
    photo = "the --avatar photo" if ref.avatar_code_sha256 else "a seeded synthetic portrait"
    return CheckInfo(file=file_record(folder, CHECK_FILE), n_expressions=len(ref.expressions),
                     description=f"{photo} at the encoder's first camera → its avatar code; that code and "
                                 f"{len(ref.expressions)} expressions (neutral, then seeded random) → Gaussians; "
                                 "outputs of the PyTorch model in float32")


def _avatar_info(folder: Path, ref: _References, photo: Path) -> AvatarInfo:
    return AvatarInfo(code=file_record(folder, AVATAR_CODE_FILE), photo=photo.name, photo_sha256=sha256_file(photo),
                      cam2world=tuple(tuple(float(x) for x in row) for row in ref.encoder_feeds["cam2world"][0]),
                      intrinsics=tuple(tuple(float(x) for x in row) for row in ref.encoder_feeds["intrinsics"][0]))


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import onnxscript
    try:     # an ONNX-only export does not need OpenVINO
        import openvino
        openvino_version = openvino.get_version().split("-")[0]
    except ImportError:
        openvino_version = "not installed"
    return {"flexavatar": flexavatar.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__, "onnxruntime": onnxruntime.__version__,
            "openvino": openvino_version, "numpy": np.__version__, "python": platform.python_version()}


# ---- summary ------------------------------------------------------------------------------------------

def _worst(report: ParityReport) -> OutputParity:
    return max(report.outputs, key=lambda o: o.max_abs_error)


def _row_text(a: ModelArtifact, folder: Path) -> str:
    w = _worst(a.parity)
    size = sum(f.size for f in a.files) / 2**20
    tol = f" (tol {w.tolerance:g})" if w.tolerance is not None else ""
    psnr_text = f", PSNR {a.parity.psnr_db:.1f} dB" if a.parity.psnr_db is not None else ""
    peak = a.parity.fp16_peak_abs
    peak_text = f", fp16 peak |x| {peak:.3g} ({FP16_MAX / peak:.0f}x headroom)" if peak else ""
    return f"{a.name}: {size:.1f} MiB, max abs err {w.max_abs_error:.2e} on {w.name}{tol}{psnr_text}{peak_text}"


def summary_table(manifest: Manifest, folder: Path) -> str:
    head = (f"{'artifact':<30} {'files':<36} {'MiB':>8} {'worst abs err':>13} {'on':<9} {'tol':>7} {'PSNR dB':>8} "
            f"{'check':<7}")
    lines = [f"bundle {folder} ({manifest.export_seconds:.1f} s, {len(manifest.artifacts)} models, "
             f"G = {manifest.conventions.n_gaussians})", head, "-" * len(head)]
    for a in manifest.artifacts:
        w = _worst(a.parity)
        size = sum(f.size for f in a.files) / 2**20
        psnr_text = f"{a.parity.psnr_db:.1f}" if a.parity.psnr_db is not None else "-"
        tol = f"{w.tolerance:g}" if w.tolerance is not None else "report"
        lines.append(f"{a.name:<30} {' + '.join(f.path for f in a.files):<36} {size:>8.2f} "
                     f"{w.max_abs_error:>13.2e} {w.name:<9} {tol:>7} {psnr_text:>8} "
                     f"{'ok' if a.parity.passed else 'FLAGGED'}")
    if manifest.avatar is not None:
        lines.append(f"{'avatar code':<30} {manifest.avatar.code.path:<36} {manifest.avatar.code.size / 2**20:>8.2f}")
    if manifest.torch_model is not None:
        lines.append(f"{'PyTorch model':<30} {manifest.torch_model.path:<36} {manifest.torch_model.size / 2**20:>8.2f}  "
                     "reloaded: the same Gaussians (the torch / torch-compile engines need nothing else)")
    if manifest.check is not None:
        lines.append(f"{'check set':<30} {manifest.check.file.path:<36} {manifest.check.file.size / 2**20:>8.2f}  "
                     f"on the machine that runs the bundle: flexavatar-verify {folder}")
    return "\n".join(lines)
