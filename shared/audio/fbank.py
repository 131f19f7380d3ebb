"""Kaldi-compatible log-mel filterbanks in numpy, whole-signal and streaming, plus the two
things every speech recipe puts right after them: global CMVN and SpecAugment.

    waveform --fbank / StreamingFbank--> (frames, 80) log-mel --CMVN--> --SpecAugment--> model

`fbank` reproduces Kaldi's `compute-fbank-feats` with its defaults (and
kaldi-native-fbank's / torchaudio.compliance.kaldi.fbank's, dither aside):

- 25 ms frames every 10 ms (400 / 160 samples at 16 kHz), `snip_edges=True`: only frames
  that fit entirely inside the signal, 1 + (N - 400) // 160 of them;
- per frame: remove the DC offset, pre-emphasis 0.97, Povey window, zero-pad to the next
  power of two (512), power spectrum;
- 80 triangular mel bins from 20 Hz to Nyquist, built exactly as Kaldi's `MelBanks`;
- log(max(energy, float32 epsilon)); no energy term, no dither (features are deterministic).

Scale convention: Kaldi reads int16 PCM as floats, so its features assume samples in
[-32768, 32767]. Float waveforms (soundfile's default, [-1, 1]) are multiplied by 32768;
int16 arrays are used as they are. Both give the same features for the same file, and
match kaldi-native-fbank / torchaudio fed `waveform * 32768` (tests/test_fbank.py).

Every frame depends only on its own 400 samples (DC removal and pre-emphasis are done per
window in Kaldi), so `StreamingFbank` fed any chunking yields exactly the frames of the
whole signal.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from shared.errors import DataError

INT16_SCALE = 32768.0
# Kaldi floors mel energies at std::numeric_limits<float>::epsilon() before the log.
LOG_FLOOR = float(np.finfo(np.float32).eps)


# ------------------------------------------------------------------------------ options
@dataclass(frozen=True)
class FbankOptions:
    """Kaldi's FbankOptions with its defaults, except 80 mel bins (Kaldi: 23) and no dither."""
    sample_rate: int = 16000
    num_mel_bins: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    preemph_coeff: float = 0.97
    low_freq: float = 20.0
    high_freq: float = 0.0  # > 0: in Hz; <= 0: offset from Nyquist (Kaldi's convention)

    def __post_init__(self):
        nyquist = 0.5 * self.sample_rate
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")
        if self.window_size < 2 or not 0 < self.window_shift:
            raise ValueError(f"frame_length_ms={self.frame_length_ms} / frame_shift_ms="
                             f"{self.frame_shift_ms} give {self.window_size} / "
                             f"{self.window_shift} samples at {self.sample_rate} Hz")
        if self.num_mel_bins < 3:
            raise ValueError(f"num_mel_bins must be at least 3, got {self.num_mel_bins}")
        if not 0.0 <= self.preemph_coeff <= 1.0:
            raise ValueError(f"preemph_coeff must be in [0, 1], got {self.preemph_coeff}")
        if not (0.0 <= self.low_freq < nyquist and 0.0 < self.high_freq_hz <= nyquist
                and self.low_freq < self.high_freq_hz):
            raise ValueError(f"need 0 <= low_freq < high_freq <= Nyquist ({nyquist:g} Hz), got "
                             f"low_freq={self.low_freq}, high_freq={self.high_freq} "
                             f"(= {self.high_freq_hz:g} Hz)")

    # Kaldi truncates: static_cast<int32>(samp_freq * 0.001 * frame_length_ms).
    @property
    def window_size(self) -> int:
        return int(self.sample_rate * 0.001 * self.frame_length_ms)

    @property
    def window_shift(self) -> int:
        return int(self.sample_rate * 0.001 * self.frame_shift_ms)

    @property
    def padded_window_size(self) -> int:  # round_to_power_of_two
        return 1 << (self.window_size - 1).bit_length()

    @property
    def high_freq_hz(self) -> float:
        nyquist = 0.5 * self.sample_rate
        return self.high_freq if self.high_freq > 0 else nyquist + self.high_freq


def num_frames(num_samples: int, opts: FbankOptions = FbankOptions()) -> int:
    """Frames in a signal with snip_edges=True: only windows that fit entirely."""
    if num_samples < opts.window_size:
        return 0
    return 1 + (num_samples - opts.window_size) // opts.window_shift


# ------------------------------------------------------------------- the fixed matrices
def povey_window(size: int) -> np.ndarray:
    """Kaldi's default window: a Hann window (over size - 1, so both ends are 0) raised to
    the power 0.85, which keeps it from going all the way to zero as fast."""
    n = np.arange(size, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2 * np.pi * n / (size - 1))) ** 0.85


def _mel(freq):
    return 1127.0 * np.log(1.0 + np.asarray(freq, dtype=np.float64) / 700.0)


