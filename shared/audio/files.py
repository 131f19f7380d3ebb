"""Reading a user's audio file for the inference CLIs (separate, stream)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from shared.errors import DataError


def read_audio_file(path: Path) -> tuple[np.ndarray, int]:
    """(samples, channels) float32 and the file's sample rate, or a DataError that names the
    problem: a directory, no such file, not readable audio, no samples."""
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
    return audio, rate
