"""Reading audio files at the rate a model wants: the inference CLIs (separate, stream) read
a user's file whole (read_audio_file); the training datasets (shared/data/musdb.py, s2ut.py)
read spans of files that may be at another rate (read_span). Both resample with soxr here."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from shared.errors import DataError

# File samples read beyond a span on each side, per unit of the rate ratio: enough for soxr's
# high-quality filter that a span read alone equals the same samples of the whole file
# resampled (measured: ~1e-6 apart from 22.05 to 96 kHz in, 4 to 44.1 kHz out).
RESAMPLE_MARGIN = 256


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """`audio` (frames,) or (frames, channels) at `to_rate` (soxr, high quality), float32;
    round(frames * to_rate / from_rate) frames long."""
    if from_rate == to_rate:
        return audio
    import soxr

    return soxr.resample(audio, from_rate, to_rate, quality="HQ").astype(np.float32, copy=False)


def resampled_length(frames: int, from_rate: int, to_rate: int) -> int:
    """How many frames `resample` makes of `frames` (soxr rounds half up)."""
    return (2 * frames * to_rate + from_rate) // (2 * from_rate)


def read_span(path: str | Path, file_rate: int, rate: int, start: int, frames: int) -> np.ndarray:
    """Frames [start, start + frames) of the file resampled to `rate`, (frames, channels)
    float32, reading only the part of the file they need (soundfile's start/frames; a short
    result means the file ends early). Errors are soundfile's (RuntimeError, OSError)."""
    if file_rate == rate:
        audio, _ = sf.read(str(path), start=start, frames=frames, dtype="float32", always_2d=True)
        return audio
    # Start the read where a file sample falls on an output sample (a multiple of `step`), so
    # the resampled read lines up with the whole file's resampled samples.
    g = math.gcd(file_rate, rate)
    step = file_rate // g
    margin = RESAMPLE_MARGIN * max(1, -(-file_rate // rate))
    first = max(0, (start * file_rate // rate - margin) // step * step)
    last = -(-(start + frames) * file_rate // rate) + margin
    audio, _ = sf.read(str(path), start=first, frames=last - first, dtype="float32", always_2d=True)
    offset = start - first // step * (rate // g)
    return resample(audio, file_rate, rate)[offset:offset + frames]


def read_audio_file(path: Path, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """(samples, channels) float32 and its sample rate, or a DataError that names the
    problem: a directory, no such file, not readable audio, no samples. With `sample_rate`,
    a file at another rate is resampled to it (soxr, high quality), with a one-line note."""
    if path.is_dir():
        raise DataError(f"{path} is a directory, not a WAV file; pass the audio file itself")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if len(audio) == 0:
        raise DataError(f"{path} holds no samples")
    if sample_rate is not None and rate != sample_rate:
        audio = resample(audio, rate, sample_rate)
        print(f"note: {path} is {rate} Hz; resampled to the model's {sample_rate} Hz (soxr)",
              file=sys.stderr)
        rate = sample_rate
    return audio, rate
