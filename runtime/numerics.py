"""Check a ``Runtime``'s numbers where it runs: the bundle's check set (``check.npz``) through this engine,
precision and device, against the PyTorch fp32 outputs recorded at export (``Runtime.check_numerics``,
``flexavatar-verify``).

The export already checks every file on its own machine (ONNX Runtime / OpenVINO on the CPU). This check covers
what only the deployment machine decides: the CUDA provider's kernels (TF32 was one such surprise), OpenVINO's
inference precision on CPUs with bf16 or AMX, another plugin or library version. Each graph the runtime would use
runs on the recorded inputs; its outputs are compared with the recorded ones (max abs error per output), and
both sets of Gaussians are rendered with the runtime's own rasterizer at the recorded camera, so the PSNR
measures the engine alone. A check passes when every output is finite and every frame reaches
``PSNR_TARGET_DB`` of the artifact's precision.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from flexavatar.bundle import (PSNR_TARGET_DB, ROLE_DECODER, ROLE_DECODER_AVATAR, ROLE_ENCODER, ROLE_ENCODER_FEATURES,
                               CheckSet)
from flexavatar.images import psnr
from flexavatar.kernels.arrays import to_numpy

from .avatar import Avatar
from .cameras import Camera, pixel_intrinsics, world2cam


@dataclass(frozen=True)
class GraphCheck:
    """One graph's result. errors: max abs error per output vs PyTorch; psnr_db: the worst frame's rendered PSNR
    (inf when identical)."""
    name: str                       # "encoder", "decoder", "decoder_avatar"
    artifact: str                   # what ran, e.g. "decoder.fp16.onnx"
    errors: dict[str, float]
    psnr_db: float
    target_db: float

    @property
    def finite(self) -> bool:
        return all(math.isfinite(e) for e in self.errors.values())

    @property
    def passed(self) -> bool:
        return self.finite and self.psnr_db >= self.target_db

    def row(self) -> str:
        worst = max(self.errors, key=lambda k: self.errors[k] if math.isfinite(self.errors[k]) else math.inf)
        psnr = "identical" if self.psnr_db == math.inf else f"{self.psnr_db:.1f} dB"
        verdict = "ok" if self.passed else ("FAILED (non-finite)" if not self.finite else "FAILED")
        return (f"  {self.name:<15} {self.artifact:<30} {self.errors[worst]:>10.2e} {worst:<10} {psnr:>10}  "
                f"≥ {self.target_db:g} dB  {verdict}")


@dataclass(frozen=True)
class NumericsReport:
    runtime: str                    # Runtime.describe()
    reference: str                  # the check set's description (manifest.check)
    checks: tuple[GraphCheck, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict:
        """JSON-ready (flexavatar-verify --json); an infinite PSNR (identical renders) is written as null."""
        def finite(x: float) -> float | None:
            return x if math.isfinite(x) else None
        return {"runtime": self.runtime, "reference": self.reference, "passed": self.passed,
                "checks": [{"name": c.name, "artifact": c.artifact, "passed": c.passed, "target_db": c.target_db,
                            "psnr_db": finite(c.psnr_db), "max_abs_error": {k: finite(v) for k, v in c.errors.items()}}
                           for c in self.checks]}

    def table(self) -> str:
        head = (f"numerics on {self.runtime}\nreference: {self.reference}\n"
                f"  {'graph':<15} {'file':<30} {'max |err|':>10} {'(output)':<10} {'PSNR':>10}  target    result")
        return "\n".join([head, *(c.row() for c in self.checks),
                          "all checks passed" if self.passed else "NUMERICS CHECK FAILED"])


def check_numerics(rt) -> NumericsReport:
    """Run the bundle's check set through ``rt`` (a ``Runtime``): its encoder when it has one for this engine, its
    generic decoder, and the decoder specialised to the bundle's avatar when it has that (see the module doc)."""
    cs: CheckSet = rt.bundle.check_set()
    size = rt.manifest.conventions.image_size
    viewmats = np.repeat(world2cam(cs.cam2world.astype(np.float64)).astype(np.float32), len(cs.expressions), 0)
    ks = np.repeat(pixel_intrinsics(cs.intrinsics, size, size), len(cs.expressions), 0)
    reference_frames: list[np.ndarray] = []

    def judge(name: str, role: str, got: dict, want: dict) -> GraphCheck:
        errors = {k: _max_abs_error(to_numpy(got[k]), want[k]) for k in want}
        worst = math.inf
        if all(math.isfinite(e) for e in errors.values()):
            frames = rt._rasterize_frames(got, viewmats, ks, size, size)
            if not reference_frames:     # the reference's arrays moved to where the engine's live (CUDA or host)
                reference_frames.append(rt._rasterize_frames(cs.gaussians, viewmats, ks, size, size,
                                                             like=got["means"]))
            worst = min(psnr(f, r) for f, r in zip(frames, reference_frames[0], strict=True))
        what = rt.engine.artifact(role).name if rt.engine.format else f"{role} (PyTorch)"
        return GraphCheck(name, what, errors, worst, PSNR_TARGET_DB[rt.precision])

    checks = []
    encoder_role = _encoder_role(rt, cs)
    if encoder_role is not None:
        avatar = rt.create_avatar(np.ascontiguousarray(cs.image[0].transpose(1, 2, 0)),
                                  Camera(cs.cam2world[0], cs.intrinsics[0]),
                                  features=None if cs.features is None else cs.features[0])
        code_error = _max_abs_error(avatar.code, cs.code)
        # the encoder's code through this runtime's decoder: what a photo gives, end to end
        check = judge("encoder", encoder_role, rt.decode(avatar, cs.expressions).arrays(), cs.gaussians)
        checks.append(GraphCheck(check.name, check.artifact, {"code": code_error, **check.errors}, check.psnr_db,
                                 check.target_db))
    checks.append(judge("decoder", ROLE_DECODER, rt.decode(Avatar(cs.code), cs.expressions).arrays(), cs.gaussians))
    avatar_info = rt.manifest.avatar
    if avatar_info is not None and rt.engine.has(ROLE_DECODER_AVATAR):
        checks.append(judge("decoder_avatar", ROLE_DECODER_AVATAR,
                            rt.decode(rt.bundle_avatar(), cs.expressions).arrays(), cs.gaussians))
    return NumericsReport(rt.describe(), rt.manifest.check.description, tuple(checks))


def _encoder_role(rt, cs: CheckSet) -> str | None:
    role = ROLE_ENCODER if cs.features is None else ROLE_ENCODER_FEATURES
    return role if rt.engine.has(role) else None


def _max_abs_error(got: np.ndarray, want: np.ndarray) -> float:
    got = np.asarray(got)
    if got.shape != want.shape or not np.isfinite(got).all():
        return math.inf
    return float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if got.size else 0.0


