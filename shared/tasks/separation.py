"""The separators' task (TF-Locoformer and band-split): remixed MUSDB18-HQ-layout segments
(shared/data/musdb.py), evaluated by validation loss and SDR on whole tracks."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np

from shared.engine.distributed import shard_map
from shared.errors import ConfigError, DataError


class SeparationTask:
    """Music source separation on a MUSDB18-HQ-layout root (a generated demo set when
    data.root is empty). Evaluation: loss on fixed validation segments, then uSDR and the
    chunk SDR (`chunk_sdr_<stem>`: museval's framing, plain SDR per frame; not BSS Eval's
    cSDR, see shared/eval/separation.py) per stem on whole validation tracks, separated
    chunk by chunk. Runs logged before the rename carry the same numbers as `csdr_<stem>`;
    nothing reads these keys back (the best checkpoint is chosen by val_loss)."""
    file_settings: dict[str, str] = {}

    def __init__(self, config, out_dir: Path, rank: int = 0, world_size: int = 1):
        from shared.data.musdb import STEMS, MusdbDataset, RemixSampler

        d = config.data
        if config.model.n_sources != len(STEMS):
            raise DataError(f"model.n_sources={config.model.n_sources}, but the MUSDB18 data give "
                            f"{len(STEMS)} stems ({', '.join(STEMS)}); use model.n_sources={len(STEMS)}")
        root = Path(d.root) if d.root else demo_dataset(out_dir / "data" / "synth_musdb", d)
        self.sample_rate, self.segment = d.sample_rate, d.segment_samples
        train = MusdbDataset(root, "train", d.sample_rate, config.model.audio_channels)
        self.valid = MusdbDataset(root, "valid", d.sample_rate, config.model.audio_channels)
        self.sampler = RemixSampler(train, self.segment, config.train.seed, remix=d.remix,
                                    gain_range=(d.gain_min, d.gain_max), channel_swap=d.channel_swap,
                                    min_rms=d.min_rms, rank=rank, world_size=world_size)
        # Fixed validation segments: unaugmented, the same at every evaluation.
        fixed = RemixSampler(self.valid, self.segment, seed=12345, remix=False, gain_range=(1.0, 1.0),
                             channel_swap=False, min_rms=d.min_rms)
        self.val_batches = [fixed.batch(i, 1) for i in range(d.val_segments)]
        if d.val_tracks > len(self.valid):
            raise DataError(f"data.val_tracks={d.val_tracks}, but {root} has {len(self.valid)} "
                            f"validation tracks; lower it, or 0 to score them all")
        self.val_tracks = d.val_tracks or len(self.valid)
        self.units_per_sample = self.segment / d.sample_rate

    def train_batch(self, position: int, batch_size: int) -> dict[str, np.ndarray]:
        return self.sampler.batch(position, batch_size)

    def evaluate(self, trainer) -> dict:
        from shared.data.musdb import STEMS
        from shared.eval.separation import chunk_sdr, chunk_sdr_over_tracks, sdr, usdr_over_tracks
        from shared.audio.chunked import separate

        def scores(i: int) -> list[tuple[float, float]]:
            """(uSDR, chunk SDR) of each stem of validation track i."""
            track = self.valid.load(i)
            estimate = separate(track["mixture"], trainer.predict, self.segment)
            return [(sdr(track["sources"][s], estimate[s]),
                     chunk_sdr(track["sources"][s], estimate[s], self.sample_rate)) for s in range(len(STEMS))]

        # Several ranks: each scores its share of the segments and tracks (shard_map).
        row = {"val_loss": float(np.mean(shard_map(trainer, trainer.eval_loss, self.val_batches)))}
        per_stem = {stem: {"usdr": [], "chunk_sdr": []} for stem in STEMS}
        for track_scores in shard_map(trainer, scores, range(self.val_tracks)):
            for stem, (usdr, chunked) in zip(STEMS, track_scores):
                per_stem[stem]["usdr"].append(usdr)
                per_stem[stem]["chunk_sdr"].append(chunked)
        for stem, scores in per_stem.items():
            row[f"usdr_{stem}"] = usdr_over_tracks(scores["usdr"])
            row[f"chunk_sdr_{stem}"] = chunk_sdr_over_tracks(scores["chunk_sdr"])
        row["usdr_mean"] = float(np.mean([row[f"usdr_{s}"] for s in STEMS]))
        return row

    def checkpoint_files(self) -> dict[str, bytes]:
        return {}


def demo_dataset(root: Path, d) -> Path:
    """Generate the synthetic demo set once (deterministic in data.seed)."""
    from shared.data.synth_musdb import generate

    if not (root / "train").is_dir():
        tmp = root.with_name(root.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)      # left by a killed run
        generate(tmp, tracks=d.synth_tracks, test_tracks=2, valid_tracks=2,
                 seconds=d.synth_seconds, sample_rate=d.sample_rate, seed=d.seed)
        tmp.rename(root)
    return root


def check_separation_config(config) -> None:
    """A training segment must hold one STFT frame of the model (the STFT pads each end by
    n_fft / 2 samples, reflected from inside the segment)."""
    segment, n_fft = config.data.segment_samples, config.model.n_fft
    if segment < n_fft:
        shortest = n_fft / config.data.sample_rate
        raise ConfigError(f"data.segment_seconds={config.data.segment_seconds:g} is {segment} samples "
                          f"at data.sample_rate={config.data.sample_rate}, fewer than one STFT "
                          f"frame of model.n_fft={n_fft}; use data.segment_seconds >= "
                          f"{math.ceil(shortest * 1000) / 1000:g} or a smaller model.n_fft")


def separation_batch(config, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random stems of one training segment and their mixture."""
    spec = config.model
    shape = (batch_size, spec.n_sources, spec.audio_channels, config.data.segment_samples)
    sources = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    return {"mixture": sources.sum(axis=1), "sources": sources}


EXCERPT_SECONDS = 5.0   # the audio an evaluation shows in TensorBoard, W&B or trackio


def separation_media(task: SeparationTask, trainer) -> list:
    """What a tracking sink plays after an evaluation (Family.eval_media): EXCERPT_SECONDS
    from the middle of the first validation track, its mixture and each separated stem,
    separated chunk by chunk as the evaluation separates whole tracks."""
    from shared.audio.chunked import separate
    from shared.data.musdb import STEMS, read_audio
    from shared.engine.tracking import AudioClip

    track = task.valid.tracks[0]
    frames = min(track.frames, int(EXCERPT_SECONDS * task.sample_rate))
    mixture = read_audio(track, "mixture", (track.frames - frames) // 2, frames)
    stems = separate(mixture, trainer.predict, task.segment)
    return [AudioClip(f"excerpt/{name}", np.ascontiguousarray(audio.T), task.sample_rate)
            for name, audio in zip(("mixture",) + STEMS, [mixture, *stems])]


def segment_seconds(config) -> float:
    """Seconds of audio in one training example."""
    return config.data.segment_seconds


def separator_parts() -> dict:
    """What every separator family registers alike (shared/families/tflocoformer.py,
    bandsplit.py): MUSDB18-HQ data, this task, random stems, audio seconds, `separate`."""
    from shared.data.musdb import AudioDataConfig

    return dict(data_config=AudioDataConfig, task=SeparationTask, random_batch=separation_batch,
                unit="audio_s", units_per_example=segment_seconds, inference="separation",
                eval_media=separation_media, check_config=check_separation_config)
