"""Band-split dual-path music separator in MLX (BS-RoFormer / BSMamba2 shape), stereo in,
one stereo waveform per source out. See shared/specs/bandsplit.py for the architecture.

Mirrors torch_models/bandsplit.py: same classes, same attribute names, so both parameter
trees flatten to the names in shared.specs.bandsplit.bandsplit_manifest. Activations are
(B, frames, bands, hidden) between the band split and the mask estimators.

The Mamba2 layer is plain MLX: the chunked SSD algorithm of the Mamba2 paper ("state
space duality", Dao & Gu 2024) -- a masked quadratic form inside each chunk and a
recurrence of states between chunks -- with no custom kernel.
"""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlx_models.recompute import Dropout, run_layer
from mlx_models.separation_loss import separation_loss
from mlx_models.stft import istft, stft
from shared.specs.bandsplit import BandSplitSpec


# ----------------------------------------------------------------------------- SSD scan
def segsum(a):
    """(..., T) -> (..., T, T): out[i, j] = a[j+1] + ... + a[i] for j <= i, -inf above the
    diagonal (exp gives the lower-triangular decay matrix). Built by masking and one
    cumsum, not as cumsum[i] - cumsum[j]: over many chunks the cumulative decay grows
    large, and a difference of two large sums would lose the small decays that matter
    (the Mamba2 reference's stable form)."""
    T = a.shape[-1]
    below = mx.array(np.tril(np.ones((T, T), bool), -1))
    on_or_below = mx.array(np.tril(np.ones((T, T), bool), 0))
    x = mx.cumsum(mx.where(below, a[..., :, None], 0.0), axis=-2)
    return mx.where(on_or_below, x, -mx.inf)


