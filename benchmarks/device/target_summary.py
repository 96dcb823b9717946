"""Issue #7's target against a GPU run's benchmark records: every CUDA whole-frame case as ms a frame and fps (p50),
the cases that render one frame at a time first, each marked against 2.0 ms (500 fps), and each one's ratio to the
PyTorch eager fp32 pipeline (target ≥ 3×) of the same record, or where that record has none (the C++ runtime's,
the other stages'), the fastest eager fp32 of the records given, marked ``*``.

    python benchmarks/device/target_summary.py benchmarks/history/<record>.json [...]

"One frame at a time": one frame a call (``frames_per_call`` 1), or the clip modes that make one call a frame
(``-clip-live*``: a live loop, pixels on the host; ``-clip-device*``: frames left on the GPU). The other rows (a
clip in one call, batches of frames) are throughput, listed after them. Prints nothing but the table; exits 0.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

TARGET_MS = 2.0           # 500 fps
TARGET_EAGER_RATIO = 3.0
EAGER_BACKEND = "torch-eager+cuda"
ONE_FRAME_CLIP_MODES = ("-clip-live", "-clip-device")


@dataclass(frozen=True)
class Row:
    name: str
    backend: str
    dtype: str
    ms_per_frame: float
    one_frame_at_a_time: bool
    gpu: str
    record: str

    @property
    def fps(self) -> float:
        return 1000.0 / self.ms_per_frame


def rows(paths: list[Path]) -> list[Row]:
    """The CUDA whole-frame cases of the records, p50 per frame."""
    out = []
    for path in paths:
        record = json.loads(path.read_text())
        gpu = ((record.get("machine") or {}).get("gpu") or {}).get("name") or "unknown GPU"
        for case in record.get("cases", []):
            latency = case.get("latency_ms") or {}
            frames = case.get("frames_per_call") or 1
            if case.get("stage") != "whole_frame" or case.get("device") != "cuda" or "p50" not in latency:
                continue
            backend = case.get("backend", "")
            one = frames == 1 or any(mode in backend for mode in ONE_FRAME_CLIP_MODES)
            out.append(Row(case.get("name", backend), backend, case.get("dtype", ""), latency["p50"] / frames, one,
                           gpu, path.name))
    return out


def table(found: list[Row]) -> str:
    if not found:
        return "no CUDA whole-frame cases in these records"
    eager: dict[str, float] = {}                  # record → its eager fp32 ms a frame
    for r in found:
        if r.backend == EAGER_BACKEND and r.dtype == "fp32":
            eager[r.record] = min(r.ms_per_frame, eager.get(r.record, float("inf")))
    fallback = min(eager.values()) if eager else None
    lines = [f"issue #7 target: ≤ {TARGET_MS} ms a frame ({1000 / TARGET_MS:.0f} fps) one frame at a time, "
             f"≥ {TARGET_EAGER_RATIO:.0f}× PyTorch eager fp32 of the same run"
             + ("" if eager else " (no eager fp32 case in these records)"),
             f"GPU: {', '.join(sorted({r.gpu for r in found}))}"]
    for title, one in (("one frame at a time", True), ("clips in one call and batches (throughput)", False)):
        group = sorted((r for r in found if r.one_frame_at_a_time == one), key=lambda r: r.ms_per_frame)
        if not group:
            continue
        lines.append(f"-- {title}")
        for r in group:
            mark = ("MEETS" if r.ms_per_frame <= TARGET_MS else "above") if one else "     "
            base = eager.get(r.record, fallback)
            ratio = (f"{base / r.ms_per_frame:5.2f}×{' ' if r.record in eager else '*'} eager" if base else "")
            lines.append(f"{mark:5s} {r.ms_per_frame:7.3f} ms {r.fps:6.0f} fps  {ratio}  {r.name}  [{r.record}]")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    print(table(rows([Path(a) for a in argv])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
