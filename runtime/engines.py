"""Inference backends ("engines") that run a bundle's graphs: a registry, not a switch.

    register_engine("onnxruntime", OrtBackend, priorities={"cuda": 300, "cpu": 150}, ...)

An engine factory gets ``(bundle, device, options)`` and returns an ``InferenceBackend``, whose
``load(role)`` opens one graph of the bundle (encoder, decoder, ...) as a ``Model``: ``run(feeds) ->
{output name: array}`` with the graph's tensor names (``flexavatar.bundle``). CPU models take and give
numpy arrays; the ONNX Runtime CUDA model gives CUDA torch tensors (``runtime/gpu.py``) so that the
Gaussians reach the CUDA rasterizer without a copy. Models are safe to call from several threads.

Nothing here imports torch, onnxruntime or openvino at import time; each engine imports its library
when it is opened (so the ONNX / OpenVINO paths never import torch).
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import threading
import time
import types
from pathlib import Path
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from flexavatar.bundle import (FORMAT_ONNX, FORMAT_ONNX_ORT, FORMAT_OPENVINO, GAUSSIAN_OUTPUTS, PRECISIONS,
                               ROLE_DECODER, ROLE_DECODER_AVATAR, ROLE_ENCODER, ROLE_ENCODER_FEATURES, Bundle,
                               ModelArtifact)

from .errors import (EngineUnavailableError, ExecutionProviderError, ModelMismatchError, RuntimeArgumentError,
                     UnknownEngineError)
from .expressions import EXPRESSION_DIM

log = logging.getLogger("flexavatar.runtime")

# "gpu": a GPU reached other than through CUDA (OpenVINO's GPU plugin, ONNX Runtime's DirectML, MIGraphX, CoreML, ...
# providers: ORT_HOST_PROVIDERS); "npu": a neural processor (OpenVINO's NPU plugin; ONNX Runtime's QNN, VitisAI, ...).
# Their engines take and give host arrays, so the CPU rasterizer draws their frames.
DEVICES = ("cpu", "cuda", "gpu", "npu")
HOST_ACCELERATORS = ("gpu", "npu")             # devices reached through host arrays (ORT_HOST_PROVIDERS, OpenVINO)
INFERENCE_PRECISIONS = ("f32", "f16", "bf16")   # OpenVINO's INFERENCE_PRECISION_HINT values (EngineOptions)
NUMPY, TORCH = "numpy", "torch"
NOT_INSTALLED = "is not installed"          # the end of an engine's reason when its library is missing
ENCODER_ROLES = (ROLE_ENCODER, ROLE_ENCODER_FEATURES)
# int8 decoders (DynamicQuantizeLinear + MatMulInteger) are made for CPUs: ONNX Runtime's CPU provider runs them;
# the other engines and devices run the float files
FLOAT_PRECISIONS = ("fp32", "fp16")


@dataclass(frozen=True)
class EngineOptions:
    """Settings shared by the engines (each uses the ones that apply to it)."""
    precision: str = "fp32"                 # which bundle artifacts: "fp32", "fp16" or "int8" (decoders; CPUs)
    num_threads: int = 0                    # CPU threads per call; 0 = the library's default
    inference_precision: str | None = None  # OpenVINO only: INFERENCE_PRECISION_HINT, one of INFERENCE_PRECISIONS;
                                            # None = "f32" for fp32 artifacts (Runtime checks the value)
    cuda_graphs: bool | None = None         # ONNX Runtime CUDA: capture the decoder in CUDA graphs (None: on)
    fused_decoders: bool | None = None      # ONNX Runtime: prefer the bundle's onnx-ort decoders (None: on CUDA)
    device_id: int = 0
    model: Any = None                       # torch engine: a FlexAvatarModel ...
    checkpoint: Any = None                  # ... or its checkpoint file (+ template / dinov2 files)
    template: Any = None
    dinov2: Any = None


class Model(Protocol):
    """One opened graph. ``array_type``: what ``run`` returns ("numpy", or "torch" on CUDA)."""
    array_type: str

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]: ...


class InferenceBackend:
    """Opens the graphs of one bundle on one device, once each (thread-safe, lazily)."""
    name = ""
    format: str | None = None               # bundle artifact format it runs (None: runs no file)

    def __init__(self, bundle: Bundle, device: str, options: EngineOptions):
        self.bundle, self.device, self.options = bundle, device, options
        self._models: dict[str, Model] = {}
        self._opened: dict[str, ModelArtifact] = {}      # role → the artifact its model runs
        self._lock = threading.Lock()

    @classmethod
    def formats_for(cls, device: str, options: EngineOptions) -> tuple[str | None, ...]:
        """The bundle formats it runs on ``device``, preferred first."""
        return (cls.format,)

    @property
    def formats(self) -> tuple[str | None, ...]:
        return self.formats_for(self.device, self.options)

    @classmethod
    def precisions_for(cls, device: str) -> tuple[str, ...]:
        """The bundle precisions it runs on ``device``."""
        return PRECISIONS

    @property
    def frames_per_call(self) -> int | None:
        """How many frames each decoder call takes: None = any. GPUs and NPUs reached through host arrays run
        static shapes (``static_shapes``): one frame a call there."""
        return 1 if self.device in HOST_ACCELERATORS else None

    @staticmethod
    def static_shapes(artifact: ModelArtifact) -> dict[str, int]:
        """The leading dynamic dims of ``artifact``'s inputs (frames "E" of a decoder, photos "B" of an encoder),
        each pinned to 1: NPU compilers (QNN's HTP, OpenVINO's NPU plugin) take static shapes only, and DirectML and
        CoreML plan static graphs better. Other dynamic dims (an encoder's DINOv2 feature grid) stay dynamic."""
        return {t.shape[0]: 1 for t in artifact.inputs if t.shape and isinstance(t.shape[0], str)}

    def has(self, role: str) -> bool:
        return bool(self.candidates(role))

    def candidates(self, role: str) -> list[ModelArtifact]:
        """The bundle's artifacts of ``role`` this engine runs, preferred first. The encoder runs once per avatar:
        its fp32 file does when the bundle has none of the asked precision (int8 bundles never have one)."""
        precisions = [self.options.precision] + (["fp32"] if role in ENCODER_ROLES else [])
        for precision in precisions:
            found = [a for f in self.formats for a in self.bundle.artifacts(role, f, precision)]
            if found:
                return found
        return []

    def artifact(self, role: str) -> ModelArtifact:
        """The artifact of ``role`` that runs (once loaded), or would run."""
        if role in self._opened:
            return self._opened[role]
        found = self.candidates(role)
        return found[0] if found else self.bundle.artifact(role, self.formats[0], self.options.precision)  # raises

    def load(self, role: str) -> Model:
        with self._lock:
            if role not in self._models:
                artifact = self.artifact(role)
                self.bundle.metadata(artifact)          # the file's own metadata agrees with the manifest
                self._models[role], self._opened[role] = self._open_role(role, artifact)
            return self._models[role]

    def _open_role(self, role: str, artifact: ModelArtifact) -> tuple[Model, ModelArtifact]:
        return self._open(artifact), artifact

    def _open(self, artifact: ModelArtifact) -> Model:
        raise NotImplementedError

    def _host_encoder(self, artifact: ModelArtifact) -> ModelArtifact:
        """The file an encoder that the device cannot run runs on the CPU instead: the fp32 file of its format (the
        fp16 one was chosen for the device; a CPU gains nothing from it), else the same file."""
        fp32 = self.bundle.artifacts(artifact.role, artifact.format, "fp32")
        if not fp32:
            return artifact
        self.bundle.metadata(fp32[0])
        return fp32[0]

    def describe(self) -> str:
        return self.name

    def synchronize(self) -> None:
        """Wait for queued device work (CPU engines: nothing to wait for)."""

    def stream(self):
        """Context in which a frame's device work is queued (the CUDA stream the engine's graphs run on), so that
        the rasterizer and the copies are ordered after the decoder without a host sync. CPU: nothing."""
        return contextlib.nullcontext()

    def hand_over(self, arrays) -> None:
        """Make device arrays made in ``stream()`` safe to use on the caller's current stream (no host sync)."""


# ---- registry -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EngineSpec:
    name: str
    factory: Callable[[Bundle, str, EngineOptions], InferenceBackend]
    priorities: Mapping[str, int]            # device → rank for backend="auto" (highest wins)
    availability: Callable[[str], str | None] = lambda device: None
    install_hint: str = ""
    description: str = ""
    _order: int = field(default=0, compare=False)

    def unavailable_reason(self, device: str) -> str | None:
        if device not in self.priorities:
            return f"it does not run on device {device!r} (it runs on: {', '.join(self.priorities)})"
        return self.availability(device)


_ENGINES: dict[str, EngineSpec] = {}


def register_engine(name: str, factory, *, priorities: Mapping[str, int], availability=None, install_hint: str = "",
                    description: str = "", replace: bool = False) -> EngineSpec:
    if not name or name == "auto":
        raise RuntimeArgumentError("name", f"is {name!r}", "a non-empty engine name other than 'auto'")
    if name in _ENGINES and not replace:
        raise RuntimeArgumentError("name", f"engine {name!r} is already registered", "replace=True to override it")
    unknown = set(priorities) - set(DEVICES)
    if unknown:
        raise RuntimeArgumentError("priorities", f"name unknown devices {sorted(unknown)}", f"devices of {DEVICES}")
    spec = EngineSpec(name, factory, dict(priorities), availability or (lambda device: None), install_hint,
                      description, _ENGINES[name]._order if name in _ENGINES else len(_ENGINES))
    _ENGINES[name] = spec
    return spec


def registered_engines() -> list[str]:
    return list(_ENGINES)


def get_engine(name: str) -> EngineSpec:
    if name not in _ENGINES:
        raise UnknownEngineError("backend", f"unknown inference backend {name!r}",
                                 f"one of {registered_engines()} or 'auto'")
    return _ENGINES[name]


def available_engines(device: str) -> list[str]:
    return [s.name for s in _ENGINES.values() if s.unavailable_reason(device) is None]


def select_engine(name: str, device: str,
                  requirement: Callable[[EngineSpec, str], str | None] | None = None) -> tuple[EngineSpec, str]:
    """(engine, concrete device) for a backend name or "auto" and a device or "auto".

    device "auto" prefers a CUDA device when the engine can use one here, else the CPU ("gpu" and "npu" are
    only used when asked for). ``requirement(spec, device)`` may reject an engine on a device with
    a reason (e.g. the bundle has no file in a format it runs there)."""
    if device != "auto" and device not in DEVICES:
        raise RuntimeArgumentError("device", f"is {device!r}", f"'auto' or one of {DEVICES}")
    devices = ("cuda", "cpu") if device == "auto" else (device,)
    specs = list(_ENGINES.values()) if name == "auto" else [get_engine(name)]
    candidates, rejected = [], []
    for spec in specs:
        for d in devices:
            reason = spec.unavailable_reason(d) or (requirement(spec, d) if requirement else None)
            if reason is None:
                candidates.append((spec.priorities[d], -spec._order, spec, d))
            else:
                rejected.append((spec, d, reason))
    if not candidates:
        if name != "auto" and len(rejected) == len(devices):
            spec, d, reason = rejected[-1]
            missing = d in spec.priorities and spec.availability(d) is not None
            # a reason that already names its package (e.g. onnxruntime-gpu for CUDA) needs no generic hint
            hint = spec.install_hint if missing and "pip install" not in reason else None
            raise EngineUnavailableError(name, d, reason, hint)
        detail = "; ".join(f"{s.name} on {d}: {r}" for s, d, r in rejected)
        # installing engines helps only when one is missing and none that is installed was turned down by the bundle
        bundle_says_no = any(s.unavailable_reason(d) is None for s, d, _ in rejected)
        missing = any(r.endswith(NOT_INSTALLED) for _, _, r in rejected)
        raise EngineUnavailableError(name, device, f"nothing can run here ({detail})",
                                     "pip install 'flexavatar[runtime]' (ONNX Runtime and OpenVINO)"
                                     if missing and not bundle_says_no else None)
    _, _, spec, d = max(candidates, key=lambda c: (c[0], c[1]))
    return spec, d


@functools.cache
def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@functools.cache
def cuda_device_present() -> bool:
    """A CUDA device is visible: asked of flexavatar's native CUDA library when it is loaded (it counts devices
    through the driver, without importing torch), else of torch."""
    try:
        from flexavatar.kernels.native import native_module
        info = native_module().cuda_info()
        if info.get("library_loaded"):
            return bool(info["available"])
    except (ImportError, KeyError, AttributeError):
        pass
    if not _installed("torch"):
        return False
    import torch
    return torch.cuda.is_available()


def _needs_torch_cuda() -> str | None:
    if not _installed("torch"):
        return "PyTorch is not installed (CUDA buffers are torch tensors handed to the CUDA rasterizer)"
    if not cuda_device_present():
        return "no CUDA device is visible"
    return None


# ---- ONNX Runtime -----------------------------------------------------------------------------------------

# ONNX Runtime's execution providers for the devices whose arrays stay on the host, preferred first, each with the
# options that point it at that device. Each onnxruntime package ships its own set (ORT_HOST_PACKAGES). ONNX Runtime
# copies the inputs to the device and the outputs back inside each run.
ORT_CPU = "CPUExecutionProvider"
_COREML = "CoreMLExecutionProvider"
ORT_HOST_PROVIDERS: dict[str, tuple[tuple[str, Mapping[str, str]], ...]] = {
    "cpu": ((ORT_CPU, {}),),
    "gpu": (("DmlExecutionProvider", {}), ("MIGraphXExecutionProvider", {}), ("ROCMExecutionProvider", {}),
            (_COREML, {"ModelFormat": "MLProgram", "MLComputeUnits": "CPUAndGPU"}),
            ("WebGpuExecutionProvider", {}), ("OpenVINOExecutionProvider", {"device_type": "GPU"})),
    "npu": (("QNNExecutionProvider", {"backend_type": "htp"}), ("VitisAIExecutionProvider", {}),
            (_COREML, {"ModelFormat": "MLProgram", "MLComputeUnits": "CPUAndNeuralEngine"}),
            ("OpenVINOExecutionProvider", {"device_type": "NPU"})),
}
ORT_DEVICE_ID_PROVIDERS = frozenset({"DmlExecutionProvider", "MIGraphXExecutionProvider", "ROCMExecutionProvider"})
_ORT_OPENVINO = "OpenVINOExecutionProvider"                 # picks its device by name: device_type "GPU.1"
ORT_HOST_PACKAGES = {"gpu": "pip install onnxruntime-directml (Windows, any GPU) or onnxruntime-openvino (Intel), or "
                            "AMD's ROCm build of onnxruntime (MIGraphX, Linux); on macOS onnxruntime has CoreML",
                     "npu": "pip install onnxruntime-qnn (Snapdragon) or onnxruntime-openvino (Intel), or AMD's Ryzen "
                            "AI build of onnxruntime (VitisAI); on macOS onnxruntime has CoreML"}


def ort_host_provider(device: str, device_id: int = 0) -> tuple[str, dict[str, str]] | None:
    """(provider name, its options) that ONNX Runtime runs a host-array ``device`` ("cpu", "gpu", "npu") with
    here: the first of ``ORT_HOST_PROVIDERS[device]`` this onnxruntime build has, pointed at device ``device_id``
    (the CPU has one); None if it has none. A device_id ≠ 0 for a provider that picks its device itself (CoreML,
    WebGPU, QNN, VitisAI) is a RuntimeArgumentError."""
    import onnxruntime as ort
    available = set(ort.get_available_providers())
    for name, options in ORT_HOST_PROVIDERS[device]:
        if name not in available:
            continue
        options = dict(options)
        if name in ORT_DEVICE_ID_PROVIDERS:
            options["device_id"] = str(device_id)
        elif name == _ORT_OPENVINO and device_id:
            options["device_type"] = f"{options['device_type']}.{device_id}"
        elif device_id and device != "cpu":
            raise RuntimeArgumentError("device_id", f"is {device_id} for {name}", "0: this provider picks its "
                                       "device itself")
        return name, options
    return None


def _ort_availability(device: str) -> str | None:
    if not _installed("onnxruntime"):
        return f"onnxruntime {NOT_INSTALLED}"
    import onnxruntime as ort
    if device == "cuda":
        # get_available_providers() lists CUDA in every onnxruntime-gpu install, GPU or not: the session
        # itself is checked again after it is created (OrtCudaModel).
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return "this onnxruntime build has no CUDAExecutionProvider (pip install onnxruntime-gpu instead)"
        return _needs_torch_cuda()
    if ort_host_provider(device) is None:
        if device == "gpu" and "CUDAExecutionProvider" in ort.get_available_providers():
            return ("this onnxruntime build (onnxruntime-gpu) reaches NVIDIA GPUs through CUDA: use device 'cuda' "
                    "(it has no other GPU provider)")
        looked_for = ", ".join(dict.fromkeys(name for name, _ in ORT_HOST_PROVIDERS[device]))
        return (f"this onnxruntime build has no {device.upper()} execution provider (looked for {looked_for}; it has "
                f"{', '.join(ort.get_available_providers())}): {ORT_HOST_PACKAGES[device]} (in place of onnxruntime: "
                "one onnxruntime package per environment)")
    return None


def ort_session_options(options: EngineOptions):
    """Session options of every ONNX Runtime session of the runtime (CPU and CUDA providers)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if options.num_threads:
        so.intra_op_num_threads = options.num_threads
    # The intra-op threads spin (busy-wait) for a while after run() returns, on the cores the rasterizer needs
    # next: stop them at the end of each run (spinning between the nodes of a run is kept). Measured on 2 CPU
    # cores, side by side: whole frame 1.11-1.29x faster with a small model (32²-256²), 1.02x at FLEX-1 size.
    so.add_session_config_entry("session.force_spinning_stop", "1")
    return so


def ort_formats(device: str, fused_decoders: bool | None) -> tuple[str, ...]:
    """The bundle formats ONNX Runtime runs on ``device``, preferred first. Decoders with ONNX Runtime's fused
    kernels (format onnx-ort, export target onnx-ort) come first on CUDA, where a frame is launch-bound and they
    cut its kernels; the CPU is compute-bound, and there they measured 0.96-0.98x the portable files (2 cores), so
    those come first. ``fused_decoders``: None = that choice, True = fused first everywhere, False = portable only.
    (The exporter writes no fused encoders: the encoders always run their portable file.)"""
    if fused_decoders is False:
        return (FORMAT_ONNX,)
    if fused_decoders or device == "cuda":
        return (FORMAT_ONNX_ORT, FORMAT_ONNX)
    return (FORMAT_ONNX, FORMAT_ONNX_ORT)


class OrtHostModel:
    """One graph of the bundle on an ONNX Runtime provider that takes and gives host (numpy) arrays: the CPU's, or
    a GPU's or NPU's (``ORT_HOST_PROVIDERS``), with the CPU provider under it for the nodes it does not take.
    ``nodes``: how many of the graph's nodes each provider runs, where this ONNX Runtime reports it, else None.
    A GPU / NPU provider that fails, when the session is made or in a run, is an ExecutionProviderError: ONNX
    Runtime's own fallback (the whole session moved to the CPU, announced on stdout) is off."""
    array_type = NUMPY

    def __init__(self, path, options: EngineOptions, provider: tuple[str, Mapping[str, str]], device: str = "cpu",
                 static_shapes: Mapping[str, int] | None = None):
        import onnxruntime as ort

        name, provider_options = provider
        self.provider, self.device, self.file = name, device, Path(path).name
        self.static_shapes = dict(static_shapes or {})          # dim name → value (InferenceBackend.static_shapes)
        so = ort_session_options(options)
        so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
        for dim, value in self.static_shapes.items():
            so.add_free_dimension_override_by_name(dim, value)
        below = [] if name == ORT_CPU else [ORT_CPU]
        try:
            self.session = ort.InferenceSession(str(path), so, providers=[(name, dict(provider_options)), *below])
        except Exception as e:  # noqa: BLE001 - ORT raises its own Fail / EPFail / RuntimeException types
            if name == ORT_CPU:
                raise
            raise ExecutionProviderError("onnxruntime", device, f"{name} could not open {self.file}: "
                                         f"{_first_line(e)}") from None
        # DirectML (and other device providers) take one Run at a time per session; the CPU provider any number
        self._run_lock = contextlib.nullcontext() if name == ORT_CPU else threading.Lock()
        if name != ORT_CPU:
            self.session.disable_fallback()
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.providers = self.session.get_providers()
        if not self.providers or self.providers[0] != name:     # ORT drops a provider it cannot create, with a warning
            raise ExecutionProviderError("onnxruntime", device, f"the session of {Path(path).name} did not get {name} "
                                         f"(it runs on {self.providers})")
        self.nodes = ort_nodes_per_provider(self.session)
        if name != ORT_CPU and self.nodes is not None:
            total, taken = sum(self.nodes.values()), self.nodes.get(name, 0)
            if not taken:
                raise ExecutionProviderError("onnxruntime", device, f"{name} took none of the {total} nodes of "
                                             f"{Path(path).name}: all of it would run on the CPU")
            if taken < total:
                log.info("%s: %d of %d nodes on %s, the rest on the CPU (with copies between them)", Path(path).name,
                         taken, total, name)

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        with self._run_lock:
            try:
                outputs = self.session.run(self.output_names, dict(feeds))
            except Exception as e:  # noqa: BLE001 - ORT's own types; a device provider's failure is typed here
                if self.provider == ORT_CPU:
                    raise
                raise ExecutionProviderError("onnxruntime", self.device, f"{self.provider} failed running "
                                             f"{self.file}: {_first_line(e)}") from None
        return dict(zip(self.output_names, outputs, strict=True))


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


def ort_nodes_per_provider(session) -> dict[str, int] | None:
    """{provider: nodes it runs} of a session made with "session.record_ep_graph_assignment_info" = "1";
    None where this onnxruntime cannot say."""
    if not hasattr(session, "get_provider_graph_assignment_info"):
        return None
    try:
        subgraphs = session.get_provider_graph_assignment_info()
    except Exception:  # noqa: BLE001 - ORT raises its own types when the recording is unsupported
        return None
    counts: dict[str, int] = {}
    for subgraph in subgraphs:
        counts[subgraph.ep_name] = counts.get(subgraph.ep_name, 0) + len(subgraph.get_nodes())
    return counts or None


class OrtBackend(InferenceBackend):
    name = "onnxruntime"
    format = FORMAT_ONNX

    def __init__(self, bundle, device, options):
        super().__init__(bundle, device, options)
        self.cuda_stream = None
        if device == "cuda":                    # one stream for every graph of the bundle and the rasterizer
            import torch
            self.cuda_stream = torch.cuda.Stream(torch.device("cuda", options.device_id))
            self.provider = ("CUDAExecutionProvider", {})
        else:
            self.provider = ort_host_provider(device, options.device_id)
            if self.provider is None:
                raise EngineUnavailableError("onnxruntime", device, _ort_availability(device) or "no provider")

    @classmethod
    def formats_for(cls, device: str, options: EngineOptions) -> tuple[str, ...]:
        return ort_formats(device, options.fused_decoders)

    @classmethod
    def precisions_for(cls, device: str) -> tuple[str, ...]:
        return PRECISIONS if device == "cpu" else FLOAT_PRECISIONS

    @property
    def graphs(self) -> bool:
        """Every graph of the bundle (decoders and encoder) replays CUDA graphs: on CUDA unless cuda_graphs=False.
        A session that runs node by node releases its page-locked staging buffers from a callback on the stream;
        with onnxruntime-gpu 1.31.1 that aborted the process on an H200 (CUDA error 800, cudaFreeHost inside the
        callback), at random calls and at exit, in every GPU session of 2026-11-27 (benchmarks/device/README.md).
        In graph mode ONNX Runtime releases them on the host; processes whose CUDA sessions all replayed graphs
        never aborted. The encoder's capture costs two extra runs on its first call."""
        return self.device == "cuda" and self.options.cuda_graphs is not False

    def _open_role(self, role: str, artifact: ModelArtifact) -> tuple[Model, ModelArtifact]:
        """With the default choice (fused_decoders=None) a decoder file this ONNX Runtime cannot open as asked (e.g.
        a fused kernel it lacks on this provider: a node off CUDA, which CUDA graphs refuse) gives way to the role's
        other file, with a warning; a choice made explicitly (True / False) fails as it is."""
        try:
            return self._open(artifact), artifact
        except ExecutionProviderError as e:
            if role in ENCODER_ROLES and self.device in HOST_ACCELERATORS:
                # the encoder runs once per avatar, and an NPU's compiler may not take it (DINOv2, dynamic shapes):
                # the CPU provider runs it, the frames stay on the device
                host = self._host_encoder(artifact)
                log.warning("%s; the encoder runs once per avatar: running %s on the CPU", e, host.path)
                return OrtHostModel(self.bundle.path(host), self.options, (ORT_CPU, {})), host
            raise                               # the provider, not the file: the other file would fare no better
        except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own Fail / RuntimeException types
            others = [a for a in self.candidates(role) if a.format != artifact.format]
            if self.options.fused_decoders is not None or not others:
                raise
            log.warning("%s does not run on %s here (%s): running %s instead", artifact.path, self.describe(),
                        _first_line(e), others[0].path)
            self.bundle.metadata(others[0])
            return self._open(others[0]), others[0]

    def _open(self, artifact: ModelArtifact) -> Model:
        path = self.bundle.path(artifact)
        if self.device == "cuda":
            from .gpu import OrtCudaModel
            return OrtCudaModel(path, artifact, self.options, self.cuda_stream, self.graphs)
        pinned = self.static_shapes(artifact) if self.device in HOST_ACCELERATORS else None
        return OrtHostModel(path, self.options, self.provider, self.device, pinned)

    def stream(self):
        if self.cuda_stream is None:
            return contextlib.nullcontext()
        import torch
        return torch.cuda.stream(self.cuda_stream)

    def hand_over(self, arrays) -> None:
        if self.cuda_stream is None:
            return
        import torch
        caller = torch.cuda.current_stream(self.cuda_stream.device)
        caller.wait_stream(self.cuda_stream)            # ordering on the GPU, not a host wait
        for t in arrays:
            t.record_stream(caller)                     # the allocator must not reuse them before the caller is done

    def describe(self) -> str:
        import onnxruntime as ort
        name = self.provider[0]
        graphs = ", CUDA graphs" if self.graphs else ""
        nodes = getattr(self._models.get(ROLE_DECODER), "nodes", None)
        share = (f" ({nodes.get(name, 0)} of {sum(nodes.values())} decoder nodes)"
                 if nodes and name != ORT_CPU and self.device != "cuda" else "")
        static = ", static shapes (1 frame a call)" if self.frames_per_call == 1 else ""
        return f"onnxruntime {ort.__version__} {name}{share}{graphs}{static}"

    def synchronize(self) -> None:
        if self.device == "cuda":
            import torch
            torch.cuda.synchronize(self.options.device_id)


# ---- OpenVINO ---------------------------------------------------------------------------------------------

OPENVINO_DEVICES = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU"}


def _openvino_availability(device: str) -> str | None:
    if not _installed("openvino"):
        return f"openvino {NOT_INSTALLED}"
    if device != "cpu":
        return _openvino_devices()[OPENVINO_DEVICES[device]]
    return None


@functools.cache
def _openvino_devices_present() -> frozenset[str]:
    """OpenVINO's device names here, e.g. {"CPU", "GPU"} or {"CPU", "GPU.0", "GPU.1"}."""
    import openvino as ov
    return frozenset(ov.Core().available_devices)


@functools.cache
def _openvino_devices() -> dict[str, str | None]:
    present = set(d.split(".")[0] for d in _openvino_devices_present())
    return {name: None if name in present else f"OpenVINO sees no {name} device (it has: {sorted(present)})"
            for name in OPENVINO_DEVICES.values()}


class OpenVinoModel:
    """A compiled model with one infer request per calling thread (requests are not thread-safe)."""
    array_type = NUMPY

    def __init__(self, core, path, device: str, config: dict,
                 input_shapes: Mapping[str, Sequence[int]] | None = None):
        model = str(path)
        if input_shapes:                    # input name → its dims, -1 where dynamic (InferenceBackend.static_shapes)
            import openvino as ov
            model = core.read_model(model)
            model.reshape({name: ov.PartialShape([ov.Dimension() if d < 0 else ov.Dimension(d) for d in dims])
                           for name, dims in input_shapes.items()})
        self.compiled = core.compile_model(model, device, config)       # "CPU", "GPU", "GPU.1", "NPU", ...
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        self._local = threading.local()

    @property
    def inference_precision(self) -> str:
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")      # an openvino Type, e.g. f32
        return hint.to_string() if hasattr(hint, "to_string") else str(hint)

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        result = request.infer(dict(feeds))                   # outputs are copies (share_outputs=False)
        return {name: result[out] for name, out in zip(self.output_names, self.compiled.outputs, strict=True)}


class OpenVinoBackend(InferenceBackend):
    name = "openvino"
    format = FORMAT_OPENVINO

    @classmethod
    def precisions_for(cls, device: str) -> tuple[str, ...]:
        return FLOAT_PRECISIONS

    def __init__(self, bundle, device, options):
        super().__init__(bundle, device, options)
        import openvino as ov
        self.core = ov.Core()
        # OpenVINO names a second GPU "GPU.1" (the first "GPU" or "GPU.0"); the CPU has no index
        self.device_name = OPENVINO_DEVICES[device] + (f".{options.device_id}" if options.device_id and
                                                       device != "cpu" else "")
        if self.device_name not in _openvino_devices_present() and options.device_id:
            raise EngineUnavailableError("openvino", device, f"OpenVINO sees no {self.device_name} (it has: "
                                         f"{sorted(_openvino_devices_present())})")

    def config(self, artifact: ModelArtifact) -> dict:
        # CPUs with AMX or AVX512-bf16 compute in bf16 by default: 23 dB rendered PSNR for FLEX-1 (flexavatar-verify),
        # where the export checked f32. On the CPU both files (the fp16 IR holds fp16 weights) are pinned to f32 unless
        # asked; the GPU plugin keeps its own choice (f16) for the fp16 file, the NPU plugin (an f16 device) for both.
        pinned = self.device == "cpu" or (self.device == "gpu" and artifact.precision == "fp32")
        hint = self.options.inference_precision or ("f32" if pinned else None)
        config = {"INFERENCE_PRECISION_HINT": hint} if hint else {}
        if self.options.num_threads:
            config["INFERENCE_NUM_THREADS"] = self.options.num_threads
        return config

    def _open(self, artifact: ModelArtifact) -> Model:
        shapes = None
        if self.device in HOST_ACCELERATORS:
            pinned = self.static_shapes(artifact)
            shapes = {t.name: [pinned.get(d, -1) if isinstance(d, str) else d for d in t.shape]
                      for t in artifact.inputs if any(isinstance(d, str) and d in pinned for d in t.shape)}
        return OpenVinoModel(self.core, self.bundle.path(artifact), self.device_name, self.config(artifact), shapes)

    def _open_role(self, role: str, artifact: ModelArtifact) -> tuple[Model, ModelArtifact]:
        try:
            return self._open(artifact), artifact
        except RuntimeError as e:               # OpenVINO's compile errors (a plugin that does not take the graph)
            if role not in ENCODER_ROLES or self.device not in HOST_ACCELERATORS:
                raise
            # as for ONNX Runtime's providers: the encoder runs once per avatar, on the CPU plugin when it must
            host = self._host_encoder(artifact)
            log.warning("OpenVINO %s could not compile %s (%s); the encoder runs once per avatar: running %s on the "
                        "CPU", self.device_name, artifact.path, _first_line(e), host.path)
            # f32 whatever was asked for the device: the CPU's own default may be bf16 (see config)
            cpu = {"INFERENCE_PRECISION_HINT": "f32"}
            if self.options.num_threads:
                cpu["INFERENCE_NUM_THREADS"] = self.options.num_threads
            return OpenVinoModel(self.core, self.bundle.path(host), "CPU", cpu), host

    def describe(self) -> str:
        import openvino as ov
        decoder = self._models.get(ROLE_DECODER)
        hint = decoder.inference_precision if decoder is not None else self.options.inference_precision or "f32"
        static = ", static shapes (1 frame a call)" if self.frames_per_call == 1 else ""
        return f"openvino {ov.get_version().split('-')[0]} {self.device_name}, inference precision {hint}{static}"


# ---- PyTorch (the reference model) ------------------------------------------------------------------------

def _torch_availability(device: str) -> str | None:
    if not _installed("torch"):
        return f"PyTorch {NOT_INSTALLED}"
    if device == "cuda" and not cuda_device_present():
        return "no CUDA device is visible"
    return None


def _tensor(x, device):
    """numpy (possibly read-only, like an Avatar's code) or torch → a torch tensor on device."""
    import torch
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.array(x, copy=not x.flags.writeable)).to(device)
    return torch.as_tensor(x, device=device)


