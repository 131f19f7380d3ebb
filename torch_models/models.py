"""Build, save and load torch models through checkpoints (shared/engine/model_io.py); each
family's torch model class is named in its registration (shared/registry.py)."""
from __future__ import annotations

from pathlib import Path

from shared.engine import model_io
from torch_models.weights import get_weights, set_weights

BACKEND = "torch"


def build_model(spec, seed: int = 0, weights=None):
    """A model with `weights`, or else the spec's own initial weights (identical on both
    backends)."""
    return model_io.build_model(spec, BACKEND, set_weights, seed, weights)


def save_model(model, directory: str | Path, extra_config: dict | None = None) -> Path:
    return model_io.save_model(model, directory, get_weights, extra_config)


def load_model(directory: str | Path, expect: str | None = None, what: str = ""):
    """Rebuild the model a checkpoint was saved from; returns (model, config). `expect`:
    the inference the caller needs (shared/engine/model_io.py)."""
    return model_io.load_model(directory, BACKEND, set_weights, expect, what)
