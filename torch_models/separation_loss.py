"""Training objectives of the separation families (TF-Locoformer, band-split) in PyTorch:
L1 + multi-resolution STFT magnitude loss, and SI-SDR.

Mirrors mlx_models/separation_loss.py.
"""
from __future__ import annotations

import torch

from shared.specs.tflocoformer import SI_SDR_EPS, mrstft_resolutions
from torch_models.stft import stft


def si_sdr(reference, estimate, eps: float = SI_SDR_EPS):
    """SI-SDR in dB per (item, source), channels and time scored together as one signal
    (shared/eval/separation.py's definition): (..., C, T) -> (...)."""
    dims = (-2, -1)
    scale = torch.sum(estimate * reference, dim=dims) / (torch.sum(reference * reference, dim=dims) + eps)
    target = scale[..., None, None] * reference
    return 10 * torch.log10((torch.sum(target * target, dim=dims) + eps)
                            / (torch.sum((target - estimate) ** 2, dim=dims) + eps))


def l1_mrstft(estimate, reference, weight: float):
    """Mean |waveform error| + weight * mean over resolutions of mean ||STFT(est)| - |STFT(ref)||."""
    loss = torch.mean(torch.abs(estimate - reference))
    resolutions = mrstft_resolutions(reference.shape[-1])
    if weight and resolutions:
        spectral = [torch.mean(torch.abs(stft(estimate, n, hop).abs() - stft(reference, n, hop).abs()))
                    for n, hop in resolutions]
        loss = loss + weight * sum(spectral) / len(spectral)
    return loss


def separation_loss(estimate, reference, objective: str, mrstft_weight: float):
    """The spec's objective on (B, S, C, T) waveforms: "si_sdr" (negated mean) or "l1_mrstft"."""
    if objective == "si_sdr":
        return -torch.mean(si_sdr(reference, estimate))
    return l1_mrstft(estimate, reference, mrstft_weight)
