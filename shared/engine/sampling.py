"""Next-token sampling on numpy logits: the reference the backends' own token pickers
(mlx_models.generate, torch_models.generate, which keep logits on their framework) are
tested against."""
from __future__ import annotations

import numpy as np


def nucleus_probs(logits: np.ndarray, temperature: float, top_p: float) -> np.ndarray:
    """The distribution sampled at temperature > 0: softmax(logits / temperature), kept on
    the smallest set of tokens whose probability reaches `top_p` (the nucleus: a token is
    in it when the tokens ranked above it hold less than `top_p`), renormalised."""
    z = np.asarray(logits, np.float64) / temperature
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    if top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, top_p)) + 1]
        nucleus = np.zeros_like(probs)
        nucleus[keep] = probs[keep]
        probs = nucleus / nucleus.sum()
    return probs


def sample_next(logits: np.ndarray, temperature: float, top_p: float,
                rng: np.random.Generator) -> int:
    """Greedy at temperature 0; otherwise a draw from nucleus_probs."""
    if temperature <= 0:
        return int(np.argmax(np.asarray(logits)))
    probs = nucleus_probs(logits, temperature, top_p)
    return int(rng.choice(probs.size, p=probs))
