"""One command for a lent H100/H200: what this project still needs measured on a GPU.

    python bench/gpu_check.py                      # on the GPU: < 8 minutes, writes gpu_check/
    python bench/gpu_check.py --out DIR --budget-s 420
    python bench/gpu_check.py --dry-run            # anywhere: tiny sizes on the CPU, < 1 minute

Five parts, each timed and guarded (an error is recorded and the next part runs):

  1. parity       torch on CUDA vs torch on the CPU, same spec weights and batches, fp32 with
                  TF32 off: loss and every gradient against the parity suite's bounds; then
                  20 training steps in bf16 autocast and fp16 + GradScaler against fp32.
  2. lm_speed     LM tokens/s, FLOP/s and MFU: the seed 001 medium model (configs/m4max.yaml)
                  at seq 2048 and configs/tiny.yaml; eager vs train.compile, flash vs math SDPA.
  3. planner      the memory planner's torch/CUDA prediction vs torch.cuda.max_memory_allocated
                  for every shipped config (scaled to fit), flash and math attention, with and
                  without checkpointing; fits per-family factors and writes
                  shared/planner/cuda_calibration.json, which the planner then reads.
  4. seed003      TF-Locoformer with unfused (math) attention: the largest allocation the
                  planner names (seed 003's 80.89 GiB score tensor) against the largest tensor
                  torch really makes, and the peak with math vs fused attention.
  5. inference    separation speed (x real time, 10 s of audio through the chunked separate
                  path) and EchoStream streaming latency (5 s utterance, 320 ms chunks).

Writes DIR/gpu_check.json (everything) and DIR/gpu_check.md (the summary to paste into
docs/benchmarks.md, section "GPU"), and prints a line per measurement as it goes. Parts
share --budget-s: each gets a share of the time left, and measurements that would not fit
are recorded as "skipped: time budget". Without CUDA (or with --dry-run) it is a dry run:
every part at tiny sizes on the CPU, "dry_run": true in the JSON, and no calibration file
is written into shared/ (it goes to DIR instead).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

PROCESS_START = time.monotonic()     # the budget counts the imports and CUDA's start-up too
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(1, str(REPO))    # this checkout's shared/ and torch_models/ (bench/ is sys.path[0])

import torch  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from measure import hardware_profile  # noqa: E402  (bench/measure.py)
from shared.audio.chunked import separate  # noqa: E402
from shared.audio.fbank import CMVN  # noqa: E402
from shared.engine.config import load_config  # noqa: E402
from shared.planner import core as planner  # noqa: E402
from shared.planner.core import GB, budget_bytes, plan, with_overrides  # noqa: E402
from shared.planner.hardware import get_profile  # noqa: E402
from shared.registry import families, get_family  # noqa: E402
from shared.simultaneous import Policy, SimultaneousTranslator  # noqa: E402
from shared.specs.lm import lm_train_flops_per_token  # noqa: E402
from shared.tasks import random_batch  # noqa: E402
from torch_models.models import build_model  # noqa: E402
from torch_models.separate import chunk_runner  # noqa: E402
from torch_models.stream import StreamSession  # noqa: E402
from torch_models.trainer import Trainer  # noqa: E402
from torch_models.weights import to_numpy  # noqa: E402

# Parity bounds (relative error, max |a - b| / max |b|, tests/parity/). The suite's are for
# MLX vs torch on tiny specs: loss 1e-4 and every gradient 1e-4 for the LM and TF-Locoformer
# (band-split: loss 1e-5; EchoStream: loss 1e-5, gradients 5e-5). CPU vs CUDA is the same
# torch code on two devices, at the bench configs' larger sizes: we hold every family to
# the suite's loosest, 1e-4, and report the measured values next to the float64 reference's.
LOSS_BOUND = 1e-4
GRADIENT_BOUND = 1e-4
CURVE_BOUND = 1e-4            # the suite's 20-step curves, every step
CURVE_STEPS = 20
# Low precision against fp32 over the same 20 steps: max over steps of |loss - loss_fp32| /
# |loss_fp32|. bf16 rounds each matmul input to 8 significant bits (0.4 %), but a loss is a
# mean over thousands of elements whose rounding errors mostly cancel: on the CPU (bf16
# autocast, the bench configs, these 20 steps at the configs' learning rates) the curves
# stayed within 0.07 % of fp32 for every family (2026-12-02). 2 % leaves CUDA's kernels
# 30x that room and still flags what a broken cast or loss scale does to a curve (a
# percent-level drift, a stall, NaN). fp16 keeps 11 bits, 8x finer: 1 %.
LOW_PRECISION_TOLERANCE = {"bf16": 0.02, "fp16": 0.01}

MEMORY_SHARE = 0.4            # part 3 sizes each config so the planner's worst case uses < 40 % of the GPU
SEED003_SHARE = 0.2           # part 4: the math path's fp32 scores may double the plan's bf16 ones
PART_GRACE_S = 30             # a part may overrun its share by this much before it is stopped

FUSED = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]   # the planner's "flash"
ATTENTION = {"flash": FUSED, "math": [SDPBackend.MATH]}


# ============================================================================ the runner
class OutOfTime(BaseException):
    """Raised by the alarm when a part runs past its share of the budget. A BaseException,
    so that no `except Exception` inside torch swallows it."""


@dataclass
class Context:
    device: torch.device
    dry_run: bool
    out: Path
    budget_s: float
    started: float = PROCESS_START
    deadline: float = 0.0                 # the current part's
    profile: object = None                # shared/planner/hardware.py profile of this GPU (MFU)
    plan_device: str = "h100_80gb"        # hardware.device for CUDA plans
    device_memory: float = 80e9
    dry_compile: bool = False
    weights: dict = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def budget_left(self) -> float:
        return self.budget_s - self.elapsed()

    def part_left(self) -> float:
        return self.deadline - time.monotonic()

    def log(self, message: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {message}", flush=True)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def free(self) -> None:
        """Give the GPU memory of dropped models back (a no-op on the CPU, where a
        gc.collect() of torch's heap costs ~0.3 s and frees nothing we measure)."""
        if self.cuda:
            gc.collect()
            torch.cuda.empty_cache()


@dataclass(frozen=True)
class Part:
    key: str
    title: str
    run: Callable[[Context, dict], None]       # fills its result dict as it goes
    markdown: Callable[[dict], list[str]]      # the result as Markdown lines (a table)
    share: float                               # of the time left, relative to the parts after it


def error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:500]