def ssd_scan(x, a, B, C, chunk: int):
    """The selective state-space recurrence, chunk by chunk:

        h_t = exp(a_t) h_{t-1} + x_t B_t^T      (h: heads x head_dim x d_state, h_{-1} = 0)
        y_t = h_t C_t

    x (N, L, H, P), a (N, L, H) log-decays (<= 0), B and C (N, L, S) shared by the heads
    -> y (N, L, H, P). Any L: the sequence is zero-padded at its end to whole chunks, which
    changes no earlier output of a causal scan."""
    N, L, H, P = x.shape
    S = B.shape[-1]
    Q = min(chunk, L)
    c = -(-L // Q)
    if c * Q != L:
        pad = [(0, 0), (0, c * Q - L)]
        x, a = mx.pad(x, pad + [(0, 0), (0, 0)]), mx.pad(a, pad + [(0, 0)])
        B, C = mx.pad(B, pad + [(0, 0)]), mx.pad(C, pad + [(0, 0)])
    x = x.reshape(N, c, Q, H, P).transpose(0, 3, 1, 2, 4)         # (N, H, c, Q, P)
    a = a.reshape(N, c, Q, H).transpose(0, 3, 1, 2)               # (N, H, c, Q)
    B, C = B.reshape(N, 1, c, Q, S), C.reshape(N, 1, c, Q, S)     # one group for all heads
    a_cum = mx.cumsum(a, axis=-1)
    # 1. Inside each chunk, the quadratic ("attention-like") form: y_i = sum_{j<=i}
    #    (C_i . B_j) exp(a_{j+1} + ... + a_i) x_j. The decays are differences of the
    #    chunk's own cumulative sums, as Mamba2's kernels compute them: no sum is longer
    #    than a chunk, and it saves segsum's two extra passes over (Q x Q).
    #    The causal mask is added (0 on and below the diagonal, -inf above) rather than
    #    selected with `where`: one add instead of a select, and its gradient is the
    #    incoming one unchanged (no second select over the (Q x Q) blocks in the backward).
    above = mx.array(np.triu(np.full((Q, Q), -np.inf, np.float32), 1))
    decay = mx.exp((a_cum[..., :, None] + above) - a_cum[..., None, :])
    y = ((C @ B.swapaxes(-1, -2)) * decay) @ x                    # (N, H, c, Q, P)
    # 2. Each chunk's own contribution to the state at its end.
    decay_to_end = mx.exp(a_cum[..., -1:] - a_cum)                # (N, H, c, Q)
    states = (x * decay_to_end[..., None]).swapaxes(-1, -2) @ B   # (N, H, c, P, S)
    # 3. The state entering chunk k: chunk m < k's end state decayed through chunks
    #    m+1..k-1 -- the recurrence between chunks, written as one (c x c) matmul
    #    (segsum's stable form: these sums span the whole sequence).
    chunk_decay = mx.pad(a_cum[..., -1], [(0, 0), (0, 0), (1, 0)])          # (N, H, c+1)
    carry = mx.exp(segsum(chunk_decay))[..., :c, 1:]                          # (N, H, c, c)
    entering = (carry @ states.reshape(N, H, c, P * S)).reshape(N, H, c, P, S)
    # 4. What the entering state adds at each position, decayed from the chunk start.
    y = y + (C @ entering.swapaxes(-1, -2)) * mx.exp(a_cum)[..., None]
    return y.transpose(0, 2, 3, 1, 4).reshape(N, c * Q, H, P)[:, :L]


# ----------------------------------------------------------------------------- Mamba2
class DepthwiseCausalConv1d(nn.Module):
    """Mamba2's conv1d: one kernel per channel, output t sees inputs t-K+1..t. Stored in
    MLX's conv layout (channels, K, 1) so the manifest's conv1d kind converts it; computed
    as K shifted multiply-adds (cheaper than a grouped convolution on the CPU)."""

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.weight = mx.zeros((channels, kernel, 1))
        self.bias = mx.zeros((channels,))

    def __call__(self, x):                                 # (N, L, channels)
        K, L = self.weight.shape[1], x.shape[1]
        padded = mx.pad(x, [(0, 0), (K - 1, 0), (0, 0)])
        out = self.bias
        for k in range(K):
            out = out + padded[:, k:k + L] * self.weight[:, k, 0]
        return out


class Mamba2(nn.Module):
    """One direction of Mamba2 (one group of B/C): in_proj -> (z, x, B, C, dt); causal
    depthwise conv + SiLU on (x, B, C); SSD scan with dt = softplus(dt + dt_bias) and
    A = -exp(A_log), plus the D skip; RMSNorm(y * SiLU(z)); out_proj."""

    def __init__(self, spec: BandSplitSpec):
        super().__init__()
        D, E, H, S = spec.hidden, spec.d_inner, spec.mamba_heads, spec.d_state
        self.d_inner, self.heads, self.head_dim, self.d_state = E, H, spec.head_dim, S
        self.chunk = spec.chunk_size
        self.in_proj = nn.Linear(D, 2 * E + 2 * S + H, bias=False)
        self.conv1d = DepthwiseCausalConv1d(spec.conv_channels, spec.d_conv)
        self.dt_bias = mx.zeros((H,))
        self.A_log = mx.zeros((H,))
        self.D = mx.ones((H,))
        self.norm = nn.RMSNorm(E, eps=spec.eps)
        self.out_proj = nn.Linear(E, D, bias=False)

    def __call__(self, u):                                 # (N, L, hidden)
        N, L, _ = u.shape
        E, S = self.d_inner, self.d_state
        zxbcdt = self.in_proj(u)
        z, xBC, dt = zxbcdt[..., :E], zxbcdt[..., E:2 * E + 2 * S], zxbcdt[..., 2 * E + 2 * S:]
        xBC = nn.silu(self.conv1d(xBC))
        # The scan runs in float32 whatever the compute dtype: exp and cumsum of decays in
        # bf16 lose the state (Mamba2's reference keeps dt and A in fp32 too).
        f32 = mx.float32
        x = xBC[..., :E].astype(f32).reshape(N, L, self.heads, self.head_dim)
        B, C = xBC[..., E:E + S].astype(f32), xBC[..., E + S:].astype(f32)
        dt = nn.softplus(dt.astype(f32) + self.dt_bias.astype(f32))          # (N, L, H)
        A = -mx.exp(self.A_log.astype(f32))
        y = ssd_scan(x * dt[..., None], dt * A, B, C, self.chunk)
        y = y + x * self.D.astype(f32)[:, None]
        y = y.reshape(N, L, E).astype(u.dtype)
        return self.out_proj(self.norm(y * nn.silu(z)))


class BiMamba2Layer(nn.Module):
    """Pre-norm bidirectional Mamba2 with a residual: one Mamba2 reads the sequence
    forwards, a second (its own weights) reads it reversed; their outputs are summed."""

    def __init__(self, spec: BandSplitSpec):
        super().__init__()
        self.norm = nn.RMSNorm(spec.hidden, eps=spec.eps)
        self.forward_mixer = Mamba2(spec)
        self.backward_mixer = Mamba2(spec)
        self.dropout = Dropout(spec.dropout)

    def __call__(self, x):                                 # (N, L, hidden)
        h = self.norm(x)
        y = self.forward_mixer(h) + self.backward_mixer(h[:, ::-1])[:, ::-1]
        return x + self.dropout(y)


# ----------------------------------------------------------------------------- transformer
class Attention(nn.Module):
    """Non-causal self-attention with RoPE over positions 0..L-1 (interleaved pairs, the
    rotary_embedding_torch convention BS-RoFormer uses: MLX traditional=True)."""

    def __init__(self, spec: BandSplitSpec):
        super().__init__()
        D = spec.hidden
        self.n_heads, self.head_dim = spec.n_heads, D // spec.n_heads
        self.qkv = nn.Linear(D, 3 * D, bias=False)
        self.out_proj = nn.Linear(D, D, bias=False)
        self.rope = nn.RoPE(self.head_dim, traditional=True, base=10000.0)

    def __call__(self, x):
        N, L, _ = x.shape
        qkv = self.qkv(x).reshape(N, L, 3, self.n_heads, self.head_dim).transpose(2, 0, 3, 1, 4)
        q, k, v = self.rope(qkv[0]), self.rope(qkv[1]), qkv[2]          # (N, heads, L, hd)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.head_dim ** -0.5)
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(N, L, -1))


