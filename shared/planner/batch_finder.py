"""Find the largest micro-batch that really trains on this device, by probing real steps.

Each probe runs full optimizer steps (forward, backward, AdamW update, so the optimizer
state exists) at one micro-batch size and reports the framework's measured peak memory,
or raises OutOfMemory. Doubling, then bisection. The backends supply the probe
(mlx_models/find_batch_size.py, torch_models/find_batch_size.py); this is seed 003's
find_max_batch_size with the backward pass and the optimizer state counted.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from shared.cli import run_cli
from shared.engine.config import load_config
from shared.errors import ConfigError, SpecError
from shared.planner.core import GB, budget_bytes, plan, with_overrides
from shared.planner.hardware import get_profile
from shared.registry import get_family


class OutOfMemory(Exception):
    """A probe that did not fit (the framework's OOM, or the peak over the budget)."""


def find_max_batch(probe: Callable[[int], float], budget: float, limit: int,
                   log=lambda msg: None) -> tuple[int, dict[int, float]]:
    """The largest b <= limit with probe(b) <= budget; 0 if even b = 1 does not fit."""
    peaks: dict[int, float] = {}

    def fits(b: int) -> bool:
        try:
            peaks[b] = probe(b)
        except OutOfMemory:
            log(f"  batch {b:>5}: out of memory")
            return False
        log(f"  batch {b:>5}: peak {peaks[b] / GB:.3f} GB")
        return peaks[b] <= budget

    if not fits(1):
        return 0, peaks
    good, bad = 1, None
    while bad is None and good < limit:
        candidate = min(good * 2, limit)
        if fits(candidate):
            good = candidate
        else:
            bad = candidate
    while bad is not None and bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good, peaks


def planned_max_batch(config, backend: str, budget: float, limit: int = 1 << 20) -> int:
    """The largest micro-batch (<= limit) whose planned peak fits `budget`; 0 if none does.
    Planning is arithmetic, so this costs milliseconds where a probe costs a training step."""
    def fits(b: int) -> bool:
        candidate = with_overrides(config, {"train.batch_size": b, "train.gradient_accumulation_steps": 1})
        return plan(candidate, backend).peak_bytes <= budget
    return find_max_batch(lambda b: 0.0 if fits(b) else budget + 1, budget, limit)[0]


def main(backend: str, make_probe, argv=None) -> int:
    p = argparse.ArgumentParser(
        prog=f"python -m {backend}_models.find_batch_size",
        description="Probe real training steps to find the largest micro-batch that fits, "
                    "and the accumulation that keeps the config's effective batch.")
    p.add_argument("--config", help="run config (default: configs/tiny.yaml)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    p.add_argument("--budget-gb", type=float,
                   help="memory budget (default: the config's hardware profile, with margin)")
    p.add_argument("--max-batch", type=int,
                   help="largest micro-batch to probe (default: twice what the memory planner "
                        "predicts fits the budget, at most 1024)")
    args = p.parse_intermixed_args(argv)

    def run():
        if (args.budget_gb is not None and not args.budget_gb > 0) or (
                args.max_batch is not None and args.max_batch < 1):
            raise ConfigError("--budget-gb must be > 0 and --max-batch >= 1")
        config = load_config(args.config, args.overrides)
        budget = args.budget_gb * GB if args.budget_gb is not None else budget_bytes(get_profile(config.hardware.device))
        probe = make_probe(config)   # says first if this backend cannot probe here
        # The planner is within ~10 % of measured peaks: probing past twice its answer would
        # spend minutes and gigabytes on batches that cannot fit.
        limit = args.max_batch
        if limit is None:
            planned = planned_max_batch(config, backend, budget, 1024)
            limit = min(1024, max(2, 2 * planned))
            print(f"the memory planner predicts micro-batch {planned} fits: probing up to {limit} "
                  f"(--max-batch to probe further)", file=sys.stderr)
        print(f"probing {backend} micro-batches for {args.config or 'configs/tiny.yaml'}, budget "
              f"{budget / GB:.2f} GB (full steps: forward, backward, AdamW)", file=sys.stderr)
        best, peaks = find_max_batch(probe, budget, limit, log=lambda m: print(m, file=sys.stderr))
        if best == 0:
            raise ConfigError(f"even batch 1 needs {peaks.get(1, float('nan')) / GB:.2f} GB of "
                              f"{budget / GB:.2f} GB; turn on train.gradient_checkpointing, use "
                              f"bf16 or {get_family(config.family).memory.shorter_hint} (python -m shared.plan --fit)")
        effective = config.train.batch_size * config.train.gradient_accumulation_steps
        micro = max(d for d in range(1, min(best, effective) + 1) if effective % d == 0)
        predicted = plan(with_overrides(config, {"train.batch_size": best,
                                                 "train.gradient_accumulation_steps": 1}), backend)
        capped = f" -- the search's bound ({limit}): more may fit, try --max-batch {2 * limit}" if best == limit else ""
        print(f"largest micro-batch: {best}{capped} (measured peak {peaks[best] / GB:.3f} GB; planner "
              f"predicted {predicted.peak_bytes / GB:.3f} GB)")
        print(f"for the effective batch {effective}: train.batch_size={micro} "
              f"train.gradient_accumulation_steps={effective // micro}")
    return run_cli(run, errors=(ConfigError, SpecError))