def case(ctx: Context, rows: list, name: str, estimate_s: float, measure: Callable[[], dict],
         label: str = "", free: bool = True) -> dict:
    """One guarded measurement: its row says ok (with the numbers), skipped (with a reason)
    or error (with the text). The row is in `rows` before it runs, so an interrupted part
    keeps it. `free`: release GPU memory afterwards (always after an error, e.g. an OOM)."""
    row = {"case": name}
    rows.append(row)
    if ctx.part_left() < estimate_s:
        row.update(status="skipped", reason=f"skipped: time budget ({max(ctx.part_left(), 0):.0f} s "
                                             f"left for this part, ~{estimate_s:.0f} s needed)")
    else:
        start = time.monotonic()
        try:
            row.update(measure())
            row.setdefault("status", "ok")
        except Exception as e:   # noqa: BLE001 -- recorded; the next measurement runs
            row.update(status="error", error=error_text(e))
            row["traceback"] = traceback.format_exc(limit=-3)
        finally:
            row["seconds"] = round(time.monotonic() - start, 2)
            if free or row.get("status") != "ok":
                ctx.free()
    detail = row.get("reason") or row.get("error") or row.get("summary", "")
    ctx.log(f"  {label or name}: {row['status']}{' - ' + detail if detail else ''}")
    return row


@contextlib.contextmanager
def alarm(seconds: float):
    """Raise OutOfTime after `seconds` (main thread, Unix); elsewhere a no-op."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def ring(signum, frame):
        raise OutOfTime(f"stopped after {seconds:.0f} s: time budget")
    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1.0))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_parts(parts: list[Part], ctx: Context, report: dict, save: Callable[[], None]) -> None:
    """Each part in turn, with its share of the time left; its result is saved even when it
    fails or runs out of time."""
    for i, part in enumerate(parts):
        left = ctx.budget_left()
        entry = report["parts"][part.key] = {"title": part.title, "status": "running", "result": {}}
        if left < 5:
            entry.update(status="skipped", reason="skipped: time budget")
            ctx.log(f"{part.title}: skipped (time budget)")
            save()
            continue
        ctx.deadline = time.monotonic() + left * part.share / sum(p.share for p in parts[i:])
        ctx.log(f"{part.title} ({ctx.part_left():.0f} s of {left:.0f} s left)")
        start = time.monotonic()
        try:
            with alarm(min(ctx.part_left(), left) + PART_GRACE_S):
                part.run(ctx, entry["result"])
            entry["status"] = "ok"
        except (Exception, OutOfTime) as e:   # noqa: BLE001
            entry.update(status="error", error=error_text(e), traceback=traceback.format_exc(limit=-4))
            ctx.log(f"{part.title}: error - {entry['error']}")
        finally:
            for row in entry["result"].get("rows", []):
                if "status" not in row:      # the alarm stopped it mid-measurement
                    row.update(status="error", error="interrupted: time budget")
            entry["seconds"] = round(time.monotonic() - start, 1)
            ctx.free()
            if ctx.cuda and hasattr(torch, "_dynamo"):
                torch._dynamo.reset()
            save()


# ============================================================================ shared helpers
def rel_err(a, b) -> float:
    """max |a - b| / max |b| (tests/helpers.py)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def cached_weights(ctx: Context, config) -> dict:
    """The spec's initial weights, built once per set of shapes (the medium LM's take
    seconds in numpy, and parts 2 and 3 use them several times)."""
    family = get_family(config.family)
    key = (config.family, tuple((p.name, p.shape) for p in family.manifest(config.model)), config.train.seed)
    if key not in ctx.weights:
        if len(ctx.weights) >= 3:
            ctx.weights.pop(next(iter(ctx.weights)))
        ctx.weights[key] = family.init_weights(config.model, config.train.seed)
    return ctx.weights[key]


