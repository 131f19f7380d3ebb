"""The one training loop, for every family and both backends.

A backend supplies a Trainer (mlx_models/trainer.py, torch_models/trainer.py) with:
    train_step(micro_batches, lr) -> {"loss", "grad_norm", "skipped"}
    eval_loss(batch) -> float
    get_weights() / set_weights(weights)               canonical numpy
    optimizer_state() / load_optimizer_state(state)    canonical numpy
    rng_state() / set_rng_state(state)
    memory() -> (current_bytes, peak_bytes)
Everything else -- schedule, accumulation, evaluation, logging, checkpoints, resume,
Ctrl+C -- happens here, once.

A run directory:
    RUN/config.yaml          the resolved config
    RUN/metrics.jsonl        one JSON object per logged step or evaluation
    RUN/data/                tokenizer and token files (built on first use)
    RUN/checkpoints/step_00000100/  model.safetensors, config.yaml, trainer_state.safetensors,
                             train_state.json, tokenizer.model, manifest.json (hashes)
    RUN/checkpoints/best/    the checkpoint with the lowest validation loss
    RUN/tensorboard/, RUN/wandb/, RUN/tracking.json   with train.report_to (shared/engine/tracking.py)
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass
from dataclasses import fields as dataclass_fields
from pathlib import Path

import numpy as np
import yaml

from shared.data.loader import prefetch
from shared.engine.checkpoint import (completed_checkpoints, earlier_checkpoint_hint,
                                      load_safetensors, open_checkpoint, recover_checkpoints,
                                      save_checkpoint, step_of)
from shared.engine.durable import (append_line, atomic_write_bytes, fsync_file, remove_leftovers,
                                   temp_path, write_point)
from shared.engine.config import RunConfig
from shared.engine.distributed import SINGLE, any_rank, gather_objects
from shared.engine.run_files import TRAIN_STATE, checked_train_state, find_checkpoint  # noqa: F401
from shared.engine.schedule import lr_at
from shared.engine.tasks import data_file_problem, make_task, same_data_file
from shared.engine.tracking import Tracker, check_installed
from shared.errors import CheckpointError, ConfigError, StorageError
from shared.registry import get_family

TRAINER_STATE = "trainer_state.safetensors"
UNIT_LABELS = {"tokens": "tok/s", "audio_s": "audio s/s"}     # the progress bar's throughput


@dataclass
class TrainState:
    step: int = 0               # optimizer steps done
    samples_seen: int = 0       # position in the sampler's global sample stream
    tokens_seen: int = 0
    best_val_loss: float = math.inf
    skipped_steps: int = 0
    bad_steps_in_row: int = 0
    world_size: int = 1         # ranks that trained it
    global_batch: int = 0       # examples per optimizer step: batch x accumulation x ranks (0: unknown)


def read_train_state(ckpt: Path) -> TrainState:
    """A checkpoint's train_state.json, checked as a config is (run_files.checked_train_state)."""
    return TrainState(**checked_train_state(ckpt, [f.name for f in dataclass_fields(TrainState)]))


def flatten_micro_batches(micro: list) -> dict[str, np.ndarray]:
    """mlx-data streams flat dicts of arrays: micro-batch k (an array, or a dict of arrays)
    becomes key "0003" or keys "0003.mixture", "0003.sources"."""
    flat = {}
    for k, batch in enumerate(micro):
        if isinstance(batch, dict):
            flat |= {f"{k:04d}.{name}": array for name, array in batch.items()}
        else:
            flat[f"{k:04d}"] = batch
    return flat


def unflatten_micro_batches(flat: dict) -> list:
    """The inverse of flatten_micro_batches (mlx-data does not keep key order)."""
    grouped: dict[str, dict] = {}
    for key in sorted(flat):
        index, _, name = key.partition(".")
        grouped.setdefault(index, {})[name] = flat[key]
    return [group[""] if "" in group else group for _, group in sorted(grouped.items())]


def process_memory() -> tuple[int, int]:
    """(current, peak) resident memory of this process, for backends whose framework
    keeps no allocator statistics on this device (torch on CPU)."""
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak *= 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    try:
        with open("/proc/self/statm") as f:
            current = int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        current = peak
    return current, peak


