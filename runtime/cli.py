"""``flexavatar-render BUNDLE --avatar PHOTO_OR_CODE --expressions SEQ -o clip.mp4|.gif|frames/``.

``render_to_file`` is the library function behind it (``flexavatar-demo`` calls it too): decode and
rasterize every frame, stream them into the writer, time each stage, report p50 / p95.
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flexavatar.bundle import PRECISIONS

from .avatar import Avatar, check_avatar_path
from .cameras import (DEFAULT_EYE_DISTANCE, Camera, default_camera, demo_intrinsics, orbit_camera, photo_camera,
                      sequence_cameras, stereo_camera)
from .expressions import (RECORD_BYTES, LatestRecords, load_expressions, neutral_expression, read_expression_records,
                          sequence_fps)
from .engines import INFERENCE_PRECISIONS
from .errors import RuntimeArgumentError
from .runtime import MAX_RENDER_SIZE, WHITE, Runtime
from .timing import StageTimes
from .ply import check_ply_path
from .video import STDOUT, check_fps, open_writer, output_kind, straight_rgba

DEFAULT_FPS = 25.0          # the tracked sequences' nominal rate (fixtures/driving/README.md)


@dataclass
class RenderReport:
    output: Path
    frames: int
    width: int
    height: int
    fps: float
    timings: StageTimes
    runtime: str
    sort: str = ""          # the GPU rasterizer's sort sizing (intersections.py), when it sorted on the GPU

    def summary(self) -> str:
        target = "standard output" if str(self.output) == STDOUT else self.output
        sort = f"rasterizer sort: {self.sort}\n" if self.sort else ""
        return (f"wrote {target} ({self.frames} frames, {self.width}x{self.height}, {self.fps:g} fps)\n"
                f"runtime: {self.runtime}\n{sort}" + self.timings.table())


class ProgressBar:
    """A one-line text progress bar on a stream (redrawn at most 10 times a second)."""

    def __init__(self, total: int, stream=sys.stderr, width: int = 30, label: str = "render"):
        self.total, self.stream, self.width, self.label = total, stream, width, label
        self.t0 = self.last = time.perf_counter()
        self.done = 0

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= 0.1 or self.done >= self.total:
            self.last = now
            filled = int(self.width * self.done / max(self.total, 1))
            rate = self.done / max(now - self.t0, 1e-9)
            self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} "
                              f"frames, {rate:.1f} fps")
            self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def render_to_file(runtime: Runtime, avatar: Avatar, expressions: np.ndarray, output: str | Path, *, size: int = 512,
                   camera: Camera | None = None, fps: float = DEFAULT_FPS, apply_head_pose: bool = False,
                   background: Sequence[float] = WHITE, alpha: bool = False, timings: StageTimes | None = None,
                   progress: Callable[[int], None] | None = None, stereo: float | None = None) -> RenderReport:
    """Render ``expressions`` [T, 135] of ``avatar`` into ``output`` (.mp4, .gif or a PNG folder), size² pixels.
    camera: one camera or T (default: the official demo camera). alpha: RGBA PNG frames (straight alpha, for
    compositing; PNG folders only). progress(n) is called after each n frames. stereo: the distance between the
    eyes in metres: each frame is the left and the right eye's image side by side (2·size wide; one decode)."""
    timings = timings if timings is not None else StageTimes()
    camera = camera or default_camera()
    chunks = runtime.iter_render(avatar, expressions, camera if stereo is None else stereo_camera(camera, stereo),
                                 size, size, background, apply_head_pose, "float" if alpha else "uint8", timings,
                                 multiview=stereo is not None)
    return _write(runtime, _side_by_side(chunks, stereo), output, size, fps, background, alpha, timings, progress,
                  stereo)


def render_stream(runtime: Runtime, avatar: Avatar, expressions: Iterable[np.ndarray], output: str | Path, *,
                  size: int = 512, camera: Camera | None = None, fps: float = DEFAULT_FPS,
                  apply_head_pose: bool = False, background: Sequence[float] = WHITE, alpha: bool = False,
                  timings: StageTimes | None = None, progress: Callable[[int], None] | None = None,
                  stereo: float | None = None) -> RenderReport:
    """Render expression codes as they arrive (``expressions``: [1, 135] arrays, e.g. ``read_expression_records``
    of a pipe) into ``output``, each frame written before the next code is read: a live source's frames leave with
    no more delay than their own render. camera: one camera for every frame (default: the demo camera). stereo:
    as ``render_to_file``."""
    timings = timings if timings is not None else StageTimes()
    camera = camera or default_camera()
    if stereo is not None:
        camera = stereo_camera(camera, stereo)
    chunks = (runtime.render(avatar, expression, camera, size, size, background, apply_head_pose,
                             "float" if alpha else "uint8", timings, multiview=stereo is not None)
              for expression in expressions)
    return _write(runtime, _side_by_side(chunks, stereo), output, size, fps, background, alpha, timings, progress,
                  stereo)


