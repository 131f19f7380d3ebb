"""An MLP regressor: x (in_dim) -> [Linear -> GELU] x depth -> Linear -> y (out_dim).

Everything the workbench needs to know about the family, in one file: the spec and its
parameter manifest, the data section, the task (training batches and evaluation), random
batches, the memory model, and the registration naming the two backends' model classes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.errors import ConfigError
from shared.planner.core import Allocation, MemoryModel, MemoryPlan, Term, overhead_term, static_terms
from shared.ranges import MAX_LAYERS, MAX_WIDTH, Range
from shared.registry import Family, register
from shared.specs.base import BIAS, LINEAR, ParamSpec, check_int, count_params, torch_default_init


# ------------------------------------------------------------------ the model, as data
@dataclass(frozen=True)
class RegressorSpec:
    in_dim: int = 8
    hidden: int = 32
    depth: int = 2            # hidden layers
    out_dim: int = 2

    # Valid ranges, checked when a config is loaded (shared/ranges.py).
    RANGES = {"in_dim": Range(1, MAX_WIDTH), "hidden": Range(1, MAX_WIDTH),
              "depth": Range(1, MAX_LAYERS), "out_dim": Range(1, MAX_WIDTH)}

    def __post_init__(self):
        for name in ("in_dim", "hidden", "depth", "out_dim"):
            check_int(name, getattr(self, name), 1)


def manifest(spec: RegressorSpec) -> list[ParamSpec]:
    dims = [spec.in_dim] + [spec.hidden] * spec.depth + [spec.out_dim]
    out = []
    for i, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:])):
        out += [ParamSpec(f"layers.{i}.weight", (fan_out, fan_in), LINEAR),
                ParamSpec(f"layers.{i}.bias", (fan_out,), BIAS)]
    return out


def init_weights(spec: RegressorSpec, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {p.name: torch_default_init(p, rng) for p in manifest(spec)}


def param_counts(spec: RegressorSpec) -> dict[str, int]:
    return {"total": count_params(manifest(spec))}


# ------------------------------------------------------------------ data and task
@dataclass(frozen=True)
class RegressionDataConfig:
    """A fixed random teacher network; inputs drawn per sample position, targets with noise."""
    noise: float = 0.01
    val_examples: int = 64
    seed: int = 0

    RANGES = {"noise": Range(0.0, 10.0), "val_examples": Range(1, 100_000),
              "seed": Range(0, 2 ** 32 - 1)}

    def validate(self):
        if self.noise < 0 or self.val_examples < 1:
            raise ConfigError("data.noise must be >= 0 and data.val_examples >= 1")


def teacher(spec: RegressorSpec, seed: int):
    rng = np.random.default_rng(seed + 1000)
    w = rng.standard_normal((spec.in_dim, spec.out_dim)) / np.sqrt(spec.in_dim)
    return lambda x: np.tanh(x @ w).astype(np.float32)


def examples(config, split: int, first: int, count: int) -> dict[str, np.ndarray]:
    """Examples first .. first + count - 1 of a split's endless stream (0: train, 1:
    validation): a pure function of the position, so a resumed run sees the same batches."""
    spec, d = config.model, config.data
    rows = [np.random.default_rng([d.seed, split, first + i]).standard_normal(spec.in_dim)
            for i in range(count)]
    x = np.asarray(rows, np.float32)
    noise = np.random.default_rng([d.seed, split, first, count]).standard_normal((count, spec.out_dim))
    return {"x": x, "y": teacher(spec, d.seed)(x) + np.float32(d.noise) * noise.astype(np.float32)}


class RegressionTask:
    file_settings: dict[str, str] = {}

    def __init__(self, config, out_dir: Path, rank: int = 0, world_size: int = 1):
        self.config, self.rank, self.world_size = config, rank, world_size
        self.units_per_sample = 1.0
        self.val = examples(config, 1, 0, config.data.val_examples)

    def train_batch(self, position: int, batch_size: int) -> dict[str, np.ndarray]:
        """This rank's share of the global batch that starts at sample `position`."""
        share = batch_size // self.world_size
        return examples(self.config, 0, position + self.rank * share, share)

    def evaluate(self, trainer) -> dict:
        return {"val_loss": float(trainer.eval_loss(self.val))}

    def checkpoint_files(self) -> dict[str, bytes]:
        return {}


def random_batch(config, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    spec = config.model
    return {"x": rng.standard_normal((batch_size, spec.in_dim)).astype(np.float32),
            "y": rng.standard_normal((batch_size, spec.out_dim)).astype(np.float32)}


# ------------------------------------------------------------------ memory
def plan(config, backend: str, attention, device_type: str) -> MemoryPlan:
    """Weights, AdamW and gradients, plus each layer's input and pre-activation kept for the
    backward pass (float32)."""
    spec, train = config.model, config.train
    n = param_counts(spec)["total"]
    b = train.batch_size
    kept = b * (spec.in_dim + 2 * spec.hidden * spec.depth + spec.out_dim) * 4
    terms = static_terms(n, train, backend, 4) + [
        Term("activations: layers", kept, f"{spec.depth} hidden layers x batch {b}"),
        overhead_term(backend, device_type)]
    largest = Allocation("hidden activation", (b, spec.hidden), b * spec.hidden * 4)
    return MemoryPlan(backend, terms, largest, calibrated=False)


MEMORY = MemoryModel(plan=plan, depth_key="depth", shorter_hint="a smaller model.hidden",
                     full_speed_units=256)


# ------------------------------------------------------------------ registration
REGRESSOR = register(Family(
    name="regressor", spec_class=RegressorSpec, manifest=manifest, init_weights=init_weights,
    param_counts=param_counts,
    backends={"mlx": "tests.fifth_family.mlx_model:Regressor",
              "torch": "tests.fifth_family.torch_model:Regressor"},
    data_config=RegressionDataConfig, task=RegressionTask, random_batch=random_batch,
    memory=MEMORY, unit="examples", units_per_example=lambda config: 1.0,
    bench_configs=("tests/fifth_family/regressor.yaml",)))
