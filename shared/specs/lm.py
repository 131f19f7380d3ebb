"""The LLaMA-style language model, as data: hyperparameters, manifest, counts, init.

Both `mlx_models/lm.py` and `torch_models/lm.py` build exactly the parameters listed by
`lm_manifest`, under the same names.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared import ranges as R
from shared.errors import SpecError
from shared.specs.base import EMBEDDING, LINEAR, NORM, ParamSpec, count_params


@dataclass(frozen=True)
class LMSpec:
    vocab_size: int = 32000
    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    num_kv_heads: int = 4
    intermediate_size: int = 4096
    max_seq_length: int = 2048
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    dropout: float = 0.0
    tie_embeddings: bool = False

    RANGES = {  # shared/ranges.py; divisibility rules in __post_init__
        # vocab >= 3: a SentencePiece model holds <unk>, <s> and </s> at least
        "vocab_size": R.at_least(3, R.MAX_VOCAB), "hidden_size": R.at_least(1, R.MAX_WIDTH),
        "num_layers": R.at_least(1, R.MAX_LAYERS), "num_heads": R.at_least(1, R.MAX_HEADS),
        "num_kv_heads": R.at_least(1, R.MAX_HEADS),
        "intermediate_size": R.at_least(1, R.MAX_FFN),
        "max_seq_length": R.at_least(1, R.MAX_SEQ), "rope_theta": R.positive(1e12),
        "norm_eps": R.EPS, "dropout": R.FRACTION,
    }

    def __post_init__(self):
        positive = ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                    "intermediate_size", "max_seq_length")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise SpecError(f"model.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise SpecError(f"model.hidden_size ({self.hidden_size}) must be divisible by "
                            f"model.num_heads ({self.num_heads})")
        if self.num_heads % self.num_kv_heads:
            raise SpecError(f"model.num_heads ({self.num_heads}) must be divisible by "
                            f"model.num_kv_heads ({self.num_kv_heads}) for grouped-query "
                            f"attention")
        if self.head_dim % 2:
            raise SpecError(f"head dim hidden_size/num_heads = {self.head_dim} must be even "
                            f"for RoPE; change model.hidden_size or model.num_heads")
        if not self.rope_theta > 0:
            raise SpecError(f"model.rope_theta must be > 0, got {self.rope_theta!r}")
        if not self.norm_eps > 0:
            raise SpecError(f"model.norm_eps must be > 0, got {self.norm_eps!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise SpecError(f"model.dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def lm_manifest(spec: LMSpec) -> list[ParamSpec]:
    D, hd = spec.hidden_size, spec.head_dim
    q_dim, kv_dim = spec.num_heads * hd, spec.num_kv_heads * hd
    params = [ParamSpec("embed_tokens.weight", (spec.vocab_size, D), EMBEDDING)]
    for i in range(spec.num_layers):
        p = f"layers.{i}."
        params += [
            ParamSpec(p + "attention_norm.weight", (D,), NORM),
            ParamSpec(p + "attention.q_proj.weight", (q_dim, D), LINEAR),
            ParamSpec(p + "attention.k_proj.weight", (kv_dim, D), LINEAR),
            ParamSpec(p + "attention.v_proj.weight", (kv_dim, D), LINEAR),
            ParamSpec(p + "attention.o_proj.weight", (D, q_dim), LINEAR),
            ParamSpec(p + "mlp_norm.weight", (D,), NORM),
            ParamSpec(p + "mlp.gate_proj.weight", (spec.intermediate_size, D), LINEAR),
            ParamSpec(p + "mlp.up_proj.weight", (spec.intermediate_size, D), LINEAR),
            ParamSpec(p + "mlp.down_proj.weight", (D, spec.intermediate_size), LINEAR),
        ]
    params.append(ParamSpec("norm.weight", (D,), NORM))
    if not spec.tie_embeddings:
        params.append(ParamSpec("lm_head.weight", (spec.vocab_size, D), LINEAR))
    return params


def lm_param_counts(spec: LMSpec) -> dict[str, int]:
    """total: every stored parameter; non_embedding: total minus the input embedding
    table and the output head (the convention under which LLaMA sizes are usually
    quoted); matmul: parameters that multiply activations (the output head counts once,
    tied or not) -- the N in the 6N FLOPs rule."""
    manifest = lm_manifest(spec)
    total = count_params(manifest)
    table = spec.vocab_size * spec.hidden_size
    head = 0 if spec.tie_embeddings else table
    norms = sum(p.numel for p in manifest if p.kind == NORM)
    return {"total": total,
            "non_embedding": total - table - head,
            "matmul": total - table - head - norms + table}


def lm_train_flops_per_token(spec: LMSpec, seq_len: int | None = None) -> int:
    """Training FLOPs per token: 6N for the weight matmuls (forward 2N, backward 4N) plus
    the attention scores and weighted sum, 12 * layers * heads * head_dim * seq_len
    (PaLM appendix B; counts the full T x T product, as nanoGPT's MFU does)."""
    T = spec.max_seq_length if seq_len is None else seq_len
    n = lm_param_counts(spec)["matmul"]
    return 6 * n + 12 * spec.num_layers * spec.num_heads * spec.head_dim * T


def lm_init_weights(spec: LMSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Initial weights in canonical layout, float32. Built once here so both backends
    start from identical values (their own initialisers differ).

    Normal(0, 0.02) for matrices, with the two residual-stream output projections scaled
    by 1/sqrt(2 * num_layers) (GPT-2), ones for norm scales."""
    rng = np.random.default_rng(seed)
    residual_std = 0.02 / np.sqrt(2 * spec.num_layers)
    weights = {}
    for p in lm_manifest(spec):
        if p.kind == NORM:
            weights[p.name] = np.ones(p.shape, np.float32)
        else:
            std = residual_std if p.name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
            weights[p.name] = (rng.standard_normal(p.shape, np.float32) * std).astype(np.float32)
    return weights
