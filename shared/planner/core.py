"""Predict peak training memory before launch, per backend, from the spec and config.

    peak = weights + optimizer state + gradients (+ accumulation buffer, + low-precision
           weight copies) + activations saved for backward + framework overhead

Activations are the part everyone underestimates. For each backend we count what the
framework actually keeps for the backward pass of one micro-batch:

- MLX trains attention through the unfused path (docs/memory.md): the B x H x T x T scores
  and probabilities of every layer are kept. Its per-tensor coefficients below were
  *measured*, by fitting mx.get_peak_memory() over a designed set of configs
  (bench/calibrate_memory.py); docs/memory.md has the accuracy table.
- torch on CUDA with SDPA's flash / memory-efficient kernels keeps no T x T tensor; its
  terms are derived from the list of tensors autograd saves in our block (not yet
  calibrated on a GPU: no GPU was available when this was written). When
  shared/planner/cuda_calibration.json exists (written by bench/gpu_check.py on a GPU),
  the "activations:" terms of torch plans on CUDA are scaled by its per-family,
  per-attention-path factors and the plan is marked calibrated; without the file, plans
  are exactly as derived.

Everything is in bytes. This file is the accounting every family shares and the advice
built on it (suggestions, fit); each family's activation model is a MemoryModel in a file
of its own (shared/planner/<family>.py), registered with the family (shared/registry.py).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from shared.engine.config import cpu_parts
from shared.errors import ConfigError
from shared.planner.hardware import HardwareProfile
from shared.registry import get_family

GB = 1e9
SAFETY_MARGIN = 0.10   # plan to use at most 90 % of the device's usable memory


@dataclass(frozen=True)
class Term:
    name: str
    bytes: float
    detail: str = ""


@dataclass(frozen=True)
class Allocation:
    """One tensor: what the framework must allocate in one piece."""
    name: str
    shape: tuple[int, ...]
    bytes: float


@dataclass(frozen=True)
class MemoryPlan:
    backend: str
    terms: list[Term]
    largest: Allocation
    calibrated: bool
    calibration: str | None = None    # where a calibration came from, when not the family's own

    @property
    def peak_bytes(self) -> float:
        return sum(t.bytes for t in self.terms)

    def term(self, name: str) -> float:
        return sum(t.bytes for t in self.terms if t.name == name)


def no_suggestions(config, backend: str, attention: str | None) -> list:
    return []


def no_escalations(config) -> list[dict]:
    return [{}]


@dataclass(frozen=True)
class MemoryModel:
    """What the planner needs from a family (its Family.memory)."""
    # (config, backend, attention or None, device_type "cpu" | "cuda") -> MemoryPlan of one
    # training step. `attention` is the user's --attention, None for the device's default
    # (default_attention).
    plan: Callable
    depth_key: str              # model.<depth_key>: the number of layers, for "a smaller model"
    shorter_hint: str           # what makes one example smaller (the batch finder's advice)
    full_speed_units: float     # a micro-batch of this many of the family's units runs near full speed
    # Single changes beyond batch, checkpointing, precision and attention path:
    # (config, backend, attention) -> [(change, overrides, keeps_effective_batch)]
    suggestions: Callable = no_suggestions
    # What fit() tries beyond batch, checkpointing and precision, mildest first; [{}]: nothing.
    escalations: Callable = no_escalations
    # For bench/calibrate_memory.py --family: a family whose activations are elements of
    # kinds times fitted per-backend coefficients gives the coefficients ({backend: {kind:
    # value}}), config -> {"parts": {part: {kind: elements}}}, and the design it is fitted
    # over: (base config, [overrides, ...]).
    coefficients: dict | None = None
    activation_elements: Callable | None = None
    calibration_design: tuple | None = None


def default_attention(device_type: str) -> str:
    """torch's SDPA uses its fused kernels on CUDA unless told otherwise, the math path elsewhere."""
    return "math" if device_type == "cpu" else "flash"


def dtype_bytes(precision: str) -> int:
    return 2 if precision in ("bf16", "fp16") else 4


