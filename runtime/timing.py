"""Per-stage latency of a render: collected per frame, summarised as p50 / p95."""
from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np


class StageTimes:
    """``with times.stage("decode", frames=4, sync=backend.synchronize): ...`` records the elapsed time per
    frame (elapsed / frames, once per frame). ``sync`` waits for device work first, so GPU stages are
    measured, not just enqueued — pass it only when timings are wanted (it is a host sync)."""

    def __init__(self) -> None:
        self.ms: dict[str, list[float]] = {}
        self.once: set[str] = set()

    @contextmanager
    def stage(self, name: str, frames: int = 1, sync: Callable[[], None] | None = None):
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        yield
        if sync is not None:
            sync()
        per_frame = (time.perf_counter() - t0) * 1e3 / max(frames, 1)
        self.ms.setdefault(name, []).extend([per_frame] * max(frames, 1))

    def add_once(self, name: str, ms: float) -> None:
        """A one-off stage (e.g. encoding the photo): listed, but not part of the whole frame."""
        self.ms.setdefault(name, []).append(ms)
        self.once.add(name)

    def percentile(self, name: str, q: float) -> float:
        return float(np.percentile(np.asarray(self.ms[name]), q))

    def whole_frame(self) -> np.ndarray | None:
        """Per-frame sum of the per-frame stages (None when they cover different frame counts)."""
        stages = [np.asarray(v) for k, v in self.ms.items() if k not in self.once]
        if not stages or len({a.size for a in stages}) != 1:
            return None
        return np.sum(stages, axis=0)

    def table(self, title: str = "latency per frame") -> str:
        """One row per stage (count, p50, p95, mean in ms), then the whole frame."""
        lines = [f"{title:<24} {'count':>6} {'p50 ms':>9} {'p95 ms':>9} {'mean ms':>9}"]
        rows = list(self.ms.items())
        total = self.whole_frame()
        if total is not None and len(rows) - len(self.once) > 1:
            rows.append(("whole frame", total))
        for name, values in rows:
            a = np.asarray(values)
            label = f"{name} (once)" if name in self.once else name
            lines.append(f"  {label:<22} {a.size:>6} {np.percentile(a, 50):>9.2f} {np.percentile(a, 95):>9.2f} "
                         f"{a.mean():>9.2f}")
        return "\n".join(lines)
