"""The avatar bundle: ``manifest.json`` schema, loader and the metadata stored in each model file.

A bundle is a folder written by ``flexavatar-export`` (``flexavatar.export.export_bundle``)::

    bundle/
      manifest.json              this schema (``SCHEMA``, ``SCHEMA_VERSION``)
      encoder.fp32.onnx          photo (+ camera) → avatar code; DINOv2 inside the graph
      encoder_features.fp32.onnx ... or this variant when no DINOv2 weights were given (features input)
      decoder.fp32.onnx          avatar code + expressions [E, 135] → Gaussians [E, G, …] (per frame)
      decoder.fp16.onnx          fp16 variant (inputs/outputs stay float32)
      decoder.fp32.xml / .bin    OpenVINO IR (one artifact, two files)
      avatar_code.npy            with --avatar: the photo's code, official layout (R², 1, D) float32
      decoder_avatar.fp32.onnx   with --avatar: decoder specialised to that code (input: expressions only)

This module imports neither torch nor onnx (only the standard library; numpy lazily for
``Bundle.avatar_code``), so a runtime built on ONNX Runtime or OpenVINO alone can use it.

Stable API (used by the exporter and by the runtimes)
-----------------------------------------------------
``Bundle.open(path, verify="full" | "size" | "none") -> Bundle``
    Reads and validates ``manifest.json`` into a typed ``Manifest`` and checks every listed file
    (exists; size; sha256 when ``verify="full"``, the default).
``bundle.artifact(role, format="onnx", precision="fp32") -> ModelArtifact``; ``bundle.artifacts(role=None, ...)``
``bundle.path(artifact) -> Path`` (the ``.onnx`` or ``.xml`` file); ``bundle.avatar_code() -> ndarray [1, R², D]``
``bundle.metadata(artifact) -> ModelMetadata`` (ONNX ``metadata_props``, cross-checked against the manifest)
``read_onnx_metadata(path) -> ModelMetadata``: reads an ``.onnx`` file's ``metadata_props`` with a small
    protobuf scanner that skips the graph (instant even for a 700 MB file; no onnx / onnxruntime needed).
``Manifest.from_dict / to_dict / read / write``; ``ModelMetadata.from_props / to_props``.
Roles: ``ROLE_ENCODER``, ``ROLE_ENCODER_FEATURES``, ``ROLE_DECODER``, ``ROLE_DECODER_AVATAR``; formats
``FORMAT_ONNX``, ``FORMAT_OPENVINO``; precisions ``"fp32"``, ``"fp16"``.

Tensor conventions (also recorded in ``Manifest.conventions`` and in every model's metadata):
OpenCV camera axes (+x right, +y down, +z forward), cam2world 4×4 in the canonical head frame, metres;
intrinsics normalised (pixel K's first two rows divided by the image size); quaternions (w, x, y, z);
colour = SH degree-0 coefficients (rgb = max(0.28209479·sh0 + 0.5, 0)); the avatar code is
batch-first ``[B, R², D]`` in the graphs (the ``.npy`` file holds the official ``(R², 1, D)``, the same
bytes for B = 1); expressions are the 135-d FLEX code (``Conventions.expression_layout``); the decoder
uses dataset id 1 (the multi-view token).

Errors: every problem raises a ``BundleError`` subclass — ``ManifestError`` (malformed / unsupported
schema), ``BundleFileMissingError``, ``BundleHashMismatchError`` (sha256 or size differs),
``BundleMetadataError`` (model metadata missing or disagreeing with the manifest),
``ArtifactNotFoundError`` (no artifact with that role / format / precision).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import FlexAvatarError
from .files import atomic_open

SCHEMA = "flexavatar-bundle"
SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
METADATA_PREFIX = "flexavatar."

ROLE_ENCODER = "encoder"                    # image [B,3,S,S] + cam2world + intrinsics → code
ROLE_ENCODER_FEATURES = "encoder_features"  # same + DINOv2 features [B,C,h,w] as an input (no DINOv2 inside)
ROLE_DECODER = "decoder"                    # code [1,R²,D] + expressions [E,135] → Gaussians [E,G,…]
ROLE_DECODER_AVATAR = "decoder_avatar"      # expressions [E,135] → Gaussians (code folded in)
ROLES = (ROLE_ENCODER, ROLE_ENCODER_FEATURES, ROLE_DECODER, ROLE_DECODER_AVATAR)
FORMAT_ONNX = "onnx"
FORMAT_OPENVINO = "openvino"
FORMATS = (FORMAT_ONNX, FORMAT_OPENVINO)
PRECISIONS = ("fp32", "fp16")
DTYPES = ("float32", "float16", "int64", "int32", "uint8", "bool")
VERIFY_MODES = ("full", "size", "none")

# Decoder output names and their per-Gaussian trailing shapes ([E, G] + trailing).
GAUSSIAN_OUTPUTS = {"means": (3,), "quats": (4,), "scales": (3,), "opacities": (), "sh0": (3,)}


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


class ArtifactNotFoundError(BundleError, LookupError):
    """The bundle has no model with the requested role / format / precision."""


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
        raise KeyError(f"parity report has no output {name!r}; it has {[o.name for o in self.outputs]}")


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

    # -- lookup --
    def find(self, role: str | None = None, format: str | None = None,
             precision: str | None = None) -> list[ModelArtifact]:
        return [a for a in self.artifacts if (role is None or a.role == role)
                and (format is None or a.format == format) and (precision is None or a.precision == precision)]

    def artifact(self, role: str, format: str = FORMAT_ONNX, precision: str = "fp32") -> ModelArtifact:
        hits = self.find(role, format, precision)
        if not hits:
            have = ", ".join(a.name for a in self.artifacts) or "none"
            raise ArtifactNotFoundError(f"bundle has no {role} model in format {format!r} at precision "
                                        f"{precision!r}; it has: {have}")
        return hits[0]

    def files(self) -> list[FileRecord]:
        out = [f for a in self.artifacts for f in a.files]
        return out + ([self.avatar.code] if self.avatar else [])

    # -- (de)serialisation --
    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))

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
        artifacts = tuple(_artifact(a) for a in r.list("artifacts", _Reader.obj))
        names = [a.name for a in artifacts]
        if len(set(names)) != len(names):
            raise ManifestError(f"manifest.artifacts has duplicate names: {sorted(names)}")
        paths = [f.path for a in artifacts for f in a.files]
        if len(set(paths)) != len(paths):
            raise ManifestError("manifest.artifacts list the same file twice")
        avatar = None
        if r.get("avatar") is not None:
            a = r.sub("avatar")
            avatar = AvatarInfo(code=_file(a.sub("code")), photo=a.str("photo"), photo_sha256=a.str("photo_sha256"),
                                cam2world=_matrix(a, "cam2world", 4), intrinsics=_matrix(a, "intrinsics", 3))
        return cls(
            schema=schema, schema_version=version, created=r.str("created"),
            versions={k: str(v) for k, v in r.obj("versions").items()}, opset=r.int("opset"),
            model=_model_info(r.sub("model")), template=_template(r.sub("template")),
            conventions=_conventions(r.sub("conventions")), artifacts=artifacts, avatar=avatar,
            export_seconds=r.float("export_seconds", default=0.0))

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
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ManifestError(f"{path} is not valid JSON: {e}") from None
        return cls.from_dict(raw)

    def write(self, folder: str | Path) -> Path:
        """Write manifest.json into folder atomically (temp file + rename)."""
        path = Path(folder) / MANIFEST_NAME
        with atomic_open(path, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(self.to_dict(), indent=2) + "\n")
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
    path = Path(path)
    if not path.is_file():
        raise BundleFileMissingError(f"ONNX file not found: {path}")
    props: dict[str, str] = {}
    size = path.stat().st_size
    with path.open("rb") as fh:
        while fh.tell() < size:
            tag = _read_varint(fh, path)
            field_no, wire = tag >> 3, tag & 7
            if wire == 0:
                _read_varint(fh, path)
            elif wire == 1:
                fh.seek(8, os.SEEK_CUR)
            elif wire == 5:
                fh.seek(4, os.SEEK_CUR)
            elif wire == 2:
                length = _read_varint(fh, path)
                if fh.tell() + length > size:
                    raise BundleMetadataError(f"{path}: truncated ONNX file (field {field_no} runs past the end)")
                if field_no == 14:
                    key, value = _parse_string_entry(fh.read(length), path)
                    props[key] = value
                else:
                    fh.seek(length, os.SEEK_CUR)
            else:
                raise BundleMetadataError(f"{path}: not an ONNX model (bad protobuf wire type {wire})")
    return props


def read_onnx_metadata(path: str | Path) -> ModelMetadata:
    """The typed flexavatar metadata of an ONNX file (see ``ModelMetadata``)."""
    return ModelMetadata.from_props(read_onnx_metadata_props(path), where=str(path))


def read_openvino_metadata(xml_path: str | Path) -> ModelMetadata:
    """The typed flexavatar metadata of an OpenVINO IR (``<rt_info><flexavatar><key value=.../>``)."""
    import xml.etree.ElementTree as ET
    xml_path = Path(xml_path)
    if not xml_path.is_file():
        raise BundleFileMissingError(f"OpenVINO IR not found: {xml_path}")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        raise BundleMetadataError(f"{xml_path}: not a readable OpenVINO IR XML: {e}") from None
    node = root.find("rt_info/flexavatar")
    if node is None:
        raise BundleMetadataError(f"{xml_path}: no <rt_info><flexavatar> section; was it exported by "
                                  "flexavatar-export?")
    props = {METADATA_PREFIX + child.tag: child.get("value", "") for child in node}
    return ModelMetadata.from_props(props, where=str(xml_path))


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
        rel = artifact.path if isinstance(artifact, ModelArtifact) else artifact
        return self.root / rel

    def metadata(self, artifact: ModelArtifact) -> ModelMetadata:
        """The model file's own metadata, checked against the manifest (role, precision, G, template)."""
        reader = {FORMAT_ONNX: read_onnx_metadata, FORMAT_OPENVINO: read_openvino_metadata}[artifact.format]
        meta = reader(self.path(artifact))
        expect = {"role": artifact.role, "precision": artifact.precision,
                  "n_gaussians": self.manifest.conventions.n_gaussians,
                  "template_sha256": self.manifest.template.sha256}
        bad = {k: (getattr(meta, k), v) for k, v in expect.items() if getattr(meta, k) != v}
        if bad:
            detail = ", ".join(f"{k}: file says {got!r}, manifest {want!r}" for k, (got, want) in bad.items())
            raise BundleMetadataError(f"{artifact.path}: metadata disagrees with the manifest ({detail})")
        return meta

    def avatar_code(self):
        """The avatar code of ``--avatar`` as float32 ``[1, R², D]`` (numpy, imported lazily)."""
        import numpy as np
        if self.manifest.avatar is None:
            raise ArtifactNotFoundError("bundle has no avatar code (export with --avatar PHOTO)")
        code = np.load(self.root / self.manifest.avatar.code.path, allow_pickle=False)
        return code.reshape(1, code.shape[0], code.shape[-1]).astype(np.float32, copy=False)


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