class TorchDecoderModel:
    """code [1, R², D] + expressions [E, 135] → the decoder's outputs, by FlexAvatarModel.decode."""
    array_type = TORCH

    def __init__(self, model, device):
        self.model, self.device = model, device

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        from flexavatar.model import MULTI_VIEW_DATASET_ID, AvatarCode
        code = _tensor(feeds["code"], self.device).transpose(0, 1)                           # [R², 1, D]
        expressions = _tensor(feeds["expressions"], self.device)
        with _no_tf32():
            g = self.model.decode(AvatarCode(code), expressions, dataset_id=MULTI_VIEW_DATASET_ID)
        return dict(zip(GAUSSIAN_OUTPUTS, (g.means, g.quats, g.scales, g.opacities, g.sh0), strict=True))


# torch.compile settings of the "torch-compile" engine: Inductor; on CUDA "reduce-overhead" (its kernels replayed as
# CUDA graphs). Module constants: tests swap the backend for "aot_eager" (the same graph, no code generation).
TORCH_COMPILE_BACKEND = "inductor"
TORCH_COMPILE_MODES = {"cuda": "reduce-overhead", "cpu": "default"}
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")      # the modes that replay CUDA graphs
NETWORK_OUTPUTS = ("positions", "rotations", "scales", "opacities", "colors")   # FlexNetwork.decode's, in
                                                                                 # GAUSSIAN_OUTPUTS' order


