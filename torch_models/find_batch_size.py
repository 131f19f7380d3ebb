"""python -m torch_models.find_batch_size --config FILE: the largest micro-batch that trains
(CUDA: torch keeps no allocator statistics on the CPU)."""
import gc
import sys

import numpy as np

from shared.errors import ConfigError
from shared.planner.batch_finder import OutOfMemory, main
from shared.planner.core import with_overrides
from shared.tasks import random_batch


def make_probe(config):
    import torch    # here, not at import: --help and config errors answer at once

    from torch_models.trainer import Trainer

    if not torch.cuda.is_available():
        raise ConfigError("torch_models.find_batch_size needs a CUDA device (torch keeps no "
                          "memory statistics on the CPU); use python -m shared.plan instead")

    def probe(batch: int) -> float:
        cfg = with_overrides(config, {"train.batch_size": batch, "train.gradient_accumulation_steps": 1})
        trainer = None
        gc.collect()
        torch.cuda.empty_cache()
        try:
            trainer = Trainer(cfg.model, cfg.train)
            micro = random_batch(cfg, batch, np.random.default_rng(0))
            torch.cuda.reset_peak_memory_stats()
            for _ in range(2):  # the second step runs with the optimizer state allocated
                trainer.train_step([micro], cfg.train.learning_rate)
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        except torch.cuda.OutOfMemoryError as e:
            raise OutOfMemory(str(e)) from None
        finally:
            del trainer
            gc.collect()
            torch.cuda.empty_cache()
    return probe


if __name__ == "__main__":
    sys.exit(main("torch", make_probe))
