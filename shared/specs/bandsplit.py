"""The band-split dual-path separator, as data: hyperparameters, band tables, manifest,
counts, init.

BS-RoFormer (Lu et al., 2023) and BSMamba2 ("Mamba2 Meets Silence", Kim & Choi, 2025)
share one shape: the stereo STFT is cut into K frequency bands; each band's real and
imaginary parts (all bins, all channels) go through its own RMSNorm + Linear to `hidden`
features, giving a (frames x K x hidden) grid. A stack of DualPathModules models it:
sequences along time (one per band), then sequences across bands (one per frame), each a
pre-norm sequence layer with a residual. The sequence layer is either a bidirectional
Mamba2 (BSMamba2) or a RoPE transformer layer (BS-RoFormer). A final RMSNorm and one mask
MLP per band (Linear -> Tanh -> Linear -> GLU) give a complex mask for every source,
channel and bin of that band; the masks multiply the mixture's STFT, and an inverse STFT
gives one stereo waveform per source.

Band tables (widths in bins, low to high frequency, summing to n_fft // 2 + 1):
  "bs_roformer_62"  BS-RoFormer's split for n_fft 2048: 24x2, 12x4, 8x12, 8x24, 8x48, 128,
                    129 bins (62 bands).
  "48"              seed 002's 48 subbands, designed here on the same plan, a little
                    coarser below 2 kHz and above 8 kHz: 16x3, 8x6, 8x12, 8x24, 6x64, 128,
                    129 bins (48 bands; at 44.1 kHz the edges fall near 1, 2, 4, 8 and
                    16.5 kHz, as in the 62-band table).
  For another n_fft the table's band edges are scaled to the new number of bins (the same
  edge frequencies) and rounded; bands that round to no bins merge with their neighbour,
  so small n_fft values get fewer bands. `band_widths` gives an explicit table instead.

Both `mlx_models/bandsplit.py` and `torch_models/bandsplit.py` build exactly the
parameters listed by `bandsplit_manifest`, under the same names.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared import ranges as R
from shared.specs.base import (BIAS, CONV1D, LINEAR, NORM, OTHER, ParamSpec, SpecError, check_int,
                               count_params, torch_default_init)
from shared.specs.tflocoformer import LOSSES, SOURCES, check_separation_training  # noqa: F401  (same stems, same objectives)

SEQUENCE_LAYERS = ("mamba2", "transformer")
# Band tables for n_fft 2048 (1025 bins), as (count, width) runs.
BAND_TABLES_2048 = {
    "bs_roformer_62": ((24, 2), (12, 4), (8, 12), (8, 24), (8, 48), (1, 128), (1, 129)),
    "48": ((16, 3), (8, 6), (8, 12), (8, 24), (6, 64), (1, 128), (1, 129)),
}
# Mamba2's initial step sizes: dt ~ log-uniform in [DT_MIN, DT_MAX], stored through an
# inverse softplus in dt_bias; A = -exp(A_log) with A_log = log(U(A_MIN, A_MAX)).
DT_MIN, DT_MAX, DT_FLOOR = 1e-3, 1e-1, 1e-4
A_MIN, A_MAX = 1.0, 16.0


def table_widths(name: str) -> tuple[int, ...]:
    """A named table's band widths for n_fft 2048."""
    return tuple(w for count, width in BAND_TABLES_2048[name] for w in [width] * count)


def scale_band_widths(widths: tuple[int, ...], n_freq: int) -> tuple[int, ...]:
    """Band widths over `sum(widths)` bins rescaled to `n_freq` bins: every band edge is
    moved to the same fraction of the spectrum and rounded; empty bands disappear."""
    edges = np.concatenate([[0], np.cumsum(widths)]) * (n_freq / sum(widths))
    edges = np.unique(np.round(edges).astype(int))
    return tuple(int(w) for w in np.diff(edges))


