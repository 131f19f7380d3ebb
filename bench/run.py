"""The two backends side by side: training and inference speed, memory, FLOP/s and MFU.

    python bench/run.py                                    # every family's demo config, both backends
    python bench/run.py --models lm                        # the tiny LM only
    python bench/run.py --steps 20 --json b.json --markdown b.md --plot b.png
    python bench/run.py --backends torch --configs configs/cuda_lm.yaml --steps 5   # MFU on CUDA

For every model x backend x config: build the model from the spec's own initial weights,
train it through the backend's Trainer (the same train_step the training CLIs run) on the
same numpy batches of random data (no data files needed), warm up (compilation is not
timed), then time --repeats blocks of --steps full optimizer steps. The backends take
turns block by block, so a change in machine load hits both and the MLX/torch ratio of
each block is a fair pair; the table reports medians and the spread over blocks. Load
that takes the backend's cores hits them unequally, though (torch's threads wait for each
other), so the bench measures how busy other work keeps the machine while it times
(bench/load.py) and marks the ratio unreliable above a threshold.
The LM's inference is greedy decoding through the step of each backend's generate CLI;
on MLX, when mlx-lm is installed, mlx-lm's generate_step on the same weights (exported to
a temporary Hugging Face directory) takes turns with ours run by run (a note under the
table, "references" in the JSON).

Each backend runs in a process of its own, as its training CLI does. In one process they
would disturb each other: importing mlx_models loads OpenBLAS into the global symbol
scope (mlx_models/blas.py), and from then on torch's own `sgemm_` calls resolve to it
too, with OpenBLAS's thread pool competing with torch's OpenMP one.

Nothing is written except the files named by --json, --markdown and --plot.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from shared.cli import run_cli
from shared.engine.config import RunConfig, load_config
from shared.errors import ConfigError, SpecError
from shared.planner.hardware import PROFILES
from shared.registry import families, get_family

# The rest of the bench, by concern. bench/ is the script's directory, so it is on sys.path
# (spawned workers get the same sys.path).
from backends import BACKENDS
from load import OtherLoad, loadavg
from measure import bench_inference, bench_training, ratios, units_per_step
from report import environment, markdown, plot
from worker import Worker

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python bench/run.py", description=__doc__.split("\n\n")[0],
        epilog="Overrides (section.key=value) apply to every config, e.g. train.batch_size=8.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    csv = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    p.add_argument("--models", type=csv, help="comma-separated families (default: every family "
                                               "with bench configs)")
    p.add_argument("--backends", type=csv, default=list(BACKENDS), help="mlx,torch (default: both)")
    p.add_argument("--configs", type=csv, help="comma-separated YAML configs "
                                               "(default: each model's own, e.g. configs/tiny.yaml)")
    p.add_argument("--steps", type=int, default=10, help="optimizer steps per timed block")
    p.add_argument("--repeats", type=int, default=5, help="timed blocks per backend")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    p.add_argument("--gen-tokens", type=int, default=64, help="tokens to decode (0: no generation)")
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--audio-seconds", type=float, default=10.0,
                   help="audio to separate for the separation speed (0: skip)")
    p.add_argument("--stream-seconds", type=lambda s: [float(x) for x in s.split(",") if x],
                   default=[5.0, 60.0], help="EchoStream utterance lengths for per-chunk latency "
                                             "(default 5,60; empty: skip)")
    p.add_argument("--chunk-ms", type=int, default=320, help="EchoStream streaming chunk")
    p.add_argument("--stream-policy", choices=("ctc", "wait-k", "offline"), default="wait-k",
                   help="EchoStream: the simultaneous policy timed per chunk (default wait-k: a "
                        "token per chunk whatever the random weights' CTC heads say)")
    p.add_argument("--hardware", help="shared/planner/hardware.py profile for MFU (default: detected)")
    p.add_argument("--threads", type=int, help="CPU threads for torch and for MLX's BLAS; also sets "
                                                "train.cpu_streams (MLX's parallel CPU parts) "
                                                "(default: the libraries' own, all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the full report here")
    p.add_argument("--markdown", type=Path, help="write the table here")
    p.add_argument("--plot", type=Path, help="write a PNG chart here (needs matplotlib)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = p.parse_intermixed_args(argv)
    bad = [x for x in args.backends if x not in BACKENDS]
    if bad:
        p.error(f"unknown backends: {', '.join(bad)}; known: {', '.join(BACKENDS)}")
    if min(args.steps, args.repeats, 1 if args.threads is None else args.threads) < 1 or args.warmup < 0:
        p.error("--steps, --repeats and --threads must be >= 1, --warmup >= 0")
    if args.hardware and args.hardware not in PROFILES:
        p.error(f"unknown --hardware {args.hardware!r}; known: {', '.join(PROFILES)}")
    if args.models == [] or not args.backends:
        p.error("--models and --backends need at least one name each")
    if (args.gen_tokens < 0 or args.prompt_tokens < 1 or args.audio_seconds < 0 or args.chunk_ms < 10
            or any(s <= 0 for s in args.stream_seconds)):
        p.error("--gen-tokens must be >= 0, --prompt-tokens >= 1, --audio-seconds >= 0, "
                "--chunk-ms >= 10 and each --stream-seconds > 0")
    # Output paths are checked now: a bad one must not throw away a finished run.
    for name in ("json", "markdown", "plot"):
        path = getattr(args, name)
        if path is not None and (path.is_dir() or not path.resolve().parent.is_dir()):
            p.error(f"--{name} {path}: not a file in an existing directory")
    return args


def plan(args) -> list[tuple[str, RunConfig]]:
    """(config path, config) pairs: --configs (each of a family in --models, if given), or
    the bench configs of --models (default: of every family that has them)."""
    known = families()
    models = args.models or ([] if args.configs else [n for n, f in known.items() if f.bench_configs])
    if not args.configs:
        bad = [m for m in models if m not in known]
        if bad:
            raise ConfigError(f"unknown models: {', '.join(bad)}; known: {', '.join(known)} (a family "
                              f"of your own: pass its config with --configs)")
        missing = [m for m in models if not known[m].bench_configs]
        if missing:
            raise ConfigError(f"{', '.join(missing)} name no bench configs; pass --configs")
    paths = args.configs or [str(REPO / c) for m in models for c in known[m].bench_configs]
    runs = []
    # --threads N: N cores per backend, which for MLX on a CPU means N parallel parts.
    overrides = args.overrides + ([f"train.cpu_streams={args.threads}"] if args.threads else [])
    for path in paths:
        config = load_config(path, overrides)
        if args.models and config.family not in args.models:
            raise ConfigError(f"{path} is a {config.family!r} config; add it to --models")
        runs.append((os.path.relpath(path) if os.path.isabs(path) else path, config))
    return runs


def bench(args) -> None:
    configs = plan(args)   # config errors first, before any framework starts
    before_workers = loadavg()   # the fallback where there is no /proc (None on Linux)
    workers = {name: Worker(name, args.threads) for name in args.backends}
    warned = False
    try:
        report = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                  "environment": environment(workers), "runs": []}
        for path, config in configs:
            family = get_family(config.family)
            print(f"bench: {config.family} {path} on {', '.join(workers)} ...", file=sys.stderr, flush=True)
            meter = OtherLoad([w.process.pid for w in workers.values()], args.threads, before_workers)
            training = bench_training(config, workers, args, meter)
            with meter:
                inference = bench_inference(config, workers, args)
            load = meter.result()
            reliable = load.pop("reliable")
            run = {"model": config.family, "config": path, "precision": config.train.precision,
                   "compile": config.train.compile, "unit": family.unit,
                   "units_per_step": units_per_step(config),
                   "flops_per_unit": family.flops_per_unit(config) if family.flops_per_unit else None,
                   "model_spec": config.to_dict()["model"], "train": config.to_dict()["train"],
                   "params": family.param_counts(config.model),
                   "training": training, "inference": inference, **load}
            run["ratios"] = ratios(run, reliable)
            if not reliable and not warned:
                warned = True
                print(f"bench: warning: other work kept {load['other_load_cores']:.2f} cores busy "
                      f"while {config.family} {path} was timed (threshold "
                      f"{load['other_load_threshold_cores']:.2f}); its MLX/torch ratio, and any "
                      f"later run's as busy, is marked unreliable. Rerun on an idle machine.",
                      file=sys.stderr, flush=True)
            report["runs"].append(run)
    finally:
        for w in workers.values():
            w.close()
    table = markdown(report)
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        plot(report, args.plot)


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_cli(lambda: bench(args), errors=(ConfigError, SpecError))


if __name__ == "__main__":
    sys.exit(main())
