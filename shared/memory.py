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
from dataclasses import dataclass

from shared.hardware import HardwareProfile
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


# ----------------------------------------------------------------------------- TF-Locoformer
# Tensors kept per token (one time-frequency bin) of one path (frequency or time), in units
# of the compute dtype, and per attention score. MLX values measured like the LM's.
TFLOCO_COEFFICIENTS = {
    # MLX: measured (one base shape, varying depth, width, FFN, heads; docs/memory.md).
    # MLX keeps this model's activations in float32 even under bf16 (norms, STFT domain):
    # the bf16 peak measured the same as fp32's, hence "bytes": 4.
    "mlx": {"hidden": 10.2, "attn": 5.4, "ffn": 5.35, "scores": 0.62, "working_set": 0.86,
            "recompute": 2.2, "audio": 48.0, "bytes": 4},
    # torch: derived from the saved-tensor list, not yet calibrated on a GPU.
    "torch": {"hidden": 8.0, "attn": 6.0, "ffn": 3.0, "scores": 2.0, "working_set": 1.0,
              "recompute": 2.0, "audio": 48.0, "bytes": None},
}


def _tfloco_shapes(spec, batch: int, samples: int):
    frames, bins = 1 + samples // spec.hop, spec.n_fft // 2 + 1
    return dict(B=batch, Tf=frames, F=bins, tokens=batch * frames * bins, D=spec.emb_dim,
                A=spec.attention_dim or spec.emb_dim, H=spec.n_heads, L=spec.n_layers,
                ffn=sum(spec.ffn_hidden_dim), samples=samples,
                audio=batch * spec.audio_channels * spec.n_sources * samples)


def plan_tflocoformer(spec, train, samples: int, backend: str, attention: str) -> MemoryPlan:
    """Peak memory of a TF-Locoformer step. Each block runs a frequency path (sequences of
    F bins, one per frame) and a time path (sequences of frames, one per bin); unfused
    attention keeps B x frames x H x F x F scores in the first and B x F x H x frames x
    frames in the second -- seed 003's 80.89 GiB allocation."""
    from shared.specs.tflocoformer import tflocoformer_param_counts

    n = tflocoformer_param_counts(spec)["total"]
    coef = TFLOCO_COEFFICIENTS[backend]
    c = coef["bytes"] or _bytes(train.precision)
    s = _tfloco_shapes(spec, train.batch_size, samples)
    unfused = backend == "mlx" or attention == "math"
    chunk = spec.attention_chunk
    freq_q = min(chunk, s["F"]) if chunk else s["F"]
    time_q = min(chunk, s["Tf"]) if chunk else s["Tf"]
    per_path = s["tokens"] * (coef["hidden"] * s["D"] + coef["ffn"] * s["ffn"] + coef["attn"] * s["A"]) * c
    # Chunked attention recomputes each chunk in the backward pass: no scores are kept,
    # only one chunk's exist at a time.
    all_scores = s["B"] * s["H"] * s["Tf"] * s["F"] * (s["F"] + s["Tf"]) * c
    chunk_scores = s["B"] * s["H"] * max(s["Tf"] * freq_q * s["F"], s["F"] * time_q * s["Tf"]) * c
    kept_scores = 0 if not unfused else (0 if chunk else coef["scores"] * all_scores)
    per_block = 2 * per_path + kept_scores
    transient = (chunk_scores if chunk else 0) if unfused else 0
    if train.gradient_checkpointing:
        blocks = Term("activations: blocks", s["L"] * s["tokens"] * s["D"] * 4
                      + coef["recompute"] * per_block + transient,
                      f"{s['L']} block inputs + 1 block recomputed ({per_block / GB:.2f} GB)")
    else:
        blocks = Term("activations: blocks", (s["L"] + coef["working_set"]) * per_block + transient,
                      f"{s['L']} blocks x {per_block / GB:.2f} GB + backward working set "
                      f"({'unfused attention' if unfused else attention}"
                      f"{', chunked' if chunk else ''})")
    terms = [
        Term("weights", 4 * n, f"{n:,} parameters, float32"),
        Term("optimizer state", 8 * n, "AdamW, float32"),
        Term("gradients", 4 * n, "float32"),
    ]
    if train.gradient_accumulation_steps > 1 and backend == "mlx":
        terms.append(Term("accumulation buffer", 4 * n, "running sum of micro-batch gradients"))
    if c == 2:
        terms.append(Term("low-precision weight copies", 2 * n, "bf16 casts"))
    terms += [
        Term("activations: encoder, decoder", 4 * s["tokens"] * (2 * s["D"] + 4 * spec.audio_channels
             * (1 + spec.n_sources)) * (c / 4 + 0.5), "STFT, Conv2d + GroupNorm in, ConvTranspose2d out"),
        blocks,
        Term("activations: STFT loss and iSTFT", coef["audio"] * 4 * s["audio"],
             "multi-resolution STFTs of estimates and references, iSTFT"),
        Term("framework overhead", 0.5 * GB if backend == "torch" else 0.0,
             "CUDA context" if backend == "torch" else "only live arrays count"),
    ]
    # The single largest tensor: an attention score block, else the encoder output.
    candidates = [Allocation("encoder output", (s["B"], s["D"], s["Tf"], s["F"]), s["tokens"] * s["D"] * c)]
    if unfused:
        candidates += [
            Allocation("frequency-path attention scores", (s["B"] * s["Tf"], s["H"], freq_q, s["F"]),
                       s["B"] * s["Tf"] * s["H"] * freq_q * s["F"] * c),
            Allocation("time-path attention scores", (s["B"] * s["F"], s["H"], time_q, s["Tf"]),
                       s["B"] * s["F"] * s["H"] * time_q * s["Tf"] * c)]
    return MemoryPlan(backend, terms, max(candidates, key=lambda a: a.bytes),
                      calibrated=backend == "mlx")