def network_decode_function(network, device_type: str, half: bool, fir_as_taps: bool = True):
    """The function the "torch-compile" engine compiles (and benchmarks/device/torch_compile.py times):
    ``network.decode`` (code [R², 1, D], expressions [1, E, 135], dataset ids [1] → 5 tensors [E, G, …]) under
    fp16 autocast when ``half`` (PyTorch's per-op precision policy), its outputs float32 (the rasterizers' dtype).
    ``fir_as_taps``: the upsampler's FIR low-pass as multiply-adds, which Inductor fuses with the bias and activation
    after it (``flexavatar.upsampler.fir_taps``), instead of cuDNN's depthwise convolution (False: the A/B baseline of
    benchmarks/device/torch_compile.py)."""
    import torch

    def decode(code, expressions, ids):
        with torch.autocast(device_type, dtype=torch.float16, enabled=half):
            out = network.decode(code, expressions, ids, fir_as_taps=fir_as_taps)
        return tuple(out[k].float() for k in NETWORK_OUTPUTS)
    return decode


def raster_function(pixels):
    """The native rasterizer (``torch.ops.flexavatar.rasterize``) and ``pixels`` (the runtime's frame format, e.g.
    uint8 RGB) as one function, for compiled frames: means [E, G, 3], quats [E, G, 4], scales [E, G, 3], opacities
    [E, G], sh0 [E, G, 3], viewmats [E, 1, 4, 4] (world→camera), ks [E, 1, 3, 3] (pixel intrinsics), backgrounds
    [E, 1, 3], width, height, capacity (the sort's intersection slots: > 0 on CUDA, no host sync) → (pixels(rgb
    [E, H, W, 3], alpha [E, H, W, 1]), count int64 [1]: the exact intersection count, -1 on the CPU). Each frame's
    Gaussians are seen by its own camera."""
    from flexavatar.kernels.torch_op import rasterize_op

    rasterize = rasterize_op()

    def frame(means, quats, scales, opacities, sh0, viewmats, ks, backgrounds, width: int, height: int,
              capacity: int):
        image, alpha, _, count = rasterize(means, quats, scales, opacities, sh0, viewmats, ks, backgrounds, width,
                                           height, capacity)
        e = means.shape[0]
        return pixels(image.reshape(e, height, width, 3), alpha.reshape(e, height, width, 1)), count
    return frame


