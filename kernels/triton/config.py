"""Launch sizes. The interpreter (TRITON_INTERPRET=1) pays per operation rather than per element,
so it gets few, wide programs; a GPU gets sizes that keep each block in registers."""
import os

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"


def _knob(name: str, default: int) -> int:
    # FLEXAVATAR_TRITON_<NAME> overrides a size, for tuning sweeps on a new GPU.
    return int(os.environ.get(f"FLEXAVATAR_TRITON_{name}", default))


PROJECT_BLOCK = _knob("PROJECT_BLOCK", 1024 if INTERPRETING else 128)   # (view, Gaussian) lanes per program
EMIT_BLOCK = _knob("EMIT_BLOCK", 1024 if INTERPRETING else 128)         # Gaussians per key-emission program
BLEND_BATCH = _knob("BLEND_BATCH", 256 if INTERPRETING else 16)         # Gaussians per blending step
BLEND_WARPS = _knob("BLEND_WARPS", 4)                                   # warps per tile program