class FeedForward(nn.Module):
    def __init__(self, spec: BandSplitSpec):
        super().__init__()
        self.fc1 = nn.Linear(spec.hidden, spec.ffn_mult * spec.hidden)
        self.fc2 = nn.Linear(spec.ffn_mult * spec.hidden, spec.hidden)
        self.dropout = Dropout(spec.dropout)

    def __call__(self, x):
        return self.fc2(self.dropout(nn.gelu(self.fc1(x))))   # exact (erf) GELU, as torch


class TransformerLayer(nn.Module):
    """Pre-norm RoPE transformer layer: x + attn(norm(x)), then x + FFN(norm(x))."""

    def __init__(self, spec: BandSplitSpec):
        super().__init__()
        self.attn_norm = nn.RMSNorm(spec.hidden, eps=spec.eps)
        self.attn = Attention(spec)
        self.ffn_norm = nn.RMSNorm(spec.hidden, eps=spec.eps)
        self.ffn = FeedForward(spec)
        self.dropout = Dropout(spec.dropout)

    def __call__(self, x):
        x = x + self.dropout(self.attn(self.attn_norm(x)))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


SEQUENCE_LAYERS = {"mamba2": BiMamba2Layer, "transformer": TransformerLayer}


# ----------------------------------------------------------------------------- the model
class DualPathModule(nn.Module):
    """A sequence layer along time (one sequence per band), then one across bands (one
    sequence per frame), on x (B, frames, bands, hidden)."""

    def __init__(self, spec: BandSplitSpec):
        super().__init__()
        self.time_layer = SEQUENCE_LAYERS[spec.sequence_layer](spec)
        self.band_layer = SEQUENCE_LAYERS[spec.sequence_layer](spec)

    def __call__(self, x):
        B, T, K, D = x.shape
        x = self.time_layer(x.transpose(0, 2, 1, 3).reshape(B * K, T, D))
        x = x.reshape(B, K, T, D).transpose(0, 2, 1, 3)
        return self.band_layer(x.reshape(B * T, K, D)).reshape(B, T, K, D)


