"""Transformer building blocks of FLEX-1 (SPEC §5, §7). Tokens are sequence-first: [T, B, D]."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, gain: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last axis: x · rsqrt(mean(x²) + eps) · gain (one ONNX RMSNormalization node from
    opset 23, written out in older opsets)."""
    return F.rms_norm(x, (x.shape[-1],), gain, eps)


class RMSNormGain(nn.Module):
    """Per-head qk-norm: a learnable gain over the head dim; eps 1e-6."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight)


# ---- causal GPT encoder (§5.1) ------------------------------------------------------------------

class CausalSelfAttention(nn.Module):
    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:                     # x: [B, T, D]
        b, t, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)          # [B, nh, T, hd]
        return self.c_proj(y.transpose(1, 2).reshape(b, t, d))


class GPTMLP(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.c_fc = nn.Linear(d, 4 * d)
        self.c_proj = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))                              # exact (erf) GELU


class GPTBlock(nn.Module):
    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d, eps=1e-5)
        self.attn = CausalSelfAttention(d, n_heads)
        self.ln_2 = nn.LayerNorm(d, eps=1e-5)
        self.mlp = GPTMLP(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPTTransformer(nn.Module):
    def __init__(self, d: int, n_heads: int, n_layers: int, n_positions: int):
        super().__init__()
        self.h = nn.ModuleList(GPTBlock(d, n_heads) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d, eps=1e-5)
        self.wpe = nn.Embedding(n_positions, d)


class GPTEncoder(nn.Module):
    """Pre-LN causal transformer over image tokens with a learned absolute position table."""

    def __init__(self, d: int, n_heads: int, n_layers: int, n_positions: int):
        super().__init__()
        self.transformer = GPTTransformer(d, n_heads, n_layers, n_positions)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:                 # [T, B, D] → [T, B, D]
        t = tokens.shape[0]
        x = tokens.transpose(0, 1) + self.transformer.wpe.weight[:t]          # [B, T, D]
        for block in self.transformer.h:
            x = block(x)
        return self.transformer.ln_f(x).transpose(0, 1)


# ---- point embedder (§5.3) ----------------------------------------------------------------------

class PointEmbedder(nn.Module):
    """xyz → [sin(xyz·f), cos(xyz·f), xyz] (f = π·2^k, k < 8) → Linear → LayerNorm."""

    N_FREQUENCIES = 8

    def __init__(self, d: int):
        super().__init__()
        # float32 constants, as in the official code (matters at the 1e-6 level in float64 runs)
        freqs = (math.pi * 2.0 ** torch.arange(self.N_FREQUENCIES, dtype=torch.float32))
        self.register_buffer("frequencies", freqs, persistent=False)
        self.mlp = nn.Linear(6 * self.N_FREQUENCIES + 3, d)
        self.norm = nn.LayerNorm(d, eps=1e-5)

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:                    # [..., 3] → [..., D]
        scaled = (xyz[..., :, None] * self.frequencies.to(xyz.dtype)).flatten(-2)   # [..., 24] (x·f, y·f, z·f)
        emb = torch.cat([scaled.sin(), scaled.cos(), xyz], dim=-1)           # [..., 51]
        return self.norm(self.mlp(emb))


# ---- joint-attention decoder ("sd3_cond", §7) ---------------------------------------------------

class FeedForward(nn.Module):
    """Linear D→4D → GELU(tanh) → Linear 4D→D; keys `net.0.proj`, `net.2` as in the checkpoint."""

    def __init__(self, d: int):
        super().__init__()
        self.net = nn.ModuleList([_GeluProj(d, 4 * d), nn.Identity(), nn.Linear(4 * d, d)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class _GeluProj(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.proj = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class JointAttention(nn.Module):
    """One softmax attention over [x-tokens ; context-tokens], each stream with its own projections."""

    def __init__(self, d: int, n_heads: int, context_pre_only: bool):
        super().__init__()
        self.n_heads = n_heads
        hd = d // n_heads
        self.norm_q, self.norm_k = RMSNormGain(hd), RMSNormGain(hd)
        self.to_q, self.to_k, self.to_v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.add_k_proj, self.add_v_proj, self.add_q_proj = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.to_out = nn.ModuleList([nn.Linear(d, d)])
        self.context_pre_only = context_pre_only
        if not context_pre_only:
            self.to_add_out = nn.Linear(d, d)
        self.norm_added_q, self.norm_added_k = RMSNormGain(hd), RMSNormGain(hd)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:                       # [B, T, D] → [B, T, nh, hd]
        b, t, d = x.shape
        return x.view(b, t, self.n_heads, d // self.n_heads)

    def forward(self, x: torch.Tensor, c: torch.Tensor, x_shared: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: [B, Tx, D], or with x_shared [1, Tx, D] (one query set shared by all B contexts: projected once,
        then broadcast), c: [B, Tc, D] (both already LayerNorm'ed) → (attn_x [B, Tx, D], attn_c or None)."""
        b, (_, tx, d) = c.shape[0], x.shape

        def shared(t: torch.Tensor) -> torch.Tensor:                       # [1|B, Tx, nh, hd] → [B, Tx, nh, hd]
            # only the first layer's queries are shared: an expand to the batch they already have is free in
            # PyTorch but a full copy (Expand node) per tensor in an exported graph
            return t.expand(b, -1, -1, -1) if x_shared else t

        # heads stay token-major ([B, T, nh, hd]: qk-norm acts on the last axis, the streams join along T) and
        # are transposed to SDPA's [B, nh, T, hd] once, after the join: one transpose per q / k / v, not two
        k = torch.cat([shared(self.norm_k(self._heads(self.to_k(x)))),
                       self.norm_added_k(self._heads(self.add_k_proj(c)))], 1)
        v = torch.cat([shared(self._heads(self.to_v(x))), self._heads(self.add_v_proj(c))], 1)
        q = shared(self.norm_q(self._heads(self.to_q(x))))
        if not self.context_pre_only:
            # the context rows are only needed when the context stream continues to the next layer
            q = torch.cat([q, self.norm_added_q(self._heads(self.add_q_proj(c)))], 1)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        y = y.transpose(1, 2).reshape(b, -1, d)                               # [B, Tq, D]
        if self.context_pre_only:
            return self.to_out[0](y), None
        y_x, y_c = y.split([tx, y.shape[1] - tx], dim=1)                     # one Split node, not two Slices
        return self.to_out[0](y_x), self.to_add_out(y_c)


