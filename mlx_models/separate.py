"""Separate a song with MLX: python -m mlx_models.separate --checkpoint DIR song.wav --out DIR"""
import sys

import numpy as np

from shared.cli.separate import main

# mlx.core is imported when a model loads, not at import: --help answers at once.


def load(checkpoint):
    from mlx_models.models import load_model

    model, config = load_model(checkpoint, expect="separation", what="a separator")
    return chunk_runner(model), config


def chunk_runner(model):
    """run_chunks((N, C, T) float32 numpy) -> (N, S, C, T), in eval mode."""
    import mlx.core as mx

    model.eval()

    def run_chunks(chunks: np.ndarray) -> np.ndarray:
        out = model(mx.array(chunks))
        return np.array(out.astype(mx.float32))

    return run_chunks


if __name__ == "__main__":
    sys.exit(main("mlx", load))