def network_frame_function(network, device_type: str, half: bool, pixels):
    """A whole frame as one function, for the "torch-compile" engine's compiled frames: ``network_decode_function``
    then ``raster_function``: code [R², 1, D], expressions [1, E, 135], ids [1], then viewmats … capacity as there →
    (frames, count)."""
    decode = network_decode_function(network, device_type, half)
    raster = raster_function(pixels)

    def frame(code, expressions, ids, viewmats, ks, backgrounds, width: int, height: int, capacity: int):
        return raster(*decode(code, expressions, ids), viewmats, ks, backgrounds, width, height, capacity)
    return frame


class CompiledNetworkDecode:
    """``network_decode_function`` (or ``function``, e.g. ``network_frame_function`` or ``raster_function``, which need
    no network) under ``torch.compile``: call it as that function. What the "torch-compile" engine runs and
    benchmarks/device/torch_compile.py times. mode: torch.compile's (default: the engine's, per device type);
    ``cuda_graphs``: whether the outputs are CUDA-graph buffers that the next call overwrites.

    freeze (Inductor only; default: on CUDA): the weights become compile-time constants
    (``torch._inductor.config.freezing``), so work that depends on them alone is done once, not every frame: the fp16
    copy of every transformer weight that autocast makes (110 M parameters in FLEX-1: 440 MB read and 220 MB
    written a frame, in a kernel per weight) and the upsampler's demodulated conv weights, which ONNX export folds
    too. The compiled frame then reads its three inputs only, and the module's weights must not change after the
    first call. Not on the CPU by default: there Inductor turns frozen linears into oneDNN calls, and the fixture
    model's fp32 decode took 2.1 ms a call frozen against 1.4 ms not, side by side (fp16 autocast: 6.2 against 6.0).
    Dynamo reads the setting while it traces, hence the patch around each call that may compile (a new input shape):
    patching every call would cost 16 µs of host time a frame on a 2-core CPU."""

    def __init__(self, network, device_type: str, half: bool, mode: str | None = None, backend: str | None = None,
                 freeze: bool | None = None, fir_as_taps: bool = True, function=None):
        import torch
        backend = TORCH_COMPILE_BACKEND if backend is None else backend
        mode = TORCH_COMPILE_MODES[device_type] if mode is None else mode
        inductor = backend == "inductor"
        self.mode, self.backend = mode, backend
        self.cuda_graphs = inductor and device_type == "cuda" and mode in CUDA_GRAPH_MODES
        function = network_decode_function(network, device_type, half, fir_as_taps) if function is None else function
        # Dynamo keeps its compilations, and counts them against recompile_limit (8), per code object: the closures
        # made by one factory (every pixel format's frame, every runtime's decoder) would share one count and one
        # cache, and past 8 sizes, formats and capacities in a process run eagerly. A copy of the code is this
        # instance's own.
        function = types.FunctionType(function.__code__.replace(), function.__globals__, function.__name__,
                                      function.__defaults__, function.__closure__)
        self._compiled = torch.compile(function, backend=backend, dynamic=False, mode=mode if inductor else None)
        self.freeze = inductor and (device_type == "cuda" if freeze is None else freeze)
        self.name = getattr(function, "__name__", "function")
        self._compiled_for: set[tuple] = set()          # the input shapes (and ints) compiled so far

    def __call__(self, *args) -> tuple:
        import torch
        with torch.no_grad():                            # freezing folds weights only in inference graphs
            if self.cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()     # the previous call's outputs are consumed
            shapes = tuple(tuple(a.shape) if hasattr(a, "shape") else a for a in args)    # what Dynamo guards on
            if shapes in self._compiled_for:
                return self._compiled(*args)
            # a new size compiles (dynamic=False): tens of seconds, said so instead of a silent stall
            log.info("torch-compile: compiling %s for inputs %s (%s, once per input size)", self.name, shapes,
                     self.backend)
            start = time.perf_counter()
            out = self._first_call(*args)
            self._compiled_for.add(shapes)
            log.info("torch-compile: %s compiled in %.1f s", self.name, time.perf_counter() - start)
            return out

    def _first_call(self, *args) -> tuple:
        if not self.freeze:
            return self._compiled(*args)
        import torch
        import torch._inductor.config as inductor_config
        try:
            with inductor_config.patch(freezing=True):
                return self._compiled(*args)
        except torch._dynamo.exc.BackendCompilerFailed as e:
            # frozen weights are an optimisation: if Inductor's freezing passes fail on some version or GPU,
            # the decoder still compiles without them (Dynamo caches no failed compilation), and says so
            cause = getattr(e, "inner_exception", None) or e
            text = str(cause).strip().splitlines()
            log.warning("torch-compile: compiling with frozen weights failed (%s: %s); compiling without them",
                        type(cause).__name__, text[0][:300] if text else "")
            self.freeze = False
            return self._compiled(*args)


