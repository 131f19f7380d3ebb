"""Generate text with PyTorch: python -m torch_models.generate --checkpoint DIR --prompt "..." """
import sys

import numpy as np

from shared.cli.generate import main

# torch is imported when a model loads, not at import: --help answers at once.


def decoder(model, device):
    """next_logits(ids): feed new token ids through a fresh KV cache of `model` (in eval
    mode, on `device`) and return the last position's logits as float32 numpy."""
    import torch

    cache = model.make_cache()

    @torch.no_grad()
    def next_logits(ids: np.ndarray) -> np.ndarray:
        logits = model(torch.from_numpy(ids).to(device), cache)[0, -1]
        return logits.float().cpu().numpy()

    return next_logits


def load(checkpoint):
    from torch_models.models import load_model
    from torch_models.trainer import default_device

    model, config = load_model(checkpoint, expect="generation", what="an LM")
    device = default_device()
    model = model.to(device).eval()
    return decoder(model, device), model.spec


if __name__ == "__main__":
    sys.exit(main("torch", load))
