"""Build, save and load models through checkpoints, for either backend.

A backend passes its name and its two weight functions (module <-> canonical numpy); the
model class comes from the family's registration (shared/registry.py), and everything else
-- the spec's initial weights, the manifest, the checkpoint format -- is the same on both
sides.
"""
from __future__ import annotations

from pathlib import Path

from shared.engine.checkpoint import checkpoint_config, open_checkpoint, save_checkpoint
from shared.errors import CheckpointError
from shared.registry import family_of, get_family


def build_model(spec, backend: str, set_weights, seed: int = 0, weights=None):
    """A model with `weights` (canonical numpy), or else the spec's own initial weights
    for `seed` (identical on both backends)."""
    family = get_family(family_of(spec))
    model = family.backend(backend).model_class(spec)
    if weights is None:
        weights, source = family.init_weights(spec, seed), "init"
    else:
        source = "initial weights"
    set_weights(model, family.manifest(spec), weights, source=source)
    return model


def save_model(model, directory: str | Path, get_weights, extra_config: dict | None = None) -> Path:
    manifest = get_family(family_of(model.spec)).manifest(model.spec)
    return save_checkpoint(directory, get_weights(model, manifest),
                           checkpoint_config(model.spec, extra_config))


def load_model(directory: str | Path, backend: str, set_weights, expect: str | None = None,
               what: str = ""):
    """Rebuild the model a checkpoint was saved from; returns (model, config). With `expect`
    (a Family.inference kind: "generation", "separation", "streaming"), a checkpoint of a
    family that does not do it is a CheckpointError naming `what` was wanted."""
    family, spec, manifest, weights, config = open_checkpoint(directory)
    family = get_family(family)
    if expect is not None and family.inference != expect:
        raise CheckpointError(f"{directory} holds a {family.name!r} model, not {what}")
    model = family.backend(backend).model_class(spec)
    set_weights(model, manifest, weights, source=f"checkpoint {directory}")
    return model, config
