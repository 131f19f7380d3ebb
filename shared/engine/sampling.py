"""Next-token sampling on numpy logits: the same for both backends."""
from __future__ import annotations

import numpy as np


def sample_next(logits: np.ndarray, temperature: float, top_p: float,
                rng: np.random.Generator) -> int:
    """Greedy at temperature 0; otherwise sample from the smallest set of tokens whose
    probability reaches `top_p` (nucleus sampling), after temperature scaling."""
    logits = np.asarray(logits, np.float64)
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits / temperature
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    if top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, top_p)) + 1]
        nucleus = np.zeros_like(probs)
        nucleus[keep] = probs[keep]
        probs = nucleus / nucleus.sum()
    return int(rng.choice(probs.size, p=probs))
