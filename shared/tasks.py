"""What the training loop needs from a model family, framework-neutrally: its training
batches, its evaluation, and the files its checkpoints carry.

    Task.train_batch(position, batch_size)  this rank's share of a global batch (numpy)
    Task.evaluate(trainer)                   {"val_loss", ...}: the loop keeps the best
    Task.unit, Task.units_per_sample         "tokens" or "audio_s", for throughput
    Task.checkpoint_files()                  {name: bytes} saved beside the weights
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from shared.data.lm_text import LMDataset, WindowSampler, eval_batches


class LMTask:
    unit = "tokens"

    def __init__(self, config, out_dir: Path, rank: int = 0, world_size: int = 1):
        tc = config.train
        self.data = LMDataset(config.data, config.model.vocab_size, out_dir / "data")
        self.sampler = WindowSampler(self.data.train, config.seq_length, tc.seed, rank, world_size)
        self.val_batches = eval_batches(self.data.val, config.seq_length, tc.batch_size, tc.eval_batches)
        self.units_per_sample = config.seq_length

    def train_batch(self, position: int, batch_size: int) -> np.ndarray:
        return self.sampler.batch(position, batch_size)

    def evaluate(self, trainer) -> dict:
        val_loss = float(np.mean([trainer.eval_loss(b) for b in self.val_batches]))
        return {"val_loss": val_loss, "val_ppl": float(math.exp(min(val_loss, 50)))}

    def checkpoint_files(self) -> dict[str, bytes]:
        return {"tokenizer.model": self.data.tokenizer_path.read_bytes()}


class SeparationTask:
    """Music source separation on a MUSDB18-HQ-layout root (a generated demo set when
    data.root is empty). Evaluation: loss on fixed validation segments, then uSDR and
    cSDR per stem on whole validation tracks, separated chunk by chunk."""
    unit = "audio_s"

    def __init__(self, config, out_dir: Path, rank: int = 0, world_size: int = 1):
        from shared.data.musdb import MusdbDataset, RemixSampler

        d = config.data
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
        self.val_tracks = d.val_tracks or len(self.valid)
        self.units_per_sample = self.segment / d.sample_rate

    def train_batch(self, position: int, batch_size: int) -> dict[str, np.ndarray]:
        return self.sampler.batch(position, batch_size)

    def evaluate(self, trainer) -> dict:
        from shared.data.musdb import STEMS
        from shared.metrics import csdr, csdr_over_tracks, sdr, usdr_over_tracks
        from shared.separation import separate

        row = {"val_loss": float(np.mean([trainer.eval_loss(b) for b in self.val_batches]))}
        per_stem = {stem: {"usdr": [], "csdr": []} for stem in STEMS}
        for i in range(self.val_tracks):
            track = self.valid.load(i)
            estimate = separate(track["mixture"], trainer.predict, self.segment)
            for s, stem in enumerate(STEMS):
                per_stem[stem]["usdr"].append(sdr(track["sources"][s], estimate[s]))
                per_stem[stem]["csdr"].append(csdr(track["sources"][s], estimate[s], self.sample_rate))
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


TASKS = {"lm": LMTask, "tflocoformer": SeparationTask, "bandsplit": SeparationTask}


def make_task(config, out_dir: Path, rank: int = 0, world_size: int = 1):
    return TASKS[config.family](config, Path(out_dir), rank, world_size)
