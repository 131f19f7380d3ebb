"""Band-split dual-path music separator in PyTorch (BS-RoFormer / BSMamba2 shape), stereo
in, one stereo waveform per source out. See shared/specs/bandsplit.py for the architecture.

Mirrors mlx_models/bandsplit.py: same classes, same attribute names, so both parameter
trees flatten to the names in shared.specs.bandsplit.bandsplit_manifest. Activations are
(B, frames, bands, hidden) between the band split and the mask estimators.

The Mamba2 layer is plain torch: the chunked SSD algorithm of the Mamba2 paper ("state
space duality", Dao & Gu 2024) -- a masked quadratic form inside each chunk and a
recurrence of states between chunks -- with no custom kernel (no mamba_ssm, no Triton).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from shared.specs.bandsplit import BandSplitSpec
from torch_models.separation_loss import separation_loss
from torch_models.stft import istft, stft
from torch_models.tflocoformer import RoPE


# ----------------------------------------------------------------------------- SSD scan
def segsum(a):
    """(..., T) -> (..., T, T): out[i, j] = a[j+1] + ... + a[i] for j <= i, -inf above the
    diagonal (exp gives the lower-triangular decay matrix). Built by masking and one
    cumsum, not as cumsum[i] - cumsum[j]: over many chunks the cumulative decay grows
    large, and a difference of two large sums would lose the small decays that matter
    (the Mamba2 reference's stable form)."""
    T = a.shape[-1]
    below = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(-1)
    on_or_below = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(0)
    x = torch.cumsum(torch.where(below, a[..., :, None], 0.0), dim=-2)
    return torch.where(on_or_below, x, -torch.inf)


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
        pad = c * Q - L
        x, a = F.pad(x, (0, 0, 0, 0, 0, pad)), F.pad(a, (0, 0, 0, pad))
        B, C = F.pad(B, (0, 0, 0, pad)), F.pad(C, (0, 0, 0, pad))
    x = x.reshape(N, c, Q, H, P).permute(0, 3, 1, 2, 4)          # (N, H, c, Q, P)
    a = a.reshape(N, c, Q, H).permute(0, 3, 1, 2)                # (N, H, c, Q)
    B, C = B.reshape(N, 1, c, Q, S), C.reshape(N, 1, c, Q, S)    # one group for all heads
    a_cum = torch.cumsum(a, dim=-1)
    # 1. Inside each chunk, the quadratic ("attention-like") form: y_i = sum_{j<=i}
    #    (C_i . B_j) exp(a_{j+1} + ... + a_i) x_j. The decays are differences of the
    #    chunk's own cumulative sums, as Mamba2's kernels compute them: no sum is longer
    #    than a chunk, and it saves segsum's two extra passes over (Q x Q).
    #    The causal mask is added (0 on and below the diagonal, -inf above) rather than
    #    selected with `where`: one add instead of a select, and its gradient is the
    #    incoming one unchanged (no second select over the (Q x Q) blocks in the backward).
    above = torch.full((Q, Q), -torch.inf, dtype=a_cum.dtype, device=x.device).triu(1)
    decay = torch.exp((a_cum[..., :, None] + above) - a_cum[..., None, :])
    y = ((C @ B.transpose(-1, -2)) * decay) @ x                   # (N, H, c, Q, P)
    # 2. Each chunk's own contribution to the state at its end.
    decay_to_end = torch.exp(a_cum[..., -1:] - a_cum)             # (N, H, c, Q)
    states = (x * decay_to_end[..., None]).transpose(-1, -2) @ B  # (N, H, c, P, S)
    # 3. The state entering chunk k: chunk m < k's end state decayed through chunks
    #    m+1..k-1 -- the recurrence between chunks, written as one (c x c) matmul
    #    (segsum's stable form: these sums span the whole sequence).
    chunk_decay = F.pad(a_cum[..., -1], (1, 0))                              # (N, H, c+1)
    carry = torch.exp(segsum(chunk_decay))[..., :c, 1:]                       # (N, H, c, c)
    entering = (carry @ states.reshape(N, H, c, P * S)).reshape(N, H, c, P, S)
    # 4. What the entering state adds at each position, decayed from the chunk start.
    y = y + (C @ entering.transpose(-1, -2)) * torch.exp(a_cum)[..., None]
    return y.permute(0, 2, 3, 1, 4).reshape(N, c * Q, H, P)[:, :L]


# ----------------------------------------------------------------------------- Mamba2
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
        # Depthwise and causal; holds the parameters, _causal_conv computes it.
        self.conv1d = nn.Conv1d(spec.conv_channels, spec.conv_channels, spec.d_conv,
                                groups=spec.conv_channels, padding=spec.d_conv - 1)
        self.dt_bias = nn.Parameter(torch.zeros(H))
        self.A_log = nn.Parameter(torch.zeros(H))
        self.D = nn.Parameter(torch.ones(H))
        self.norm = nn.RMSNorm(E, eps=spec.eps)
        self.out_proj = nn.Linear(E, D, bias=False)

    def _causal_conv(self, xBC):                           # (N, L, channels)
        """The depthwise causal conv as K shifted multiply-adds, as the MLX layer computes
        it: on the CPU, the grouped Conv1d's backward (mkldnn) costs more than the rest of
        the layer's element-wise work. Same parameters (conv1d.weight, conv1d.bias)."""
        weight, L = self.conv1d.weight[:, 0], xBC.shape[1]  # (channels, K)
        K = weight.shape[1]
        padded = F.pad(xBC, (0, 0, K - 1, 0))
        out = self.conv1d.bias
        for k in range(K):
            out = out + padded[:, k:k + L] * weight[:, k]
        return out

    def forward(self, u):                                  # (N, L, hidden)
        N, L, _ = u.shape
        E, S = self.d_inner, self.d_state
        z, xBC, dt = torch.split(self.in_proj(u), [E, E + 2 * S, self.heads], dim=-1)
        xBC = F.silu(self._causal_conv(xBC))
        # The scan runs in float32 whatever the compute dtype: exp and cumsum of decays in
        # bf16 lose the state (Mamba2's reference keeps dt and A in fp32 too).
        with torch.autocast(u.device.type, enabled=False):
            x = xBC[..., :E].float().reshape(N, L, self.heads, self.head_dim)
            B, C = xBC[..., E:E + S].float(), xBC[..., E + S:].float()
            dt = F.softplus(dt.float() + self.dt_bias.float())               # (N, L, H)
            A = -torch.exp(self.A_log.float())
            y = ssd_scan(x * dt[..., None], dt * A, B, C, self.chunk)
            y = y + x * self.D.float()[:, None]
        y = y.reshape(N, L, E).to(xBC.dtype)
        return self.out_proj(self.norm(y * F.silu(z)))


class BiMamba2Layer(nn.Module):
    """Pre-norm bidirectional Mamba2 with a residual: one Mamba2 reads the sequence
    forwards, a second (its own weights) reads it reversed; their outputs are summed."""

    def __init__(self, spec: BandSplitSpec):
        super().__init__()
        self.norm = nn.RMSNorm(spec.hidden, eps=spec.eps)
        self.forward_mixer = Mamba2(spec)
        self.backward_mixer = Mamba2(spec)
        self.dropout = nn.Dropout(spec.dropout)

    def forward(self, x):                                  # (N, L, hidden)
        h = self.norm(x)
        y = self.forward_mixer(h) + self.backward_mixer(h.flip(1)).flip(1)
        return x + self.dropout(y)


# ----------------------------------------------------------------------------- transformer
class Attention(nn.Module):
    """Non-causal self-attention with RoPE over positions 0..L-1 (interleaved pairs, the
    rotary_embedding_torch convention BS-RoFormer uses)."""

    def __init__(self, spec: BandSplitSpec):
        super().__init__()
        D = spec.hidden
        self.n_heads, self.head_dim = spec.n_heads, D // spec.n_heads
        self.qkv = nn.Linear(D, 3 * D, bias=False)
        self.out_proj = nn.Linear(D, D, bias=False)
        self.rope = RoPE(self.head_dim, base=10000.0)

    def forward(self, x):
        N, L, _ = x.shape
        qkv = self.qkv(x).reshape(N, L, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = self.rope(qkv[0]), self.rope(qkv[1]), qkv[2]          # (N, heads, L, hd)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.head_dim ** -0.5)
        return self.out_proj(out.transpose(1, 2).reshape(N, L, -1))


class FeedForward(nn.Module):
    def __init__(self, spec: BandSplitSpec):
        super().__init__()
        self.fc1 = nn.Linear(spec.hidden, spec.ffn_mult * spec.hidden)
        self.fc2 = nn.Linear(spec.ffn_mult * spec.hidden, spec.hidden)
        self.dropout = nn.Dropout(spec.dropout)

    def forward(self, x):
        return self.fc2(self.dropout(F.gelu(self.fc1(x))))


class TransformerLayer(nn.Module):
    """Pre-norm RoPE transformer layer: x + attn(norm(x)), then x + FFN(norm(x))."""

    def __init__(self, spec: BandSplitSpec):
        super().__init__()
        self.attn_norm = nn.RMSNorm(spec.hidden, eps=spec.eps)
        self.attn = Attention(spec)
        self.ffn_norm = nn.RMSNorm(spec.hidden, eps=spec.eps)
        self.ffn = FeedForward(spec)
        self.dropout = nn.Dropout(spec.dropout)

    def forward(self, x):
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

    def forward(self, x):
        B, T, K, D = x.shape
        x = self.time_layer(x.transpose(1, 2).reshape(B * K, T, D))
        x = x.reshape(B, K, T, D).transpose(1, 2)
        return self.band_layer(x.reshape(B * T, K, D)).reshape(B, T, K, D)


class BandProjection(nn.Module):
    """One band's (bins x channels x re/im) features -> hidden: RMSNorm + Linear."""

    def __init__(self, n_in: int, spec: BandSplitSpec):
        super().__init__()
        self.norm = nn.RMSNorm(n_in, eps=spec.eps)
        self.proj = nn.Linear(n_in, spec.hidden)

    def forward(self, x):
        return self.proj(self.norm(x))


class MaskEstimator(nn.Module):
    """One band's hidden features -> its complex masks: Linear -> Tanh -> Linear -> GLU."""

    def __init__(self, n_out: int, spec: BandSplitSpec):
        super().__init__()
        self.fc1 = nn.Linear(spec.hidden, spec.mask_hidden)
        self.fc2 = nn.Linear(spec.mask_hidden, 2 * n_out)

    def forward(self, x):
        value, gate = self.fc2(torch.tanh(self.fc1(x))).chunk(2, dim=-1)
        return value * torch.sigmoid(gate)


class BandSplitSeparator(nn.Module):
    def __init__(self, spec: BandSplitSpec):
        super().__init__()
        self.spec = spec
        self.band_split = nn.ModuleList(BandProjection(n, spec) for n in spec.band_features)
        self.layers = nn.ModuleList(DualPathModule(spec) for _ in range(spec.n_layers))
        self.final_norm = nn.RMSNorm(spec.hidden, eps=spec.eps)
        self.mask_estimators = nn.ModuleList(MaskEstimator(spec.n_sources * n, spec)
                                             for n in spec.band_features)
        # Set by the trainer: recompute each DualPathModule in the backward pass instead
        # of storing its activations.
        self.checkpoint_activations = False

    def forward(self, mixture):
        """(B, audio_channels, T) waveform -> (B, n_sources, audio_channels, T)."""
        spec = self.spec
        B, C, T = mixture.shape
        z = stft(mixture, spec.n_fft, spec.hop)                           # (B, C, F, frames)
        n_frames = z.shape[-1]
        # Per (frame, bin): channel-major (real, imag) pairs; a band is a run of bins.
        feats = torch.view_as_real(z).permute(0, 3, 2, 1, 4)              # (B, frames, F, C, 2)
        bands, start = [], 0
        for project, width in zip(self.band_split, spec.widths):
            bands.append(project(feats[:, :, start:start + width].reshape(B, n_frames, -1)))
            start += width
        x = torch.stack(bands, dim=2)                                     # (B, frames, K, hidden)
        for layer in self.layers:
            if self.checkpoint_activations and self.training:
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
        x = self.final_norm(x)
        # Masks and the masked spectrum in fp32 (torch.complex takes no bf16 under autocast).
        masks = [estimate(x[:, :, k]).float().reshape(B, n_frames, spec.n_sources, width, C, 2)
                 for k, (estimate, width) in enumerate(zip(self.mask_estimators, spec.widths))]
        mask = torch.cat(masks, dim=3).permute(0, 2, 4, 3, 1, 5)          # (B, S, C, F, frames, 2)
        m_re, m_im = mask[..., 0], mask[..., 1]
        x_re, x_im = z.real[:, None], z.imag[:, None]                     # (B, 1, C, F, frames)
        separated = torch.complex(m_re * x_re - m_im * x_im, m_re * x_im + m_im * x_re)
        return istft(separated, spec.n_fft, spec.hop, length=T)


def loss(model: BandSplitSeparator, batch):
    """batch: {"mixture": (B, C, T), "sources": (B, S, C, T)}; the spec's objective."""
    estimate = model(batch["mixture"])
    return separation_loss(estimate, batch["sources"], model.spec.loss, model.spec.mrstft_weight)
