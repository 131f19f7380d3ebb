"""Will this config fit this device, and what should change if not?

    python -m shared.plan --config configs/m4max.yaml --device m4max_36gb
    python -m shared.plan --config configs/cuda_lm.yaml --device rtx_32gb --backend torch
    python -m shared.plan --config configs/m4max.yaml --device m4max_36gb --fit --out my.yaml
    python -m shared.plan --config configs/cuda_lm.yaml --device rtx_32gb --world-size 4 train.parallel=fsdp
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import yaml

from shared.cli import run_cli
from shared.engine.config import load_config
from shared.errors import ConfigError, SpecError
from shared.planner.core import GB, SAFETY_MARGIN, budget_bytes, fit, plan, suggestions, with_overrides
from shared.planner.hardware import PROFILES, get_profile
from shared.registry import get_family


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m shared.plan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="run config (YAML)")
    p.add_argument("--device", required=True, help=f"hardware profile: {', '.join(PROFILES)}")
    p.add_argument("--backend", choices=["mlx", "torch"],
                   help="default: the profile's (mlx on Macs, torch on NVIDIA)")
    p.add_argument("--attention", choices=["flash", "math"],
                   help="torch only: SDPA kernel assumed (default flash on CUDA, math on CPU)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    p.add_argument("--world-size", type=int, default=1, metavar="N",
                   help="ranks training together (torchrun --nproc_per_node, mlx.launch -n): "
                        "the plan is per device, for train.parallel (ddp: a replica each; "
                        "fsdp: weights, gradients and optimizer state divided by N)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--fit", action="store_true",
                   help="find the fastest config that fits and write it (see --out)")
    p.add_argument("--out", help="where --fit writes (default: CONFIG stem + .DEVICE.yaml)")
    p.add_argument("--force", action="store_true", help="let --fit replace an existing --out")
    return p


def report(config, profile, backend, attention, world_size: int = 1) -> dict:
    p = plan(config, backend, attention, world_size)
    budget = budget_bytes(profile)
    static = p.term("weights") + p.term("optimizer state") + p.term("gradients")
    return {
        "backend": backend, "device": profile.name, "calibrated": p.calibrated,
        "terms": [asdict(t) for t in p.terms], "peak_gb": p.peak_bytes / GB,
        "budget_gb": budget / GB, "fits": p.peak_bytes <= budget,
        "largest": asdict(p.largest), "static_gb": static / GB, "world_size": world_size,
        "parallel": config.train.parallel,
        "suggestions": [asdict(s) | {"peak_gb": s.peak_bytes / GB, "fits": s.peak_bytes <= budget}
                        for s in suggestions(config, backend, attention)],
    } | ({"calibration": p.calibration} if p.calibration else {})


def print_report(r: dict, config_path: str, profile) -> None:
    w = sys.stdout.write
    cal = r.get("calibration") or ("calibrated on MLX" if r["calibrated"]
                                   else "derived, not yet calibrated on this backend")
    ranks = (f", per device of {r['world_size']} ranks ({r['parallel']})"
             if r["world_size"] > 1 else "")
    w(f"Memory plan: {config_path} on {profile.name} ({profile.description}), backend "
      f"{r['backend']} ({cal}){ranks}\n\n")
    w(f"  {'term':<34} {'GB':>8}   detail\n")
    for t in r["terms"]:
        w(f"  {t['name']:<34} {t['bytes'] / GB:>8.2f}   {t['detail']}\n")
    w(f"  {'predicted peak':<34} {r['peak_gb']:>8.2f}\n")
    w(f"  {'budget':<34} {r['budget_gb']:>8.2f}   {profile.memory_bytes / GB:.1f} GB usable "
      f"x {1 - SAFETY_MARGIN:.0%} safety margin\n\n")
    if r["fits"]:
        w(f"FITS: {r['peak_gb']:.2f} GB of {r['budget_gb']:.2f} GB "
          f"({r['peak_gb'] / r['budget_gb']:.0%})\n")
    else:
        w(f"DOES NOT FIT: {r['peak_gb']:.2f} GB needed, {r['budget_gb']:.2f} GB available "
          f"({r['peak_gb'] / r['budget_gb']:.1f}x)\n")
    lg = r["largest"]
    w(f"Largest single allocation: {lg['name']} {tuple(lg['shape'])} = {lg['bytes'] / GB:.2f} GB "
      f"({lg['bytes'] / 2**30:.2f} GiB)\n")
    if r["suggestions"]:
        w("\nChanges, each on its own (predicted peak):\n")
        for i, s in enumerate(r["suggestions"], 1):
            mark = "fits" if s["fits"] else "too big"
            keep = "" if s["keeps_effective_batch"] else "  [changes the model or tokens/step]"
            w(f"  {i:>2}. {s['change']:<70} {s['peak_gb']:>7.2f} GB  {mark}{keep}\n")
        if not r["fits"] and not any(s["fits"] for s in r["suggestions"]):
            w("No single change fits: --fit searches combinations (batch, checkpointing, bf16, "
              "...) and writes the fitted config.\n")


def main(argv=None) -> int:
    args = parser().parse_intermixed_args(argv)

    def run():
        try:
            profile = get_profile(args.device)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        # The plan is for --device: its kind (CPU or GPU) decides the attention path, the
        # framework overhead and MLX's parallel CPU parts, and a fitted config names it.
        config = with_overrides(load_config(args.config, args.overrides),
                                {"hardware.device": profile.name})
        backend = args.backend or profile.backend
        if args.world_size < 1:
            raise ConfigError(f"--world-size must be >= 1, got {args.world_size}")
        r = report(config, profile, backend, args.attention, args.world_size)
        if args.fit:
            fitted, fitted_plan = fit(config, backend, profile, args.attention)
            if fitted is None:
                escalates = len(get_family(config.family).memory.escalations(config)) > 1
                raise ConfigError(
                    f"cannot fit on {profile.name} even at batch 1 with checkpointing and bf16"
                    f"{' (and chunked attention, shorter segments)' if escalates else ''}: "
                    f"that needs {fitted_plan.peak_bytes / GB:.2f} GB (weights+gradients+optimizer "
                    f"alone {r['static_gb']:.2f} GB) of {budget_bytes(profile) / GB:.2f} GB; "
                    f"use a smaller model or a larger device")
            out = Path(args.out) if args.out else Path(args.config).with_suffix(f".{profile.name}.yaml")
            if out.is_dir() or not out.resolve().parent.is_dir():
                raise ConfigError(f"--out {out}: not a file in an existing directory")
            if out.exists() and not args.force:
                raise ConfigError(f"{out} exists; pass --force to replace it or --out another path")
            before, after = config.to_dict(), fitted.to_dict()
            out.write_text(f"# {args.config} fitted to {profile.name} by python -m shared.plan --fit; "
                           f"predicted peak {fitted_plan.peak_bytes / GB:.2f} GB\n"
                           + yaml.safe_dump(after, sort_keys=False))
            diff = {f"{s}.{k}": (before[s][k], after[s][k]) for s in ("model", "data", "train")
                    for k in after[s] if before[s][k] != after[s][k]}
            r["fit"] = {"out": str(out), "peak_gb": fitted_plan.peak_bytes / GB,
                        "changes": {k: list(v) for k, v in diff.items()}}
        if args.json:
            print(json.dumps(r, indent=1))
            return
        print_report(r, args.config, profile)
        if args.fit:
            print(f"\nWrote {r['fit']['out']} (predicted peak {r['fit']['peak_gb']:.2f} GB):")
            for key, (old, new) in r["fit"]["changes"].items():
                print(f"  {key}: {old} -> {new}")
            if not r["fit"]["changes"]:
                print("  (no change needed)")
    return run_cli(run, errors=(ConfigError, SpecError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
