"""The TF-Locoformer separator, as data: hyperparameters, manifest, counts, init.

TF-Locoformer (Saijo et al., IWAENC 2024; reference: merlresearch/tf-locoformer) works on
the STFT: real and imaginary parts of every audio channel are image channels, a 3x3
Conv2d + GroupNorm encodes them, blocks alternate a frequency path (sequences over bins,
one per frame) and a frame path (sequences over frames, one per bin), and a 3x3
ConvTranspose2d decodes one complex spectrum per source and channel. Each path is a
Macaron block: ConvSwiGLU FFN -> RoPE self-attention -> ConvSwiGLU FFN, each behind an
RMSGroupNorm and a residual connection.

Both `mlx_models/tflocoformer.py` and `torch_models/tflocoformer.py` build exactly the
parameters listed by `tflocoformer_manifest`, under the same names.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared import ranges as R
from shared.specs.base import (BIAS, CONV1D, CONV2D, CONV_TRANSPOSE1D, CONV_TRANSPOSE2D, LINEAR, NORM,
                               ParamSpec, SpecError, check_int, count_params, torch_default_init)

SOURCES = ("vocals", "drums", "bass", "other")  # MUSDB18 order of the decoder's outputs
LOSSES = ("l1_mrstft", "si_sdr")
MRSTFT_SIZES = (4096, 2048, 1024, 512, 256)  # the multi-resolution STFT loss's n_fft values
SI_SDR_EPS = 1e-8


def mrstft_resolutions(length: int) -> list[tuple[int, int]]:
    """(n_fft, hop) of the multi-resolution STFT loss for segments of `length` samples:
    the sizes that fit in the segment, hop = n_fft // 4."""
    return [(n, n // 4) for n in MRSTFT_SIZES if n <= length]


def check_separation_training(spec) -> None:
    """The fields both separators share: norm eps, dropout, objective."""
    if not spec.eps > 0:
        raise SpecError(f"model.eps must be > 0, got {spec.eps!r}")
    if not 0.0 <= spec.dropout < 1.0:
        raise SpecError(f"model.dropout must be in [0, 1), got {spec.dropout!r}")
    if spec.loss not in LOSSES:
        raise SpecError(f"model.loss must be one of {', '.join(LOSSES)}, got {spec.loss!r}")
    if not spec.mrstft_weight >= 0:
        raise SpecError(f"model.mrstft_weight must be >= 0, got {spec.mrstft_weight!r}")


@dataclass(frozen=True)
class TFLocoformerSpec:
    n_fft: int = 2048
    hop: int = 512
    audio_channels: int = 2                          # stereo
    n_sources: int = 4                               # vocals, drums, bass, other
    emb_dim: int = 128
    n_heads: int = 4
    attention_dim: int = 0                           # 0: same as emb_dim
    n_layers: int = 6
    ffn_hidden_dim: tuple[int, int] = (384, 384)     # (FFN before, FFN after attention)
    conv1d_kernel: int = 4
    conv1d_shift: int = 1
    norm_groups: int = 4
    eps: float = 1e-5
    dropout: float = 0.0
    attention_chunk: int = 0                         # queries per attention chunk; 0: all
    loss: str = "l1_mrstft"                          # training objective, see LOSSES
    mrstft_weight: float = 1.0

    RANGES = {  # shared/ranges.py; the rules between keys in __post_init__
        "n_fft": R.at_least(2, R.MAX_FFT), "hop": R.at_least(1, R.MAX_FFT),
        "audio_channels": R.at_least(1, R.MAX_CHANNELS), "n_sources": R.at_least(1, R.MAX_CHANNELS),
        "emb_dim": R.at_least(1, R.MAX_WIDTH), "n_heads": R.at_least(1, R.MAX_HEADS),
        "attention_dim": R.at_least(0, R.MAX_WIDTH), "n_layers": R.at_least(1, R.MAX_LAYERS),
        "ffn_hidden_dim": R.at_least(1, R.MAX_FFN), "conv1d_kernel": R.at_least(1, 1024),
        "conv1d_shift": R.at_least(1, 1024), "norm_groups": R.at_least(1, R.MAX_WIDTH),
        "eps": R.EPS, "dropout": R.FRACTION, "attention_chunk": R.at_least(0, R.MAX_SEQ),
        "mrstft_weight": R.WEIGHT,
    }

    def __post_init__(self):
        # YAML and checkpoint configs give a list; the spec stores a (hashable) tuple.
        if isinstance(self.ffn_hidden_dim, list):
            object.__setattr__(self, "ffn_hidden_dim", tuple(self.ffn_hidden_dim))
        positive = ("n_fft", "hop", "audio_channels", "n_sources", "emb_dim", "n_heads",
                    "n_layers", "conv1d_kernel", "conv1d_shift", "norm_groups")
        for name in positive:
            check_int(name, getattr(self, name), minimum=1)
        check_int("attention_dim", self.attention_dim, minimum=0)
        check_int("attention_chunk", self.attention_chunk, minimum=0)
        ffn = self.ffn_hidden_dim
        if (not isinstance(ffn, tuple) or len(ffn) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in ffn)):
            raise SpecError(f"model.ffn_hidden_dim must be two positive integers (the FFNs "
                            f"before and after attention), got {ffn!r}")
        if self.n_fft % 2:
            raise SpecError(f"model.n_fft must be even, got {self.n_fft}")
        if self.hop >= self.n_fft:   # the inverse STFT needs overlapping frames
            raise SpecError(f"model.hop ({self.hop}) must be < model.n_fft ({self.n_fft}): the "
                            f"inverse STFT needs overlapping frames (e.g. hop = n_fft / 4)")
        if self.emb_dim % self.norm_groups:
            raise SpecError(f"model.emb_dim ({self.emb_dim}) must be divisible by "
                            f"model.norm_groups ({self.norm_groups})")
        if self.attn_dim % self.n_heads:
            raise SpecError(f"model.attention_dim ({self.attn_dim}) must be divisible by "
                            f"model.n_heads ({self.n_heads})")
        if self.head_dim % 2:
            raise SpecError(f"head dim attention_dim/n_heads = {self.head_dim} must be even "
                            f"for RoPE; change model.attention_dim or model.n_heads")
        if self.conv1d_shift > self.conv1d_kernel:
            raise SpecError(f"model.conv1d_shift ({self.conv1d_shift}) must be <= "
                            f"model.conv1d_kernel ({self.conv1d_kernel})")
        check_separation_training(self)

    @property
    def attn_dim(self) -> int:
        """attention_dim with 0 resolved to emb_dim."""
        return self.attention_dim or self.emb_dim

    @property
    def head_dim(self) -> int:
        return self.attn_dim // self.n_heads

    @property
    def n_freq(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def out_channels(self) -> int:
        """Decoder channels: per source, real parts of every audio channel, then imaginary."""
        return self.n_sources * 2 * self.audio_channels


def _path_manifest(spec: TFLocoformerSpec, prefix: str) -> list[ParamSpec]:
    """One LocoformerBlock (a frequency or a frame path)."""
    D, A, k = spec.emb_dim, spec.attn_dim, spec.conv1d_kernel
    params = []
    for ffn, hidden in (("ffn1", spec.ffn_hidden_dim[0]), ("ffn2", spec.ffn_hidden_dim[1])):
        params += [
            ParamSpec(f"{prefix}{ffn}_norm.weight", (D,), NORM),
            ParamSpec(f"{prefix}{ffn}.conv1d.weight", (2 * hidden, D, k), CONV1D),
            ParamSpec(f"{prefix}{ffn}.conv1d.bias", (2 * hidden,), BIAS),
            ParamSpec(f"{prefix}{ffn}.deconv1d.weight", (hidden, D, k), CONV_TRANSPOSE1D),
            ParamSpec(f"{prefix}{ffn}.deconv1d.bias", (D,), BIAS),
        ]
        if ffn == "ffn1":
            params += [
                ParamSpec(f"{prefix}attn_norm.weight", (D,), NORM),
                ParamSpec(f"{prefix}attn.qkv.weight", (3 * A, D), LINEAR),
                ParamSpec(f"{prefix}attn.out_proj.weight", (D, A), LINEAR),
            ]
    return params


def tflocoformer_manifest(spec: TFLocoformerSpec) -> list[ParamSpec]:
    D, C2 = spec.emb_dim, 2 * spec.audio_channels
    params = [
        ParamSpec("encoder.weight", (D, C2, 3, 3), CONV2D),
        ParamSpec("encoder.bias", (D,), BIAS),
        ParamSpec("encoder_norm.weight", (D,), NORM),
        ParamSpec("encoder_norm.bias", (D,), BIAS),
    ]
    for i in range(spec.n_layers):
        for path in ("freq_path", "frame_path"):
            params += _path_manifest(spec, f"blocks.{i}.{path}.")
    params += [
        ParamSpec("decoder.weight", (D, spec.out_channels, 3, 3), CONV_TRANSPOSE2D),
        ParamSpec("decoder.bias", (spec.out_channels,), BIAS),
    ]
    return params


def tflocoformer_param_counts(spec: TFLocoformerSpec) -> dict[str, int]:
    """total: every parameter; blocks: the TF-Locoformer blocks alone (the encoder and
    decoder convolutions are a few thousand parameters)."""
    manifest = tflocoformer_manifest(spec)
    return {"total": count_params(manifest),
            "blocks": sum(p.numel for p in manifest if p.name.startswith("blocks."))}


def tflocoformer_init_weights(spec: TFLocoformerSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Initial weights in canonical layout, float32, identical for both backends: torch's
    defaults (shared/specs/base.py: torch_default_init)."""
    rng = np.random.default_rng(seed)
    return {p.name: torch_default_init(p, rng) for p in tflocoformer_manifest(spec)}
