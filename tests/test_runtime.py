"""flexavatar.runtime on the reduced official fixture, against the PyTorch model + reference rasterizer.

Two exports per module (≈ 90 s on 2 cores): ``bundle`` — fixture weights, a small random DINOv2 inside the
encoder, an avatar photo (so it holds the specialised avatar decoder), ONNX + OpenVINO fp32; ``features`` —
no DINOv2 (the encoder takes DINOv2 features), ONNX fp32 only. The oracle everywhere is
``FlexAvatarModel`` (PyTorch) and the ``reference`` rasterizer of ``flexavatar.kernels``.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import types
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")     # Triton's CPU interpreter: one more rasterizer to check

from flexavatar import kernels
from flexavatar.bundle import (ROLE_DECODER, ROLE_DECODER_AVATAR, ROLE_ENCODER, ArtifactNotFoundError, Bundle,
                               BundleFileError,
                               BundleFileMissingError, BundleHashMismatchError, BundleMetadataError, ManifestError)
from flexavatar.cameras import default_camera as torch_default_camera
from flexavatar.cameras import orbit_cameras as torch_orbit_cameras
from flexavatar.expression import head_pose as torch_head_pose
from flexavatar.expression import rot6d_to_matrix as torch_rot6d_to_matrix
from flexavatar.export import export_bundle
from flexavatar.export.testing import fixture_config, fixture_model, write_synthetic_photo
from flexavatar.model import AvatarCode, FlexAvatarModel
from flexavatar.runtime import (Avatar, AvatarFileError, Camera, CameraInputError, EncoderUnavailableError,
                                EngineUnavailableError, ExecutionProviderError,
                                ExpressionInputError, ImageInputError, ModelMismatchError, OutputFileError,
                                RuntimeArgumentError, Runtime, StageTimes, UnknownEngineError, default_camera, load_expressions,
                                orbit_camera)
from flexavatar.images import psnr
from flexavatar.kernels.arrays import to_numpy
from flexavatar.kernels.testing import random_scene
from flexavatar.runtime.cli import main as render_main
from flexavatar.runtime.cli import verify_main
from flexavatar.runtime.cameras import pixel_intrinsics, world2cam
from flexavatar.runtime.expressions import (head_pose_matrix, quaternion_from_matrix, quaternion_multiply,
                                            rot6d_to_matrix, sequence_fps)
from flexavatar.runtime.images import load_image
from flexavatar.runtime.intersections import IncompleteFrameWarning, IntersectionBudget

ENGINES = ("onnxruntime", "openvino", "torch")
# the GPU machine's image has no OpenVINO (a CPU engine, tested on CPU machines, where it is a dependency)
# onnx-ort: the decoders with ONNX Runtime's fused kernels too (ONNX Runtime prefers them on CUDA)
BUNDLE_TARGETS = ("onnx", "onnx-ort") + (("openvino",) if importlib.util.find_spec("openvino") else ())
RASTERIZERS = tuple(kernels.available_backends("cpu"))       # cpu (native), reference, triton under TRITON_INTERPRET
GAUSSIAN_TOL = 1e-4
IMAGE_MEAN_TOL, IMAGE_MAX_TOL = 1e-3, 2 / 255
SIZE = 128                                                    # the fixture model's image size; render size too
# two replays of one fp32 CUDA graph may differ in the last bits: cuDNN's transposed convolutions (dgrad kernels)
# accumulate in a varying order (H200: Gaussians 1.2e-7 apart, pixels 2.2e-6). A stale or raced frame (another
# expression or camera) is off by orders of magnitude more.
REPLAY_TOL = 1e-5
FIELDS = ("means", "quats", "scales", "opacities", "sh0")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(official_dir) -> FlexAvatarModel:
    return fixture_model(official_dir)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    return write_synthetic_photo(tmp_path_factory.mktemp("photo") / "photo.png", SIZE, seed=5)   # RGBA


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, official_dir, model, photo) -> Path:
    out = tmp_path_factory.mktemp("runtime") / "bundle"
    export_bundle(official_dir / "state_dict.safetensors", out, template=official_dir / "gghead_template.obj",
                  config=fixture_config(official_dir), dinov2=model.dinov2, precisions=("fp32",), avatar=photo,
                  targets=BUNDLE_TARGETS, progress=None)
    return out


@pytest.fixture(scope="module")
def features_bundle(onnx_features_bundle) -> Path:
    return onnx_features_bundle


@pytest.fixture(scope="module")
def runtime_cache(bundle, model):
    """Runtime(engine, rasterizer), built once per module."""
    cache: dict[tuple[str, str], Runtime] = {}

    def get(engine: str, rasterizer: str = "auto") -> Runtime:
        if (engine, rasterizer) not in cache:
            cache[engine, rasterizer] = Runtime(bundle, backend=engine, device="cpu", rasterizer=rasterizer, batch=2,
                                                model=model if engine == "torch" else None)
        return cache[engine, rasterizer]
    return get


@pytest.fixture(scope="module")
def runtimes(runtime_cache) -> dict[str, Runtime]:
    return {name: runtime_cache(name) for name in ENGINES}


@pytest.fixture(scope="module")
def expressions(driving_dir) -> np.ndarray:
    return load_expressions(driving_dir / "EMO-1-shout+laugh.npz")[40:43]          # [3, 135], real tracked codes


def _reference_code(model: FlexAvatarModel, photo: Path) -> np.ndarray:
    """The photo composited onto white with Pillow, encoded by PyTorch at the demo camera → [1, R², D]."""
    rgba = Image.open(photo).convert("RGBA")
    rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    image = torch.from_numpy(np.asarray(rgb, np.float32) / 255).permute(2, 0, 1)[None]
    c2w, k = torch_default_camera()
    return model.encode(image, c2w[None], k[None]).tokens.transpose(0, 1).numpy()


def _reference_gaussians(model: FlexAvatarModel, code: np.ndarray, expressions: np.ndarray) -> dict[str, np.ndarray]:
    code = torch.from_numpy(np.array(code)).transpose(0, 1)                     # a writable copy: [R², 1, D]
    g = model.decode(AvatarCode(code), torch.from_numpy(np.array(expressions)), dataset_id=1)
    return {k: getattr(g, k).numpy() for k in FIELDS}


def _reference_render(gaussians: dict[str, np.ndarray], n: int) -> np.ndarray:
    """Reference rasterizer, torch orbit cameras (the model package's), white background → rgb [n, H, W, 3]."""
    c2w = torch_orbit_cameras(n)
    k = kernels.pixel_intrinsics(torch_default_camera()[1], SIZE, SIZE)
    cams = kernels.Cameras(world2cam=kernels.world2cam_from_cam2world(c2w), K=k.expand(n, 3, 3))
    splats = kernels.Splats(**{f: torch.from_numpy(gaussians[f]) for f in FIELDS})
    out = kernels.rasterize(splats, cams, SIZE, SIZE, background=(1.0, 1.0, 1.0), backend="reference")
    return out.rgb.numpy()


def _max_err(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


# ---- parity: every engine × rasterizer against PyTorch + reference ---------------------------------------

@pytest.fixture(scope="module")
def oracle(bundle, model, expressions):
    """(avatar, PyTorch Gaussians, reference-rasterizer frames) for the exported avatar's code."""
    avatar = Avatar(np.load(bundle / "avatar_code.npy").transpose(1, 0, 2))    # a plain code, not the bundle avatar
    want = _reference_gaussians(model, avatar.code, expressions)
    return avatar, want, _reference_render(want, len(expressions))


@pytest.mark.parametrize("rasterizer", RASTERIZERS)
@pytest.mark.parametrize("engine", ENGINES)
def test_engine_and_rasterizer_match_pytorch(engine, rasterizer, runtime_cache, oracle, expressions):
    rt = runtime_cache(engine, rasterizer)
    assert rt.rasterizer == rasterizer and rt.backend == engine
    avatar, want, reference = oracle
    got = rt.decode(avatar, expressions).numpy()
    for f in FIELDS:
        assert getattr(got, f).shape == want[f].shape
        assert _max_err(getattr(got, f), want[f]) <= GAUSSIAN_TOL, f"{engine}: {f}"

    # Triton's CPU interpreter takes seconds per frame: one frame there, all three elsewhere
    n = 1 if rasterizer == "triton" and os.environ.get("TRITON_INTERPRET") == "1" else len(expressions)
    cams = orbit_camera(len(expressions))
    frames = rt.render(avatar, expressions[:n], Camera(cams.cam2world[:n], cams.intrinsics), SIZE, SIZE,
                       output="float")
    assert frames.shape == (n, SIZE, SIZE, 4) and frames.dtype == np.float32
    diff = np.abs(frames[..., :3].astype(np.float64) - reference[:n])
    assert diff.mean() <= IMAGE_MEAN_TOL and diff.max() <= IMAGE_MAX_TOL, (engine, rasterizer, diff.mean(), diff.max())
    assert 0.01 < frames[..., 3].mean() < 0.9           # the head is in view, not the whole image


def test_uint8_frames_are_the_rounded_image(runtime_cache, oracle, expressions):
    avatar, _, reference = oracle
    frames = runtime_cache("onnxruntime").render(avatar, expressions, orbit_camera(len(expressions)), SIZE, SIZE)
    assert frames.dtype == np.uint8 and frames.shape == (3, SIZE, SIZE, 3)
    # uint8 clips to [0, 1] (SH colours are only clamped below, so composited values may exceed 1)
    assert np.abs(frames.astype(np.float64) / 255 - np.clip(reference, 0, 1)).max() <= IMAGE_MAX_TOL + 0.5 / 255


@pytest.mark.parametrize("engine,rasterizer", [("onnxruntime", "cpu"), ("torch", "reference")])
def test_device_frames_are_the_float_frames_where_they_were_rendered(engine, rasterizer, runtime_cache, oracle,
                                                                     expressions):
    rt = runtime_cache(engine, rasterizer)                # batch 2: three frames are two chunks, concatenated
    avatar = oracle[0]
    cams = orbit_camera(len(expressions))
    host = rt.render(avatar, expressions, cams, SIZE, SIZE, output="float")
    frames = rt.render(avatar, expressions, cams, SIZE, SIZE, output="device")
    # the rasterizer's own arrays: numpy from the native one, torch tensors from the PyTorch reference
    assert isinstance(frames, torch.Tensor if rasterizer == "reference" else np.ndarray)
    assert tuple(frames.shape) == (3, SIZE, SIZE, 4)
    np.testing.assert_array_equal(to_numpy(frames), host)


def test_pipelined_chunks_are_the_sequential_chunks(runtime_cache, oracle, expressions, monkeypatch):
    # the CUDA path's order of work (decode chunk i + 1, hand out chunk i, rasterize chunk i + 1) run on the CPU:
    # same chunks, same pixels, in order, the last one included
    rt = runtime_cache("onnxruntime", "cpu")                                # batch 2: chunks of 2 + 1 frames
    avatar, cams = oracle[0], orbit_camera(len(expressions))
    sequential = list(rt.iter_render(avatar, expressions, cams, SIZE, SIZE))
    monkeypatch.setattr(Runtime, "_pipelines", lambda self, n, output, timings: True)
    pipelined = list(rt.iter_render(avatar, expressions, cams, SIZE, SIZE))
    assert [c.shape[0] for c in pipelined] == [c.shape[0] for c in sequential] == [2, 1]
    for got, want in zip(pipelined, sequential, strict=True):
        np.testing.assert_array_equal(got, want)


def test_render_async_results_are_the_render_frames(runtime_cache, oracle, expressions):
    """Live-loop use: frames queued one call at a time, several before any result is taken, results taken in
    another order; each is what render gives, and taking one twice gives the same array."""
    rt = runtime_cache("onnxruntime", "cpu")                            # batch 2: a 3-frame call is two chunks
    avatar, cams = oracle[0], orbit_camera(len(expressions))
    want = rt.render(avatar, expressions, cams, SIZE, SIZE)
    one_by_one = [rt.render_async(avatar, expressions[i:i + 1], Camera(cams.cam2world[i], cams.intrinsics), SIZE,
                                  SIZE) for i in range(len(expressions))]
    whole = rt.render_async(avatar, expressions, cams, SIZE, SIZE)
    floats = rt.render_async(avatar, expressions, cams, SIZE, SIZE, output="float")
    np.testing.assert_array_equal(whole.result(), want)
    for i in reversed(range(len(expressions))):
        got = one_by_one[i].result()
        assert got.shape == (1, SIZE, SIZE, 3) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, want[i:i + 1])
        assert one_by_one[i].result() is got                            # handed out once, kept
    np.testing.assert_array_equal(floats.result(), rt.render(avatar, expressions, cams, SIZE, SIZE, output="float"))
    on_device = rt.render_async(avatar, expressions, cams, SIZE, SIZE, output="device").result()
    np.testing.assert_array_equal(on_device, rt.render(avatar, expressions, cams, SIZE, SIZE, output="device"))
    with pytest.raises(RuntimeArgumentError, match="output"):
        rt.render_async(avatar, expressions, cams, SIZE, SIZE, output="png")


def test_render_async_renders_an_outgrown_frame_again_decoder_included(bundle, runtime_cache, oracle, expressions,
                                                                       capacity_emulator):
    """A queued frame that outgrew its sort's capacity is rendered again when its result is taken, after later
    frames were queued (which, with CUDA graphs, overwrote the decoder's outputs: it decodes again)."""
    rt = Runtime(bundle, backend="onnxruntime", device="cpu", rasterizer="test-capacity", batch=1)
    avatar, cams = oracle[0], orbit_camera(len(expressions))
    want = runtime_cache("onnxruntime", "cpu").render(avatar, expressions, cams, SIZE, SIZE)
    rt.render(avatar, expressions[:1], Camera(cams.cam2world[0], cams.intrinsics), SIZE, SIZE)     # measures
    capacity_emulator.per_view = 100_000
    decoded = []
    real = rt._decode_chunk
    rt._decode_chunk = lambda *args, **kw: decoded.append(args[1].copy()) or real(*args, **kw)
    pending = [rt.render_async(avatar, expressions[i:i + 1], Camera(cams.cam2world[i], cams.intrinsics), SIZE, SIZE)
               for i in range(len(expressions))]
    assert len(decoded) == len(expressions)
    np.testing.assert_array_equal(pending[0].result(), want[:1])
    np.testing.assert_array_equal(decoded[-1], expressions[:1])           # frame 0 decoded again after frame 2
    assert rt.intersections.rerenders == 1
    for i in (1, 2):                                                      # sized by their own, older capacity
        np.testing.assert_array_equal(pending[i].result(), want[i:i + 1])
    assert rt.intersections.rerenders == 3


# ---- sync-free rasterizer sizing (runtime/intersections.py) ----------------------------------------------

def test_intersection_budget_sizes():
    budget = IntersectionBudget()
    assert budget.capacity(1) == 0                            # nothing measured yet: the first frame is exact
    budget.observe(1000, 1)
    assert budget.capacity(1) == IntersectionBudget.MIN_SLOTS
    budget.observe(300_000, 2)                                # 150,000 per view: the largest so far
    budget.observe(1000, 1)                                   # a smaller count does not shrink it
    granule, headroom = IntersectionBudget.GRANULE, IntersectionBudget.HEADROOM
    sized = {views: budget.capacity(views) for views in (1, 2, 4)}
    for views, cap in sized.items():
        assert cap % granule == 0 and headroom * 150_000 * views <= cap < headroom * 150_000 * views + granule
    budget.observe(190_000, 1)                                # within 1 / REFIT of the capacity: it stays put
    assert {views: budget.capacity(views) for views in (1, 2, 4)} == sized
    budget.observe(210_000, 1)                                # past it: sized again at HEADROOM × the new largest
    cap = budget.capacity(1)
    assert cap % granule == 0 and headroom * 210_000 <= cap < headroom * 210_000 + granule
    budget.sync_free = False
    assert budget.capacity(1) == 0                            # switched off: every render sized exactly
    budget.sync_free = True
    budget.observe(2**31, 1)
    assert budget.capacity(1) == 0                            # past the sort's int32 slot index: exact again


class _QueuedCount:
    """A device frame's count on its way to the host (CountReadback's interface): ``ready`` says whether its frame
    has finished; ``fits`` records that it was waited for."""

    def __init__(self, count: int, capacity: int = 1000):
        self.count, self.capacity, self.ready_now, self.waited = count, capacity, False, False

    def ready(self) -> bool:
        return self.ready_now

    def value(self) -> int:
        self.waited = True
        return self.count

    def fits(self, budget: IntersectionBudget) -> bool:
        budget.observe(self.value(), 1)
        return self.count <= self.capacity


def test_device_frames_counts_are_checked_without_waiting_for_running_frames():
    """A live loop of device frames queues frame i + 1 while frame i runs: the counts of frames still running are
    left for a later call (waiting for them would serialise the host and the GPU), up to UNCHECKED_BACKLOG of
    them; a render whose pixels go to the host (wait=True) checks them all."""
    backlog = Runtime.UNCHECKED_BACKLOG
    rt = types.SimpleNamespace(_unchecked=collections.deque(), intersections=IntersectionBudget(),
                               UNCHECKED_BACKLOG=backlog)
    check = functools.partial(Runtime._check_device_frames, rt)
    first, second = _QueuedCount(500), _QueuedCount(600)
    rt._unchecked.extend([first, second])
    check()
    assert list(rt._unchecked) == [first, second] and not first.waited      # both still running: no wait
    first.ready_now = True
    check()
    assert list(rt._unchecked) == [second] and first.waited and not second.waited
    assert rt.intersections.per_view == 500
    rt._unchecked.extend(_QueuedCount(700) for _ in range(backlog + 1))     # more running than the backlog
    check()
    assert len(rt._unchecked) == backlog and second.waited                  # the two oldest waited for
    over = _QueuedCount(5000)
    rt._unchecked.append(over)
    with pytest.warns(IncompleteFrameWarning, match="5000"):
        check(wait=True)
    assert not rt._unchecked and rt.intersections.incomplete == 1 and rt.intersections.per_view == 5000


class _CapacityEmulator:
    """A rasterizer with the CUDA backend's sizing contract, on the CPU: the native rasterizer's pixels, a count
    of ``per_view`` × views, and, when a capacity is given and the count exceeds it, an incomplete frame (its
    colours lost). Records each call's capacity."""

    def __init__(self, per_view: int):
        self.per_view, self.capacities = per_view, []

    def __call__(self, request):
        result = kernels.get_backend("cpu").render(request)
        count, capacity = self.per_view * request.num_views, request.intersection_capacity
        self.capacities.append(capacity)
        if not capacity:
            return replace(result, intersections=count)
        if count > capacity:
            result = replace(result, rgb=np.zeros_like(result.rgb))
        return replace(result, intersections=np.array([count], np.int64))


@pytest.fixture()
def capacity_emulator():
    emulator = _CapacityEmulator(per_view=5000)
    kernels.register_backend("test-capacity", emulator, array_type="numpy", priorities={"cpu": 0},
                             dtypes=("float32",), differentiable=False)
    try:
        yield emulator
    finally:
        kernels.unregister_backend("test-capacity")


def test_frames_over_their_intersection_capacity_are_rendered_again(bundle, runtime_cache, oracle, expressions,
                                                                   capacity_emulator, monkeypatch):
    rt = Runtime(bundle, backend="onnxruntime", device="cpu", rasterizer="test-capacity", batch=1)
    avatar, cams = oracle[0], orbit_camera(len(expressions))
    want = runtime_cache("onnxruntime", "cpu").render(avatar, expressions, cams, SIZE, SIZE)
    np.testing.assert_array_equal(rt.render(avatar, expressions, cams, SIZE, SIZE), want)
    small = IntersectionBudget.MIN_SLOTS                      # 2 × 5,000 rounds up to the floor
    assert capacity_emulator.capacities == [0, small, small]  # the first frame measures, the others are sync-free
    assert rt.intersections.per_view == 5000 and rt.intersections.rerenders == 0

    capacity_emulator.per_view = 100_000                      # the head fills more of the view: a frame outgrows it
    np.testing.assert_array_equal(rt.render(avatar, expressions, cams, SIZE, SIZE), want)
    assert capacity_emulator.capacities[3:] == [small, 0, 262_144, 262_144]   # rendered again exactly, then 2 × 100,000 rounded up
    assert rt.intersections.rerenders == 1 and rt.intersections.incomplete == 0

    # the CUDA path's pipelined order (chunk i handed out while chunk i + 1 decodes): rendered again there too
    capacity_emulator.per_view = 400_000
    monkeypatch.setattr(Runtime, "_pipelines", lambda self, n, output, timings: True)
    np.testing.assert_array_equal(rt.render(avatar, expressions, cams, SIZE, SIZE), want)
    grown = 13 * IntersectionBudget.GRANULE                  # 2 × 400,000 rounded up to the granule
    assert capacity_emulator.capacities[7:] == [262_144, 0, grown, grown] and rt.intersections.rerenders == 2
    monkeypatch.undo()

    capacity_emulator.per_view = 3_000_000                    # device frames: no sync to check them before hand-out
    one = Camera(cams.cam2world[:1], cams.intrinsics)
    first = rt.render(avatar, expressions[:1], one, SIZE, SIZE, output="device")
    assert np.abs(first[..., :3]).max() == 0                  # the emulator's incomplete frame went out ...
    with pytest.warns(IncompleteFrameWarning, match="3000000"):
        second = rt.render(avatar, expressions[:1], one, SIZE, SIZE, output="device")    # ... reported at the next
    assert rt.intersections.incomplete == 1                   # grown to 2 × 3,000,000 rounded up to the granule
    assert capacity_emulator.capacities[-1] == 92 * IntersectionBudget.GRANULE
    np.testing.assert_array_equal((np.clip(second[..., :3], 0, 1) * 255 + 0.5).astype(np.uint8), want[:1])


# ---- the torch-compile engine ----------------------------------------------------------------------------

@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_torch_compile_engine_matches_pytorch(compiler, bundle, model, oracle, expressions, monkeypatch):
    """The decoder under torch.compile, fp32 on the CPU: "aot_eager" (the graph Dynamo captures, run by PyTorch's
    kernels) and Inductor itself (generated C++ kernels; about a minute to compile on 2 cores). Gaussians and frames
    (compiled whole: decoder, rasterizer and pixels in one graph) as the PyTorch model + reference rasterizer; the
    bundle's numerics check passes on it."""
    from flexavatar.runtime import engines
    monkeypatch.setattr(engines, "TORCH_COMPILE_BACKEND", compiler)
    rt = Runtime(bundle, backend="torch-compile", device="cpu", rasterizer="cpu", model=model, batch=2,
                 compiled_frames=True)
    assert rt.backend == "torch-compile" and compiler in rt.describe()
    avatar, want, reference = oracle
    got = rt.decode(avatar, expressions).numpy()                   # chunks of 2 and 1: two compiled shapes
    for f in FIELDS:
        assert _max_err(getattr(got, f), want[f]) <= GAUSSIAN_TOL, f
    frames = rt.render(avatar, expressions, orbit_camera(len(expressions)), SIZE, SIZE, output="float")
    diff = np.abs(frames[..., :3].astype(np.float64) - reference)
    assert diff.mean() <= IMAGE_MEAN_TOL and diff.max() <= IMAGE_MAX_TOL
    if compiler == "inductor":
        report = rt.check_numerics()
        assert report.passed, report.table()


def test_compiled_decoder_with_frozen_weights_reads_only_its_inputs(bundle, model, expressions):
    """freeze=True (the CUDA default), compiled here by Inductor on the CPU: every weight is a compile-time constant,
    so the generated frame function takes the three inputs alone (code, expressions, dataset ids), not the model's
    parameters, and its Gaussians are eager PyTorch's."""
    import torch
    from torch._inductor.utils import run_and_get_code

    from flexavatar.runtime.engines import CompiledNetworkDecode, network_decode_function
    code = torch.from_numpy(np.load(bundle / "avatar_code.npy"))                           # [R², 1, D]
    e = torch.from_numpy(expressions[:1])[None]                                            # [1, 1, 135]
    ids = torch.ones(1, dtype=torch.long)
    decode = CompiledNetworkDecode(model.network, "cpu", half=False, backend="inductor", freeze=True)
    got, sources = run_and_get_code(decode, code, e, ids)
    unpacked = [line.split("=")[0] for source in sources for line in source.splitlines()
                if line.strip().endswith("= args")]
    assert len(unpacked) == 1, unpacked
    assert len([name for name in unpacked[0].split(",") if name.strip()]) == 3, unpacked
    with torch.no_grad():
        want = network_decode_function(model.network, "cpu", half=False)(code, e, ids)
    for g, w in zip(got, want, strict=True):
        assert _max_err(g, w) <= GAUSSIAN_TOL


def test_compiled_frames_are_the_separate_calls_frames(bundle, model, expressions, monkeypatch):
    """compiled_frames=True on the CPU ("aot_eager": the captured graph run by PyTorch's kernels): the decoder, the
    rasterizer (torch.ops.flexavatar.rasterize) and the pixel format compiled as one function give the frames of the
    decoder and rasterizer called one after the other, bit for bit, in every output format, in one chunk or several
    (render, iter_render, render_async). A render with timings takes the separate calls (its stages are timed)."""
    from flexavatar.runtime import engines
    monkeypatch.setattr(engines, "TORCH_COMPILE_BACKEND", "aot_eager")
    compiled = Runtime(bundle, backend="torch-compile", device="cpu", rasterizer="cpu", model=model, batch=2,
                       compiled_frames=True)
    separate = Runtime(bundle, backend="torch-compile", device="cpu", rasterizer="cpu", model=model, batch=2)
    assert "compiled frames" in compiled.describe() and "compiled frames" not in separate.describe()  # CPU: off
    frames_of = compiled.decoder.frames
    calls = []
    monkeypatch.setattr(compiled.decoder, "frames", lambda *a: calls.append(len(a[1])) or frames_of(*a))
    avatar = compiled.bundle_avatar()
    cams = orbit_camera(len(expressions))
    for output in ("uint8", "float", "device"):
        want = to_numpy(separate.render(avatar, expressions, cams, SIZE, SIZE, output=output))
        got = to_numpy(compiled.render(avatar, expressions, cams, SIZE, SIZE, output=output))
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    assert calls == [2, 1] * 3                                     # 3 frames in chunks of batch=2
    one = Camera(cams.cam2world[1], cams.intrinsics)
    pending = [compiled.render_async(avatar, expressions[i:i + 1], one, SIZE, SIZE) for i in range(3)]
    for i in reversed(range(3)):
        np.testing.assert_array_equal(pending[i].result(), separate.render(avatar, expressions[i:i + 1], one, SIZE,
                                                                           SIZE))
    assert len(calls) == 9
    compiled.render(avatar, expressions, cams, SIZE, SIZE, timings=StageTimes())
    assert len(calls) == 9
    # a wide frame, a background, the tracked head pose (folded into the cameras): what the separate calls render
    wide = orbit_camera(len(expressions), aspect=96 / 64)
    kwargs = dict(background=(0.2, 0.4, 0.6), apply_head_pose=True, output="float")
    np.testing.assert_array_equal(compiled.render(avatar, expressions, wide, 96, 64, **kwargs),
                                  separate.render(avatar, expressions, wide, 96, 64, **kwargs))
    assert len(calls) == 11


def test_compiled_frames_that_fail_give_way_to_the_separate_calls(bundle, model, expressions, monkeypatch, caplog):
    """A whole frame that does not compile or capture (here: the compiler raises) is rendered by the separate calls,
    with a warning naming the error, and so is every later frame (no second try a frame)."""
    from flexavatar.runtime import engines
    monkeypatch.setattr(engines, "TORCH_COMPILE_BACKEND", "aot_eager")
    rt = Runtime(bundle, backend="torch-compile", device="cpu", rasterizer="cpu", model=model, compiled_frames=True)
    tries = []

    def refuse(*args):
        tries.append(1)
        raise RuntimeError("capture refused: operation not permitted when stream is capturing")

    monkeypatch.setattr(rt.decoder, "frames", refuse)
    avatar = rt.bundle_avatar()
    cams = orbit_camera(len(expressions))
    with caplog.at_level("WARNING", logger="flexavatar.runtime"):
        got = rt.render(avatar, expressions, cams, SIZE, SIZE)
    assert "compiled frames failed (RuntimeError: capture refused" in caplog.text
    separate = Runtime(bundle, backend="torch-compile", device="cpu", rasterizer="cpu", model=model)
    np.testing.assert_array_equal(got, separate.render(avatar, expressions, cams, SIZE, SIZE))
    assert tries == [1] and "compiled frames" not in rt.describe() and not rt.compiled_frames


def test_compiled_functions_say_when_they_compile(caplog):
    """torch.compile(dynamic=False) compiles once per input size (tens of seconds on a GPU): each compilation is
    logged with its inputs and how long it took, and a size compiled before is not."""
    import torch

    from flexavatar.runtime.engines import CompiledNetworkDecode

    def double(x, scale: int):
        return x * scale

    compiled = CompiledNetworkDecode(None, "cpu", half=False, backend="aot_eager", function=double)
    with caplog.at_level("INFO", logger="flexavatar.runtime"):
        for n in (3, 3, 4):
            torch.testing.assert_close(compiled(torch.ones(n), 2), torch.full((n,), 2.0))
    messages = [r.getMessage() for r in caplog.records if r.name == "flexavatar.runtime"]
    assert [m for m in messages if "compiling" in m] == [
        "torch-compile: compiling double for inputs ((3,), 2) (aot_eager, once per input size)",
        "torch-compile: compiling double for inputs ((4,), 2) (aot_eager, once per input size)"]
    assert sum(m.startswith("torch-compile: double compiled in ") for m in messages) == 2


def test_compiled_functions_have_their_own_compilation_limit():
    """Dynamo counts compilations against its recompile_limit per code object: two compiled functions made by one
    factory (two pixel formats' frames, two runtimes' decoders) must not share the count, or the second would run
    eagerly once the first used it up."""
    import torch
    import torch._dynamo.testing

    from flexavatar.runtime.engines import CompiledNetworkDecode, raster_function
    from flexavatar.runtime.runtime import _float_rgba, _uint8_rgb

    counter = torch._dynamo.testing.CompileCounter()
    made = [CompiledNetworkDecode(None, "cpu", half=False, backend=counter, function=raster_function(pixels))
            for pixels in (_uint8_rgb, _float_rgba)]
    splats, cameras = random_scene(50, 1, 16, 16, seed=0)
    inputs = [torch.from_numpy(np.ascontiguousarray(v[None])) for v in splats.arrays().values()]
    views = [torch.from_numpy(cameras.world2cam).view(1, 1, 4, 4), torch.from_numpy(cameras.K).view(1, 1, 3, 3),
             torch.ones(1, 1, 3)]
    with torch._dynamo.config.patch(recompile_limit=1):     # (monkeypatch would delete the config entry on undo)
        frames = [compiled(*inputs, *views, 16, 16, 0)[0] for compiled in made]
    assert counter.frame_count == 2                       # each compiled, neither fell back to eager
    assert frames[0].dtype == torch.uint8 and frames[1].shape == (1, 16, 16, 4)


def test_compiled_frames_sort_a_power_of_two_capacity(bundle, model, expressions, monkeypatch):
    """Compiled frames are compiled per sort capacity: they take the budget's capacity rounded up to a power of two
    (the same compilation as the count creeps up and across runs), and check their frames' counts against it."""
    from flexavatar.runtime import engines
    monkeypatch.setattr(engines, "TORCH_COMPILE_BACKEND", "aot_eager")
    rt = Runtime(bundle, backend="torch-compile", device="cpu", rasterizer="cpu", model=model, compiled_frames=True,
                 batch=1)
    capacities = []

    def frames(code, expressions, viewmats, ks, background, width, height, capacity, pixels):
        capacities.append(capacity)
        frame = pixels(np.zeros((len(expressions), height, width, 3), np.float32),
                       np.zeros((len(expressions), height, width, 1), np.float32))
        return frame, np.array([150_000 * len(expressions)], np.int64)

    monkeypatch.setattr(rt.decoder, "frames", frames)
    rt.intersections.observe(100_000, 1)              # the budget: 2 × 100,000 in multiples of 65,536 = 262,144
    assert rt.intersections.capacity(1) == 4 * IntersectionBudget.GRANULE
    rt.render(rt.bundle_avatar(), expressions[:1], orbit_camera(1), SIZE, SIZE)
    assert rt.intersections.per_view == 150_000 and rt.intersections.rerenders == 0   # its count, read back: fits
    rt.render(rt.bundle_avatar(), expressions[:1], orbit_camera(1), SIZE, SIZE)       # sized again: 2 × 150,000
    assert capacities == [262_144, 524_288] and rt.intersections.capacity(1) == 5 * IntersectionBudget.GRANULE


@pytest.mark.parametrize("engine,compiler", [("onnxruntime", "aot_eager"), ("openvino", "aot_eager"),
                                             ("torch", "aot_eager"), ("onnxruntime", "inductor")])
def test_compiled_rasterizer_behind_any_engine(engine, compiler, runtime_cache, bundle, model, expressions,
                                               monkeypatch):
    """compiled_frames=True with another engine: its decoder as always, then the rasterizer and the pixel format
    compiled as one ("aot_eager", and Inductor's generated code once): the separate calls' frames, bit for bit, uint8
    and float, one chunk or several; each pixel format compiles once."""
    from flexavatar.runtime import engines
    monkeypatch.setattr(engines, "TORCH_COMPILE_BACKEND", compiler)
    separate = runtime_cache(engine, "cpu")
    compiled = Runtime(bundle, backend=engine, device="cpu", rasterizer="cpu", batch=2, compiled_frames=True,
                       model=model if engine == "torch" else None)
    assert "compiled frames" in compiled.describe()
    avatar = compiled.bundle_avatar()
    cams = orbit_camera(len(expressions))
    for output in ("uint8", "float"):
        np.testing.assert_array_equal(compiled.render(avatar, expressions, cams, SIZE, SIZE, output=output),
                                      separate.render(avatar, expressions, cams, SIZE, SIZE, output=output))
    assert len(compiled._rasters) == 2


def test_compiled_frames_only_where_they_apply(bundle, model):
    """None: on with torch-compile on CUDA only (GPU test below); True with a rasterizer other than the device's
    native one is a typed error naming what it needs; a value that is not a bool is refused."""
    with pytest.raises(RuntimeArgumentError, match="compiled_frames.*rasterizer='cpu'.*'reference'"):
        Runtime(bundle, backend="torch-compile", device="cpu", rasterizer="reference", model=model,
                compiled_frames=True)
    with pytest.raises(RuntimeArgumentError, match="compiled_frames"):
        Runtime(bundle, backend="torch-compile", device="cpu", model=model, compiled_frames="yes")
    assert not Runtime(bundle, backend="onnxruntime", device="cpu")._compiled_frames
    assert not Runtime(bundle, backend="torch-compile", device="cpu", model=model)._compiled_frames     # CPU: off


def test_compiled_decoder_runs_the_fir_as_multiply_adds(bundle, model):
    """The compiled decoder's graph has no depthwise convolution (the upsampler's FIR, which cuDNN ran in 0.54 ms
    of a 2.08 ms compiled FLEX-1 frame on an H200): its taps are elementwise work that Inductor fuses. The graph
    Dynamo captures from the eager form has one per upsampling block."""
    import torch
    import torch._dynamo

    from flexavatar.runtime.engines import network_decode_function

    def grouped_convolutions(fn) -> int:
        graphs = []

        def capture(gm, example_inputs):
            graphs.append(gm)
            return gm.forward

        torch._dynamo.reset()
        code = torch.from_numpy(np.load(bundle / "avatar_code.npy"))                       # [R², 1, D]
        with torch.no_grad():
            torch.compile(fn, backend=capture, dynamic=False)(code, torch.zeros(1, 1, 135),
                                                              torch.ones(1, dtype=torch.long))
        torch._dynamo.reset()
        return sum(1 for gm in graphs for node in gm.graph.nodes
                   if node.op == "call_function" and "conv2d" in str(node.target)
                   and (node.kwargs.get("groups") or (node.args[6] if len(node.args) > 6 else 1)) != 1)

    def eager_form(code, expressions, ids):
        out = model.network.decode(code, expressions, ids)
        return tuple(out[k] for k in sorted(out))

    assert grouped_convolutions(eager_form) == model.config.n_upsampler_blocks
    assert grouped_convolutions(network_decode_function(model.network, "cpu", half=False)) == 0


def test_compiled_decoder_freezes_in_each_call_that_may_compile(model):
    """Dynamo reads Inductor's freezing switch while it traces: the switch is on in the first call of each input
    shape (each compiles), and off the hot path after that; CUDA freezes by default, the CPU and aot_eager do not."""
    import torch
    import torch._inductor.config as inductor_config

    from flexavatar.runtime.engines import CompiledNetworkDecode
    decode = CompiledNetworkDecode(model.network, "cpu", half=False, backend="inductor", freeze=True)
    seen = []
    decode._compiled = lambda code, e, ids: seen.append((e.shape[1], inductor_config.freezing))
    for n in (1, 1, 2, 2, 1):
        decode(torch.zeros(16, 1, 8), torch.zeros(1, n, 135), torch.ones(1, dtype=torch.long))
    assert seen == [(1, True), (1, False), (2, True), (2, False), (1, False)]
    assert CompiledNetworkDecode(model.network, "cuda", half=True, backend="inductor").freeze      # lazy: no GPU
    assert not CompiledNetworkDecode(model.network, "cpu", half=False, backend="inductor").freeze
    assert not CompiledNetworkDecode(model.network, "cuda", half=True, backend="aot_eager", freeze=True).freeze


def test_compiled_decoder_compiles_without_frozen_weights_when_freezing_fails(model, caplog):
    """Frozen weights are an optimisation: a freezing compile that Inductor refuses (BackendCompilerFailed) is
    retried without them, with a warning that names the error, and later calls no longer try."""
    import torch
    import torch._dynamo
    import torch._inductor.config as inductor_config

    from flexavatar.runtime.engines import CompiledNetworkDecode
    decode = CompiledNetworkDecode(model.network, "cpu", half=False, backend="inductor", freeze=True)
    calls = []

    def compiled(code, e, ids):
        calls.append(inductor_config.freezing)
        if inductor_config.freezing:
            raise torch._dynamo.exc.BackendCompilerFailed(compiled, RuntimeError("no constant folding here"), None)
        return ("decoded",)

    decode._compiled = compiled
    args = (torch.zeros(16, 1, 8), torch.zeros(1, 1, 135), torch.ones(1, dtype=torch.long))
    with caplog.at_level("WARNING", logger="flexavatar.runtime"):
        assert decode(*args) == ("decoded",)
    assert "frozen weights failed" in caplog.text and "no constant folding here" in caplog.text
    assert decode(*args) == ("decoded",) and calls == [True, False, False] and not decode.freeze


@pytest.mark.parametrize("engine", ENGINES)
def test_encoder_matches_pytorch(engine, runtimes, model, photo):
    avatar = runtimes[engine].create_avatar(photo)                 # RGBA file: composited onto white
    assert avatar.code.shape == (1, 64, 64)
    assert _max_err(avatar.code, _reference_code(model, photo)) <= GAUSSIAN_TOL


@pytest.mark.parametrize("engine", ("onnxruntime", "openvino"))
def test_bundle_avatar_uses_the_specialised_decoder(engine, runtimes, bundle, model, expressions):
    rt = runtimes[engine]
    avatar = rt.bundle_avatar()
    got = rt.decode(avatar, expressions).numpy()
    assert ROLE_DECODER_AVATAR in rt.engine._models                 # the code-folded graph ran
    want = _reference_gaussians(model, np.load(bundle / "avatar_code.npy").transpose(1, 0, 2), expressions)
    for f in FIELDS:
        assert _max_err(getattr(got, f), want[f]) <= GAUSSIAN_TOL


def test_batching_gives_the_same_frames(bundle, runtimes, expressions):
    one = Runtime(bundle, backend="onnxruntime", batch=1)
    avatar = runtimes["onnxruntime"].bundle_avatar()
    a = runtimes["onnxruntime"].decode(avatar, expressions)          # batch 2: chunks of 2 and 1
    b = one.decode(avatar, expressions)
    for f in FIELDS:
        assert _max_err(getattr(a, f), getattr(b, f)) <= 1e-5


# ---- head pose ------------------------------------------------------------------------------------------

def _matrix_from_quaternion(q: np.ndarray) -> np.ndarray:
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q.astype(np.float64), -1, 0)
    return np.stack([np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
                     np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
                     np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1)], -2)