class TorchCompiledDecoderModel:
    """``FlexNetwork.decode`` under ``torch.compile`` (``CompiledNetworkDecode``): Inductor fuses the normalisations,
    bias and residual adds and activations into a few generated kernels, folds the weight-only work at compile time,
    and on CUDA replays the kernels as CUDA graphs, whose outputs the next call overwrites (``cuda_graphs``: Runtime
    copies or consumes them first, one frame at a time). Precision "fp16" is fp16 autocast. Every new expression
    count (batch) compiles once: tens of seconds; Dynamo keeps at most ``torch._dynamo.config.recompile_limit``
    (8) compilations of each compiled function (this decoder; the whole frames of each pixel format), then runs it
    eagerly with a warning. The model's weights must not change once it has compiled (they are frozen into it).
    The inputs come from Runtime, checked on the host (finite expressions, the code's shape): nothing here
    synchronises with the GPU."""
    array_type = TORCH

    def __init__(self, model, device: str, precision: str):
        import torch
        self.device = torch.device(device)
        self._network, self._half = model.network, precision == "fp16"
        self._decode = CompiledNetworkDecode(model.network, self.device.type, half=self._half)
        self._frames: dict[Any, CompiledNetworkDecode] = {}         # per pixel format: compiled whole frames
        self.cuda_graphs = self._decode.cuda_graphs
        from flexavatar.model import MULTI_VIEW_DATASET_ID
        self._ids = torch.full((1,), MULTI_VIEW_DATASET_ID, dtype=torch.long, device=self.device)
        self._dtype = model.network._conv_patchify.weight.dtype

    def _input(self, x):
        if self.device.type == "cuda":
            from .gpu import to_cuda
            return to_cuda(x, self.device)                 # pinned and queued: no host wait
        return _tensor(x, self.device).to(self._dtype)

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        code = self._input(feeds["code"]).transpose(0, 1)                                # [R², 1, D]
        expressions = self._input(feeds["expressions"])[None]                            # [1, E, 135]
        with _no_tf32():
            out = self._decode(code, expressions, self._ids)
        return dict(zip(GAUSSIAN_OUTPUTS, out, strict=True))

    def frames(self, code, expressions, viewmats, ks, background, width: int, height: int, capacity: int,
               pixels) -> tuple:
        """A whole frame per expression, compiled as one function (``network_frame_function``; on CUDA one replay of
        its CUDA graphs): code [1, R², D], expressions [E, 135], viewmats [E, 4, 4], ks [E, 3, 3], background [3],
        capacity: the sort's intersection slots (> 0 on CUDA: no host sync), pixels: the frame format function →
        (frames, count int64 [1]), on this model's device. Every pixel format, size, capacity and E compiles once.
        With CUDA graphs, the outputs are overwritten by the next call: consume (or copy) them before it."""
        compiled = self._frames.get(pixels)
        if compiled is None:
            function = network_frame_function(self._network, self.device.type, self._half, pixels)
            compiled = self._frames[pixels] = CompiledNetworkDecode(self._network, self.device.type, self._half,
                                                                    function=function)
        e = len(expressions)
        code = self._input(code).transpose(0, 1)                                         # [R², 1, D]
        # the frame's small inputs in one upload (on CUDA one page-locked copy, not four), each a contiguous view
        shapes = ((1, e, EXPRESSION_DIM), (e, 1, 4, 4), (e, 1, 3, 3), (e, 1, 3))
        parts = [np.asarray(x, np.float32).reshape(-1) for x in (expressions, viewmats, ks,
                                                                  np.broadcast_to(background, (e, 3)))]
        packed = self._input(np.concatenate(parts))
        expressions, viewmats, ks, backgrounds = (part.view(shape) for part, shape in
                                                  zip(packed.split([p.size for p in parts]), shapes, strict=True))
        with _no_tf32():
            return compiled(code, expressions, self._ids, viewmats, ks, backgrounds, width, height, capacity)


