"""The two contracts of the training engine, as typing.Protocol classes.

`Trainer` is what each backend implements once for every family (mlx_models/trainer.py,
torch_models/trainer.py); `Task` is what each family implements once for both backends
(shared/tasks/, or a family's own spec file). The loop (shared/engine/train_loop.py), the
tasks' evaluations and the bench use nothing beyond these. tests/test_protocols.py checks
both trainers and every registered family's task against them.

Batches are numpy: an array, or a dict of arrays (shared/engine/train_loop.py moves them
through mlx-data), identical for both backends.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

Batch = Any   # np.ndarray | dict[str, np.ndarray]


@runtime_checkable
class Trainer(Protocol):
    """One backend's side of training: built as Trainer(spec, train_config, weights=None)."""
    backend: str                       # "mlx" | "torch"

    def train_step(self, micro_batches: list[Batch], lr: float) -> dict:
        """Average the micro-batches' gradients, clip, update; returns {"loss", "grad_norm",
        "skipped"} (a non-finite step changes nothing and says skipped)."""

    def eval_loss(self, batch: Batch) -> float:
        """The loss on `batch` in eval mode."""

    def eval_terms(self, batch: Batch) -> dict[str, float]:
        """Every term of a weighted loss ({"loss": total, term: value}; {"loss"} for one term)."""

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        """The model's output for `inputs` in eval mode (separators: the stems)."""

    def decode(self, batch: Batch, **options) -> dict[str, np.ndarray]:
        """The model's own inference (EchoStream's greedy decoding), outputs as numpy."""

    def get_weights(self) -> dict[str, np.ndarray]:
        """Canonical names and layout (the manifest's), float32."""

    def set_weights(self, weights: dict[str, np.ndarray]) -> None: ...

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """AdamW moments under canonical names (`<param>.m`, `<param>.v`) and `step`."""

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None: ...

    def rng_state(self) -> dict[str, np.ndarray]: ...

    def set_rng_state(self, state: dict[str, np.ndarray]) -> None: ...

    def memory(self) -> tuple[int, int]:
        """(current, peak) bytes from the framework; (0, 0) where it keeps no statistics."""


@runtime_checkable
class Task(Protocol):
    """One family's data and evaluation: built as task(config, out_dir, rank, world_size)."""
    units_per_sample: float            # the family's unit (Family.unit) per training example
    file_settings: dict[str, str]      # checkpoint file name -> the config key that can name it

    def train_batch(self, position: int, batch_size: int) -> Batch:
        """This rank's share of the global batch of `batch_size` examples that starts at
        sample `position`: a pure function of the position, so a resume is exact."""

    def evaluate(self, trainer: Trainer) -> dict:
        """{"val_loss": ..., other metrics}; the loop keeps the checkpoint with the lowest."""

    def checkpoint_files(self) -> dict[str, bytes]:
        """Files saved beside the weights (tokenizers, CMVN statistics)."""