def test_head_pose_moves_gaussians_rigidly(runtimes, bundle, model, driving_dir):
    rt = runtimes["onnxruntime"]
    codes = load_expressions(driving_dir / "EXP-1-head.npz")[::50]                # large head rotations
    avatar = rt.bundle_avatar()
    canonical = rt.decode(avatar, codes).numpy()
    posed = rt.decode(avatar, codes, apply_head_pose=True).numpy()
    pose = torch_head_pose(torch.from_numpy(codes).double()).numpy()            # the model package's pose [T, 4, 4]
    want_means = np.einsum("tij,tgj->tgi", pose[:, :3, :3], canonical.means) + pose[:, None, :3, 3]
    assert _max_err(posed.means, want_means) <= 1e-5
    want_rot = pose[:, None, :3, :3] @ _matrix_from_quaternion(canonical.quats)  # R_pose · R(q)
    assert _max_err(_matrix_from_quaternion(posed.quats), want_rot) <= 1e-5
    for f in ("scales", "opacities", "sh0"):
        assert np.array_equal(getattr(posed, f), getattr(canonical, f))


@pytest.mark.parametrize("rasterizer", [r for r in RASTERIZERS if r in ("cpu", "reference")])
def test_head_pose_renders_the_posed_gaussians(rasterizer, runtime_cache, model, oracle, driving_dir):
    """render(apply_head_pose=True) folds the pose into the camera: its pixels are those of the PyTorch model's
    Gaussians moved by the pose, through the reference rasterizer (the same tolerances as the parity test)."""
    rt = runtime_cache("onnxruntime", rasterizer)
    avatar = oracle[0]
    codes = load_expressions(driving_dir / "EXP-1-head.npz")[::60][:3]            # large head rotations
    want = _reference_gaussians(model, avatar.code, codes)
    pose = torch_head_pose(torch.from_numpy(codes).double()).numpy()             # [T, 4, 4]
    posed = dict(want, means=(np.einsum("tij,tgj->tgi", pose[:, :3, :3], want["means"]) + pose[:, None, :3, 3]),
                 quats=quaternion_multiply(quaternion_from_matrix(pose[:, :3, :3])[:, None], want["quats"], np.stack))
    reference = _reference_render({k: np.asarray(v, np.float32) for k, v in posed.items()}, len(codes))
    frames = rt.render(avatar, codes, orbit_camera(len(codes)), SIZE, SIZE, apply_head_pose=True, output="float")
    diff = np.abs(frames[..., :3].astype(np.float64) - reference)
    assert diff.mean() <= IMAGE_MEAN_TOL and diff.max() <= IMAGE_MAX_TOL, (diff.mean(), diff.max())
    unposed = rt.render(avatar, codes, orbit_camera(len(codes)), SIZE, SIZE, output="float")
    assert np.abs(unposed[..., :3] - frames[..., :3]).mean() > 20 * IMAGE_MEAN_TOL   # the pose does move the head


