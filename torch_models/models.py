"""Family name -> torch model class; build, save and load models through checkpoints."""
from __future__ import annotations

from pathlib import Path

from torch_models import bandsplit, echostream, lm, tflocoformer
from torch_models.weights import get_weights, set_weights
from shared import model_io

MODEL_CLASSES = {"lm": lm.LanguageModel, "tflocoformer": tflocoformer.TFLocoformer,
                 "bandsplit": bandsplit.BandSplitSeparator, "echostream": echostream.EchoStream}
LOSSES = {"lm": lm.loss, "tflocoformer": tflocoformer.loss, "bandsplit": bandsplit.loss,
          "echostream": echostream.loss}
# Families whose loss is a weighted sum report each term: name -> loss_terms(model, batch)
# returning {"loss": total, term: value, ...}.
LOSS_TERMS = {"echostream": echostream.loss_terms}


def build_model(spec, seed: int = 0, weights=None):
    """A model with `weights`, or else the spec's own initial weights (identical on both
    backends)."""
    return model_io.build_model(spec, MODEL_CLASSES, set_weights, seed, weights)


def save_model(model, directory: str | Path, extra_config: dict | None = None) -> Path:
    return model_io.save_model(model, directory, get_weights, extra_config)


def load_model(directory: str | Path, expect: tuple[str, ...] = (), what: str = ""):
    """Rebuild the model a checkpoint was saved from; returns (model, config). `expect`:
    the families the caller can use (shared/model_io.py)."""
    return model_io.load_model(directory, MODEL_CLASSES, set_weights, expect, what)
