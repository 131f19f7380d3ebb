"""Separate a song with MLX: python -m mlx_models.separate --checkpoint DIR song.wav --out DIR"""
import sys

import mlx.core as mx
import numpy as np

from mlx_models.models import load_model
from shared.cli.separate import main


def load(checkpoint):
    model, config = load_model(checkpoint, expect="separation", what="a separator")
    return chunk_runner(model), config


def chunk_runner(model):
    """run_chunks((N, C, T) float32 numpy) -> (N, S, C, T), in eval mode."""
    model.eval()

    def run_chunks(chunks: np.ndarray) -> np.ndarray:
        out = model(mx.array(chunks))
        return np.array(out.astype(mx.float32))

    return run_chunks


if __name__ == "__main__":
    sys.exit(main("mlx", load))