def test_head_pose_needs_a_rotation(runtimes, expressions):
    rt = runtimes["onnxruntime"]
    codes = expressions.copy()
    codes[1, 126:132] = 0.0                                                      # e.g. a code without a pose
    with pytest.raises(ExpressionInputError, match=r"frame 1 .*code\[126:132\].*6D rotation"):
        rt.render(rt.bundle_avatar(), codes, None, 32, 32, apply_head_pose=True)
    codes[1, 126:132] = (1, 0, 0, 2, 0, 0)                                       # parallel vectors
    with pytest.raises(ExpressionInputError, match=r"frame 1 \(of 1 such frames\).*6D rotation"):
        rt.decode(rt.bundle_avatar(), codes, apply_head_pose=True)               # batch 1: still frame 1
    with pytest.raises(ExpressionInputError, match=r"frame 0 \(of 2 such frames\).*finite"):
        head_pose_matrix(np.stack([np.full(135, np.nan), codes[1]]))
    assert rt.render(rt.bundle_avatar(), codes, None, 32, 32).shape == (3, 32, 32, 3)   # unused without the pose


def test_rot6d_matches_the_tracker_and_the_model(driving_dir):
    with np.load(driving_dir / "EXP-1-head.npz") as seq:
        codes, tracked = seq["expression_codes"], seq["head_rotation_matrix_tracked"]
    rot = rot6d_to_matrix(codes[:, 126:132])
    assert _max_err(rot, tracked) <= 5e-6                                        # README: ≤ 2.1e-6 in float32
    assert _max_err(rot, torch_rot6d_to_matrix(torch.from_numpy(codes[:, 126:132]).double()).numpy()) <= 1e-12


def test_quaternion_from_matrix_inverts_the_rotation_formula():
    gen = np.random.default_rng(0)
    q = gen.standard_normal((2000, 4))
    q[:4] = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]              # 0° and the three 180° turns
    q[4:8] = [[1e-9, 1, 1e-9, 0], [0.01, 0, 0, 1], [0, 1, 1, 0], [0, 1, 1, 1]]
    rot = _matrix_from_quaternion(q)
    back = quaternion_from_matrix(rot)
    assert _max_err(_matrix_from_quaternion(back), rot) <= 1e-9
    assert (back[:, 0] >= 0).all() and np.allclose(np.linalg.norm(back, axis=-1), 1)


# ---- cameras, images, expressions -----------------------------------------------------------------------

def test_cameras_match_the_model_package():
    c2w, k = torch_default_camera()
    cam = default_camera()
    assert _max_err(cam.cam2world, c2w.numpy()) <= 1e-6 and _max_err(cam.intrinsics, k.numpy()) <= 1e-7
    assert _max_err(orbit_camera(7).cam2world, torch_orbit_cameras(7).numpy()) <= 1e-6
    with pytest.raises(RuntimeArgumentError, match="pixel units"):
        Camera(c2w.numpy(), k.numpy() * 512)                                    # pixel intrinsics by mistake
    with pytest.raises(RuntimeArgumentError, match="rigid"):
        Camera(c2w.numpy() * 2, k.numpy())
    with pytest.raises(RuntimeArgumentError, match="one camera or one per frame"):
        orbit_camera(4).for_frames(5)
    mirrored = c2w.numpy().copy()
    mirrored[:3, 0] *= -1                                                       # one axis flipped: det R = −1
    with pytest.raises(CameraInputError, match=r"mirrors the image.*det R = \+1"):
        Camera(mirrored, k.numpy())
    with pytest.raises(CameraInputError, match="no cameras"):
        Camera(np.zeros((0, 4, 4), np.float32), k.numpy())


def test_demo_camera_keeps_square_pixels_at_any_aspect():
    """demo_intrinsics(aspect): the focal length in pixels is the square render's at the shorter side, both axes."""
    for width, height in ((128, 64), (64, 128), (96, 96)):
        k = pixel_intrinsics(default_camera(width / height).intrinsics, width, height)
        want = default_camera().intrinsics[0, 0] * min(width, height)
        assert abs(k[0, 0] - want) <= 1e-4 and abs(k[1, 1] - want) <= 1e-4
        assert (k[0, 2], k[1, 2]) == (width / 2, height / 2)
    with pytest.raises(CameraInputError, match="aspect"):
        default_camera(0.0)


def test_image_loading_composites_rgba_onto_white_and_rejects_bad_input(photo, tmp_path):
    rgba = np.asarray(Image.open(photo).convert("RGBA"), np.float64) / 255
    want = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
    assert rgba[..., 3].min() == 0                                              # the photo has a transparent corner
    assert _max_err(load_image(photo, SIZE).transpose(1, 2, 0), want) <= 1e-6
    assert _max_err(load_image(Image.open(photo), SIZE), load_image(photo, SIZE)) == 0
    with pytest.raises(ImageInputError, match=r"200x200.*128x128"):
        load_image(np.zeros((200, 200, 3), np.uint8), SIZE)
    with pytest.raises(ImageInputError, match=r"values in \[255, 255\].*\[0, 1\]"):
        load_image(np.full((SIZE, SIZE, 3), 255.0, np.float32), SIZE)
    with pytest.raises(ImageInputError, match="uint16"):
        load_image(np.zeros((SIZE, SIZE, 3), np.uint16), SIZE)
    with pytest.raises(ImageInputError, match="not found"):
        load_image(tmp_path / "missing.png", SIZE)


