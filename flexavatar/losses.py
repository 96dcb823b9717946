"""Image losses of the fitting objective (SPEC §15): L1, the 3DGS SSIM and a DINOv2 feature loss.

``ssim`` follows the original 3D Gaussian Splatting training code: an 11×11 Gaussian window with
σ = 1.5, zero-padded ("same") convolution per channel, C1 = 0.01², C2 = 0.03² (data range 1), the
SSIM map averaged over pixels, channels and the batch. ``padding="valid"`` drops the border
windows instead (the convention of ``pytorch-msssim``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01 ** 2
SSIM_C2 = 0.03 ** 2


def gaussian_window_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, dtype=torch.float32,
                       device=None) -> torch.Tensor:
    """Normalised 1D Gaussian taps centred on the middle tap.  → [size]"""
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    w = torch.exp(-x * x / (2 * sigma * sigma))
    return (w / w.sum()).to(dtype)


def _blur(x: torch.Tensor, taps: torch.Tensor, pad: int) -> torch.Tensor:
    """Separable depthwise Gaussian blur (= the 2D outer-product window).  x: [B, C, H, W]"""
    c = x.shape[1]
    k = taps.numel()
    x = F.conv2d(x, taps.view(1, 1, 1, k).expand(c, 1, 1, k), padding=(0, pad), groups=c)   # along W
    return F.conv2d(x, taps.view(1, 1, k, 1).expand(c, 1, k, 1), padding=(pad, 0), groups=c)  # along H


def ssim_map(x: torch.Tensor, y: torch.Tensor, window_size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA,
             padding: str = "same") -> torch.Tensor:
    """Per-pixel SSIM of images in [0, 1].  x, y: [B, C, H, W] → [B, C, H', W'] (H' = H for "same")."""
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ssim: x and y must both be [B, C, H, W] with one shape, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    if padding not in ("same", "valid"):
        raise ValueError(f"ssim: padding must be 'same' (3DGS) or 'valid', got {padding!r}")
    if padding == "valid" and min(x.shape[-2:]) < window_size:
        raise ValueError(f"ssim: padding='valid' needs images of at least {window_size}² pixels, "
                         f"got {tuple(x.shape[-2:])}")
    taps = gaussian_window_1d(window_size, sigma, x.dtype, x.device)
    pad = window_size // 2 if padding == "same" else 0
    mu_x, mu_y = _blur(x, taps, pad), _blur(y, taps, pad)
    var_x = _blur(x * x, taps, pad) - mu_x * mu_x
    var_y = _blur(y * y, taps, pad) - mu_y * mu_y
    cov_xy = _blur(x * y, taps, pad) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + SSIM_C1) * (2 * cov_xy + SSIM_C2)
    denominator = (mu_x * mu_x + mu_y * mu_y + SSIM_C1) * (var_x + var_y + SSIM_C2)
    return numerator / denominator


def ssim(x: torch.Tensor, y: torch.Tensor, window_size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA,
         padding: str = "same") -> torch.Tensor:
    """Mean SSIM (3DGS definition with the defaults).  x, y: [B, C, H, W] in [0, 1] → scalar."""
    return ssim_map(x, y, window_size, sigma, padding).mean()


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB for images in [0, 1] (infinite for identical images)."""
    mse = (x - y).square().mean()
    return -10.0 * torch.log10(mse)


def photometric_loss(render: torch.Tensor, target: torch.Tensor, l1_weight: float = 0.8,
                     ssim_weight: float = 0.2) -> torch.Tensor:
    """The official fitting loss without the feature terms: 0.8·L1 + 0.2·(1 − SSIM).  [B, 3, H, W] each."""
    return l1_weight * (render - target).abs().mean() + ssim_weight * (1.0 - ssim(render, target))


def dino_feature_loss(render_features: torch.Tensor, target_features: torch.Tensor) -> torch.Tensor:
    """Mean over patches of 1 − cosine similarity of DINOv2 patch features.  [B, C, h, w] each → scalar.

    The official DINOv2 (and SAM) feature losses are not part of the FlexAvatar release (SPEC §15);
    this is our stand-in: scale-free and 0 for identical features.
    """
    cos = F.cosine_similarity(render_features, target_features, dim=1, eps=1e-6)   # [B, h, w]
    return (1.0 - cos).mean()
