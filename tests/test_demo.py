"""`flexavatar-demo`, the README's first command: the whole pipeline on the embedded small random-weight model
(export with int8 decoders → render a clip → the whole frame on every engine here), run end to end at a small size."""
from __future__ import annotations

import contextlib
import importlib.util
import io

import numpy as np
import pytest
from PIL import Image

from flexavatar.bundle import Bundle
from flexavatar.demo import WIDE_FOCAL, main
from flexavatar.runtime import Avatar, Camera, Runtime, orbit_camera

FRAMES, SIZE = 6, 64


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        rc = main(["-o", str(out), "--frames", str(FRAMES), "--size", str(SIZE)])
    return rc, text.getvalue(), out


def test_demo_runs_and_says_its_model_is_random(demo):
    rc, text, _ = demo
    assert rc == 0, text
    assert "SMALL RANDOM-WEIGHT MODEL" in text and "Random weights: the clip shows a random cloud" in text


def test_demo_bundle_is_checked_and_has_int8_decoders(demo):
    _, _, out = demo
    m = Bundle.open(out / "bundle").manifest              # every file's hash checked
    names = {a.name for a in m.artifacts}
    assert {"encoder.fp32.onnx", "decoder.fp32.onnx", "decoder.int8.onnx"} <= names
    assert all(a.parity.passed for a in m.artifacts)


def test_demo_table_rows_pass_flexavatar_verify(demo):
    _, text, _ = demo
    rows = [line for line in text.split("== 3.")[1].splitlines() if " + cpu " in line]
    engines = [r.split(" + ")[0] for r in rows]
    assert engines[0] == "onnxruntime" and engines[-1] == "onnxruntime int8"
    assert all(r.rstrip().endswith(" ok") for r in rows), rows
    # the int8 row: lossy (not identical to the fp32 frames), within its 30 dB target
    assert float(rows[-1].split(" dB ")[0].split()[-1]) >= 30


def test_demo_clip_and_contact_sheet_are_the_runtimes_frames(demo):
    _, _, out = demo
    clip = out / "flexavatar_demo.mp4"
    if importlib.util.find_spec("imageio_ffmpeg") is not None:
        import imageio_ffmpeg
        reader = imageio_ffmpeg.read_frames(str(clip))
        assert tuple(next(reader)["size"]) == (SIZE, SIZE)
        assert sum(1 for _ in reader) == FRAMES
    else:
        with Image.open(out / "flexavatar_demo.gif") as gif:
            assert gif.n_frames == FRAMES and gif.size == (SIZE, SIZE)
    # the contact sheet's first tile: the saved avatar's first frame, rendered again from the files the demo wrote
    sheet = np.asarray(Image.open(out / "flexavatar_demo.png").convert("RGB"))
    assert sheet.shape == (2 * SIZE, 4 * SIZE, 3)                     # 6 frames, 4 a row
    expressions = np.load(out / "expressions.npy")
    k = np.array([[WIDE_FOCAL, 0, 0.5], [0, WIDE_FOCAL, 0.5], [0, 0, 1]], np.float32)
    cams = orbit_camera(FRAMES, intrinsics=k)
    frame = Runtime(out / "bundle").render(Avatar.load(out / "avatar.npy"), expressions[:1],
                                           Camera(cams.cam2world[:1], cams.intrinsics), SIZE, SIZE)[0]
    assert np.abs(sheet[:SIZE, :SIZE].astype(int) - frame.astype(int)).max() <= 1
    assert (frame < 250).any()                                        # something was drawn, not a white image
