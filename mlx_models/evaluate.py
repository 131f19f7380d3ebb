"""Evaluate a checkpoint with MLX: museval scores of a separator on a MUSDB18-HQ split, or an
LM's perplexity on text files.

    python -m mlx_models.evaluate --checkpoint RUN --data MUSDB18HQ [--split test]
    python -m mlx_models.evaluate --checkpoint RUN --text held_out.txt [--stride 256]
    python -m mlx_models.evaluate --checkpoint RUN --manifest dev.tsv [--chunk-ms 160,320,640,0]
"""
import sys

import numpy as np

from mlx_models.separate import chunk_runner
from shared.cli.evaluate import main

# mlx.core is imported when a model is built, not at import: --help answers at once.


def build(spec, weights):
    from mlx_models.models import build_model

    return build_model(spec, weights=weights)


def token_nll_runner(model):
    """token_nll(ids (L,) int32 numpy) -> (L - 1,) float32: -log p(ids[t + 1] | ids[:t + 1]),
    one forward pass in float32, in eval mode."""
    import mlx.core as mx

    model.eval()

    def token_nll(ids: np.ndarray) -> np.ndarray:
        tokens = mx.array(np.asarray(ids, np.int32)[None])
        logits = model(tokens[:, :-1]).astype(mx.float32)[0]
        target = mx.take_along_axis(logits, tokens[0, 1:, None], axis=-1)[:, 0]
        return np.array(mx.logsumexp(logits, axis=-1) - target)

    return token_nll


def stream_session_factory(model):
    """new_session(segment_length) -> a streaming session (mlx_models/stream.py)."""
    from mlx_models.stream import StreamSession

    model.eval()
    return lambda segment_length=None: StreamSession(model, segment_length)


RUNNERS = {"separation": chunk_runner, "generation": token_nll_runner,
           "streaming": stream_session_factory}

if __name__ == "__main__":
    sys.exit(main("mlx", build, RUNNERS))
