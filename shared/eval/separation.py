"""Source-separation metrics in numpy (float64 inside): SDR, chunk SDR, SI-SDR.

    sdr(s, ŝ)           = 10 log10((|s|² + eps) / (|s - ŝ|² + eps))    whole signal
    chunk_sdr(s, ŝ, sr) = nanmedian over 1 s chunks of sdr, silent reference chunks skipped
    si_sdr(s, ŝ)        = 10 log10(|a s|² / |a s - ŝ|²),  a = <ŝ, s> / |s|²

`sdr` is the "new SDR" of the Music Demixing Challenge (Mitsufuji et al. 2022), also the
one Music-Source-Separation-Training reports: one number per stem and track, summing over
channels and time, with eps = 1e-7 added to both energies (their `delta`) so that a
silent reference with a silent estimate scores 0 dB instead of nan. Averaged over tracks
it is **uSDR** (`usdr_over_tracks`).

`chunk_sdr` frames the signal as the SiSEC/museval cSDR does, but scores each frame with the
plain SDR above rather than BSS Eval v4's 512-tap distortion filters, so it is cheap enough
for validation during training and is NOT the cSDR papers report (that one is museval's:
`python -m {mlx,torch}_models.evaluate`, shared/eval/bss_eval.py). Non-overlapping chunks
(1 s), a trailing partial chunk dropped (as museval's framing does), chunks whose reference
is digital silence (all zeros, museval's test) are nan, and the track's score is the
nanmedian of its chunks. Over tracks the median is taken (`chunk_sdr_over_tracks`).

Arrays are (channels, time) or (time,); reference and estimate must have the same shape.
Multichannel signals are scored as one signal (energies summed over channels), as the
challenge does, not channel by channel.
"""
from __future__ import annotations

import numpy as np

SDR_EPS = 1e-7      # MDX / Music-Source-Separation-Training's delta
SI_SDR_EPS = 1e-12  # guards only the degenerate cases (silent reference or perfect match)


def _pair(reference, estimate) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(reference, dtype=np.float64)
    e = np.asarray(estimate, dtype=np.float64)
    if s.shape != e.shape:
        raise ValueError(f"reference {s.shape} and estimate {e.shape} differ in shape")
    if s.ndim not in (1, 2):
        raise ValueError(f"expected (time,) or (channels, time), got shape {s.shape}")
    return s, e


def sdr(reference, estimate, eps: float = SDR_EPS) -> float:
    """Whole-signal SDR in dB: 10 log10((|s|² + eps) / (|s - ŝ|² + eps))."""
    s, e = _pair(reference, estimate)
    return float(10 * np.log10((np.sum(s ** 2) + eps) / (np.sum((s - e) ** 2) + eps)))


def chunk_sdrs(reference, estimate, sample_rate: int, chunk_seconds: float = 1.0,
               eps: float = SDR_EPS) -> np.ndarray:
    """SDR of every full chunk, nan where the reference chunk is all zeros."""
    s, e = _pair(reference, estimate)
    s, e = np.atleast_2d(s), np.atleast_2d(e)
    size = int(round(chunk_seconds * sample_rate))
    n = s.shape[-1] // size
    s = s[:, :n * size].reshape(s.shape[0], n, size).transpose(1, 0, 2)   # (chunks, C, size)
    e = e[:, :n * size].reshape(e.shape[0], n, size).transpose(1, 0, 2)
    signal = np.sum(s ** 2, axis=(1, 2))
    noise = np.sum((s - e) ** 2, axis=(1, 2))
    scores = 10 * np.log10((signal + eps) / (noise + eps))
    scores[~np.any(s != 0, axis=(1, 2))] = np.nan
    return scores


def chunk_sdr(reference, estimate, sample_rate: int, chunk_seconds: float = 1.0,
         eps: float = SDR_EPS) -> float:
    """Chunk SDR of one track and stem: nanmedian of `chunk_sdrs` (nan if every chunk is
    silent or the signal is shorter than one chunk)."""
    scores = chunk_sdrs(reference, estimate, sample_rate, chunk_seconds, eps)
    return _nan_reduce(np.nanmedian, scores)


def si_sdr(reference, estimate, eps: float = SI_SDR_EPS) -> float:
    """Scale-invariant SDR in dB (Le Roux et al. 2019), no mean removal: the reference is
    scaled by the least-squares factor a = <ŝ, s> / |s|² before comparing. eps is added
    to |s|², to the target and to the residual energy, so a silent reference gives a
    finite, very low score and a perfect estimate a finite, very high one."""
    s, e = _pair(reference, estimate)
    target = (np.sum(e * s) / (np.sum(s ** 2) + eps)) * s
    return float(10 * np.log10((np.sum(target ** 2) + eps) / (np.sum((target - e) ** 2) + eps)))


def usdr_over_tracks(per_track) -> float:
    """uSDR of a test set: the mean of the per-track `sdr` values."""
    return _nan_reduce(np.nanmean, np.asarray(per_track, dtype=np.float64))


def chunk_sdr_over_tracks(per_track) -> float:
    """Chunk SDR of a test set: the median of the per-track `chunk_sdr` values (nan tracks skipped)."""
    return _nan_reduce(np.nanmedian, np.asarray(per_track, dtype=np.float64))


def _nan_reduce(reduce, values: np.ndarray) -> float:
    """reduce over the finite values; nan (without numpy's all-nan warning) if none."""
    return float(reduce(values)) if np.any(~np.isnan(values)) else float("nan")


# ----------------------------------------------------------------------------------------
# Speech recognition and translation metrics (EchoStream): edit-distance error rates over
# words, characters or discrete units, corpus BLEU (sacrebleu), and CTC greedy collapse.
#
#     WER = (substitutions + deletions + insertions) / reference words, summed over the
#           corpus before dividing (not a mean of per-sentence rates), as sclite and
#           jiwer report it; a fraction (0.25 = 25 %), can exceed 1.
#     CER = the same over characters (spaces count, runs of whitespace are one space).
#     unit error rate = the same over discrete unit sequences.
#     BLEU = sacrebleu's corpus BLEU (13a tokenisation, exp smoothing), 0..100.
# ----------------------------------------------------------------------------------------
