"""Predict peak training memory before launch, per backend, from the spec and config.

    peak = weights + optimizer state + gradients (+ accumulation buffer, + low-precision
           weight copies) + activations saved for backward + framework overhead

Activations are the part everyone underestimates. For each backend we count what the
framework actually keeps for the backward pass of one micro-batch:

- MLX trains attention through the unfused path (DESIGN.md): the B x H x T x T scores
  and probabilities of every layer are kept. Its per-tensor coefficients below were
  *measured*, by fitting mx.get_peak_memory() over a designed set of configs
  (bench/calibrate_memory.py); docs/memory.md has the accuracy table.
- torch on CUDA with SDPA's flash / memory-efficient kernels keeps no T x T tensor; its
  terms are derived from the list of tensors autograd saves in our block (not yet
  calibrated on a GPU: no GPU was available when this was written).

Everything is in bytes. Families plug in through PLANNERS.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from shared.hardware import HardwareProfile, get_profile
from shared.specs.lm import LMSpec, lm_param_counts

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

    @property
    def peak_bytes(self) -> float:
        return sum(t.bytes for t in self.terms)

    def term(self, name: str) -> float:
        return sum(t.bytes for t in self.terms if t.name == name)


# ----------------------------------------------------------------------------- MLX, LM
# Numbers of activation-sized tensors MLX keeps per transformer block, per token, measured
# on MLX 0.32 (bench/calibrate_memory.py; refit with --fit). Multiply by the compute
# dtype's size. "scores" counts B x H x T x T tensors.
MLX_LM_COEFFICIENTS = {
    # Measured on MLX 0.32 (CPU) by varying one dimension at a time around base configs
    # (fp32: one base; bf16: the mean of two; bench/calibrate_memory.py --controlled).
    # bf16 keeps fewer copies of the MLP and scores than fp32, and more hidden-sized ones
    # (norm statistics and casts).
    "fp32": {"hidden": 3.0, "kv": 2.0, "mlp": 5.4, "scores": 1.56, "logits": 3.0, "embed": 2.0,
             "working_set": 1.33, "checkpoint_input": 0.5, "recompute": 2.97},
    "bf16": {"hidden": 5.15, "kv": 0.5, "mlp": 3.1, "scores": 1.14, "logits": 4.1, "embed": 2.0,
             "working_set": 1.7, "checkpoint_input": 0.5, "recompute": 1.85},
}
# What each coefficient counts, per block unless noted (activation-sized tensors kept per
# token, times the compute dtype's size; "scores" counts B x H x T x T tensors):
#   hidden  x BT x hidden_size          norm outputs, residuals, q, rotated q, o_proj input
#   kv      x BT x kv_heads x head_dim  k, rotated k, v
#   mlp     x BT x intermediate_size    gate, up, sigmoid, silu, product
#   scores  x B x heads x T x T         attention scores and probabilities (unfused path)
#   logits  x BT x vocab, float32       (whole model) logits, log-softmax and its gradient
#   embed   x BT x hidden_size          (whole model) embedding output, final norm
#   working_set       x one block       backward temporaries of the block being differentiated
#   checkpoint_input  x BT x hidden     kept per block when checkpointing
#   recompute         x one block       the recomputed block's forward plus its backward


def _bytes(precision: str) -> int:
    return 2 if precision in ("bf16", "fp16") else 4


def _lm_shapes(spec: LMSpec, batch: int, seq: int):
    return dict(BT=batch * seq, B=batch, T=seq, D=spec.hidden_size, H=spec.num_heads,
                KV=spec.num_kv_heads * spec.head_dim, I=spec.intermediate_size,
                V=spec.vocab_size, L=spec.num_layers)


def _lm_largest(spec: LMSpec, batch: int, seq: int, c: int, unfused_attention: bool) -> Allocation:
    s = _lm_shapes(spec, batch, seq)
    candidates = [
        Allocation("logits (float32, for the loss)", (s["B"], s["T"], s["V"]), s["BT"] * s["V"] * 4),
        Allocation("MLP activation", (s["B"], s["T"], s["I"]), s["BT"] * s["I"] * c),
        Allocation("embedding table gradient", (s["V"], s["D"]), s["V"] * s["D"] * 4),
    ]
    if unfused_attention:
        candidates.append(Allocation("attention scores", (s["B"], s["H"], s["T"], s["T"]),
                                     s["B"] * s["H"] * s["T"] ** 2 * c))
    return max(candidates, key=lambda a: a.bytes)


def plan_lm_mlx(spec: LMSpec, train, seq: int, coefficients: dict = MLX_LM_COEFFICIENTS) -> MemoryPlan:
    n = lm_param_counts(spec)["total"]
    c = _bytes(train.precision)
    coef = coefficients["bf16" if c == 2 else "fp32"]
    s = _lm_shapes(spec, train.batch_size, seq)
    per_block = (coef["hidden"] * s["BT"] * s["D"] + coef["kv"] * s["BT"] * s["KV"]
                 + coef["mlp"] * s["BT"] * s["I"] + coef["scores"] * s["B"] * s["H"] * s["T"] ** 2) * c
    if train.gradient_checkpointing:
        saved = Term("activations: saved by blocks", s["L"] * coef["checkpoint_input"] * s["BT"] * s["D"] * c,
                     f"{s['L']} block inputs (checkpointing)")
        working = Term("activations: backward working set", coef["recompute"] * per_block,
                       f"one block recomputed and differentiated ({per_block / GB:.2f} GB per block, "
                       f"unfused attention)")
    else:
        saved = Term("activations: saved by blocks", s["L"] * per_block,
                     f"{s['L']} blocks x {per_block / GB:.2f} GB, unfused attention "
                     f"(B x H x T x T scores kept)")
        working = Term("activations: backward working set", coef["working_set"] * per_block,
                       "temporaries of the block being differentiated")
    terms = [
        Term("weights", 4 * n, f"{n:,} parameters, float32 master copy"),
        Term("optimizer state", 8 * n, "AdamW m and v, float32"),
        Term("gradients", 4 * n, "float32"),
    ]
    if train.gradient_accumulation_steps > 1:
        terms.append(Term("accumulation buffer", 4 * n, "running sum of micro-batch gradients"))
    if c == 2:
        terms.append(Term("low-precision weight copies", 2 * n, "bf16 casts used by forward/backward"))
    terms += [
        saved, working,
        Term("activations: head and loss", coef["logits"] * s["BT"] * s["V"] * 4
             + coef["embed"] * s["BT"] * s["D"] * c, "logits, log-softmax and their gradient in float32"),
        Term("framework overhead", 0.0, "MLX counts only live arrays; its buffer cache is "
             "reclaimable (mx.set_cache_limit)"),
    ]
    return MemoryPlan("mlx", terms, _lm_largest(spec, train.batch_size, seq, c, True), calibrated=True)


# ----------------------------------------------------------------------------- torch, LM
def plan_lm_torch(spec: LMSpec, train, seq: int, attention: str = "flash",
                  device_type: str = "cuda") -> MemoryPlan:
    """Derived from what autograd saves in torch_models/lm.py's block (bytes per token):
    under bf16 autocast the residual stream and norms stay float32 (4 B) and matmul
    inputs/outputs are bf16 (2 B); SDPA flash/memory-efficient keeps q, k, v, output and a
    float32 log-sum-exp per row, the math path also keeps the T x T probabilities."""
    n = lm_param_counts(spec)["total"]
    low = train.precision in ("bf16", "fp16")
    c = 2 if low else 4
    s = _lm_shapes(spec, train.batch_size, seq)
    # residual in, norm out (fp32), its low-precision cast, q, rotated q, attention out,
    # o_proj input copy, residual mid, mlp norm out (fp32) and its cast
    hidden = (4 + 4 + c + c + c + c + c + 4 + 4 + c) if low else 10 * 4
    kv = 3 * c                       # k, rotated k, v
    mlp = 4 * c                      # gate, up, silu(gate), product
    per_block = s["BT"] * (hidden * s["D"] + kv * s["KV"] + mlp * s["I"])
    unfused = attention == "math"
    if unfused:
        per_block += 2 * s["B"] * s["H"] * s["T"] ** 2 * c     # scores and probabilities
    else:
        per_block += 4 * s["B"] * s["H"] * s["T"]                # log-sum-exp rows
    if train.gradient_checkpointing:
        blocks = Term("activations: blocks", s["L"] * 4 * s["BT"] * s["D"] + per_block,
                      f"{s['L']} block inputs (float32) + 1 block recomputed")
    else:
        blocks = Term("activations: blocks", s["L"] * per_block,
                      f"{s['L']} blocks x {per_block / GB:.2f} GB, attention: {attention}")
    terms = [
        Term("weights", 4 * n, f"{n:,} parameters, float32"),
        Term("optimizer state", 8 * n, "AdamW exp_avg and exp_avg_sq, float32"),
        Term("gradients", 4 * n, "float32 .grad (accumulates in place)"),
    ]
    if low:
        terms.append(Term("low-precision weight copies", 2 * n, "autocast's cached casts"))
    terms += [
        blocks,
        Term("activations: head and loss", s["BT"] * s["V"] * (c + 4 + 4) + 2 * s["BT"] * s["D"] * 4,
             "logits, their float32 upcast and gradient"),
        Term("framework overhead", 0.5 * GB if device_type == "cuda" else 0.0,
             "CUDA context and kernels (not in max_memory_allocated)" if device_type == "cuda"
             else "none counted on the CPU"),
    ]
    return MemoryPlan("torch", terms, _lm_largest(spec, train.batch_size, seq, c, unfused),
                      calibrated=False)


# ----------------------------------------------------------------------------- dispatch
def plan(config, backend: str, attention: str | None = None) -> MemoryPlan:
    """The predicted memory of one training step of `config` on `backend`."""
    if config.family != "lm":
        raise ValueError(f"the memory planner does not cover family {config.family!r} yet")
    if backend == "mlx":
        return plan_lm_mlx(config.model, config.train, config.seq_length)
    if backend == "torch":
        device_type = "cpu" if config.hardware.device == "cpu" else "cuda"
        default = "math" if device_type == "cpu" else "flash"
        return plan_lm_torch(config.model, config.train, config.seq_length,
                             attention or default, device_type)
    raise ValueError(f"unknown backend {backend!r}; expected mlx or torch")


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
    for key, value in overrides.items():
        section, name = key.split(".", 1)
        sections[section] = dataclasses.replace(sections[section], **{name: value})
    return dataclasses.replace(config, **sections)


def suggestions(config, backend: str, attention: str | None = None) -> list[Suggestion]:
    """Single changes that lower peak memory, cheapest (for speed and quality) first.
    Batch changes keep the effective batch by raising accumulation."""
    tc, out = config.train, []

    def add(change, overrides, keeps=True):
        peak = plan(with_overrides(config, overrides), backend, attention).peak_bytes
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
        add("fused SDPA attention (flash / memory-efficient)", {}, True)
    seq = config.seq_length
    for shorter in (seq // 2, seq // 4):
        if shorter >= 64:
            add(f"sequence {seq} -> {shorter} tokens (keeps tokens/step only with batch x "
                f"{seq // shorter})", {"train.seq_length": shorter}, keeps=False)
    if config.family == "lm" and config.model.num_layers > 2:
        fewer = config.model.num_layers * 3 // 4
        add(f"model: {config.model.num_layers} -> {fewer} layers (a smaller model)",
            {"model.num_layers": fewer}, keeps=False)
    return sorted(out, key=lambda s: (not s.keeps_effective_batch, s.peak_bytes))


def throughput_proxy(config) -> float:
    """Relative training speed of a config: devices run near full speed once a micro-batch
    holds ~8K tokens, and activation checkpointing recomputes the forward (~25 % slower)."""
    tokens = config.train.batch_size * config.seq_length
    return min(1.0, tokens / 8192) * (0.75 if config.train.gradient_checkpointing else 1.0)


def fit(config, backend: str, profile: HardwareProfile, attention: str | None = None):
    """The config that fits with the best throughput proxy, keeping the effective batch
    (micro-batch x accumulation): larger micro-batches first, checkpointing only when it
    pays, bf16 only if fp32 cannot fit. Returns (config, plan), or (None, plan of the
    smallest possible setting) when nothing fits."""
    budget = budget_bytes(profile)
    tc = config.train
    effective = tc.batch_size * tc.gradient_accumulation_steps
    precisions = [tc.precision] + (["bf16"] if tc.precision == "fp32" else [])
    for precision in precisions:
        fitting = []
        for checkpointing in ([False, True] if not tc.gradient_checkpointing else [True]):
            for micro in (d for d in range(1, effective + 1) if effective % d == 0):
                candidate = with_overrides(config, {
                    "train.batch_size": micro, "train.gradient_accumulation_steps": effective // micro,
                    "train.gradient_checkpointing": checkpointing, "train.precision": precision})
                p = plan(candidate, backend, attention)
                if p.peak_bytes <= budget:
                    fitting.append((throughput_proxy(candidate), micro, not checkpointing, candidate, p))
        if fitting:
            best = max(fitting, key=lambda f: f[:3])
            return best[3], best[4]
    smallest = with_overrides(config, {"train.batch_size": 1, "train.gradient_accumulation_steps": effective,
                                       "train.gradient_checkpointing": True, "train.precision": precisions[-1]})
    return None, plan(smallest, backend, attention)
