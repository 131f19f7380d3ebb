"""Family name -> MLX model class; build, save and load models through checkpoints."""
from __future__ import annotations

from pathlib import Path

from mlx_models import lm, tflocoformer
from mlx_models.weights import get_weights, set_weights
from shared.checkpoint import checkpoint_config, open_checkpoint, save_checkpoint
from shared.specs import family_of, get_family

MODEL_CLASSES = {"lm": lm.LanguageModel, "tflocoformer": tflocoformer.TFLocoformer}
LOSSES = {"lm": lm.loss, "tflocoformer": tflocoformer.loss}


def build_model(spec, seed: int = 0):
    """A model with the spec's own initial weights (identical to torch_models')."""
    family = get_family(family_of(spec))
    model = MODEL_CLASSES[family.name](spec)
    set_weights(model, family.manifest(spec), family.init_weights(spec, seed), source="init")
    return model


def save_model(model, directory: str | Path, extra_config: dict | None = None) -> Path:
    manifest = get_family(family_of(model.spec)).manifest(model.spec)
    return save_checkpoint(directory, get_weights(model, manifest),
                           checkpoint_config(model.spec, extra_config))


def load_model(directory: str | Path):
    """Rebuild the model a checkpoint was saved from; returns (model, config)."""
    family, spec, manifest, weights, config = open_checkpoint(directory)
    model = MODEL_CLASSES[family](spec)
    set_weights(model, manifest, weights, source=f"checkpoint {directory}")
    return model, config