def _side_by_side(chunks: Iterable[np.ndarray], stereo: float | None) -> Iterable[np.ndarray]:
    """Stereo chunks [n, 2, H, W, C] → [n, H, 2·W, C]: the left eye's image, then the right one's (the layout of
    side-by-side 3D video); other chunks as they are."""
    if stereo is None:
        return chunks
    return (np.concatenate([frames[:, 0], frames[:, 1]], axis=2) for frames in chunks)


def _write(runtime: Runtime, chunks: Iterable[np.ndarray], output: str | Path, size: int, fps: float,
           background: Sequence[float], alpha: bool, timings: StageTimes,
           progress: Callable[[int], None] | None, stereo: float | None = None) -> RenderReport:
    """Rendered frames (chunks of [n, size, size, C], side by side [n, size, 2·size, C] with stereo) into ``output``
    as they come → the render's report."""
    width = 2 * size if stereo is not None else size
    with open_writer(output, width, size, fps, channels=4 if alpha else 3) as writer:
        for frames in chunks:
            with timings.stage("write", len(frames)):
                writer.write(straight_rgba(frames, background) if alpha else frames)
            if progress is not None:
                progress(len(frames))
    budget = runtime.intersections
    sort = f"sync-free after the first frame; {budget.describe()}" if budget.per_view else ""
    return RenderReport(Path(output), writer.count, width, size, fps, timings, runtime.describe(), sort)


def _tracked_cameras(args, n_frames: int) -> Camera:
    """--camera-tracked: the sequence's cameras, one per frame, and the options they rule out."""
    if args.head_pose:
        raise RuntimeArgumentError("--head-pose", "was given with --camera-tracked",
                                   "one of them: the tracked cameras already show the head's motion")
    if args.focal is not None:
        raise RuntimeArgumentError("--focal", "was given with --camera-tracked", "the tracked intrinsics, or no "
                                   "--camera-tracked")
    cameras = sequence_cameras(args.expressions)
    if len(cameras) != n_frames:
        raise RuntimeArgumentError("--camera-tracked", f"{args.expressions.name} holds {len(cameras)} cameras for "
                                   f"{n_frames} expression codes", "one camera per frame")
    return cameras


def parse_device(text: str) -> tuple[str, int]:
    """--device: "cuda:N" / "gpu:N" → (name, N); any other name → (name, 0) (the runtime checks the name)."""
    name, sep, index = text.partition(":")
    if not sep:
        return text, 0
    if name not in ("cuda", "gpu") or not index.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected cpu, cuda, cuda:N, gpu, gpu:N (N = 0, 1, ...), npu "
                                         "or auto")
    return name, int(index)


def parse_colour(text: str) -> tuple[float, float, float]:
    """--background: "R,G,B" in [0, 1] or "#RRGGBB" → RGB floats (else argparse reports the expected forms)."""
    value = text.strip()
    try:
        if value.startswith("#") and len(value) == 7:
            rgb = tuple(int(value[i:i + 2], 16) / 255 for i in (1, 3, 5))
        else:
            rgb = tuple(float(v) for v in value.split(","))
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or not all(0 <= v <= 1 for v in rgb):
        raise argparse.ArgumentTypeError(f"{text!r}: expected R,G,B in [0, 1] (e.g. 0,1,0) or #RRGGBB")
    return rgb


def resolve_avatar(runtime: Runtime, avatar: str | None, timings: StageTimes, say=sys.stdout) -> Avatar:
    """--avatar: a photo (encoded now), an in-the-wild example .npz (its crop encoded with its own camera), an
    avatar code .npy, or nothing (the bundle's own avatar)."""
    if avatar is None:
        if runtime.manifest.avatar is None:
            from .errors import RuntimeArgumentError
            raise RuntimeArgumentError("--avatar", "is missing and the bundle holds no avatar code",
                                       "a photo (PNG/JPEG, square, on white) or an avatar code .npy")
        return runtime.bundle_avatar()
    path = Path(avatar)
    if path.suffix.lower() == ".npy" and _is_code_file(path):
        return runtime.load_avatar(path)
    camera = None
    if path.suffix.lower() == ".npz":
        camera = photo_camera(path)
        print(f"avatar: {path.name}'s crop, encoded with its own camera (cam2world, intrinsics)", file=say)
        with np.load(path, allow_pickle=False) as data:
            if "matted" in data.files and not bool(data["matted"]):
                print(f"note: {path.name}'s crop is not matted (its background stays); the model was trained on "
                      "photos matted onto white, so expect its background in the avatar", file=say)
    t0 = time.perf_counter()
    result = runtime.create_avatar(path, camera=camera)
    timings.add_once("encode", (time.perf_counter() - t0) * 1e3)
    return result


