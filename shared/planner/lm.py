"""The LM family's memory model: what a LLaMA-style decoder keeps for its backward pass,
per backend (docs/memory.md)."""
from __future__ import annotations

from shared.planner.core import (GB, Allocation, MemoryModel, MemoryPlan, Term, dtype_bytes,
                                 default_attention, overhead_term)
from shared.specs.lm import LMSpec, lm_param_counts

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
    c = dtype_bytes(train.precision)
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
        overhead_term("torch", device_type),
    ]
    return MemoryPlan("torch", terms, _lm_largest(spec, train.batch_size, seq, c, unfused),
                      calibrated=False)


def plan_lm(config, backend: str, attention: str | None, device_type: str) -> MemoryPlan:
    if backend == "mlx":
        return plan_lm_mlx(config.model, config.train, config.seq_length)
    return plan_lm_torch(config.model, config.train, config.seq_length,
                         attention or default_attention(device_type), device_type)


def shorter_sequences(config, backend: str, attention: str | None) -> list:
    seq = config.seq_length
    return [(f"sequence {seq} -> {shorter} tokens (keeps tokens/step only with batch x "
             f"{seq // shorter})", {"train.seq_length": shorter}, False)
            for shorter in (seq // 2, seq // 4) if shorter >= 64]


LM_MEMORY = MemoryModel(plan=plan_lm, depth_key="num_layers", shorter_hint="a shorter train.seq_length",
                        full_speed_units=8192, suggestions=shorter_sequences)