def _no_tf32():
    """fp32 means fp32 on every engine: cuDNN convolutions would run in TF32 by PyTorch's default."""
    import torch
    cudnn = torch.backends.cudnn
    return cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                       allow_tf32=False)


class TorchEncoderModel:
    """image [B, 3, S, S] + cam2world + intrinsics (+ features [B, C, h, w]) → code [B, R², D] (numpy)."""
    array_type = NUMPY

    def __init__(self, model, device):
        self.model, self.device = model, device

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        t = {k: _tensor(v, self.device) for k, v in feeds.items()}
        features = t["features"][:, None] if "features" in t else None
        code = self.model.encode(t["image"], t["cam2world"], t["intrinsics"], features=features)
        return {"code": code.tokens.transpose(0, 1).contiguous().cpu().numpy()}


class TorchBackend(InferenceBackend):
    """The PyTorch model the bundle was exported from (``model=`` or ``checkpoint=``), for parity checks.
    A ``model=`` is moved to the device in place (``nn.Module.to``).

    It runs no bundle file, but the bundle still says which model it must be: the template hash and
    config must match (and the checkpoint's sha256 when a file is given)."""
    name = "torch"
    requires_model = True       # "auto" skips it without model=, checkpoint= or the bundle's model.safetensors

    @classmethod
    def precisions_for(cls, device: str) -> tuple[str, ...]:
        return FLOAT_PRECISIONS                 # fp32, or fp16 autocast

    def __init__(self, bundle, device, options):
        super().__init__(bundle, device, options)
        self.torch_device = f"cuda:{options.device_id}" if device == "cuda" else device
        self.model = _torch_model(bundle, options).to(self.torch_device)

    def has(self, role: str) -> bool:
        if role == ROLE_DECODER:
            return True
        if role == ROLE_ENCODER:
            return self.model.dinov2 is not None
        return role == ROLE_ENCODER_FEATURES      # a specialised avatar decoder is an ONNX-only artifact

    def load(self, role: str) -> Model:
        if role == ROLE_DECODER_AVATAR or not self.has(role):
            raise RuntimeArgumentError("role", f"{role!r} is not available from the PyTorch model",
                                       "decoder, encoder (needs dinov2) or encoder_features")
        models = {ROLE_DECODER: TorchDecoderModel, ROLE_ENCODER: TorchEncoderModel,
                  ROLE_ENCODER_FEATURES: TorchEncoderModel}
        return models[role](self.model, self.torch_device)

    def describe(self) -> str:
        import torch
        return f"torch {torch.__version__} eager ({self.torch_device})"

    def synchronize(self) -> None:
        if self.device == "cuda":
            import torch
            torch.cuda.synchronize(self.torch_device)