def _resumable_weights(ckpt: Path, config: RunConfig) -> dict[str, np.ndarray]:
    """The checkpoint's weights, if the config builds the same model (its non-shape
    settings, dropout say, may change on resume)."""
    from dataclasses import fields

    family, saved, _, weights, _ = open_checkpoint(ckpt)
    if family != config.family:
        raise CheckpointError(f"{ckpt} holds a {family!r} model but the config is for "
                              f"{config.family!r}; resume with the run's own config (no --config)")
    shapes = {p.name: p.shape for p in get_family(family).manifest(config.model)}
    if shapes != {name: tuple(w.shape) for name, w in weights.items()}:
        changed = ", ".join(f"model.{f.name} {getattr(saved, f.name)} -> {getattr(config.model, f.name)}"
                            for f in fields(saved) if getattr(saved, f.name) != getattr(config.model, f.name))
        raise CheckpointError(f"{ckpt} holds a model of another shape than the config's "
                              f"({changed}); a resumed run keeps its model: drop those changes")
    return weights


def format_memory(current_gb: float, peak_gb: float, source: str) -> str:
    """"mem=180/200MB" or "mem=2.1/3.4GB" (the framework's tensors, current/peak), or
    "rss=540MB" (the whole process, where the framework keeps no statistics)."""
    if source == "rss":
        return f"rss={current_gb * 1000:.0f}MB" if current_gb < 1 else f"rss={current_gb:.2f}GB"
    if peak_gb < 1:
        return f"mem={current_gb * 1000:.0f}/{peak_gb * 1000:.0f}MB"
    return f"mem={current_gb:.1f}/{peak_gb:.1f}GB"


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def initial_weights(config: RunConfig) -> dict[str, np.ndarray] | None:
    """train.init_from: the weights a new run starts from (None: the spec's own initial
    weights). Parameters matching train.init_exclude keep the spec's initial values; every
    other parameter must be in the source with this model's shape, or one error lists them."""
    from fnmatch import fnmatch

    from shared.engine.checkpoint import resolve_checkpoint

    tc = config.train
    if not tc.init_from:
        return None
    family, source = get_family(config.family), Path(tc.init_from)
    if not source.is_dir():
        raise ConfigError(f"train.init_from {source}: no such checkpoint, run or model directory")
    imported = family.import_weights(source) if family.import_weights else None
    if imported is None:
        ckpt = resolve_checkpoint(source)
        other, _, _, weights, _ = open_checkpoint(ckpt)
        if other != config.family:
            raise ConfigError(f"train.init_from {ckpt} holds a {other!r} model; this run trains "
                              f"{config.family!r}: start from a checkpoint of the same family")
        source = ckpt
    else:
        weights = imported[1]
    manifest = family.manifest(config.model)
    excluded = [p.name for p in manifest if any(fnmatch(p.name, pat) for pat in tc.init_exclude)]
    wrong = [f"{p.name}: {source} has {tuple(weights[p.name].shape) if p.name in weights else 'none'}, "
             f"the model {p.shape}" for p in manifest
             if p.name not in excluded and (p.name not in weights or tuple(weights[p.name].shape) != p.shape)]
    if wrong:
        more = f" (and {len(wrong) - 10} more)" if len(wrong) > 10 else ""
        raise ConfigError(f"train.init_from {source} does not fit this model: {'; '.join(wrong[:10])}"
                          f"{more}; change model.* to match, or list the parameters in "
                          f"train.init_exclude to keep them at their initial values")
    start = family.init_weights(config.model, tc.seed) if excluded else {}
    return {p.name: (start[p.name] if p.name in excluded else np.asarray(weights[p.name], np.float32))
            for p in manifest}


