"""Perplexity of a causal LM on a token stream, with a strided sliding window, counted
exactly as Hugging Face's perplexity guide counts it
(https://huggingface.co/docs/transformers/perplexity):

    for begin in 0, stride, 2 stride, ...:
        end = min(begin + max_length, n)          the window ids[begin:end] goes in
        trg_len = end - prev_end                  the tokens not scored by an earlier window
        labels = ids[begin:end], the first (end - begin - trg_len) set to -100
        loss = mean of -log p(ids[t] | ids[begin:t]) over the labels the model scores
               (it shifts them by one: the window's first token is never a target)
        nll_sum += loss * (valid labels - 1);  n_tokens += valid labels - 1
        stop when end == n
    perplexity = exp(nll_sum / n_tokens)

The guide subtracts one token per window for the shift. In the first window that is
exact (its first token has no target); in later windows every valid label is scored,
so the window's mean over trg_len tokens is weighted by trg_len - 1. Reproduced as is,
so that the figure equals the one the guide's loop gives for the same model and ids.
(One difference: a last window of a single token, possible when stride = max_length, has
no target; the guide's loss is then nan, and its figure too; here it counts nothing.)

Framework-neutral: the backend supplies `token_nll(ids (L,) int32) -> (L - 1,)`, the
negative log-likelihood of ids[1:] given the tokens before each, one forward pass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np


class Window(NamedTuple):
    begin: int
    end: int
    scored: int      # targets in the window's loss: its last `scored` positions
    weight: int      # what the guide multiplies the window's mean loss by


def sliding_windows(n_tokens: int, max_length: int, stride: int) -> list[Window]:
    """The guide's windows over a stream of `n_tokens`."""
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    if not 1 <= stride <= max_length:
        raise ValueError(f"stride must be within 1..max_length ({max_length}), got {stride}")
    if n_tokens < 2:
        raise ValueError(f"the text is {n_tokens} token(s); perplexity needs at least 2")
    windows, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + max_length, n_tokens)
        length = end - begin
        trg_len = end - prev_end
        valid = min(trg_len, length)            # labels[:, :-trg_len] = -100 masks the rest
        # After the shift, labels 1..length-1 are targets: those among the valid ones.
        windows.append(Window(begin, end, scored=min(valid, length - 1), weight=valid - 1))
        prev_end = end
        if end == n_tokens:
            break
    return windows


@dataclass(frozen=True)
class Perplexity:
    perplexity: float
    nll: float           # mean negative log-likelihood per counted token, nats
    tokens: int          # the guide's n_tokens
    windows: int
    max_length: int
    stride: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def perplexity(ids: np.ndarray, token_nll: Callable[[np.ndarray], np.ndarray],
               max_length: int, stride: int, progress: Callable[[int], None] | None = None
               ) -> Perplexity:
    """The guide's perplexity of the stream `ids` (1-D); `progress(1)` after each window."""
    ids = np.asarray(ids, dtype=np.int32).reshape(-1)
    windows = sliding_windows(len(ids), max_length, stride)
    nll_sum, n_tokens = 0.0, 0
    for w in windows:
        nll = np.asarray(token_nll(ids[w.begin:w.end]), dtype=np.float64)
        if nll.shape != (w.end - w.begin - 1,):
            raise ValueError(f"token_nll gave {nll.shape} for a window of {w.end - w.begin} tokens")
        mean = nll[len(nll) - w.scored:].mean() if w.scored else 0.0
        nll_sum += mean * w.weight
        n_tokens += w.weight
        if progress is not None:
            progress(1)
    if n_tokens == 0:
        raise ValueError(f"no token was counted ({len(ids)} tokens, max_length {max_length}, "
                         f"stride {stride}); use a longer text or a larger stride")
    mean_nll = nll_sum / n_tokens
    return Perplexity(float(math.exp(min(mean_nll, 700.0))), float(mean_nll), n_tokens,
                      len(windows), max_length, stride)
