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
each block is a fair pair; the table reports medians and the spread over blocks.

Each backend runs in a process of its own, as its training CLI does. In one process they
would disturb each other: importing mlx_models loads OpenBLAS into the global symbol
scope (mlx_models/blas.py), and from then on torch's own `sgemm_` calls resolve to it
too, with OpenBLAS's thread pool competing with torch's OpenMP one.

Nothing is written except the files named by --json, --markdown and --plot.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from shared.cli import run_cli
from shared.engine.config import RunConfig, load_config
from shared.engine.sampling import sample_next
from shared.errors import ConfigError, SpecError
from shared.planner.hardware import PROFILES, get_profile
from shared.registry import families, get_family
from shared.tasks import random_batch

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------- families
# What the bench needs of a family is in its registration (shared/registry.py): its unit,
# units per example, FLOPs per unit (None: no MFU), inference kind and default configs.
def step_batches(config: RunConfig, rng) -> list:
    """One optimizer step's micro-batches of random data (the family's random_batch)."""
    return [random_batch(config, config.train.batch_size, rng)
            for _ in range(config.train.gradient_accumulation_steps)]


def units_per_step(config: RunConfig) -> float:
    tc = config.train
    return tc.batch_size * tc.gradient_accumulation_steps * get_family(config.family).units_per_example(config)


