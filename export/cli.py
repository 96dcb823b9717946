"""``flexavatar-export CKPT -o OUT_DIR ...``: the command-line face of ``export_bundle``."""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from flexavatar.bundle import PRECISIONS

from .exporter import (DEFAULT_GPU_CONV_FORM, DEFAULT_OPSET, DEFAULT_PRECISIONS, DEFAULT_TARGETS, MAX_OPSET, MIN_OPSET,
                       TARGETS)
from .graph_passes import GPU_CONV_FORMS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flexavatar-export",
        description="Export a FlexAvatar checkpoint into a checked bundle: ONNX (fp32/fp16), OpenVINO IR, "
                    "manifest.json. Every file is run and compared with PyTorch before the bundle is written.")
    p.add_argument("checkpoint", type=Path, help="flat state dict (ckpt-900k.pt or .safetensors)")
    p.add_argument("-o", "--output", type=Path, required=True, help="bundle folder to create")
    p.add_argument("--template", type=Path, help="gghead_template.obj (default: beside the checkpoint)")
    p.add_argument("--dinov2", type=Path, help="dinov2_vitb14_reg4_pretrain.pth: put DINOv2 inside the encoder "
                   "(without it the encoder takes DINOv2 features as an input)")
    p.add_argument("--config", type=Path, help="model_config.json (default: FLEX-1)")
    p.add_argument("--precision", default=",".join(DEFAULT_PRECISIONS),
                   help=f"comma list of {list(PRECISIONS)} (default {','.join(DEFAULT_PRECISIONS)}); 'int8': the "
                   "decoders as ONNX with int8 MatMul weights, for CPUs (lossy: checked against a 30 dB rendered-PSNR "
                   "target)")
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                   help=f"comma list of {list(TARGETS)} (default {','.join(DEFAULT_TARGETS)}); 'onnx-ort': the "
                   "decoders with ONNX Runtime's fused kernels (ONNX Runtime only; its CUDA provider prefers them); "
                   "'pytorch' adds model.safetensors, the PyTorch model itself, for the torch and torch-compile "
                   "engines (no checkpoint needed beside the bundle)")
    p.add_argument("--avatar", type=Path, metavar="PHOTO", help="also encode this square photo (on white) and "
                   "write its code plus a decoder specialised to it (needs --dinov2)")
    p.add_argument("--camera", type=Path, metavar="JSON", help='the photo\'s camera: {"cam2world": 4x4 OpenCV, '
                   '"intrinsics": 3x3 normalised} (default: frontal, 1 m, fx = 1500/512)')
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset, {MIN_OPSET}-{MAX_OPSET} (default {DEFAULT_OPSET}: attention, RMS norm and GELU as "
                   "single nodes; 18 for runtimes that lack them)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--strict-fp16", action="store_true", help="fail when an fp16 file's rendered PSNR against "
                   "fp32 is below 40 dB, or an int8 file's below 30 dB (default: keep it, flag it in the manifest and "
                   "warn)")
    p.add_argument("--gpu-conv-form", choices=list(GPU_CONV_FORMS), default=DEFAULT_GPU_CONV_FORM,
                   help="the upsampler's convolutions in the fp16 ONNX decoders (the GPU files): 'transposed' "
                   "(as exported: ConvTranspose + FIR), 'subpixel' (one Conv + DepthToSpace) or 'gemm' (im2col + "
                   f"MatMul); default {DEFAULT_GPU_CONV_FORM}. benchmarks/device/upsampler_forms.py times them on a GPU")
    return p


def _sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)   # clean up the staging folder on kill, too
    from flexavatar.errors import FlexAvatarError, command_failed

    from .exporter import export_bundle
    try:
        export_bundle(args.checkpoint, args.output, template=args.template, dinov2=args.dinov2, config=args.config,
                      precisions=args.precision, targets=args.targets, avatar=args.avatar, camera=args.camera,
                      opset=args.opset, force=args.force, strict_fp16=args.strict_fp16,
                      gpu_conv_form=args.gpu_conv_form, progress=lambda msg: print(msg, flush=True))
    except (FlexAvatarError, KeyboardInterrupt) as e:
        return command_failed("flexavatar-export", e, interrupted="interrupted; nothing was written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