def verify_file(root: str | Path, rec: FileRecord, hashes: bool = True) -> None:
    p = Path(root) / rec.path
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

    def float(self, key: str, default: Any = ...) -> float:
        return float(self._typed(key, (int, float), "a number", default))

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


def _file(r: _Reader) -> FileRecord:
    path = r.str("path")
    if Path(path).is_absolute() or ".." in Path(path).parts:
        raise ManifestError(f"{r.where}.path {path!r} must be relative to the bundle folder, without '..'")
    digest = r.str("sha256")
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ManifestError(f"{r.where}.sha256 must be 64 lowercase hex digits, got {digest!r}")
    size = r.int("size")
    if size < 0:
        raise ManifestError(f"{r.where}.size must be ≥ 0, got {size}")
    return FileRecord(path, digest, size)


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


def _artifact(r: _Reader) -> ModelArtifact:
    files = tuple(_file(f) for f in r.list("files", _Reader.obj))
    if not files:
        raise ManifestError(f"{r.where}.files must list at least the model file")
    fmt = r.choice("format", FORMATS)
    suffix = {FORMAT_ONNX: ".onnx", FORMAT_OPENVINO: ".xml"}[fmt]
    if not files[0].path.endswith(suffix):
        raise ManifestError(f"{r.where}.files[0] must be the {suffix} model file, got {files[0].path!r}")
    return ModelArtifact(
        name=r.str("name"), role=r.choice("role", ROLES), format=fmt, precision=r.choice("precision", PRECISIONS),
        files=files, inputs=tuple(_tensor(t) for t in r.list("inputs", _Reader.obj)),
        outputs=tuple(_tensor(t) for t in r.list("outputs", _Reader.obj)), parity=_parity(r.sub("parity")),
        fp32_ops=tuple(str(x) for x in r.list("fp32_ops", default=[])), notes=r.str("notes", default=""))


