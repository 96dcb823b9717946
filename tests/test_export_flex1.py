"""FLEX-1-size export (182 M parameters, random weights, random DINOv2 inside the encoder), all targets.

Marked slow: run with ``python -m pytest tests/test_export_flex1.py --runslow -s`` (or FLEXAVATAR_SLOW=1).
Prints file sizes, export time and peak memory.
"""
from __future__ import annotations

import resource
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_flex1_size_export_is_verified(tmp_path, official_dir):
    import onnxruntime as ort

    from flexavatar.bundle import ROLE_DECODER, ROLE_DECODER_AVATAR, Bundle
    from flexavatar.config import FlexConfig
    from flexavatar.export import export_bundle
    from flexavatar.export.testing import random_dinov2, write_synthetic_photo
    from flexavatar.model import FlexAvatarModel
    from flexavatar.template import Template

    cfg = FlexConfig()
    model = FlexAvatarModel.random(cfg, Template.from_obj(official_dir / "gghead_template.obj", 32, 256), seed=0)
    assert sum(p.numel() for p in model.network.parameters()) == 182_410_142
    ckpt = tmp_path / "flex1_random.pt"
    model.save_checkpoint(ckpt)
    del model
    photo = write_synthetic_photo(tmp_path / "photo.png", 512)

    t0 = time.perf_counter()
    result = export_bundle(ckpt, tmp_path / "bundle", template=official_dir / "gghead_template.obj",
                           dinov2=random_dinov2(), avatar=photo)
    seconds = time.perf_counter() - t0
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    print(f"\nFLEX-1 export: {seconds:.0f} s, peak RSS {peak_gib:.1f} GiB")
    print(result.summary)
    for path in sorted(result.path.iterdir()):
        print(f"  {path.name:34s} {path.stat().st_size / 2**20:9.1f} MiB")
    bundle = Bundle.open(result.path)                       # sha256 of every file
    m = bundle.manifest
    assert m.conventions.n_gaussians == 58_361 and len(m.artifacts) == 12
    for a in m.artifacts:
        if a.precision == "fp32":
            assert a.parity.passed and all(o.max_abs_error <= 1e-4 for o in a.parity.outputs), a.name
        else:   # rendered 512² PSNR vs the fp32 render (measured 50.6 dB for the decoder, ONNX Runtime CPU)
            assert a.parity.psnr_db is not None and a.parity.psnr_db >= 40.0 and a.parity.passed, a.name
    # the specialised decoder equals the generic one fed the same code
    expr = np.random.default_rng(0).standard_normal((2, 135)).astype(np.float32) * 0.5
    generic = ort.InferenceSession(str(bundle.path(bundle.artifact(ROLE_DECODER))))
    special = ort.InferenceSession(str(bundle.path(bundle.artifact(ROLE_DECODER_AVATAR))))
    a = generic.run(None, {"code": bundle.avatar_code(), "expressions": expr})
    b = special.run(None, {"expressions": expr})
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-4, rtol=0)   # kernel order differs; both ≤ 1e-4 of PyTorch
