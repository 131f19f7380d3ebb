"""Separate a song of any length in bounded memory: overlapping chunks, cross-faded.

    chunk_layout: n equal chunks of at most `chunk` samples, the first at 0, the last
    ending at the song's end, neighbours overlapping by at least `overlap` of a chunk
    --run_chunks--> per-chunk stems
    --weighted overlap-add (each chunk's window fades linearly over exactly its overlap
    with the previous and the next chunk)--> stems

The chunks are as short as that allows: a 10 s song in 8 s chunks with 25 % overlap is
two 6 s chunks (12 s computed), not two 8 s chunks (16 s); a long song costs about
length / (1 - overlap). Only a song shorter than one chunk is zero-padded, to one chunk:
the separators accept any length (above n_fft // 2, for the STFT's reflect padding), but
their output on a short input differs from their output on the same input padded to the
training length, so that case keeps the length the model was trained on.

Framework-neutral: the backend supplies `run_chunks(batch (N, C, size)) -> (N, S, C,
size)`; memory is bounded by `batch_chunks` chunks at a time, whatever the song's length.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np


class Layout(NamedTuple):
    """Where the chunks lie: `starts` (first samples) and their common `size`."""
    starts: list[int]
    size: int

    @property
    def computed(self) -> int:
        """Samples the model runs on, padding included."""
        return len(self.starts) * self.size


def chunk_layout(length: int, chunk: int, overlap: float = 0.25) -> Layout:
    """The fewest chunks of at most `chunk` samples that cover `length` with neighbours
    overlapping by at least chunk - int(chunk * (1 - overlap)) samples, spread evenly from
    0 to the end, each as short as that allows."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if length <= chunk:
        return Layout([0], chunk)
    least = chunk - max(1, int(chunk * (1 - overlap)))      # the overlap asked for, in samples
    n = math.ceil((length - least) / (chunk - least))
    size = math.ceil((length + (n - 1) * least) / n)         # n * size = length + (n - 1) overlaps

    def starts(size):
        return [round(i * (length - size) / (n - 1)) for i in range(n)]

    # Rounded starts can put two neighbours one sample further apart than (length - size) /
    # (n - 1); grow the chunks until every overlap is long enough (at most `chunk`, where
    # n's definition guarantees it).
    while min(size - (b - a) for a, b in zip(starts(size), starts(size)[1:])) < least:
        size += 1
    return Layout(starts(size), size)


def fade_window(size: int, fade_in: int, fade_out: int | None = None) -> np.ndarray:
    """1 in the middle, linear ramps over the first `fade_in` and the last `fade_out`
    (default: fade_in) samples; never exactly 0, so the first and last chunk still cover
    the song's edges. Ramps longer than half the window meet at their minimum."""
    fade_out = fade_in if fade_out is None else fade_out
    t = np.arange(size, dtype=np.float64)
    return np.minimum(1.0, np.minimum((t + 1) / (fade_in + 1), (size - t) / (fade_out + 1)))


def separate(mixture: np.ndarray, run_chunks: Callable[[np.ndarray], np.ndarray], chunk: int,
             overlap: float = 0.25, batch_chunks: int = 4, progress=None) -> np.ndarray:
    """mixture (C, T) float -> stems (S, C, T) float32. chunk_layout(T, chunk, overlap)
    says which chunks run, and how many samples that computes."""
    channels, length = mixture.shape
    starts, size = chunk_layout(length, chunk, overlap)
    padded = np.zeros((channels, max(length, size)), np.float32)
    padded[:, :length] = mixture
    # Each window ramps over exactly its overlap with the previous and the next chunk;
    # dividing by the summed windows makes any windows add up to the mixture.
    ends = [s + size for s in starts]
    windows = [fade_window(size, ends[i - 1] - s if i else 0,
                           ends[i] - starts[i + 1] if i + 1 < len(starts) else 0)
               for i, s in enumerate(starts)]
    out, weight = None, np.zeros(padded.shape[1], np.float64)
    for i in range(0, len(starts), batch_chunks):
        group = starts[i:i + batch_chunks]
        stems = run_chunks(np.stack([padded[:, s:s + size] for s in group]))
        if out is None:
            out = np.zeros((stems.shape[1], channels, padded.shape[1]), np.float64)
        for s, piece, window in zip(group, stems, windows[i:i + batch_chunks]):
            out[..., s:s + size] += piece * window
            weight[s:s + size] += window
        if progress is not None:
            progress(len(group))
    return (out / weight)[..., :length].astype(np.float32)