def batches(config, n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [random_batch(config, config.train.batch_size, rng) for _ in range(n)]


def dry_overrides(config) -> dict:
    """Tiny sizes for the dry run, read off the config's shape (no family names): batch 2,
    32-token sequences, 1/8 s audio segments, 1 s utterances, at most 2 layers."""
    spec, data = config.model, config.data
    o = {"train.batch_size": min(2, config.train.batch_size), "train.gradient_accumulation_steps": 1,
         "train.compile": False}
    if hasattr(spec, "max_seq_length"):
        o["train.seq_length"] = min(32, config.seq_length)
    if hasattr(data, "segment_seconds"):
        o["data.segment_seconds"] = max(0.125, 2 * getattr(spec, "n_fft", 0) / data.sample_rate)
    if hasattr(data, "max_duration"):
        o["data.max_duration"] = 1.0
    depth = get_family(config.family).memory.depth_key
    o[f"model.{depth}"] = min(2, getattr(spec, depth))
    return o


def length_overrides(config, factor: float) -> dict:
    """The config's sequences, segments or utterances shortened by `factor` (not below what
    the model needs: 64 tokens, two STFT windows, 0.5 s of speech)."""
    spec, data, o = config.model, config.data, {}
    if hasattr(spec, "max_seq_length"):
        o["train.seq_length"] = max(64, int(config.seq_length * factor))
    if hasattr(data, "segment_seconds"):
        floor = 2 * getattr(spec, "n_fft", 0) / data.sample_rate
        o["data.segment_seconds"] = round(max(data.segment_seconds * factor, floor), 4)
    if hasattr(data, "max_duration"):
        o["data.max_duration"] = round(max(data.max_duration * factor, 0.5), 3)
    return o


def fitted_for_measurement(config, memory: float, share: float, plan_device: str, batch: int = 2):
    """A shipped config made small enough to measure: micro-batch <= `batch`, no
    accumulation (torch's memory does not grow with it), no compile; then shorter sequences
    or segments, then fewer layers, until the planner's worst case (math attention, no
    checkpointing) is under `share` of the GPU's memory. Returns (config, overrides)."""
    depth = get_family(config.family).memory.depth_key
    layers = getattr(config.model, depth)
    base = {"train.batch_size": min(batch, config.train.batch_size), "train.gradient_accumulation_steps": 1,
            "train.compile": False, "hardware.device": plan_device}
    ladder = [base] + [base | {"train.batch_size": 1} | length_overrides(config, f)
                       for f in (1, 1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64)]
    ladder += [ladder[-1] | {f"model.{depth}": n} for n in (layers // 2, layers // 4, 2, 1) if 0 < n < layers]
    for overrides in ladder:
        candidate = with_overrides(config, overrides)
        worst = plan(with_overrides(candidate, {"train.gradient_checkpointing": False}), "torch", "math")
        if worst.peak_bytes <= share * memory:
            break
    return candidate, {k: v for k, v in overrides.items() if k != "hardware.device"}


def attention_path(name: str):
    return sdpa_kernel(ATTENTION[name])


def timed_steps(ctx: Context, trainer, steps: list, lr: float) -> list[float]:
    """Seconds per optimizer step (train_step already waits for the loss each step)."""
    times = []
    for micro in steps:
        start = time.perf_counter()
        if trainer.train_step([micro], lr)["skipped"]:
            raise RuntimeError("non-finite loss or gradient")
        ctx.sync()
        times.append(time.perf_counter() - start)
    return times


def fmt(x, spec: str = ".2e", none: str = "n/a") -> str:
    return none if x is None else format(x, spec)


def table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def row_status(row: dict) -> str:
    why = row.get("reason") or row.get("error") or ""
    return row["status"] if row["status"] == "ok" else why if why.startswith(row["status"]) else f"{row['status']}: {why}"


# ============================================================================ 1. parity
def part_parity(ctx: Context, result: dict) -> None:
    """Every family's bench config: the same initial weights and batch through the torch
    Trainer on the CPU and on the device (fp32, TF32 off), then loss curves in fp32, bf16
    and fp16 on the device."""
    steps = 2 if ctx.dry_run else CURVE_STEPS
    result.update(bounds={"loss": LOSS_BOUND, "gradient": GRADIENT_BOUND, "curve_cpu_vs_device": CURVE_BOUND},
                  low_precision_tolerance=LOW_PRECISION_TOLERANCE, curve_steps=steps,
                  comparison="torch on the device vs torch on the CPU" + (
                      " (dry run: the 'device' is the CPU too)" if ctx.dry_run else ""), rows=[])
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        for family in families().values():
            for path in family.bench_configs[:1]:
                case(ctx, result["rows"], f"{family.name} {path}", 2 if ctx.dry_run else 10,
                     lambda: parity_of(ctx, family, path, steps), label=f"parity {family.name}")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def parity_config(ctx: Context, path: str):
    config = load_config(REPO / path)
    o = {"train.precision": "fp32", "train.compile": False, "train.gradient_checkpointing": False,
         "train.gradient_accumulation_steps": 1}
    if hasattr(config.model, "dropout"):     # the two devices draw different dropout masks
        o["model.dropout"] = 0.0
    config = with_overrides(config, o)
    return with_overrides(config, dry_overrides(config)) if ctx.dry_run else config


def parity_of(ctx: Context, family, path: str, steps: int) -> dict:
    config = parity_config(ctx, path)
    spec, train = config.model, config.train
    weights = family.init_weights(spec, train.seed)
    [batch] = batches(config, 1, seed=0)
    loss_cpu, grads_cpu = Trainer(spec, train, weights, device="cpu").gradients_numpy([batch])
    loss_dev, grads_dev = Trainer(spec, train, weights, device=ctx.device).gradients_numpy([batch])
    grad_errs = {name: rel_err(grads_dev[name], grads_cpu[name]) for name in grads_cpu}
    worst = max(grad_errs, key=grad_errs.get)
    row = {"config": path, "loss_cpu": loss_cpu, "loss_device": loss_dev,
           "loss_rel_err": rel_err(loss_dev, loss_cpu), "gradient_rel_err": grad_errs[worst],
           "worst_parameter": worst}
    try:        # how far fp32 itself is from float64 here: the scale the bounds must allow
        grads64 = float64_gradients(family, spec, weights, batch)
        row["cpu_vs_float64"] = max(rel_err(grads_cpu[n], grads64[n]) for n in grads64)
        row["device_vs_float64"] = max(rel_err(grads_dev[n], grads64[n]) for n in grads64)
    except Exception as e:   # noqa: BLE001 -- a reference only
        row["float64_error"] = error_text(e)

    lr, data = train.learning_rate, batches(config, steps, seed=1)
    curves = {"fp32": loss_curve(Trainer(spec, train, weights, device=ctx.device), data, lr)}
    if ctx.cuda:
        cpu_curve = loss_curve(Trainer(spec, train, weights, device="cpu"), data, lr)
        row["curve_cpu_vs_device"] = max(rel_err(a, b) for a, b in zip(curves["fp32"]["losses"], cpu_curve["losses"]))
    for precision in ("bf16", "fp16"):
        if precision == "fp16" and not ctx.cuda:
            curves[precision] = {"status": "skipped", "reason": "fp16 needs CUDA (GradScaler); dry run on the CPU"}
            continue
        low = with_overrides(config, {"train.precision": precision}).train
        curves[precision] = loss_curve(Trainer(spec, low, weights, device=ctx.device), data, lr)
        diffs = [abs(a - b) / abs(b) for a, b in zip(curves[precision]["losses"], curves["fp32"]["losses"])]
        curves[precision].update(max_rel_diff=max(diffs), first_step_rel_diff=diffs[0],
                                 tolerance=LOW_PRECISION_TOLERANCE[precision],
                                 within=max(diffs) <= LOW_PRECISION_TOLERANCE[precision])
    row["curves"] = curves
    checks = [row["loss_rel_err"] <= LOSS_BOUND, row["gradient_rel_err"] <= GRADIENT_BOUND,
              row.get("curve_cpu_vs_device", 0) <= CURVE_BOUND]
    checks += [c["within"] for c in curves.values() if "within" in c]
    row["within_bounds"] = all(checks)
    # Past a bound, float64 tells rounding from a bug: a device no further from float64
    # than the CPU is (within 2x) computes the same function, the bound was tight for fp32.
    row["verdict"] = "ok" if row["within_bounds"] else (
        "fp32 rounding (device as close to float64 as the CPU)"
        if row.get("device_vs_float64", np.inf) <= 2 * row.get("cpu_vs_float64", 0) else "CHECK")
    row["summary"] = (f"loss {row['loss_rel_err']:.1e}, gradients {row['gradient_rel_err']:.1e} "
                      f"(bound {GRADIENT_BOUND:.0e}); bf16 curve {curves['bf16']['max_rel_diff']:.2%}"
                      + (f", fp16 {curves['fp16']['max_rel_diff']:.2%}" if "max_rel_diff" in curves["fp16"] else "")
                      + ("" if row["within_bounds"] else f"  OUTSIDE BOUNDS: {row['verdict']}"))
    return row


def loss_curve(trainer, data: list, lr: float) -> dict:
    """The loss of each step (before its update); fp16: steps the GradScaler skipped."""
    losses, skipped = [], 0
    for micro in data:
        scale = trainer.scaler.get_scale() if trainer.scaler else None
        losses.append(trainer.train_step([micro], lr)["loss"])
        if trainer.scaler and trainer.scaler.get_scale() < scale:
            skipped += 1
    out = {"losses": losses}
    if trainer.scaler:
        out["scaler_skipped_steps"] = skipped
    return out


def float64_gradients(family, spec, weights: dict, batch) -> dict:
    model = build_model(spec, 0, weights).double().train()
    loss_fn = family.backend("torch").loss

    def tensors(x):
        if isinstance(x, dict):
            return {k: tensors(v) for k, v in x.items()}
        t = torch.from_numpy(np.ascontiguousarray(x))
        return t.double() if t.is_floating_point() else t
    loss_fn(model, tensors(batch)).backward()
    params = dict(model.named_parameters())
    return {p.name: to_numpy(params[p.name].grad) for p in family.manifest(spec)}


def markdown_parity(result: dict) -> list[str]:
    rows = []
    for r in result.get("rows", []):
        if r["status"] != "ok":
            rows.append([r["case"]] + ["" for _ in range(7)] + [row_status(r)])
            continue
        c = r["curves"]
        low = {p: (f"{c[p]['max_rel_diff']:.3%}" + (f" ({c[p]['scaler_skipped_steps']} skipped)"
                                                     if c[p].get("scaler_skipped_steps") else ""))
               if "max_rel_diff" in c[p] else c[p].get("reason", "") for p in ("bf16", "fp16")}
        rows.append([r["case"], fmt(r["loss_rel_err"]), f"{fmt(r['gradient_rel_err'])} ({r['worst_parameter']})",
                     f"{fmt(r.get('cpu_vs_float64'))} / {fmt(r.get('device_vs_float64'))}",
                     fmt(r.get("curve_cpu_vs_device")), low["bf16"], low["fp16"],
                     "yes" if r["within_bounds"] else f"**no**: {r['verdict']}", "ok"])
    lines = table(["family, config", "loss rel. err", "worst gradient rel. err (parameter)",
                   "fp32 vs float64 (CPU / device)", f"{result.get('curve_steps')}-step curve CPU vs device",
                   "bf16 vs fp32 (max over curve)", "fp16 vs fp32", "within bounds", "status"], rows)
    return lines + ["", f"Bounds: loss {LOSS_BOUND:.0e}, every gradient {GRADIENT_BOUND:.0e}, curve "
                        f"{CURVE_BOUND:.0e} (tests/parity); bf16 {LOW_PRECISION_TOLERANCE['bf16']:.0%}, "
                        f"fp16 {LOW_PRECISION_TOLERANCE['fp16']:.0%} of the fp32 loss at every step. "
                        f"{result.get('comparison', '')}; TF32 off."]


# ============================================================================ 2. LM speed
def part_lm_speed(ctx: Context, result: dict) -> None:
    """Tokens/s and MFU of the medium LM at seq 2048 (batch: what fits 80 GB per the
    planner) and of the tiny LM; eager vs compile, flash vs math attention."""
    medium, tiny = load_config(REPO / "configs/m4max.yaml"), load_config(REPO / "configs/tiny.yaml")
    if ctx.dry_run:   # tiny shapes only; the same code path
        medium = with_overrides(medium, {
            "model.vocab_size": 512, "model.hidden_size": 64, "model.num_layers": 2, "model.num_heads": 4,
            "model.num_kv_heads": 1, "model.intermediate_size": 256, "model.max_seq_length": 64,
            "train.seq_length": 64, "train.batch_size": 2})
        tiny = with_overrides(tiny, {"train.batch_size": 2, "train.seq_length": 64})
    fits_80gb = get_profile("h100_80gb")
    result.update(batch_rule=("dry run: batch 2" if ctx.dry_run else
                              f"medium: the largest micro-batch whose plan fits {fits_80gb.name}'s "
                              f"{budget_bytes(fits_80gb) / GB:.1f} GB budget; tiny: as shipped"),
                  peak_flops_profile=getattr(ctx.profile, "name", None), rows=[])
    slow_compile = "skipped: dry run - torch.compile's inductor takes ~1 min per model on a CPU (--dry-run-compile runs it)"
    runs = [("medium", medium, "flash", False), ("medium", medium, "flash", True),
            ("medium", medium, "math", False), ("tiny", tiny, "flash", False), ("tiny", tiny, "math", False),
            ("medium", medium, "math", True), ("tiny", tiny, "flash", True), ("tiny", tiny, "math", True)]
    for name, config, attention, compiled in runs:
        label = f"{name} {attention} {'compile' if compiled else 'eager'}"
        if compiled and ctx.dry_run and not ctx.dry_compile:
            result["rows"].append({"case": label, "status": "skipped", "reason": slow_compile})
            continue
        estimate = 2 if ctx.dry_run else (100 if compiled else 25) if name == "medium" else (40 if compiled else 8)
        case(ctx, result["rows"], label, estimate,
             lambda: lm_speed(ctx, name, config, attention, compiled), label=f"lm speed {label}")


def planned_lm_batch(config, attention: str, limit: int = 64) -> int:
    """The largest micro-batch (<= limit) whose torch/CUDA plan fits an 80 GB card."""
    profile = get_profile("h100_80gb")
    config = with_overrides(config, {"hardware.device": profile.name, "train.gradient_accumulation_steps": 1})
    best = 1
    for b in range(1, limit + 1):
        if plan(with_overrides(config, {"train.batch_size": b}), "torch", attention).peak_bytes > budget_bytes(profile):
            break
        best = b
    return best


def lm_speed(ctx: Context, name: str, config, attention: str, compiled: bool) -> dict:
    if ctx.cuda and name == "medium":
        config = with_overrides(config, {"train.batch_size": planned_lm_batch(config, attention)})
    config = with_overrides(config, {"train.compile": compiled, "train.gradient_accumulation_steps": 1})
    seq, flops_per_token = config.seq_length, lm_train_flops_per_token(config.model, config.seq_length)
    warmup, timed = (1, 2) if ctx.dry_run else ((3 if compiled else 2), (5 if name == "medium" else 20))
    weights = cached_weights(ctx, config)
    oom = []
    while True:
        b = config.train.batch_size
        trainer, data = None, batches(config, 2, seed=3)
        try:
            if compiled:
                torch._dynamo.reset()
            trainer = Trainer(config.model, config.train, weights, device=ctx.device)
            with attention_path(attention):
                compile_s = time.perf_counter()
                timed_steps(ctx, trainer, [data[i % 2] for i in range(warmup)], config.train.learning_rate)
                compile_s = time.perf_counter() - compile_s
                if ctx.cuda:
                    torch.cuda.reset_peak_memory_stats(ctx.device)
                times = timed_steps(ctx, trainer, [data[i % 2] for i in range(timed)], config.train.learning_rate)
                peak = trainer.memory()[1] or None
                kernels = attention_kernels(ctx, trainer, data[0], config.train.learning_rate)
            break
        except torch.cuda.OutOfMemoryError:
            if b == 1:
                raise
            oom.append(b)
            del trainer
            ctx.free()
            config = with_overrides(config, {"train.batch_size": b // 2})
    step_s = statistics.median(times)
    tokens_per_s = b * seq / step_s
    achieved = flops_per_token * tokens_per_s
    low = config.train.precision in ("bf16", "fp16")
    peak_flops = None if ctx.dry_run or ctx.profile is None else (
        ctx.profile.peak_flops_bf16 if low else ctx.profile.peak_flops_fp32)
    predicted = plan(with_overrides(config, {"hardware.device": ctx.plan_device}), "torch", attention)
    return {"model": name, "attention": attention, "compile": compiled, "precision": config.train.precision,
            "batch_size": b, "seq_length": seq, "oom_batches": oom, "warmup_s": compile_s,
            "step_s": step_s, "step_s_all": times, "tokens_per_s": tokens_per_s,
            "flops_per_token": flops_per_token, "achieved_flops": achieved, "peak_flops": peak_flops,
            "mfu": achieved / peak_flops if peak_flops else None, "peak_memory_bytes": peak,
            "predicted_peak_bytes": predicted.peak_bytes - predicted.term("framework overhead"),
            "attention_ops": kernels,
            "summary": f"batch {b} x {seq}: {tokens_per_s:,.0f} tokens/s, {achieved / 1e12:.2f} TFLOP/s"
                       + (f", MFU {achieved / peak_flops:.1%}" if peak_flops else "")}


def attention_kernels(ctx: Context, trainer, micro, lr: float) -> list[str]:
    """The SDPA ops one more (untimed) step really ran, from the profiler: proof that the
    requested path was taken, compiled or not (an inductor-compiled math path shows none:
    it is decomposed into matmuls and a softmax)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        trainer.train_step([micro], lr)
        ctx.sync()
    return sorted({e.name for e in prof.events() if e.name.startswith("aten::")
                   and "attention" in e.name and e.name != "aten::scaled_dot_product_attention"})


def markdown_lm_speed(result: dict) -> list[str]:
    rows = []
    for r in result.get("rows", []):
        if r["status"] != "ok":
            rows.append([r["case"]] + [""] * 9 + [row_status(r)])
            continue
        ops = ", ".join(o.replace("aten::", "") for o in r["attention_ops"]) or "none (decomposed)"
        rows.append([f"{r['model']} ({r['precision']})", r["attention"], "compile" if r["compile"] else "eager",
                     f"{r['batch_size']} x {r['seq_length']}", f"{r['step_s'] * 1e3:.1f}",
                     f"{r['tokens_per_s']:,.0f}", f"{r['achieved_flops'] / 1e12:.2f}", fmt(r["mfu"], ".1%"),
                     f"{fmt(r['peak_memory_bytes'] and r['peak_memory_bytes'] / GB, '.1f')} / "
                     f"{r['predicted_peak_bytes'] / GB:.1f}", ops, "ok"])
    return table(["model", "attention", "mode", "batch x seq", "ms/step", "tokens/s", "TFLOP/s", "MFU",
                  "peak GB (measured / planned)", "SDPA ops run", "status"], rows) + [
        "", f"FLOP/s = lm_train_flops_per_token (6N + 12·L·H·hd·T) x tokens/s; MFU against "
            f"{result.get('peak_flops_profile') or 'no known peak'} (bf16 peak for bf16, fp32 for fp32). "
            f"Batch: {result.get('batch_rule')}. 'flash' = SDPBackend.FLASH_ATTENTION or "
            f"EFFICIENT_ATTENTION only, 'math' = MATH only (torch.nn.attention.sdpa_kernel)."]


# ============================================================================ 3. planner
def part_planner(ctx: Context, result: dict) -> None:
    """Predicted vs measured peak for every shipped config, fused and math attention, with
    and without checkpointing; per-family correction factors; the calibration file."""
    with calibration_file("none"):      # fit against the derived plans, whatever file exists
        measure_planner(ctx, result)
    result["factors"] = fit_factors(result["rows"])
    result["calibration_file"] = write_calibration(ctx, result)
    with calibration_file(result["calibration_file"]):   # the planner reads what was written
        for row in result["rows"]:
            if row["status"] == "ok":
                p = plan(rebuild(row), "torch", row["attention"])
                row["calibrated_predicted_bytes"] = p.peak_bytes - p.term("framework overhead")
                if row["measured_bytes"] and p.calibrated:
                    row["calibrated_error"] = row["calibrated_predicted_bytes"] / row["measured_bytes"] - 1


@contextlib.contextmanager
def calibration_file(value: str):
    """The planner reads `value` as its CUDA calibration ("none": no file) meanwhile."""
    before = os.environ.get(planner.CALIBRATION_ENV)
    os.environ[planner.CALIBRATION_ENV] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ[planner.CALIBRATION_ENV]
        else:
            os.environ[planner.CALIBRATION_ENV] = before


def shipped_configs() -> list[Path]:
    """configs/*.yaml, one family after another in turn: if time runs out, every family
    has had its first configs measured."""
    by_family: dict[str, list[Path]] = {}
    for path in sorted((REPO / "configs").glob("*.yaml")):
        by_family.setdefault(load_config(path).family, []).append(path)
    queues = list(by_family.values())
    return [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)]


def measure_planner(ctx: Context, result: dict) -> None:
    result.update(plan_device=ctx.plan_device, rows=[], configs={},
                  method="peak = torch.cuda.max_memory_allocated() after reset_peak_memory_stats() around "
                         "one train_step, after a warm-up step (AdamW state allocated); predicted = "
                         "planner peak less its CUDA-context term (not in max_memory_allocated)")
    bench = {REPO / p for f in families().values() for p in f.bench_configs}
    for path in shipped_configs():
        config = load_config(path)
        name = str(path.relative_to(REPO))
        if ctx.dry_run:
            # Every config planned at the size the GPU run would measure; the family bench
            # configs also run, at tiny sizes (the CPU keeps no allocator statistics).
            preview, overrides = fitted_for_measurement(config, 80e9, MEMORY_SHARE, ctx.plan_device)
            result["configs"][name] = {"gpu_overrides": overrides, "predicted_gb": {
                a: plan(preview, "torch", a).peak_bytes / GB for a in ATTENTION}}
            if path not in bench:
                continue
            overrides = dry_overrides(config) | {"hardware.device": ctx.plan_device}
            config = with_overrides(config, overrides)
        else:
            config, overrides = fitted_for_measurement(config, ctx.device_memory, MEMORY_SHARE, ctx.plan_device)
            result["configs"][name] = {"overrides": overrides}
        estimate = 3 if ctx.dry_run else 10
        if ctx.part_left() < estimate:
            result["rows"].append({"case": name, "status": "skipped", "reason": "skipped: time budget"})
            ctx.log(f"  planner {name}: skipped (time budget)")
            continue
        measure_config(ctx, result["rows"], name, config, overrides)


def measure_config(ctx: Context, rows: list, name: str, config, overrides: dict) -> None:
    """One trainer per config; each attention path x checkpointing is one measured step."""
    trainer = None
    try:
        weights = cached_weights(ctx, config)
        trainer = Trainer(config.model, config.train, weights, device=ctx.device)
        [micro] = batches(config, 1, seed=4)
        lr = config.train.learning_rate
        try:    # warm-up: AdamW state exists; the fused path first, it needs the least memory
            with attention_path("flash"):
                trainer.train_step([micro], lr)
        except RuntimeError as e:
            if "out of memory" in str(e):
                raise
            with attention_path("math"):   # no fused kernel for this config (e.g. fp32 with GQA)
                trainer.train_step([micro], lr)
        for attention in ATTENTION:
            for checkpointing in (False, True):
                variant = with_overrides(config, {"train.gradient_checkpointing": checkpointing})
                case(ctx, rows, f"{name} {attention}{' ckpt' if checkpointing else ''}", 1,
                     lambda: measure_step(ctx, trainer, variant, name, overrides, attention, micro),
                     label=f"planner {name} {attention}{' checkpointing' if checkpointing else ''}", free=False)
    except Exception as e:   # noqa: BLE001 -- building or warming up failed: one row says so
        rows.append({"case": name, "status": "error", "error": error_text(e)})
        ctx.log(f"  planner {name}: error - {error_text(e)}")
    finally:
        trainer = None       # frees the GPU memory before the next config
        ctx.free()


def measure_step(ctx: Context, trainer, config, name: str, overrides: dict, attention: str, micro) -> dict:
    p = plan(config, "torch", attention)
    activations = sum(t.bytes for t in p.terms if t.name.startswith("activations:"))
    predicted = p.peak_bytes - p.term("framework overhead")
    trainer.model.checkpoint_activations = config.train.gradient_checkpointing
    measured = before = None
    if ctx.cuda:
        ctx.sync()
        torch.cuda.reset_peak_memory_stats(ctx.device)
        before = torch.cuda.memory_allocated(ctx.device)
    with attention_path(attention):
        trainer.train_step([micro], config.train.learning_rate)
    if ctx.cuda:
        ctx.sync()
        measured = torch.cuda.max_memory_allocated(ctx.device)
    row = {"config": name, "family": config.family, "attention": attention, "plan_device": config.hardware.device,
           "checkpointing": config.train.gradient_checkpointing, "precision": config.train.precision,
           "overrides": overrides, "predicted_bytes": predicted, "predicted_activation_bytes": activations,
           "predicted_static_bytes": predicted - activations, "allocated_before_bytes": before,
           "measured_bytes": measured, "largest": dataclasses.asdict(p.largest)}
    if measured is None:
        row["note"] = "measured null: torch on the CPU keeps no allocator statistics (dry run)"
        row["summary"] = f"predicted {predicted / GB:.3f} GB"
    else:
        row["prediction_error"] = predicted / measured - 1
        row["activation_ratio"] = (measured - row["predicted_static_bytes"]) / activations if activations > 0 else None
        row["summary"] = (f"predicted {predicted / GB:.2f} GB, measured {measured / GB:.2f} GB "
                          f"({row['prediction_error']:+.1%})")
    return row


def rebuild(row: dict):
    """The config a planner row measured (shipped config + its overrides)."""
    config = load_config(REPO / row["config"])
    return with_overrides(config, row["overrides"] | {"hardware.device": row["plan_device"],
                                                      "train.gradient_checkpointing": row["checkpointing"]})


def fit_factors(rows: list[dict]) -> dict:
    """Per family and attention path: the median of measured / predicted activation bytes
    over its configs and checkpointing settings (robust to one odd config)."""
    ratios: dict = {}
    for r in rows:
        if r.get("status") == "ok" and r.get("activation_ratio") is not None and r["activation_ratio"] > 0:
            ratios.setdefault(r["family"], {}).setdefault(r["attention"], []).append(r["activation_ratio"])
    return {family: {attention: {"factor": statistics.median(v), "n": len(v), "min": min(v), "max": max(v)}
                     for attention, v in by_path.items()}
            for family, by_path in ratios.items()}


def write_calibration(ctx: Context, result: dict) -> str:
    """shared/planner/cuda_calibration.json on a GPU (a copy in --out); in a dry run only
    --out/cuda_calibration.json, with no factors. Read back through the planner's loader."""
    device = torch.cuda.get_device_name(ctx.device) if ctx.cuda else "cpu (dry run)"
    data = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
            "date": datetime.date.today().isoformat(), "written_by": "bench/gpu_check.py",
            "method": "median over shipped configs (scaled to fit) and checkpointing on/off of "
                      "(max_memory_allocated - predicted weights, optimizer state and gradients) / "
                      "predicted activations",
            "factors": {f: {a: round(v["factor"], 4) for a, v in by_path.items()}
                        for f, by_path in result["factors"].items()},
            "cases": {f: {a: v["n"] for a, v in by_path.items()} for f, by_path in result["factors"].items()}}
    if ctx.dry_run:
        data["dry_run"] = True
    text = json.dumps(data, indent=1) + "\n"
    copy = ctx.out / "cuda_calibration.json"
    copy.write_text(text)
    target = copy
    if ctx.cuda and data["factors"]:
        target = planner.CUDA_CALIBRATION_FILE
        target.write_text(text)
    planner.load_cuda_calibration(target)      # fails loudly if the planner could not read it
    ctx.log(f"  calibration written: {target}")
    return str(target)


def markdown_planner(result: dict) -> list[str]:
    rows = []
    for r in result.get("rows", []):
        if r["status"] != "ok":
            rows.append([r["case"]] + [""] * 6 + [row_status(r)])
            continue
        measured = r["measured_bytes"]
        rows.append([r["config"], r["attention"], "yes" if r["checkpointing"] else "no", r["precision"],
                     f"{r['predicted_bytes'] / GB:.3f}", fmt(measured and measured / GB, ".3f"),
                     fmt(r.get("prediction_error"), "+.1%") + (
                         f" -> {r['calibrated_error']:+.1%}" if "calibrated_error" in r else ""), "ok"])
    lines = table(["config (scaled)", "attention", "checkpointing", "precision", "predicted GB",
                   "measured GB", "error (-> after calibration)", "status"], rows)
    factors = result.get("factors") or {}
    lines += ["", "Correction factors (measured / predicted activation bytes, median; n cases):", ""]
    lines += table(["family", "flash", "math"],
                   [[f] + [f"{v[a]['factor']:.2f} (n={v[a]['n']}, {v[a]['min']:.2f}-{v[a]['max']:.2f})"
                           if a in v else "n/a" for a in ATTENTION] for f, v in factors.items()]
                   or [["none measured", "n/a", "n/a"]])
    lines += ["", f"Calibration file: `{result.get('calibration_file')}`. {result.get('method', '')}."]
    return lines


# ============================================================================ 4. seed 003
class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op produces (forward and backward): the allocation
    that must succeed in one piece."""

    def __init__(self):
        super().__init__()
        self.bytes, self.detail = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor) and t.nbytes > self.bytes:
                self.bytes = t.nbytes
                self.detail = {"op": str(func), "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
                               "numel": t.numel(), "bytes": t.nbytes}
        return out


def part_seed003(ctx: Context, result: dict) -> None:
    """configs/musdb18.yaml (seed 003's XLarge TF-Locoformer) at one layer, batch 1 and a
    segment that fits: math vs fused attention, planned vs measured."""
    config = load_config(REPO / "configs/musdb18.yaml")
    o = {"train.batch_size": 1, "train.gradient_accumulation_steps": 1, "train.compile": False,
         "train.gradient_checkpointing": False, "model.n_layers": 1, "hardware.device": ctx.plan_device}
    if ctx.dry_run:
        o |= {"data.sample_rate": 8000, "data.segment_seconds": 0.25, "model.n_fft": 256, "model.hop": 64,
              "model.emb_dim": 32, "model.n_heads": 4, "model.ffn_hidden_dim": (64, 64)}
        config = with_overrides(config, o)
    else:
        for seconds in (4.0, 2.0, 1.0, 0.5, 0.25, 0.12):
            candidate = with_overrides(config, o | {"data.segment_seconds": seconds})
            if plan(candidate, "torch", "math").peak_bytes <= SEED003_SHARE * ctx.device_memory:
                break
        config, o = candidate, o | {"data.segment_seconds": seconds}
    result.update(config="configs/musdb18.yaml", overrides={k: v for k, v in o.items() if k != "hardware.device"},
                  precision=config.train.precision, rows=[])
    trainer = Trainer(config.model, config.train, cached_weights(ctx, config), device=ctx.device)
    [micro] = batches(config, 1, seed=5)
    with attention_path("flash"):
        trainer.train_step([micro], config.train.learning_rate)
    for attention in ("math", "flash"):
        case(ctx, result["rows"], attention, 5, lambda: seed003_step(ctx, trainer, config, attention, micro),
             label=f"seed 003 {attention}", free=False)
    trainer = None
    ctx.free()
    rows = {r["case"]: r for r in result["rows"] if r["status"] == "ok"}
    if "math" in rows and "flash" in rows and rows["math"]["measured_peak_bytes"]:
        result["measured_delta_bytes"] = rows["math"]["measured_peak_bytes"] - rows["flash"]["measured_peak_bytes"]
        result["predicted_delta_bytes"] = rows["math"]["predicted_peak_bytes"] - rows["flash"]["predicted_peak_bytes"]


def seed003_step(ctx: Context, trainer, config, attention: str, micro) -> dict:
    p = plan(config, "torch", attention)
    largest = LargestTensor()
    if ctx.cuda:
        ctx.sync()
        torch.cuda.reset_peak_memory_stats(ctx.device)
    with attention_path(attention), largest:
        trainer.train_step([micro], config.train.learning_rate)
    measured = None
    if ctx.cuda:
        ctx.sync()
        measured = torch.cuda.max_memory_allocated(ctx.device)
    planned = dataclasses.asdict(p.largest)
    numel = int(np.prod(planned["shape"]))
    same_size = largest.detail is not None and largest.detail["numel"] == numel
    ratio = largest.bytes / planned["bytes"]
    return {"attention": attention, "predicted_peak_bytes": p.peak_bytes - p.term("framework overhead"),
            "measured_peak_bytes": measured, "planned_largest": planned, "measured_largest": largest.detail,
            "largest_same_elements": same_size, "largest_bytes_ratio": ratio,
            "summary": f"planner: {planned['name']} {tuple(planned['shape'])} {planned['bytes'] / GB:.3f} GB; "
                       f"largest op output {tuple(largest.detail['shape'])} {largest.detail['dtype']} "
                       f"{largest.bytes / GB:.3f} GB ({'same elements' if same_size else 'different'}, "
                       f"x{ratio:.2f} bytes)"}


def markdown_seed003(result: dict) -> list[str]:
    rows = []
    for r in result.get("rows", []):
        if r["status"] != "ok":
            rows.append([r["case"]] + [""] * 5 + [row_status(r)])
            continue
        pl, ml = r["planned_largest"], r["measured_largest"]
        rows.append([r["attention"], f"{pl['name']} {tuple(pl['shape'])}, {pl['bytes'] / GB:.3f} GB",
                     f"{ml['op']} {tuple(ml['shape'])} {ml['dtype']}, {ml['bytes'] / GB:.3f} GB",
                     ("same elements" if r["largest_same_elements"] else "different") + f", x{r['largest_bytes_ratio']:.2f} bytes",
                     f"{r['predicted_peak_bytes'] / GB:.2f}", fmt(r["measured_peak_bytes"] and r["measured_peak_bytes"] / GB, ".2f"),
                     "ok"])
    lines = table(["attention", "planner's largest allocation", "largest tensor measured (op)", "match",
                   "predicted peak GB", "measured peak GB", "status"], rows)
    if "measured_delta_bytes" in result:
        lines += ["", f"math - fused peak: measured {result['measured_delta_bytes'] / GB:.2f} GB, "
                      f"planned {result['predicted_delta_bytes'] / GB:.2f} GB."]
    return lines + ["", f"{result.get('config')} with {result.get('overrides')} ({result.get('precision')}); "
                        "largest tensor = the largest output of any op in the step (a TorchDispatchMode)."]


# ============================================================================ 5. inference
def part_inference(ctx: Context, result: dict) -> None:
    """Separators: x real time over 10 s of audio (demo configs, the separate CLI's chunked
    path). EchoStream: median ms per 320 ms chunk of a 5 s utterance."""
    audio_s, utterance_s, repeats = (1.0, 1.0, 1) if ctx.dry_run else (10.0, 5.0, 3)
    result.update(audio_seconds=audio_s, utterance_seconds=utterance_s, chunk_ms=320, repeats=repeats, rows=[])
    for family in families().values():
        for path in family.bench_configs[:1]:
            if family.inference == "separation":
                case(ctx, result["rows"], f"{family.name} {path}", 5,
                     lambda: separation_speed(ctx, path, audio_s, repeats), label=f"separate {family.name}")
            elif family.inference == "streaming":
                case(ctx, result["rows"], f"{family.name} {path}", 5,
                     lambda: streaming_latency(ctx, path, utterance_s, repeats), label=f"stream {family.name}")


def separation_speed(ctx: Context, path: str, seconds: float, repeats: int) -> dict:
    config = load_config(REPO / path)
    rate, chunk = config.data.sample_rate, config.data.segment_samples
    run_chunks = chunk_runner(build_model(config.model, config.train.seed), ctx.device)
    mixture = (0.1 * np.random.default_rng(0).standard_normal((config.model.audio_channels, int(seconds * rate))))
    mixture = mixture.astype(np.float32)
    speeds = []
    for rep in range(repeats + 1):       # the first: warm-up
        ctx.sync()
        start = time.perf_counter()
        separate(mixture, run_chunks, chunk)
        ctx.sync()
        if rep:
            speeds.append(seconds / (time.perf_counter() - start))
    x = statistics.median(speeds)
    return {"kind": "separation", "config": path, "x_real_time": x, "all": speeds,
            "chunk_seconds": chunk / rate, "summary": f"{x:.1f}x real time"}


def streaming_latency(ctx: Context, path: str, seconds: float, repeats: int) -> dict:
    config = load_config(REPO / path)
    spec, rate = config.model, config.data.sample_rate
    model = build_model(spec, config.train.seed).to(ctx.device).eval()
    identity = CMVN(np.zeros(spec.n_mels), np.ones(spec.n_mels))
    audio = (0.1 * np.random.default_rng(0).standard_normal(int(seconds * rate))).astype(np.float32)
    chunk_ms, encoder_ms = [], []
    for rep in range(repeats + 1):       # the first: warm-up
        written = SimultaneousTranslator(StreamSession(model, ctx.device), Policy("wait-k"), identity, rate,
                                         max_target_len=10 ** 6).run(audio, rate * 320 // 1000)
        if rep:
            chunk_ms += written.chunk_ms
            encoder_ms += written.encoder_ms
    median = statistics.median(chunk_ms)
    return {"kind": "streaming", "config": path, "chunks": len(written.chunk_ms), "median_chunk_ms": median,
            "p95_chunk_ms": float(np.percentile(chunk_ms, 95)), "median_encoder_ms": statistics.median(encoder_ms),
            "real_time_factor": median / 320, "summary": f"{median:.2f} ms per 320 ms chunk (median)"}


def markdown_inference(result: dict) -> list[str]:
    rows = []
    for r in result.get("rows", []):
        if r["status"] != "ok":
            rows.append([r["case"], "", "", row_status(r)])
        elif r["kind"] == "separation":
            rows.append([r["case"], f"separate {result['audio_seconds']:g} s of audio in "
                                    f"{r['chunk_seconds']:g} s chunks", f"{r['x_real_time']:.1f}x real time", "ok"])
        else:
            rows.append([r["case"], f"stream a {result['utterance_seconds']:g} s utterance in 320 ms chunks "
                                    f"({r['chunks']} chunks)",
                         f"{r['median_chunk_ms']:.2f} ms/chunk median (p95 {r['p95_chunk_ms']:.2f}, encoder "
                         f"{r['median_encoder_ms']:.2f}); real-time factor {r['real_time_factor']:.4f}", "ok"])
    return table(["family, config", "what", "speed", "status"], rows) + [
        "", f"Spec initial weights, random audio; median over {result.get('repeats')} runs after a warm-up."]


# ============================================================================ report
PARTS = [
    # Shares of the time left (a part that finishes early leaves its time to the next), from
    # estimates for an H100: parity ~40 s (the CPU side dominates), LM ~200 s (two
    # torch.compile runs of the medium model), planner ~100 s, the last two ~15 s each.
    Part("parity", "1. Parity on the device (fp32, TF32 off; bf16, fp16 curves)", part_parity, markdown_parity, 0.15),
    Part("lm_speed", "2. LM throughput and MFU", part_lm_speed, markdown_lm_speed, 0.42),
    Part("planner", "3. Memory planner vs measured peak; CUDA calibration", part_planner, markdown_planner, 0.27),
    Part("seed003", "4. Seed 003: TF-Locoformer's largest allocation, math vs fused attention", part_seed003,
         markdown_seed003, 0.08),
    Part("inference", "5. Separation speed and streaming latency", part_inference, markdown_inference, 0.08),
]


def environment(ctx: Context) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    env = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if ctx.cuda else None,
           "cpu_threads": torch.get_num_threads(), "commit": commit}
    if ctx.cuda:
        props = torch.cuda.get_device_properties(ctx.device)
        env.update(gpu=props.name, gpu_memory_bytes=props.total_memory, capability=f"{props.major}.{props.minor}",
                   fp16_bf16_reduction_math_sdp=getattr(torch.backends.cuda, "fp16_bf16_reduction_math_sdp_allowed",
                                                        lambda: None)())
    return env


def markdown(report: dict) -> str:
    env = report["environment"]
    if report["dry_run"]:
        head = [f"#### GPU check: DRY RUN on the CPU ({report['dry_run_reason']})", "",
                "Every part ran end to end at tiny sizes on the CPU. **No number below is a GPU "
                "measurement**; MFU and measured peaks are n/a by design."]
    else:
        head = [f"#### GPU check: {env.get('gpu')} ({env.get('gpu_memory_bytes', 0) / 2**30:.0f} GiB), "
                f"torch {env['torch']}, CUDA {env['cuda']}"]
    head += ["", f"`python bench/gpu_check.py{' --dry-run' if report['dry_run'] else ''}` at commit "
                 f"{env.get('commit')}, {report['date']}: {report['wall_s']:.0f} s of a {report['budget_s']:.0f} s "
                 f"budget. Full results: gpu_check.json."]
    lines = head
    for part in PARTS:
        entry = report["parts"].get(part.key)
        if entry is None:
            continue
        status = entry["status"] + (f": {entry.get('error') or entry.get('reason')}" if entry["status"] != "ok" else "")
        lines += ["", f"##### {part.title} ({status}, {entry.get('seconds', 0):.0f} s)", ""]
        try:
            lines += part.markdown(entry["result"])
        except Exception as e:   # noqa: BLE001 -- a broken table must not lose the report
            lines += table(["part", "status"], [[part.title, f"table failed: {error_text(e)}"]])
    return "\n".join(lines) + "\n"


def finite(x):
    """NaN and infinities as strings: strict JSON has no such numbers (a diverged fp16
    curve can produce them)."""
    if isinstance(x, (np.floating, np.integer)):
        x = x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    return x


def to_json(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, (Path, torch.dtype, torch.device)):
        return str(x)
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(f"not JSON: {type(x).__name__}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python bench/gpu_check.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu_check", help="output directory (default: gpu_check/)")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="total time; later measurements skip rather than run past it (default 420)")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (automatic without CUDA)")
    p.add_argument("--dry-run-compile", action="store_true",
                   help="in a dry run, also run the torch.compile cases (inductor: ~1 min each on a CPU)")
    p.add_argument("--hardware", help="hardware profile for MFU (default: matched by GPU name, e.g. H100 -> "
                                      "h100_80gb; an H100 PCIe is not an SXM)")
    p.add_argument("--parts", default=",".join(part.key for part in PARTS),
                   help="comma-separated subset of: " + ", ".join(part.key for part in PARTS))
    args = p.parse_args(argv)
    wanted = [part for part in PARTS if part.key in args.parts.split(",")]

    cuda = torch.cuda.is_available() and not args.dry_run
    reason = None if cuda else ("--dry-run" if args.dry_run else "no CUDA device")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(device=torch.device("cuda" if cuda else "cpu"), dry_run=not cuda, out=out,
                  budget_s=args.budget_s, dry_compile=args.dry_run_compile)
    if cuda:
        name = torch.cuda.get_device_name(ctx.device)
        ctx.profile = hardware_profile(f"cuda: {name}", args.hardware)
        if ctx.profile is not None and ctx.profile.backend == "torch":
            ctx.plan_device = ctx.profile.name
        ctx.device_memory = torch.cuda.get_device_properties(ctx.device).total_memory
    else:
        # Tiny tensors on a CPU: a second torch thread only waits for the first on a busy
        # machine (tests/helpers.py: one_torch_thread).
        torch.set_num_threads(1)

    report = {"tool": "bench/gpu_check.py", "dry_run": ctx.dry_run, "dry_run_reason": reason,
              "device": f"cuda: {torch.cuda.get_device_name(ctx.device)}" if cuda else "cpu",
              "hardware_profile": getattr(ctx.profile, "name", None), "plan_device": ctx.plan_device,
              "date": datetime.datetime.now().isoformat(timespec="seconds"), "budget_s": args.budget_s,
              "environment": environment(ctx), "parts": {}}
    ctx.log(f"gpu_check on {report['device']}" + (f" - DRY RUN ({reason}): tiny sizes on the CPU, "
                                                   f"no GPU numbers" if ctx.dry_run else ""))

    def save():
        report["wall_s"] = round(ctx.elapsed(), 1)
        (out / "gpu_check.json").write_text(json.dumps(finite(report), indent=1, default=to_json,
                                                       allow_nan=False) + "\n")
        (out / "gpu_check.md").write_text(markdown(report))

    run_parts(wanted, ctx, report, save)
    save()
    statuses = ", ".join(f"{k} {v['status']}" for k, v in report["parts"].items())
    ctx.log(f"done in {report['wall_s']:.0f} s ({statuses}): {out / 'gpu_check.json'}, {out / 'gpu_check.md'}"
            + (" - DRY RUN" if ctx.dry_run else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
