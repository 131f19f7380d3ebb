"""Evaluate a checkpoint with PyTorch: museval scores of a separator on a MUSDB18-HQ split,
or an LM's perplexity on text files.

    python -m torch_models.evaluate --checkpoint RUN --data MUSDB18HQ [--split test]
    python -m torch_models.evaluate --checkpoint RUN --text held_out.txt [--stride 256]
    python -m torch_models.evaluate --checkpoint RUN --manifest dev.tsv [--chunk-ms 160,320,640,0]
"""
import sys

import numpy as np

from shared.cli.evaluate import main

# torch is imported when a model is built, not at import: --help answers at once.


def build(spec, weights):
    from torch_models.models import build_model
    from torch_models.trainer import default_device

    return build_model(spec, weights=weights).to(default_device()).eval()


def separation_runner(model):
    from torch_models.separate import chunk_runner

    return chunk_runner(model, next(model.parameters()).device)


def token_nll_runner(model):
    """token_nll(ids (L,) int32 numpy) -> (L - 1,) float32: -log p(ids[t + 1] | ids[:t + 1]),
    one forward pass, the loss in float32, in eval mode on the model's device."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    model.eval()

    @torch.no_grad()
    def token_nll(ids: np.ndarray) -> np.ndarray:
        tokens = torch.from_numpy(np.asarray(ids, np.int64)).to(device)[None]
        logits = model(tokens[:, :-1]).float()[0]
        return F.cross_entropy(logits, tokens[0, 1:], reduction="none").cpu().numpy()

    return token_nll


def stream_session_factory(model):
    """new_session(segment_length) -> a streaming session (torch_models/stream.py)."""
    from torch_models.stream import StreamSession

    device = next(model.parameters()).device
    return lambda segment_length=None: StreamSession(model.eval(), device, segment_length)


RUNNERS = {"separation": separation_runner, "generation": token_nll_runner,
           "streaming": stream_session_factory}

if __name__ == "__main__":
    sys.exit(main("torch", build, RUNNERS))
