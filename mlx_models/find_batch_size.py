"""python -m mlx_models.find_batch_size --config FILE: the largest micro-batch that trains."""
import gc
import sys

import numpy as np

from shared.planner.batch_finder import OutOfMemory, main
from shared.planner.core import parts_gradient_bytes, with_overrides
from shared.tasks import random_batch


def make_probe(config):
    import mlx.core as mx    # here, not at import: --help and config errors answer at once

    from mlx_models.trainer import Trainer, cpu_streams

    def probe(batch: int) -> float:
        cfg = with_overrides(config, {"train.batch_size": batch, "train.gradient_accumulation_steps": 1})
        # Parallel CPU parts peak wherever their threads happen to interleave, different
        # from run to run. One stream is the repeatable worst case of their activations;
        # the parts add their gradient copies to it.
        parts = cpu_streams(cfg.train, cfg.family)
        one_stream = with_overrides(cfg, {"train.cpu_streams": 1})
        gc.collect()
        mx.clear_cache()
        try:
            trainer = Trainer(one_stream.model, one_stream.train)
            micro = random_batch(cfg, batch, np.random.default_rng(0))
            mx.reset_peak_memory()
            for _ in range(2):  # the second step runs with the optimizer state allocated
                trainer.train_step([micro], cfg.train.learning_rate)
            return mx.get_peak_memory() + parts_gradient_bytes(cfg, parts)
        except RuntimeError as e:  # MLX reports a failed allocation as RuntimeError
            if "memory" in str(e).lower() or "alloc" in str(e).lower():
                raise OutOfMemory(str(e)) from None
            raise
        finally:
            trainer = None
            gc.collect()
    return probe


if __name__ == "__main__":
    sys.exit(main("mlx", make_probe))