# ----------------------------------------------------------------------------- dispatch
def plan(config, backend: str, attention: str | None = None) -> MemoryPlan:
    """The predicted memory of one training step of `config` on `backend`."""
    if config.family == "tflocoformer":
        if backend not in ("mlx", "torch"):
            raise ValueError(f"unknown backend {backend!r}; expected mlx or torch")
        device_type = "cpu" if config.hardware.device == "cpu" else "cuda"
        default = "math" if device_type == "cpu" else "flash"
        return plan_tflocoformer(config.model, config.train, config.data.segment_samples, backend,
                                 attention or default)
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

    def add(change, overrides, keeps=True, attention_path=None):
        peak = plan(with_overrides(config, overrides), backend, attention_path or attention).peak_bytes
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
    if config.family == "lm":
        seq = config.seq_length
        for shorter in (seq // 2, seq // 4):
            if shorter >= 64:
                add(f"sequence {seq} -> {shorter} tokens (keeps tokens/step only with batch x "
                    f"{seq // shorter})", {"train.seq_length": shorter}, keeps=False)
    else:
        seconds = config.data.segment_seconds
        for shorter in (seconds / 2, seconds / 3):
            add(f"segment {seconds:g} s -> {shorter:g} s", {"data.segment_seconds": shorter}, keeps=False)
        if not config.model.attention_chunk:
            chunked = plan(with_overrides(config, {"model.attention_chunk": 256}), backend, attention)
            add(f"chunked attention (model.attention_chunk=256): largest allocation "
                f"{chunked.largest.bytes / GB:.1f} GB", {"model.attention_chunk": 256})
        if config.model.n_fft > 1024:
            add(f"STFT n_fft {config.model.n_fft} -> {config.model.n_fft // 2}, hop "
                f"{config.model.hop} -> {config.model.hop // 2}",
                {"model.n_fft": config.model.n_fft // 2, "model.hop": config.model.hop // 2}, keeps=False)
    layers_key = "num_layers" if config.family == "lm" else "n_layers"
    layers = getattr(config.model, layers_key)
    if layers > 2:
        add(f"model: {layers} -> {layers * 3 // 4} layers (a smaller model)",
            {f"model.{layers_key}": layers * 3 // 4}, keeps=False)
    return sorted(out, key=lambda s: (not s.keeps_effective_batch, s.peak_bytes))


def throughput_proxy(config) -> float:
    """Relative training speed of a config: devices run near full speed once a micro-batch
    holds ~8K tokens (LM) or ~3 s of audio, activation checkpointing recomputes the
    forward (~25 % slower) and chunked attention loops over query blocks (~10 %)."""
    slowdown = 0.75 if config.train.gradient_checkpointing else 1.0
    if config.family != "lm":
        seconds = config.train.batch_size * config.data.segment_seconds
        if getattr(config.model, "attention_chunk", 0):
            slowdown *= 0.9
        return min(1.0, seconds / 3.0) * slowdown
    tokens = config.train.batch_size * config.seq_length
    return min(1.0, tokens / 8192) * slowdown


def _escalations(config) -> list[dict]:
    """Changes beyond batch, checkpointing and precision, mildest first. Chunked attention
    computes the same function (only memory and speed change); a shorter training
    segment keeps the model but shows it less context per example, so it comes last."""
    if config.family == "lm":
        return [{}]
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
    pays, bf16 only if fp32 cannot fit; then, for separation models, chunked attention
    and finally shorter segments (see _escalations). Returns (config, plan), or (None,
    plan of the smallest possible setting) when nothing fits."""
    budget = budget_bytes(profile)
    tc = config.train
    effective = tc.batch_size * tc.gradient_accumulation_steps
    precisions = [tc.precision] + (["bf16"] if tc.precision == "fp32" else [])
    escalations = _escalations(config)
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
