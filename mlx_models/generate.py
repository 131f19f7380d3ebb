"""Generate text with MLX: python -m mlx_models.generate --checkpoint DIR --prompt "..." """
import functools
import sys

import numpy as np

from shared.cli.generate import main

# mlx.core is imported when a model loads, not at import: --help answers at once.


def token_picker(temperature: float, top_p: float, seed: int):
    """pick(logits) -> the next token ids (uint32, one per row of the (B, vocab) logits),
    lazily, on MLX: argmax at temperature 0; otherwise a draw from softmax(logits /
    temperature) kept on the top-p nucleus (shared.engine.sampling.nucleus_probs), with a
    key split off a chain that starts at mx.random.key(seed), one split per pick."""
    import mlx.core as mx

    if temperature <= 0:
        return lambda logits: mx.argmax(logits, axis=-1)
    key = mx.random.key(seed)

    def pick(logits):
        nonlocal key
        key, draw = mx.random.split(key)
        z = logits.astype(mx.float32) / temperature
        if top_p >= 1.0:
            return mx.random.categorical(z, key=draw)
        order = mx.argsort(-z, axis=-1)
        ranked = mx.take_along_axis(z, order, axis=-1)
        # In the nucleus: the tokens ranked above hold less than top_p (the first always).
        above = mx.cumsum(mx.softmax(ranked, axis=-1), axis=-1, inclusive=False)
        ranked = mx.where(above < top_p, ranked, -mx.inf)
        rank = mx.random.categorical(ranked, key=draw)
        return mx.take_along_axis(order, rank[:, None], axis=-1)[:, 0]
    return pick


def decoder(model, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
            pipeline: bool = True):
    """step(ids) -> int: feed the (1, T) token ids through a fresh KV cache of `model` (in
    eval mode) and return the token picked after them (token_picker), as a Python int.

    Pipelined as mlx-lm's generate_step: before step returns token k it queues (mx.async_eval)
    the forward pass that feeds token k back and picks token k+1, so that the model can
    compute while the caller prints token k; the next step([[k]]) only waits for that
    result. (On MLX's CPU backend async_eval returns only once all but ~10 of the step's
    primitives have run, so little overlaps there: docs/benchmarks.md.)
    A step fed anything else first drops the queued position from the cache: greedy, the
    tokens are those of pipeline=False; sampling, the dropped pick's key stays spent."""
    import mlx.core as mx

    cache = model.make_cache()
    pick = token_picker(temperature, top_p, seed)
    queued = None      # (the token fed, the lazy token picked after it)

    def forward(ids):
        return pick(model(ids, cache)[:, -1, :])

    def step(ids: np.ndarray) -> int:
        nonlocal queued
        ids = np.asarray(ids)
        if queued is not None and ids.shape == (1, 1) and ids[0, 0] == queued[0]:
            token = queued[1]
        else:
            if queued is not None:
                for layer in cache:
                    layer.offset -= 1   # the next write overwrites the queued position
            token = forward(mx.array(ids, mx.int32))
        queued = None
        if not pipeline:
            return token.item()
        mx.async_eval(token)    # an evaluation of its own: .item() waits for it alone
        after = forward(token[:, None])
        mx.async_eval(after)
        value = token.item()
        queued = (value, after)
        return value

    return step


def load(checkpoint):
    """(start, spec): start(temperature, top_p, seed) -> a fresh decoder's step."""
    from mlx_models.models import load_model

    model, config = load_model(checkpoint, expect="generation", what="an LM")
    model.eval()
    return functools.partial(decoder, model), model.spec


if __name__ == "__main__":
    sys.exit(main("mlx", load))