def _is_code_file(path: Path) -> bool:
    """An .npy holding an avatar code ((R², 1, D) or (R², D)) rather than a photo ([S, S, 3])."""
    try:
        shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
    except (OSError, ValueError):
        return True                               # let Avatar.load report it
    return not (len(shape) == 3 and shape[2] in (3, 4) and shape[0] == shape[1])


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """The options that choose how a bundle runs (``open_runtime``), shared by flexavatar-render and -verify."""
    p.add_argument("--backend", default="auto", help="onnxruntime, openvino, torch, torch-compile or auto (default)")
    p.add_argument("--device", default="auto", type=parse_device,
                   help="cpu, cuda, cuda:N (the N-th CUDA device), gpu / gpu:N (a GPU without CUDA: OpenVINO's "
                        "Intel GPU, or ONNX Runtime's DirectML, MIGraphX, CoreML, ... provider), npu (OpenVINO's NPU, "
                        "or ONNX Runtime's QNN, VitisAI, CoreML provider) or auto (default: CUDA, else the CPU)")
    p.add_argument("--rasterizer", default="auto", help="cpu, cuda, triton, reference or auto (default)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="which of the bundle's files run (default fp32); int8: the int8 decoders (exported with "
                        "--precision ...,int8), on the CPU with onnxruntime")
    p.add_argument("--inference-precision", choices=INFERENCE_PRECISIONS,
                   help="OpenVINO only: its compute precision (default f32 on the CPU; the GPU plugin's own choice "
                        "for fp16 files)")
    p.add_argument("--checkpoint", type=Path,
                   help="with --backend torch / torch-compile: the checkpoint the bundle was exported from")
    p.add_argument("--template", type=Path, help="with --backend torch / torch-compile: its gghead_template.obj")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="ONNX Runtime CUDA: replay the bundle's graphs as CUDA graphs (default: on there; "
                        "--no-cuda-graphs runs them node by node, which onnxruntime-gpu 1.31 aborts at random)")
    p.add_argument("--fused-decoders", action=argparse.BooleanOptionalAction, default=None,
                   help="ONNX Runtime: run the bundle's decoders with ONNX Runtime's fused kernels when it has them "
                        "(export --targets ...,onnx-ort; default: on CUDA; --no-fused-decoders: the portable files)")