def test_image_files_keep_their_bit_depth_and_transparency(tmp_path):
    """16-bit grey is scaled (not clipped to 8 bits); a tRNS colour key and premultiplied RGBa are transparency,
    composited onto white; 32-bit PIL modes with no known range are refused."""
    Image.fromarray(np.full((SIZE, SIZE), 32768, np.uint16)).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"
    assert _max_err(load_image(tmp_path / "grey16.png", SIZE), 32768 / 65535) <= 1e-6
    rgb = np.zeros((SIZE, SIZE, 3), np.uint8)
    rgb[:, SIZE // 2:] = 200
    Image.fromarray(rgb).save(tmp_path / "keyed.png", transparency=(0, 0, 0))   # black = transparent
    keyed = load_image(tmp_path / "keyed.png", SIZE)
    assert keyed[:, :, :SIZE // 2].min() == 1.0 and _max_err(keyed[:, :, SIZE // 2:], 200 / 255) <= 1e-6
    premultiplied = Image.new("RGBa", (SIZE, SIZE), (50, 50, 50, 128))        # straight colour 50·255/128 ≈ 99.6
    straight = np.asarray(premultiplied.convert("RGBA"), np.float64) / 255
    want = straight[..., :3] * straight[..., 3:] + 1 - straight[..., 3:]
    assert _max_err(load_image(premultiplied, SIZE).transpose(1, 2, 0), want) <= 1e-6
    with pytest.raises(ImageInputError, match="mode 'F'"):
        load_image(Image.fromarray(np.full((SIZE, SIZE), 0.5, np.float32)), SIZE)
    pixels = np.random.default_rng(3).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6                                            # stored rotated: shown turned 90° clockwise
    Image.fromarray(pixels).save(tmp_path / "sideways.png", exif=exif)
    upright = np.rot90(pixels, -1).astype(np.float32).transpose(2, 0, 1) / 255
    assert _max_err(load_image(tmp_path / "sideways.png", SIZE), upright) <= 1e-6


def test_expression_files(driving_dir, tmp_path):
    seq = load_expressions(driving_dir / "EMO-1-shout+laugh.npz")
    with np.load(driving_dir / "EMO-1-shout+laugh.npz") as raw:
        assert np.array_equal(seq, raw["expression_codes"]) and seq.shape == (121, 135)
    np.save(tmp_path / "seq.npy", seq[:5])
    assert np.array_equal(load_expressions(tmp_path / "seq.npy"), seq[:5])
    np.save(tmp_path / "bad.npy", seq[:5, :100])
    with pytest.raises(ExpressionInputError, match=r"\[5, 100\].*\[T, 135\]"):
        load_expressions(tmp_path / "bad.npy")
    np.savez(tmp_path / "other.npz", codes=seq)
    with pytest.raises(ExpressionInputError, match="expression_codes"):
        load_expressions(tmp_path / "other.npz")
    np.savez(tmp_path / "objects.npz", expression_codes=np.array([seq[0], None], dtype=object))
    with pytest.raises(ExpressionInputError, match="cannot read expression_codes"):
        load_expressions(tmp_path / "objects.npz")
    big = seq[:3].astype(np.float64)
    big[1, 7] = 1e300                                                          # finite in float64, inf in float32
    with pytest.raises(ExpressionInputError, match="beyond float32.*frame 1"):
        load_expressions(np.save(tmp_path / "big.npy", big) or tmp_path / "big.npy")
    with pytest.raises(AvatarFileError, match="beyond float32"):
        Avatar(np.full((1, 4, 8), 1e300))
    with open(tmp_path / "UPPER.NPZ", "wb") as fh:                              # (np.savez would add .npz)
        np.savez(fh, expression_codes=seq[:2], fps=np.float32(10))
    assert sequence_fps(tmp_path / "UPPER.NPZ", 25.0) == 10.0


# ---- avatars --------------------------------------------------------------------------------------------

def test_avatar_save_load_renders_identically(runtimes, photo, expressions, tmp_path):
    rt = runtimes["onnxruntime"]
    avatar = rt.create_avatar(photo)
    path = avatar.save(tmp_path / "avatar.npy")
    raw = np.load(path)
    assert raw.shape == (64, 1, 64) and raw.dtype == np.float32                 # official (R², 1, D) layout
    assert np.array_equal(AvatarCode.load(path).tokens.numpy(), raw)            # the model package reads it
    loaded = rt.load_avatar(path)
    cams = orbit_camera(3)
    assert np.array_equal(rt.render(loaded, expressions, cams, SIZE, SIZE),
                          rt.render(avatar, expressions, cams, SIZE, SIZE))
    AvatarCode(torch.from_numpy(raw)).save(tmp_path / "official.npy")        # written by the model package
    assert np.array_equal(rt.load_avatar(tmp_path / "official.npy").code, avatar.code)
    np.save(tmp_path / "wrong.npy", np.zeros((16, 1, 64), np.float32))
    with pytest.raises(AvatarFileError, match=r"\[1, 16, 64\].*\[1, 64, 64\]"):
        rt.load_avatar(tmp_path / "wrong.npy")
    np.savez(tmp_path / "code.npz", code=raw)
    with pytest.raises(AvatarFileError, match=r"\.npz archive"):
        rt.load_avatar(tmp_path / "code.npz")


def test_avatar_files_are_written_whole_with_plain_permissions(tmp_path):
    avatar = Avatar(np.ones((1, 4, 8), np.float32))
    old = os.umask(0o022)
    try:
        path = avatar.save(tmp_path / "a.npy")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644                 # as np.save would give, not mkstemp's 0600
    assert np.array_equal(np.load(path)[:, 0], avatar.code[0]) and os.listdir(tmp_path) == ["a.npy"]
    with pytest.raises(AvatarFileError, match="does not exist"):
        avatar.save(tmp_path / "missing" / "a.npy")


def test_features_bundle_needs_features(features_bundle, model, photo):
    rt = Runtime(features_bundle)                                # auto: the bundle has ONNX only
    assert rt.backend == "onnxruntime"
    with pytest.raises(EncoderUnavailableError, match="without DINOv2.*features="):
        rt.create_avatar(photo)
    features = np.random.default_rng(1).standard_normal((32, 4, 4)).astype(np.float32)
    avatar = rt.create_avatar(photo, features=features)
    rgba = load_image(photo, SIZE)
    c2w, k = torch_default_camera()
    want = model.encode(torch.from_numpy(rgba)[None], c2w[None], k[None],
                        features=torch.from_numpy(features)[None, None]).tokens.transpose(0, 1).numpy()
    assert _max_err(avatar.code, want) <= GAUSSIAN_TOL
    with pytest.raises(RuntimeArgumentError, match=r"features.*\[32, h, w\]"):
        rt.create_avatar(photo, features=features[:16])


# ---- loading: typed errors ------------------------------------------------------------------------------

def _copy(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "copy"))


def test_tampered_model_file_is_a_hash_mismatch(bundle, tmp_path):
    copy = _copy(bundle, tmp_path)
    data = bytearray((copy / "decoder.fp32.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF                                                 # same size, one byte flipped
    (copy / "decoder.fp32.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleHashMismatchError, match="decoder.fp32.onnx"):
        Runtime(copy, backend="onnxruntime")


def test_missing_file_is_reported(bundle, tmp_path):
    copy = _copy(bundle, tmp_path)
    (copy / "decoder.fp32.bin").unlink()
    with pytest.raises(BundleFileMissingError, match="decoder.fp32.bin"):
        Runtime(copy, backend="openvino")


def test_edited_manifest_is_rejected(bundle, tmp_path):
    copy = _copy(bundle, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="schema_version"):
        Runtime(copy)
    manifest["schema_version"] = 1
    manifest["conventions"]["n_gaussians"] = 1234                               # disagrees with the model files
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleMetadataError, match="n_gaussians"):
        Runtime(copy, backend="onnxruntime")
    (copy / "manifest.json").unlink()
    with pytest.raises(ManifestError, match="not a flexavatar bundle"):
        Runtime(copy)


def test_edited_manifest_must_agree_with_the_model_files(bundle, tmp_path):
    """The conventions and tensor shapes of manifest.json are checked against each model's own metadata and
    graph (ONNX and OpenVINO IR); an IR lists its .bin; each role's tensors are named as the runtime expects."""
    copy = _copy(bundle, tmp_path)
    original = json.loads((copy / "manifest.json").read_text())

    def edited(edit) -> Path:
        manifest = json.loads(json.dumps(original))
        edit(manifest)
        (copy / "manifest.json").write_text(json.dumps(manifest))
        return copy

    def decoders(m):
        return [a for a in m["artifacts"] if a["role"] == "decoder"]

    def wider_code(m):                                   # the decoders' code input [1, R², D] → [1, R², 2D]
        for a in decoders(m):
            a["inputs"][0]["shape"][2] *= 2

    for engine in ("onnxruntime", "openvino"):
        with pytest.raises(BundleMetadataError, match="image_size: file says 128, manifest 64"):
            Runtime(edited(lambda m: m["conventions"].update(image_size=64)), backend=engine)
        with pytest.raises(BundleMetadataError, match=r"decoder.fp32.(onnx|xml): input 'code': the graph declares"):
            Runtime(edited(wider_code), backend=engine)
    with pytest.raises(ManifestError, match=r"files must be exactly \['decoder.fp32.xml', 'decoder.fp32.bin'\]"):
        Runtime(edited(lambda m: [a["files"].pop() for a in decoders(m) if a["format"] == "openvino"]))
    with pytest.raises(ManifestError, match=r"inputs must be named .* for role 'encoder'"):
        Runtime(edited(lambda m: [a["inputs"][0].update(name="photo") for a in m["artifacts"]
                                  if a["role"] == "encoder"]))
    Runtime(edited(lambda m: None), backend="openvino")                        # the unedited copy still opens


def test_argument_errors_of_type_and_inference_precision(bundle, caplog):
    for kwargs in ({"backend": ["onnxruntime"]}, {"device": None}, {"rasterizer": 3}, {"batch": True},
                   {"num_threads": True}, {"device_id": True}, {"inference_precision": "fp16"},
                   {"inference_precision": 16}):
        name = next(iter(kwargs))
        with pytest.raises(RuntimeArgumentError, match=f"^{name}: is ") as refused:
            Runtime(bundle, **kwargs)
        assert refused.value.argument == name
    rt = Runtime(bundle, backend="openvino", device="cpu", inference_precision="f32")
    assert rt.decoder.inference_precision == "f32"
    with caplog.at_level("WARNING", logger="flexavatar.runtime"):
        Runtime(bundle, backend="onnxruntime", device="cpu", inference_precision="f16")
    assert "inference_precision='f16' applies to OpenVINO only" in caplog.text


def test_argument_errors(bundle, model):
    with pytest.raises(UnknownEngineError, match="tensorrt"):
        Runtime(bundle, backend="tensorrt")
    with pytest.raises(EngineUnavailableError, match="openvino.*cuda"):
        Runtime(bundle, backend="openvino", device="cuda")
    with pytest.raises(EngineUnavailableError, match="no fp16 decoder"):
        Runtime(bundle, backend="onnxruntime", precision="fp16")
    with pytest.raises(EngineUnavailableError, match="no fp16 decoder") as refused:   # every engine, auto
        Runtime(bundle, precision="fp16")
    assert refused.value.hint is None          # the bundle said no: installing engines would not help
    import onnxruntime as ort
    if "CUDAExecutionProvider" not in ort.get_available_providers():        # CPU build: names the GPU wheel once
        with pytest.raises(EngineUnavailableError, match="onnxruntime-gpu") as no_cuda:
            Runtime(bundle, backend="onnxruntime", device="cuda")
        assert no_cuda.value.hint is None and str(no_cuda.value).count("pip install") == 1
    with pytest.raises(EngineUnavailableError, match="model="):
        Runtime(bundle, backend="torch")                                       # the bundle holds no PyTorch weights
    other = FlexAvatarModel.random(model.config, model.template, seed=1)
    Runtime(bundle, backend="torch", model=other)                              # same architecture: accepted
    shallower = FlexAvatarModel.random(replace(model.config, n_layers_expression=1), model.template)
    with pytest.raises(ModelMismatchError, match="FlexConfig"):
        Runtime(bundle, backend="torch", model=shallower)
    with pytest.raises(kernels.UnknownBackendError):
        Runtime(bundle, backend="onnxruntime", rasterizer="nope")


def test_a_bundle_that_carries_the_model_runs_the_torch_engines_alone(bundle, model, oracle, expressions, tmp_path,
                                                                      driving_dir, capsys):
    """model.safetensors in the bundle (export target pytorch; added here to a copy): backend "torch" and
    "torch-compile" need no model=, checkpoint= or template=, the Gaussians are the model's; "auto" still picks ONNX
    Runtime; the file is hashed like every bundle file."""
    from flexavatar.bundle import Manifest, file_record

    carried = _copy(bundle, tmp_path)
    model.save(carried / "model.safetensors")
    manifest = Manifest.read(carried)
    replace(manifest, torch_model=file_record(carried, "model.safetensors")).write(carried)
    avatar, want, _ = oracle
    for backend in ("torch", "torch-compile"):
        rt = Runtime(carried, backend=backend, device="cpu", rasterizer="cpu")
        got = rt.decode(avatar, expressions).numpy()
        assert all(_max_err(getattr(got, f), want[f]) <= GAUSSIAN_TOL for f in FIELDS), backend
    assert Runtime(carried, device="cpu").backend == "onnxruntime"
    assert render_main([str(carried), "--backend", "torch", "--expressions", str(driving_dir / "EMO-1-shout+laugh.npz"),
                        "--frames", "1", "--size", "32", "--no-progress", "-o", str(tmp_path / "f")]) == 0
    assert "torch" in capsys.readouterr().out
    data = bytearray((carried / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (carried / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(BundleHashMismatchError, match="model.safetensors"):
        Runtime(carried, backend="torch", device="cpu")


def test_torch_model_from_a_different_template_is_rejected(bundle, model):
    from flexavatar.template import Template
    other = FlexAvatarModel.random(model.config, Template.synthetic(model.config.res_head_tokens,
                                                                    model.config.res_gaussian_grid))
    with pytest.raises(ModelMismatchError, match="template"):
        Runtime(bundle, backend="torch", model=other)


def test_openvino_pins_fp32_precision(runtimes):
    rt = runtimes["openvino"]
    assert rt.decoder.inference_precision == "f32"
    assert "inference precision f32" in rt.describe()


def test_onnxruntime_sessions_stop_spinning_after_each_run(bundle):
    """The runtime's ORT sessions release their cores when a run returns (the rasterizer runs next): the option
    reaches the session, with the thread count asked for (the speed-up itself is a benchmark figure)."""
    rt = Runtime(bundle, backend="onnxruntime", device="cpu", rasterizer="cpu", num_threads=1)
    for model in (rt.decoder, rt.engine.load("encoder")):
        options = model.session.get_session_options()
        assert options.get_session_config_entry("session.force_spinning_stop") == "1"
        assert options.intra_op_num_threads == 1


def test_render_argument_errors(runtimes, expressions):
    rt = runtimes["onnxruntime"]
    avatar = rt.bundle_avatar()
    with pytest.raises(ExpressionInputError, match="NaN"):
        rt.render(avatar, np.full((2, 135), np.nan, np.float32))
    with pytest.raises(RuntimeArgumentError, match="output"):
        rt.render(avatar, expressions, output="png")
    with pytest.raises(RuntimeArgumentError, match="width"):
        rt.render(avatar, expressions, width=0)
    with pytest.raises(RuntimeArgumentError, match=r"background.*divide 0–255"):
        rt.render(avatar, expressions, background=(255, 255, 255))
    with pytest.raises(RuntimeArgumentError, match="avatar"):
        rt.render("me.png", expressions)
    with pytest.raises(RuntimeArgumentError, match="background"):
        rt.render(avatar, expressions, background="white")
    with pytest.raises(RuntimeArgumentError, match="num_threads"):
        Runtime(rt.bundle.root, num_threads=-1)
    with pytest.raises(RuntimeArgumentError, match="verify.*'full', 'size', 'none'"):
        Runtime(rt.bundle.root, verify="quick")


def test_non_square_render_is_the_square_render_with_more_background(runtimes, expressions):
    """The default camera keeps square pixels: a 2:1 frame's centre columns are the square frame at the shorter
    side (same focal length in pixels, principal point shifted by a whole number of pixels)."""
    rt = runtimes["onnxruntime"]
    avatar = rt.bundle_avatar()
    square = rt.render(avatar, expressions[:1], None, 64, 64, output="float")
    wide = rt.render(avatar, expressions[:1], None, 128, 64, output="float")
    tall = rt.render(avatar, expressions[:1], None, 64, 128, output="float")
    assert _max_err(wide[:, :, 32:96], square) <= 1e-4 and _max_err(tall[:, 32:96], square) <= 1e-4
    assert wide[:, :, :16, 3].max() < 0.05 < square[..., 3].mean()           # the head stays in the middle


# ---- no torch on the ONNX / OpenVINO + CPU rasterizer paths --------------------------------------------

@pytest.mark.parametrize("engine", ("onnxruntime", "openvino"))
def test_onnx_and_openvino_paths_never_import_torch(engine, bundle, photo, tmp_path):
    if "cpu" not in RASTERIZERS:
        pytest.fail("the native CPU rasterizer (flexavatar._native) is not built")
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        from flexavatar.runtime import Runtime, orbit_camera, neutral_expression
        rt = Runtime({str(bundle)!r}, backend={engine!r}, device="auto", rasterizer="auto")
        assert rt.rasterizer == "cpu", rt.rasterizer
        avatar = rt.create_avatar({str(photo)!r})
        avatar.save({str(tmp_path / "a.npy")!r})
        codes = neutral_expression(2)
        codes[1, :10] = 1.0
        frames = rt.render(rt.load_avatar({str(tmp_path / "a.npy")!r}), codes, orbit_camera(2), 64, 64,
                           apply_head_pose=True)
        frames = rt.render(rt.bundle_avatar(), codes, None, 64, 64, output="float")
        assert frames.shape == (2, 64, 64, 4), frames.shape
        assert rt.check_numerics().passed                  # flexavatar-verify's path too
        print("torch imported:", "torch" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "torch imported: False" in out.stdout


# ---- concurrency ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("engine", ("onnxruntime", "openvino"))
def test_one_runtime_from_several_threads(engine, runtimes, driving_dir):
    rt = runtimes[engine]
    avatar = rt.bundle_avatar()
    codes = load_expressions(driving_dir / "SEN-10-port_strong_smokey.npz")[:8]
    cams = orbit_camera(8)
    sequential = [rt.render(avatar, codes[i:i + 2], Camera(cams.cam2world[i:i + 2], cams.intrinsics), 64, 64)
                  for i in range(0, 8, 2)]
    results: dict[int, list[np.ndarray]] = {}
    barrier = threading.Barrier(4)
    errors = []

    def work(t: int) -> None:
        try:
            barrier.wait()
            frames = []
            for repeat in range(3):                      # each thread renders its slice three times, all at once
                frames.append(rt.render(avatar, codes[2 * t:2 * t + 2],
                                        Camera(cams.cam2world[2 * t:2 * t + 2], cams.intrinsics), 64, 64))
            # and as a live loop: both frames queued, one a call, before either result is taken
            queued = [rt.render_async(avatar, codes[i:i + 1], Camera(cams.cam2world[i], cams.intrinsics), 64, 64)
                      for i in (2 * t, 2 * t + 1)]
            frames.append(np.concatenate([q.result() for q in queued]))
            results[t] = frames
        except BaseException as e:                       # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not errors, errors
    for t in range(4):
        for frames in results[t]:
            assert np.abs(frames.astype(int) - sequential[t].astype(int)).max() <= 1


# ---- 3DGS PLY ---------------------------------------------------------------------------------------------

def _read_3dgs_ply(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """plyfile (the reader of the original 3DGS code) → property names and activated attributes, as 3DGS does."""
    from plyfile import PlyData

    vertex = PlyData.read(str(path))["vertex"]
    col = lambda *names: np.stack([np.asarray(vertex[n], np.float64) for n in names], axis=1)  # noqa: E731
    quats = col("rot_0", "rot_1", "rot_2", "rot_3")
    return [p.name for p in vertex.properties], {
        "means": col("x", "y", "z"), "sh0": col("f_dc_0", "f_dc_1", "f_dc_2"),
        "opacities": 1 / (1 + np.exp(-col("opacity")[:, 0])), "scales": np.exp(col("scale_0", "scale_1", "scale_2")),
        "quats": quats / np.linalg.norm(quats, axis=1, keepdims=True)}


def test_gaussians_save_a_3dgs_ply_that_plyfile_reads_back(runtimes, expressions, tmp_path):
    from flexavatar.runtime.ply import PLY_PROPERTIES

    rt = runtimes["onnxruntime"]
    g = rt.decode(rt.bundle_avatar(), expressions[:3], apply_head_pose=True)
    path = g.save_ply(tmp_path / "frame2.ply", frame=2, comment="flexavatar: frame 2 of Émotion-1.npz\nsecond line")
    names, got = _read_3dgs_ply(path)
    from plyfile import PlyData
    assert PlyData.read(str(path)).comments == ["flexavatar: frame 2 of ?motion-1.npz", "second line"]
    assert names == list(PLY_PROPERTIES)
    want = g[2].numpy()                                                            # [G, ...]: one frame
    assert got["means"].shape == (g.n_gaussians, 3)
    np.testing.assert_array_equal(got["means"], want.means)
    np.testing.assert_array_equal(got["sh0"], want.sh0)
    np.testing.assert_allclose(got["scales"], want.scales, rtol=2e-6)             # log in the file
    np.testing.assert_allclose(got["opacities"], want.opacities, rtol=0, atol=2e-6)   # logit in the file
    np.testing.assert_allclose(got["quats"], want.quats, rtol=0, atol=2e-6)
    assert not list(tmp_path.glob(".*partial*"))


def test_ply_refuses_bad_gaussians_and_paths(runtimes, expressions, tmp_path):
    rt = runtimes["onnxruntime"]
    g = rt.decode(rt.bundle_avatar(), expressions[:2]).numpy()
    with pytest.raises(RuntimeArgumentError, match="frame.*2 decoded frames"):
        g.save_ply(tmp_path / "x.ply", frame=2)
    with pytest.raises(OutputFileError, match=r"\.ply file"):
        g.save_ply(tmp_path / "x.obj")
    broken = replace(g, scales=np.where(np.arange(g.n_gaussians)[None, :, None] == 7, np.nan, g.scales))
    with pytest.raises(RuntimeArgumentError, match="scales.*NaN"):
        broken.save_ply(tmp_path / "x.ply")
    assert list(tmp_path.iterdir()) == []


# ---- CLI ------------------------------------------------------------------------------------------------

def test_cli_writes_mp4_gif_and_frames(bundle, photo, driving_dir, tmp_path, capsys):
    import imageio_ffmpeg

    seq = driving_dir / "EMO-1-shout+laugh.npz"
    rc = render_main([str(bundle), "--avatar", str(photo), "--expressions", str(seq), "--frames", "6",
                      "--size", "96", "--camera-orbit", "-o", str(tmp_path / "clip.mp4"), "--save-avatar",
                      str(tmp_path / "me.npy"), "--save-ply", str(tmp_path / "first.ply"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    names, first = _read_3dgs_ply(tmp_path / "first.ply")
    assert "x" in names and first["means"].shape[1] == 3 and np.isfinite(first["scales"]).all()
    assert "p50 ms" in out and "encode (once)" in out and "whole frame" in out
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "clip.mp4"))
    meta = next(reader)
    assert tuple(meta["size"]) == (96, 96) and abs(meta["fps"] - 25) < 1e-6     # the sequence's fps
    assert sum(1 for _ in reader) == 6

    rc = render_main([str(bundle), "--avatar", str(tmp_path / "me.npy"), "--expressions", str(seq), "--frames",
                      "5", "--size", "64", "--head-pose", "--backend", "onnxruntime", "--batch", "2", "-o",
                      str(tmp_path / "clip.gif")])
    assert rc == 0
    with Image.open(tmp_path / "clip.gif") as gif:
        assert gif.n_frames == 5 and gif.size == (64, 64)

    rc = render_main([str(bundle), "--expressions", str(seq), "--frames", "3", "--size", "48",     # bundle avatar
                      "-o", str(tmp_path / "frames"), "--no-progress"])
    assert rc == 0
    pngs = sorted((tmp_path / "frames").glob("frame_*.png"))
    assert len(pngs) == 3 and Image.open(pngs[0]).size == (48, 48)
    assert not list(tmp_path.glob(".*partial*"))


def _crop_npz(driving_dir: Path, out: Path, size: int) -> tuple[np.ndarray, Camera]:
    """An in-the-wild example (einstein.npz: its model-input crop, not matted, and its input camera) with the crop
    resized to this fixture model's image size (normalised intrinsics hold at any size)."""
    with np.load(driving_dir / "einstein.npz") as crop:
        members = {name: crop[name] for name in crop.files}
    members["image"] = np.asarray(Image.fromarray(members["image"]).resize((size, size), Image.BILINEAR))
    np.savez_compressed(out, **members)
    return members["image"], Camera(members["cam2world"], members["intrinsics"])


def test_cli_encodes_an_in_the_wild_crop_with_its_own_camera(bundle, driving_dir, tmp_path, capsys):
    """--avatar einstein.npz (the official in-the-wild example layout): its crop 'image' encoded with its own
    cam2world / intrinsics (photo_camera), as the official pipeline encodes it, not with the demo camera; the code is
    Runtime.create_avatar(image, camera)'s, and the unmatted crop is pointed out."""
    from flexavatar.runtime import photo_camera

    image, camera = _crop_npz(driving_dir, tmp_path / "einstein.npz", SIZE)
    rc = render_main([str(bundle), "--avatar", str(tmp_path / "einstein.npz"), "--expressions",
                      str(driving_dir / "EXP-4-lips.npz"), "--frames", "2", "--size", "48", "--backend", "onnxruntime",
                      "--device", "cpu", "--save-avatar", str(tmp_path / "code.npy"), "-o", str(tmp_path / "frames"),
                      "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "encoded with its own camera" in out and "is not matted" in out
    assert len(list((tmp_path / "frames").glob("frame_*.png"))) == 2
    runtime = Runtime(bundle, backend="onnxruntime", device="cpu")
    got = Avatar.load(tmp_path / "code.npy").code
    np.testing.assert_allclose(got, runtime.create_avatar(image, camera=camera).code, atol=1e-6, rtol=0)
    frontal = runtime.create_avatar(image).code
    assert np.abs(got - frontal).max() > 1e-3                 # the photo's camera did change the code
    np.testing.assert_array_equal(photo_camera(tmp_path / "einstein.npz").cam2world, camera.cam2world)

    np.savez(tmp_path / "no_camera.npz", image=image)
    with pytest.raises(CameraInputError, match=r"no_camera.npz has no cam2world / intrinsics"):
        photo_camera(tmp_path / "no_camera.npz")
    np.savez(tmp_path / "no_image.npz", cam2world=camera.cam2world, intrinsics=camera.intrinsics)
    with pytest.raises(ImageInputError, match=r"has no 'image' array"):
        load_image(tmp_path / "no_image.npz", SIZE)
    seq = driving_dir / "EXP-4-lips.npz"                      # a sequence's cameras are [T, 4, 4]: not a photo's
    with pytest.raises(CameraInputError, match=r"holds cam2world \[193, 4, 4\]"):
        photo_camera(seq)


def test_frame_writers_leave_whole_outputs_or_nothing(tmp_path, monkeypatch):
    """A PNG folder holds exactly the frames of the last complete render; an interrupted or failed write leaves
    neither half an output nor a temporary file."""
    from flexavatar.runtime.video import open_writer
    frames = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    with open_writer(tmp_path / "frames", 8, 8, 25) as w:
        w.write(frames)
    with open_writer(tmp_path / "frames", 8, 8, 25) as w:                     # a shorter render replaces it
        w.write(frames[:2])
    names = sorted(os.listdir(tmp_path / "frames"))
    assert names == ["frame_00000.png", "frame_00001.png"]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "frames" / names[1])), frames[1])
    with pytest.raises(KeyboardInterrupt):
        with open_writer(tmp_path / "frames", 8, 8, 25) as w:
            w.write(frames[2:])
            raise KeyboardInterrupt
    assert sorted(os.listdir(tmp_path / "frames")) == names and os.listdir(tmp_path) == ["frames"]   # untouched
    with pytest.raises(KeyboardInterrupt):
        with open_writer(tmp_path / "new", 8, 8, 25) as w:
            w.write(frames)
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == ["frames"]                                  # no half folder, no staging

    def failing_save(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"GIF89a half")
        raise OSError("disk full")
    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        with open_writer(tmp_path / "clip.gif", 8, 8, 25) as w:
            w.write(frames)
    assert os.listdir(tmp_path) == ["frames"]


def test_cli_errors_are_reported(bundle, driving_dir, tmp_path, capsys):
    seq = driving_dir / "EMO-1-shout+laugh.npz"
    assert render_main([str(bundle), "--expressions", str(seq), "-o", str(tmp_path / "x.avi")]) == 2
    assert "OutputFileError" in capsys.readouterr().err
    assert render_main([str(bundle), "--expressions", str(seq), "--size", "63", "-o", str(tmp_path / "x.mp4")]) == 2
    assert "even width and height" in capsys.readouterr().err
    assert render_main([str(tmp_path / "nope"), "--expressions", str(seq), "-o", str(tmp_path / "x.gif")]) == 2
    assert "BundleFileMissingError" in capsys.readouterr().err
    # the cheap checks come first: no bundle is opened for an output that cannot be written
    assert render_main([str(tmp_path / "nope"), "--expressions", str(seq), "-o", str(tmp_path / "x.avi")]) == 2
    assert "OutputFileError" in capsys.readouterr().err
    assert render_main([str(tmp_path / "nope"), "--expressions", str(tmp_path / "none.npy"), "-o",
                        str(tmp_path / "x.gif")]) == 2
    assert "ExpressionInputError" in capsys.readouterr().err
    assert render_main([str(bundle), "--expressions", str(seq), "--backend", "torch", "-o",
                        str(tmp_path / "x.gif")]) == 2
    assert "--checkpoint CKPT --template OBJ" in capsys.readouterr().err
    # checked before the bundle is opened (its path does not exist here)
    for extra, text in ((["--fps", "0"], "fps: is 0.0"), (["--fps", "inf"], "fps: is inf"),
                        (["--frames", "0"], "--frames: is 0"),
                        (["--save-avatar", str(tmp_path / "no" / "me.npy")], "does not exist")):
        assert render_main([str(tmp_path / "nope"), "--expressions", str(seq), "-o", str(tmp_path / "x.gif"),
                            *extra]) == 2
        assert text in capsys.readouterr().err, extra


def test_cli_background_and_transparent_png_frames(bundle, driving_dir, tmp_path, capsys):
    """--alpha PNGs (straight alpha, un-premultiplied from a green render) composited over white / black give the
    white / black renders: the colour, the alpha and the background are each right (± uint8 rounding)."""
    seq = driving_dir / "EMO-1-shout+laugh.npz"
    base = [str(bundle), "--expressions", str(seq), "--frames", "2", "--size", "64", "--no-progress", "-o"]
    frames = {}
    for name, extra in (("alpha", ["--alpha", "--background", "0,1,0"]), ("white", []),
                        ("black", ["--background", "#000000"])):
        assert render_main([*base, str(tmp_path / name), *extra]) == 0
        frames[name] = np.stack([np.asarray(Image.open(p), np.float64) / 255
                                 for p in sorted((tmp_path / name).glob("frame_*.png"))])
    rgba = frames["alpha"]
    assert rgba.shape == (2, 64, 64, 4) and frames["white"].shape == (2, 64, 64, 3)
    colour, alpha = rgba[..., :3], rgba[..., 3:]
    assert alpha.min() == 0 and alpha.max() > 0.5 and ((alpha > 0) & (alpha < 1)).mean() > 0.05   # a soft head
    for name, background in (("white", 1.0), ("black", 0.0)):
        composite = colour * alpha + (1 - alpha) * background
        assert np.abs(composite - frames[name]).max() <= 2.5 / 255, name
    assert np.abs(frames["white"] - frames["black"]).max() > 0.5             # the background reaches the frames

    assert render_main([*base, str(tmp_path / "clip.mp4"), "--alpha"]) == 2
    assert "cannot keep transparency" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        render_main([*base, str(tmp_path / "x"), "--background", "255,255,255"])
    assert "R,G,B in [0, 1]" in capsys.readouterr().err


def test_cli_stereo_writes_the_eyes_side_by_side(bundle, runtimes, driving_dir, tmp_path, capsys):
    """--stereo: frames twice as wide, the left eye's image then the right one's, as the runtime's multiview
    render of stereo_camera (an orbiting camera: a rig per frame); an .mp4 of them reads back at that size."""
    import imageio_ffmpeg

    from flexavatar.runtime import stereo_camera
    seq = driving_dir / "EMO-1-shout+laugh.npz"
    base = [str(bundle), "--expressions", str(seq), "--frames", "3", "--size", "48", "--no-progress", "--camera-orbit",
            "--backend", "onnxruntime", "--stereo", "--eye-distance", "0.1", "-o"]
    assert render_main([*base, str(tmp_path / "eyes")]) == 0
    assert "(3 frames, 96x48," in capsys.readouterr().out
    got = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / "eyes").glob("frame_*.png"))])
    assert got.shape == (3, 48, 96, 3)
    want = runtimes["onnxruntime"].render(runtimes["onnxruntime"].bundle_avatar(), load_expressions(seq)[:3],
                                          stereo_camera(orbit_camera(3), 0.1), 48, 48, multiview=True)
    np.testing.assert_array_equal(got[:, :, :48], want[:, 0])
    np.testing.assert_array_equal(got[:, :, 48:], want[:, 1])
    assert np.abs(got[:, :, :48].astype(int) - got[:, :, 48:]).max() > 10             # two different eyes
    assert render_main([*base, str(tmp_path / "eyes.mp4")]) == 0
    assert "wrote " in capsys.readouterr().out
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "eyes.mp4"))
    assert tuple(next(reader)["size"]) == (96, 48) and sum(1 for _ in reader) == 3
    assert render_main([*base[:-2], "-0.5", "-o", str(tmp_path / "x")]) == 2
    assert "--eye-distance: is -0.5" in capsys.readouterr().err
    assert base[-4:] == ["--stereo", "--eye-distance", "0.1", "-o"]
    assert render_main(["--stereo", str(bundle), *base[1:-4], "-o", str(tmp_path / "first")]) == 0  # takes no word


def test_cli_streams_raw_frames_to_stdout(bundle, driving_dir, tmp_path, capsysbinary):
    """-o -: the PNG frames' bytes, frame after frame, on stdout (rgba with --alpha); messages go to stderr."""
    seq = driving_dir / "EMO-1-shout+laugh.npz"
    base = [str(bundle), "--expressions", str(seq), "--frames", "3", "--size", "48", "--no-progress", "-o"]
    for extra, channels in (([], 3), (["--alpha"], 4)):
        folder = tmp_path / f"png{channels}"
        assert render_main([*base, str(folder), *extra]) == 0
        capsysbinary.readouterr()
        assert render_main([*base, "-", *extra]) == 0
        captured = capsysbinary.readouterr()
        want = np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("frame_*.png"))])   # [3, 48, 48, C]
        assert want.shape == (3, 48, 48, channels)
        assert captured.out == want.tobytes()
        assert b"wrote standard output (3 frames, 48x48" in captured.err and b"p50 ms" in captured.err
    # a reader that stops early (ffmpeg quitting, `| head`): one line on stderr, exit 1, no traceback
    proc = subprocess.Popen([sys.executable, "-m", "flexavatar.runtime.cli", str(bundle), "--expressions", str(seq),
                             "--frames", "40", "--size", "48", "--no-progress", "-o", "-"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert len(proc.stdout.read(100)) == 100
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1, err
    assert "standard output was closed before the last frame" in err and "Traceback" not in err


class _Trickle(io.RawIOBase):
    """A pipe that hands out at most ``step`` bytes a read (as a tracker's pipe may)."""

    def __init__(self, data: bytes, step: int):
        self.data, self.step = data, step

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        out, self.data = self.data[:min(n, self.step)], self.data[min(n, self.step):]
        return out


def test_cli_renders_codes_streamed_on_standard_input(bundle, driving_dir, tmp_path, capsysbinary, monkeypatch):
    """--expressions -: 540-byte records (135 little-endian float32) rendered as they arrive, here to raw frames on
    stdout (a tracker → flexavatar-render → virtual camera pipe); the frames are the file sequence's."""
    from types import SimpleNamespace

    codes = load_expressions(driving_dir / "EMO-1-shout+laugh.npz")[:3]
    np.save(tmp_path / "seq.npy", codes)
    common = ["--size", "48", "--no-progress", "--head-pose", "-o", "-"]
    assert render_main([str(bundle), "--expressions", str(tmp_path / "seq.npy"), *common]) == 0
    want = capsysbinary.readouterr().out
    data = codes.astype("<f4").tobytes()
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=_Trickle(data, step=100)))
    assert render_main([str(bundle), "--expressions", "-", *common]) == 0
    captured = capsysbinary.readouterr()
    assert len(want) == 3 * 48 * 48 * 3 and captured.out == want
    assert b"wrote standard output (3 frames, 48x48" in captured.err
    # --frames stops reading after N codes
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=_Trickle(data, step=540)))
    assert render_main([str(bundle), "--expressions", "-", "--frames", "2", *common]) == 0
    assert capsysbinary.readouterr().out == want[:2 * 48 * 48 * 3]
    # a stream that ends inside a record: the complete frames went out, then a typed error naming the record
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=_Trickle(data[:540 + 100], step=540)))
    assert render_main([str(bundle), "--expressions", "-", *common]) == 2
    captured = capsysbinary.readouterr()
    assert captured.out == want[:48 * 48 * 3]
    assert b"ExpressionInputError" in captured.err and b"ended inside record 1 (100 of 540 bytes)" in captured.err
    # NaN in a record is refused like in a file
    bad = codes.copy()
    bad[1, 7] = np.nan
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=_Trickle(bad.astype("<f4").tobytes(), step=540)))
    assert render_main([str(bundle), "--expressions", "-", *common]) == 2
    assert b"streamed record 1" in capsysbinary.readouterr().err
    # what a stream cannot have: its length (orbit), its cameras, its first code up front
    for flag in (["--camera-orbit"], ["--camera-tracked"], ["--save-ply", str(tmp_path / "f.ply")]):
        assert render_main([str(bundle), "--expressions", "-", *flag, "-o", str(tmp_path / "x.gif")]) == 2
        assert f"{flag[0]}: was given with --expressions -".encode() in capsysbinary.readouterr().err


