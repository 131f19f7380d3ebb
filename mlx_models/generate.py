"""Generate text with MLX: python -m mlx_models.generate --checkpoint DIR --prompt "..." """
import sys

import numpy as np

from shared.cli.generate import main

# mlx.core is imported when a model loads, not at import: --help answers at once.


def decoder(model):
    """next_logits(ids): feed new token ids through a fresh KV cache of `model` (in eval
    mode) and return the last position's logits as float32 numpy."""
    import mlx.core as mx

    cache = model.make_cache()

    def next_logits(ids: np.ndarray) -> np.ndarray:
        logits = model(mx.array(ids), cache)[0, -1]
        return np.array(logits.astype(mx.float32))

    return next_logits


def load(checkpoint):
    from mlx_models.models import load_model

    model, config = load_model(checkpoint, expect="generation", what="an LM")
    model.eval()
    return decoder(model), model.spec


if __name__ == "__main__":
    sys.exit(main("mlx", load))