class TorchCompileBackend(TorchBackend):
    """The PyTorch model's decoder under ``torch.compile`` (``TorchCompiledDecoderModel``): fp32, or fp16 autocast
    with precision="fp16"; the encoder runs eagerly (once per avatar). Same model checks as "torch"."""
    name = "torch-compile"

    def load(self, role: str) -> Model:
        if role != ROLE_DECODER:
            return super().load(role)
        with self._lock:
            if ROLE_DECODER not in self._models:
                self._models[ROLE_DECODER] = TorchCompiledDecoderModel(self.model, self.torch_device,
                                                                       self.options.precision)
            return self._models[ROLE_DECODER]

    def describe(self) -> str:
        import torch
        mode = TORCH_COMPILE_MODES["cuda" if self.device == "cuda" else "cpu"]
        return (f"torch {torch.__version__} compiled ({TORCH_COMPILE_BACKEND}, {mode}, "
                f"{'fp16 autocast' if self.options.precision == 'fp16' else 'fp32'}; {self.torch_device})")


def _torch_model(bundle: Bundle, options: EngineOptions):
    from flexavatar.bundle import sha256_file
    from flexavatar.config import FlexConfig
    from flexavatar.model import FlexAvatarModel

    m = bundle.manifest
    model = options.model
    if model is None and options.checkpoint is None and m.torch_model is not None:
        model = FlexAvatarModel.load(bundle.path(m.torch_model.path))      # the bundle's own (target pytorch)
    if model is None:
        if options.checkpoint is None:
            raise RuntimeArgumentError("model", "is missing for backend='torch'", "model=FlexAvatarModel or "
                                       "checkpoint=path (+ template=, dinov2=): the bundle holds no PyTorch model "
                                       "(export it with --targets ...,pytorch to carry one)")
        digest = sha256_file(options.checkpoint)
        if digest != m.model.checkpoint_sha256:
            raise ModelMismatchError(f"checkpoint {options.checkpoint}: sha256 {digest[:16]}… is not the bundle's "
                                     f"{m.model.checkpoint} ({m.model.checkpoint_sha256[:16]}…)")
        if options.template is None:
            raise RuntimeArgumentError("template", "is missing for backend='torch' with checkpoint=",
                                       f"the {m.template.source} the bundle was exported with")
        model = FlexAvatarModel.from_checkpoint(options.checkpoint, template=options.template,
                                                dinov2=options.dinov2, config=FlexConfig.from_dict(m.model.config))
    if not isinstance(model, FlexAvatarModel):
        raise RuntimeArgumentError("model", f"is a {type(model).__name__}", "a flexavatar FlexAvatarModel")
    if model.template.sha256() != m.template.sha256:
        raise ModelMismatchError(f"the model's template (sha256 {model.template.sha256()[:16]}…) is not the bundle's "
                                 f"{m.template.source} ({m.template.sha256[:16]}…)")
    if model.config.to_dict() != m.model.config:
        raise ModelMismatchError("the model's FlexConfig differs from the bundle's manifest.model.config")
    return model.eval()