def test_latest_records_yield_the_newest_code_and_count_the_skipped(driving_dir):
    """LatestRecords on a real pipe: what arrived while the consumer was busy collapses to its newest record
    (the others counted as skipped), a record that arrives while the consumer waits is yielded at once, the end of
    the stream ends the iteration, and a stream ending inside a record raises after the newest whole one."""
    import os
    import threading

    from flexavatar.runtime.expressions import ExpressionInputError, LatestRecords

    codes = load_expressions(driving_dir / "EMO-1-shout+laugh.npz")[:6].astype("<f4")
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb", buffering=0) as source, os.fdopen(write_end, "wb", buffering=0) as sink:
        records = LatestRecords(source)
        stream = iter(records)
        sink.write(codes[:3].tobytes())                     # three codes while the consumer is busy
        assert records.wait_received(3, timeout=30)
        np.testing.assert_array_equal(next(stream), codes[2:3])
        assert (records.received, records.skipped) == (3, 2)
        later = threading.Timer(0.2, sink.write, args=(codes[3].tobytes(),))
        later.start()                                       # the consumer waits; the next code arrives
        np.testing.assert_array_equal(next(stream), codes[3:4])
        later.join()
        sink.write(codes[4:6].tobytes())
        assert records.wait_received(6, timeout=30)
        sink.close()                                        # end of stream: the newest, then the end
        assert [r.tobytes() for r in stream] == [codes[5:6].tobytes()]
        assert (records.received, records.skipped) == (6, 3)

    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb", buffering=0) as source:
        with os.fdopen(write_end, "wb", buffering=0) as sink:
            sink.write(codes[:2].tobytes() + codes[2].tobytes()[:100])
        got = []
        with pytest.raises(ExpressionInputError, match=r"ended inside record 2 \(100 of 540 bytes\)"):
            for record in LatestRecords(source):
                got.append(record)
        assert len(got) >= 1 and got[-1].tobytes() == codes[1].tobytes()


def test_cli_latest_renders_the_newest_streamed_code(bundle, driving_dir, tmp_path, capsysbinary, monkeypatch):
    """--latest (with --expressions -): every frame is the render of a streamed code, in stream order, the last one
    of the last code; the codes that arrived while a frame rendered are skipped and counted. Without a stream it is
    refused by name."""
    from types import SimpleNamespace

    codes = load_expressions(driving_dir / "EMO-1-shout+laugh.npz")[::15][:8]   # far apart: distinct frames
    np.save(tmp_path / "seq.npy", codes)
    common = ["--size", "48", "--no-progress", "-o", "-"]
    assert render_main([str(bundle), "--expressions", str(tmp_path / "seq.npy"), *common]) == 0
    frame = 48 * 48 * 3
    each = capsysbinary.readouterr().out
    each = [each[i:i + frame] for i in range(0, len(each), frame)]                # the render of every code
    assert len(set(each)) == len(each) == len(codes)
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=io.BytesIO(codes.astype("<f4").tobytes())))
    assert render_main([str(bundle), "--expressions", "-", "--latest", *common]) == 0
    captured = capsysbinary.readouterr()
    got = [captured.out[i:i + frame] for i in range(0, len(captured.out), frame)]
    assert 1 <= len(got) <= len(codes) and got[-1] == each[-1]
    order = [each.index(f) for f in got]                                        # each frame: some code's render
    assert order == sorted(order) and len(set(order)) == len(order)
    assert (f"--latest: rendered the newest of {len(codes)} streamed codes each time; {len(codes) - len(got)} "
            "arrived while a frame rendered and were skipped").encode() in captured.err
    assert render_main([str(bundle), "--expressions", str(tmp_path / "seq.npy"), "--latest", *common]) == 2
    assert b"--latest: was given with --expressions" in capsysbinary.readouterr().err


def test_cli_tracked_cameras_render_each_frame_from_its_camera(bundle, runtimes, driving_dir, tmp_path, capsys):
    """--camera-tracked: frame t from the sequence's cam2world[t] / intrinsics[t] (read here with numpy), i.e. the
    head moving as tracked; the options it rules out are refused before any work."""
    from flexavatar.runtime import sequence_cameras

    seq = driving_dir / "EXP-1-head.npz"                                    # large head motion
    out = tmp_path / "tracked"
    assert render_main([str(bundle), "--expressions", str(seq), "--frames", "3", "--size", "48", "--no-progress",
                        "--camera-tracked", "-o", str(out)]) == 0
    got = np.stack([np.asarray(Image.open(p)) for p in sorted(out.glob("frame_*.png"))])
    with np.load(seq) as data:
        codes, c2w, k = data["expression_codes"][:3], data["cam2world"][:3], data["intrinsics"][:3]
    rt = runtimes["onnxruntime"]
    want = rt.render(rt.bundle_avatar(), codes, Camera(c2w, k), 48, 48)
    np.testing.assert_array_equal(got, want)
    assert np.abs(want.astype(int) - rt.render(rt.bundle_avatar(), codes, None, 48, 48)).mean() > 1   # not the default
    assert len(sequence_cameras(seq)) == len(load_expressions(seq))

    np.save(tmp_path / "codes.npy", codes)
    for extra, words in ((["--head-pose"], "already show the head's motion"), (["--focal", "3"], "tracked intrinsics")):
        assert render_main([str(bundle), "--expressions", str(seq), "--camera-tracked", *extra, "-o",
                            str(tmp_path / "x")]) == 2
        assert words in capsys.readouterr().err
    assert render_main([str(bundle), "--expressions", str(tmp_path / "codes.npy"), "--camera-tracked", "-o",
                        str(tmp_path / "x")]) == 2
    assert "CameraInputError" in capsys.readouterr().err
    with pytest.raises(SystemExit):                                          # one camera mode at a time
        render_main([str(bundle), "--expressions", str(seq), "--camera-tracked", "--camera-orbit", "-o", "x"])


def test_cli_device_ordinal_reaches_the_runtime(bundle, driving_dir, tmp_path, capsys, monkeypatch):
    import flexavatar.runtime.cli as cli

    seq = driving_dir / "EMO-1-shout+laugh.npz"
    seen = {}

    def fake_runtime(*args, **kwargs):
        seen.update(kwargs)
        raise EngineUnavailableError("onnxruntime", kwargs["device"], "stop here", None)

    monkeypatch.setattr(cli, "Runtime", fake_runtime)
    assert render_main([str(bundle), "--expressions", str(seq), "--device", "cuda:1", "-o", str(tmp_path / "x")]) == 2
    assert (seen["device"], seen["device_id"]) == ("cuda", 1)
    assert render_main([str(bundle), "--expressions", str(seq), "--device", "cpu", "-o", str(tmp_path / "x")]) == 2
    assert (seen["device"], seen["device_id"]) == ("cpu", 0)
    assert render_main([str(bundle), "--expressions", str(seq), "--device", "gpu:2", "-o", str(tmp_path / "x")]) == 2
    assert (seen["device"], seen["device_id"]) == ("gpu", 2)
    capsys.readouterr()
    for bad in ("cuda:x", "npu:1", "cpu:0", "cuda:-1"):
        with pytest.raises(SystemExit):
            render_main([str(bundle), "--expressions", str(seq), "--device", bad, "-o", str(tmp_path / "x")])
        assert "cuda:N, gpu, gpu:N" in capsys.readouterr().err


def test_cli_torch_backend_from_the_checkpoint_renders_the_bundles_frames(bundle, official_dir, driving_dir,
                                                                          tmp_path, capsys, monkeypatch):
    from flexavatar.runtime import engines
    monkeypatch.setattr(engines, "TORCH_COMPILE_BACKEND", "aot_eager")      # Inductor itself: its own test above
    seq = driving_dir / "EMO-1-shout+laugh.npz"
    model_files = ["--checkpoint", str(official_dir / "state_dict.safetensors"),
                   "--template", str(official_dir / "gghead_template.obj")]
    frames = {}
    for backend, extra in (("onnxruntime", []), ("torch", model_files), ("torch-compile", model_files)):
        out = tmp_path / backend
        capsys.readouterr()
        assert render_main([str(bundle), "--expressions", str(seq), "--frames", "3", "--size", "64",
                            "--backend", backend, "--rasterizer", "reference", "--no-progress", "-o", str(out),
                            *extra]) == 0
        # the compiled decoder is compiled before the frames are timed, and says so
        assert ("compiling the decoder" in capsys.readouterr().out) == (backend == "torch-compile")
        frames[backend] = np.stack([np.asarray(Image.open(p)) for p in sorted(out.glob("frame_*.png"))])
    for backend in ("torch", "torch-compile"):
        assert frames[backend].shape == frames["onnxruntime"].shape == (3, 64, 64, 3)
        delta = np.abs(frames[backend].astype(int) - frames["onnxruntime"].astype(int))
        assert delta.max() <= 2 and delta.mean() <= 1e-3 * 255, backend


def test_stage_times_table():
    times = StageTimes()
    times.add_once("encode", 100.0)
    for ms in (1.0, 2.0, 3.0, 4.0):
        with times.stage("decode", 1):
            pass
        times.ms["decode"][-1] = ms
        times.ms.setdefault("rasterize", []).append(10.0)
    assert times.whole_frame().tolist() == [11.0, 12.0, 13.0, 14.0]
    assert times.percentile("decode", 50) == 2.5
    table = times.table()
    assert "encode (once)" in table and "whole frame" in table


def test_cuda_graphs_default_on_for_onnxruntime_on_cuda_only(bundle):
    """cuda_graphs=None (the default) means on for ONNX Runtime on CUDA (the mode onnxruntime-gpu 1.31.1 never aborted
    in), off elsewhere; False turns it off; anything else is refused by name. The CLI flag follows."""
    from types import SimpleNamespace

    from flexavatar.runtime.cli import build_parser
    from flexavatar.runtime.engines import EngineOptions, OrtBackend

    def graphs(device, value):
        return OrtBackend.graphs.fget(SimpleNamespace(device=device, options=EngineOptions(cuda_graphs=value)))

    assert [graphs("cuda", v) for v in (None, True, False)] == [True, True, False]
    assert [graphs("cpu", v) for v in (None, True, False)] == [False, False, False]
    rt = Runtime(bundle, backend="onnxruntime", device="cpu", rasterizer="reference")
    assert rt.engine.graphs is False and "CUDA graphs" not in rt.describe()
    with pytest.raises(RuntimeArgumentError, match="cuda_graphs.*True, False or None"):
        Runtime(bundle, backend="onnxruntime", device="cpu", cuda_graphs="yes")
    parse = build_parser().parse_args
    required = ["b", "--expressions", "seq.npy", "-o", "clip.gif"]
    assert [parse([*required, *flag]).cuda_graphs for flag in ([], ["--cuda-graphs"], ["--no-cuda-graphs"])] == \
        [None, True, False]


def test_fused_decoders_first_on_cuda_and_where_asked(bundle, tmp_path):
    """ONNX Runtime's formats, preferred first: the fused decoders (onnx-ort) on CUDA, the portable files on the CPU;
    fused_decoders=True puts the fused ones first everywhere, False leaves them out. The CLI flag follows."""
    from flexavatar.runtime.cli import build_parser
    from flexavatar.runtime.engines import ort_formats

    assert ort_formats("cuda", None) == ort_formats("cuda", True) == ort_formats("cpu", True) == ("onnx-ort", "onnx")
    assert ort_formats("cpu", None) == ("onnx", "onnx-ort")
    assert ort_formats("cuda", False) == ort_formats("cpu", False) == ("onnx",)
    ran = {}
    for fused in (None, True, False):
        rt = Runtime(bundle, backend="onnxruntime", device="cpu", rasterizer="cpu", fused_decoders=fused)
        ran[fused] = (rt.engine.artifact(ROLE_DECODER).path, rt.engine.artifact(ROLE_DECODER_AVATAR).path)
        assert ran[fused][0] in rt.describe()
        assert rt.engine.artifact(ROLE_ENCODER).path == "encoder.fp32.onnx"      # encoders: portable files only
    assert ran == {None: ("decoder.fp32.onnx", "decoder_avatar.fp32.onnx"),
                   True: ("decoder.fp32.ort.onnx", "decoder_avatar.fp32.ort.onnx"),
                   False: ("decoder.fp32.onnx", "decoder_avatar.fp32.onnx")}
    with pytest.raises(RuntimeArgumentError, match="fused_decoders.*True, False or None"):
        Runtime(bundle, backend="onnxruntime", device="cpu", fused_decoders=1)
    parse = build_parser().parse_args
    required = ["b", "--expressions", "seq.npy", "-o", "clip.gif"]
    assert [parse([*required, *flag]).fused_decoders
            for flag in ([], ["--fused-decoders"], ["--no-fused-decoders"])] == [None, True, False]

    # a bundle whose decoders are fused only: the CPU falls back to them; False finds no decoder and says so
    only_fused = _copy(bundle, tmp_path)
    manifest = json.loads((only_fused / "manifest.json").read_text())
    manifest["artifacts"] = [a for a in manifest["artifacts"]
                             if not (a["role"].startswith("decoder") and a["format"] != "onnx-ort")]
    (only_fused / "manifest.json").write_text(json.dumps(manifest))
    rt = Runtime(only_fused, backend="onnxruntime", device="cpu", verify="size")
    assert rt.engine.artifact(ROLE_DECODER).path == "decoder.fp32.ort.onnx"
    with pytest.raises(EngineUnavailableError, match="no fp32 decoder in format 'onnx'$"):
        Runtime(only_fused, backend="onnxruntime", device="cpu", verify="size", fused_decoders=False)


def test_a_fused_decoder_that_cannot_run_gives_way_to_the_portable_file_unless_asked_for(bundle, monkeypatch,
                                                                                         caplog):
    """By default (CUDA's preference, emulated here) a fused file this ONNX Runtime cannot run as asked (e.g. a node
    off CUDA, refused by CUDA graphs) falls back to the portable file with a warning; fused_decoders=True fails."""
    from flexavatar.runtime import engines

    monkeypatch.setattr(engines, "ort_formats", lambda device, fused: ("onnx",) if fused is False
                        else ("onnx-ort", "onnx"))
    real = engines.OrtHostModel.__init__

    def refuse_fused(self, path, options, provider, device, static_shapes=None):
        if str(path).endswith(".ort.onnx"):
            raise EngineUnavailableError("onnxruntime", "cuda", f"CUDA graphs refused for {Path(path).name}: "
                                         "a node is on the CPU")
        real(self, path, options, provider, device, static_shapes)

    monkeypatch.setattr(engines.OrtHostModel, "__init__", refuse_fused)
    with caplog.at_level("WARNING", logger="flexavatar.runtime"):
        rt = Runtime(bundle, backend="onnxruntime", device="cpu", rasterizer="cpu")
    assert rt.engine.artifact(ROLE_DECODER).path == "decoder.fp32.onnx" and "decoder.fp32.onnx" in rt.describe()
    assert "decoder.fp32.ort.onnx does not run" in caplog.text and "running decoder.fp32.onnx instead" in caplog.text
    assert rt.engine.artifact(ROLE_DECODER_AVATAR).path == "decoder_avatar.fp32.ort.onnx"     # not opened yet
    rt.decode(rt.bundle_avatar(), np.zeros((1, 135), np.float32))
    assert rt.engine.artifact(ROLE_DECODER_AVATAR).path == "decoder_avatar.fp32.onnx"
    with pytest.raises(EngineUnavailableError, match="CUDA graphs refused for decoder.fp32.ort.onnx"):
        Runtime(bundle, backend="onnxruntime", device="cpu", rasterizer="cpu", fused_decoders=True)


# ---- multiview: every frame seen by several cameras, decoded once -----------------------------------------

def _view(cams: Camera, v: int) -> Camera:
    """View v of a multiview camera as an ordinary one: camera v of a Camera of V (for every frame), or view v of
    each rig of a rig camera ([T, V, 4, 4]: one camera per frame)."""
    if not cams.views:
        return Camera(cams.cam2world[v], cams.intrinsics if cams.intrinsics.ndim == 2 else cams.intrinsics[v])
    k = cams.intrinsics
    return Camera(cams.cam2world[:, v], k if k.ndim == 2 else k[v] if k.ndim == 3 else k[:, v])


