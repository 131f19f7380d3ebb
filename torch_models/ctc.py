"""CTC loss in PyTorch: a thin wrapper over torch.nn.functional.ctc_loss.

Mirrors mlx_models/ctc.py (same name and signature) and is the reference the MLX version
is tested against. The only difference from torch's own function is the layout: log_probs
arrive batch-first (B, T, V), like every other tensor in the models, and torch wants
(T, B, V). The dtype is kept: float32 in training (under autocast torch runs ctc_loss
in float32 by itself), float64 for the parity tests' high-precision reference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def ctc_loss(log_probs: torch.Tensor, targets: torch.Tensor, input_lengths, target_lengths,
             blank: int = 0, reduction: str = "mean", zero_infinity: bool = False) -> torch.Tensor:
    """log_probs (B, T, V), targets (B, S), input_lengths (B,) in 0..T, target_lengths
    (B,) in 0..S (tensors, numpy arrays or lists) -> loss: a scalar, or (B,) for "none"."""
    device = log_probs.device
    return F.ctc_loss(log_probs.transpose(0, 1),
                      torch.as_tensor(targets, dtype=torch.long, device=device),
                      torch.as_tensor(input_lengths, dtype=torch.long, device=device),
                      torch.as_tensor(target_lengths, dtype=torch.long, device=device),
                      blank=blank, reduction=reduction, zero_infinity=zero_infinity)
