"""LLaMA-style decoder in PyTorch: RMSNorm, RoPE, grouped-query attention, SwiGLU.

Mirrors mlx_models/lm.py line for line: same classes, same attribute names, so both
parameter trees flatten to the names in shared.specs.lm.lm_manifest.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from shared.specs.lm import LMSpec
from torch_models import rope


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps  # always explicit: torch's default is the dtype's eps

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


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
            new_k = k.new_zeros((B, n_kv, grow, hd))
            new_v = v.new_zeros((B, n_kv, grow, hd))
            if self.keys is None:
                self.keys, self.values = new_k, new_v
            else:
                self.keys = torch.cat([self.keys[..., :self.offset, :], new_k], dim=2)
                self.values = torch.cat([self.values[..., :self.offset, :], new_v], dim=2)
        self.keys[..., self.offset:self.offset + T, :] = k
        self.values[..., self.offset:self.offset + T, :] = v
        self.offset += T
        return self.keys[..., :self.offset, :], self.values[..., :self.offset, :]


class RoPE(nn.Module):
    """Rotary embedding, rotate-half convention (Hugging Face; MLX traditional=False)."""

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        self.head_dim, self.base = head_dim, base

    def forward(self, x, offset: int = 0):
        # Cached per (length, offset, dtype, device): every layer, q and k share one table.
        cos, sin = rope.cos_sin(self.head_dim, self.base, x.shape[-2], offset, x.dtype, x.device)
        x1, x2 = x[..., : self.head_dim // 2], x[..., self.head_dim // 2:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, spec: LMSpec):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = spec.num_heads, spec.num_kv_heads, spec.head_dim
        D = spec.hidden_size
        self.q_proj = nn.Linear(D, spec.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(D, spec.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(D, spec.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(spec.num_heads * self.head_dim, D, bias=False)
        self.rope = RoPE(self.head_dim, spec.rope_theta)

    def forward(self, x, cache: KVCache | None = None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        offset = cache.offset if cache is not None else 0
        q, k = self.rope(q, offset), self.rope(k, offset)
        if cache is not None:
            k, v = cache.update(k, v)
        # torch's is_causal is aligned to the upper left; it is right only when no cached
        # positions precede the queries. A block after cached positions needs the
        # lower-right mask spelled out.
        S = k.shape[2]
        if T == 1:
            mask, causal = None, False
        elif S == T:
            mask, causal = None, True
        else:
            mask, causal = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T), False
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                             scale=self.head_dim ** -0.5, enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, spec: LMSpec):
        super().__init__()
        self.gate_proj = nn.Linear(spec.hidden_size, spec.intermediate_size, bias=False)
        self.up_proj = nn.Linear(spec.hidden_size, spec.intermediate_size, bias=False)
        self.down_proj = nn.Linear(spec.intermediate_size, spec.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class TransformerBlock(nn.Module):
    def __init__(self, spec: LMSpec):
        super().__init__()
        self.attention_norm = RMSNorm(spec.hidden_size, spec.norm_eps)
        self.attention = Attention(spec)
        self.mlp_norm = RMSNorm(spec.hidden_size, spec.norm_eps)
        self.mlp = MLP(spec)
        self.dropout = nn.Dropout(spec.dropout)

    def forward(self, x, cache: KVCache | None = None):
        x = x + self.dropout(self.attention(self.attention_norm(x), cache))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


class LanguageModel(nn.Module):
    def __init__(self, spec: LMSpec):
        super().__init__()
        self.spec = spec
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList(TransformerBlock(spec) for _ in range(spec.num_layers))
        self.norm = RMSNorm(spec.hidden_size, spec.norm_eps)
        if not spec.tie_embeddings:
            self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        # Set by the trainer: recompute each block in the backward pass instead of
        # storing its activations.
        self.checkpoint_activations = False

    def forward(self, tokens, cache: list[KVCache] | None = None):
        h = self.embed_tokens(tokens)
        for i, layer in enumerate(self.layers):
            if self.checkpoint_activations and cache is None and self.training:
                h = checkpoint(layer, h, use_reentrant=False)
            else:
                h = layer(h, cache[i] if cache is not None else None)
        h = self.norm(h)
        if self.spec.tie_embeddings:
            return F.linear(h, self.embed_tokens.weight)
        return self.lm_head(h)

    def make_cache(self) -> list[KVCache]:
        return [KVCache() for _ in self.layers]


def loss(model: LanguageModel, batch):
    """Mean next-token cross-entropy of a (B, T+1) token batch."""
    logits = model(batch[:, :-1])
    return F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten().long())