def static_terms(n: int, train, backend: str, c: int) -> list[Term]:
    """What a model of n parameters holds whatever the batch: fp32 weights, AdamW moments
    and gradients; MLX's running sum when accumulating; bf16 weight copies."""
    terms = [
        Term("weights", 4 * n, f"{n:,} parameters, float32"),
        Term("optimizer state", 8 * n, "AdamW, float32"),
        Term("gradients", 4 * n, "float32"),
    ]
    if train.gradient_accumulation_steps > 1 and backend == "mlx":
        terms.append(Term("accumulation buffer", 4 * n, "running sum of micro-batch gradients"))
    if c == 2:
        terms.append(Term("low-precision weight copies", 2 * n, "bf16 casts"))
    return terms


def overhead_term(backend: str, device_type: str) -> Term:
    """What the framework holds beyond our tensors: torch's CUDA context on a GPU; MLX
    counts only live arrays, and torch on a CPU has no context."""
    if backend == "mlx":
        return Term("framework overhead", 0.0, "only live arrays count")
    if device_type == "cuda":
        return Term("framework overhead", 0.5 * GB, "CUDA context and kernels (not in "
                    "max_memory_allocated)")
    return Term("framework overhead", 0.0, "none counted on the CPU")


# ----------------------------------------------------------------------------- dispatch
def plan(config, backend: str, attention: str | None = None, world_size: int = 1) -> MemoryPlan:
    """The predicted memory of one training step of `config` on `backend`, per device when
    `world_size` ranks train (shared/planner/parallel.py)."""
    if backend not in ("mlx", "torch"):
        raise ValueError(f"unknown backend {backend!r}; expected mlx or torch")
    device_type = "cpu" if config.hardware.device == "cpu" else "cuda"
    result = get_family(config.family).memory.plan(config, backend, attention, device_type)
    if (backend, device_type) == ("torch", "cuda"):
        result = cuda_calibrated(result, config.family, attention or default_attention(device_type))
    parts = cpu_parts(config.train, config.family) if (backend, device_type) == ("mlx", "cpu") else 1
    if parts > 1:
        extra = Term("gradients of parallel CPU parts", parts_gradient_bytes(config, parts),
                     f"{parts} parts of each micro-batch on parallel CPU streams "
                     f"(train.cpu_streams), one float32 gradient each")
        result = dataclasses.replace(result, terms=result.terms + [extra])
    if world_size > 1:
        from shared.planner.parallel import per_device
        result = per_device(result, config, world_size)
    return result


def parts_gradient_bytes(config, parts: int) -> float:
    """What MLX's parallel CPU parts hold beyond one stream's step: each part's gradients
    are whole before they are added up, one float32 copy per extra part. (Their
    activations add up to the whole batch's at most.)"""
    return 4 * get_family(config.family).param_counts(config.model)["total"] * (parts - 1)


# ----------------------------------------------------------------------------- CUDA calibration
# bench/gpu_check.py measures torch.cuda.max_memory_allocated() against these plans on a GPU
# and writes, per family and attention path, measured / predicted activation bytes:
#   {"device": ..., "torch": ..., "date": ..., "factors": {family: {"flash": f, "math": f}}}
# WORKBENCH_CUDA_CALIBRATION=PATH reads another file; =none reads none.
CUDA_CALIBRATION_FILE = Path(__file__).with_name("cuda_calibration.json")
CALIBRATION_ENV = "WORKBENCH_CUDA_CALIBRATION"
_calibrations: dict = {}


def cuda_calibration_path() -> Path | None:
    value = os.environ.get(CALIBRATION_ENV)
    if value is None:
        return CUDA_CALIBRATION_FILE
    return None if value.strip().lower() in ("", "none") else Path(value)