def _row_step(line: str) -> float:
    """A metrics row's step; a line cut short by a killed run counts as after every step."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


class Run:
    """A training run in a run directory. `progress`: a progress bar when stderr is a
    terminal; otherwise (and with progress=False) a plain line every train.log_every steps.
    `force`: train even when the memory plan says the config does not fit the device.
    `collective`: the job's ranks when several processes train (shared/engine/distributed.py);
    every rank builds a Run, reads its share of each batch, and only rank 0 writes."""

    def __init__(self, config: RunConfig, trainer_cls, out_dir: str | Path,
                 resume: str | Path | None = None, rank: int = 0, world_size: int = 1,
                 progress: bool = True, force: bool = False, collective=None):
        self.config, self.out = config, Path(out_dir)
        self.collective = collective or SINGLE
        if collective is not None:
            rank, world_size = collective.rank, collective.world_size
        self.rank, self.world_size = rank, world_size
        self.progress = progress and sys.stderr.isatty()
        tc = config.train
        check_installed(tc.report_to)   # before anything of the run is created or changed
        self.tracker = Tracker()        # the sinks open when training starts
        if self.writes_metrics:
            self._tidy_after_kill()
        if resume is not None:  # checked before any data is built
            ckpt = find_checkpoint(resume)
            weights = _resumable_weights(ckpt, config)
        else:
            weights = initial_weights(config)
        self.predicted_peak, plan_line = self._check_memory_plan(trainer_cls.backend, force)
        # Data and tokenizers are built once, by rank 0; the other ranks then read them.
        if rank == 0:
            self.task = make_task(config, self.out, rank, world_size)
        self.collective.barrier()
        if rank != 0:
            self.task = make_task(config, self.out, rank, world_size)
        self.state = TrainState()
        parallel = {"collective": self.collective} if world_size > 1 else {}
        self.trainer = trainer_cls(config.model, tc, weights, **parallel)
        if plan_line:
            self.log(plan_line)
        if resume is not None:
            self._restore(ckpt)
        elif tc.init_from:
            self.log(f"starting from the weights of {tc.init_from}"
                     + (f" (kept at their initial values: {', '.join(tc.init_exclude)})" if tc.init_exclude else ""))
        if self.rank == 0:
            atomic_write_bytes(self.out / "config.yaml",
                               yaml.safe_dump(config.to_dict(), sort_keys=False).encode())
        self._interrupted = False

    def _tidy_after_kill(self) -> None:
        """What a killed run left: temporary files and checkpoint folders, and a checkpoint
        whose replacement was interrupted (kept under its previous name, put back here)."""
        done = recover_checkpoints(self.out / "checkpoints")
        for folder in (self.out, self.out / "data"):
            done += [f"removed {p.name} (a write that never finished)" for p in remove_leftovers(folder)]
        for line in done:
            self.log(f"{self.out}: {line}")

    # ------------------------------------------------------------------ checkpoints
    def _restore(self, ckpt: Path) -> None:
        """Everything is checked before anything of the run (its metrics) is changed."""
        state = read_train_state(ckpt)
        max_steps = self.config.train.max_steps
        if state.step >= max_steps:
            raise ConfigError(f"{ckpt} is at step {state.step} and train.max_steps is {max_steps}: "
                              f"nothing to train; raise train.max_steps, e.g. "
                              f"train.max_steps={state.step + max_steps}")
        self._check_world_size(ckpt, state)
        self._check_data_files(ckpt)
        extra = load_safetensors(ckpt / TRAINER_STATE)
        self.trainer.load_optimizer_state({k[4:]: v for k, v in extra.items() if k.startswith("opt.")})
        # Rank r's random state is saved as rng.rank<r>.* (rank 0's as rng.*).
        prefix = f"rng.rank{self.rank}." if self.rank else "rng."
        rng = {k[len(prefix):]: v for k, v in extra.items()
               if k.startswith(prefix) and (self.rank or not k.startswith("rng.rank"))}
        if not rng and self.rank:
            print(f"note: {ckpt} holds no random state for rank {self.rank} (it was trained by "
                  f"{state.world_size} ranks): this rank's dropout draws new random numbers",
                  file=sys.stderr, flush=True)
        elif not self.trainer.set_rng_state(rng):
            self.log(f"note: {ckpt} was written by another backend; weights, optimizer and data "
                     f"position carry over, but dropout draws new random numbers")
        self.state = state
        if self.rank == 0:
            self._drop_metrics_after(self.state.step)
        self.log(f"resumed from {ckpt} at step {self.state.step}")

    def _check_world_size(self, ckpt: Path, state: TrainState) -> None:
        """Another number of ranks may continue a run if each optimizer step still sees as
        many examples (batch x accumulation x ranks): the data position and the schedule
        then mean the same."""
        tc = self.config.train
        now = tc.batch_size * tc.gradient_accumulation_steps * self.world_size
        if state.world_size == self.world_size or not state.global_batch or state.global_batch == now:
            return
        per_rank = tc.batch_size * self.world_size
        fix = (f"train.gradient_accumulation_steps={state.global_batch // per_rank}"
               if state.global_batch % per_rank == 0 else
               f"train.batch_size and train.gradient_accumulation_steps whose product times "
               f"{self.world_size} is {state.global_batch}")
        raise ConfigError(f"{ckpt} was trained by {state.world_size} rank(s) with "
                          f"{state.global_batch} examples per optimizer step; here {self.world_size} "
                          f"rank(s) x train.batch_size={tc.batch_size} x "
                          f"train.gradient_accumulation_steps={tc.gradient_accumulation_steps} "
                          f"give {now}: keep the global batch, e.g. {fix}")

    def _check_data_files(self, ckpt: Path) -> None:
        """The resumed model must see the tokens it was trained on: a run whose data now
        train a different tokenizer (new text files, say) would scramble its embeddings."""
        settings = self.task.file_settings
        for name, content in self.task.checkpoint_files().items():
            saved = ckpt / name
            if not saved.is_file():
                continue
            problem = data_file_problem(name, saved.read_bytes())
            if problem:
                raise CheckpointError(f"{saved} is damaged ({problem}){earlier_checkpoint_hint(ckpt)}")
            if not same_data_file(name, saved.read_bytes(), content):
                keep = (f", or keep the checkpoint's: copy {saved} out of the checkpoint and set "
                        f"{settings[name]} to the copy") if name in settings else ""
                raise CheckpointError(f"this run's data give a different {name} than the one "
                                      f"{ckpt} was trained with: resume on the data the run was "
                                      f"trained on{keep}")

    def _drop_metrics_after(self, step: int) -> None:
        """Rows logged after the checkpoint we resume from will be logged again."""
        path = self.out / "metrics.jsonl"
        if path.is_file():
            lines = path.read_text().splitlines()
            rows = [r for r in lines if _row_step(r) <= step]
            if rows != lines:   # a new file renamed over the old: a kill keeps one or the other
                atomic_write_bytes(path, "".join(r + "\n" for r in rows).encode(),
                                   f"rewriting {path.name} up to step {step}")

    def save(self, name: str) -> Path:
        """Write a checkpoint atomically; a failure leaves earlier checkpoints intact.
        Non-finite weights (a diverged run) are never saved. Every rank takes part (sharded
        weights are gathered, every rank's random state is kept); rank 0 writes."""
        weights = self.trainer.get_weights()
        broken = next((k for k, v in weights.items() if not np.isfinite(v).all()), None)
        if broken is not None:
            raise ConfigError(f"step {self.state.step}: weight {broken} is no longer finite (the "
                              f"run diverged), so no checkpoint {name} was written; lower "
                              f"train.learning_rate and {self._restart_hint()}")
        tensors = {f"opt.{k}": v for k, v in self.trainer.optimizer_state().items()}
        for rank, rng in enumerate(gather_objects(self.collective, self.trainer.rng_state())):
            tensors |= {(f"rng.rank{rank}.{k}" if rank else f"rng.{k}"): v for k, v in rng.items()}
        path = self.out / "checkpoints" / name
        if self.rank == 0:
            extra = {TRAINER_STATE: tensors, TRAIN_STATE: json.dumps(asdict(self.state)).encode(),
                     **self.task.checkpoint_files()}
            metrics = self.out / "metrics.jsonl"
            if metrics.is_file():   # the rows this checkpoint covers survive a power loss with it
                fsync_file(metrics)
            try:
                self._check_free_space(path, [weights, tensors, *extra.values()])
                path = save_checkpoint(path, weights, self.config.to_dict(), extra_files=extra)
            except StorageError as e:
                raise self._stopped(e) from None
            self._prune()
        self.collective.barrier()   # no rank runs ahead of a checkpoint being written
        return path

    def _stopped(self, error: StorageError) -> StorageError:
        """A refused write, with where the run stopped and how it goes on."""
        kept = completed_checkpoints(self.out)
        steps = [p.name for p in kept if step_of(p) is not None]
        if steps:
            again = (f"continue from its last checkpoint, {steps[-1]}, with --resume {self.out} "
                     f"once there is room")
        elif kept:
            again = f"continue with --resume {kept[-1]} once there is room"
        else:
            again = "no checkpoint of it was saved yet"
        return StorageError(f"{error}; training stopped at step {self.state.step}: {again}")

    def _check_free_space(self, target: Path, contents: list) -> None:
        """Stop before a checkpoint write that cannot fit: the arrays and bytes it holds,
        with a margin for the file headers (a full disk mid-write is caught too, by
        write_directory, but this says it before any work)."""
        def size(x) -> int:
            if isinstance(x, dict):
                return sum(np.asarray(v).nbytes for v in x.values())
            return len(x)
        needed = int(sum(size(c) for c in contents) * 1.05) + (1 << 20)
        target.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(target.parent).free
        if free < needed:
            raise StorageError(f"not enough space for checkpoint {target}: it needs about "
                               f"{needed / 1e6:.0f} MB and {target.parent} has {free / 1e6:.0f} MB "
                               f"free; free some space")

    def _prune(self) -> None:
        steps = sorted((self.out / "checkpoints").glob("step_*"))
        for old in steps[:-self.config.train.keep_last]:
            # Renamed to a temporary name first: a kill mid-removal leaves no half checkpoint
            # under a checkpoint's name (the next start removes the rest).
            write_point(f"removing {old.name}")
            doomed = temp_path(old)
            os.replace(old, doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    def _check_memory_plan(self, backend: str, force: bool) -> tuple[float | None, str]:
        """What the planner expects (python -m shared.plan): (predicted peak, the line that
        says so). A run that does not fit the device stops here, before any work, with the
        cheapest changes that do fit: otherwise the system kills it minutes later, with no
        message and no checkpoint."""
        from shared.planner.core import GB, budget_bytes, plan, suggestions
        from shared.planner.hardware import get_profile

        try:
            p = plan(self.config, backend, world_size=self.world_size)
        except ValueError:
            return None, ""
        profile = get_profile(self.config.hardware.device)
        budget = budget_bytes(profile)
        fits = p.peak_bytes <= budget
        line = (f"memory plan: predicted peak {p.peak_bytes / GB:.2f} GB on {backend}; "
                f"{'fits' if fits else 'DOES NOT FIT'} {profile.name} ({budget / GB:.1f} GB budget); "
                f"largest tensor: {p.largest.name} {p.largest.shape}")
        if fits:
            return p.peak_bytes, line
        self.log(line)
        if not force:
            fitting = [s for s in suggestions(self.config, backend) if s.peak_bytes <= budget][:3]
            for s in fitting:
                overrides = " ".join(f"{k}={v}" for k, v in s.overrides.items())
                self.log(f"  fits: {s.change} ({s.peak_bytes / GB:.2f} GB): {overrides}")
            raise ConfigError(f"the memory plan needs {p.peak_bytes / GB:.2f} GB, more than the "
                              f"{budget / GB:.1f} GB budget of hardware.device={profile.name}; "
                              f"{'apply a change above, ' if fitting else ''}or let the planner fit "
                              f"the config: python -m shared.plan --config CONFIG --device "
                              f"{profile.name} --fit (--force trains anyway)")
        return p.peak_bytes, "--force: training although the plan does not fit"

    # ------------------------------------------------------------------ logging
    def log(self, text: str) -> None:
        if self.rank == 0:
            print(text, file=sys.stderr, flush=True)

    @property
    def writes_metrics(self) -> bool:
        """Whether this process writes metrics.jsonl and the tracking sinks (one rank does)."""
        return self.rank == 0

    def record(self, row: dict) -> None:
        if self.writes_metrics:
            # A non-finite loss is written as null: NaN is not JSON.
            row = {k: None if isinstance(v, float) and not math.isfinite(v) else v
                   for k, v in row.items()}
            self.out.mkdir(parents=True, exist_ok=True)
            try:
                append_line(self.out / "metrics.jsonl", json.dumps(row))
            except StorageError as e:
                raise self._stopped(e) from None
            self.tracker.log_row(row)

    def memory_gb(self) -> tuple[float, float]:
        """(current, peak) GB: the framework's allocator statistics, or the process RSS where
        it keeps none (torch on a CPU; see memory_source)."""
        current, peak = self.trainer.memory()
        if peak == 0:
            current, peak = process_memory()
        return current / 1e9, peak / 1e9

    @property
    def memory_source(self) -> str:
        """What memory_gb() measures: "rss" (the whole process: the framework, the data,
        Python) or "tensors" (the framework's training tensors, what the planner predicts)."""
        return "rss" if self.trainer.memory()[1] == 0 else "tensors"

    # ------------------------------------------------------------------ the loop
    def evaluate(self) -> dict:
        row = {"step": self.state.step, **self.task.evaluate(self.trainer)}
        media = get_family(self.config.family).eval_media
        if media is not None and self.tracker.shows_media:
            self.tracker.log_media(row["step"], media(self.task, self.trainer))
        self.log(f"step {row['step']}: " + " ".join(
            f"{k} {v:.4f}" if abs(v) < 1000 else f"{k} {v:.1f}" for k, v in row.items() if k != "step"))
        return row

    def train(self, stop_after: int | None = None) -> TrainState:
        """Train to train.max_steps (or stop, with a checkpoint, after `stop_after`)."""
        tc, st = self.config.train, self.state
        last = tc.max_steps if stop_after is None else min(stop_after, tc.max_steps)
        self.step_at_start, self.samples_at_start = st.step, st.samples_seen
        st.world_size = self.world_size
        st.global_batch = tc.batch_size * tc.gradient_accumulation_steps * self.world_size
        units_per_step = (tc.batch_size * tc.gradient_accumulation_steps * self.world_size
                          * self.task.units_per_sample)
        unit = get_family(self.config.family).unit
        rate_key = f"{unit}_per_s"
        rate_label = UNIT_LABELS.get(unit, f"{unit}/s")
        previous = signal.signal(signal.SIGINT, self._on_interrupt)
        bar = self._bar(st.step)
        window_start, window_tokens = time.perf_counter(), 0
        run_start = window_start
        try:
            if self.writes_metrics:
                self.tracker = Tracker.open(tc.report_to, self.out, self.config.to_dict(), st.step)
            if st.step == 0:
                row = self.evaluate()
                self.record(row)
                self._check_finite(row)
            batches = prefetch(self._step_batches, st.step, last)
            while st.step < last and not self._stop_requested():
                lr = lr_at(st.step, tc.learning_rate, tc.min_lr, tc.warmup_steps, tc.max_steps)
                micro = unflatten_micro_batches(next(batches))
                st.samples_seen += len(micro) * tc.batch_size * self.world_size
                result = self.trainer.train_step(micro, lr)
                st.step += 1
                st.tokens_seen += units_per_step
                window_tokens += units_per_step
                if result["skipped"]:
                    st.skipped_steps += 1
                    st.bad_steps_in_row += 1
                    self.record({"step": st.step, "skipped": True, "loss": result["loss"],
                                 "grad_norm": result["grad_norm"]})
                    if st.bad_steps_in_row >= tc.max_bad_steps:
                        # The skipped steps changed nothing: the last checkpoint is the state.
                        raise ConfigError(f"training stopped at step {st.step}: "
                                          f"{st.bad_steps_in_row} non-finite steps in a row "
                                          f"(train.max_bad_steps); lower train.learning_rate or "
                                          f"use train.precision=fp32, and {self._restart_hint()}")
                else:
                    st.bad_steps_in_row = 0
                if st.step % tc.log_every == 0 or st.step == tc.max_steps:
                    elapsed = time.perf_counter() - window_start
                    mem, peak = self.memory_gb()
                    row = {"step": st.step, "loss": result["loss"], "lr": lr,
                           "grad_norm": result["grad_norm"],
                           rate_key: window_tokens / max(elapsed, 1e-9),
                           "mem_gb": round(mem, 3), "peak_mem_gb": round(peak, 3)}
                    self.record(row)
                    memory = format_memory(mem, peak, self.memory_source)
                    if bar is not None:
                        bar.set_postfix_str(f"loss={row['loss']:.4f}, lr={lr:.6f}, "
                                            f"{rate_label}={row[rate_key]:.1f}, {memory}")
                    else:   # a log file, a scheduler, CI: one plain line, no carriage returns
                        done, left = st.step - self.step_at_start, last - st.step
                        eta = (time.perf_counter() - run_start) / max(done, 1) * left
                        self.log(f"step {st.step}/{tc.max_steps} | loss {row['loss']:.4f} | lr {lr:.2e} | "
                                 f"{row[rate_key]:.1f} {rate_label} | {memory} | eta {format_duration(eta)}")
                    window_start, window_tokens = time.perf_counter(), 0
                if bar is not None:
                    bar.update(1)
                if st.step % tc.eval_every == 0 or st.step == tc.max_steps:
                    row = self.evaluate()
                    self.record(row)
                    self._check_finite(row)
                    if row["val_loss"] < st.best_val_loss:
                        st.best_val_loss = row["val_loss"]
                        self.save("best")
                if st.step % tc.save_every == 0 or st.step == tc.max_steps:
                    self.save(f"step_{st.step:08d}")
            if self._stop_requested() or (st.step == last < tc.max_steps and st.step % tc.save_every):
                path = self.save(f"step_{st.step:08d}")
                self.log(f"stopped at step {st.step}: saved {path}; continue with --resume {self.out}")
            if st.bad_steps_in_row and not self._interrupted:
                # Fewer than train.max_bad_steps, but the run ends on them: not a success.
                raise ConfigError(f"training ended at step {st.step} on {st.bad_steps_in_row} "
                                  f"non-finite step(s) in a row (skipped: the weights are those "
                                  f"of step {st.step - st.bad_steps_in_row}); the run is diverging: "
                                  f"lower train.learning_rate and {self._restart_hint()}")
        finally:
            signal.signal(signal.SIGINT, previous)
            if bar is not None:
                bar.close()
            self.tracker.close()
        return st

    def _step_batches(self, step: int) -> dict[str, np.ndarray]:
        """The micro-batches of optimizer step `step` (this rank's share)."""
        tc = self.config.train
        per_step = tc.batch_size * tc.gradient_accumulation_steps * self.world_size
        first = self.samples_at_start + (step - self.step_at_start) * per_step
        return flatten_micro_batches([
            self.task.train_batch(first + k * tc.batch_size * self.world_size, tc.batch_size)
            for k in range(tc.gradient_accumulation_steps)])

    def _restart_hint(self) -> str:
        saved = any((self.out / "checkpoints").glob("step_*"))
        return (f"resume (--resume {self.out})" if saved else
                "start again (no checkpoint was saved)")

    def _check_finite(self, row: dict) -> None:
        """A run never goes on, or ends with exit 0, after an evaluation whose losses are
        not finite: its weights have diverged (validation audio is checked when read)."""
        bad = {k: v for k, v in row.items() if "loss" in k and not math.isfinite(v)}
        if bad:
            shown = ", ".join(f"{k}={v}" for k, v in bad.items())
            raise ConfigError(f"the evaluation at step {row['step']} gave {shown}: the model no "
                              f"longer computes finite values (the run diverged); lower "
                              f"train.learning_rate and {self._restart_hint()}")

    def _stop_requested(self) -> bool:
        """Ctrl+C on any rank stops every rank after the same step (the launcher passes
        the signal on, but the ranks need not see it between the same steps)."""
        if self.world_size > 1:
            self._interrupted = any_rank(self.collective, self._interrupted)
        return self._interrupted

    def _on_interrupt(self, signum, frame):
        # A second Ctrl+C stops at once. Under torchrun the same press arrives twice (from
        # the terminal, then passed on by the launcher): a repeat within a second is one.
        first = getattr(self, "_signal_at", None)
        if first is not None and time.monotonic() - first > 1.0:
            raise KeyboardInterrupt
        if first is not None:
            return
        self._signal_at = time.monotonic()
        self._interrupted = True
        self.log("Ctrl+C: finishing this step and saving a checkpoint (press again to abort)")

    def _bar(self, initial: int):
        if not self.progress or self.rank != 0:
            return None
        from tqdm import tqdm
        return tqdm(total=self.config.train.max_steps, initial=initial, dynamic_ncols=True,
                    file=sys.stderr, desc=f"train[{self.trainer.backend}]")
