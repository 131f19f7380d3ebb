"""LLaMA-style decoder in MLX: RMSNorm, RoPE, grouped-query attention, SwiGLU.

Mirrors torch_models/lm.py line for line: same classes, same attribute names, so both
parameter trees flatten to the names in shared.specs.lm.lm_manifest.
"""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mlx_models.recompute import Dropout, run_layer
from shared.specs.lm import LMSpec


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = mx.ones((dim,))
        self.eps = eps  # always explicit: MLX and torch defaults differ

    def __call__(self, x):
        return mx.fast.rms_norm(x, self.weight, self.eps)


class KVCache:
    """Keys and values of one layer, in buffers that grow a block at a time so that
    decoding one token does not copy the whole history."""
    block = 256

    def __init__(self):
        self.keys = self.values = None
        self.offset = 0

    def update(self, k, v):
        B, n_kv, T, hd = k.shape
        if self.keys is None or self.offset + T > self.keys.shape[2]:
            grow = ((T + self.block - 1) // self.block) * self.block
            new_k = mx.zeros((B, n_kv, grow, hd), k.dtype)
            new_v = mx.zeros((B, n_kv, grow, hd), v.dtype)
            if self.keys is None:
                self.keys, self.values = new_k, new_v
            else:
                self.keys = mx.concatenate([self.keys[..., :self.offset, :], new_k], axis=2)
                self.values = mx.concatenate([self.values[..., :self.offset, :], new_v], axis=2)
        self.keys[..., self.offset:self.offset + T, :] = k
        self.values[..., self.offset:self.offset + T, :] = v
        self.offset += T
        return self.keys[..., :self.offset, :], self.values[..., :self.offset, :]


class Attention(nn.Module):
    def __init__(self, spec: LMSpec):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = spec.num_heads, spec.num_kv_heads, spec.head_dim
        D = spec.hidden_size
        self.q_proj = nn.Linear(D, spec.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(D, spec.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(D, spec.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(spec.num_heads * self.head_dim, D, bias=False)
        # traditional=False is the rotate-half convention of Hugging Face and torch_models.
        self.rope = nn.RoPE(self.head_dim, traditional=False, base=spec.rope_theta)

    def __call__(self, x, cache: KVCache | None = None):
        B, T, _ = x.shape
        q = self.q_proj(x).reshape(B, T, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)
        k = self.k_proj(x).reshape(B, T, self.num_kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(B, T, self.num_kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        offset = cache.offset if cache is not None else 0
        q, k = self.rope(q, offset=offset), self.rope(k, offset=offset)
        if cache is not None:
            k, v = cache.update(k, v)
        # MLX's "causal" mask is aligned to the lower right, which is what a query block
        # appended after `offset` cached positions needs. Fewer kv heads are broadcast (GQA).
        mask = "causal" if T > 1 else None
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.head_dim ** -0.5, mask=mask)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, spec: LMSpec):
        super().__init__()
        self.gate_proj = nn.Linear(spec.hidden_size, spec.intermediate_size, bias=False)
        self.up_proj = nn.Linear(spec.hidden_size, spec.intermediate_size, bias=False)
        self.down_proj = nn.Linear(spec.intermediate_size, spec.hidden_size, bias=False)

    def __call__(self, x):
        return self.down_proj(nn.silu(self.gate_proj(x)) * self.up_proj(x))


class TransformerBlock(nn.Module):
    def __init__(self, spec: LMSpec):
        super().__init__()
        self.attention_norm = RMSNorm(spec.hidden_size, spec.norm_eps)
        self.attention = Attention(spec)
        self.mlp_norm = RMSNorm(spec.hidden_size, spec.norm_eps)
        self.mlp = MLP(spec)
        self.dropout = Dropout(spec.dropout)

    def __call__(self, x, cache: KVCache | None = None):
        x = x + self.dropout(self.attention(self.attention_norm(x), cache))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


class LanguageModel(nn.Module):
    def __init__(self, spec: LMSpec):
        super().__init__()
        self.spec = spec
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = [TransformerBlock(spec) for _ in range(spec.num_layers)]
        self.norm = RMSNorm(spec.hidden_size, spec.norm_eps)
        if not spec.tie_embeddings:
            self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        # Set by the trainer: recompute each block in the backward pass instead of
        # storing its activations.
        self.checkpoint_activations = False

    def __call__(self, tokens, cache: list[KVCache] | None = None):
        h = self.embed_tokens(tokens)
        for i, layer in enumerate(self.layers):
            if cache is not None:
                h = layer(h, cache[i])
            else:
                h = run_layer(layer, h, checkpoint=self.checkpoint_activations)
        h = self.norm(h)
        if self.spec.tie_embeddings:
            return self.embed_tokens.as_linear(h)
        return self.lm_head(h)

    def make_cache(self) -> list[KVCache]:
        return [KVCache() for _ in self.layers]


def loss(model: LanguageModel, batch):
    """Mean next-token cross-entropy of a (B, T+1) token batch."""
    logits = model(batch[:, :-1]).astype(mx.float32)
    return cross_entropy(logits, batch[:, 1:])


def cross_entropy(logits, targets):
    """Mean of logsumexp(logits) - logits[target]: nn.losses.cross_entropy's math, with the
    log-sum-exp written out so that the backward pass reuses the forward's exp (the
    gradient of exp is its output) instead of recomputing a softmax. exp is the costliest
    op of MLX's CPU backend on x86 (~13 ns/element); this halves how often it runs over
    the (B, T, vocab) logits, at the same peak memory. The max is a constant shift: it
    cancels in the math, so no gradient flows through it."""
    target = mx.take_along_axis(logits, targets[..., None], axis=-1).squeeze(-1)
    shift = mx.stop_gradient(logits.max(axis=-1))
    lse = mx.log(mx.exp(logits - shift[..., None]).sum(axis=-1)) + shift
    return (lse - target).mean()