def open_runtime(args: argparse.Namespace, **extra) -> Runtime:
    device, device_id = args.device
    return Runtime(args.bundle, backend=args.backend, device=device, device_id=device_id, rasterizer=args.rasterizer,
                   precision=args.precision, inference_precision=args.inference_precision,
                   cuda_graphs=args.cuda_graphs, fused_decoders=args.fused_decoders, checkpoint=args.checkpoint,
                   template=args.template, **extra)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flexavatar-render",
        description="Render an avatar of a flexavatar bundle driven by an expression sequence into a video, "
                    "GIF or PNG frames, and print the latency of each stage.")
    p.add_argument("bundle", type=Path, help="bundle folder written by flexavatar-export")
    p.add_argument("--avatar", help="photo to encode (square, on white, the bundle's image size), an in-the-wild "
                   "example .npz (its crop 'image', encoded with its own camera), or an avatar code .npy (official "
                   "(R², 1, D) layout); default: the bundle's own avatar (export --avatar)")
    p.add_argument("--expressions", required=True, type=Path, metavar="SEQ",
                   help=".npy [T, 135] or .npz with expression_codes (e.g. ../shared/fixtures/driving/*.npz), or - "
                   f"to render codes as they arrive on standard input ({RECORD_BYTES} bytes a frame: 135 "
                   "little-endian float32, e.g. from a tracker)")
    p.add_argument("--latest", action="store_true",
                   help="with --expressions -: render the newest code each time, skipping the codes that arrived "
                   "while a frame rendered (a live source faster than the renderer then lags by one frame, not by a "
                   "growing queue)")
    p.add_argument("-o", "--output", required=True, type=Path,
                   help="clip.mp4, clip.gif, a folder for PNG frames, or - for raw rgb24 (rgba with --alpha) frames "
                   "on standard output (messages then go to stderr)")
    p.add_argument("--size", type=int, default=512, help="render width = height in pixels (default 512)")
    views = p.add_mutually_exclusive_group()
    views.add_argument("--camera-orbit", action="store_true", help="orbit the camera once over the clip (default: "
                       "the official demo's frontal camera)")
    views.add_argument("--camera-tracked", action="store_true", help="the sequence's tracked camera of each frame "
                       "(.npz cam2world + intrinsics): the head as the tracked video saw it, head motion included")
    p.add_argument("--focal", type=float, help="normalised focal length fx = fy (pixels / image size; default "
                   "1500/512 ≈ 2.93, the official demo camera)")
    p.add_argument("--head-pose", action="store_true", help="apply the rigid head pose of each expression code, as "
                   "the official GUI does")
    p.add_argument("--stereo", action="store_true",
                   help="side-by-side stereo for VR players and 3D displays: the left and the right eye's image in "
                   "one frame twice as wide, the eyes --eye-distance apart along the camera's x axis; each code is "
                   "decoded once for both")
    p.add_argument("--eye-distance", type=float, default=DEFAULT_EYE_DISTANCE, metavar="METRES",
                   help=f"with --stereo: metres between the eyes (default {DEFAULT_EYE_DISTANCE})")
    p.add_argument("--background", type=parse_colour, default=WHITE, metavar="COLOUR",
                   help="background colour: R,G,B in [0, 1] or #RRGGBB (default white, as the model was trained)")
    p.add_argument("--alpha", action="store_true", help="RGBA with straight alpha, for compositing (a PNG frames "
                   "folder, or - for raw rgba frames)")
    p.add_argument("--frames", type=int, help="render only the first N frames")
    p.add_argument("--fps", type=float, help="frame rate of the clip (default: the sequence's, else 25)")
    add_engine_arguments(p)
    p.add_argument("--batch", type=int, default=1, help="frames per decoder call (default 1)")
    p.add_argument("--save-avatar", type=Path, metavar="CODE.npy", help="also save the avatar code (official layout)")
    p.add_argument("--save-ply", type=Path, metavar="FRAME.ply", help="also save the first frame's Gaussians as a "
                   "3D Gaussian Splatting PLY (splat viewers and editors read it)")
    p.add_argument("--verify", action="store_true", help="first run flexavatar-verify's numerics check on this "
                   "engine (the bundle's check.npz vs PyTorch); render only when it passes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from flexavatar.errors import FlexAvatarError, command_failed
    say = sys.stderr if str(args.output) == STDOUT else sys.stdout      # stdout may carry the frames
    try:
        # the cheap checks first: a wrong output suffix should not wait for a bundle's hashes and an encoder run
        if not (math.isfinite(args.eye_distance) and 0 <= args.eye_distance <= 1):
            raise RuntimeArgumentError("--eye-distance", f"is {args.eye_distance}", "metres between the eyes, 0 to 1 "
                                       f"(e.g. {DEFAULT_EYE_DISTANCE})")
        output_kind(args.output, args.size * (2 if args.stereo else 1), args.size, channels=4 if args.alpha else 3)
        if args.save_ply is not None:
            check_ply_path(args.save_ply)
        if args.save_avatar is not None:
            check_avatar_path(args.save_avatar)
        if not 1 <= args.size <= MAX_RENDER_SIZE:
            raise RuntimeArgumentError("--size", f"is {args.size}", f"an integer in [1, {MAX_RENDER_SIZE}]")
        if args.frames is not None and args.frames < 1:
            raise RuntimeArgumentError("--frames", f"is {args.frames}", "a number of frames ≥ 1")
        streaming = str(args.expressions) == STDOUT          # "-": codes as they arrive on standard input
        records = None                                        # --latest: the stream's reader, for its counts
        if args.latest and not streaming:
            raise RuntimeArgumentError("--latest", f"was given with --expressions {args.expressions}",
                                       "--expressions - (codes streamed on standard input): a file's codes are all "
                                       "there, none arrives late")
        if streaming:
            _check_stream_options(args)
            if args.latest:
                expressions = records = LatestRecords(sys.stdin.buffer)
            else:
                expressions = read_expression_records(sys.stdin.buffer)
            if args.frames is not None:
                expressions = itertools.islice(expressions, args.frames)
            fps = check_fps(args.fps if args.fps is not None else DEFAULT_FPS)
        else:
            expressions = load_expressions(args.expressions)
            fps = check_fps(args.fps if args.fps is not None else sequence_fps(args.expressions, DEFAULT_FPS))
        tracked = _tracked_cameras(args, len(expressions)) if args.camera_tracked else None
        runtime = open_runtime(args, batch=args.batch)
        print(f"runtime: {runtime.describe()}", file=say, flush=True)
        if args.verify:
            numerics = runtime.check_numerics()
            print(numerics.table(), file=say, flush=True)
            if not numerics.passed:
                print("flexavatar-render: the numerics check failed on this engine; nothing rendered (see above; "
                      "another --backend, --precision or --inference-precision may pass)", file=sys.stderr)
                return 1
        if args.frames is not None and not streaming:
            expressions = expressions[:args.frames]
        timings = StageTimes()
        avatar = resolve_avatar(runtime, args.avatar, timings, say)
        if args.save_avatar is not None:
            avatar.save(args.save_avatar)
            print(f"saved avatar code {args.save_avatar}", file=say)
        if args.save_ply is not None:
            first = runtime.decode(avatar, expressions[:1], apply_head_pose=args.head_pose)
            first.save_ply(args.save_ply, comment=f"flexavatar-render: frame 0 of {args.expressions.name}")
            print(f"saved the first frame's {first.n_gaussians} Gaussians {args.save_ply}", file=say)
        if streaming:
            camera = default_camera()
        else:
            camera = orbit_camera(len(expressions)) if args.camera_orbit else default_camera()
            if tracked is not None:
                camera = Camera(tracked.cam2world[:len(expressions)], tracked.intrinsics[:len(expressions)])
        if args.focal is not None:
            camera = Camera(camera.cam2world, demo_intrinsics(focal=args.focal))
        if runtime.backend == "torch-compile":   # compiled on its first call: not inside the latency figures
            print("compiling the decoder (torch.compile; tens of seconds) ...", file=say, flush=True)
            runtime.decode(avatar, neutral_expression(args.batch) if streaming else expressions[:args.batch])
        options = dict(size=args.size, camera=camera, fps=fps, apply_head_pose=args.head_pose,
                       background=args.background, alpha=args.alpha, timings=timings,
                       stereo=args.eye_distance if args.stereo else None)
        if streaming:                            # no length: no progress bar
            report = render_stream(runtime, avatar, expressions, args.output, **options)
        else:
            bar = None if args.no_progress else ProgressBar(len(expressions))
            try:
                report = render_to_file(runtime, avatar, expressions, args.output,
                                        progress=bar.update if bar else None, **options)
            finally:
                if bar is not None:
                    bar.close()
    except (FlexAvatarError, KeyboardInterrupt) as e:
        return command_failed("flexavatar-render", e)
    except BrokenPipeError:          # -o -: the reader (ffmpeg, head, ...) closed the pipe before the last frame
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # no second error when Python flushes stdout
        print("flexavatar-render: standard output was closed before the last frame", file=sys.stderr)
        return 1
    print(report.summary(), file=say)
    if records is not None:
        print(f"--latest: rendered the newest of {records.received} streamed codes each time; {records.skipped} "
              "arrived while a frame rendered and were skipped", file=say)
    return 0


def _check_stream_options(args) -> None:
    """--expressions -: the options that need the whole sequence up front are refused, by name."""
    for flag, given in (("--camera-orbit", args.camera_orbit), ("--camera-tracked", args.camera_tracked),
                        ("--save-ply", args.save_ply is not None)):
        if given:
            raise RuntimeArgumentError(flag, "was given with --expressions - (codes streamed on standard input)",
                                       "an expressions file (.npy / .npz): a stream has no length and no cameras, "
                                       "and its first code is not known before rendering starts")


def build_verify_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flexavatar-verify",
        description="Check a bundle where it runs: every file's sha256, then the bundle's check set (check.npz, "
                    "PyTorch fp32 outputs recorded at export) through the chosen engine, precision, device and "
                    "rasterizer: max abs error per output and the PSNR of rendered frames against a target per "
                    "precision. Exit status 0: all checks passed; 1: a check failed; 2: an error.")
    p.add_argument("bundle", type=Path, help="bundle folder written by flexavatar-export")
    add_engine_arguments(p)
    p.add_argument("--json", type=Path, metavar="REPORT.json", help="also write the report as JSON")
    return p


def verify_main(argv: list[str] | None = None) -> int:
    args = build_verify_parser().parse_args(argv)
    from flexavatar.errors import FlexAvatarError, command_failed
    try:
        report = open_runtime(args).check_numerics()
    except (FlexAvatarError, KeyboardInterrupt) as e:
        return command_failed("flexavatar-verify", e)
    print(report.table())
    if args.json is not None:
        import json

        from flexavatar.files import atomic_open
        with atomic_open(args.json, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
