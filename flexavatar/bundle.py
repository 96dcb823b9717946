"""The avatar bundle: ``manifest.json`` schema, loader and the metadata stored in each model file.

A bundle is a folder written by ``flexavatar-export`` (``flexavatar.export.export_bundle``)::

    bundle/
      manifest.json              this schema (``SCHEMA``, ``SCHEMA_VERSION``)
      encoder.fp32.onnx          photo (+ camera) → avatar code; DINOv2 inside the graph
      encoder_features.fp32.onnx ... or this variant when no DINOv2 weights were given (features input)
      decoder.fp32.onnx          avatar code + expressions [E, 135] → Gaussians [E, G, …] (per frame)
      decoder.fp16.onnx          fp16 variant (inputs/outputs stay float32)
      decoder.fp16.ort.onnx      with target onnx-ort: the same decoder with ONNX Runtime's fused contrib kernels
                                 (runs on ONNX Runtime only; its CUDA provider prefers it)
      decoder.fp32.xml / .bin    OpenVINO IR (one artifact, two files)
      avatar_code.npy            with --avatar: the photo's code, official layout (R², 1, D) float32
      decoder_avatar.fp32.onnx   with --avatar: decoder specialised to that code (input: expressions only)
      check.npz                  fixed inputs and the PyTorch fp32 outputs they gave at export: checks an engine
                                 on the machine that runs it (``Bundle.check_set``; flexavatar-verify)
      model.safetensors          with target pytorch: the PyTorch model itself (FlexAvatarModel.save: weights,
                                 template tensors, DINOv2, configs), for the torch / torch-compile engines

This module imports neither torch nor onnx (only the standard library; numpy lazily for
``Bundle.avatar_code``), so a runtime built on ONNX Runtime or OpenVINO alone can use it.

Stable API (used by the exporter and by the runtimes)
-----------------------------------------------------
``Bundle.open(path, verify="full" | "size" | "none") -> Bundle``
    Reads and validates ``manifest.json`` into a typed ``Manifest`` and checks every listed file
    (exists; size; sha256 when ``verify="full"``, the default).
``bundle.artifact(role, format="onnx", precision="fp32") -> ModelArtifact``; ``bundle.artifacts(role=None, ...)``
``bundle.path(artifact) -> Path`` (the ``.onnx`` or ``.xml`` file); ``bundle.avatar_code() -> ndarray [1, R², D]``
``bundle.check_set() -> CheckSet`` (``check.npz``, validated against the manifest's shapes)
``bundle.metadata(artifact) -> ModelMetadata`` (ONNX ``metadata_props`` / IR ``rt_info``, and the graph's
    declared inputs / outputs, cross-checked against the manifest)
``read_onnx_metadata(path) -> ModelMetadata``: reads an ``.onnx`` file's ``metadata_props`` with a small
    protobuf scanner that skips the graph (instant even for a 700 MB file; no onnx / onnxruntime needed);
    ``read_onnx_signature`` / ``read_openvino_signature``: the graph's inputs and outputs (names, dims).
``Manifest.from_dict / to_dict / read / write``; ``ModelMetadata.from_props / to_props``.
Roles: ``ROLE_ENCODER``, ``ROLE_ENCODER_FEATURES``, ``ROLE_DECODER``, ``ROLE_DECODER_AVATAR``; formats
``FORMAT_ONNX``, ``FORMAT_ONNX_ORT`` (ONNX with ONNX Runtime's ``com.microsoft`` contrib ops: ONNX Runtime
only), ``FORMAT_OPENVINO``; precisions ``"fp32"``, ``"fp16"``, ``"int8"`` (decoders as ONNX only: int8 weights of the
MatMuls, activations quantized at run time; for CPUs). An artifact of a role, format or precision not listed here (a
newer exporter's) is left aside by ``Manifest.from_dict`` with a warning and named in ``Manifest.ignored``.

Tensor conventions (also recorded in ``Manifest.conventions`` and in every model's metadata):
OpenCV camera axes (+x right, +y down, +z forward), cam2world 4×4 in the canonical head frame, metres;
intrinsics normalised (pixel K's first two rows divided by the image size); quaternions (w, x, y, z);
colour = SH degree-0 coefficients (rgb = max(0.28209479·sh0 + 0.5, 0)); the avatar code is
batch-first ``[B, R², D]`` in the graphs (the ``.npy`` file holds the official ``(R², 1, D)``, the same
bytes for B = 1); expressions are the 135-d FLEX code (``Conventions.expression_layout``); the decoder
uses dataset id 1 (the multi-view token).

Errors: every problem raises a ``BundleError`` subclass — ``ManifestError`` (malformed / unsupported
schema), ``BundleFileMissingError``, ``BundleHashMismatchError`` (sha256 or size differs),
``BundleMetadataError`` (model metadata or graph inputs / outputs missing or disagreeing with the manifest),
``BundleFileError`` (a listed file links out of the bundle folder, or avatar_code.npy / check.npz is malformed),
``ArtifactNotFoundError`` (no artifact with that role / format / precision), ``TensorNotFoundError`` (no tensor
of that name; also a ``KeyError``). The manifest is strict JSON: NaN / Infinity are refused, read and written.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import FlexAvatarError
from .files import atomic_open

log = logging.getLogger(__name__)

SCHEMA = "flexavatar-bundle"
SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
METADATA_PREFIX = "flexavatar."

ROLE_ENCODER = "encoder"                    # image [B,3,S,S] + cam2world + intrinsics → code
ROLE_ENCODER_FEATURES = "encoder_features"  # same + DINOv2 features [B,C,h,w] as an input (no DINOv2 inside)
ROLE_DECODER = "decoder"                    # code [1,R²,D] + expressions [E,135] → Gaussians [E,G,…]
ROLE_DECODER_AVATAR = "decoder_avatar"      # expressions [E,135] → Gaussians (code folded in)
CHECK_FILE = "check.npz"                    # Manifest.check: the numerics check set (Bundle.check_set)
TORCH_MODEL_FILE = "model.safetensors"      # Manifest.torch_model: FlexAvatarModel.save of the exported model
# The least PSNR of a frame rendered from an artifact's Gaussians vs the PyTorch fp32 model's, per precision: the
# export's fp16 check, and every artifact in flexavatar-verify. fp32 files render at 95-105 dB on a CPU; 60 dB leaves
# room for another machine's summation order and still fails bf16 compute (~32 dB on the reduced fixture model).
# int8 (dynamic quantization, lossy by design): the random-weight FLEX-1 decoder renders at ~33 dB.
PSNR_TARGET_DB = {"fp32": 60.0, "fp16": 40.0, "int8": 30.0}
ROLES = (ROLE_ENCODER, ROLE_ENCODER_FEATURES, ROLE_DECODER, ROLE_DECODER_AVATAR)
FORMAT_ONNX = "onnx"                        # standard ONNX: ONNX Runtime, OpenVINO, any ONNX runtime
FORMAT_ONNX_ORT = "onnx-ort"                # ONNX with ONNX Runtime's contrib ops (com.microsoft): ONNX Runtime only
FORMAT_OPENVINO = "openvino"
FORMATS = (FORMAT_ONNX, FORMAT_ONNX_ORT, FORMAT_OPENVINO)
PRECISIONS = ("fp32", "fp16", "int8")
DTYPES = ("float32", "float16", "int64", "int32", "uint8", "bool")
VERIFY_MODES = ("full", "size", "none")

# Decoder output names and their per-Gaussian trailing shapes ([E, G] + trailing).
GAUSSIAN_OUTPUTS = {"means": (3,), "quats": (4,), "scales": (3,), "opacities": (), "sh0": (3,)}

# The tensors each role's graph takes and gives (what the runtimes feed and read): name → rank.
_ENCODER_INPUTS = {"image": 4, "cam2world": 3, "intrinsics": 3}
_GAUSSIANS = {name: 2 + len(trail) for name, trail in GAUSSIAN_OUTPUTS.items()}
ROLE_TENSORS: dict[str, tuple[dict[str, int], dict[str, int]]] = {
    ROLE_ENCODER: (_ENCODER_INPUTS, {"code": 3}),
    ROLE_ENCODER_FEATURES: ({**_ENCODER_INPUTS, "features": 4}, {"code": 3}),
    ROLE_DECODER: ({"code": 3, "expressions": 2}, _GAUSSIANS),
    ROLE_DECODER_AVATAR: ({"expressions": 2}, _GAUSSIANS),
}


# ---- errors ---------------------------------------------------------------------------------------

class BundleError(FlexAvatarError):
    """Base class of every bundle problem."""


class ManifestError(BundleError, ValueError):
    """manifest.json is missing, not JSON, of another schema/version, or a field is wrong."""


class BundleFileMissingError(BundleError, FileNotFoundError):
    """A file the manifest lists is not in the bundle folder."""


class BundleHashMismatchError(BundleError):
    """A bundle file's size or sha256 differs from the manifest (corrupted, truncated or replaced)."""