# ---------------------------------------------------------------------------- backends
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class Backend:
    """One framework, driven from the bench's main process through a Worker. Subclasses
    supply the framework specifics; the timing loops are here, once."""
    name: str

    def start(self, config: RunConfig, warmup: list[list[np.ndarray]], lr: float) -> str:
        """Build the trainer and run the untimed warm-up steps; return the device."""
        self.trainer = self.make_trainer(config)
        for micro in warmup:     # compilation and allocator growth happen here
            self.trainer.train_step(micro, lr)
        self.sync()
        return self.device()

    def block(self, steps: list[list[np.ndarray]], lr: float) -> tuple[float, int]:
        """Seconds per optimizer step over `steps`, and the peak memory meanwhile (0: the
        framework keeps no statistics here: torch on CPU)."""
        self.sync()
        self.reset_peak_memory()
        start = time.perf_counter()
        for micro in steps:
            if self.trainer.train_step(micro, lr)["skipped"]:
                raise RuntimeError("non-finite loss or gradient")
        self.sync()
        return (time.perf_counter() - start) / len(steps), self.trainer.memory()[1]

    def finish(self) -> None:
        self.trainer = None

    def parallel_parts(self) -> int:
        """Parts each micro-batch is split into, computed in parallel (MLX on a CPU)."""
        return 1

    def generate(self, decoder: str, spec, seed: int, prompt: np.ndarray, new: int,
                 repeats: int) -> dict:
        """Prefill `prompt`, then decode `new` tokens greedily through the KV cache, timing
        both; the first of repeats + 1 runs is the warm-up."""
        start_decoder = getattr(self, decoder)(spec, seed)
        greedy = np.random.default_rng(0)   # sample_next wants one; unused at temperature 0
        prefill, decode = [], []
        for rep in range(repeats + 1):
            next_logits = start_decoder()   # a fresh cache
            t0 = time.perf_counter()
            logits = next_logits(prompt)
            t1 = time.perf_counter()
            for _ in range(new):
                logits = next_logits(np.array([[sample_next(logits, 0.0, 1.0, greedy)]], np.int32))
            t2 = time.perf_counter()
            if rep:
                prefill.append(prompt.shape[1] / (t1 - t0))
                decode.append(new / (t2 - t1))
        return {"prompt_tokens": prompt.shape[1], "new_tokens": new,
                "prefill_tokens_per_s": spread(prefill), "decode_tokens_per_s": spread(decode),
                "metric": "decode tokens/s", "value": spread(decode)}

    def separation(self, spec, seed: int, mixture: np.ndarray, chunk: int, sample_rate: int,
                   repeats: int) -> dict:
        """Separate `mixture` (C, T) chunk by chunk with overlap-add, as the separate CLI
        does; seconds of audio per second. The first of repeats + 1 runs is the warm-up."""
        from shared.audio.chunked import separate
        run_chunks = self.chunk_runner(self.models.build_model(spec, seed))
        speed = []
        for rep in range(repeats + 1):
            self.sync()
            t0 = time.perf_counter()
            separate(mixture, run_chunks, chunk)
            self.sync()
            if rep:
                speed.append(mixture.shape[1] / sample_rate / (time.perf_counter() - t0))
        return {"audio_seconds": mixture.shape[1] / sample_rate, "chunk_seconds": chunk / sample_rate,
                "metric": "x real time", "value": spread(speed)}

    def streaming(self, spec, seed: int, utterance_seconds: list[float], chunk_ms: int,
                  repeats: int, sample_rate: int) -> dict:
        """Per-chunk latency of streaming translation (as the stream CLI: features, the
        Emformer step, the CTC heads) for utterances of each length: the encoder's cost
        per chunk must not grow with the utterance. First of repeats + 1 runs: warm-up."""
        from shared.audio.fbank import CMVN
        from shared.cli.stream import stream
        model = self.models.build_model(spec, seed)
        identity = CMVN(np.zeros(spec.n_mels), np.ones(spec.n_mels))
        rng = np.random.default_rng(seed)
        by_length = {}
        for seconds in utterance_seconds:
            audio = (0.1 * rng.standard_normal(int(seconds * sample_rate))).astype(np.float32)
            chunk_ms_runs, encoder_ms_runs, last_ms_runs = [], [], []
            for rep in range(repeats + 1):
                timing = stream(self.stream_session(model), audio, identity,
                                sample_rate * chunk_ms // 1000, sample_rate=sample_rate)
                if rep:
                    chunk_ms_runs.append(statistics.mean(timing["chunk_ms"]))
                    encoder_ms_runs.append(statistics.mean(timing["encoder_ms"]))
                    # The last tenth of the chunks: where a prefix-recomputing encoder is slowest.
                    tail = timing["encoder_ms"][-max(1, len(timing["encoder_ms"]) // 10):]
                    last_ms_runs.append(statistics.mean(tail))
            by_length[f"{seconds:g}s"] = {"chunks": timing["chunks"], "chunk_ms": spread(chunk_ms_runs),
                                          "encoder_ms": spread(encoder_ms_runs),
                                          "encoder_ms_last_tenth": spread(last_ms_runs)}
        longest = by_length[f"{max(utterance_seconds):g}s"]
        return {"chunk_ms_setting": chunk_ms, "by_utterance_length": by_length,
                "metric": f"ms/chunk ({max(utterance_seconds):g} s utterance)",
                "value": longest["chunk_ms"]}


class MLXBackend(Backend):
    name = "mlx"

    def __init__(self):
        import mlx_models  # noqa: F401  -- loads OpenBLAS before mlx.core (Linux)
        import mlx.core as mx
        from mlx_models import models
        from mlx_models.blas import blas_thread_count
        from mlx_models.trainer import Trainer
        self.mx, self.models, self.Trainer = mx, models, Trainer
        self.blas_threads = blas_thread_count()

    def device(self) -> str:
        if self.mx.default_device() == self.mx.cpu:
            return f"cpu: {cpu_name()}"
        info = getattr(self.mx, "device_info", None) or self.mx.metal.device_info
        return f"gpu: {info().get('device_name', 'Metal')}"

    def make_trainer(self, config: RunConfig):
        return self.Trainer(config.model, config.train)

    def sync(self) -> None:
        self.mx.synchronize()  # train_step already evaluates; kept for symmetry

    def reset_peak_memory(self) -> None:
        self.mx.reset_peak_memory()

    def set_threads(self, n: int) -> None:
        """MLX's own CPU ops run on one thread per stream; only its BLAS is threaded. (The
        trainer's parallel parts: --threads sets train.cpu_streams too.)"""
        from mlx_models.blas import set_blas_threads
        set_blas_threads(n)
        self.blas_threads = n

    def parallel_parts(self) -> int:
        return self.trainer.parallel_parts

    def finish(self) -> None:
        """The trainer set one BLAS thread per parallel part for the process; inference
        (timed next) gets the bench's own count back."""
        from mlx_models.blas import set_blas_threads
        super().finish()
        set_blas_threads(self.blas_threads)

    def environment(self) -> dict:
        import ctypes
        import mlx_models.blas as blas
        info = {"version": self.mx.__version__, "device": self.device(), "blas": blas.BLAS_IN_USE}
        lib = blas.openblas()
        if lib is not None:
            lib.openblas_get_config.restype = ctypes.c_char_p
            info["blas_config"] = lib.openblas_get_config().decode()
            info["blas_threads"] = lib.openblas_get_num_threads()
        return info

    def lm_decoder(self, spec, seed: int):
        """Fresh-cache decoders over the spec's initial weights (as mlx_models.generate)."""
        from mlx_models.generate import decoder
        model = self.models.build_model(spec, seed)
        model.eval()
        return lambda: decoder(model)

    def chunk_runner(self, model):
        from mlx_models.separate import chunk_runner
        return chunk_runner(model)

    def stream_session(self, model):
        from mlx_models.stream import StreamSession
        model.eval()
        return StreamSession(model)


class TorchBackend(Backend):
    name = "torch"

    def __init__(self):
        import torch
        from torch_models import models
        from torch_models.trainer import Trainer, default_device
        self.torch, self.models, self.Trainer = torch, models, Trainer
        self.dev = default_device()

    def device(self) -> str:
        if self.dev.type == "cuda":
            return f"cuda: {self.torch.cuda.get_device_name(self.dev)}"
        return f"cpu: {cpu_name()}"

    def make_trainer(self, config: RunConfig):
        return self.Trainer(config.model, config.train, device=self.dev)

    def sync(self) -> None:
        if self.dev.type == "cuda":
            self.torch.cuda.synchronize(self.dev)

    def reset_peak_memory(self) -> None:
        if self.dev.type == "cuda":
            self.torch.cuda.reset_peak_memory_stats(self.dev)

    def set_threads(self, n: int) -> None:
        self.torch.set_num_threads(n)

    def environment(self) -> dict:
        torch = self.torch
        return {"version": torch.__version__, "cuda": torch.version.cuda, "device": self.device(),
                "num_threads": torch.get_num_threads(),
                "num_interop_threads": torch.get_num_interop_threads(),
                "mkldnn": torch.backends.mkldnn.is_available(),
                "mkl": torch.backends.mkl.is_available(),
                "config": torch.__config__.show(),
                "parallel_info": torch.__config__.parallel_info()}

    def lm_decoder(self, spec, seed: int):
        """Fresh-cache decoders over the spec's initial weights (as torch_models.generate)."""
        from torch_models.generate import decoder
        model = self.models.build_model(spec, seed).to(self.dev).eval()
        return lambda: decoder(model, self.dev)

    def chunk_runner(self, model):
        from torch_models.separate import chunk_runner
        return chunk_runner(model, self.dev)

    def stream_session(self, model):
        from torch_models.stream import StreamSession
        return StreamSession(model.to(self.dev).eval(), self.dev)


BACKENDS = {"mlx": MLXBackend, "torch": TorchBackend}


class Worker:
    """A Backend in a child process; `call` runs one of its methods there."""

    def __init__(self, name: str, threads: int | None):
        self.name = name
        ctx = multiprocessing.get_context("spawn")   # a clean process: no framework inherited
        self.conn, child = ctx.Pipe()
        # Not a daemon: torch.compile starts compile workers of its own.
        self.process = ctx.Process(target=_serve, args=(child, name, threads), name=f"bench-{name}")
        self.process.start()

    def call(self, method: str, *args):
        self.conn.send((method, args))
        try:
            ok, value = self.conn.recv()
        except EOFError:
            self.process.join(timeout=5)
            raise RuntimeError(f"the {self.name} backend's process died during {method} "
                               f"(exit code {self.process.exitcode})") from None
        if not ok:
            raise RuntimeError(f"{self.name} backend failed:\n{value}")
        return value

    def close(self) -> None:
        if self.process.is_alive():
            self.conn.send(("stop", ()))
        self.process.join(timeout=30)


def _serve(conn, name: str, threads: int | None) -> None:
    try:
        backend = BACKENDS[name]()
        if threads is not None:
            backend.set_threads(threads)
    except Exception:
        backend = None
        failure = traceback.format_exc()
    while True:
        try:
            method, args = conn.recv()
        except EOFError:        # the main process is gone
            return
        if method == "stop":
            return
        try:
            if backend is None:
                raise RuntimeError(failure)
            conn.send((True, getattr(backend, method)(*args)))
        except Exception:
            conn.send((False, traceback.format_exc()))


# ---------------------------------------------------------------------------- measuring
# Substrings of a device name -> shared/planner/hardware.py profile, for MFU.
DEVICE_PROFILES = [("H100", "h100_80gb"), ("RTX PRO 6000", "rtx_pro_6000_96gb"),
                   ("RTX 5090", "rtx_32gb"), ("M4 Max", "m4max_36gb"), ("M2", "m2_8gb")]


def hardware_profile(device: str, override: str | None):
    if override:
        return get_profile(override)
    if device.startswith("cpu"):
        return PROFILES["cpu"]
    for needle, name in DEVICE_PROFILES:
        if needle in device:
            return PROFILES[name]
    return None


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "values": values}


def bench_training(config: RunConfig, workers: dict, args) -> dict:
    family = get_family(config.family)
    rng = np.random.default_rng(args.seed)
    steps = [step_batches(config, rng) for _ in range(args.warmup + args.steps)]
    warmup, timed, lr = steps[:args.warmup], steps[args.warmup:], config.train.learning_rate
    devices = {name: w.call("start", config, warmup, lr) for name, w in workers.items()}
    parts = {name: w.call("parallel_parts") for name, w in workers.items()}
    blocks = {name: [] for name in workers}
    for _ in range(args.repeats):          # take turns, block by block
        for name, w in workers.items():
            blocks[name].append(w.call("block", timed, lr))
    for w in workers.values():
        w.call("finish")

    units = units_per_step(config)
    flops = family.flops_per_unit(config) if family.flops_per_unit else None
    results = {}
    for name, measured in blocks.items():
        step_s = [s for s, _ in measured]
        profile = hardware_profile(devices[name], args.hardware)
        low_precision = config.train.precision in ("bf16", "fp16")
        peak_flops = None if profile is None else (
            profile.peak_flops_bf16 if low_precision else profile.peak_flops_fp32)
        per_s = [units / s for s in step_s]
        achieved = [flops * u for u in per_s] if flops else None
        # torch on CPU keeps no allocator statistics (Trainer.memory() is (0, 0)): null.
        peak = [b for _, b in measured if b]
        results[name] = {
            "device": devices[name],
            "hardware_profile": profile.name if profile else None,
            "parallel_parts": parts[name],
            "step_s": spread(step_s),
            "steps_per_s": spread([1 / s for s in step_s]),
            f"{family.unit}_per_s": spread(per_s),
            "peak_memory_bytes": spread(peak) if peak else None,
            "achieved_flops": spread(achieved) if achieved else None,
            "peak_flops": peak_flops,
            "mfu": spread([a / peak_flops for a in achieved]) if achieved and peak_flops else None,
        }
    return results


def bench_inference(config: RunConfig, workers: dict, args) -> dict:
    """How fast the family's model is used: {backend: {"metric", "value", ...}}."""
    kind = get_family(config.family).inference
    return INFERENCE[kind](config, workers, args) if kind in INFERENCE else {}


def bench_generation(config: RunConfig, workers: dict, args) -> dict:
    """A random prompt of --prompt-tokens, then --gen-tokens decoded greedily."""
    if args.gen_tokens <= 0:
        return {}
    spec = config.model
    prompt_len = min(args.prompt_tokens, spec.max_seq_length // 2)
    new = min(args.gen_tokens, spec.max_seq_length - prompt_len)
    rng = np.random.default_rng(args.seed)
    prompt = rng.integers(0, spec.vocab_size, (1, prompt_len)).astype(np.int32)
    return {name: w.call("generate", "lm_decoder", spec, config.train.seed, prompt, new,
                         args.repeats)
            for name, w in workers.items()}


def bench_separation(config: RunConfig, workers: dict, args) -> dict:
    """--audio-seconds of random stereo noise, separated in training-segment chunks."""
    if args.audio_seconds <= 0:
        return {}
    rate = config.data.sample_rate
    rng = np.random.default_rng(args.seed)
    mixture = (0.1 * rng.standard_normal((config.model.audio_channels, int(args.audio_seconds * rate))))
    return {name: w.call("separation", config.model, config.train.seed, mixture.astype(np.float32),
                         config.data.segment_samples, rate, args.repeats)
            for name, w in workers.items()}


def bench_streaming(config: RunConfig, workers: dict, args) -> dict:
    """Random speech-like noise of each --stream-seconds length, fed in --chunk-ms chunks."""
    if not args.stream_seconds:
        return {}
    return {name: w.call("streaming", config.model, config.train.seed, args.stream_seconds,
                         args.chunk_ms, args.repeats, config.data.sample_rate)
            for name, w in workers.items()}


INFERENCE = {"generation": bench_generation, "separation": bench_separation,
             "streaming": bench_streaming}


def ratios(run: dict) -> dict | None:
    """MLX over torch step time, median of the per-block ratios (blocks were interleaved)."""
    t = run["training"]
    if "mlx" not in t or "torch" not in t:
        return None
    pairs = [a / b for a, b in zip(t["mlx"]["step_s"]["values"], t["torch"]["step_s"]["values"])]
    out = {"mlx_over_torch_step_time": spread(pairs)}
    g = run.get("inference", {})
    if "mlx" in g and "torch" in g:
        out["mlx_over_torch_inference"] = g["mlx"]["value"]["median"] / g["torch"]["value"]["median"]
    return out


def environment(workers: dict) -> dict:
    env = {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "platform": platform.platform(), "python": platform.python_version(),
        "cpu": cpu_name(), "logical_cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "numpy": np.__version__,
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                               "MKL_NUM_THREADS", "MLX_ENABLE_TF32",
                                               "WORKBENCH_BLAS")},
        "memory_note": "peak memory is the framework's own: mx.get_peak_memory() after "
                       "mx.reset_peak_memory(), torch.cuda.max_memory_allocated() after "
                       "reset_peak_memory_stats(); torch on CPU keeps no allocator "
                       "statistics, so it is null there.",
    }
    for name, w in workers.items():
        env[name] = w.call("environment")
    return env


# ---------------------------------------------------------------------------- reports
def fmt_median(s: dict | None, scale: float = 1.0, digits: int = 0) -> str:
    """'median ±half-range%': the spread over timed blocks."""
    if not s:
        return "n/a"
    half = (s["max"] - s["min"]) / (2 * s["median"]) if s["median"] else 0.0
    return f"{s['median'] * scale:,.{digits}f} ±{half:.0%}"


def markdown(report: dict) -> str:
    lines = ["| model | config | backend | device | precision | steps/s | throughput "
             "| peak memory | GFLOP/s | MFU | inference |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for run in report["runs"]:
        unit = run["unit"]
        for name, r in run["training"].items():
            g = run.get("inference", {}).get(name)
            mem = fmt_median(r["peak_memory_bytes"], 1e-6) + " MB" if r["peak_memory_bytes"] else "n/a"
            mfu = fmt_median(r["mfu"], 100, 1) + " %" if r["mfu"] else "n/a"
            lines.append(
                f"| {run['model']} | {run['config']} | {name} | {r['device']} | {run['precision']} "
                f"| {fmt_median(r['steps_per_s'], digits=2)} | {fmt_median(r[f'{unit}_per_s'], digits=0 if unit == 'tokens' else 2)} {unit}/s "
                f"| {mem} | {fmt_median(r['achieved_flops'], 1e-9, 1)} | {mfu} "
                f"| {fmt_median(g['value'], digits=1) + ' ' + g['metric'] if g else 'n/a'} |")
        if run.get("ratios"):
            rt = run["ratios"]
            r = rt["mlx_over_torch_step_time"]
            text = (f"{run['model']} {run['config']}: MLX step time / torch step time = "
                    f"{r['median']:.2f}x (per-block ratios {r['min']:.2f}-{r['max']:.2f})")
            if "mlx_over_torch_inference" in rt:
                metric = run["inference"]["mlx"]["metric"]
                text += f"; MLX/torch {metric} = {rt['mlx_over_torch_inference']:.2f}x"
            notes.append(text)
        parts = run["training"].get("mlx", {}).get("parallel_parts", 1)
        if parts > 1:
            notes.append(f"{run['model']} {run['config']}: MLX splits each micro-batch into {parts} "
                         f"parts computed in parallel, one CPU stream and one BLAS thread each "
                         f"(train.cpu_streams)")
        for name, inf in run.get("inference", {}).items():
            if "by_utterance_length" in inf:
                per = ", ".join(f"{length}: {r['chunk_ms']['median']:.1f} ms/chunk (encoder "
                                f"{r['encoder_ms']['median']:.1f}, last tenth "
                                f"{r['encoder_ms_last_tenth']['median']:.1f})"
                                for length, r in inf["by_utterance_length"].items())
                notes.append(f"{run['model']} {name} streaming, {inf['chunk_ms_setting']} ms chunks: {per}")
    env, settings = report["environment"], report["settings"]
    mlx_env, torch_env = env.get("mlx", {}), env.get("torch", {})
    notes.append(f"{settings['repeats']} blocks of {settings['steps']} steps after "
                 f"{settings['warmup']} warm-up steps; ± is half the min-max range over blocks.")
    backends = [f"MLX BLAS: {mlx_env.get('blas')} ({mlx_env.get('blas_threads', '?')} threads at start)"
                if mlx_env else "", f"torch threads: {torch_env.get('num_threads')}" if torch_env else ""]
    notes.append("; ".join([b for b in backends if b] + [
        f"load average at start: {', '.join(f'{x:.2f}' for x in env['load_average'] or [])}."]))
    rows = [r for run in report["runs"] for r in run["training"].values()]
    if any(not r["mfu"] for r in rows):
        notes.append("MFU n/a: no FLOP count for the model (only the LM has one) or no known "
                     "peak FLOP/s for the device (--hardware names one).")
    if any(not r["peak_memory_bytes"] for r in rows):
        notes.append("Peak memory n/a: torch on CPU keeps no allocator statistics.")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # A row per model x config: families differ in units (tokens/s, audio s/s, ms/chunk)
    # and in scale, so each panel gets its own axis.
    runs = report["runs"]
    fig, axes = plt.subplots(len(runs), 2, figsize=(10, 2.6 * len(runs)), squeeze=False)
    for (train_ax, infer_ax), run in zip(axes, runs):
        for ax, key, title in [(train_ax, "training", f"training: {run['unit']}/s"),
                               (infer_ax, "inference", "inference")]:
            names, med, err = [], [], [[], []]
            for backend, result in run.get(key, {}).items():
                s = result.get("value" if key == "inference" else f"{run['unit']}_per_s")
                if s:
                    names.append(backend)
                    med.append(s["median"])
                    err[0].append(s["median"] - s["min"])
                    err[1].append(s["max"] - s["median"])
                    if key == "inference":
                        title = f"inference: {result['metric']}"
            ax.bar(names, med, 0.6, yerr=err, capsize=3, color=["C0", "C1"][:len(names)])
            ax.set_title(f"{run['model']} ({run['config']}) {title}", fontsize=8)
    fig.suptitle(f"MLX vs torch on {report['environment']['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    workers = {name: Worker(name, args.threads) for name in args.backends}
    try:
        report = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                  "environment": environment(workers), "runs": []}
        for path, config in configs:
            family = get_family(config.family)
            print(f"bench: {config.family} {path} on {', '.join(workers)} ...", file=sys.stderr, flush=True)
            run = {"model": config.family, "config": path, "precision": config.train.precision,
                   "compile": config.train.compile, "unit": family.unit,
                   "units_per_step": units_per_step(config),
                   "flops_per_unit": family.flops_per_unit(config) if family.flops_per_unit else None,
                   "model_spec": config.to_dict()["model"], "train": config.to_dict()["train"],
                   "params": family.param_counts(config.model),
                   "training": bench_training(config, workers, args),
                   "inference": bench_inference(config, workers, args)}
            run["ratios"] = ratios(run)
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