def mel_banks(opts: FbankOptions = FbankOptions()) -> np.ndarray:
    """(num_mel_bins, padded_window_size // 2 + 1) float64 weights, as Kaldi's MelBanks:
    bins equally spaced in mel between low_freq and high_freq, each a triangle over the
    mel value of every FFT bin's centre frequency (the triangle is linear in mel, not in
    Hz). Kaldi's banks cover FFT bins 0 .. N/2 - 1, so the Nyquist column stays zero."""
    n_fft_bins = opts.padded_window_size // 2
    mel_low, mel_high = _mel(opts.low_freq), _mel(opts.high_freq_hz)
    delta = (mel_high - mel_low) / (opts.num_mel_bins + 1)
    bins = np.arange(opts.num_mel_bins, dtype=np.float64)[:, None]
    left, center, right = (mel_low + (bins + k) * delta for k in (0, 1, 2))
    mel = _mel(np.arange(n_fft_bins) * opts.sample_rate / opts.padded_window_size)[None, :]
    up, down = (mel - left) / (center - left), (right - mel) / (right - center)
    weights = np.where((mel > left) & (mel < right), np.where(mel <= center, up, down), 0.0)
    return np.pad(weights, [(0, 0), (0, 1)])


@functools.lru_cache(maxsize=8)
def _constants(opts: FbankOptions) -> tuple[np.ndarray, np.ndarray]:
    """Window and transposed mel matrix, built once per options (frozen, so hashable)."""
    return povey_window(opts.window_size), np.ascontiguousarray(mel_banks(opts).T)


# -------------------------------------------------------------------------- computation
def _samples(waveform, where: str) -> np.ndarray:
    """A mono waveform as float64 samples on Kaldi's int16 scale (module docstring)."""
    x = np.asarray(waveform)
    if x.ndim != 1:
        raise DataError(f"{where}: expected a mono waveform (samples,), got shape {x.shape}; "
                        f"mix down or pick a channel first")
    if x.dtype == np.int16:
        return x.astype(np.float64)
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{where}: waveform dtype {x.dtype} is neither float ([-1, 1]) nor int16")
    x = x.astype(np.float64) * INT16_SCALE
    if not np.isfinite(x).all():
        raise DataError(f"{where}: waveform contains NaN or inf")
    return x


def _log_mel(samples: np.ndarray, opts: FbankOptions) -> np.ndarray:
    """float64 samples -> (num_frames, num_mel_bins) float32 log-mel energies."""
    n = num_frames(samples.size, opts)
    if n == 0:
        return np.zeros((0, opts.num_mel_bins), np.float32)
    window, banks_t = _constants(opts)
    frames = np.lib.stride_tricks.sliding_window_view(samples, opts.window_size)
    frames = frames[: (n - 1) * opts.window_shift + 1: opts.window_shift]
    # Kaldi's ProcessWindow, in its order: DC offset, pre-emphasis, window.
    frames = frames - frames.mean(axis=1, keepdims=True)
    # Pre-emphasis x[i] - c x[i-1]; the first sample has no predecessor in the window and
    # Kaldi uses itself: x[0] - c x[0].
    c = opts.preemph_coeff
    frames = np.concatenate([frames[:, :1] * (1.0 - c), frames[:, 1:] - c * frames[:, :-1]], axis=1)
    spectrum = np.fft.rfft(frames * window, n=opts.padded_window_size, axis=1)
    power = spectrum.real ** 2 + spectrum.imag ** 2
    return np.log(np.maximum(power @ banks_t, LOG_FLOOR)).astype(np.float32)


def fbank(waveform, sample_rate: int, opts: FbankOptions = FbankOptions()) -> np.ndarray:
    """(samples,) mono float in [-1, 1] or int16 -> (num_frames, num_mel_bins) float32.

    `sample_rate` is the waveform's rate and must equal opts.sample_rate (the filterbank
    is not a resampler), so `fbank(*soundfile.read(path))` works and a 44.1 kHz file is
    an error instead of silently wrong features."""
    if sample_rate != opts.sample_rate:
        raise DataError(f"waveform is {sample_rate} Hz but the filterbank expects "
                        f"{opts.sample_rate} Hz; resample it first")
    return _log_mel(_samples(waveform, "fbank"), opts)


class StreamingFbank:
    """Incremental `fbank`: feed audio in chunks of any size, get the frames completed so
    far. It keeps the samples that later frames still need (everything from the next
    frame's start); concatenating all returned frames equals `fbank` of the whole signal.
    As with snip_edges=True, trailing samples that never fill a window give no frame."""

    def __init__(self, opts: FbankOptions = FbankOptions()):
        self.opts = opts
        self.reset()

    def reset(self) -> None:
        """Start a new utterance."""
        self._pending = np.zeros(0, np.float64)  # samples from the next frame's start on
        self.frames_emitted = 0

    def accept_waveform(self, chunk) -> np.ndarray:
        """Append a chunk (samples at opts.sample_rate, same scale rules as `fbank`) and
        return the newly completed frames, (n_new, num_mel_bins) float32 (n_new may be 0)."""
        self._pending = np.concatenate([self._pending, _samples(chunk, "StreamingFbank")])
        feats = _log_mel(self._pending, self.opts)
        self._pending = self._pending[len(feats) * self.opts.window_shift:]
        self.frames_emitted += len(feats)
        return feats