def load_cuda_calibration(path: str | Path | None = None) -> dict | None:
    """The CUDA calibration file (default: cuda_calibration_path()), or None when there is
    none. Read once per file version: the planner is called hundreds of times by fit()."""
    path = cuda_calibration_path() if path is None else Path(path)
    if path is None or not path.is_file():
        return None
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _calibrations:
        try:
            data = json.loads(path.read_text())
            factors = data["factors"]
            bad = [f"{family}.{attention}" for family, paths in factors.items()
                   for attention, factor in paths.items()
                   if not isinstance(factor, (int, float)) or not factor > 0]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"{path}: not a CUDA calibration file ({type(e).__name__}: {e}); "
                              f"rerun bench/gpu_check.py or delete it") from None
        if bad:
            raise ConfigError(f"{path}: calibration factors must be positive numbers: {', '.join(bad)}")
        _calibrations[key] = data
    return _calibrations[key]


def cuda_calibrated(result: MemoryPlan, family: str, attention: str) -> MemoryPlan:
    """A torch plan on CUDA with its activation terms scaled by the measured factor for
    this family and attention path; unchanged when there is no factor for them."""
    calibration = load_cuda_calibration()
    factor = (calibration or {}).get("factors", {}).get(family, {}).get(attention)
    if factor is None:
        return result
    terms = [dataclasses.replace(t, bytes=t.bytes * factor,
                                 detail=f"{t.detail} (x{factor:.2f} measured on CUDA)")
             if t.name.startswith("activations:") else t for t in result.terms]
    source = (f"activations calibrated on CUDA: {calibration.get('device', 'unknown GPU')}, "
              f"{calibration.get('date', 'undated')}")
    return dataclasses.replace(result, terms=terms, calibrated=True, calibration=source)


def budget_bytes(profile: HardwareProfile) -> float:
    return profile.memory_bytes * (1 - SAFETY_MARGIN)


# ----------------------------------------------------------------------------- advice
@dataclass(frozen=True)
class Suggestion:
    change: str                     # human-readable
    overrides: dict                 # section.key -> value
    peak_bytes: float
    keeps_effective_batch: bool


def with_overrides(config, overrides: dict):
    """A copy of `config` with `section.key` values replaced."""
    sections = {"model": config.model, "train": config.train, "data": config.data,
                "hardware": config.hardware}
    changes: dict[str, dict] = {}
    for key, value in overrides.items():
        section, name = key.split(".", 1)
        changes.setdefault(section, {})[name] = value
    # All of a section's changes at once: one at a time could pass through an invalid
    # combination (n_fft lowered before hop) that the spec rightly rejects.
    for section, values in changes.items():
        sections[section] = dataclasses.replace(sections[section], **values)
    return dataclasses.replace(config, **sections)


