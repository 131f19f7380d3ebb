"""The separators' task (TF-Locoformer and band-split): remixed MUSDB18-HQ-layout segments
(shared/data/musdb.py), evaluated by validation loss and SDR on whole tracks."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.engine.distributed import shard_map
from shared.errors import DataError


class SeparationTask:
    """Music source separation on a MUSDB18-HQ-layout root (a generated demo set when
    data.root is empty). Evaluation: loss on fixed validation segments, then uSDR and
    cSDR per stem on whole validation tracks, separated chunk by chunk."""
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
        from shared.eval.separation import csdr, csdr_over_tracks, sdr, usdr_over_tracks
        from shared.audio.chunked import separate

        def scores(i: int) -> list[tuple[float, float]]:
            """(uSDR, cSDR) of each stem of validation track i."""
            track = self.valid.load(i)
            estimate = separate(track["mixture"], trainer.predict, self.segment)
            return [(sdr(track["sources"][s], estimate[s]),
                     csdr(track["sources"][s], estimate[s], self.sample_rate)) for s in range(len(STEMS))]

        # Several ranks: each scores its share of the segments and tracks (shard_map).
        row = {"val_loss": float(np.mean(shard_map(trainer, trainer.eval_loss, self.val_batches)))}
        per_stem = {stem: {"usdr": [], "csdr": []} for stem in STEMS}
        for track_scores in shard_map(trainer, scores, range(self.val_tracks)):
            for stem, (usdr, chunked) in zip(STEMS, track_scores):
                per_stem[stem]["usdr"].append(usdr)
                per_stem[stem]["csdr"].append(chunked)
        for stem, scores in per_stem.items():
            row[f"usdr_{stem}"] = usdr_over_tracks(scores["usdr"])
            row[f"csdr_{stem}"] = csdr_over_tracks(scores["csdr"])
        row["usdr_mean"] = float(np.mean([row[f"usdr_{s}"] for s in STEMS]))
        return row

    def checkpoint_files(self) -> dict[str, bytes]:
        return {}


def demo_dataset(root: Path, d) -> Path:
    """Generate the synthetic demo set once (deterministic in data.seed)."""
    from shared.data.synth_musdb import generate

    if not (root / "train").is_dir():
        tmp = root.with_name(root.name + ".tmp")
        generate(tmp, tracks=d.synth_tracks, test_tracks=2, valid_tracks=2,
                 seconds=d.synth_seconds, sample_rate=d.sample_rate, seed=d.seed)
        tmp.rename(root)
    return root


def separation_batch(config, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random stems of one training segment and their mixture."""
    spec = config.model
    shape = (batch_size, spec.n_sources, spec.audio_channels, config.data.segment_samples)
    sources = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    return {"mixture": sources.sum(axis=1), "sources": sources}


def segment_seconds(config) -> float:
    """Seconds of audio in one training example."""
    return config.data.segment_seconds


def separator_parts() -> dict:
    """What every separator family registers alike (shared/families/tflocoformer.py,
    bandsplit.py): MUSDB18-HQ data, this task, random stems, audio seconds, `separate`."""
    from shared.data.musdb import AudioDataConfig

    return dict(data_config=AudioDataConfig, task=SeparationTask, random_batch=separation_batch,
                unit="audio_s", units_per_example=segment_seconds, inference="separation")
