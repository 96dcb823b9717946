"""ONNX Runtime on CUDA without round trips: IO binding to device buffers, optional CUDA graphs.

Per decoded chunk the host only enqueues work: inputs are CUDA torch tensors (the avatar code is uploaded
once per avatar, the 135-d expressions are a few hundred bytes), outputs are bound to preallocated CUDA
torch tensors, and ONNX Runtime runs on the same CUDA stream as the rasterizer (``user_compute_stream``)
with ``disable_synchronize_execution_providers`` so ``run_with_iobinding`` returns without waiting. The
Gaussians then go to the CUDA rasterizer as they are (``flexavatar.kernels`` hands CUDA torch tensors to
the native library through ``__cuda_array_interface__``, zero copy). The host waits only when the caller
asks for pixels.

CUDA graphs (the default on CUDA; ``cuda_graphs=False`` runs the graph node by node, which onnxruntime-gpu 1.31.1
occasionally aborted, see ``OrtBackend.graphs``): ONNX Runtime captures the decoder per expression-batch size E (one
``gpu_graph_id`` each) with inputs and outputs at fixed addresses; new inputs are copied into those
buffers on the stream, and the outputs are overwritten by the next call — the runtime consumes them
(rasterizes) before that, and ``Runtime.decode`` returns copies. ONNX Runtime keeps captured graphs per
thread and captures in CUDA's global mode, so a ``Runtime`` with graphs renders one frame at a time (a
frame lock: decode, rasterize, readback) and each new thread captures once; other CUDA work in other
threads during a capture (the first frames of each batch size and thread) can invalidate it.
Needs onnxruntime-gpu ≥ 1.18 and a graph that runs entirely on the CUDA provider.

Host syncs inside a frame: none after a runtime's first frame. The native CUDA rasterizer sizes its sort by its
tile-intersection count, read back to the host, in that first frame only; later frames sort into a capacity
from the counts seen so far (``intersections.py``), and a frame that outgrows it is found when its pixels are
read back, and rendered again. Nothing waits until the pixels are read back (``Runtime.iter_render`` reads them
back asynchronously and, over several decoder calls, hands a call's pixels out once the next call is decoding).

This module imports torch and onnxruntime; it is only imported when device="cuda".
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from flexavatar.bundle import ModelArtifact

from .engines import TORCH, EngineOptions, ort_session_options
from .errors import EngineUnavailableError


def to_cuda(x, device) -> Any:
    """numpy / torch → contiguous float32 CUDA tensor, enqueued on the current stream without a host sync
    (numpy goes through pinned memory; the caching host allocator keeps it alive until the copy is done)."""
    import torch
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=torch.float32, non_blocking=True).contiguous()
    host = torch.from_numpy(np.array(x, dtype=np.float32, order="C", copy=True))
    return host.pin_memory().to(device, non_blocking=True)


def copy_to_host_async(x) -> tuple[Any, Any]:
    """CUDA tensor → (its page-locked host copy, a CUDA event recorded after the copy on the current stream):
    queued, no wait; read the copy after ``event.synchronize()``."""
    import torch
    host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    host.copy_(x, non_blocking=True)
    done = torch.cuda.Event()
    done.record(torch.cuda.current_stream(x.device))
    return host, done


log = logging.getLogger("flexavatar.runtime")

# onnxruntime-gpu versions seen aborting CUDA sessions that run node by node (no CUDA graphs)
NODE_BY_NODE_ABORTS = ("1.31.",)


def node_by_node_aborts(ort_version: str) -> bool:
    """Whether this onnxruntime-gpu version is one seen aborting CUDA sessions that run node by node."""
    return ort_version.startswith(NODE_BY_NODE_ABORTS)


def cuda_provider_options(device_id: int, stream_handle: int, cuda_graphs: bool, precision: str) -> dict[str, str]:
    """The CUDA provider's options for a model file of ``precision``, as the C++ runtime sets them
    (cpp/runtime/ort_session.cpp ``cuda_provider_options``)."""
    return {"device_id": str(device_id),
            "user_compute_stream": str(stream_handle),          # ORT, copies and the rasterizer share one stream
            "enable_cuda_graph": "1" if cuda_graphs else "0",
            # fp32 means fp32: ORT's CUDA provider runs float32 MatMul/Conv in TF32 by default (10-bit mantissa),
            # which moved a FLEX-1 frame by up to 0.08 against PyTorch on an H200; fp16 bundles are the fast path
            "use_tf32": "0",
            # cuDNN's convolution search. fp16: HEURISTIC. On an H200 the FLEX-1 fp16 decoder (CUDA graphs) took
            # 2.09 ms a call with it against 4.36 ms with ORT's default EXHAUSTIVE, side by side (2026-11-27),
            # whose timed search picks implicit_convolve_sgemm / dgrad_engine kernels without tensor cores for the
            # upsampler (2.7 of 4.6 GPU ms a frame before); DEFAULT was slower still. fp32: EXHAUSTIVE.
            "cudnn_conv_algo_search": "HEURISTIC" if precision == "fp16" else "EXHAUSTIVE",
            # an arena that grows by what is asked, not by powers of two
            "arena_extend_strategy": "kSameAsRequested"}


def cuda_run_options():
    """Run options of every decoder call: return once the work is enqueued (the caller syncs for pixels)."""
    import onnxruntime as ort

    run_options = ort.RunOptions()
    run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
    return run_options


class OrtCudaModel:
    """One graph of the bundle on ONNX Runtime's CUDA provider; ``run`` takes numpy or CUDA torch tensors
    and returns CUDA torch tensors (float32, on ``self.stream``'s device)."""
    array_type = TORCH

    def __init__(self, path, artifact: ModelArtifact, options: EngineOptions, stream, cuda_graphs: bool):
        import torch  # first: loads the CUDA/cuDNN libraries that ONNX Runtime's CUDA provider links to
        import onnxruntime as ort

        if hasattr(ort, "preload_dlls"):     # onnxruntime-gpu >= 1.21: CUDA/cuDNN from nvidia-* wheels, torch-aware
            ort.preload_dlls()
        self.torch = torch
        self.device = torch.device("cuda", options.device_id)
        self.stream = stream                                    # ORT, copies and the rasterizer share it
        self.artifact = artifact
        self.cuda_graphs = bool(cuda_graphs)
        provider = cuda_provider_options(options.device_id, self.stream.cuda_stream, self.cuda_graphs,
                                         artifact.precision)
        so = ort_session_options(options)
        try:
            self.session = ort.InferenceSession(str(path), so, providers=[("CUDAExecutionProvider", provider),
                                                                          "CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - ORT raises its own Fail / RuntimeException types
            if not self.cuda_graphs:
                raise
            # ORT refuses graph capture at session creation when a compute node fell back to the CPU
            # (Memcpy nodes) or the graph has control flow
            raise EngineUnavailableError("onnxruntime", "cuda", f"CUDA graphs refused for {path.name}: "
                                         f"{str(e).splitlines()[0][:300]}",
                                         "run without cuda_graphs (or re-export with --opset 18)") from None
        if not self.cuda_graphs and node_by_node_aborts(ort.__version__):
            log.warning("%s runs node by node on CUDA (cuda_graphs=False): onnxruntime-gpu %s aborted such sessions "
                        "on an H200 (CUDA error 800, cudaFreeHost in a stream callback; benchmarks/device/README.md). "
                        "The default, CUDA graphs, never did", path.name, ort.__version__)
        # get_available_providers() lists CUDA in every onnxruntime-gpu install: what counts is the session's
        active = self.session.get_providers()
        if not active or active[0] != "CUDAExecutionProvider":
            raise EngineUnavailableError("onnxruntime", "cuda", f"the session fell back to {active} (CUDA libraries "
                                         "or driver missing?)",
                                         "check `nvidia-smi` and the onnxruntime-gpu CUDA version")
        self.output_names = [o.name for o in artifact.outputs]
        self.run_options = cuda_run_options()
        self._local = threading.local()          # IOBinding objects are not thread-safe
        self._graphs: dict[tuple, _GraphSlot] = {}        # per input shapes (batch size, feature map size)
        self._graph_lock = threading.Lock()

    # -- buffers --
    def _output_shapes(self, n_expressions: int) -> dict[str, tuple[int, ...]]:
        return {o.name: tuple(n_expressions if isinstance(d, str) else d for d in o.shape)
                for o in self.artifact.outputs}

    def _to_device(self, x) -> Any:
        return to_cuda(x, self.device)

    def _bind(self, binding, inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for name, t in inputs.items():
            binding.bind_input(name, "cuda", self.device.index or 0, np.float32, tuple(t.shape), t.data_ptr())
        for name, t in outputs.items():
            binding.bind_output(name, "cuda", self.device.index or 0, np.float32, tuple(t.shape), t.data_ptr())

    def _n_expressions(self, feeds: Mapping[str, Any]) -> int:
        return int(feeds["expressions"].shape[0]) if "expressions" in feeds else int(feeds["image"].shape[0])

    # -- run --
    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """Enqueue the graph on ``self.stream`` after the caller's current stream's work (CUDA inputs made there),
        and hand the outputs back ordered before the caller's later work: no host wait either way."""
        torch = self.torch
        n = self._n_expressions(feeds)
        caller = torch.cuda.current_stream(self.device)
        if caller != self.stream:
            self.stream.wait_stream(caller)
            for x in feeds.values():
                if isinstance(x, torch.Tensor) and x.is_cuda:
                    x.record_stream(self.stream)      # not reused by the caller's allocator before ORT read it
        with torch.cuda.stream(self.stream):
            if self.cuda_graphs:
                outputs = self._run_graph(feeds, n)
            else:
                inputs = {name: self._to_device(x) for name, x in feeds.items()}
                outputs = {name: torch.empty(shape, dtype=torch.float32, device=self.device)
                           for name, shape in self._output_shapes(n).items()}
                binding = getattr(self._local, "binding", None)
                if binding is None:
                    binding = self._local.binding = self.session.io_binding()
                self._bind(binding, inputs, outputs)
                self.session.run_with_iobinding(binding, self.run_options)
                # inputs stay alive until the stream reaches them: the caching allocator reuses memory
                # stream-ordered, and they were made on self.stream
        if caller != self.stream:
            caller.wait_stream(self.stream)
            for t in outputs.values():
                t.record_stream(caller)
        return {name: outputs[name] for name in self.output_names}

    def _run_graph(self, feeds: Mapping[str, Any], n: int) -> dict[str, Any]:
        # The outputs are the slot's fixed buffers, overwritten by the next replay: callers that share this
        # model across threads hold a lock until they have consumed them (Runtime does, per frame).
        with self._graph_lock:
            shapes = tuple((name, tuple(x.shape)) for name, x in sorted(feeds.items()))
            slot = self._graphs.get(shapes)
            if slot is None:
                slot = self._graphs[shapes] = _GraphSlot(self, feeds, n, graph_id=len(self._graphs))
            slot.run(feeds)
            return slot.outputs

    def synchronize(self) -> None:
        self.stream.synchronize()


class _GraphSlot:
    """Fixed-address inputs/outputs for one batch size, and the ORT CUDA graph captured over them."""

    def __init__(self, model: OrtCudaModel, feeds: Mapping[str, Any], n: int, graph_id: int):
        torch = model.torch
        self.model = model
        self.inputs = {name: torch.empty(tuple(x.shape), dtype=torch.float32, device=model.device)
                       for name, x in feeds.items()}
        self.outputs = {name: torch.empty(shape, dtype=torch.float32, device=model.device)
                        for name, shape in model._output_shapes(n).items()}
        self.binding = model.session.io_binding()
        model._bind(self.binding, self.inputs, self.outputs)
        self.run_options = cuda_run_options()
        self.run_options.add_run_config_entry("gpu_graph_id", str(graph_id))

    def run(self, feeds: Mapping[str, Any]) -> None:
        # always copied (the avatar code too: ~3 MB device-to-device, microseconds): a cache keyed by
        # address could be fooled by a freed code whose memory went to another avatar
        for name, x in feeds.items():
            self.inputs[name].copy_(self.model._to_device(x), non_blocking=True)
        # the first call warms up and captures; later calls replay the graph
        self.model.session.run_with_iobinding(self.binding, self.run_options)
