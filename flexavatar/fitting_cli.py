"""`flexavatar-fit`: fit an avatar code to posed photos or video frames; blend two identities.

    flexavatar-fit CKPT OBS_DIR -o avatar.npy --template gghead_template.obj [--dinov2 DINO.pth]
                   [--steps 200] [--device cuda] [--config model_config.json] [--from-scratch | --init-code X.npy]
    flexavatar-fit interpolate A.npy B.npy --t 0.5 -o C.npy
                               [--preview blend.png --checkpoint CKPT --template ... [--size 512]]

OBS_DIR holds the frames (matted on white, or RGBA) and ``observations.json`` / ``cameras.json`` /
``.npz`` with normalised intrinsics, cam2world and expression codes (see
``flexavatar.fitting.load_observations``). The fit writes the code in the official ``.npy`` layout
(R², 1, D) and a comparison image (rows: target, before, after) beside it.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from .errors import FlexAvatarError

SYNTHETIC_TEMPLATE = "synthetic"   # --template value: the built-in ellipsoid (demos and tests only)
COMPARISON_COLUMNS = 4


def _config_registry():
    from .config import FLEX1, small_config
    return {"flex1": lambda: FLEX1, "small": small_config}


def _read_config(value: str | None):
    """None → FLEX-1; a registry name ("flex1", "small"); an official model_config.json; or a flat
    FlexConfig JSON (FlexConfig.to_dict())."""
    import json

    from .config import FlexConfig
    from .errors import ConfigError
    registry = _config_registry()
    if value is None:
        return registry["flex1"]()
    if value in registry:
        return registry[value]()
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"--config {value!r} is neither a file nor one of {sorted(registry)}")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"--config {value}: cannot read JSON ({e})") from None
    official = isinstance(raw, dict) and "head_transformer" in raw
    return FlexConfig.from_official_json(raw) if official else FlexConfig.from_dict(raw)


def load_model(checkpoint: str | Path, template: str | None, config: str | None = None,
               dinov2: str | None = None, device: str = "cpu"):
    """A FlexAvatarModel from a checkpoint file, for fitting (bundles hold ONNX graphs: not differentiable)."""
    from .model import FlexAvatarModel
    from .template import Template
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        raise FlexAvatarError(f"{checkpoint} is a folder (an export bundle?); fitting differentiates the "
                              "PyTorch model: pass the checkpoint file (ckpt-900k.pt or .safetensors)")
    if template is None:
        raise FlexAvatarError("--template is required: the official gghead_template.obj path "
                              f"(or '{SYNTHETIC_TEMPLATE}' for the built-in test ellipsoid)")
    cfg = _read_config(config)
    tmpl = Template.synthetic(cfg.res_head_tokens, cfg.res_gaussian_grid) if template == SYNTHETIC_TEMPLATE \
        else template
    model = FlexAvatarModel.from_checkpoint(checkpoint, template=tmpl, dinov2=dinov2, config=cfg)
    return model.to(device)


class ProgressBar:
    """One self-rewriting line on a terminal, a line every 10 % otherwise."""

    def __init__(self, stream=None, width: int = 30):
        self.stream, self.width = (sys.stderr if stream is None else stream), width
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()

    def __call__(self, p) -> None:
        done = int(self.width * p.step / p.steps)
        elapsed = time.perf_counter() - self.t0
        line = (f"[{'#' * done}{'.' * (self.width - done)}] {p.step}/{p.steps}  loss {p.loss:.4f}  "
                f"PSNR {p.psnr:5.2f} dB  lr {p.lr:.2e}  {elapsed:.1f} s")
        if self.tty:
            self.stream.write("\r" + line + ("\n" if p.step == p.steps else ""))
        elif 10 * p.step // p.steps > 10 * (p.step - 1) // p.steps:     # crossed a 10 % mark (the last step too)
            self.stream.write(line + "\n")
        self.stream.flush()


def parse_device(value: str):
    """--device → torch.device, checked to work here (a CUDA device needs a CUDA build and that GPU)."""
    import torch

    from .fitting import FitArgumentError
    try:
        device = torch.device(value)
    except RuntimeError:
        raise FitArgumentError(f"--device {value!r} is not a torch device; expected e.g. cpu, cuda or cuda:0") from None
    try:
        torch.zeros(1, device=device).cpu()
    except (AssertionError, RuntimeError, NotImplementedError) as e:   # torch's "not compiled with CUDA" is an assert
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise FitArgumentError(f"--device {value}: not usable here ({reason}); expected cpu or a device this "
                               "machine and PyTorch build have") from None
    return device


def comparison_image(targets, before, after) -> np.ndarray:
    """Rows target / before / after of K views.  [K, 3, H, W] each → uint8 [3H, K·W, 3]."""
    rows = [np.concatenate(list(x.detach().cpu().clamp(0, 1).permute(0, 2, 3, 1).numpy()), axis=1)
            for x in (targets, before, after)]
    return (np.concatenate(rows, axis=0) * 255 + 0.5).astype(np.uint8)


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    from .files import atomic_path
    with atomic_path(path, suffix=path.suffix) as tmp:     # PIL picks the format from the suffix
        Image.fromarray(array).save(tmp)


def _check_output(path: Path, option: str, suffixes: tuple[str, ...]) -> None:
    """Before any work: the folder must exist and the suffix fit, or the result is lost after the fit."""
    from .fitting import FitArgumentError
    if path.is_dir():
        raise FitArgumentError(f"{option} {path} is a folder; expected a file path ending in {' / '.join(suffixes)}")
    if not path.absolute().parent.is_dir():
        raise FitArgumentError(f"{option} {path}: folder {path.absolute().parent} does not exist; create it first")
    if path.suffix.lower() not in suffixes:
        raise FitArgumentError(f"{option} {path}: expected a file name ending in {' / '.join(suffixes)}")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
PREVIEW_SIZE = 512
PREVIEW_OPTIONS = ("checkpoint", "template", "config", "size", "device")     # interpolate: only with --preview


# ---- subcommands --------------------------------------------------------------------------------

def fit_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="flexavatar-fit", description="Fit an avatar code to posed frames "
                                     "(SPEC §15). Subcommand: `flexavatar-fit interpolate -h`.")
    parser.add_argument("checkpoint", help="model checkpoint (.pt / .safetensors, official flat state dict)")
    parser.add_argument("observations", help="folder of frames + observations.json/cameras.json/.npz")
    parser.add_argument("-o", "--output", required=True, help="avatar code .npy to write (official layout)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    parser.add_argument("--template", help=f"gghead_template.obj ('{SYNTHETIC_TEMPLATE}': test ellipsoid)")
    parser.add_argument("--config", help="model_config.json, a flat FlexConfig JSON, or 'flex1' / 'small' "
                        "(default flex1)")
    parser.add_argument("--dinov2", help="dinov2_vitb14_reg4_pretrain.pth: runs the encoder on the first frame "
                        "and adds the DINOv2 feature loss")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--from-scratch", action="store_true", help="start from a zero code (no encoder)")
    start.add_argument("--init-code", help="start from this avatar code .npy")
    parser.add_argument("--no-dino-loss", action="store_true", help="keep DINOv2 for the encoder only")
    parser.add_argument("--backend", default="auto", help="rasterizer backend (default: fastest differentiable)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random choice of frame per step")
    parser.add_argument("--comparison", help="comparison PNG (default: <output stem>_comparison.png)")
    args = parser.parse_args(argv)

    import torch

    from .fitting import FitConfig, fit, load_observations, render_observations
    try:
        if not (args.dinov2 or args.from_scratch or args.init_code):
            raise FlexAvatarError("the encoder needs DINOv2: pass --dinov2 DINO.pth, or start without the "
                                  "encoder with --from-scratch or --init-code CODE.npy")
        output = Path(args.output)
        comparison = Path(args.comparison) if args.comparison else output.with_name(output.stem + "_comparison.png")
        _check_output(output, "-o/--output", (".npy",))
        _check_output(comparison, "--comparison", IMAGE_SUFFIXES)
        device = parse_device(args.device)
        observations = load_observations(args.observations)
        model = load_model(args.checkpoint, args.template, args.config, args.dinov2, device)
        config = FitConfig(seed=args.seed, dino_weight=0.0 if args.no_dino_loss else FitConfig.dino_weight)
        print(f"fitting {len(observations)} frames of {observations.width}×{observations.height} for "
              f"{args.steps} steps on {args.device}", file=sys.stderr)
        result = fit(model, observations, args.steps, init_code=args.init_code, from_scratch=args.from_scratch,
                     config=config, backend=args.backend, callback=ProgressBar())
    except (FlexAvatarError, torch.cuda.OutOfMemoryError) as e:
        print(f"flexavatar-fit: error: {e}", file=sys.stderr)
        return 2
    result.save(output)
    k = min(COMPARISON_COLUMNS, len(observations))
    views = np.linspace(0, len(observations) - 1, k).round().astype(int).tolist()
    before = render_observations(model, result.initial_code, observations, indices=views, backend=args.backend)
    after = render_observations(model, result.code, observations, offsets=result.expression_offsets,
                                indices=views, backend=args.backend)
    _save_png(comparison_image(observations.images[views], before, after), comparison)
    print(f"wrote {output} ({tuple(result.code.tokens.shape)} float32), {comparison}; "
          f"{result.seconds / args.steps * 1e3:.1f} ms/step with the {result.backend} rasterizer; "
          f"DINOv2 feature loss {'on' if result.dino_loss else 'off'}", file=sys.stderr)
    return 0


def interpolate_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="flexavatar-fit interpolate",
                                     description="Blend two identities: (1 − t)·A + t·B in avatar-code space.")
    parser.add_argument("avatar_a", help="avatar code .npy (t = 0)")
    parser.add_argument("avatar_b", help="avatar code .npy (t = 1)")
    parser.add_argument("--t", type=float, default=0.5, help="blend weight of B (default 0.5)")
    parser.add_argument("-o", "--output", required=True, help="blended avatar code .npy to write")
    parser.add_argument("--preview", help="also render A, the blend and B side by side into this PNG "
                        "(needs --checkpoint and --template)")
    preview = parser.add_argument_group("--preview options (only with --preview)")
    preview.add_argument("--checkpoint", help="model checkpoint")
    preview.add_argument("--template", help=f"gghead_template.obj ('{SYNTHETIC_TEMPLATE}' for tests)")
    preview.add_argument("--config", help="as for fitting (default flex1)")
    preview.add_argument("--size", type=int, help=f"resolution (default {PREVIEW_SIZE})")
    preview.add_argument("--device", help="torch device (default cpu)")
    args = parser.parse_args(argv)

    import torch

    from .fitting import MIN_IMAGE_SIZE, FitArgumentError, interpolate
    try:
        _check_output(Path(args.output), "-o/--output", (".npy",))
        if args.preview:
            _check_output(Path(args.preview), "--preview", IMAGE_SUFFIXES)
            if not args.checkpoint:
                raise FitArgumentError("--preview needs --checkpoint (and --template)")
            size = PREVIEW_SIZE if args.size is None else args.size
            if size < MIN_IMAGE_SIZE:
                raise FitArgumentError(f"--size {size}: expected at least {MIN_IMAGE_SIZE} pixels for --preview")
            device = parse_device(args.device or "cpu")
        else:
            given = [f"--{name}" for name in PREVIEW_OPTIONS if getattr(args, name) is not None]
            if given:
                raise FitArgumentError(f"{', '.join(given)} only apply to --preview; add --preview PNG or drop them")
        blend = interpolate(args.avatar_a, args.avatar_b, args.t)
        image = None
        if args.preview:
            model = load_model(args.checkpoint, args.template, args.config, device=device)
            needs = (model.config.n_head_tokens, 1, model.config.d_hidden)
            if tuple(blend.tokens.shape) != needs:
                raise FitArgumentError(f"the avatar codes have shape {tuple(blend.tokens.shape)}; --checkpoint "
                                       f"{args.checkpoint} (--config {args.config or 'flex1'}) needs {needs}")
            image = _preview(model, [args.avatar_a, blend, args.avatar_b], size)   # before writing anything
    except (FlexAvatarError, torch.cuda.OutOfMemoryError) as e:
        print(f"flexavatar-fit interpolate: error: {e}", file=sys.stderr)
        return 2
    output = Path(args.output)
    blend.save(output)
    print(f"wrote {output}: (1 − {args.t:g})·{Path(args.avatar_a).name} + {args.t:g}·{Path(args.avatar_b).name}",
          file=sys.stderr)
    if image is not None:
        _save_png(image, Path(args.preview))
        print(f"wrote {args.preview} (A | blend | B, frontal camera, neutral expression)", file=sys.stderr)
    return 0


def _preview(model, codes, size: int) -> np.ndarray:
    """Frontal renders of the codes with the neutral expression, side by side.  → uint8 [S, n·S, 3]"""
    import torch

    from .cameras import default_camera
    from .expression import neutral_expression
    from .fitting import Observations, render_observations
    c2w, k = default_camera()
    frame = Observations(torch.ones(1, 3, size, size), c2w[None], k[None], neutral_expression(1))
    renders = [render_observations(model, code, frame)[0] for code in codes]
    image = torch.cat(renders, dim=2).clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return (image * 255 + 0.5).astype(np.uint8)


SUBCOMMANDS = {"interpolate": interpolate_main}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    return fit_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