def _conventions(r: _Reader) -> Conventions:
    values: dict[str, Any] = {}
    for f in fields(Conventions):
        if f.name not in r.raw:
            raise ManifestError(f"{r.where}.{f.name} is missing")
        if f.name == "expression_layout":
            layout = r.obj(f.name)
            try:
                values[f.name] = {str(k): (int(v[0]), int(v[1])) for k, v in layout.items()}
            except (TypeError, ValueError, IndexError):
                raise ManifestError(f"{r.where}.expression_layout must map names to [start, stop]") from None
        elif f.type in ("int", int):
            values[f.name] = r.int(f.name)
        else:
            values[f.name] = r.str(f.name)
    return Conventions(**values)


def _template(r: _Reader) -> TemplateInfo:
    return TemplateInfo(r.str("sha256"), r.int("n_gaussians"), r.int("res_head_tokens"), r.int("res_gaussian_grid"),
                        r.str("source"))


def _model_info(r: _Reader) -> ModelInfo:
    dinov2 = r.get("dinov2")
    if dinov2 is not None and not isinstance(dinov2, str):
        raise ManifestError(f"{r.where}.dinov2 must be a file name or null, got {dinov2!r}")
    return ModelInfo(config=r.obj("config"), checkpoint=r.str("checkpoint"),
                     checkpoint_sha256=r.str("checkpoint_sha256"), n_parameters=r.int("n_parameters"), dinov2=dinov2)


def _matrix(r: _Reader, key: str, n: int) -> tuple[tuple[float, ...], ...]:
    m = r.list(key)
    if len(m) != n or not all(isinstance(row, list) and len(row) == n and
                              all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in row) for row in m):
        raise ManifestError(f"{r.where}.{key} must be a {n}x{n} list of numbers")
    return tuple(tuple(float(x) for x in row) for row in m)


def _by_name(specs: tuple[TensorSpec, ...], name: str, where: str) -> TensorSpec:
    for s in specs:
        if s.name == name:
            return s
    raise KeyError(f"{where} have no tensor {name!r}; names: {[s.name for s in specs]}")


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


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
