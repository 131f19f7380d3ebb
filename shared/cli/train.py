"""The command line of `python -m mlx_models.train` and `python -m torch_models.train`."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from shared.cli import run_cli
from shared.engine.config import config_from_dict, load_config
from shared.errors import CheckpointError, ConfigError, DataError, SpecError


def parser(backend: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {backend}_models.train",
        description=f"Train a model with the {backend} backend. Without --config, trains the "
                    f"built-in default: a tiny Korean LM on the corpus that ships with the "
                    f"package (configs/tiny.yaml).",
        epilog="examples:\n"
               f"  python -m {backend}_models.train\n"
               f"  python -m {backend}_models.train --config configs/m4max.yaml train.batch_size=8\n"
               f"  python -m {backend}_models.train --resume runs/tiny-{backend} train.max_steps=600",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (default: configs/tiny.yaml)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="override config values, e.g. train.learning_rate=1e-4")
    p.add_argument("--out", help="run directory (default: runs/<config name>-<backend>)")
    p.add_argument("--resume", metavar="DIR_OR_CKPT",
                   help="continue a run: its directory (newest checkpoint) or one checkpoint; "
                        "the run's saved config is used unless --config is given")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar: a plain line every train.log_every steps (the default "
                        "when stderr is not a terminal: a log file, a scheduler, CI)")
    p.add_argument("--restart", action="store_true",
                   help="start the run in --out over from step 0 when it saved no checkpoint "
                        "(it was stopped before its first save); its earlier metrics.jsonl is "
                        "kept as metrics.jsonl.1 (.2, ...)")
    p.add_argument("--force", action="store_true",
                   help="train even when the memory plan says the config does not fit "
                        "hardware.device (by default such a run stops before any work)")
    return p


def main(backend: str, trainer, argv=None, launcher=None) -> int:
    """`trainer`: the backend's Trainer class, or a function that imports and returns it.
    The function is called only when training starts, so --help, argument errors and config
    errors never import the framework (torch takes seconds to import). `launcher`: a
    function that returns the job's collective when a launcher (torchrun, mlx.launch)
    started several ranks, or None (shared/engine/distributed.py)."""
    args = parser(backend).parse_intermixed_args(argv)
    # Only these mean bad input; anything else is a bug and keeps its traceback.
    return run_cli(lambda: train(args, backend, trainer, launcher),
                   errors=(ConfigError, SpecError, CheckpointError, DataError))


def _saved_config(ckpt: Path) -> dict:
    import yaml

    from shared.engine.checkpoint import verify_checkpoint

    verify_checkpoint(ckpt)     # an edited config.yaml is named as such, before it is read

    try:
        raw = yaml.safe_load((ckpt / "config.yaml").read_text())
    except (OSError, yaml.YAMLError) as e:
        raise CheckpointError(f"{ckpt / 'config.yaml'} cannot be read ({e}); pass --config with "
                              f"the run's config, or resume from another checkpoint") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{ckpt / 'config.yaml'} is damaged (not a mapping); pass --config "
                              f"with the run's config, or resume from another checkpoint")
    return raw


def run_directory(args, backend: str, ckpt: Path | None) -> Path:
    """Where the run writes. Resuming writes into the checkpoint's own run. A fresh run, or a
    resumed one sent to another --out, needs a directory that holds no earlier run: its
    checkpoints would be pruned or replaced as "best", and its metrics appended to. `ckpt`:
    the checkpoint resumed from (None for a fresh run)."""
    if ckpt is not None:
        home = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None
        if args.out is None:
            if home is None:
                raise ConfigError(f"{ckpt} is a checkpoint outside a run directory; pass "
                                  f"--out NEW_DIR for the continued run")
            return home
        out = Path(args.out)
        if home is not None and out.resolve() == home.resolve():
            return out
    else:
        name = Path(args.config).stem if args.config else "tiny"
        out = Path(args.out) if args.out else Path("runs") / f"{name}-{backend}"
    from shared.engine.checkpoint import completed_checkpoints

    metrics = out / "metrics.jsonl"
    if completed_checkpoints(out):
        raise ConfigError(f"{out} already holds a run's checkpoints; pass --resume {out} to "
                          f"continue that run, or --out NEW_DIR")
    if metrics.is_file() and metrics.stat().st_size:
        if not getattr(args, "restart", False):
            raise ConfigError(f"{out} holds {metrics.name} from a run that saved no checkpoint; "
                              f"pass --restart to start it over there (its metrics are kept "
                              f"aside), or --out NEW_DIR")
        kept = next(metrics.with_name(f"{metrics.name}.{n}") for n in range(1, 10**6)
                    if not metrics.with_name(f"{metrics.name}.{n}").exists())
        metrics.rename(kept)
        print(f"--restart: {out} starts over from step 0; its earlier metrics are in {kept}",
              file=sys.stderr)
    return out


def train(args, backend: str, trainer, launcher=None) -> None:
    """`trainer`: a Trainer class or a function returning one (see main)."""
    from shared.engine.train_loop import Run, find_checkpoint

    try:
        ckpt = find_checkpoint(args.resume) if args.resume else None
    except CheckpointError as e:
        # The one command that starts such a run over, with this backend's own module.
        raise CheckpointError(str(e).replace("start it over with --config",
                                             f"start it over with: python -m {backend}_models.train "
                                             f"--config")) from None
    if ckpt is not None and not args.config:
        config = config_from_dict(_saved_config(ckpt), args.overrides)
    else:
        config = load_config(args.config, args.overrides)
    out = run_directory(args, backend, ckpt)
    trainer_cls = trainer if isinstance(trainer, type) else trainer()
    collective = launcher() if launcher is not None else None
    start = time.perf_counter()
    try:
        run = Run(config, trainer_cls, out, resume=ckpt, progress=not args.no_progress, force=args.force,
                  collective=collective)
        state = run.train()
    except MemoryError as e:   # numpy's ArrayMemoryError: data or batches beyond this machine
        forced = " (--force ignored the memory plan)" if args.force else ""
        raise ConfigError(f"out of memory{forced}: {str(e).splitlines()[0] if str(e) else 'MemoryError'}; "
                          f"lower train.batch_size or the data sizes (segments, sequence "
                          f"length, validation set), or let the planner fit the config: "
                          f"python -m shared.plan --config CONFIG --fit") from None
    if hasattr(collective, "close"):
        collective.close()
    if run.rank != 0:
        return
    _, peak = run.memory_gb()
    if run.memory_source == "rss":   # the whole process: not what the planner predicts
        memory = f"process RSS {peak:.2f} GB (framework, data and Python included; no tensor statistics here)"
    else:
        predicted = f" (planner predicted {run.predicted_peak / 1e9:.2f} GB)" if run.predicted_peak else ""
        memory = f"measured peak {peak:.2f} GB{predicted}"
    trained = state.step - run.step_at_start
    resumed = f" (resumed at step {run.step_at_start}, now at {state.step})" if run.step_at_start else ""
    print(f"done: {trained} steps{resumed} in {time.perf_counter() - start:.1f}s, best val_loss "
          f"{state.best_val_loss:.4f}, {memory}; run directory {out}", file=sys.stderr)