def _each_view(rt: Runtime, avatar, expressions, cams: Camera, **kwargs) -> list[np.ndarray]:
    """The frames of each view of ``cams`` rendered on their own: [V] × [T, H, W, C]."""
    views = cams.views or len(cams)
    return [rt.render(avatar, expressions, _view(cams, v), SIZE, SIZE, **kwargs) for v in range(views)]


def test_multiview_frames_are_each_cameras_own_frames_from_one_decode(runtime_cache, oracle, expressions,
                                                                      monkeypatch):
    """3 expressions × 3 cameras, batch 2: a chunk of two frames (their Gaussians repeated per view) and one of one
    (shared by its views). Each view equals that camera's ordinary render, the head pose included, in every output
    format and through iter_render / render_async; the decoder runs once per chunk, not once per view."""
    rt = runtime_cache("onnxruntime", "cpu")
    avatar = oracle[0]
    cams = orbit_camera(3)
    decodes = []
    real = rt._decode_chunk
    monkeypatch.setattr(rt, "_decode_chunk", lambda *a, **k: decodes.append(len(a[1])) or real(*a, **k))
    for output, pose in (("float", False), ("uint8", False), ("float", True)):
        decodes.clear()
        got = rt.render(avatar, expressions, cams, SIZE, SIZE, output=output, apply_head_pose=pose, multiview=True)
        assert decodes == [2, 1], decodes                               # frames per decoder call: 3 in all
        channels = 4 if output == "float" else 3
        assert got.shape == (3, 3, SIZE, SIZE, channels)
        for v, want in enumerate(_each_view(rt, avatar, expressions, cams, output=output, apply_head_pose=pose)):
            np.testing.assert_allclose(got[:, v], want, rtol=0, atol=1e-6 if output == "float" else 0,
                                       err_msg=f"view {v}, {output}, head pose {pose}")
        assert np.abs(got[:, 0].astype(float) - got[:, 1]).max() > 0.1          # the views differ
    chunks = list(rt.iter_render(avatar, expressions, cams, SIZE, SIZE, multiview=True))
    assert [c.shape[:2] for c in chunks] == [(2, 3), (1, 3)]
    pending = rt.render_async(avatar, expressions[:1], cams, SIZE, SIZE, multiview=True)
    np.testing.assert_array_equal(pending.result(), np.concatenate(chunks)[:1])
    with pytest.raises(RuntimeArgumentError, match="^multiview: is 'yes'"):
        rt.render(avatar, expressions, cams, multiview="yes")


def test_multiview_rigs_per_frame_follow_a_moving_camera(runtime_cache, oracle, expressions):
    """A rig camera [T, V, 4, 4] (stereo eyes of an orbiting camera): frame t's views are rig t's cameras; a rig
    camera without multiview, or with a rig count that is neither 1 nor T, is a typed error."""
    from flexavatar.runtime import stereo_camera

    rt = runtime_cache("onnxruntime", "cpu")
    avatar = oracle[0]
    rigs = stereo_camera(orbit_camera(3), eye_distance=0.1)
    got = rt.render(avatar, expressions, rigs, SIZE, SIZE, output="float", multiview=True)
    assert got.shape == (3, 2, SIZE, SIZE, 4)
    for v, want in enumerate(_each_view(rt, avatar, expressions, rigs, output="float")):
        np.testing.assert_allclose(got[:, v], want, rtol=0, atol=1e-6, err_msg=f"view {v}")
    one_rig = stereo_camera(Camera(orbit_camera(3).cam2world[1], orbit_camera(3).intrinsics), eye_distance=0.1)
    np.testing.assert_allclose(rt.render(avatar, expressions[1:2], one_rig, SIZE, SIZE, output="float",
                                         multiview=True), got[1:2], rtol=0, atol=1e-6)
    with pytest.raises(CameraInputError, match="multiview=True"):
        rt.render(avatar, expressions, rigs)
    with pytest.raises(CameraInputError, match="holds 3 rigs for 2 frames"):
        rt.render(avatar, expressions[:2], rigs, multiview=True)
    # a fixed rig whose intrinsics change every frame (a zoom): cam2world [1, V], intrinsics [T, V] → T rigs, each
    # view of frame t the camera (rig 0's pose, intrinsics t)
    zoom = np.broadcast_to(rigs.intrinsics, (3, 2, 3, 3)).copy()                          # [T, V, 3, 3]
    zoom[..., :2, :2] *= np.array([1.0, 1.2, 1.4], np.float32)[:, None, None, None]     # fx, fy per frame
    fixed = Camera(rigs.cam2world[:1], zoom)
    assert len(fixed) == 3 and fixed.views == 2
    got = rt.render(avatar, expressions, fixed, SIZE, SIZE, output="float", multiview=True)
    for t in range(3):
        for v in range(2):
            want = rt.render(avatar, expressions[t:t + 1], Camera(rigs.cam2world[0, v], zoom[t, v]), SIZE, SIZE,
                             output="float")
            np.testing.assert_allclose(got[t:t + 1, v], want, rtol=0, atol=1e-6, err_msg=f"frame {t} view {v}")
    assert not np.allclose(got[0], got[2])                                                 # the zoom shows
    with pytest.raises(CameraInputError, match=r"\[T, 2, 3, 3\] with T = 3 or 1"):
        Camera(rigs.cam2world, zoom[:2])                                                    # 3 rigs, 2 intrinsics


def test_stereo_camera_puts_the_eyes_apart_along_the_cameras_x_axis():
    from flexavatar.runtime import default_camera, stereo_camera

    centre = orbit_camera(4)
    eyes = stereo_camera(centre, eye_distance=0.07)                          # a rig per frame: [4, 2, 4, 4]
    assert eyes.cam2world.shape == (4, 2, 4, 4) and eyes.views == 2 and len(eyes) == 4
    c2w = centre.cam2world.astype(np.float64)
    np.testing.assert_allclose(eyes.cam2world[:, :, :3, :3], np.repeat(c2w[:, None, :3, :3], 2, 1), atol=0)
    np.testing.assert_allclose(eyes.cam2world[..., :3, 3].mean(1), c2w[:, :3, 3], atol=1e-6)   # centred
    step = eyes.cam2world[:, 1, :3, 3] - eyes.cam2world[:, 0, :3, 3]                          # left → right
    np.testing.assert_allclose(step, 0.07 * c2w[:, :3, 0], atol=1e-6)                         # along each +x
    np.testing.assert_allclose(eyes.intrinsics, centre.intrinsics)
    demo = stereo_camera()
    assert demo.cam2world.shape == (1, 2, 4, 4)
    np.testing.assert_allclose(demo.cam2world[0, :, :3, :3], np.repeat(default_camera().cam2world[None, :3, :3], 2, 0))
    per_frame_k = Camera(centre.cam2world, np.repeat(centre.intrinsics[None], 4, 0))
    assert stereo_camera(per_frame_k).intrinsics.shape == (4, 2, 3, 3)
    pair = stereo_camera((centre.cam2world, centre.intrinsics), np.float32(0.07))      # a (cam2world, K) pair
    np.testing.assert_allclose(pair.cam2world, eyes.cam2world, atol=1e-6)
    with pytest.raises(CameraInputError, match="is a rig of 2 views"):
        stereo_camera(eyes)
    with pytest.raises(CameraInputError, match="eye_distance"):
        stereo_camera(centre, eye_distance=-0.01)
    with pytest.raises(CameraInputError, match=r"\[2, 3, 3\] \(one per view\)"):
        Camera(eyes.cam2world, np.repeat(centre.intrinsics[None], 3, 0))        # 3 intrinsics for 2 views


# ---- GPUs and NPUs without CUDA: ONNX Runtime's other providers, OpenVINO's plugins ------------------------

def test_gpu_and_npu_devices_name_what_to_install_when_no_provider_reaches_them(bundle, monkeypatch):
    """An onnxruntime build with only the CPU provider: device "gpu" / "npu" says which providers it looked for and
    which package brings one; with backend="auto" both engines' reasons are given."""
    import onnxruntime as ort

    from flexavatar.runtime import engines

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(engines, "_openvino_devices", lambda: {"CPU": None, "GPU": "OpenVINO sees no GPU device",
                                                               "NPU": "OpenVINO sees no NPU device"})
    for device, provider, package in (("gpu", "DmlExecutionProvider", "onnxruntime-directml"),
                                      ("npu", "QNNExecutionProvider", "onnxruntime-qnn")):
        with pytest.raises(EngineUnavailableError, match=f"no {device.upper()} execution provider") as refused:
            Runtime(bundle, backend="onnxruntime", device=device, verify="none")
        text = str(refused.value)
        assert provider in text and package in text and "CoreMLExecutionProvider" in text
        assert text.count("pip install") == 1 and refused.value.device == device
        with pytest.raises(EngineUnavailableError, match=f"onnxruntime on {device}: .*openvino on {device}: "
                                                         f"OpenVINO sees no {device.upper()} device"):
            Runtime(bundle, device=device, verify="none")


def test_a_provider_the_session_does_not_get_is_an_error(bundle, monkeypatch):
    """ONNX Runtime drops a provider it cannot create (with a warning) and runs on the CPU: the runtime says so
    instead of running a "GPU" runtime on the CPU. Here DirectML is listed but not in the build."""
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["DmlExecutionProvider", "CPUExecutionProvider"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)               # ORT's "not in available provider names"
        with pytest.raises(ExecutionProviderError, match=r"decoder.fp32.onnx did not get DmlExecutionProvider "
                                                         r"\(it runs on \['CPUExecutionProvider'\]\)"):
            Runtime(bundle, backend="onnxruntime", device="gpu", verify="none")


def test_a_provider_that_takes_no_node_is_an_error(bundle, monkeypatch):
    """A provider that the session gets but that takes none of the graph's nodes would run the frame on the CPU:
    refused, with the node count. ONNX Runtime's Azure provider (in the CPU build) is such a provider."""
    import onnxruntime as ort

    from flexavatar.runtime import engines

    if "AzureExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"this onnxruntime {ort.__version__} build has no AzureExecutionProvider to stand in")
    if not hasattr(ort.InferenceSession, "get_provider_graph_assignment_info"):
        pytest.skip(f"onnxruntime {ort.__version__} does not report which provider runs which node")
    monkeypatch.setitem(engines.ORT_HOST_PROVIDERS, "gpu", (("AzureExecutionProvider", {}),))
    n_nodes = len(onnx.load(bundle / "decoder.fp32.onnx", load_external_data=False).graph.node)
    with pytest.raises(ExecutionProviderError, match=r"AzureExecutionProvider took none of the \d+ nodes of "
                                                     r"decoder.fp32.onnx: all of it would run on the CPU") as refused:
        Runtime(bundle, backend="onnxruntime", device="gpu", verify="none")
    # ONNX Runtime's optimised graph: about the file's node count (with static shapes it fuses and splits otherwise)
    assert 0.5 * n_nodes <= int(str(refused.value).split("none of the ")[1].split()[0]) <= 1.5 * n_nodes


def test_a_provider_that_fails_is_a_typed_error_not_a_quiet_cpu_run(bundle, monkeypatch, capsys):
    """A GPU / NPU provider that fails when its session is made, or in a run, is an ExecutionProviderError (ONNX
    Runtime would otherwise move the whole session to the CPU and say so on stdout, inside a raw frame stream);
    nothing is retried with the bundle's other decoder file. Azure's provider stands in for a device provider."""
    import onnxruntime as ort

    from flexavatar.runtime import engines

    if "AzureExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"this onnxruntime {ort.__version__} build has no AzureExecutionProvider to stand in")
    monkeypatch.setitem(engines.ORT_HOST_PROVIDERS, "gpu", (("AzureExecutionProvider", {}),))
    monkeypatch.setattr(engines, "ort_nodes_per_provider", lambda session: None)     # let it past the node check
    real_session = ort.InferenceSession

    class FailingSession(real_session):
        fail_on_open = False

        def __init__(self, *args, **kwargs):
            if FailingSession.fail_on_open:
                raise ort.capi.onnxruntime_pybind11_state.EPFail("device lost while compiling")
            super().__init__(*args, **kwargs)

        def run(self, *args, **kwargs):
            assert not self._enable_fallback                    # ONNX Runtime's fallback to the CPU is off
            raise ort.capi.onnxruntime_pybind11_state.EPFail("device lost while running")

    monkeypatch.setattr(ort, "InferenceSession", FailingSession)
    rt = Runtime(bundle, backend="onnxruntime", device="gpu", verify="none")
    with pytest.raises(ExecutionProviderError, match="AzureExecutionProvider failed running decoder.fp32.onnx: "
                                                     "device lost while running"):
        rt.decode(Avatar(np.load(bundle / "avatar_code.npy").transpose(1, 0, 2)), np.zeros((1, 135), np.float32))
    assert "Falling back" not in capsys.readouterr().out
    FailingSession.fail_on_open = True
    with pytest.raises(ExecutionProviderError, match="AzureExecutionProvider could not open decoder.fp32.onnx: "
                                                     "device lost while compiling"):
        Runtime(bundle, backend="onnxruntime", device="gpu", verify="none")


def test_an_encoder_the_provider_cannot_open_runs_on_the_cpu(bundle, fp16_int8_bundle, photo, monkeypatch, caplog):
    """The encoder runs once per avatar: where the GPU / NPU provider cannot open it (an NPU compiler that does not
    take DINOv2, say) the CPU provider runs it, with a warning, and the decoder stays on the device; a decoder the
    provider cannot open is still an error. Azure's provider stands in for an NPU's."""
    import onnxruntime as ort

    from flexavatar.runtime import engines

    if "AzureExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"this onnxruntime {ort.__version__} build has no AzureExecutionProvider to stand in")
    monkeypatch.setitem(engines.ORT_HOST_PROVIDERS, "npu", (("AzureExecutionProvider", {}),))
    monkeypatch.setattr(engines, "ort_nodes_per_provider", lambda session: None)     # let it past the node check
    real_session = ort.InferenceSession
    refuse = {"encoder"}

    class CompilerSession(real_session):                   # the device's compiler refuses some graphs
        def __init__(self, path, *args, providers=(), **kwargs):
            if Path(path).name.split(".")[0] in refuse and providers[0][0] == "AzureExecutionProvider":
                raise ort.capi.onnxruntime_pybind11_state.EPFail("unsupported operation in the graph")
            super().__init__(path, *args, providers=providers, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", CompilerSession)
    rt = Runtime(bundle, backend="onnxruntime", device="npu", rasterizer="cpu", verify="none")
    with caplog.at_level("WARNING", logger="flexavatar.runtime"):
        avatar = rt.create_avatar(photo)
    assert ("AzureExecutionProvider could not open encoder.fp32.onnx: unsupported operation in the graph; the "
            "encoder runs once per avatar: running encoder.fp32.onnx on the CPU") in caplog.text
    assert rt.engine.load(ROLE_ENCODER).provider == "CPUExecutionProvider"
    assert rt.engine.load(ROLE_DECODER).provider == "AzureExecutionProvider"
    on_cpu = Runtime(bundle, backend="onnxruntime", device="cpu", rasterizer="cpu", verify="none").create_avatar(photo)
    assert _max_err(avatar.code, on_cpu.code) <= 1e-6
    # an fp16 runtime (the device's precision) runs the fp32 encoder on the CPU, where fp16 gains nothing
    half = Runtime(fp16_int8_bundle, backend="onnxruntime", device="npu", rasterizer="cpu", precision="fp16",
                   verify="none")
    with caplog.at_level("WARNING", logger="flexavatar.runtime"):
        half_avatar = half.create_avatar(photo)
    assert "could not open encoder.fp16.onnx" in caplog.text and "running encoder.fp32.onnx on the CPU" in caplog.text
    assert half.engine.artifact(ROLE_ENCODER).name == "encoder.fp32.onnx"
    assert _max_err(half_avatar.code, on_cpu.code) <= 1e-6             # the same model and DINOv2 weights
    refuse.add("decoder")
    with pytest.raises(ExecutionProviderError, match="AzureExecutionProvider could not open decoder.fp32.onnx"):
        Runtime(bundle, backend="onnxruntime", device="npu", verify="none")


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="OpenVINO is not installed")
def test_an_encoder_the_openvino_plugin_cannot_compile_runs_on_the_cpu_plugin(bundle, photo, monkeypatch, caplog):
    """As for ONNX Runtime's providers: OpenVINO's NPU plugin refusing the encoder → the CPU plugin (f32) runs it.
    Here the "NPU" is the CPU plugin for the decoder and a compile error for the encoder."""
    from flexavatar.runtime import engines

    monkeypatch.setattr(engines, "_openvino_devices", lambda: {"CPU": None, "GPU": "no GPU", "NPU": None})
    real_init = engines.OpenVinoModel.__init__
    compiled: list[tuple[str, str]] = []

    def init(self, core, path, device, config, input_shapes=None):
        if device == "NPU":
            assert input_shapes, "the NPU is given static shapes"
            if Path(path).name.startswith("encoder"):
                raise RuntimeError("Exception from src/plugins/intel_npu: unsupported operation\nmore detail")
            device, config = "CPU", {"INFERENCE_PRECISION_HINT": "f32"}            # the decoder "on the NPU"
        compiled.append((Path(path).name, device, config["INFERENCE_PRECISION_HINT"]))
        real_init(self, core, path, device, config, input_shapes)

    monkeypatch.setattr(engines.OpenVinoModel, "__init__", init)
    # a precision hint meant for the NPU (f16) does not follow the encoder to the CPU: f32 there
    rt = Runtime(bundle, backend="openvino", device="npu", rasterizer="cpu", verify="none", inference_precision="f16")
    with caplog.at_level("WARNING", logger="flexavatar.runtime"):
        avatar = rt.create_avatar(photo)
    assert ("OpenVINO NPU could not compile encoder.fp32.xml (Exception from src/plugins/intel_npu: unsupported "
            "operation); the encoder runs once per avatar: running encoder.fp32.xml on the CPU") in caplog.text
    assert ("encoder.fp32.xml", "CPU", "f32") in compiled
    on_cpu = Runtime(bundle, backend="openvino", device="cpu", rasterizer="cpu", verify="none").create_avatar(photo)
    assert _max_err(avatar.code, on_cpu.code) <= 1e-6


def test_gpu_device_ids_reach_the_provider_or_are_refused(bundle, monkeypatch):
    """device_id N: DirectML / MIGraphX / ROCm take it as device_id, ONNX Runtime's OpenVINO provider as GPU.N;
    a provider that picks its device itself refuses N ≠ 0 rather than running on another GPU; on a CUDA build,
    device "gpu" points at device "cuda"."""
    import onnxruntime as ort

    from flexavatar.runtime import engines

    for provider, want in (("DmlExecutionProvider", {"device_id": "2"}),
                           ("OpenVINOExecutionProvider", {"device_type": "GPU.2"})):
        monkeypatch.setattr(ort, "get_available_providers", lambda p=provider: [p, "CPUExecutionProvider"])
        assert engines.ort_host_provider("gpu", 2) == (provider, want)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CoreMLExecutionProvider", "CPUExecutionProvider"])
    assert engines.ort_host_provider("gpu", 0)[0] == "CoreMLExecutionProvider"
    with pytest.raises(RuntimeArgumentError, match="device_id: is 1 for CoreMLExecutionProvider"):
        engines.ort_host_provider("gpu", 1)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                                 "CPUExecutionProvider"])
    reason = engines.get_engine("onnxruntime").unavailable_reason("gpu")
    assert "use device 'cuda'" in reason and "pip install" not in reason
    # OpenVINO: a second GPU is "GPU.1"; one it does not see is refused by name
    monkeypatch.setattr(engines, "_openvino_devices_present", lambda: frozenset({"CPU", "GPU.0", "GPU.1"}))
    opened = Bundle.open(bundle, verify="none")
    assert engines.OpenVinoBackend(opened, "gpu", engines.EngineOptions(device_id=1)).device_name == "GPU.1"
    assert engines.OpenVinoBackend(opened, "gpu", engines.EngineOptions()).device_name == "GPU"
    with pytest.raises(EngineUnavailableError, match=r"OpenVINO sees no GPU.2 \(it has: \['CPU', 'GPU.0', 'GPU.1'\]"):
        engines.OpenVinoBackend(opened, "gpu", engines.EngineOptions(device_id=2))