class BandProjection(nn.Module):
    """One band's (bins x channels x re/im) features -> hidden: RMSNorm + Linear."""

    def __init__(self, n_in: int, spec: BandSplitSpec):
        super().__init__()
        self.norm = nn.RMSNorm(n_in, eps=spec.eps)
        self.proj = nn.Linear(n_in, spec.hidden)

    def __call__(self, x):
        return self.proj(self.norm(x))


class MaskEstimator(nn.Module):
    """One band's hidden features -> its complex masks: Linear -> Tanh -> Linear -> GLU."""

    def __init__(self, n_out: int, spec: BandSplitSpec):
        super().__init__()
        self.fc1 = nn.Linear(spec.hidden, spec.mask_hidden)
        self.fc2 = nn.Linear(spec.mask_hidden, 2 * n_out)

    def __call__(self, x):
        value, gate = mx.split(self.fc2(mx.tanh(self.fc1(x))), 2, axis=-1)
        return value * mx.sigmoid(gate)


class BandSplitSeparator(nn.Module):
    def __init__(self, spec: BandSplitSpec):
        super().__init__()
        self.spec = spec
        self.band_split = [BandProjection(n, spec) for n in spec.band_features]
        self.layers = [DualPathModule(spec) for _ in range(spec.n_layers)]
        self.final_norm = nn.RMSNorm(spec.hidden, eps=spec.eps)
        self.mask_estimators = [MaskEstimator(spec.n_sources * n, spec) for n in spec.band_features]
        # Set by the trainer: recompute each DualPathModule in the backward pass instead
        # of storing its activations.
        self.checkpoint_activations = False

    def __call__(self, mixture):
        """(B, audio_channels, T) waveform -> (B, n_sources, audio_channels, T)."""
        spec = self.spec
        B, C, T = mixture.shape
        z = stft(mixture, spec.n_fft, spec.hop)                           # (B, C, F, frames)
        n_frames = z.shape[-1]
        # Per (frame, bin): channel-major (real, imag) pairs; a band is a run of bins.
        feats = mx.stack([z.real, z.imag], axis=-1).transpose(0, 3, 2, 1, 4)   # (B, frames, F, C, 2)
        feats = feats.astype(self.final_norm.weight.dtype)                # the compute dtype
        bands, start = [], 0
        for project, width in zip(self.band_split, spec.widths):
            bands.append(project(feats[:, :, start:start + width].reshape(B, n_frames, -1)))
            start += width
        x = mx.stack(bands, axis=2)                                       # (B, frames, K, hidden)
        for layer in self.layers:
            x = run_layer(layer, x, checkpoint=self.checkpoint_activations)
        x = self.final_norm(x)
        # Masks and the masked spectrum in fp32, whatever the compute dtype.
        masks = [estimate(x[:, :, k]).astype(mx.float32).reshape(B, n_frames, spec.n_sources, width, C, 2)
                 for k, (estimate, width) in enumerate(zip(self.mask_estimators, spec.widths))]
        mask = mx.concatenate(masks, axis=3).transpose(0, 2, 4, 3, 1, 5)  # (B, S, C, F, frames, 2)
        m_re, m_im = mask[..., 0], mask[..., 1]
        x_re, x_im = z.real[:, None], z.imag[:, None]                     # (B, 1, C, F, frames)
        separated = (m_re * x_re - m_im * x_im) + 1j * (m_re * x_im + m_im * x_re)
        return istft(separated, spec.n_fft, spec.hop, length=T)


def loss(model: BandSplitSeparator, batch):
    """batch: {"mixture": (B, C, T), "sources": (B, S, C, T)}; the spec's objective."""
    estimate = model(batch["mixture"])
    return separation_loss(estimate, batch["sources"], model.spec.loss, model.spec.mrstft_weight)