@dataclass(frozen=True)
class BandSplitSpec:
    n_fft: int = 2048
    hop: int = 512
    audio_channels: int = 2                  # stereo
    n_sources: int = 4                       # vocals, drums, bass, other (SOURCES order)
    bands: str = "bs_roformer_62"            # a BAND_TABLES_2048 name, scaled to n_fft
    band_widths: tuple[int, ...] = ()        # explicit widths in bins; overrides `bands`
    hidden: int = 256                        # features per (frame, band)
    n_layers: int = 6                        # DualPathModules
    sequence_layer: str = "mamba2"           # "mamba2" (BSMamba2) | "transformer" (BS-RoFormer)
    # Mamba2 (each direction of the bidirectional layer)
    d_state: int = 64
    d_conv: int = 4
    expand: int = 2
    head_dim: int = 64
    chunk_size: int = 64                     # SSD chunk length (quadratic inside, recurrent across)
    # RoPE transformer
    n_heads: int = 8
    ffn_mult: int = 4
    # mask estimation
    mask_mlp_hidden: int = 0                 # 0: 4 * hidden, as BS-RoFormer
    eps: float = 1e-5
    dropout: float = 0.0
    loss: str = "l1_mrstft"                  # training objective, see LOSSES
    mrstft_weight: float = 1.0

    RANGES = {  # shared/ranges.py; the rules between keys in __post_init__
        "n_fft": R.at_least(2, R.MAX_FFT), "hop": R.at_least(1, R.MAX_FFT),
        "audio_channels": R.at_least(1, R.MAX_CHANNELS), "n_sources": R.at_least(1, R.MAX_CHANNELS),
        "band_widths": R.at_least(1, R.MAX_FFT // 2 + 1), "hidden": R.at_least(1, R.MAX_WIDTH),
        "n_layers": R.at_least(1, R.MAX_LAYERS), "d_state": R.at_least(1, 4096),
        "d_conv": R.at_least(1, 1024), "expand": R.at_least(1, 64),
        "head_dim": R.at_least(1, R.MAX_WIDTH), "chunk_size": R.at_least(1, R.MAX_SEQ),
        "n_heads": R.at_least(1, R.MAX_HEADS), "ffn_mult": R.at_least(1, 64),
        "mask_mlp_hidden": R.at_least(0, R.MAX_FFN), "eps": R.EPS, "dropout": R.FRACTION,
        "mrstft_weight": R.WEIGHT,
    }

    def __post_init__(self):
        # YAML and checkpoint configs give a list; the spec stores a (hashable) tuple.
        if isinstance(self.band_widths, list):
            object.__setattr__(self, "band_widths", tuple(self.band_widths))
        for name in ("n_fft", "hop", "audio_channels", "n_sources", "hidden", "n_layers",
                     "d_state", "d_conv", "expand", "head_dim", "chunk_size", "n_heads", "ffn_mult"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("mask_mlp_hidden", self.mask_mlp_hidden, minimum=0)
        if self.n_fft % 2:
            raise SpecError(f"model.n_fft must be even, got {self.n_fft}")
        if self.hop >= self.n_fft:   # the inverse STFT needs overlapping frames
            raise SpecError(f"model.hop ({self.hop}) must be < model.n_fft ({self.n_fft}): the "
                            f"inverse STFT needs overlapping frames (e.g. hop = n_fft / 4)")
        if self.band_widths:
            w = self.band_widths
            if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in w):
                raise SpecError(f"model.band_widths must be positive integers (bins per band), got {w!r}")
            if sum(w) != self.n_freq:
                raise SpecError(f"model.band_widths sum to {sum(w)} bins, but n_fft {self.n_fft} has "
                                f"n_fft // 2 + 1 = {self.n_freq}; widths must cover every bin once")
        elif self.bands not in BAND_TABLES_2048:
            raise SpecError(f"model.bands must be one of {', '.join(BAND_TABLES_2048)} (or give "
                            f"model.band_widths), got {self.bands!r}")
        if self.sequence_layer not in SEQUENCE_LAYERS:
            raise SpecError(f"model.sequence_layer must be one of {', '.join(SEQUENCE_LAYERS)}, "
                            f"got {self.sequence_layer!r}")
        # Only the chosen sequence layer's settings must fit together.
        if self.sequence_layer == "mamba2" and self.d_inner % self.head_dim:
            raise SpecError(f"model.expand * model.hidden = {self.d_inner} must be divisible by "
                            f"model.head_dim ({self.head_dim}) (Mamba2 heads)")
        if self.sequence_layer == "transformer":
            if self.hidden % self.n_heads:
                raise SpecError(f"model.hidden ({self.hidden}) must be divisible by model.n_heads "
                                f"({self.n_heads})")
            if (self.hidden // self.n_heads) % 2:
                raise SpecError(f"attention head dim hidden/n_heads = {self.hidden // self.n_heads} "
                                f"must be even for RoPE; change model.hidden or model.n_heads")
        check_separation_training(self)

    @property
    def n_freq(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def widths(self) -> tuple[int, ...]:
        """Bins per band, low to high; sums to n_freq."""
        if self.band_widths:
            return self.band_widths
        table = table_widths(self.bands)
        return table if self.n_freq == sum(table) else scale_band_widths(table, self.n_freq)

    @property
    def n_bands(self) -> int:
        return len(self.widths)

    @property
    def band_features(self) -> tuple[int, ...]:
        """Inputs of each band's projection: bins x audio channels x (real, imag)."""
        return tuple(w * self.audio_channels * 2 for w in self.widths)

    @property
    def mask_hidden(self) -> int:
        return self.mask_mlp_hidden or 4 * self.hidden

    @property
    def d_inner(self) -> int:
        """Mamba2's expanded width."""
        return self.expand * self.hidden

    @property
    def mamba_heads(self) -> int:
        return self.d_inner // self.head_dim

    @property
    def conv_channels(self) -> int:
        """Mamba2's depthwise conv runs over x, B and C (one group of B, C)."""
        return self.d_inner + 2 * self.d_state


def _mamba2_manifest(spec: BandSplitSpec, prefix: str) -> list[ParamSpec]:
    """One direction of the bidirectional Mamba2 layer (Mamba2's own names)."""
    D, E, H = spec.hidden, spec.d_inner, spec.mamba_heads
    in_proj = 2 * E + 2 * spec.d_state + H          # z, x, B, C, dt
    return [
        ParamSpec(f"{prefix}in_proj.weight", (in_proj, D), LINEAR),
        ParamSpec(f"{prefix}conv1d.weight", (spec.conv_channels, 1, spec.d_conv), CONV1D),
        ParamSpec(f"{prefix}conv1d.bias", (spec.conv_channels,), BIAS),
        ParamSpec(f"{prefix}dt_bias", (H,), OTHER),
        ParamSpec(f"{prefix}A_log", (H,), OTHER),
        ParamSpec(f"{prefix}D", (H,), OTHER),
        ParamSpec(f"{prefix}norm.weight", (E,), NORM),
        ParamSpec(f"{prefix}out_proj.weight", (D, E), LINEAR),
    ]


def _sequence_layer_manifest(spec: BandSplitSpec, prefix: str) -> list[ParamSpec]:
    D = spec.hidden
    if spec.sequence_layer == "mamba2":
        return ([ParamSpec(f"{prefix}norm.weight", (D,), NORM)]
                + _mamba2_manifest(spec, f"{prefix}forward_mixer.")
                + _mamba2_manifest(spec, f"{prefix}backward_mixer."))
    F = spec.ffn_mult * D
    return [
        ParamSpec(f"{prefix}attn_norm.weight", (D,), NORM),
        ParamSpec(f"{prefix}attn.qkv.weight", (3 * D, D), LINEAR),
        ParamSpec(f"{prefix}attn.out_proj.weight", (D, D), LINEAR),
        ParamSpec(f"{prefix}ffn_norm.weight", (D,), NORM),
        ParamSpec(f"{prefix}ffn.fc1.weight", (F, D), LINEAR),
        ParamSpec(f"{prefix}ffn.fc1.bias", (F,), BIAS),
        ParamSpec(f"{prefix}ffn.fc2.weight", (D, F), LINEAR),
        ParamSpec(f"{prefix}ffn.fc2.bias", (D,), BIAS),
    ]


def bandsplit_manifest(spec: BandSplitSpec) -> list[ParamSpec]:
    D, M = spec.hidden, spec.mask_hidden
    params = []
    for k, n_in in enumerate(spec.band_features):
        params += [ParamSpec(f"band_split.{k}.norm.weight", (n_in,), NORM),
                   ParamSpec(f"band_split.{k}.proj.weight", (D, n_in), LINEAR),
                   ParamSpec(f"band_split.{k}.proj.bias", (D,), BIAS)]
    for i in range(spec.n_layers):
        for path in ("time_layer", "band_layer"):
            params += _sequence_layer_manifest(spec, f"layers.{i}.{path}.")
    params.append(ParamSpec("final_norm.weight", (D,), NORM))
    for k, n_in in enumerate(spec.band_features):
        n_out = spec.n_sources * n_in                 # (sources, bins, channels, re/im)
        params += [ParamSpec(f"mask_estimators.{k}.fc1.weight", (M, D), LINEAR),
                   ParamSpec(f"mask_estimators.{k}.fc1.bias", (M,), BIAS),
                   ParamSpec(f"mask_estimators.{k}.fc2.weight", (2 * n_out, M), LINEAR),  # GLU halves
                   ParamSpec(f"mask_estimators.{k}.fc2.bias", (2 * n_out,), BIAS)]
    return params


def bandsplit_param_counts(spec: BandSplitSpec) -> dict[str, int]:
    """total; band_split (per-band norm + projection); dual_path (the DualPathModules and
    the final norm); mask_estimators (the per-band mask MLPs)."""
    manifest = bandsplit_manifest(spec)

    def part(prefix):
        return sum(p.numel for p in manifest if p.name.startswith(prefix))
    return {"total": count_params(manifest), "band_split": part("band_split."),
            "dual_path": part("layers.") + part("final_norm."),
            "mask_estimators": part("mask_estimators.")}


def bandsplit_init_weights(spec: BandSplitSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Initial weights in canonical layout, float32, identical for both backends.

    Linear and conv weights: torch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in =
    prod(shape[1:]) (the depthwise conv's fan_in is its kernel size). Biases zeros, norm
    scales ones. Mamba2's own parameters as in its reference: A_log = log U(1, 16);
    dt_bias = softplus^-1(dt), dt log-uniform in [1e-3, 1e-1] (floored at 1e-4); D = 1."""
    rng = np.random.default_rng(seed)
    weights = {}
    for p in bandsplit_manifest(spec):
        leaf = p.name.rsplit(".", 1)[-1]
        if leaf == "A_log":
            value = np.log(rng.uniform(A_MIN, A_MAX, p.shape))
        elif leaf == "dt_bias":
            dt = np.exp(rng.uniform(np.log(DT_MIN), np.log(DT_MAX), p.shape))
            dt = np.maximum(dt, DT_FLOOR)
            value = dt + np.log(-np.expm1(-dt))         # softplus(value) == dt
        elif leaf == "D":
            value = np.ones(p.shape)
        else:
            value = torch_default_init(p, rng)
        weights[p.name] = value.astype(np.float32)
    return weights


# ----------------------------------------------------------------------------- FLOPs
def _mamba2_forward_flops(spec: BandSplitSpec, L: int) -> int:
    """One Mamba2 direction over one sequence of length L, forward: the projections, the
    depthwise conv, and the SSD scan's matmuls as ssd_scan computes them (whole Q x Q
    blocks per chunk, the sequence padded to whole chunks). Element-wise work (exp, SiLU,
    the decay masks, norms) is not counted, as usual for FLOP rates."""
    D, E, H, P, S = spec.hidden, spec.d_inner, spec.mamba_heads, spec.head_dim, spec.d_state
    Q = min(spec.chunk_size, L)
    c = -(-L // Q)
    proj = 2 * L * D * (2 * E + 2 * S + H) + 2 * L * E * D       # in_proj, out_proj
    conv = 2 * L * spec.conv_channels * spec.d_conv
    ssd = (2 * c * Q * Q * S                 # C B^T, one group shared by the heads
           + 2 * H * c * Q * Q * P           # (C B^T * decay) x
           + 2 * H * c * Q * P * S           # chunk end states
           + 2 * H * c * c * P * S           # states carried between chunks
           + 2 * H * c * Q * S * P)          # C . entering state
    return proj + conv + ssd


def _transformer_forward_flops(spec: BandSplitSpec, L: int) -> int:
    """One RoPE transformer layer over one sequence of length L, forward: qkv, out_proj,
    the FFN, and attention's QK^T and PV over the full (non-causal) L x L."""
    D, F = spec.hidden, spec.ffn_mult * spec.hidden
    return 2 * L * D * 3 * D + 2 * L * D * D + 2 * 2 * L * D * F + 2 * 2 * L * L * D


def bandsplit_forward_flops(spec: BandSplitSpec, n_samples: int) -> int:
    """Matmul FLOPs (2 per multiply-add) of one forward pass on one example of n_samples
    audio samples: band projections, the dual-path stack (a sequence layer along the
    frames of each band, then across the bands of each frame), the mask MLPs. The
    STFTs and element-wise work are not counted."""
    T, K, D, M = 1 + n_samples // spec.hop, spec.n_bands, spec.hidden, spec.mask_hidden
    if spec.sequence_layer == "mamba2":
        def layer(L):
            return 2 * _mamba2_forward_flops(spec, L)       # two directions
    else:
        def layer(L):
            return _transformer_forward_flops(spec, L)
    band_split = sum(2 * T * n * D for n in spec.band_features)
    dual_path = spec.n_layers * (K * layer(T) + T * layer(K))
    masks = sum(2 * T * (D * M + M * 2 * spec.n_sources * n) for n in spec.band_features)
    return band_split + dual_path + masks


def bandsplit_train_flops(spec: BandSplitSpec, n_samples: int) -> int:
    """Training FLOPs of one example: forward + backward = 3 x forward."""
    return 3 * bandsplit_forward_flops(spec, n_samples)


def bandsplit_train_flops_per_second(config) -> float:
    """Training FLOPs per audio second (the family's bench unit) of a RunConfig."""
    return bandsplit_train_flops(config.model, config.data.segment_samples) / config.data.segment_seconds