def suggestions(config, backend: str, attention: str | None = None) -> list[Suggestion]:
    """Single changes that lower peak memory, cheapest (for speed and quality) first.
    Batch changes keep the effective batch by raising accumulation."""
    tc, out = config.train, []
    baseline = plan(config, backend, attention).peak_bytes

    def add(change, overrides, keeps=True, attention_path=None):
        peak = plan(with_overrides(config, overrides), backend, attention_path or attention).peak_bytes
        if peak < baseline:  # e.g. chunked attention saves nothing where flash keeps no scores
            out.append(Suggestion(change, overrides, peak, keeps))

    b, k = tc.batch_size, tc.gradient_accumulation_steps
    for smaller in sorted({max(1, b // d) for d in (2, 4, 8, 16)} - {b}, reverse=True):
        if (b * k) % smaller == 0:
            add(f"micro-batch {b} -> {smaller}, accumulation {k} -> {b * k // smaller}",
                {"train.batch_size": smaller, "train.gradient_accumulation_steps": b * k // smaller})
    if not tc.gradient_checkpointing:
        add("activation checkpointing on (+20-35 % step time)", {"train.gradient_checkpointing": True})
    if tc.precision == "fp32":
        add("bf16 compute with fp32 master weights", {"train.precision": "bf16"})
    if backend == "torch" and (attention or "flash") == "math":
        add("fused SDPA attention (flash / memory-efficient: no T x T scores; --attention flash)",
            {}, True, attention_path="flash")
    model = get_family(config.family).memory
    for change, overrides, keeps in model.suggestions(config, backend, attention):
        add(change, overrides, keeps)
    layers = getattr(config.model, model.depth_key)
    if layers > 2:
        add(f"model: {layers} -> {layers * 3 // 4} layers (a smaller model)",
            {f"model.{model.depth_key}": layers * 3 // 4}, keeps=False)
    return sorted(out, key=lambda s: (not s.keeps_effective_batch, s.peak_bytes))


def throughput_proxy(config) -> float:
    """Relative training speed of a config: devices run near full speed once a micro-batch
    holds the family's full_speed_units (~8K tokens for the LM, ~3 s of audio), activation
    checkpointing recomputes the forward (~25 % slower) and chunked attention loops over
    query blocks (~10 %)."""
    family = get_family(config.family)
    slowdown = 0.75 if config.train.gradient_checkpointing else 1.0
    if getattr(config.model, "attention_chunk", 0):
        slowdown *= 0.9
    units = config.train.batch_size * family.units_per_example(config)
    return min(1.0, units / family.memory.full_speed_units) * slowdown


def segment_suggestions(config, backend: str, attention: str | None) -> list:
    """For families trained on fixed-length audio segments (data.segment_seconds): shorter
    segments, and chunked attention where the spec offers it (model.attention_chunk)."""
    seconds = config.data.segment_seconds
    out = [(f"segment {seconds:g} s -> {shorter:g} s", {"data.segment_seconds": shorter}, False)
           for shorter in (seconds / 2, seconds / 3)]
    if hasattr(config.model, "attention_chunk") and not config.model.attention_chunk:
        chunked = plan(with_overrides(config, {"model.attention_chunk": 256}), backend, attention)
        out.append((f"chunked attention (model.attention_chunk=256): largest allocation "
                    f"{chunked.largest.bytes / GB:.1f} GB", {"model.attention_chunk": 256}, True))
    return out


def segment_escalations(config) -> list[dict]:
    """fit()'s escalations for segment-trained families. Chunked attention computes the
    same function (only memory and speed change); a shorter training segment keeps the
    model but shows it less context per example, so it comes last."""
    steps: list[dict] = [{}]
    chunks = []
    if hasattr(config.model, "attention_chunk"):
        current = config.model.attention_chunk or 1 << 30
        chunks = [c for c in (256, 128, 64) if c < current]
        steps += [{"model.attention_chunk": c} for c in chunks]
    seconds = config.data.segment_seconds
    for factor in (3 / 4, 1 / 2, 1 / 3):
        shorter = {"data.segment_seconds": round(seconds * factor, 3)}
        steps += [shorter] + [shorter | {"model.attention_chunk": c} for c in chunks]
    return steps


def fit(config, backend: str, profile: HardwareProfile, attention: str | None = None):
    """The config that fits with the best throughput proxy, keeping the effective batch
    (micro-batch x accumulation): larger micro-batches first, checkpointing only when it
    pays, bf16 only if fp32 cannot fit; then the family's escalations (for the separators
    chunked attention and finally shorter segments). Returns (config, plan), or (None,
    plan of the smallest possible setting) when nothing fits."""
    budget = budget_bytes(profile)
    tc = config.train
    effective = tc.batch_size * tc.gradient_accumulation_steps
    precisions = [tc.precision] + (["bf16"] if tc.precision == "fp32" else [])
    escalations = get_family(config.family).memory.escalations(config)
    for extra in escalations:
        for precision in precisions:
            fitting = []
            for checkpointing in ([False, True] if not tc.gradient_checkpointing else [True]):
                for micro in (d for d in range(1, effective + 1) if effective % d == 0):
                    candidate = with_overrides(config, extra | {
                        "train.batch_size": micro, "train.gradient_accumulation_steps": effective // micro,
                        "train.gradient_checkpointing": checkpointing, "train.precision": precision})
                    p = plan(candidate, backend, attention)
                    if p.peak_bytes <= budget:
                        fitting.append((throughput_proxy(candidate), micro, not checkpointing, candidate, p))
            if fitting:
                best = max(fitting, key=lambda f: f[:3])
                return best[3], best[4]
    smallest = with_overrides(config, escalations[-1] | {
        "train.batch_size": 1, "train.gradient_accumulation_steps": effective,
        "train.gradient_checkpointing": True, "train.precision": precisions[-1]})
    return None, plan(smallest, backend, attention)
