"""Separate a song of any length in bounded memory: overlapping chunks, cross-faded.

    chunks of `chunk` samples, hop = chunk * (1 - overlap) --run_chunks--> per-chunk stems
    --weighted overlap-add (a trapezoid window: linear fades over the overlap)--> stems

Framework-neutral: the backend supplies `run_chunks(batch (N, C, chunk)) -> (N, S, C,
chunk)`; memory is bounded by `batch_chunks` chunks at a time, whatever the song's length.
"""
from __future__ import annotations

from typing import Callable

import numpy as np


def fade_window(chunk: int, fade: int) -> np.ndarray:
    """1 in the middle, linear ramps of `fade` samples at both ends (never exactly 0, so
    the first and last chunk still cover the song's edges)."""
    w = np.ones(chunk, np.float64)
    if fade > 0:
        ramp = (np.arange(1, fade + 1) / (fade + 1))
        w[:fade], w[-fade:] = ramp, ramp[::-1]
    return w


def separate(mixture: np.ndarray, run_chunks: Callable[[np.ndarray], np.ndarray], chunk: int,
             overlap: float = 0.25, batch_chunks: int = 4, progress=None) -> np.ndarray:
    """mixture (C, T) float -> stems (S, C, T) float32."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    channels, length = mixture.shape
    hop = max(1, int(chunk * (1 - overlap)))
    starts = list(range(0, max(length - chunk, 0) + hop, hop))
    padded = np.zeros((channels, starts[-1] + chunk), np.float32)
    padded[:, :length] = mixture
    window = fade_window(chunk, chunk - hop)
    out, weight = None, np.zeros(padded.shape[1], np.float64)
    for i in range(0, len(starts), batch_chunks):
        group = starts[i:i + batch_chunks]
        stems = run_chunks(np.stack([padded[:, s:s + chunk] for s in group]))
        if out is None:
            out = np.zeros((stems.shape[1], channels, padded.shape[1]), np.float64)
        for s, piece in zip(group, stems):
            out[..., s:s + chunk] += piece * window
            weight[s:s + chunk] += window
        if progress is not None:
            progress(len(group))
    return (out / weight)[..., :length].astype(np.float32)
