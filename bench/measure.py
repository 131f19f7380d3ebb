"""What is measured: one optimizer step's random batches, the training blocks (steps/s,
units/s, memory, FLOP/s, MFU), the inference speed of each family's kind (generation,
separation, streaming), the spread over blocks and the MLX/torch ratios."""
from __future__ import annotations

import contextlib
import statistics

import numpy as np

from shared.engine.config import RunConfig
from shared.planner.hardware import PROFILES, get_profile
from shared.registry import get_family
from shared.tasks import random_batch


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

# ---------------------------------------------------------------------------- measuring
# Substrings of a device name -> shared/planner/hardware.py profile, for MFU.
DEVICE_PROFILES = [("H100", "h100_80gb"), ("H200", "h200_141gb"), ("RTX PRO 6000", "rtx_pro_6000_96gb"),
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


def bench_training(config: RunConfig, workers: dict, args, load=contextlib.nullcontext()) -> dict:
    """`load`: entered around the timed blocks (bench/load.py's OtherLoad)."""
    family = get_family(config.family)
    rng = np.random.default_rng(args.seed)
    steps = [step_batches(config, rng) for _ in range(args.warmup + args.steps)]
    warmup, timed, lr = steps[:args.warmup], steps[args.warmup:], config.train.learning_rate
    devices = {name: w.call("start", config, warmup, lr) for name, w in workers.items()}
    parts = {name: w.call("parallel_parts") for name, w in workers.items()}
    blocks = {name: [] for name in workers}
    with load:
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
                         args.chunk_ms, args.repeats, config.data.sample_rate, args.stream_policy)
            for name, w in workers.items()}


INFERENCE = {"generation": bench_generation, "separation": bench_separation,
             "streaming": bench_streaming}


def ratios(run: dict, reliable: bool = True) -> dict | None:
    """MLX over torch step time, median of the per-block ratios (blocks were interleaved);
    `reliable`: False when other work loaded the machine while timing (bench/load.py)."""
    t = run["training"]
    if "mlx" not in t or "torch" not in t:
        return None
    pairs = [a / b for a, b in zip(t["mlx"]["step_s"]["values"], t["torch"]["step_s"]["values"])]
    out = {"mlx_over_torch_step_time": spread(pairs), "reliable": reliable}
    g = run.get("inference", {})
    if "mlx" in g and "torch" in g:
        out["mlx_over_torch_inference"] = g["mlx"]["value"]["median"] / g["torch"]["value"]["median"]
    return out
