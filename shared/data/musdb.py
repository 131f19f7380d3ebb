"""MUSDB18-HQ on disk -> remixed training segments and full validation tracks (numpy).

    root/
      train/<Artist - Title>/mixture.wav vocals.wav drums.wav bass.wav other.wav
      test/<Artist - Title>/...          (44.1 kHz stereo WAV, as MUSDB18-HQ ships; files
                                         at another rate are resampled on reading, soxr)
      valid_tracks.txt                   optional: one track name per line, replaces the
                                         official validation list (synthetic sets use it)

    MusdbDataset(root, split) --RemixSampler--> {"mixture": (C, T), "sources": (S, C, T)}
                              --full_tracks---> {"name", "mixture", "sources"} per track

Splits: `train` is train/ without the validation tracks, `valid` the validation tracks
(the 14 of the official `musdb` package unless root/valid_tracks.txt says otherwise),
`train_all` all of train/, `test` test/. Sources are always in STEMS order.

The sampler is a pure function of (seed, sample index), like lm_text.WindowSampler:
resuming at an index reproduces the uninterrupted run exactly. It reads only the segment
it needs from each file (soundfile's start/frames), never a whole track; a file at another
rate than the dataset's is read a little wider and resampled (shared/audio/files.py), giving
the samples of the whole file resampled.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from shared import ranges as R
from shared.audio.files import audio_info, check_samples, read_span, resampled_length
from shared.errors import ConfigError, DataError


@dataclass(frozen=True)
class AudioDataConfig:
    """Music separation data: a MUSDB18-HQ-layout root (see shared/data/musdb.py)."""
    # MUSDB18-HQ root (train/, test/). Empty: a synthetic demo set is generated into the
    # run directory (python -m shared.data.synth_musdb), so training works from a clone.
    root: str = ""
    sample_rate: int = 44100
    segment_seconds: float = 3.0
    remix: bool = True                 # stems of an example from different tracks
    gain_min: float = 0.25
    gain_max: float = 1.25
    channel_swap: bool = True
    min_rms: float = 1e-3              # redraw near-silent stem segments
    val_tracks: int = 0                # validation tracks to score (0: all)
    val_segments: int = 8              # fixed validation segments for val_loss
    synth_tracks: int = 8              # size of the generated demo set
    synth_seconds: float = 12.0
    seed: int = 0

    RANGES = {  # shared/ranges.py; gain_min <= gain_max in validate
        "sample_rate": R.at_least(1000, R.MAX_SAMPLE_RATE), "segment_seconds": R.positive(3600.0),
        "gain_min": R.positive(100.0), "gain_max": R.positive(100.0), "min_rms": R.at_least(0.0, 1.0),
        # val_segments are held in memory; the demo set is written to disk (<= 100 x 600 s)
        "val_tracks": R.at_least(0, 1000), "val_segments": R.at_least(1, 1000),
        "synth_tracks": R.at_least(2, 100), "synth_seconds": R.positive(600.0), "seed": R.SEED,
    }

    def validate(self):
        if self.sample_rate <= 0 or self.segment_seconds <= 0:
            raise ConfigError("data.sample_rate and data.segment_seconds must be > 0")
        if not 0 < self.gain_min <= self.gain_max:
            raise ConfigError(f"data.gain_min/gain_max must satisfy 0 < min <= max, got "
                              f"{self.gain_min}, {self.gain_max}")
        if self.val_tracks < 0 or self.val_segments <= 0 or self.synth_tracks < 2:
            raise ConfigError("data.val_tracks must be >= 0, data.val_segments > 0, "
                              "data.synth_tracks >= 2")

    @property
    def segment_samples(self) -> int:
        return int(round(self.segment_seconds * self.sample_rate))

STEMS = ("vocals", "drums", "bass", "other")
FILES = ("mixture",) + STEMS
SAMPLE_RATE = 44100
CHANNELS = 2
SPLITS = ("train", "valid", "train_all", "test")
VALID_LIST_FILE = "valid_tracks.txt"

# The validation subset of the official `musdb` package (musdb/configs/mus.yaml): 14 tracks
# of MUSDB18's train/ folder, used by open-unmix, Demucs and most papers.
VALIDATION_TRACKS = (
    "Actions - One Minute Smile",
    "Clara Berry And Wooldog - Waltz For My Victims",
    "Johnny Lokke - Promises & Lies",
    "Patrick Talbot - A Reason To Leave",
    "Triviul - Angelsaint",
    "Alexander Ross - Goodbye Bolero",
    "Fergessen - Nos Palpitants",
    "Leaf - Summerghost",
    "Skelpolu - Human Mistakes",
    "Young Griffo - Pennies",
    "ANiMAL - Rockshow",
    "James May - On The Line",
    "Meaxic - Take A Step",
    "Traffic Experiment - Sirens",
)


@dataclass(frozen=True)
class Track:
    name: str
    folder: Path
    frames: int                  # samples per channel at `rate`, the same for every file of the track
    rate: int = SAMPLE_RATE      # the dataset's sample rate
    file_rates: dict[str, int] = field(default_factory=dict)   # stem -> its file's rate where not `rate`

    def path(self, stem: str) -> Path:
        return self.folder / f"{stem}.wav"

    def file_rate(self, stem: str) -> int:
        return self.file_rates.get(stem, self.rate)


# ------------------------------------------------------------------ reading
def read_audio(track: Track, stem: str, start: int = 0, frames: int | None = None) -> np.ndarray:
    """(channels, frames) float32 at the dataset's rate from `start`; the whole file when
    frames is None."""
    path = track.path(stem)
    n = track.frames - start if frames is None else frames
    try:
        audio = read_span(path, track.file_rate(stem), track.rate, start, n)
    except (RuntimeError, OSError) as e:
        raise DataError(f"track '{track.name}': cannot read {path} ({e}); re-extract or "
                        f"replace the file") from None
    if audio.shape[0] != n:
        raise DataError(f"track '{track.name}': {path} ends after {start + audio.shape[0]} "
                        f"samples, its header says {track.frames}; the file is truncated, "
                        f"re-extract it")
    check_samples(audio, path, f"track '{track.name}': ", start)
    return np.ascontiguousarray(audio.T)


def scan_track(folder: Path, sample_rate: int, channels: int) -> Track:
    """Check one track folder (files present, readable, the channels expected, the same
    length at `sample_rate`, to which files at another rate are resampled on reading)."""
    name = folder.name
    missing = [f"{f}.wav" for f in FILES if not (folder / f"{f}.wav").is_file()]
    if missing:
        raise DataError(f"track '{name}' ({folder}) is missing {', '.join(missing)}; every "
                        f"track folder needs {', '.join(f + '.wav' for f in FILES)} "
                        f"(MUSDB18-HQ layout): restore the files or remove the folder")
    lengths, file_rates = {}, {}
    for f in FILES:
        path = folder / f"{f}.wav"
        info = audio_info(path, f"track '{name}': ")
        if info.channels != channels:
            raise DataError(f"track '{name}': {path.name} has {info.channels} channel(s), "
                            f"expected {channels}; convert the file (MUSDB18-HQ is stereo) "
                            f"or set model.audio_channels={info.channels}")
        if info.samplerate != sample_rate:
            file_rates[f] = info.samplerate
        lengths[f"{f}.wav"] = resampled_length(info.frames, info.samplerate, sample_rate)
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{k} {v}" for k, v in lengths.items())
        at = f" at {sample_rate} Hz" if file_rates else ""
        raise DataError(f"track '{name}': the files differ in length ({detail} samples{at}); "
                        f"trim them to the same length")
    return Track(name, folder, lengths["mixture.wav"], sample_rate, file_rates)


# ------------------------------------------------------------------ dataset
def validation_names(root: Path) -> tuple[tuple[str, ...], str]:
    """The validation track names and where they came from (for error messages)."""
    listed = root / VALID_LIST_FILE
    if listed.is_file():
        try:
            text = listed.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{listed} is not UTF-8 text (byte {e.start}); save it as UTF-8, "
                            f"one validation track name per line") from None
        names = tuple(line.strip() for line in text.splitlines() if line.strip())
        return names, str(listed)
    return VALIDATION_TRACKS, "the official MUSDB18 validation list"


class MusdbDataset:
    """The tracks of one split, checked when the dataset is built (so a broken file stops
    the run before training, naming the track)."""

    def __init__(self, root: str | Path, split: str = "train", sample_rate: int = SAMPLE_RATE,
                 channels: int = CHANNELS):
        if split not in SPLITS:
            raise DataError(f"unknown MUSDB split {split!r}; choose one of {', '.join(SPLITS)}")
        self.root, self.split = Path(root), split
        self.sample_rate, self.channels = sample_rate, channels
        folder = self.root / ("test" if split == "test" else "train")
        if not folder.is_dir():
            raise DataError(f"{folder} not found: a MUSDB18-HQ root holds train/ and test/ "
                            f"with one folder per track; point the dataset at it, or make a "
                            f"synthetic one with python -m shared.data.synth_musdb OUT_DIR")
        found = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        valid, source = validation_names(self.root)
        folders = {"train": [p for p in found if p.name not in valid],
                   "valid": [p for p in found if p.name in valid]}.get(split, found)
        if not folders:
            if split == "valid":
                hint = f"none of the {len(valid)} validation tracks (from {source}) is in {folder}"
            elif found:
                hint = f"every track in {folder} is a validation track (from {source})"
            else:
                hint = f"{folder} has no track folders"
            raise DataError(f"the {split} split is empty: {hint}; expected {folder}/<track>/"
                            f"mixture.wav, vocals.wav, drums.wav, bass.wav and other.wav")
        self.tracks = [scan_track(p, sample_rate, channels) for p in folders]
        other_rates = sorted({r for t in self.tracks for r in t.file_rates.values()})
        if other_rates:     # one line per dataset, not one per file
            count = sum(1 for t in self.tracks if t.file_rates)
            print(f"note: {count} of {len(self.tracks)} tracks of the {split} split in {self.root} "
                  f"have files at {'/'.join(map(str, other_rates))} Hz; resampled to "
                  f"data.sample_rate={sample_rate} Hz on reading (soxr)", file=sys.stderr)

    def __len__(self) -> int:
        return len(self.tracks)

    def load(self, i: int) -> dict:
        """One whole track: {"name", "mixture": (C, T), "sources": (S, C, T)} float32; the
        mixture is mixture.wav as shipped (for MUSDB18-HQ, the sum of the stems)."""
        track = self.tracks[i]
        return {"name": track.name, "mixture": read_audio(track, "mixture"),
                "sources": np.stack([read_audio(track, s) for s in STEMS])}

    def full_tracks(self) -> Iterator[dict]:
        """Every track of the split, whole, in name order (validation and test)."""
        for i in range(len(self.tracks)):
            yield self.load(i)


# ------------------------------------------------------------------ training sampler
@dataclass(frozen=True)
class Draw:
    """Where one stem of a training example came from."""
    track: str
    start: int
    gain: float
    swapped: bool


class RemixSampler:
    """Random training segments of `segment_samples`, stems remixed across tracks.

    Each stem of example `index` is drawn independently (remix=True): a random track and
    offset, redrawn while the segment's RMS is below `min_rms` (near-silent: a vocal
    stem in an instrumental passage), at most `max_retries` times, after which the last
    draw is kept -- some stems are silent for most of a track, and training must not
    hang on them. Then a random gain in `gain_range` and, with probability 1/2, swapped
    left and right channels. The mixture is the sum of the augmented stems.
    With remix=False all stems come from one track at one offset (the silence test is on
    their sum). Everything is drawn from np.random.default_rng([seed, index]), so an
    example depends on nothing but (seed, index)."""

    def __init__(self, dataset: MusdbDataset, segment_samples: int, seed: int, *,
                 remix: bool = True, gain_range: tuple[float, float] = (0.25, 1.25),
                 channel_swap: bool = True, min_rms: float = 1e-3, max_retries: int = 10,
                 rank: int = 0, world_size: int = 1):
        if segment_samples <= 0:
            raise DataError(f"segment_samples must be positive, got {segment_samples}")
        self.tracks = [t for t in dataset.tracks if t.frames >= segment_samples]
        if not self.tracks:
            longest = max(dataset.tracks, key=lambda t: t.frames)
            raise DataError(f"no track of the {dataset.split} split is as long as one segment "
                            f"of {segment_samples} samples (the longest, '{longest.name}', has "
                            f"{longest.frames}); use a shorter segment")
        self.segment, self.seed = segment_samples, seed
        self.remix, self.gain_range, self.channel_swap = remix, gain_range, channel_swap
        self.min_rms, self.max_retries = min_rms, max_retries
        self.rank, self.world_size = rank, world_size

    def _segment(self, rng: np.random.Generator, stems: Sequence[str]):
        """Draw a track and offset until the segment of `stems` (summed) is not silent."""
        for _ in range(self.max_retries + 1):
            track = self.tracks[int(rng.integers(len(self.tracks)))]
            start = int(rng.integers(0, track.frames - self.segment + 1))
            audio = [read_audio(track, s, start, self.segment) for s in stems]
            if np.sqrt(np.mean(np.square(sum(audio), dtype=np.float64))) >= self.min_rms:
                break
        return track, start, audio

    def example(self, index: int) -> tuple[dict[str, np.ndarray], list[Draw]]:
        """Example `index` and where each of its stems came from."""
        rng = np.random.default_rng([self.seed, index])
        if self.remix:
            picks = [self._segment(rng, [stem]) for stem in STEMS]
            picks = [(track, start, audio[0]) for track, start, audio in picks]
        else:
            track, start, audio = self._segment(rng, STEMS)
            picks = [(track, start, a) for a in audio]
        sources, draws = [], []
        for track, start, audio in picks:
            gain = float(rng.uniform(*self.gain_range))
            swapped = bool(self.channel_swap and rng.random() < 0.5)
            sources.append(gain * (audio[::-1] if swapped else audio))
            draws.append(Draw(track.name, start, gain, swapped))
        sources = np.stack(sources).astype(np.float32)
        return {"mixture": sources.sum(axis=0), "sources": sources}, draws

    def sample(self, index: int) -> dict[str, np.ndarray]:
        """{"mixture": (C, T), "sources": (S, C, T)} float32, sources in STEMS order."""
        return self.example(index)[0]

    def batch(self, position: int, batch_size: int) -> dict[str, np.ndarray]:
        """This rank's share of the global batch that starts at example `position` (a
        global batch is batch_size * world_size examples): (B, C, T) and (B, S, C, T)."""
        first = position + self.rank * batch_size
        samples = [self.sample(first + i) for i in range(batch_size)]
        return {key: np.stack([s[key] for s in samples]) for key in samples[0]}
