"""The command line of `python -m mlx_models.train` and `python -m torch_models.train`."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from shared.checkpoint import CheckpointError
from shared.cli import run_cli
from shared.config import ConfigError, config_from_dict, load_config
from shared.data.lm_text import DataError
from shared.specs.base import SpecError


def parser(backend: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {backend}_models.train",
        description=f"Train a model with the {backend} backend. Without --config, trains the "
                    f"built-in default: a tiny Korean LM on the corpus that ships with the "
                    f"package (configs/tiny.yaml).",
        epilog="examples:\n"
               f"  python -m {backend}_models.train\n"
               f"  python -m {backend}_models.train --config configs/m4max.yaml train.batch_size=8\n"
               f"  python -m {backend}_models.train --resume runs/tiny train.max_steps=600",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (default: configs/tiny.yaml)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="override config values, e.g. train.learning_rate=1e-4")
    p.add_argument("--out", help="run directory (default: runs/<config name>-<backend>)")
    p.add_argument("--resume", metavar="DIR_OR_CKPT",
                   help="continue a run: its directory (newest checkpoint) or one checkpoint; "
                        "the run's saved config is used unless --config is given")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(backend: str, trainer_cls, argv=None) -> int:
    args = parser(backend).parse_args(argv)
    # Only these mean bad input; anything else is a bug and keeps its traceback.
    return run_cli(lambda: train(args, backend, trainer_cls),
                   errors=(ConfigError, SpecError, CheckpointError, DataError))


def train(args, backend: str, trainer_cls) -> None:
    from shared.train_loop import Run, find_checkpoint

    if args.resume and not args.config:
        import yaml
        ckpt = find_checkpoint(args.resume)
        config = config_from_dict(yaml.safe_load((ckpt / "config.yaml").read_text()),
                                  args.overrides)
    else:
        config = load_config(args.config, args.overrides)
    name = Path(args.config).stem if args.config else "tiny"
    out = Path(args.out) if args.out else (
        find_checkpoint(args.resume).parent.parent if args.resume
        else Path("runs") / f"{name}-{backend}")
    if not args.resume and (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
        raise ConfigError(f"{out} already holds checkpoints; pass --resume {out} to continue "
                          f"it, or --out NEW_DIR to start a new run")
    start = time.perf_counter()
    run = Run(config, trainer_cls, out, resume=args.resume, progress=not args.no_progress)
    state = run.train()
    _, peak = run.memory_gb()
    predicted = f" (planner predicted {run.predicted_peak / 1e9:.2f} GB)" if run.predicted_peak else ""
    measured = "process RSS" if run.trainer.memory()[1] == 0 else "measured peak"
    print(f"done: {state.step} steps in {time.perf_counter() - start:.1f}s, best val_loss "
          f"{state.best_val_loss:.4f}, {measured} {peak:.2f} GB{predicted}; run directory {out}",
          file=sys.stderr)
