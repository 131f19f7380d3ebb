"""Reading a user's audio file for the inference CLIs (separate, stream)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from shared.errors import DataError


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
        import soxr

        audio = soxr.resample(audio, rate, sample_rate, quality="HQ").astype(np.float32)
        print(f"note: {path} is {rate} Hz; resampled to the model's {sample_rate} Hz (soxr)",
              file=sys.stderr)
        rate = sample_rate
    return audio, rate
