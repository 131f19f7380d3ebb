"""Generate text with PyTorch: python -m torch_models.generate --checkpoint DIR --prompt "..." """
import functools
import sys

import numpy as np

from shared.cli.generate import main

# torch is imported when a model loads, not at import: --help answers at once.


def pick_token(logits, temperature: float, top_p: float, generator) -> int:
    """The next token after `logits` (vocab,), on torch: argmax at temperature 0; otherwise
    a draw from softmax(logits / temperature) kept on the top-p nucleus
    (shared.engine.sampling.nucleus_probs), from `generator` (a torch.Generator)."""
    import torch

    if temperature <= 0:
        return int(logits.argmax())
    z = logits.float() / temperature
    if top_p >= 1.0:
        return int(torch.multinomial(torch.softmax(z, -1), 1, generator=generator))
    ranked, order = torch.sort(z, descending=True)
    probs = torch.softmax(ranked, -1)
    # In the nucleus: the tokens ranked above hold less than top_p (the first always).
    above = torch.cumsum(probs, -1) - probs
    probs = probs.masked_fill(above >= top_p, 0.0)
    return int(order[torch.multinomial(probs, 1, generator=generator)])


def decoder(model, device, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0):
    """step(ids) -> int: feed the (1, T) token ids through a fresh KV cache of `model` (in
    eval mode, on `device`) and return the token picked after them (pick_token, with a
    torch.Generator seeded with `seed`)."""
    import torch

    cache = model.make_cache()
    generator = torch.Generator(device=device).manual_seed(seed)

    @torch.no_grad()
    def step(ids: np.ndarray) -> int:
        logits = model(torch.from_numpy(np.asarray(ids)).to(device), cache)[0, -1]
        return pick_token(logits, temperature, top_p, generator)

    return step


def load(checkpoint):
    """(start, spec): start(temperature, top_p, seed) -> a fresh decoder's step."""
    from torch_models.models import load_model
    from torch_models.trainer import default_device

    model, config = load_model(checkpoint, expect="generation", what="an LM")
    device = default_device()
    model = model.to(device).eval()
    return functools.partial(decoder, model, device), model.spec


if __name__ == "__main__":
    sys.exit(main("torch", load))