def test_a_host_array_provider_device_renders_the_cpu_frames(bundle, runtime_cache, oracle, expressions, monkeypatch):
    """A "gpu" runtime whose provider hands back host arrays, here the CPU provider standing in for DirectML /
    CoreML / ...: the CPU rasterizer draws its frames, and they are the CPU runtime's. describe() names the provider
    and how many decoder nodes it runs."""
    from flexavatar.runtime import engines

    monkeypatch.setitem(engines.ORT_HOST_PROVIDERS, "gpu", (("CPUExecutionProvider", {}),))
    rt = Runtime(bundle, device="gpu", verify="none", batch=2)
    assert (rt.backend, rt.device, rt.rasterizer, rt.array_device) == ("onnxruntime", "gpu", "cpu", "cpu")
    assert "CPUExecutionProvider" in rt.describe() and "static shapes (1 frame a call)" in rt.describe()
    # static shapes: the decoder's frames and the encoder's photos pinned to 1 (batch=2 decodes a frame a call)
    assert [i.shape for i in rt.decoder.session.get_inputs()] == [[1, rt.n_tokens, rt.code_width], [1, 135]]
    assert rt.decoder.static_shapes == {"E": 1} and rt.engine.load(ROLE_ENCODER).static_shapes == {"B": 1}
    avatar, want, _ = oracle
    got = rt.decode(avatar, expressions).numpy()
    for f in FIELDS:
        assert _max_err(getattr(got, f), want[f]) <= GAUSSIAN_TOL, f
    cams = orbit_camera(len(expressions))
    frames = rt.render(avatar, expressions, cams, SIZE, SIZE, output="float")
    cpu = runtime_cache("onnxruntime", "cpu").render(avatar, expressions, cams, SIZE, SIZE, output="float")
    # the static-shape session's Gaussians differ from the dynamic one's in the last bits (1e-6): a pixel at an
    # opacity threshold may flip, so the images are compared with the parity tolerances
    diff = np.abs(frames.astype(np.float64) - cpu)
    assert diff.mean() <= IMAGE_MEAN_TOL and diff.max() <= IMAGE_MAX_TOL, (diff.mean(), diff.max())
    nodes = rt.decoder.nodes
    if nodes is not None:                       # newer onnxruntime versions report placement (1.32 does)
        assert set(nodes) == {"CPUExecutionProvider"} and nodes["CPUExecutionProvider"] > 0


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="OpenVINO is not installed")
def test_openvino_gpu_and_npu_compile_static_shapes(bundle, runtime_cache, oracle, expressions, monkeypatch):
    """On a GPU / NPU plugin the IRs are reshaped before they compile: one frame a decoder call, one photo an encoder
    call (NPU compilers take static shapes only). The "GPU" here is the CPU plugin; its frames are the CPU
    runtime's."""
    from flexavatar.runtime import engines

    monkeypatch.setattr(engines, "_openvino_devices", lambda: {"CPU": None, "GPU": None, "NPU": "no NPU"})
    real_init = engines.OpenVinoModel.__init__

    def init(self, core, path, device, config, input_shapes=None):
        real_init(self, core, path, "CPU" if device == "GPU" else device, {"INFERENCE_PRECISION_HINT": "f32"},
                  input_shapes)

    monkeypatch.setattr(engines.OpenVinoModel, "__init__", init)
    rt = Runtime(bundle, backend="openvino", device="gpu", rasterizer="cpu", verify="none", batch=2)
    assert "static shapes (1 frame a call)" in rt.describe()
    shapes = {p.get_any_name(): p.get_partial_shape() for p in rt.decoder.compiled.inputs}
    assert all(s.is_static for s in shapes.values()) and list(shapes["expressions"].to_shape()) == [1, 135]
    encoder = rt.engine.load(ROLE_ENCODER).compiled
    assert list(encoder.inputs[0].get_partial_shape().to_shape())[0] == 1
    avatar, _, _ = oracle
    cams = orbit_camera(len(expressions))
    want = runtime_cache("openvino", "cpu").render(avatar, expressions, cams, SIZE, SIZE, output="float")
    diff = np.abs(rt.render(avatar, expressions, cams, SIZE, SIZE, output="float").astype(np.float64) - want)
    assert diff.mean() <= IMAGE_MEAN_TOL and diff.max() <= IMAGE_MAX_TOL, (diff.mean(), diff.max())   # see above


def test_openvino_npu_is_a_device_it_names(bundle):
    import openvino as ov
    if "NPU" in {d.split(".")[0] for d in ov.Core().available_devices}:
        pytest.skip("this machine has an NPU: the refusal cannot be shown")
    with pytest.raises(EngineUnavailableError, match="OpenVINO sees no NPU device"):
        Runtime(bundle, backend="openvino", device="npu", verify="none")


def test_an_engine_registered_as_a_function_is_chosen_by_auto(bundle, runtime_cache, oracle, expressions,
                                                            monkeypatch):
    """register_engine takes any callable factory, not only an InferenceBackend class: backend="auto" ranks it
    by its priority and asks a factory that does not say which precisions it runs for none of them."""
    from flexavatar.runtime import engines

    monkeypatch.setattr(engines, "_ENGINES", dict(engines._ENGINES))        # the registry as it was, afterwards
    opened = []

    def plugin(bundle, device, options):
        opened.append((device, options.precision))
        return engines.OrtBackend(bundle, device, options)

    engines.register_engine("test-plugin", plugin, priorities={"cpu": 10_000})
    rt = Runtime(bundle, device="cpu", rasterizer="cpu", verify="none", batch=2)
    assert rt.backend == "test-plugin" and opened == [("cpu", "fp32")]
    avatar, _, _ = oracle
    cams = orbit_camera(len(expressions))
    want = runtime_cache("onnxruntime", "cpu").render(avatar, expressions, cams, SIZE, SIZE, output="float")
    assert np.abs(rt.render(avatar, expressions, cams, SIZE, SIZE, output="float") - want).max() <= 1e-6


def test_fused_decoders_give_the_portable_files_frames(bundle, runtime_cache, model, oracle, expressions):
    """The fused files (ONNX Runtime's CPU provider has their kernels) against PyTorch, and frame for frame against
    the portable files, for the generic decoder and the bundle avatar's specialised one."""
    fused = Runtime(bundle, backend="onnxruntime", device="cpu", rasterizer="cpu", batch=2, fused_decoders=True)
    portable = runtime_cache("onnxruntime", "cpu")
    avatar, want, _ = oracle
    got = fused.decode(avatar, expressions).numpy()
    for f in FIELDS:
        assert _max_err(getattr(got, f), want[f]) <= GAUSSIAN_TOL, f
    cams = orbit_camera(len(expressions))
    for a in (avatar, fused.bundle_avatar()):
        frames = fused.render(a, expressions, cams, SIZE, SIZE, output="float")
        diff = np.abs(frames - portable.render(a, expressions, cams, SIZE, SIZE, output="float"))
        # the same frames up to rounding (2e-7 mean here); a borderline Gaussian may move one pixel by 3.5e-3
        assert diff.mean() <= 1e-5 and diff.max() <= IMAGE_MAX_TOL, (diff.mean(), diff.max())
    assert ROLE_DECODER_AVATAR in fused.engine._models                  # the bundle avatar ran its fused decoder
    assert "SkipLayerNormalization" in {n.op_type for n in onnx.load(bundle / "decoder.fp32.ort.onnx").graph.node}


# ---- GPU (skipped without CUDA) -------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graphs", (False, True))
def test_onnxruntime_cuda_with_the_cuda_rasterizer(cuda_graphs, bundle, model, expressions):
    rt = _ort_cuda_runtime(bundle, cuda_graphs=cuda_graphs, batch=3)
    assert rt.device == "cuda" and rt.decoder.session.get_providers()[0] == "CUDAExecutionProvider"
    avatar = Avatar(np.load(bundle / "avatar_code.npy").transpose(1, 0, 2))
    g = rt.decode(avatar, expressions)
    assert g.means.is_cuda                                              # stays on the device
    want = _reference_gaussians(model, avatar.code, expressions)
    for f in FIELDS:
        assert _max_err(getattr(g, f).cpu().numpy(), want[f]) <= GAUSSIAN_TOL
    for _ in range(2):                                                  # graph capture, then replay
        frames = rt.render(avatar, expressions, orbit_camera(3), SIZE, SIZE, output="float")
        diff = np.abs(frames[..., :3].astype(np.float64) - _reference_render(want, 3))
        assert diff.mean() <= IMAGE_MEAN_TOL and diff.max() <= IMAGE_MAX_TOL
    on_device = rt.render(avatar, expressions, orbit_camera(3), SIZE, SIZE, output="device")   # no host sync
    assert on_device.is_cuda and tuple(on_device.shape) == (3, SIZE, SIZE, 4)
    _assert_same_frames(on_device.cpu().numpy(), frames)


@pytest.mark.gpu
@pytest.mark.parametrize("fused_decoders", (True, False))
def test_onnxruntime_cuda_fused_and_portable_decoders(fused_decoders, bundle, model, expressions):
    """The fused decoders (the default on CUDA) and the portable ones, CUDA graphs, against PyTorch."""
    rt = _ort_cuda_runtime(bundle, fused_decoders=fused_decoders, batch=3)
    assert rt.engine.artifact(ROLE_DECODER).path == ("decoder.fp32.ort.onnx" if fused_decoders else "decoder.fp32.onnx")
    avatar = Avatar(np.load(bundle / "avatar_code.npy").transpose(1, 0, 2))
    want = _reference_gaussians(model, avatar.code, expressions)
    g = rt.decode(avatar, expressions)
    for f in FIELDS:
        assert _max_err(getattr(g, f).cpu().numpy(), want[f]) <= GAUSSIAN_TOL, f
    frames = rt.render(avatar, expressions, orbit_camera(3), SIZE, SIZE, output="float")
    diff = np.abs(frames[..., :3].astype(np.float64) - _reference_render(want, 3))
    assert diff.mean() <= IMAGE_MEAN_TOL and diff.max() <= IMAGE_MAX_TOL


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graphs", (False, True))
def test_check_numerics_on_cuda(cuda_graphs, bundle):
    """flexavatar-verify's path on the GPU: device Gaussians and the CUDA rasterizer, the reference moved there."""
    rt = _ort_cuda_runtime(bundle, cuda_graphs=cuda_graphs)
    report = rt.check_numerics()
    assert [c.name for c in report.checks] == ["encoder", "decoder", "decoder_avatar"]
    assert report.passed and "rasterizer cuda" in report.runtime, report.table()
    assert all(max(c.errors.values()) <= GAUSSIAN_TOL for c in report.checks[1:]), report.table()   # decoders


def _assert_same_frames(got: np.ndarray, want: np.ndarray) -> None:
    """Frames of one render repeated on the GPU: equal up to REPLAY_TOL (float) or one step (uint8)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    assert diff.max() <= (1 if want.dtype == np.uint8 else REPLAY_TOL), f"max |diff| {diff.max():.3g}"
    assert diff.mean() <= REPLAY_TOL, f"mean |diff| {diff.mean():.3g}"


def _ort_cuda_runtime(bundle: Path, **options) -> Runtime:
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider (pip install onnxruntime-gpu)")
    from flexavatar.runtime.gpu import node_by_node_aborts
    if options.get("cuda_graphs") is False and node_by_node_aborts(ort.__version__):
        # the process dies (no test outcome at all) and takes the rest of the run with it
        pytest.skip(f"onnxruntime-gpu {ort.__version__} aborts CUDA sessions that run node by node (CUDA error 800, "
                    "cudaFreeHost in a stream callback: benchmarks/device/README.md); the runtime's default replays "
                    "CUDA graphs")
    return Runtime(bundle, backend="onnxruntime", device="cuda", rasterizer="cuda", **options)


@pytest.mark.gpu
def test_onnxruntime_cuda_encodes_each_photo_like_pytorch(bundle, model, photo, tmp_path):
    """The encoder's output is read back after the encoder ran on its stream (two photos: no stale code)."""
    rt = _ort_cuda_runtime(bundle)
    mirrored = tmp_path / "mirrored.png"
    Image.open(photo).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored)
    codes = []
    for path in (photo, mirrored):
        got = rt.create_avatar(path).code
        assert _max_err(got, _reference_code(model, path)) <= GAUSSIAN_TOL
        codes.append(got)
    assert np.abs(codes[0] - codes[1]).max() > 100 * GAUSSIAN_TOL


@pytest.mark.gpu
def test_cuda_multiview_frames_are_each_cameras_own_frames(bundle, expressions):
    """Multiview on the GPU path (ONNX Runtime CUDA graphs + the CUDA rasterizer): chunks of two frames (Gaussians
    repeated per view on the device) and of one (shared), pipelined, on the host and left on the device."""
    from flexavatar.runtime import stereo_camera
    rt = _ort_cuda_runtime(bundle, batch=2)
    avatar = Avatar(np.load(bundle / "avatar_code.npy").transpose(1, 0, 2))
    eyes = stereo_camera(eye_distance=0.1)
    for output in ("float", "uint8"):
        got = rt.render(avatar, expressions, eyes, SIZE, SIZE, output=output, multiview=True)
        assert got.shape[:2] == (3, 2)
        for v, want in enumerate(_each_view(rt, avatar, expressions, eyes, output=output)):
            _assert_same_frames(np.ascontiguousarray(got[:, v]), want)
    on_device = rt.render(avatar, expressions, eyes, SIZE, SIZE, output="device", multiview=True)
    assert tuple(on_device.shape[:2]) == (3, 2) and on_device.is_cuda
    _assert_same_frames(on_device.cpu().numpy(), rt.render(avatar, expressions, eyes, SIZE, SIZE, output="float",
                                                           multiview=True))


@pytest.mark.gpu
def test_cuda_chunks_are_pipelined_like_sequential_chunks(bundle, model, expressions):
    """batch 1 over 3 frames: without timings each chunk's pixels are handed out once the next chunk is decoding
    (copied out of the graph's buffers, read back asynchronously); with timings the chunks run one after the other."""
    rt = _ort_cuda_runtime(bundle, cuda_graphs=True, batch=1)
    avatar = Avatar(np.load(bundle / "avatar_code.npy").transpose(1, 0, 2))
    cams = orbit_camera(3)
    for output in ("float", "uint8"):
        sequential = rt.render(avatar, expressions, cams, SIZE, SIZE, output=output, timings=StageTimes())
        pipelined = rt.render(avatar, expressions, cams, SIZE, SIZE, output=output)
        assert isinstance(pipelined, np.ndarray) and pipelined.shape == sequential.shape
        _assert_same_frames(pipelined, sequential)
    want = _reference_render(_reference_gaussians(model, avatar.code, expressions), 3)
    diff = np.abs(rt.render(avatar, expressions, cams, SIZE, SIZE, output="float")[..., :3].astype(np.float64) - want)
    assert diff.mean() <= IMAGE_MEAN_TOL and diff.max() <= IMAGE_MAX_TOL


@pytest.mark.gpu
def test_cuda_frames_after_the_first_sort_sync_free_and_outgrown_ones_are_rendered_again(bundle, expressions,
                                                                                         monkeypatch):
    """The rasterizer's one host sync (its intersection count) happens for the first frame only; the frames after
    it sort a capacity (runtime/intersections.py) and equal the exactly sized frames. Frames over their capacity
    are rendered again before they are handed out, pipelined chunks included; device frames are reported."""
    rt = _ort_cuda_runtime(bundle, batch=1)
    avatar, cams = Avatar(np.load(bundle / "avatar_code.npy").transpose(1, 0, 2)), orbit_camera(3)
    budget, capacities = rt.intersections, []
    sized = budget.capacity
    monkeypatch.setattr(budget, "capacity", lambda views: capacities.append(sized(views)) or capacities[-1])
    sync_free = rt.render(avatar, expressions, cams, SIZE, SIZE, output="float")        # pipelined: 3 chunks
    assert capacities[0] == 0 and min(capacities[1:]) >= IntersectionBudget.MIN_SLOTS, capacities
    assert budget.per_view > 0 and budget.rerenders == 0
    monkeypatch.setattr(budget, "capacity", sized)
    budget.sync_free = False
    exact = {output: rt.render(avatar, expressions, cams, SIZE, SIZE, output=output) for output in ("float", "uint8")}
    _assert_same_frames(sync_free, exact["float"])
    monkeypatch.setattr(budget, "capacity", lambda views: 16)                          # every frame outgrows it
    for output, timings in (("float", None), ("float", StageTimes()), ("uint8", None)):
        before = budget.rerenders
        again = rt.render(avatar, expressions, cams, SIZE, SIZE, output=output, timings=timings)
        _assert_same_frames(again, exact[output])
        assert budget.rerenders - before == 3
    with pytest.warns(IncompleteFrameWarning):
        rt.render(avatar, expressions, cams, SIZE, SIZE, output="device")   # chunks 1 and 2 check the ones before
    assert budget.incomplete == 2


@pytest.mark.gpu
def test_cuda_device_frames_make_no_synchronising_torch_call(bundle, expressions):
    """Issue #7: no host sync inside a frame unless the caller asks for pixels. After a runtime's first frame (its
    one exact sort), a frame left on the device makes no synchronising torch call: torch's sync debug mode
    "error" raises on any (.item(), a blocking copy, a value check). The native rasterizer sorts sync-free then
    (its own host wait is in exact mode only, test_cuda_sync_free_sort_gives_the_exact_frames_and_count)."""
    import torch
    rt = _ort_cuda_runtime(bundle, batch=1)
    avatar, cams = Avatar(np.load(bundle / "avatar_code.npy").transpose(1, 0, 2)), orbit_camera(3)
    one = [Camera(cams.cam2world[i], cams.intrinsics) for i in range(3)]
    rt.render(avatar, expressions[:1], one[0], SIZE, SIZE, output="device")     # exact sort; graph captured
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        frame = rt.render(avatar, expressions[1:2], one[1], SIZE, SIZE, output="device")
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert rt.intersections.per_view > 0 and len(rt._unchecked) == 1           # sorted sync-free, count queued
    host = rt.render(avatar, expressions[1:2], one[1], SIZE, SIZE, output="float")
    _assert_same_frames(frame.cpu().numpy(), host)
    assert rt.intersections.incomplete == 0 and not rt._unchecked


@pytest.mark.gpu
def test_cuda_live_loop_queues_without_a_sync_and_gives_the_render_frames(bundle, expressions):
    """render_async on the GPU path: after the first frame, queueing a frame makes no synchronising torch call (the
    pixels' copy is queued too), and each result is the frame render gives (CUDA graphs: each queued frame's
    rasterizer read its Gaussians before the next replay overwrote them). The torch-compile engine's live loop is
    checked frame for frame by bench_runtime.py's test_live_clip_torch_compile."""
    import torch
    rt = _ort_cuda_runtime(bundle, batch=1)
    avatar, cams = Avatar(np.load(bundle / "avatar_code.npy").transpose(1, 0, 2)), orbit_camera(3)
    one = [Camera(cams.cam2world[i], cams.intrinsics) for i in range(3)]
    want = [rt.render(avatar, expressions[i:i + 1], one[i], SIZE, SIZE) for i in range(3)]   # first: exact sort
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        queued = [rt.render_async(avatar, expressions[i:i + 1], one[i], SIZE, SIZE) for i in range(3)]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    for i in (2, 0, 1):
        _assert_same_frames(queued[i].result(), want[i])
    assert rt.intersections.rerenders == 0


@pytest.mark.gpu
def test_onnxruntime_cuda_graphs_from_two_threads(bundle, model, expressions, driving_dir):
    """CUDA graphs with a partial last chunk (batch 2 over 5 frames), the generic and the code-folded decoder,
    rendered from two threads at once: each thread's frames equal its own frames rendered alone."""
    rt = _ort_cuda_runtime(bundle, cuda_graphs=True, batch=2)
    codes = load_expressions(driving_dir / "SEN-10-port_strong_smokey.npz")[:5]
    jobs = {0: (rt.bundle_avatar(), codes), 1: (Avatar(np.load(bundle / "avatar_code.npy").transpose(1, 0, 2)),
                                                 codes[::-1].copy())}
    alone = {t: rt.render(avatar, seq, orbit_camera(5), 64, 64) for t, (avatar, seq) in jobs.items()}
    want = _reference_gaussians(model, jobs[1][0].code, jobs[1][1])
    got = rt.decode(jobs[1][0], jobs[1][1])
    for f in FIELDS:
        assert _max_err(getattr(got, f).cpu().numpy(), want[f]) <= GAUSSIAN_TOL
    _assert_two_threads_render_their_frames(rt, jobs, alone, orbit_camera(5))


def _assert_two_threads_render_their_frames(rt: Runtime, jobs: dict, alone: dict, cameras: Camera) -> None:
    """Threads 0 and 1 render jobs[t] (avatar, expressions) 4 times each at once, at 64²: each render equals
    alone[t] (the thread's frames rendered alone) within one 8-bit step."""
    results: dict[int, list[np.ndarray]] = {0: [], 1: []}
    errors = []
    barrier = threading.Barrier(2)

    def work(t: int) -> None:
        try:
            barrier.wait()
            for _ in range(4):
                results[t].append(rt.render(*jobs[t], cameras, 64, 64))
        except BaseException as e:                       # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in (0, 1)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=300)
    assert not errors, errors
    for t in (0, 1):
        assert len(results[t]) == 4
        for frames in results[t]:
            assert np.abs(frames.astype(int) - alone[t].astype(int)).max() <= 1


