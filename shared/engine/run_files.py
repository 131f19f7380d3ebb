"""What is on disk in a run directory, read with checks: which checkpoint a resume starts from
(find_checkpoint) and its train_state.json (checked_train_state). Every refusal is one
CheckpointError that says what to do instead.

    RUN/config.yaml, RUN/metrics.jsonl, RUN/data/, RUN/checkpoints/{step_*,best}/
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from shared.engine.checkpoint import (MANIFEST_FILE, earlier_checkpoint_hint, is_checkpoint,
                                      not_a_checkpoint, resolve_named, step_of)
from shared.errors import CheckpointError

TRAIN_STATE = "train_state.json"


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory (its newest checkpoint). A checkpoint whose
    replacement was killed resolves to the complete one it kept (checkpoint.resolve_named)."""
    path = Path(path)
    named = resolve_named(path)
    if named is not None and (named / TRAIN_STATE).is_file():
        return named
    if named is not None or (path / "model.safetensors").exists():
        if not (_listed_in_manifest(path, TRAIN_STATE) or path.parent.name == "checkpoints"):
            raise CheckpointError(f"{path} holds a model but no {TRAIN_STATE}: not a training "
                                  f"checkpoint, so it cannot be resumed; start a new run from "
                                  f"its weights with train.init_from={path}")
        raise CheckpointError(f"{path / TRAIN_STATE} is missing: not a complete training "
                              f"checkpoint{earlier_checkpoint_hint(path)}")
    if not path.is_dir():
        raise CheckpointError(not_a_checkpoint(path))
    steps = [p for p in sorted((path / "checkpoints").glob("step_*")) if is_checkpoint(p)]
    if steps:
        return steps[-1]
    best = resolve_named(path / "checkpoints" / "best")
    if best is not None:
        raise CheckpointError(f"{path} has no step_* checkpoint left, only checkpoints/best; "
                              f"resume from it with --resume {path / 'checkpoints' / 'best'}")
    if is_run_directory(path):
        raise CheckpointError(f"{path} holds no completed checkpoint (the run stopped before its "
                              f"first save): nothing to resume; start it over with --config "
                              f"{path / 'config.yaml'} --out {path} --restart")
    raise CheckpointError(not_a_checkpoint(path))


def _listed_in_manifest(ckpt: Path, name: str) -> bool:
    try:
        return name in json.loads((ckpt / MANIFEST_FILE).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def is_run_directory(path: Path) -> bool:
    """Whether `path` looks like a run's directory (with or without a checkpoint yet)."""
    return (path / "config.yaml").is_file() and ((path / "metrics.jsonl").is_file()
                                                 or (path / "checkpoints").is_dir()
                                                 or (path / "data").is_dir())


_STATE_COUNTS = ("step", "samples_seen", "skipped_steps", "bad_steps_in_row")


def checked_train_state(ckpt: Path, names: list[str]) -> dict:
    """A checkpoint's train_state.json (the fields `names` of train_loop.TrainState), checked
    as a config is: every key, of its type, in its range, and the step the checkpoint's name
    says. An edit or damage is one error naming the file and the checkpoint to use instead,
    never a run that goes on from the wrong place."""
    path = ckpt / TRAIN_STATE
    hint = earlier_checkpoint_hint(ckpt)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: not a complete training checkpoint{hint}")
    try:
        raw = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is damaged ({e}){hint}") from None
    if not isinstance(raw, dict) or set(raw) != set(names):
        got = ", ".join(sorted(raw)) if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(f"{path} is damaged: it must hold {', '.join(names)} (it holds "
                              f"{got or 'nothing'}){hint}")
    def bad(key: str, need: str):
        return CheckpointError(f"{path}: {key} must be {need}, got {raw[key]!r}{hint}")
    for key in _STATE_COUNTS:
        if not isinstance(raw[key], int) or isinstance(raw[key], bool) or raw[key] < 0:
            raise bad(key, "an integer >= 0")
    tokens, best = raw["tokens_seen"], raw["best_val_loss"]
    if not isinstance(tokens, (int, float)) or isinstance(tokens, bool) or not 0 <= tokens < math.inf:
        raise bad("tokens_seen", "a number >= 0")
    if not isinstance(best, (int, float)) or isinstance(best, bool) or math.isnan(best):
        raise bad("best_val_loss", "a number (Infinity before the first evaluation)")
    if raw["skipped_steps"] > raw["step"] or raw["bad_steps_in_row"] > raw["skipped_steps"]:
        raise bad("skipped_steps", f"at most step={raw['step']} (and bad_steps_in_row at most it)")
    named = step_of(ckpt)
    if named is not None and raw["step"] != named:
        raise CheckpointError(f"{path} says step {raw['step']} but the checkpoint is {ckpt.name}: "
                              f"the file was edited or belongs elsewhere{hint}")
    return raw