class BundleMetadataError(BundleError):
    """A model file's embedded metadata is missing, unreadable or disagrees with the manifest."""


class BundleFileError(BundleError, ValueError):
    """A listed file cannot be used: it links out of the bundle folder, or its content is malformed."""


class ArtifactNotFoundError(BundleError, LookupError):
    """The bundle has no model with the requested role / format / precision."""


class TensorNotFoundError(BundleError, KeyError):
    """A model (or its parity report) has no tensor of that name."""

    def __str__(self) -> str:           # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


# ---- typed manifest -------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorSpec:
    """One model input or output. shape: ints, or strings naming dynamic dims (e.g. "E")."""
    name: str
    shape: tuple[int | str, ...]
    dtype: str

    @property
    def is_dynamic(self) -> bool:
        return any(isinstance(d, str) for d in self.shape)


@dataclass(frozen=True)
class FileRecord:
    """A file of the bundle: path relative to the bundle root (POSIX), sha256 hex digest, size in bytes."""
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class OutputParity:
    """Max abs error of one output against the PyTorch fp32 reference, and its tolerance (None = report only)."""
    name: str
    max_abs_error: float
    tolerance: float | None
    passed: bool


@dataclass(frozen=True)
class ParityReport:
    """How one exported model was checked before the export reported success."""
    reference: str                      # e.g. "pytorch-fp32"
    runtime: str                        # e.g. "onnxruntime 1.32.0 CPUExecutionProvider"
    inputs: str                         # what was fed (fixed, seeded)
    outputs: tuple[OutputParity, ...]
    passed: bool
    psnr_db: float | None = None        # fp16: PSNR of a rendered image against the fp32 render
    psnr_target_db: float | None = None
    render: str | None = None           # how the PSNR image was rendered
    fp16_peak_abs: float | None = None  # fp16 ONNX: the largest |value| an fp16 tensor took (headroom to 65504)

    def output(self, name: str) -> OutputParity:
        for o in self.outputs:
            if o.name == name:
                return o
        raise TensorNotFoundError(f"parity report has no output {name!r}; it has {[o.name for o in self.outputs]}")