@pytest.mark.gpu
def test_compiled_frames_on_cuda_from_two_threads(bundle, model, driving_dir):
    """Compiled frames behind an engine without CUDA graphs of its own (PyTorch eager): the compiled rasterizer
    replays CUDA graphs whose buffers every thread shares, so its frames take the frame lock; two threads at once
    each get their own frames (within one 8-bit step of the frames rendered alone)."""
    try:
        rt = Runtime(bundle, backend="torch", device="cuda", rasterizer="cuda", model=model, batch=2,
                     compiled_frames=True)                                               # moves model to cuda
        codes = load_expressions(driving_dir / "SEN-10-port_strong_smokey.npz")[:5]
        avatar = Avatar(np.load(bundle / "avatar_code.npy").transpose(1, 0, 2))
        jobs = {0: (avatar, codes), 1: (avatar, codes[::-1].copy())}
        alone = {t: rt.render(*job, orbit_camera(5), 64, 64) for t, job in jobs.items()}
        assert rt.compiled_frames and not isinstance(rt._frame_lock, contextlib.nullcontext)
        _assert_two_threads_render_their_frames(rt, jobs, alone, orbit_camera(5))
        assert rt.compiled_frames                        # no fallback to the separate calls on the way
    finally:
        model.to("cpu")                                  # back on the CPU for the other tests


@pytest.mark.gpu
def test_torch_compile_engine_on_cuda(bundle, model, expressions, driving_dir):
    """Inductor + CUDA graphs ("reduce-overhead"), fp16 autocast: the bundle's fp16 numerics target; decoded
    Gaussians are copies (a later replay does not change them); pipelined chunks equal one-by-one frames."""
    try:
        rt = Runtime(bundle, backend="torch-compile", device="cuda", rasterizer="cuda", precision="fp16",
                     model=model, batch=1)                                                # moves model to cuda
        assert rt.decoder.cuda_graphs
        report = rt.check_numerics()
        assert report.passed, report.table()
        avatar = Avatar(np.load(bundle / "avatar_code.npy").transpose(1, 0, 2))
        first = rt.decode(avatar, expressions)
        kept = first.numpy()
        other = load_expressions(driving_dir / "SEN-10-port_strong_smokey.npz")[:3]
        rt.decode(avatar, other)                                                          # replays the graphs
        for f in FIELDS:
            np.testing.assert_array_equal(getattr(first, f).cpu().numpy(), getattr(kept, f))
        # replays of fp16 kernels: equal up to a few fp16 steps at most (another expression: ~0.2 off)
        again = rt.decode(avatar, expressions).numpy()
        for f in FIELDS:
            assert _max_err(getattr(again, f), getattr(kept, f)) <= 2e-3, f
        cams = orbit_camera(3)
        pipelined = rt.render(avatar, expressions, cams, SIZE, SIZE, output="float")
        sequential = rt.render(avatar, expressions, cams, SIZE, SIZE, output="float", timings=StageTimes())
        assert pipelined.shape == sequential.shape == (3, SIZE, SIZE, 4)
        assert _max_err(pipelined, sequential) <= 2e-3
    finally:
        model.to("cpu")                                             # the module's model, for the other tests


@pytest.mark.gpu
def test_compiled_frames_on_cuda(bundle, model, expressions, monkeypatch):
    """The CUDA default with torch-compile: after a runtime's first frame (its sort sized exactly, so the separate
    calls) each chunk is one compiled call, its rasterizer captured in the CUDA graphs, and the rasterizer's Python
    entry no longer runs. Frames: the separate calls' within fp16 replay noise, one by one or queued. Inductor
    skipped no CUDA graph (it only logs a skip, and the frame then runs kernel by kernel)."""
    from torch._dynamo.utils import counters
    skips = counters["inductor"]["cudagraph_skips"]
    try:
        rt = Runtime(bundle, backend="torch-compile", device="cuda", rasterizer="cuda", precision="fp16",
                     model=model)
        separate = Runtime(bundle, backend="torch-compile", device="cuda", rasterizer="cuda", precision="fp16",
                           model=model, compiled_frames=False)
        assert "compiled frames" in rt.describe() and "compiled frames" not in separate.describe()
        avatar = Avatar(np.load(bundle / "avatar_code.npy").transpose(1, 0, 2))
        cams = orbit_camera(len(expressions))
        want = separate.render(avatar, expressions, cams, SIZE, SIZE, output="float")
        rt.render(avatar, expressions[:1], Camera(cams.cam2world[0], cams.intrinsics), SIZE, SIZE)   # sized exactly
        rasterizer_entries, compiled_calls, frames_of = [], [], rt.decoder.frames
        spec = kernels.get_backend("cuda")
        monkeypatch.setitem(kernels.registry._BACKENDS, "cuda",
                            replace(spec, render=lambda request: rasterizer_entries.append(1) or spec.render(request)))
        monkeypatch.setattr(rt.decoder, "frames", lambda *a: compiled_calls.append(1) or frames_of(*a))
        got = rt.render(avatar, expressions, cams, SIZE, SIZE, output="float")
        assert got.shape == want.shape and _max_err(got, want) <= 2e-3
        pending = [rt.render_async(avatar, expressions[i:i + 1], Camera(cams.cam2world[i], cams.intrinsics), SIZE,
                                   SIZE, output="float") for i in range(len(expressions))]
        for i in reversed(range(len(expressions))):
            assert _max_err(pending[i].result(), want[i:i + 1]) <= 2e-3
        assert not rasterizer_entries and rt.intersections.rerenders == 0
        assert len(compiled_calls) == 2 * len(expressions)                # batch 1: a call a frame
        assert counters["inductor"]["cudagraph_skips"] == skips
    finally:
        model.to("cpu")                                             # the module's model, for the other tests


@pytest.mark.gpu
def test_compiled_rasterizer_on_cuda_behind_onnxruntime(bundle, expressions, monkeypatch):
    """compiled_frames=True with ONNX Runtime (CUDA graphs): after the first frame its decoder's graph replays, then
    the compiled rasterizer and pixels replay theirs; the rasterizer's Python entry no longer runs; frames as the
    separate calls' (the same fp32 graphs and kernels: within replay noise), one by one, as a clip, queued; no
    CUDA graph skipped by Inductor."""
    from torch._dynamo.utils import counters
    skips = counters["inductor"]["cudagraph_skips"]
    rt = Runtime(bundle, backend="onnxruntime", device="cuda", rasterizer="cuda", compiled_frames=True)
    separate = Runtime(bundle, backend="onnxruntime", device="cuda", rasterizer="cuda")
    assert "compiled frames" in rt.describe() and "compiled frames" not in separate.describe()
    avatar = rt.bundle_avatar()
    cams = orbit_camera(len(expressions))
    want = separate.render(avatar, expressions, cams, SIZE, SIZE, output="float")
    rt.render(avatar, expressions[:1], Camera(cams.cam2world[0], cams.intrinsics), SIZE, SIZE)       # sized exactly
    entries, spec = [], kernels.get_backend("cuda")
    monkeypatch.setitem(kernels.registry._BACKENDS, "cuda",
                        replace(spec, render=lambda request: entries.append(1) or spec.render(request)))
    assert _max_err(rt.render(avatar, expressions, cams, SIZE, SIZE, output="float"), want) <= REPLAY_TOL
    pending = [rt.render_async(avatar, expressions[i:i + 1], Camera(cams.cam2world[i], cams.intrinsics), SIZE, SIZE,
                               output="float") for i in range(len(expressions))]
    for i in reversed(range(len(expressions))):
        assert _max_err(pending[i].result(), want[i:i + 1]) <= REPLAY_TOL
    assert not entries and rt.intersections.rerenders == 0 and len(rt._rasters) == 1
    assert counters["inductor"]["cudagraph_skips"] == skips


@pytest.mark.gpu
def test_compiled_frames_that_fail_inside_a_cuda_capture_give_way(bundle, expressions, monkeypatch, caplog):
    """The CPU test's fallback (test_compiled_frames_that_fail_give_way_to_the_separate_calls) where it matters: the
    native rasterizer raises while its CUDA graph is being captured (cudagraph trees capture at a function's second
    call). The runtime warns, renders that frame and every later one with the separate calls, and their frames
    are those of a runtime without compiled frames: the failed capture left the stream and the allocator usable."""
    import torch

    from flexavatar.kernels import torch_op
    native_forward, captures = torch_op._cuda_forward, []

    def refuse_capture(*args, **kwargs):
        if torch.cuda.is_current_stream_capturing():
            captures.append(1)
            raise RuntimeError("injected: refused while capturing")
        return native_forward(*args, **kwargs)

    monkeypatch.setattr(torch_op, "_cuda_forward", refuse_capture)
    rt = _ort_cuda_runtime(bundle, compiled_frames=True)
    separate = _ort_cuda_runtime(bundle)
    clip = np.concatenate([expressions, expressions[::-1]])     # frame 0 exact, then warm-up, then the capture
    avatar, cams = rt.bundle_avatar(), orbit_camera(len(clip))
    want = separate.render(avatar, clip, cams, SIZE, SIZE, output="float")
    with caplog.at_level("WARNING", logger="flexavatar.runtime"):
        got = rt.render(avatar, clip, cams, SIZE, SIZE, output="float")
    assert captures == [1] and "compiled frames failed" in caplog.text and not rt.compiled_frames
    assert _max_err(got, want) <= REPLAY_TOL
    assert _max_err(rt.render(avatar, clip, cams, SIZE, SIZE, output="float"), want) <= REPLAY_TOL


@pytest.mark.gpu
def test_torch_cuda_matches_cpu(bundle, model, expressions):
    rt = Runtime(bundle, backend="torch", device="cuda", rasterizer="cuda", model=model)    # moves model to cuda
    avatar = Avatar(np.load(bundle / "avatar_code.npy").transpose(1, 0, 2))
    got = rt.decode(avatar, expressions).numpy()
    want = _reference_gaussians(model.to("cpu"), avatar.code, expressions)   # back on the CPU for the other tests
    for f in FIELDS:
        assert _max_err(getattr(got, f), want[f]) <= GAUSSIAN_TOL


# ---- numerics where the runtime runs (check.npz, Runtime.check_numerics, flexavatar-verify) -----------------

def test_check_set_holds_the_pytorch_outputs(bundle, model):
    """check.npz (hashed like every file) is what the PyTorch model gives for its inputs, recomputed here."""
    b = Bundle.open(bundle)
    assert b.manifest.check.file in b.manifest.files()
    cs = b.check_set()
    assert len(cs.expressions) == b.manifest.check.n_expressions == 3 and cs.features is None
    # image 0 of the export is the --avatar photo: its code is the bundle's avatar code
    np.testing.assert_array_equal(cs.code, b.avatar_code())
    with torch.no_grad():
        code = model.encode(torch.from_numpy(cs.image), torch.from_numpy(cs.cam2world),
                            torch.from_numpy(cs.intrinsics)).tokens.transpose(0, 1).numpy()
    np.testing.assert_allclose(code, cs.code, atol=1e-5, rtol=0)
    want = _reference_gaussians(model, cs.code, cs.expressions)
    for name in FIELDS:
        np.testing.assert_allclose(cs.gaussians[name], want[name], atol=1e-5, rtol=0, err_msg=name)


@pytest.mark.parametrize("engine", ENGINES)
def test_check_numerics_passes_on_every_engine(runtime_cache, engine):
    report = runtime_cache(engine).check_numerics()
    names = [c.name for c in report.checks]
    assert names == ["encoder", "decoder"] + (["decoder_avatar"] if engine != "torch" else [])
    assert report.passed, report.table()
    for check in report.checks:
        assert set(check.errors) == set(FIELDS) | ({"code"} if check.name == "encoder" else set())
        assert max(check.errors.values()) <= GAUSSIAN_TOL          # fp32 engines: the export's tolerance
        assert check.psnr_db >= check.target_db == 60.0
    assert "all checks passed" in report.table()


def test_check_numerics_uses_the_runtime_rasterizer(runtime_cache):
    """The renders compared come from the chosen rasterizer: the reference rasterizer gives the same verdict."""
    for rasterizer in RASTERIZERS:
        report = runtime_cache("onnxruntime", rasterizer).check_numerics()
        assert report.passed and f"rasterizer {rasterizer}" in report.runtime, report.table()


def test_check_numerics_catches_a_wrong_engine(bundle, monkeypatch):
    """A decoder that drifts (a colour offset of 7/255: the PSNR of a rendered frame falls) or gives NaN fails its
    row, and only its row; the PSNR is that of the offset frames, computed independently."""
    rt = Runtime(bundle, backend="onnxruntime", device="cpu", rasterizer="cpu")
    decoder = rt.decoder
    run = decoder.run

    def drifting(feeds):
        out = dict(run(feeds))
        out["sh0"] = out["sh0"] + np.float32(0.1)
        return out
    monkeypatch.setattr(decoder, "run", drifting)
    report = rt.check_numerics()
    rows = {c.name: c for c in report.checks}
    assert not report.passed and "NUMERICS CHECK FAILED" in report.table()
    assert rows["decoder"].finite and not rows["decoder"].passed
    assert rows["decoder_avatar"].passed                  # the specialised decoder is another model: untouched
    assert abs(rows["decoder"].errors["sh0"] - 0.1) < 1e-4
    cs = rt.bundle.check_set()
    shifted = {**cs.gaussians, "sh0": cs.gaussians["sh0"] + np.float32(0.1)}
    w2c = np.repeat(world2cam(cs.cam2world.astype(np.float64)).astype(np.float32), 3, 0)
    ks = np.repeat(pixel_intrinsics(cs.intrinsics, SIZE, SIZE), 3, 0)
    want = min(psnr(a, b) for a, b in zip(rt._rasterize_frames(shifted, w2c, ks, SIZE, SIZE),
                                          rt._rasterize_frames(cs.gaussians, w2c, ks, SIZE, SIZE), strict=True))
    assert rows["decoder"].psnr_db == pytest.approx(want, abs=0.01) and want < 50.0   # the decoder's own ~3e-6 too

    def nan(feeds):
        out = dict(run(feeds))
        out["means"] = np.full_like(out["means"], np.nan)
        return out
    monkeypatch.setattr(decoder, "run", nan)
    rows = {c.name: c for c in rt.check_numerics().checks}
    assert not rows["decoder"].finite and "FAILED (non-finite)" in rows["decoder"].row()


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="OpenVINO is not installed")
def test_openvino_bf16_compute_fails_the_numerics_check(bundle):
    """On CPUs with bf16 (AMX / AVX512-bf16) OpenVINO computes in bf16 when asked (its default there): the
    check measures what that costs and fails it. Elsewhere OpenVINO keeps f32 and the check passes."""
    rt = Runtime(bundle, backend="openvino", device="cpu", inference_precision="bf16")
    report = rt.check_numerics()
    if rt.decoder.inference_precision == "bf16":
        assert not report.passed and all(c.psnr_db < 40.0 for c in report.checks), report.table()
    else:
        assert report.passed, report.table()


def test_openvino_pins_f32_for_both_precisions_on_the_cpu(bundle):
    """What the export checked (f32 compute) is what the CPU runs, fp16 files included; the GPU plugin keeps its
    own choice for fp16 files, the NPU plugin (an f16 device) for both; an explicit inference_precision wins."""
    from flexavatar.runtime.engines import EngineOptions, OpenVinoBackend

    artifact = Bundle.open(bundle, verify="none").artifact("decoder", "onnx")
    fp16 = replace(artifact, precision="fp16")

    def hint(device, art, asked=None):
        backend = OpenVinoBackend.__new__(OpenVinoBackend)
        backend.device, backend.options = device, EngineOptions(inference_precision=asked)
        return backend.config(art).get("INFERENCE_PRECISION_HINT")
    assert hint("cpu", artifact) == hint("cpu", fp16) == hint("gpu", artifact) == "f32"
    assert hint("gpu", fp16) is None and hint("npu", fp16) is None and hint("npu", artifact) is None
    assert hint("cpu", fp16, "bf16") == "bf16" and hint("npu", artifact, "f16") == "f16"


def test_bundle_without_check_set_and_malformed_check_set(bundle, tmp_path):
    copy = _copy(bundle, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    old = json.loads(json.dumps(manifest))
    del old["check"]                                        # a bundle written before check.npz existed
    (copy / "manifest.json").write_text(json.dumps(old))
    rt = Runtime(copy, backend="onnxruntime", device="cpu")
    with pytest.raises(ArtifactNotFoundError, match="no check set.*re-export"):
        rt.check_numerics()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    arrays = dict(np.load(copy / "check.npz"))
    arrays["means"] = arrays["means"][:, :-1]
    with open(copy / "check.npz", "wb") as fh:
        np.savez(fh, **arrays)
    with pytest.raises(BundleHashMismatchError, match="check.npz"):
        Runtime(copy, backend="onnxruntime", device="cpu")
    with pytest.raises(BundleFileError, match=r"means holds float32 \[3, 3404, 3\]; expected float32 \[3, 3405, 3\]"):
        Runtime(copy, backend="onnxruntime", device="cpu", verify="none").check_numerics()
    del arrays["means"]
    with open(copy / "check.npz", "wb") as fh:
        np.savez(fh, **arrays)
    with pytest.raises(BundleFileError, match=r"arrays \['means'\] are missing"):
        Bundle.open(copy, verify="none").check_set()
    (copy / "check.npz").write_bytes(b"not an npz")
    with pytest.raises(BundleFileError, match="not a readable .npz"):
        Bundle.open(copy, verify="none").check_set()


def test_verify_cli(bundle, tmp_path, capsys):
    report = tmp_path / "report.json"
    assert verify_main([str(bundle), "--backend", "onnxruntime", "--device", "cpu", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "all checks passed" in out and "decoder_avatar.fp32.onnx" in out
    written = json.loads(report.read_text())
    assert written["passed"] is True and [c["name"] for c in written["checks"]] == ["encoder", "decoder",
                                                                                     "decoder_avatar"]
    assert all(c["psnr_db"] >= c["target_db"] == 60.0 and max(c["max_abs_error"].values()) <= GAUSSIAN_TOL
               for c in written["checks"])
    copy = _copy(bundle, tmp_path)
    (copy / "check.npz").write_bytes(b"x")
    assert verify_main([str(copy), "--backend", "onnxruntime"]) == 2
    assert "BundleHashMismatchError" in capsys.readouterr().err


def test_check_numerics_on_a_bundle_without_dinov2(features_bundle):
    """The encoder that takes DINOv2 features: check.npz holds the features it was fed."""
    rt = Runtime(features_bundle, backend="onnxruntime", device="cpu")
    assert rt.bundle.check_set().features is not None
    report = rt.check_numerics()
    assert [c.artifact for c in report.checks] == ["encoder_features.fp32.onnx", "decoder.fp32.onnx"]
    assert report.passed and all(max(c.errors.values()) <= GAUSSIAN_TOL for c in report.checks), report.table()


def test_render_cli_verify_first(bundle, driving_dir, tmp_path, capsys, monkeypatch):
    """--verify: the numerics table, then the clip; a failing check renders nothing and exits 1."""
    seq = driving_dir / "EMO-1-shout+laugh.npz"
    args = ["--expressions", str(seq), "--frames", "2", "--size", "32", "--backend", "onnxruntime", "--verify"]
    assert render_main([str(bundle), *args, "-o", str(tmp_path / "ok")]) == 0
    out = capsys.readouterr().out
    assert out.index("all checks passed") < out.index("wrote") and len(list((tmp_path / "ok").iterdir())) == 2
    from flexavatar.runtime import numerics

    real = numerics.check_numerics
    failing = lambda rt: numerics.NumericsReport(                                    # noqa: E731
        "x", "y", tuple(replace(c, psnr_db=1.0) for c in real(rt).checks))
    monkeypatch.setattr(numerics, "check_numerics", failing)
    assert render_main([str(bundle), *args, "-o", str(tmp_path / "no")]) == 1
    assert "NUMERICS CHECK FAILED" in capsys.readouterr().out and not (tmp_path / "no").exists()


def test_cuda_provider_options_per_precision():
    """The CUDA provider's options (no GPU needed to build them): TF32 off, the rasterizer's stream, CUDA graphs as
    asked, cuDNN's HEURISTIC search for fp16 files (the faster kernels measured on an H200), EXHAUSTIVE for fp32."""
    from flexavatar.runtime.gpu import cuda_provider_options

    fp16 = cuda_provider_options(1, 1234, True, "fp16")
    assert fp16["cudnn_conv_algo_search"] == "HEURISTIC" and fp16["enable_cuda_graph"] == "1"
    assert fp16["use_tf32"] == "0" and fp16["user_compute_stream"] == "1234" and fp16["device_id"] == "1"
    fp32 = cuda_provider_options(0, 1234, False, "fp32")
    assert fp32["cudnn_conv_algo_search"] == "EXHAUSTIVE" and fp32["enable_cuda_graph"] == "0"
    assert fp32["use_tf32"] == "0"