class JointBlock(nn.Module):
    def __init__(self, d: int, n_heads: int, context_pre_only: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(d, eps=1e-5)
        self.norm1_context = nn.LayerNorm(d, eps=1e-5)
        self.attn = JointAttention(d, n_heads, context_pre_only)
        self.norm2 = nn.LayerNorm(d, eps=1e-6, elementwise_affine=False)
        self.ff = FeedForward(d)
        self.context_pre_only = context_pre_only
        if not context_pre_only:
            self.norm2_context = nn.LayerNorm(d, eps=1e-6, elementwise_affine=False)
            self.ff_context = FeedForward(d)

    def forward(self, x: torch.Tensor, c: torch.Tensor, x_shared: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn_x, attn_c = self.attn(self.norm1(x), self.norm1_context(c), x_shared)
        x = x + attn_x
        x = x + self.ff(self.norm2(x))
        if self.context_pre_only:
            return x, None
        c = c + attn_c
        c = c + self.ff_context(self.norm2_context(c))
        return x, c


class JointTransformer(nn.Module):
    """queries x [Tx, B, D] + context c [Tc, B, D] → [Tx, B, D] (SPEC §7)."""

    def __init__(self, d: int, n_heads: int, n_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(JointBlock(d, n_heads, context_pre_only=(i == n_layers - 1))
                                    for i in range(n_layers))
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.linear_cond_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x, c = x.transpose(0, 1), self.linear_cond_proj(context).transpose(0, 1)   # batch-first inside
        for i, layer in enumerate(self.layers):
            x, c = layer(x, c, x_shared=(i == 0))      # x takes the context's batch in the first layer
        return self.norm(x).transpose(0, 1)
