"""Reading audio files at the rate a model wants, and the checks every read goes through.

The inference CLIs (separate, stream) read a user's file whole (read_audio_file); the
training datasets (shared/data/musdb.py, s2ut.py) read spans of files that may be at
another rate (read_span). Both resample with soxr here. `audio_info` (the header, with
truncation detected) and `check_samples` (non-finite and far-out-of-range samples) are
used by every reader; a file that fails them is a DataError naming the file (and, from a
manifest, its row).
"""
from __future__ import annotations

import math
import re
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


# Float files may go past full scale (|x| = 1) -- a mix with headroom overs, our own FLOAT
# stems -- but not by 24 dB: samples beyond this are garbage or integer values stored as
# floats (32767.0), and are an error. Integer PCM cannot exceed full scale.
MAX_ABS_SAMPLE = 16.0

# libsndfile's log line for a chunk whose header size disagrees with the file, e.g. WAV
# "data : 64000 (should be 31978)", AIFF "SSND : ...": the file ends before the data.
_SHORT_CHUNK = re.compile(r"^\s*(data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Streaming writers leave these placeholders in the size field: not a truncation.
_UNKNOWN_SIZES = {0, 0xFFFFFFFF, 0xFFFFFFFF - 8}


def audio_info(path: Path, where: str = ""):
    """soundfile's header info of `path`, or a DataError when it cannot be read or when
    the file holds fewer bytes of audio than its header promises (a truncated copy or
    download: libsndfile then reports the shorter length and reads it without a word).
    `where` prefixes the message (e.g. a manifest row)."""
    try:
        info = sf.info(str(path))
    except (RuntimeError, OSError) as e:
        raise DataError(f"{where}{path} is not readable audio ({e}); re-export or replace "
                        f"the file") from None
    short = _SHORT_CHUNK.search(info.extra_info or "")
    if short:
        promised, present = int(short.group(2)), int(short.group(3))
        if promised > present and promised not in _UNKNOWN_SIZES:
            raise DataError(f"{where}{path} is truncated: its header promises {promised} bytes "
                            f"of audio, the file holds {present} ({info.frames} frames "
                            f"readable); copy, download or export it again")
    return info


def check_samples(audio: np.ndarray, path: Path, where: str = "", start: int = 0) -> None:
    """A DataError unless every sample of `audio` ((frames, channels) or (channels, frames)
    or (frames,), read from `path` starting at frame `start`) is finite and within
    +-MAX_ABS_SAMPLE. Cheap: one pass over an array already in memory."""
    finite = np.isfinite(audio)
    if not finite.all():
        bad = int(audio.size - np.count_nonzero(finite))
        raise DataError(f"{where}{path} holds {bad} non-finite samples (NaN or inf) in the "
                        f"{audio.size} read from frame {start}; the file is damaged: export it "
                        f"again or remove it from the data")
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak > MAX_ABS_SAMPLE:
        raise DataError(f"{where}{path} holds samples of magnitude {peak:g}, beyond "
                        f"{MAX_ABS_SAMPLE:g} (full scale is 1.0): float audio must be scaled "
                        f"to [-1, 1]; rescale or export it again")


def read_audio_file(path: Path, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """(samples, channels) float32 and its sample rate, or a DataError that names the
    problem: a directory, no such file, not readable audio, truncated, no samples,
    non-finite or far-out-of-range samples. With `sample_rate`,
    a file at another rate is resampled to it (soxr, high quality), with a one-line note."""
    if path.is_dir():
        raise DataError(f"{path} is a directory, not a WAV file; pass the audio file itself")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    audio_info(path)
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if len(audio) == 0:
        raise DataError(f"{path} holds no samples")
    check_samples(audio, path)
    if sample_rate is not None and rate != sample_rate:
        audio = resample(audio, rate, sample_rate)
        print(f"note: {path} is {rate} Hz; resampled to the model's {sample_rate} Hz (soxr)",
              file=sys.stderr)
        rate = sample_rate
    return audio, rate
