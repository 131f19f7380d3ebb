"""Learning-rate schedule: a pure function of the step, identical on both backends."""
from __future__ import annotations

import math


def lr_at(step: int, learning_rate: float, min_lr: float, warmup_steps: int,
          max_steps: int) -> float:
    """Linear warmup from lr/warmup to lr over `warmup_steps`, then cosine to `min_lr`
    at `max_steps` (and `min_lr` after)."""
    if step < warmup_steps:
        return learning_rate * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr + 0.5 * (learning_rate - min_lr) * (1 + math.cos(math.pi * progress))
