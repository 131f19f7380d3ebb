"""The LM family's task: packed windows of SentencePiece tokens (shared/data/lm_text.py),
evaluated by validation loss and perplexity."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from shared.data.lm_text import LMDataset, WindowSampler, eval_batches
from shared.engine.distributed import shard_map


class LMTask:
    # The config setting that can point at each file checkpoint_files() saves.
    file_settings = {"tokenizer.model": "data.tokenizer"}

    def __init__(self, config, out_dir: Path, rank: int = 0, world_size: int = 1):
        tc = config.train
        self.data = LMDataset(config.data, config.model.vocab_size, out_dir / "data")
        self.sampler = WindowSampler(self.data.train, config.seq_length, tc.seed, rank, world_size)
        self.val_batches = eval_batches(self.data.val, config.seq_length, tc.batch_size, tc.eval_batches)
        self.units_per_sample = config.seq_length

    def train_batch(self, position: int, batch_size: int) -> np.ndarray:
        return self.sampler.batch(position, batch_size)

    def evaluate(self, trainer) -> dict:
        val_loss = float(np.mean(shard_map(trainer, trainer.eval_loss, self.val_batches)))
        return {"val_loss": val_loss, "val_ppl": float(math.exp(min(val_loss, 50)))}

    def checkpoint_files(self) -> dict[str, bytes]:
        return {"tokenizer.model": self.data.tokenizer_path.read_bytes()}


def lm_batch(config, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """(batch, seq + 1) random token ids."""
    return rng.integers(0, config.model.vocab_size, (batch_size, config.seq_length + 1)).astype(np.int32)