@dataclass(frozen=True)
class ModelArtifact:
    """One runnable model. files[0] is the model file (.onnx / .xml); an IR's .bin follows."""
    name: str                           # unique key, e.g. "decoder.fp16.onnx"
    role: str
    format: str
    precision: str
    files: tuple[FileRecord, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parity: ParityReport
    fp32_ops: tuple[str, ...] = ()      # fp16 models: op types kept in float32
    notes: str = ""

    @property
    def path(self) -> str:
        return self.files[0].path

    def input(self, name: str) -> TensorSpec:
        return _by_name(self.inputs, name, f"{self.name} inputs")

    def output(self, name: str) -> TensorSpec:
        return _by_name(self.outputs, name, f"{self.name} outputs")


@dataclass(frozen=True)
class Conventions:
    axes: str = "opencv"                           # +x right, +y down, +z forward
    camera: str = "cam2world 4x4, canonical FLAME head frame, metres"
    intrinsics: str = "normalised"                 # pixel K rows 0-1 divided by the image size
    image: str = "RGB float32 in [0, 1], white background, [B, 3, S, S]"
    image_size: int = 512
    quaternion_order: str = "wxyz"
    color: str = "sh0"                             # SH degree-0 coefficients
    sh_degree: int = 0
    sh0_to_rgb: str = "rgb = max(0.28209479 * sh0 + 0.5, 0)"
    scales: str = "per-axis standard deviations, metres"
    opacities: str = "in (0, 1), activated"
    units: str = "metres"
    n_gaussians: int = 0
    n_head_tokens: int = 0                         # R²
    d_code: int = 0                                # D
    code_layout: str = "[B, R2, D] batch-first in the graphs"
    code_file_layout: str = "(R2, 1, D) float32 .npy (official layout; same bytes as [1, R2, D])"
    expression_dim: int = 135
    expression_layout: dict[str, tuple[int, int]] = field(default_factory=dict)   # name → [start, stop)
    dataset_id: int = 1                            # multi-view / 3D bias token, fixed in the decoder


@dataclass(frozen=True)
class TemplateInfo:
    sha256: str                         # flexavatar.template.Template.sha256(): the derived buffers
    n_gaussians: int
    res_head_tokens: int
    res_gaussian_grid: int
    source: str                         # file name of the OBJ (never shipped)


@dataclass(frozen=True)
class ModelInfo:
    config: dict[str, Any]              # FlexConfig fields
    checkpoint: str                     # file name
    checkpoint_sha256: str
    n_parameters: int
    dinov2: str | None                  # DINOv2 weight file name, None when the encoder takes features


@dataclass(frozen=True)
class AvatarInfo:
    code: FileRecord                    # avatar_code.npy, (R², 1, D) float32
    photo: str                          # file name of the encoded photo
    photo_sha256: str
    cam2world: tuple[tuple[float, ...], ...]
    intrinsics: tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class CheckInfo:
    """check.npz: fixed, seeded inputs with the PyTorch fp32 outputs they gave at export (``CheckSet``)."""
    file: FileRecord
    n_expressions: int
    description: str


@dataclass(frozen=True)
class CheckSet:
    """The arrays of check.npz. Encoder: ``image`` [1, 3, S, S] in [0, 1] on white, ``cam2world`` [1, 4, 4],
    ``intrinsics`` [1, 3, 3] (normalised), ``features`` [1, C, h, w] or None (bundles without DINOv2) →
    ``code`` [1, R², D]. Decoder: ``code`` + ``expressions`` [E, 135] → ``gaussians`` (GAUSSIAN_OUTPUTS
    names, [E, G, …]). All float32, all computed by the PyTorch model in float32."""
    image: Any
    cam2world: Any
    intrinsics: Any
    features: Any
    code: Any
    expressions: Any
    gaussians: dict[str, Any]


@dataclass(frozen=True)
class Manifest:
    schema: str
    schema_version: int
    created: str                        # ISO 8601 UTC
    versions: dict[str, str]            # package versions used by the export (flexavatar, torch, onnx, ...)
    opset: int
    model: ModelInfo
    template: TemplateInfo
    conventions: Conventions
    artifacts: tuple[ModelArtifact, ...]
    avatar: AvatarInfo | None = None
    export_seconds: float = 0.0
    check: CheckInfo | None = None      # absent in bundles written before check.npz existed
    torch_model: FileRecord | None = None   # model.safetensors (export target pytorch), else absent
    # artifacts of a role, format or precision this flexavatar does not know (a newer exporter's): "NAME (why)".
    # Not part of the file (to_dict leaves it out): what this reader left aside.
    ignored: tuple[str, ...] = field(default=(), compare=False)

    # -- lookup --
    def find(self, role: str | None = None, format: str | None = None,
             precision: str | None = None) -> list[ModelArtifact]:
        return [a for a in self.artifacts if (role is None or a.role == role)
                and (format is None or a.format == format) and (precision is None or a.precision == precision)]

    def artifact(self, role: str, format: str = FORMAT_ONNX, precision: str = "fp32") -> ModelArtifact:
        hits = self.find(role, format, precision)
        if not hits:
            raise ArtifactNotFoundError(f"bundle has no {role} model in format {format!r} at precision "
                                        f"{precision!r}; it has: {self.inventory()}")
        return hits[0]

    def inventory(self) -> str:
        """The artifacts by name, and those left aside (``ignored``), for error messages."""
        have = ", ".join(a.name for a in self.artifacts) or "none"
        return have + (f" (and, unknown to this flexavatar: {', '.join(self.ignored)})" if self.ignored else "")

    def files(self) -> list[FileRecord]:
        out = [f for a in self.artifacts for f in a.files]
        return (out + ([self.avatar.code] if self.avatar else []) + ([self.check.file] if self.check else [])
                + ([self.torch_model] if self.torch_model else []))

    # -- (de)serialisation --
    def to_dict(self) -> dict[str, Any]:
        raw = asdict(self)
        del raw["ignored"]
        return _jsonable(raw, "manifest")

    @classmethod
    def from_dict(cls, raw: Any) -> "Manifest":
        r = _Reader(raw, "manifest")
        schema = r.str("schema")
        if schema != SCHEMA:
            raise ManifestError(f"manifest.schema is {schema!r}, expected {SCHEMA!r} (not a flexavatar bundle)")
        version = r.int("schema_version")
        if version != SCHEMA_VERSION:
            raise ManifestError(f"manifest.schema_version is {version}; this flexavatar reads version "
                                f"{SCHEMA_VERSION} — re-export the bundle or upgrade flexavatar")
        # an artifact of a kind this flexavatar does not know (a newer exporter's format, role or precision) is left
        # aside, not an error: the bundle's other files still run here
        artifacts, ignored = [], []
        for entry in r.list("artifacts", _Reader.obj):
            unknown = _unknown_kind(entry)
            if unknown:
                ignored.append(f"{entry.str('name')} ({unknown})")
                log.warning("%s: %s: left aside (flexavatar %s does not know it; upgrade flexavatar to run it)",
                            entry.where, ignored[-1], _package_version())
            else:
                artifacts.append(_artifact(entry))
        artifacts = tuple(artifacts)
        avatar = None
        if r.get("avatar") is not None:
            a = r.sub("avatar")
            avatar = AvatarInfo(code=_file(a.sub("code")), photo=a.str("photo"), photo_sha256=a.str("photo_sha256"),
                                cam2world=_matrix(a, "cam2world", 4), intrinsics=_matrix(a, "intrinsics", 3))
        check = None
        if r.get("check") is not None:
            c = r.sub("check")
            check = CheckInfo(file=_file(c.sub("file")), n_expressions=c.count("n_expressions"),
                              description=c.str("description"))
        torch_model = _file(r.sub("torch_model")) if r.get("torch_model") is not None else None
        _check_unique(artifacts, avatar, check, torch_model)
        return cls(
            schema=schema, schema_version=version, created=r.str("created"),
            versions={k: str(v) for k, v in r.obj("versions").items()}, opset=r.int("opset"),
            model=_model_info(r.sub("model")), template=_template(r.sub("template")),
            conventions=_conventions(r.sub("conventions")), artifacts=artifacts, avatar=avatar,
            export_seconds=r.float("export_seconds", default=0.0), check=check, torch_model=torch_model,
            ignored=tuple(ignored))

    @classmethod
    def read(cls, path: str | Path) -> "Manifest":
        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST_NAME
        if not path.is_file():
            raise ManifestError(f"no {MANIFEST_NAME} at {path}: not a flexavatar bundle (export one with "
                                "flexavatar-export)")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise ManifestError(f"{path} cannot be read: {e}") from None
        except RecursionError:
            raise ManifestError(f"{path} is not a readable manifest: its JSON is nested too deeply") from None
        except ValueError as e:     # not JSON, not UTF-8, or an integer literal of thousands of digits
            raise ManifestError(f"{path} is not valid JSON: {e}") from None
        return cls.from_dict(raw)

    def write(self, folder: str | Path) -> Path:
        """Write manifest.json into folder atomically (temp file + rename), as strict JSON (no NaN/Infinity)."""
        path = Path(folder) / MANIFEST_NAME
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        with atomic_open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        return path


# ---- per-model metadata (ONNX metadata_props, OpenVINO rt_info) -----------------------------------

@dataclass(frozen=True)
class ModelMetadata:
    """The key facts every exported model carries itself (keys prefixed ``flexavatar.`` in the file)."""
    schema_version: int
    role: str
    precision: str
    n_gaussians: int
    template_sha256: str
    image_size: int
    n_head_tokens: int
    d_code: int
    expression_dim: int
    dataset_id: int
    axes: str
    intrinsics: str
    quaternion_order: str
    color: str
    code_layout: str
    flexavatar_version: str
    avatar_code_sha256: str = ""        # decoder_avatar only: sha256 of the folded-in avatar_code.npy

    def to_props(self) -> dict[str, str]:
        return {METADATA_PREFIX + f.name: str(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_props(cls, props: dict[str, str], where: str = "model") -> "ModelMetadata":
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = METADATA_PREFIX + f.name
            if key not in props:
                if f.default is not MISSING:
                    continue
                raise BundleMetadataError(f"{where}: metadata key {key!r} is missing (found keys: "
                                          f"{sorted(props)[:8]}); was it exported by flexavatar-export?")
            raw = props[key]
            if f.type in ("int", int):
                try:
                    values[f.name] = int(raw)
                except ValueError:
                    raise BundleMetadataError(f"{where}: metadata {key}={raw!r} is not an integer") from None
            else:
                values[f.name] = raw
        meta = cls(**values)
        if meta.schema_version != SCHEMA_VERSION:
            raise BundleMetadataError(f"{where}: metadata schema_version {meta.schema_version}, expected "
                                      f"{SCHEMA_VERSION}")
        return meta



def read_onnx_metadata_props(path: str | Path) -> dict[str, str]:
    """All ``metadata_props`` of an ONNX file, read without parsing the graph.

    Scans the top level of the ModelProto protobuf (field 14 = metadata_props, StringStringEntryProto
    {1: key, 2: value}) and seeks past every other field, so the cost is independent of the weights.
    """
    path = _onnx_file(path)
    props: dict[str, str] = {}
    with path.open("rb") as fh:
        for _, length in _scan(fh, path.stat().st_size, path, {14}):
            key, value = _parse_string_entry(fh.read(length), path)
            props[key] = value
    return props


# A graph's declared inputs or outputs: (the tensor's names, its dims: ints, negative or None when dynamic;
# None for a tensor declared without a shape).
Signature = list[tuple[frozenset[str], tuple[int | None, ...] | None]]


def read_onnx_signature(path: str | Path) -> tuple[Signature, Signature]:
    """(inputs, outputs) that an ONNX file's graph declares, read like ``read_onnx_metadata_props``
    (ModelProto.graph = 7 → GraphProto.input = 11 / output = 12; nodes and weights are skipped)."""
    path = _onnx_file(path)
    sides: dict[int, Signature] = {11: [], 12: []}
    with path.open("rb") as fh:
        for _, graph_length in _scan(fh, path.stat().st_size, path, {7}):
            for field_no, length in _scan(fh, fh.tell() + graph_length, path, {11, 12}):
                sides[field_no].append(_value_info(fh.read(length), path))
    return sides[11], sides[12]


def read_openvino_signature(xml_path: str | Path) -> tuple[Signature, Signature]:
    """(inputs, outputs) of an OpenVINO IR: its Parameter and Result layers (dims of -1 are dynamic)."""
    root = _openvino_xml(xml_path)
    inputs: Signature = []
    outputs: Signature = []
    for layer in root.iterfind("layers/layer"):
        kind = layer.get("type")
        if kind not in ("Parameter", "Result"):
            continue
        port = layer.find("output/port" if kind == "Parameter" else "input/port")
        if port is None:
            continue
        names = port.get("names") if kind == "Parameter" else layer.get("output_names")
        dims = tuple(int(d.text) if (d.text or "").strip().lstrip("-").isdigit() else None for d in port.iter("dim"))
        (inputs if kind == "Parameter" else outputs).append(
            (frozenset(n.strip() for n in (names or layer.get("name", "")).split(",")), dims))
    return inputs, outputs


def read_onnx_metadata(path: str | Path) -> ModelMetadata:
    """The typed flexavatar metadata of an ONNX file (see ``ModelMetadata``)."""
    return ModelMetadata.from_props(read_onnx_metadata_props(path), where=str(path))


def read_openvino_metadata(xml_path: str | Path) -> ModelMetadata:
    """The typed flexavatar metadata of an OpenVINO IR (``<rt_info><flexavatar><key value=.../>``)."""
    root = _openvino_xml(xml_path)
    node = root.find("rt_info/flexavatar")
    if node is None:
        raise BundleMetadataError(f"{xml_path}: no <rt_info><flexavatar> section; was it exported by "
                                  "flexavatar-export?")
    props = {METADATA_PREFIX + child.tag: child.get("value", "") for child in node}
    return ModelMetadata.from_props(props, where=str(xml_path))


@dataclass(frozen=True)
class _FormatReader:
    """How a format's model file is named and read (metadata and declared inputs / outputs)."""
    suffix: str
    metadata: Any
    signature: Any


_FORMAT_READERS = {
    FORMAT_ONNX: _FormatReader(".onnx", read_onnx_metadata, read_onnx_signature),
    FORMAT_ONNX_ORT: _FormatReader(".onnx", read_onnx_metadata, read_onnx_signature),
    FORMAT_OPENVINO: _FormatReader(".xml", read_openvino_metadata, read_openvino_signature),
}


def _onnx_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise BundleFileMissingError(f"ONNX file not found: {path}")
    return path


def _openvino_xml(xml_path: str | Path):
    import xml.etree.ElementTree as ET
    xml_path = Path(xml_path)
    if not xml_path.is_file():
        raise BundleFileMissingError(f"OpenVINO IR not found: {xml_path}")
    try:
        return ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        raise BundleMetadataError(f"{xml_path}: not a readable OpenVINO IR XML: {e}") from None


# ---- the bundle -----------------------------------------------------------------------------------

class Bundle:
    """An exported bundle folder with its validated manifest."""

    def __init__(self, root: Path, manifest: Manifest):
        self.root = root
        self.manifest = manifest

    @classmethod
    def open(cls, path: str | Path, verify: str = "full") -> "Bundle":
        """verify: "full" (sizes + sha256 of every file), "size" (existence + sizes), "none"."""
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
        root = Path(path)
        if not root.is_dir():
            raise BundleFileMissingError(f"bundle folder not found: {root}")
        bundle = cls(root, Manifest.read(root / MANIFEST_NAME))
        if verify != "none":
            bundle.verify(hashes=(verify == "full"))
        return bundle

    def verify(self, hashes: bool = True) -> None:
        for rec in self.manifest.files():
            verify_file(self.root, rec, hashes)

    def artifact(self, role: str, format: str = FORMAT_ONNX, precision: str = "fp32") -> ModelArtifact:
        return self.manifest.artifact(role, format, precision)

    def artifacts(self, role: str | None = None, format: str | None = None,
                  precision: str | None = None) -> list[ModelArtifact]:
        return self.manifest.find(role, format, precision)

    def path(self, artifact: ModelArtifact | str) -> Path:
        """The model file (.onnx / .xml) of an artifact, or a file of the bundle; every file of the artifact
        must lie inside the bundle folder once links are resolved (else ``BundleFileError``)."""
        rels = [f.path for f in artifact.files] if isinstance(artifact, ModelArtifact) else [artifact]
        for rel in rels:
            inside_bundle(self.root, rel)
        return self.root / rels[0]

    def metadata(self, artifact: ModelArtifact) -> ModelMetadata:
        """The model file's own metadata and declared inputs / outputs, checked against the manifest (role,
        precision, template, conventions; tensor names, ranks and fixed dims)."""
        reader = _FORMAT_READERS[artifact.format]
        path = self.path(artifact)
        meta = reader.metadata(path)
        m, c = self.manifest, self.manifest.conventions
        expect = {"role": artifact.role, "precision": artifact.precision, "n_gaussians": c.n_gaussians,
                  "template_sha256": m.template.sha256,
                  "avatar_code_sha256": m.avatar.code.sha256 if m.avatar and artifact.role == ROLE_DECODER_AVATAR
                  else ""}
        for key in ("image_size", "n_head_tokens", "d_code", "expression_dim", "dataset_id", "axes", "intrinsics",
                    "quaternion_order", "color", "code_layout"):
            expect[key] = getattr(c, key)
        bad = {k: (getattr(meta, k), v) for k, v in expect.items() if getattr(meta, k) != v}
        if bad:
            detail = ", ".join(f"{k}: file says {got!r}, manifest {want!r}" for k, (got, want) in bad.items())
            raise BundleMetadataError(f"{artifact.path}: metadata disagrees with the manifest ({detail})")
        graph_inputs, graph_outputs = reader.signature(path)
        _check_signature(artifact.inputs, graph_inputs, f"{artifact.path}: input")
        _check_signature(artifact.outputs, graph_outputs, f"{artifact.path}: output")
        return meta

    def avatar_code(self):
        """The avatar code of ``--avatar`` as float32 ``[1, R², D]`` (numpy, imported lazily)."""
        import numpy as np
        info = self.manifest.avatar
        if info is None:
            raise ArtifactNotFoundError("bundle has no avatar code (export with --avatar PHOTO)")
        c = self.manifest.conventions
        expected = f"a float (R², 1, D) = ({c.n_head_tokens}, 1, {c.d_code}) array"
        try:
            with self.path(info.code.path).open("rb") as fh:
                code = np.load(fh, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise BundleFileError(f"avatar.code {info.code.path}: not a readable .npy file ({e}); expected "
                                  f"{expected}") from None
        if (not isinstance(code, np.ndarray) or code.dtype.kind != "f"
                or code.shape != (c.n_head_tokens, 1, c.d_code)):
            got = (f"{code.dtype} {code.shape}" if isinstance(code, np.ndarray) else "an .npz archive")
            raise BundleFileError(f"avatar.code {info.code.path}: holds {got}; expected {expected}")
        return code.reshape(1, c.n_head_tokens, c.d_code).astype(np.float32, copy=False)

    def check_set(self) -> CheckSet:
        """check.npz (``Manifest.check``), every array's shape and dtype checked against the manifest."""
        import numpy as np
        info = self.manifest.check
        if info is None:
            raise ArtifactNotFoundError("bundle has no check set (check.npz): it was exported by a flexavatar "
                                        "older than the numerics check; re-export it with flexavatar-export")
        c, e = self.manifest.conventions, info.n_expressions
        g, s = c.n_gaussians, c.image_size
        shapes: dict[str, tuple[int | None, ...]] = {
            "image": (1, 3, s, s), "cam2world": (1, 4, 4), "intrinsics": (1, 3, 3),
            "code": (1, c.n_head_tokens, c.d_code), "expressions": (e, c.expression_dim),
            **{name: (e, g, *tail) for name, tail in GAUSSIAN_OUTPUTS.items()}}
        where = f"check.file {info.file.path}"
        try:
            with self.path(info.file.path).open("rb") as fh, np.load(fh, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, EOFError, KeyError) as e:
            raise BundleFileError(f"{where}: not a readable .npz archive ({e})") from None
        features = arrays.pop("features", None)
        if features is not None:
            shapes["features"] = (1, None, None, None)
            arrays["features"] = features
        missing = sorted(set(shapes) - set(arrays))
        if missing:
            raise BundleFileError(f"{where}: arrays {missing} are missing; expected {sorted(shapes)}")
        for name, want in shapes.items():
            a = arrays[name]
            if (a.dtype != np.float32 or a.ndim != len(want)
                    or any(w is not None and w != n for w, n in zip(want, a.shape, strict=True))):
                text = ", ".join("?" if w is None else str(w) for w in want)
                raise BundleFileError(f"{where}: {name} holds {a.dtype} {list(a.shape)}; expected float32 [{text}]")
        return CheckSet(image=arrays["image"], cam2world=arrays["cam2world"], intrinsics=arrays["intrinsics"],
                        features=features, code=arrays["code"], expressions=arrays["expressions"],
                        gaussians={name: arrays[name] for name in GAUSSIAN_OUTPUTS})


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_record(root: str | Path, relpath: str) -> FileRecord:
    """Hash and size a file of a bundle folder."""
    p = Path(root) / relpath
    return FileRecord(path=Path(relpath).as_posix(), sha256=sha256_file(p), size=p.stat().st_size)


def inside_bundle(root: str | Path, relpath: str) -> Path:
    """root / relpath, refused (``BundleFileError``) when it resolves outside root (a link out of the bundle)."""
    root = Path(root)
    try:
        inside = (root / relpath).resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError) as e:            # e.g. a symlink loop
        raise BundleFileError(f"bundle file {relpath}: cannot resolve its path ({e})") from None
    if not inside:
        raise BundleFileError(f"bundle file {relpath} links to {(root / relpath).resolve()}, outside the bundle "
                              f"folder {root}: every listed file must be inside it")
    return root / relpath


def verify_file(root: str | Path, rec: FileRecord, hashes: bool = True) -> None:
    p = inside_bundle(root, rec.path)
    if not p.is_file():
        raise BundleFileMissingError(f"bundle file missing: {rec.path} (listed in {MANIFEST_NAME} of {root})")
    size = p.stat().st_size
    if size != rec.size:
        raise BundleHashMismatchError(f"bundle file {rec.path} has {size} bytes, the manifest says {rec.size} "
                                      "(truncated or replaced?)")
    if hashes:
        digest = sha256_file(p)
        if digest != rec.sha256:
            raise BundleHashMismatchError(f"bundle file {rec.path}: sha256 {digest[:16]}… differs from the "
                                          f"manifest's {rec.sha256[:16]}… (corrupted or replaced)")


# ---- validation helpers ---------------------------------------------------------------------------

class _Reader:
    """Typed access to one JSON object; every error names the field path and what was expected."""

    def __init__(self, raw: Any, where: str):
        if not isinstance(raw, dict):
            raise ManifestError(f"{where} must be a JSON object, got {type(raw).__name__}")
        self.raw, self.where = raw, where

    def get(self, key: str) -> Any:
        return self.raw.get(key)

    def _need(self, key: str, default: Any = ...) -> Any:
        if key not in self.raw:
            if default is not ...:
                return default
            raise ManifestError(f"{self.where}.{key} is missing")
        return self.raw[key]

    def _typed(self, key: str, types: tuple, what: str, default: Any = ...) -> Any:
        value = self._need(key, default)
        if not isinstance(value, types) or isinstance(value, bool) and bool not in types:
            raise ManifestError(f"{self.where}.{key} must be {what}, got {value!r}")
        return value

    def str(self, key: str, default: Any = ...) -> str:
        return self._typed(key, (str,), "a string", default)

    def int(self, key: str, default: Any = ...) -> int:
        return self._typed(key, (int,), "an integer", default)

    def count(self, key: str) -> int:
        value = self.int(key)
        if value < 0:
            raise ManifestError(f"{self.where}.{key} must be ≥ 0, got {value}")
        return value

    def float(self, key: str, default: Any = ...) -> float:
        return _finite(self._typed(key, (int, float), "a number", default), f"{self.where}.{key}")

    def opt_float(self, key: str) -> float | None:
        return None if self.raw.get(key) is None else self.float(key)

    def bool(self, key: str) -> bool:
        return self._typed(key, (bool,), "true or false")

    def obj(self, key: str) -> dict:
        return self._typed(key, (dict,), "an object")

    def sub(self, key: str) -> "_Reader":
        return _Reader(self.obj(key), f"{self.where}.{key}")

    def list(self, key: str, item=None, default: Any = ...) -> list:
        items = self._typed(key, (list,), "a list", default)
        if item is _Reader.obj:
            return [_Reader(x, f"{self.where}.{key}[{i}]") for i, x in enumerate(items)]
        return items

    def choice(self, key: str, allowed: tuple) -> str:
        value = self.str(key)
        if value not in allowed:
            raise ManifestError(f"{self.where}.{key} is {value!r}, expected one of {list(allowed)}")
        return value


def _finite(value: float, where: str) -> float:
    try:
        number = float(value)
    except OverflowError:
        raise ManifestError(f"{where} must be a finite number, got an integer too large for a float") from None
    if not math.isfinite(number):
        raise ManifestError(f"{where} must be a finite number, got {number}")
    return number


def _file(r: _Reader) -> FileRecord:
    raw = r.str("path")
    path = PurePosixPath(raw)
    if path.is_absolute() or ".." in path.parts or str(path) == "." or "\0" in raw:
        raise ManifestError(f"{r.where}.path {raw!r} must name a file relative to the bundle folder, without '..'")
    digest = r.str("sha256")
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ManifestError(f"{r.where}.sha256 must be 64 lowercase hex digits, got {digest!r}")
    return FileRecord(str(path), digest, r.count("size"))


def _tensor(r: _Reader) -> TensorSpec:
    shape = r.list("shape")
    if not all(isinstance(d, str) or isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ManifestError(f"{r.where}.shape must list non-negative ints or dim names, got {shape!r}")
    return TensorSpec(r.str("name"), tuple(shape), r.choice("dtype", DTYPES))


def _parity(r: _Reader) -> ParityReport:
    outs = tuple(OutputParity(o.str("name"), o.float("max_abs_error"), o.opt_float("tolerance"), o.bool("passed"))
                 for o in r.list("outputs", _Reader.obj))
    render = r.get("render")
    return ParityReport(reference=r.str("reference"), runtime=r.str("runtime"), inputs=r.str("inputs"),
                        outputs=outs, passed=r.bool("passed"), psnr_db=r.opt_float("psnr_db"),
                        psnr_target_db=r.opt_float("psnr_target_db"), render=render if isinstance(render, str) else None,
                        fp16_peak_abs=r.opt_float("fp16_peak_abs"))


def _unknown_kind(r: _Reader) -> str:
    """"" for an artifact whose format, role and precision this flexavatar knows, else which are new to it (each
    still a string: a value of the wrong type is an error, not something newer)."""
    known = {"format": FORMATS, "role": ROLES, "precision": PRECISIONS}
    return ", ".join(f"{key} {r.str(key)!r}" for key, values in known.items() if r.str(key) not in values)


def _package_version() -> str:
    from . import __version__
    return __version__


def _artifact(r: _Reader) -> ModelArtifact:
    files = tuple(_file(f) for f in r.list("files", _Reader.obj))
    if not files:
        raise ManifestError(f"{r.where}.files must list at least the model file")
    fmt = r.choice("format", FORMATS)
    suffix = _FORMAT_READERS[fmt].suffix
    if not files[0].path.endswith(suffix):
        raise ManifestError(f"{r.where}.files[0] must be the {suffix} model file, got {files[0].path!r}")
    if fmt == FORMAT_OPENVINO:      # OpenVINO reads the weights from the .bin beside the .xml: it must be verified
        want = [files[0].path, str(PurePosixPath(files[0].path).with_suffix(".bin"))]
        if [f.path for f in files] != want:
            raise ManifestError(f"{r.where}.files must be exactly {want} (an OpenVINO IR: model + weights), "
                                f"got {[f.path for f in files]}")
    role = r.choice("role", ROLES)
    inputs = tuple(_tensor(t) for t in r.list("inputs", _Reader.obj))
    outputs = tuple(_tensor(t) for t in r.list("outputs", _Reader.obj))
    want_in, want_out = ROLE_TENSORS[role]
    _check_role_tensors(inputs, want_in, f"{r.where}.inputs", role)
    _check_role_tensors(outputs, want_out, f"{r.where}.outputs", role)
    return ModelArtifact(
        name=r.str("name"), role=role, format=fmt, precision=r.choice("precision", PRECISIONS),
        files=files, inputs=inputs, outputs=outputs, parity=_parity(r.sub("parity")),
        fp32_ops=tuple(str(x) for x in r.list("fp32_ops", default=[])), notes=r.str("notes", default=""))


def _check_role_tensors(specs: tuple[TensorSpec, ...], want: dict[str, int], where: str, role: str) -> None:
    """A role's graph takes / gives exactly the tensors the runtimes use, with their ranks."""
    names = [s.name for s in specs]
    if sorted(names) != sorted(want):
        raise ManifestError(f"{where} must be named {sorted(want)} for role {role!r}, got {names}")
    for s in specs:
        if len(s.shape) != want[s.name]:
            raise ManifestError(f"{where}: {s.name} must have {want[s.name]} dims for role {role!r}, got "
                                f"{list(s.shape)}")


def _check_unique(artifacts: tuple[ModelArtifact, ...], avatar: AvatarInfo | None, check: CheckInfo | None,
                  torch_model: FileRecord | None) -> None:
    names = [a.name for a in artifacts]
    if len(set(names)) != len(names):
        raise ManifestError(f"manifest.artifacts has duplicate names: {sorted(names)}")
    kinds = [(a.role, a.format, a.precision) for a in artifacts]
    for kind in set(kinds):
        if kinds.count(kind) > 1:
            raise ManifestError(f"manifest.artifacts lists {kinds.count(kind)} {kind[0]} models in format "
                                f"{kind[1]!r} at precision {kind[2]!r}; each may appear once")
    paths = ([f.path for a in artifacts for f in a.files] + ([avatar.code.path] if avatar else [])
             + ([check.file.path] if check else []) + ([torch_model.path] if torch_model else []))
    twice = sorted({p for p in paths if paths.count(p) > 1})
    if twice:
        raise ManifestError(f"manifest lists the same file twice: {twice} (artifacts' files, avatar.code, "
                            "check.file and torch_model)")


def _conventions(r: _Reader) -> Conventions:
    values: dict[str, Any] = {}
    for f in fields(Conventions):
        if f.name not in r.raw:
            raise ManifestError(f"{r.where}.{f.name} is missing")
        if f.name == "expression_layout":
            values[f.name] = r.obj(f.name)          # checked below, against expression_dim
        elif f.type in ("int", int):
            values[f.name] = r.count(f.name)
        else:
            values[f.name] = r.str(f.name)
    dim = values["expression_dim"]
    layout = {}
    for name, span in values["expression_layout"].items():
        if not (isinstance(span, (list, tuple)) and len(span) == 2 and all(type(x) is int for x in span)
                and 0 <= span[0] <= span[1] <= dim):
            raise ManifestError(f"{r.where}.expression_layout.{name} must be [start, stop], two integers with "
                                f"0 ≤ start ≤ stop ≤ expression_dim ({dim}), got {span!r}")
        layout[name] = (span[0], span[1])
    values["expression_layout"] = layout
    return Conventions(**values)


def _template(r: _Reader) -> TemplateInfo:
    return TemplateInfo(r.str("sha256"), r.count("n_gaussians"), r.count("res_head_tokens"),
                        r.count("res_gaussian_grid"), r.str("source"))


def _model_info(r: _Reader) -> ModelInfo:
    dinov2 = r.get("dinov2")
    if dinov2 is not None and not isinstance(dinov2, str):
        raise ManifestError(f"{r.where}.dinov2 must be a file name or null, got {dinov2!r}")
    config = r.obj("config")
    _jsonable(config, f"{r.where}.config")          # strict JSON: no NaN / Infinity
    return ModelInfo(config=config, checkpoint=r.str("checkpoint"),
                     checkpoint_sha256=r.str("checkpoint_sha256"), n_parameters=r.int("n_parameters"), dinov2=dinov2)


def _matrix(r: _Reader, key: str, n: int) -> tuple[tuple[float, ...], ...]:
    m = r.list(key)
    if len(m) != n or not all(isinstance(row, list) and len(row) == n and
                              all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in row) for row in m):
        raise ManifestError(f"{r.where}.{key} must be a {n}x{n} list of numbers")
    return tuple(tuple(_finite(x, f"{r.where}.{key}[{i}][{j}]") for j, x in enumerate(row)) for i, row in enumerate(m))


def _by_name(specs: tuple[TensorSpec, ...], name: str, where: str) -> TensorSpec:
    for s in specs:
        if s.name == name:
            return s
    raise TensorNotFoundError(f"{where} have no tensor {name!r}; names: {[s.name for s in specs]}")


def _check_signature(specs: tuple[TensorSpec, ...], graph: Signature, where: str) -> None:
    """The manifest's tensors are the graph's: same names and ranks, fixed dims equal, dynamic dims dynamic."""
    graph_names = [sorted(names) for names, _ in graph]
    if len(graph) != len(specs):
        raise BundleMetadataError(f"{where}s: the graph has {graph_names}, the manifest lists "
                                  f"{[s.name for s in specs]}")
    for spec in specs:
        found = [dims for names, dims in graph if spec.name in names]
        if not found:
            raise BundleMetadataError(f"{where} {spec.name!r} of the manifest is not in the graph (it has "
                                      f"{graph_names})")
        dims = found[0]
        if dims is None:                # declared without a shape
            continue
        fixed = [d if isinstance(d, int) and d >= 0 else None for d in dims]      # None: dynamic
        # a fixed dim of the manifest may be dynamic in the graph; a dynamic one must not be fixed there
        if len(fixed) != len(spec.shape) or any(g is not None and g != want for want, g in zip(spec.shape, fixed)):
            raise BundleMetadataError(f"{where} {spec.name!r}: the graph declares shape "
                                      f"{['?' if d is None else d for d in fixed]}, the manifest {list(spec.shape)}")


def _jsonable(x: Any, where: str) -> Any:
    """x as JSON data (tuples → lists); a non-finite float is refused (strict JSON has no NaN / Infinity)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(x)]
    if isinstance(x, float) and not math.isfinite(x):
        raise ManifestError(f"{where} must be a finite number, got {x}")
    return x


def _scan(fh, end: int, path: Path, keep: set[int]):
    """Walk the protobuf fields of fh up to offset end, seeking past all but the length-delimited fields
    numbered in keep: for those, yields (field number, length) with fh at the field's payload."""
    while fh.tell() < end:
        tag = _read_varint(fh, path)
        field_no, wire = tag >> 3, tag & 7
        if wire == 0:
            _read_varint(fh, path)
        elif wire in (1, 5):
            fh.seek(8 if wire == 1 else 4, os.SEEK_CUR)
        elif wire == 2:
            length = _read_varint(fh, path)
            start = fh.tell()
            if start + length > end:
                raise BundleMetadataError(f"{path}: truncated ONNX file (field {field_no} runs past its end)")
            if field_no in keep:
                yield field_no, length
            fh.seek(start + length)
        else:
            raise BundleMetadataError(f"{path}: not an ONNX model (bad protobuf wire type {wire})")
        if fh.tell() > end:
            raise BundleMetadataError(f"{path}: truncated ONNX file (a field runs past its end)")


def _fields(buf: bytes, path: Path):
    """(field number, value) of a protobuf message in memory: ints for varints, bytes for length-delimited."""
    i = 0
    while i < len(buf):
        tag, i = _varint_from(buf, i, path)
        wire = tag & 7
        if wire == 0:
            value, i = _varint_from(buf, i, path)
        elif wire == 2:
            length, i = _varint_from(buf, i, path)
            value, i = buf[i:i + length], i + length
        elif wire in (1, 5):
            value, i = None, i + (8 if wire == 1 else 4)
        else:
            raise BundleMetadataError(f"{path}: malformed graph input/output (protobuf wire type {wire})")
        if i > len(buf):
            raise BundleMetadataError(f"{path}: malformed graph input/output (truncated field)")
        yield tag >> 3, value


def _field(buf: Any, number: int, path: Path) -> Any:
    """The value of field ``number`` of a message (None when absent, or when buf is no message)."""
    return next((v for f, v in _fields(buf, path) if f == number), None) if isinstance(buf, bytes) else None


def _value_info(buf: bytes, path: Path) -> tuple[frozenset[str], tuple[int | None, ...] | None]:
    """ValueInfoProto {1: name, 2: TypeProto {1: tensor_type {2: shape {1: dim* {1: dim_value, 2: dim_param}}}}}."""
    name = _field(buf, 1, path)
    name = name.decode("utf-8", "replace") if isinstance(name, bytes) else ""
    shape = _field(_field(_field(buf, 2, path), 1, path), 2, path)
    if not isinstance(shape, bytes):
        return frozenset({name}), None
    dims = []
    for f, dim in _fields(shape, path):
        if f == 1:
            value = _field(dim, 1, path)                        # dim_value; else dim_param (dynamic)
            dims.append(value if isinstance(value, int) else None)
    return frozenset({name}), tuple(dims)


def _read_varint(fh, path: Path) -> int:
    value, shift = 0, 0
    while True:
        byte = fh.read(1)
        if not byte:
            raise BundleMetadataError(f"{path}: truncated ONNX file (ends inside a protobuf varint)")
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7
        if shift > 63:
            raise BundleMetadataError(f"{path}: not an ONNX model (malformed protobuf varint)")


def _parse_string_entry(buf: bytes, path: Path) -> tuple[str, str]:
    """StringStringEntryProto {1: key, 2: value} → (key, value)."""
    out = {1: "", 2: ""}
    i = 0
    while i < len(buf):
        tag, i = _varint_from(buf, i, path)
        if tag & 7 != 2:
            raise BundleMetadataError(f"{path}: malformed metadata_props entry")
        length, i = _varint_from(buf, i, path)
        out[tag >> 3] = buf[i:i + length].decode("utf-8", errors="replace")
        i += length
    return out[1], out[2]


def _varint_from(buf: bytes, i: int, path: Path) -> tuple[int, int]:
    value, shift = 0, 0
    while i < len(buf):
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7
    raise BundleMetadataError(f"{path}: malformed metadata_props entry (truncated varint)")