# "gpu" / "npu": OpenVINO first where both can (its plugins reach Intel devices only; ONNX Runtime's providers the rest)
register_engine("onnxruntime", OrtBackend, priorities={"cuda": 300, "cpu": 150, "gpu": 140, "npu": 140},
                availability=_ort_availability,
                install_hint="pip install onnxruntime (CPU) or onnxruntime-gpu (CUDA)",
                description="ONNX Runtime: CPU provider, CUDA provider with IO binding and optional CUDA graphs, or a "
                            "GPU / NPU provider (DirectML, MIGraphX, CoreML, QNN, ...) with host arrays")
register_engine("openvino", OpenVinoBackend, priorities={"cpu": 100, "gpu": 150, "npu": 150},
                availability=_openvino_availability, install_hint="pip install openvino",
                description="OpenVINO IR on the CPU (or Intel GPU / NPU) plugin, f32 precision hint for fp32 bundles")
register_engine("torch", TorchBackend, priorities={"cuda": 200, "cpu": 10}, availability=_torch_availability,
                install_hint="pip install torch",
                description="the PyTorch model itself (needs the checkpoint); the parity reference")
# below "torch": "auto" does not pick it (its first frame of each batch size compiles for tens of seconds)
register_engine("torch-compile", TorchCompileBackend, priorities={"cuda": 150, "cpu": 5},
                availability=_torch_availability, install_hint="pip install torch (Inductor needs a C++ compiler "
                "on the CPU, Triton on CUDA)",
                description="the PyTorch model's decoder under torch.compile (Inductor; CUDA graphs on CUDA), "
                            "fp32 or fp16 autocast; needs the checkpoint")
