"""TF-Locoformer music separator in MLX (Saijo et al., IWAENC 2024), stereo in, one
stereo waveform per source out.

Mirrors torch_models/tflocoformer.py: same classes, same attribute names, so both
parameter trees flatten to the names in shared.specs.tflocoformer.tflocoformer_manifest.
MLX convolutions are channels-last, so activations stay (B, frames, freq, D) from the
encoder to the decoder and the blocks need no transposes except freq <-> frames.
"""
from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from mlx_models.recompute import Dropout, run_layer
# The losses are shared with the band-split family; importing them here keeps
# mlx_models.tflocoformer.si_sdr / l1_mrstft / mean / total where callers expect them.
from mlx_models.separation_loss import l1_mrstft, mean, separation_loss, si_sdr, total  # noqa: F401
from mlx_models.stft import istft, stft
from shared.specs.tflocoformer import TFLocoformerSpec


class GroupNorm(nn.GroupNorm):
    """torch's GroupNorm (MLX nn.GroupNorm with pytorch_compatible=True), statistics
    reduced axis by axis: nn.GroupNorm's fused layer_norm over a 25M-value group is 4% off
    on the CPU (see `mean`), this is within 1e-7 of float64."""

    def __init__(self, num_groups: int, dims: int, eps: float):
        super().__init__(num_groups, dims, eps=eps, affine=True, pytorch_compatible=True)

    def __call__(self, x):
        B, *rest, D = x.shape
        g = x.reshape(B, *rest, self.num_groups, D // self.num_groups)
        axes = [a for a in range(1, g.ndim) if a != g.ndim - 2]   # all but batch and group
        centred = g - mean(g, axes)
        g = centred * mx.rsqrt(mean(centred * centred, axes) + self.eps)
        return g.reshape(x.shape) * self.weight + self.bias


class RMSGroupNorm(nn.Module):
    """RMS norm over groups of channels: x / (rms(group) + eps) * weight, no bias. eps is
    added to the rms, not inside the square root (the reference's placement)."""

    def __init__(self, num_groups: int, dim: int, eps: float):
        super().__init__()
        self.weight = mx.ones((dim,))
        self.num_groups, self.eps = num_groups, eps

    def __call__(self, x):
        *lead, D = x.shape
        g = x.reshape(*lead, self.num_groups, D // self.num_groups)
        rms = mx.sqrt(mx.sum(g * g, axis=-1, keepdims=True)) * (D // self.num_groups) ** -0.5
        return (g / (rms + self.eps)).reshape(*lead, D) * self.weight


class MultiHeadSelfAttention(nn.Module):
    """Non-causal self-attention with RoPE over positions 0..L-1 of each sequence."""

    def __init__(self, spec: TFLocoformerSpec):
        super().__init__()
        self.n_heads, self.head_dim, self.chunk = spec.n_heads, spec.head_dim, spec.attention_chunk
        self.qkv = nn.Linear(spec.emb_dim, 3 * spec.attn_dim, bias=False)
        self.out_proj = nn.Linear(spec.attn_dim, spec.emb_dim, bias=False)
        # traditional=True rotates interleaved pairs (x0, x1), (x2, x3), ...: the convention
        # of rotary_embedding_torch, which the reference uses (not the LM's rotate-half).
        self.rope = nn.RoPE(self.head_dim, traditional=True, base=10000.0)
        self.dropout = Dropout(spec.dropout)

    def __call__(self, x):
        N, L, _ = x.shape
        # The qkv projection's output is laid out (3, heads, head_dim), as in the reference.
        qkv = self.qkv(x).reshape(N, L, 3, self.n_heads, self.head_dim).transpose(2, 0, 3, 1, 4)
        q, k, v = self.rope(qkv[0]), self.rope(qkv[1]), qkv[2]         # (N, heads, L, hd)
        out = attention(q, k, v, self.head_dim ** -0.5, self.chunk)
        return self.dropout(self.out_proj(out.transpose(0, 2, 1, 3).reshape(N, L, -1)))


def attention(q, k, v, scale: float, chunk: int):
    """SDPA, optionally `chunk` queries at a time against all keys: the same result with
    no score matrix larger than (chunk x L). Each chunk is recomputed in the backward pass
    rather than stored, or autograd would keep every chunk's probabilities -- as much
    memory as no chunking (MLX trains attention through the unfused path). MLX evaluates
    lazily and may hold several chunks at once, so the peak falls less than the largest
    allocation does (measured on the CPU, L 1025, chunk 128: training peak -13%)."""
    def sdpa(q, k, v):
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale)
    L = q.shape[2]
    if not 0 < chunk < L:
        return sdpa(q, k, v)
    sdpa = mx.checkpoint(sdpa)
    return mx.concatenate([sdpa(q[:, :, i:i + chunk], k, v) for i in range(0, L, chunk)], axis=2)


class SwiGLUConvDeconv1d(nn.Module):
    """FFN over a local window: Conv1d (kernel k, stride s) -> SwiGLU -> ConvTranspose1d,
    along the sequence axis, trimmed back to the input length."""

    def __init__(self, dim: int, hidden: int, spec: TFLocoformerSpec):
        super().__init__()
        self.hidden, self.kernel, self.shift = hidden, spec.conv1d_kernel, spec.conv1d_shift
        self.conv1d = nn.Conv1d(dim, 2 * hidden, self.kernel, stride=self.shift)
        self.deconv1d = nn.ConvTranspose1d(hidden, dim, self.kernel, stride=self.shift)
        self.dropout = Dropout(spec.dropout)

    def __call__(self, x):
        B, S1, S2, D = x.shape
        x = x.reshape(B * S1, S2, D)                   # channels-last: (N, L, D)
        # Pad k - s on the left, and on the right up to a length the strided conv covers.
        diff = self.kernel - self.shift
        length = math.ceil((S2 + 2 * diff - self.kernel) / self.shift) * self.shift + self.kernel
        x = self.conv1d(mx.pad(x, [(0, 0), (diff, length - S2 - diff), (0, 0)]))
        x = self.dropout(x[..., :self.hidden] * nn.silu(x[..., self.hidden:]))
        x = self.deconv1d(x)[:, diff:diff + S2]
        return self.dropout(x).reshape(B, S1, S2, D)


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

    def __call__(self, x):
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

    def __call__(self, x):
        x = self.freq_path(x)
        return self.frame_path(x.swapaxes(1, 2)).swapaxes(1, 2)


class TFLocoformer(nn.Module):
    def __init__(self, spec: TFLocoformerSpec):
        super().__init__()
        self.spec = spec
        D = spec.emb_dim
        self.encoder = nn.Conv2d(2 * spec.audio_channels, D, (3, 3), padding=(1, 1))
        self.encoder_norm = GroupNorm(1, D, eps=spec.eps)   # over all of (frames, F, D)
        self.blocks = [TFLocoformerBlock(spec) for _ in range(spec.n_layers)]
        self.decoder = nn.ConvTranspose2d(D, spec.out_channels, (3, 3), padding=(1, 1))
        # Set by the trainer: recompute each block in the backward pass instead of
        # storing its activations.
        self.checkpoint_activations = False

    def __call__(self, mixture):
        """(B, audio_channels, T) waveform -> (B, n_sources, audio_channels, T)."""
        spec = self.spec
        B, C, T = mixture.shape
        z = stft(mixture, spec.n_fft, spec.hop).transpose(0, 3, 2, 1)    # (B, frames, F, C)
        # Image channels: real parts of every audio channel, then imaginary parts.
        x = mx.concatenate([z.real, z.imag], axis=-1)                    # (B, frames, F, 2C)
        x = self.encoder_norm(self.encoder(x))                           # (B, frames, F, D)
        for block in self.blocks:
            x = run_layer(block, x, checkpoint=self.checkpoint_activations)
        # The spectrum is built in fp32, whatever the compute dtype of the blocks.
        x = self.decoder(x).astype(mx.float32)                           # (B, frames, F, S*2*C)
        n_frames, n_freq = x.shape[1], x.shape[2]
        x = x.reshape(B, n_frames, n_freq, spec.n_sources, 2, C).transpose(0, 3, 5, 2, 1, 4)
        z = x[..., 0] + 1j * x[..., 1]                                   # (B, S, C, F, frames)
        return istft(z, spec.n_fft, spec.hop, length=T)


def loss(model: TFLocoformer, batch):
    """batch: {"mixture": (B, C, T), "sources": (B, S, C, T)}; the spec's objective."""
    estimate, reference = model(batch["mixture"]), batch["sources"]
    return separation_loss(estimate, reference, model.spec.loss, model.spec.mrstft_weight)
