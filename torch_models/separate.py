"""Separate a song with PyTorch: python -m torch_models.separate --checkpoint DIR song.wav --out DIR"""
import sys

import numpy as np

from shared.cli.separate import main

# torch is imported when a model loads, not at import: --help answers at once.


def load(checkpoint):
    from torch_models.models import load_model
    from torch_models.trainer import default_device

    model, config = load_model(checkpoint, expect="separation", what="a separator")
    return chunk_runner(model, default_device()), config


def chunk_runner(model, device):
    """run_chunks((N, C, T) float32 numpy) -> (N, S, C, T), in eval mode on `device`."""
    import torch

    model = model.to(device).eval()

    @torch.no_grad()
    def run_chunks(chunks: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(chunks).to(device)).float().cpu().numpy()

    return run_chunks


if __name__ == "__main__":
    sys.exit(main("torch", load))
