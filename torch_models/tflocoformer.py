"""TF-Locoformer music separator in PyTorch (Saijo et al., IWAENC 2024), stereo in, one
stereo waveform per source out.

Mirrors mlx_models/tflocoformer.py: same classes, same attribute names, so both
parameter trees flatten to the names in shared.specs.tflocoformer.tflocoformer_manifest.
torch convolutions are channels-first, so the encoder and decoder see (B, channels,
frames, freq) while the blocks work on (B, frames, freq, D), as the MLX side does.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from shared.specs.tflocoformer import TFLocoformerSpec
from torch_models import rope
# The losses are shared with the band-split family; importing them here keeps
# torch_models.tflocoformer.si_sdr / l1_mrstft where callers expect them.
from torch_models.separation_loss import l1_mrstft, separation_loss, si_sdr  # noqa: F401
from torch_models.stft import istft, stft


class RMSGroupNorm(nn.Module):
    """RMS norm over groups of channels: x / (rms(group) + eps) * weight, no bias. eps is
    added to the rms, not inside the square root (the reference's placement)."""

    def __init__(self, num_groups: int, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.num_groups, self.eps = num_groups, eps

    def forward(self, x):
        *lead, D = x.shape
        g = x.reshape(*lead, self.num_groups, D // self.num_groups)
        rms = torch.sqrt(torch.sum(g * g, dim=-1, keepdim=True)) * (D // self.num_groups) ** -0.5
        return (g / (rms + self.eps)).reshape(*lead, D) * self.weight


class RoPE(nn.Module):
    """Rotary embedding over interleaved pairs (x0, x1), (x2, x3), ...: the convention of
    rotary_embedding_torch, which the reference uses (MLX nn.RoPE traditional=True), not
    the LM's rotate-half."""

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        self.head_dim, self.base = head_dim, base

    def forward(self, x):
        # Cached per (length, dtype, device): every layer, q and k share one table.
        cos, sin = rope.cos_sin(self.head_dim, self.base, x.shape[-2], 0, x.dtype, x.device)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


class MultiHeadSelfAttention(nn.Module):
    """Non-causal self-attention with RoPE over positions 0..L-1 of each sequence."""

    def __init__(self, spec: TFLocoformerSpec):
        super().__init__()
        self.n_heads, self.head_dim, self.chunk = spec.n_heads, spec.head_dim, spec.attention_chunk
        self.qkv = nn.Linear(spec.emb_dim, 3 * spec.attn_dim, bias=False)
        self.out_proj = nn.Linear(spec.attn_dim, spec.emb_dim, bias=False)
        self.rope = RoPE(self.head_dim, base=10000.0)
        self.dropout = nn.Dropout(spec.dropout)

    def forward(self, x):
        N, L, _ = x.shape
        # The qkv projection's output is laid out (3, heads, head_dim), as in the reference.
        qkv = self.qkv(x).reshape(N, L, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = self.rope(qkv[0]), self.rope(qkv[1]), qkv[2]         # (N, heads, L, hd)
        out = attention(q, k, v, self.head_dim ** -0.5, self.chunk)
        return self.dropout(self.out_proj(out.transpose(1, 2).reshape(N, L, -1)))


def attention(q, k, v, scale: float, chunk: int):
    """SDPA, optionally `chunk` queries at a time against all keys: the same result with
    no score matrix larger than (chunk x L). Each chunk is recomputed in the backward pass
    rather than stored, or autograd would keep every chunk's probabilities -- as much
    memory as no chunking. It matters where SDPA runs the math kernel, which forms the
    full scores (the seed 003 OOM); flash/memory-efficient kernels never do (measured on
    the CPU's math kernel, L 1025, chunk 128: training peak 791 -> 215 MB)."""
    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    L = q.shape[2]
    if not 0 < chunk < L:
        return sdpa(q, k, v)
    return torch.cat([checkpoint(sdpa, q[:, :, i:i + chunk], k, v, use_reentrant=False)
                      for i in range(0, L, chunk)], dim=2)


class SwiGLUConvDeconv1d(nn.Module):
    """FFN over a local window: Conv1d (kernel k, stride s) -> SwiGLU -> ConvTranspose1d,
    along the sequence axis, trimmed back to the input length."""

    def __init__(self, dim: int, hidden: int, spec: TFLocoformerSpec):
        super().__init__()
        self.hidden, self.kernel, self.shift = hidden, spec.conv1d_kernel, spec.conv1d_shift
        self.conv1d = nn.Conv1d(dim, 2 * hidden, self.kernel, stride=self.shift)
        self.deconv1d = nn.ConvTranspose1d(hidden, dim, self.kernel, stride=self.shift)
        self.dropout = nn.Dropout(spec.dropout)

    def forward(self, x):
        B, S1, S2, D = x.shape
        x = x.reshape(B * S1, S2, D).transpose(1, 2)   # channels-first: (N, D, L)
        # Pad k - s on the left, and on the right up to a length the strided conv covers.
        diff = self.kernel - self.shift
        length = math.ceil((S2 + 2 * diff - self.kernel) / self.shift) * self.shift + self.kernel
        x = self.conv1d(F.pad(x, (diff, length - S2 - diff)))
        x = self.dropout(x[:, :self.hidden] * F.silu(x[:, self.hidden:]))
        x = self.deconv1d(x)[..., diff:diff + S2]
        return self.dropout(x).transpose(1, 2).reshape(B, S1, S2, D)


class LocoformerBlock(nn.Module):
    """Macaron block over x (B, S1, S2, D), sequences along S2: FFN, attention, FFN, each
    pre-normed with a residual (the reference adds the FFNs at full weight, no 1/2)."""

    def __init__(self, spec: TFLocoformerSpec):
        super().__init__()
        D, G = spec.emb_dim, spec.norm_groups
        self.ffn1_norm = RMSGroupNorm(G, D, spec.eps)
        self.ffn1 = SwiGLUConvDeconv1d(D, spec.ffn_hidden_dim[0], spec)
        self.attn_norm = RMSGroupNorm(G, D, spec.eps)
        self.attn = MultiHeadSelfAttention(spec)
        self.ffn2_norm = RMSGroupNorm(G, D, spec.eps)
        self.ffn2 = SwiGLUConvDeconv1d(D, spec.ffn_hidden_dim[1], spec)

    def forward(self, x):
        B, S1, S2, D = x.shape
        x = x + self.ffn1(self.ffn1_norm(x))
        x = x + self.attn(self.attn_norm(x).reshape(B * S1, S2, D)).reshape(B, S1, S2, D)
        return x + self.ffn2(self.ffn2_norm(x))


class TFLocoformerBlock(nn.Module):
    """Frequency path, then frame path ("ft" order) on x (B, frames, freq, D)."""

    def __init__(self, spec: TFLocoformerSpec):
        super().__init__()
        self.freq_path = LocoformerBlock(spec)   # one sequence over freq bins per frame
        self.frame_path = LocoformerBlock(spec)  # one sequence over frames per freq bin

    def forward(self, x):
        x = self.freq_path(x)
        return self.frame_path(x.transpose(1, 2)).transpose(1, 2)


class TFLocoformer(nn.Module):
    def __init__(self, spec: TFLocoformerSpec):
        super().__init__()
        self.spec = spec
        D = spec.emb_dim
        self.encoder = nn.Conv2d(2 * spec.audio_channels, D, (3, 3), padding=(1, 1))
        self.encoder_norm = nn.GroupNorm(1, D, eps=spec.eps)
        self.blocks = nn.ModuleList(TFLocoformerBlock(spec) for _ in range(spec.n_layers))
        self.decoder = nn.ConvTranspose2d(D, spec.out_channels, (3, 3), padding=(1, 1))
        # Set by the trainer: recompute each block in the backward pass instead of
        # storing its activations.
        self.checkpoint_activations = False

    def forward(self, mixture):
        """(B, audio_channels, T) waveform -> (B, n_sources, audio_channels, T)."""
        spec = self.spec
        B, C, T = mixture.shape
        z = stft(mixture, spec.n_fft, spec.hop)                          # (B, C, F, frames)
        # Image channels: real parts of every audio channel, then imaginary parts.
        x = torch.cat([z.real, z.imag], dim=1).transpose(2, 3)           # (B, 2C, frames, F)
        x = self.encoder_norm(self.encoder(x)).permute(0, 2, 3, 1)       # (B, frames, F, D)
        for block in self.blocks:
            if self.checkpoint_activations and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        # The spectrum is built in fp32 (torch.complex takes no bf16 under autocast).
        x = self.decoder(x.permute(0, 3, 1, 2)).float()                  # (B, S*2*C, frames, F)
        n_frames, n_freq = x.shape[2], x.shape[3]
        x = x.reshape(B, spec.n_sources, 2, C, n_frames, n_freq).transpose(-1, -2)
        z = torch.complex(x[:, :, 0], x[:, :, 1])                        # (B, S, C, F, frames)
        return istft(z, spec.n_fft, spec.hop, length=T)


def loss(model: TFLocoformer, batch):
    """batch: {"mixture": (B, C, T), "sources": (B, S, C, T)}; the spec's objective."""
    estimate, reference = model(batch["mixture"]), batch["sources"]
    return separation_loss(estimate, reference, model.spec.loss, model.spec.mrstft_weight)
