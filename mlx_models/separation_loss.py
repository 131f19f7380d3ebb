"""Training objectives of the separation families (TF-Locoformer, band-split) in MLX:
L1 + multi-resolution STFT magnitude loss, and SI-SDR.

Mirrors torch_models/separation_loss.py. `mean` and `total` reduce axis by axis because
MLX's CPU reductions lose accuracy on long sums (see `mean`).
"""
from __future__ import annotations

import mlx.core as mx

from mlx_models.stft import stft
from shared.specs.tflocoformer import SI_SDR_EPS, mrstft_resolutions


def mean(x, axes):
    """mx.mean over `axes`, one axis at a time, innermost first. MLX's CPU reductions keep
    one float32 running sum per output, whose error grows with the count: over one 3 s,
    n_fft 2048, emb 96 feature map (258 x 1025 x 96 = 25M values) mx.mean is off by 5%.
    Axis by axis, no sum is longer than one axis (torch's reductions need no such help)."""
    for axis in sorted((a % x.ndim for a in axes), reverse=True):
        x = mx.mean(x, axis=axis, keepdims=True)
    return x


def total(x, axes):
    """mx.sum over `axes`, one axis at a time (see `mean`)."""
    for axis in sorted((a % x.ndim for a in axes), reverse=True):
        x = mx.sum(x, axis=axis, keepdims=True)
    return x


def si_sdr(reference, estimate, eps: float = SI_SDR_EPS):
    """SI-SDR in dB per (item, source), channels and time scored together as one signal
    (shared/eval/separation.py's definition): (..., C, T) -> (...)."""
    axes = (-2, -1)
    scale = total(estimate * reference, axes) / (total(reference * reference, axes) + eps)
    target = scale * reference
    sdr = 10 * mx.log10((total(target * target, axes) + eps) / (total((target - estimate) ** 2, axes) + eps))
    return sdr[..., 0, 0]


def l1_mrstft(estimate, reference, weight: float):
    """Mean |waveform error| + weight * mean over resolutions of mean ||STFT(est)| - |STFT(ref)||."""
    every = range(reference.ndim)
    loss = mean(mx.abs(estimate - reference), every)
    resolutions = mrstft_resolutions(reference.shape[-1])
    if weight and resolutions:
        spectral = [mean(mx.abs(mx.abs(stft(estimate, n, hop)) - mx.abs(stft(reference, n, hop))),
                         range(reference.ndim + 1)) for n, hop in resolutions]
        loss = loss + weight * sum(spectral) / len(spectral)
    return loss.reshape(())


def separation_loss(estimate, reference, objective: str, mrstft_weight: float):
    """The spec's objective on (B, S, C, T) waveforms: "si_sdr" (negated mean) or "l1_mrstft"."""
    if objective == "si_sdr":
        return -mx.mean(si_sdr(reference, estimate))
    return l1_mrstft(estimate, reference, mrstft_weight)
