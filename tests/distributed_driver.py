"""One rank of a test job (tests/test_distributed.py), started by torchrun or by the test
itself (MLX_RANK + MLX_HOSTFILE):

    python tests/distributed_driver.py torch|mlx runs PLAN.json
        trains the runs PLAN.json lists, one after another in the same job (one launch
        covers every family): [{"config": {...}, "out": DIR, "stop_after": N, "resume": DIR}]
    python tests/distributed_driver.py torch|mlx fail [train CLI arguments]
        the train CLI, whose rank 1 raises at its second optimizer step
    python tests/distributed_driver.py torch|mlx nan PLAN.json
        the runs, rank 1's audio made NaN at its second optimizer step; every rank then
        writes the sha256 of its final weights to OUT/weights.rankN.sha256
"""
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FAILING_RANK = 1


def backend_parts(backend: str):
    """(Trainer class, launcher) of a backend, on the CPU with one thread per rank."""
    if backend == "torch":
        import torch

        torch.set_num_threads(1)
        from torch_models.distributed import from_launcher
        from torch_models.trainer import Trainer
    else:
        from mlx_models.distributed import from_launcher
        from mlx_models.trainer import Trainer
    return Trainer, from_launcher


def train_plan(backend: str, plan_path: str) -> None:
    from shared.engine.config import config_from_dict
    from shared.engine.train_loop import Run

    trainer, launcher = backend_parts(backend)
    collective = launcher()
    for job in json.loads(Path(plan_path).read_text()):
        run = Run(config_from_dict(job["config"]), trainer, job["out"], resume=job.get("resume"),
                  progress=False, collective=collective)
        run.train(stop_after=job.get("stop_after"))


def fail(backend: str, argv: list[str]) -> int:
    from shared.cli.train import main

    trainer, launcher = backend_parts(backend)
    rank = int(os.environ.get("RANK", os.environ.get("MLX_RANK", "0")))

    class FailingTrainer(trainer):
        steps = 0

        def train_step(self, micro_batches, lr):
            self.steps += 1
            if rank == FAILING_RANK and self.steps == 2:
                raise RuntimeError(f"rank {rank} fails on purpose at {time.time():.3f}")
            return super().train_step(micro_batches, lr)

    return main(backend, FailingTrainer, argv, launcher=launcher)


def nan_plan(backend: str, plan_path: str) -> None:
    """A non-finite step on one rank only: every rank must skip it alike."""
    import hashlib

    import numpy as np

    from shared.engine.config import config_from_dict
    from shared.engine.train_loop import Run

    trainer, launcher = backend_parts(backend)
    collective = launcher()

    class PoisonedTrainer(trainer):
        steps = 0

        def train_step(self, micro_batches, lr):
            self.steps += 1
            if collective.rank == FAILING_RANK and self.steps == 2:
                micro_batches = [{k: (np.full_like(v, np.nan) if v.dtype.kind == "f" else v)
                                  for k, v in batch.items()} for batch in micro_batches]
            return super().train_step(micro_batches, lr)

    for job in json.loads(Path(plan_path).read_text()):
        run = Run(config_from_dict(job["config"]), PoisonedTrainer, job["out"], progress=False,
                  collective=collective)
        run.train()
        weights = run.trainer.get_weights()
        digest = hashlib.sha256(b"".join(np.ascontiguousarray(weights[k]).tobytes() for k in sorted(weights)))
        (Path(job["out"]) / f"weights.rank{collective.rank}.sha256").write_text(digest.hexdigest())


if __name__ == "__main__":
    backend, mode, *rest = sys.argv[1:]
    if mode == "runs":
        train_plan(backend, rest[0])
    elif mode == "nan":
        nan_plan(backend, rest[0])
    else:
        sys.exit(fail(backend, rest))