# --------------------------------------------------------------------------------- CMVN
class CMVN:
    """Global cepstral mean and variance normalisation: (feats - mean) / std per bin, with
    statistics over every frame of the training set, accumulated in float64. Fit once on
    the training features and save with the checkpoint (`to_dict`): the model's input
    contract includes these numbers, so inference must use the same ones."""

    STD_FLOOR = 1e-5  # a constant bin (e.g. digital silence only) must not divide by zero

    def __init__(self, mean, std, count: int = 0):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        self.count = int(count)
        if self.mean.ndim != 1 or self.mean.shape != self.std.shape:
            raise ValueError(f"CMVN mean and std must be 1-D of equal size, got "
                             f"{self.mean.shape} and {self.std.shape}")
        if not (self.std > 0).all():
            raise ValueError("CMVN std must be positive")

    @classmethod
    def fit(cls, feats) -> CMVN:
        """Statistics of an iterable of (frames, bins) arrays (a generator is fine: one
        pass). Per-array mean and centred sum of squares are merged with Chan et al.'s
        pairwise update, which stays accurate where sum-of-squares minus squared mean
        would cancel catastrophically."""
        count, mean, m2 = 0, None, None
        for f in feats:
            f = np.asarray(f, dtype=np.float64)
            if f.ndim != 2 or (mean is not None and f.shape[1] != mean.size):
                bins = "bins" if mean is None else mean.size
                raise DataError(f"CMVN.fit: expected (frames, {bins}) arrays, got shape {f.shape}")
            n = f.shape[0]
            if n == 0:
                continue
            f_mean = f.mean(axis=0)
            f_m2 = ((f - f_mean) ** 2).sum(axis=0)
            if mean is None:
                count, mean, m2 = n, f_mean, f_m2
                continue
            delta = f_mean - mean
            total = count + n
            mean = mean + delta * (n / total)
            m2 = m2 + f_m2 + delta ** 2 * (count * n / total)
            count = total
        if count == 0:
            raise DataError("CMVN.fit: no frames to compute statistics from")
        return cls(mean, np.maximum(np.sqrt(m2 / count), cls.STD_FLOOR), count)

    def apply(self, feats: np.ndarray) -> np.ndarray:
        """(frames, bins) -> normalised float32 (frames, bins)."""
        feats = np.asarray(feats)
        if feats.shape[-1] != self.mean.size:
            raise DataError(f"CMVN has {self.mean.size} bins, features have {feats.shape[-1]}")
        return ((feats - self.mean) / self.std).astype(np.float32)

    def to_dict(self) -> dict:
        """Plain lists and an int (YAML/JSON-safe; Python floats round-trip exactly)."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "count": self.count}

    @classmethod
    def from_dict(cls, d: dict) -> CMVN:
        """Inverse of to_dict; also takes numpy arrays (e.g. read back from safetensors)."""
        return cls(d["mean"], d["std"], int(np.asarray(d.get("count", 0))))


# -------------------------------------------------------------------------- SpecAugment
@dataclass(frozen=True)
class SpecAugment:
    """SpecAugment (Park et al. 2019) frequency and time masking, no time warping (most
    recipes leave it off). Defaults: the paper's LibriSpeech LD policy (F=27, 2 frequency
    masks, T=100, 2 time masks) with the Switchboard policies' bound p=0.2 on a time
    mask's share of the utterance, so a short utterance keeps most of its frames.

    Apply after CMVN: masked cells get `mask_value`, and 0 is then the mean."""
    freq_mask_width: int = 27     # F: each frequency mask spans 0..F bins
    num_freq_masks: int = 2
    time_mask_width: int = 100    # T: each time mask spans 0..min(T, p * frames) frames
    num_time_masks: int = 2
    max_time_ratio: float = 0.2   # p
    mask_value: float = 0.0

    def __post_init__(self):
        for name in ("freq_mask_width", "num_freq_masks", "time_mask_width", "num_time_masks"):
            if getattr(self, name) < 0:
                raise ValueError(f"SpecAugment.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.max_time_ratio <= 1.0:
            raise ValueError(f"SpecAugment.max_time_ratio must be in [0, 1], "
                             f"got {self.max_time_ratio}")

    def __call__(self, feats: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(frames, bins) -> a masked copy. Deterministic given the generator's state."""
        out = np.array(feats, copy=True)
        frames, bins = out.shape
        for _ in range(self.num_freq_masks):
            start, stop = _span(rng, bins, min(self.freq_mask_width, bins))
            out[:, start:stop] = self.mask_value
        max_t = min(self.time_mask_width, int(self.max_time_ratio * frames))
        for _ in range(self.num_time_masks):
            start, stop = _span(rng, frames, max_t)
            out[start:stop] = self.mask_value
        return out


def _span(rng: np.random.Generator, size: int, max_width: int) -> tuple[int, int]:
    """A mask [start, stop): width uniform in 0..max_width, then start uniform in
    0..size - width (the paper's sampling)."""
    width = int(rng.integers(0, max_width + 1))
    start = int(rng.integers(0, size - width + 1))
    return start, start + width
