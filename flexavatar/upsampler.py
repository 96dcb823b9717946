"""StyleGAN2 pixel-shuffle upsampler with its constant style folded into plain conv weights (SPEC §10).

The StyleGAN latent is identically zero at inference, so every style vector equals its affine layer's
bias and the (de)modulated weights do not depend on the input: ``baked_weight()`` computes them from
the checkpoint tensors, and the forward pass is a static conv network. The affine weights are kept
(the checkpoint holds them) but multiply zeros and are never read.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

CONV_CLAMP = 256.0
LRELU_GAIN = math.sqrt(2.0)
FIR_TAPS = (1.0, 3.0, 3.0, 1.0)


class StyleAffine(nn.Module):
    """Holds `affine.weight [in, w_dim]` (dead: w = 0) and `affine.bias [in]` (= the style)."""

    def __init__(self, w_dim: int, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(channels, w_dim))
        self.bias = nn.Parameter(torch.ones(channels))


class ModulatedConv(nn.Module):
    """3×3 modulated+demodulated conv (optionally upsampling ×2), bias, lrelu·√2, clamp ±256."""

    def __init__(self, c_in: int, c_out: int, w_dim: int, up: bool):
        super().__init__()
        self.up = up
        self.weight = nn.Parameter(torch.randn(c_out, c_in, 3, 3))
        self.bias = nn.Parameter(torch.zeros(c_out))
        k = torch.tensor(FIR_TAPS)
        self.register_buffer("resample_filter", torch.outer(k, k) / k.sum() ** 2)       # [4, 4]
        self.affine = StyleAffine(w_dim, c_in)

    def baked_weight(self) -> torch.Tensor:
        """W''[o] = W[o]·s / ‖W[o]·s‖ (eps 1e-8): [out, in, 3, 3]"""
        w = self.weight * self.affine.bias[None, :, None, None]
        return w * torch.rsqrt(w.pow(2).sum(dim=(1, 2, 3), keepdim=True) + 1e-8)

    def forward(self, x: torch.Tensor, fir_as_taps: bool = False) -> torch.Tensor:     # [N, in, r, r]
        # lrelu(z)·g = lrelu(g·z) for g > 0, and the convolutions are linear: the gain goes into the constant
        # weights and bias (an exported graph then has no Mul pass over the feature map)
        w = self.baked_weight() * LRELU_GAIN
        if self.up:
            # transposed conv, stride 2 (→ 2r+1), then the 4×4 FIR low-pass with up² gain (→ 2r)
            y = F.conv_transpose2d(x, w.transpose(0, 1), stride=2)
            fir = (self.resample_filter * 4).to(y.dtype)                                       # [4, 4]
            y = F.pad(y, (1, 1, 1, 1))
            y = fir_taps(y, fir) if fir_as_taps else F.conv2d(y, fir.expand(y.shape[1], 1, 4, 4), groups=y.shape[1])
        else:
            y = F.conv2d(x, w, padding=1)
        y = F.leaky_relu(y + (self.bias * LRELU_GAIN)[None, :, None, None], 0.2)
        return y.clamp(-CONV_CLAMP, CONV_CLAMP)


def fir_taps(x: torch.Tensor, fir: torch.Tensor) -> torch.Tensor:
    """The depthwise ``F.conv2d(x, fir, groups=C)`` (valid, cross-correlation) as its 16 shifted multiply-adds:
    x [N, C, H, W], fir [4, 4] → [N, C, H - 3, W - 3]. The same sums, in another order. Eagerly it is 32 kernels
    instead of one; a compiler that fuses elementwise work (Inductor) makes it one kernel together with the bias,
    activation and clamp that follow, where cuDNN's depthwise convolution in the compiled FLEX-1 decoder took 0.54 ms
    of a 2.08 ms frame (H200, fp16; issue #7)."""
    kh, kw = fir.shape
    h, w = x.shape[-2] - kh + 1, x.shape[-1] - kw + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = fir[i, j] * x[..., i:i + h, j:j + w]
            out = tap if out is None else out + tap
    return out


class ToRGB(nn.Module):
    """1×1 modulated conv without demodulation; style = affine.bias / √in; linear, clamp ±256."""

    def __init__(self, c_in: int, c_out: int, w_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, 1, 1))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.affine = StyleAffine(w_dim, c_in)

    def baked_weight(self) -> torch.Tensor:
        return self.weight * (self.affine.bias / math.sqrt(self.weight.shape[1]))[None, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(x, self.baked_weight()) + self.bias[None, :, None, None]
        return y.clamp(-CONV_CLAMP, CONV_CLAMP)


class UpsamplerBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, c_img_out: int, w_dim: int):
        super().__init__()
        self.conv0 = ModulatedConv(c_in, c_out, w_dim, up=True)
        self.conv1 = ModulatedConv(c_out, c_out, w_dim, up=False)
        self.torgb = ToRGB(c_out, c_img_out, w_dim)

    def forward(self, x: torch.Tensor, img: torch.Tensor,
                fir_as_taps: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv1(self.conv0(x, fir_as_taps))
        img = F.pixel_shuffle(img, 2) + self.torgb(x)
        return x, img


class StyleGANUpsampler(nn.Module):
    """[N, D, R, R] → [N, D/4^k, R·2^k, R·2^k]; the skip ("img") path starts as the input itself.
    ``fir_as_taps``: the up-sampling FIR low-pass as shifted multiply-adds (``fir_taps``) instead of a depthwise
    convolution, for compiled decoders; the convolution (default) is eager PyTorch's and the exported graphs' form."""

    def __init__(self, d_in: int, res_in: int, n_blocks: int, channel_base: int, channel_max: int, w_dim: int):
        super().__init__()
        blocks, c_prev, c_img = [], d_in, d_in
        for i in range(n_blocks):
            res = res_in * 2 ** (i + 1)
            c = min(channel_base // res, channel_max)
            blocks.append(UpsamplerBlock(c_prev, c, c_img // 4, w_dim))
            c_prev, c_img = c, c_img // 4
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, fir_as_taps: bool = False) -> torch.Tensor:
        img = x
        for block in self.blocks:
            x, img = block(x, img, fir_as_taps)
        return img
