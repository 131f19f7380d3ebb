"""EchoStream streaming speech-to-unit translation in MLX: an Emformer speech encoder and
four heads (ASR CTC, ST CTC, autoregressive MT decoder, CTC unit decoder).

Mirrors torch_models/echostream.py: same classes, same attribute names, so both
parameter trees flatten to the names in shared.specs.echostream.echostream_manifest.
The architecture, the token ids and the attention masks are described (and the masks
built, in numpy) in shared/specs/echostream.py. Every mask here is an explicit additive
array: MLX's "causal" SDPA mask is aligned differently from torch's (docs/architecture.md, "Two backends, mirrored").

Streaming: `init_stream()`, then `stream_encode(chunk, state)` with any number of new
feature frames, then `stream_finish(state)`; the frames they return, concatenated, are
the parallel encoder's output for the whole utterance. Call `model.eval()` first.
"""
from __future__ import annotations

import math
from dataclasses import replace

import mlx.core as mx
import numpy as np
import mlx.nn as nn

from mlx_models.ctc import ctc_losses
from mlx_models.recompute import Dropout, run_layer
from shared.specs.echostream import (BLANK, BOS, EOS, MEMORY_CLAMP, NEG, PAD, EchoStreamSpec,
                                     causal_mask, emformer_layout, emformer_stream_mask,
                                     encoder_length, limits_to_mask, mt_memory_limits,
                                     sinusoidal_positions, unit_causal_mask)


def padding_mask(lengths, n: int, dtype):
    """Additive (B, 1, 1, n) mask hiding keys at positions >= length."""
    valid = mx.arange(n)[None, :] < lengths[:, None]
    return mx.where(valid, 0.0, NEG).astype(dtype)[:, None, None, :]


def keep_last(x, n: int):
    """The last n frames of x (B, T, D); none for n = 0 (x[:, -0:] would keep all)."""
    return x[:, max(x.shape[1] - n, 0):]


class MultiHeadAttention(nn.Module):
    """Attention of `queries` (B, Q, dim) over `keys` (B, K, kv_dim), additive mask
    broadcastable to (B, heads, Q, K)."""

    def __init__(self, dim: int, kv_dim: int, n_heads: int):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(kv_dim, dim, bias=False)  # softmax ignores a key bias
        self.v_proj = nn.Linear(kv_dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def __call__(self, queries, keys, mask):
        return self.attend(self.q_proj(queries), self.k_proj(keys), self.v_proj(keys), mask)

    def attend(self, q, k, v, mask):
        """Attention from projected queries (B, Q, dim), keys and values (B, K, dim)."""
        B, Q, _ = q.shape

        def heads(x):
            return x.reshape(B, x.shape[1], self.n_heads, self.head_dim).transpose(0, 2, 1, 3)
        out = mx.fast.scaled_dot_product_attention(heads(q), heads(k), heads(v),
                                                   scale=self.head_dim ** -0.5,
                                                   mask=mask.astype(q.dtype))
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(B, Q, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = Dropout(dropout)

    def __call__(self, x):
        return self.dropout(self.fc2(self.dropout(nn.relu(self.fc1(x)))))


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer: self-attention, optional cross-attention, FFN."""

    def __init__(self, dim: int, n_heads: int, ffn_dim: int, spec: EchoStreamSpec, cross_dim: int = 0):
        super().__init__()
        eps = spec.layer_norm_eps
        self.self_attn_norm = nn.LayerNorm(dim, eps=eps)
        self.self_attn = MultiHeadAttention(dim, dim, n_heads)
        if cross_dim:
            self.cross_attn_norm = nn.LayerNorm(dim, eps=eps)
            self.cross_attn = MultiHeadAttention(dim, cross_dim, n_heads)
        self.ffn_norm = nn.LayerNorm(dim, eps=eps)
        self.ffn = FeedForward(dim, ffn_dim, spec.dropout)
        self.dropout = Dropout(spec.dropout)

    def __call__(self, x, mask, memory=None, memory_mask=None):
        h = self.self_attn_norm(x)
        x = x + self.dropout(self.self_attn(h, h, mask))
        if memory is not None:
            x = x + self.dropout(self.cross_attn(self.cross_attn_norm(x), memory, memory_mask))
        return x + self.ffn(self.ffn_norm(x))


# ------------------------------------------------------------------------ encoder
class ConvSubsampler(nn.Module):
    """(B, T, n_mels) -> (B, T', D): two Conv1d(kernel k, stride 2) + GLU, no padding, so
    encoder frame j depends on feature frames 4j .. 4j + 3k - 3 only."""

    def __init__(self, spec: EchoStreamSpec):
        super().__init__()
        C, k = spec.subsample_channels, spec.subsample_kernel
        self.conv1 = nn.Conv1d(spec.n_mels, C, k, stride=2)
        self.conv2 = nn.Conv1d(C // 2, 2 * spec.embed_dim, k, stride=2)

    def __call__(self, features):
        return glu(windowed_conv(glu(windowed_conv(features, self.conv1)), self.conv2))


def windowed_conv(x, conv: nn.Conv1d, stride: int = 2):
    """conv(x) for a Conv1d without padding, as one matmul over the stacked windows
    (B, n, K * I) @ weight (O, K * I)^T. Same values as conv(x); but on the CPU MLX's
    strided-conv gradient with respect to the input is slow: this subsampler's backward
    took 2.1 s for 2 x 10 s of speech, 0.17 s as a matmul."""
    O, K, I = conv.weight.shape
    n = (x.shape[1] - K) // stride + 1
    windows = mx.concatenate([x[:, k:k + stride * (n - 1) + 1:stride] for k in range(K)], axis=-1)
    return windows @ conv.weight.reshape(O, K * I).T + conv.bias


def glu(x):
    a, b = mx.split(x, 2, axis=-1)
    return a * mx.sigmoid(b)


def subsampled_lengths(lengths, kernel: int):
    """encoder_length() on an array of feature lengths."""
    for _ in range(2):
        lengths = mx.maximum((lengths - kernel) // 2 + 1, 0)
    return lengths


class EmformerLayer(nn.Module):
    """One Emformer layer (torchaudio's design): LayerNorm -> attention of [right context,
    utterance, summaries] over [memories, right context, (left context,) utterance] ->
    residual -> LN-FFN -> residual -> LayerNorm. The summaries' attention outputs, clamped,
    are the next layer's memories."""

    def __init__(self, spec: EchoStreamSpec):
        super().__init__()
        D, eps = spec.embed_dim, spec.layer_norm_eps
        self.use_memory = spec.use_memory
        self.norm_in = nn.LayerNorm(D, eps=eps)
        self.attention = MultiHeadAttention(D, D, spec.encoder_heads)
        self.ffn_norm = nn.LayerNorm(D, eps=eps)
        self.ffn = FeedForward(D, spec.encoder_ffn_dim, spec.dropout)
        self.norm_out = nn.LayerNorm(D, eps=eps)
        self.dropout = Dropout(spec.dropout)

    def __call__(self, utterance, right_context, memory, mask, n_segments: int, left=None):
        """utterance (B, U, D): n_segments equal segments; right_context (B, R', D);
        memory (B, M', D); left (B, L', D): the normalised left-context frames when
        streaming (in training they are part of the utterance). Returns the new
        utterance, right context and memory, and the normalised utterance (the next
        segment's left context)."""
        B, U, D = utterance.shape
        n_right = right_context.shape[1]
        normed = self.norm_in(mx.concatenate([right_context, utterance], axis=1))
        normed_right, normed_utterance = normed[:, :n_right], normed[:, n_right:]
        queries = [normed_right, normed_utterance]
        if self.use_memory:
            queries.append(normed_utterance.reshape(B, n_segments, U // n_segments, D).mean(axis=2))
        keys = [memory, normed_right] + ([left] if left is not None else []) + [normed_utterance]
        out = self.attention(mx.concatenate(queries, axis=1), mx.concatenate(keys, axis=1), mask)
        n = n_right + U
        x = mx.concatenate([right_context, utterance], axis=1) + self.dropout(out[:, :n])
        x = x + self.ffn(self.ffn_norm(x))
        x = self.norm_out(x)
        new_memory = mx.clip(out[:, n:], -MEMORY_CLAMP, MEMORY_CLAMP)
        return x[:, n_right:], x[:, :n_right], new_memory, normed_utterance


class EmformerEncoder(nn.Module):
    def __init__(self, spec: EchoStreamSpec):
        super().__init__()
        self.spec = spec
        self.subsample = ConvSubsampler(spec)
        self.layers = [EmformerLayer(spec) for _ in range(spec.encoder_layers)]

    def __call__(self, features, feature_lengths, checkpoint_layers: bool = False,
                 segment_length: int | None = None):
        """Parallel (training) forward: (B, T, n_mels), (B,) -> (B, T', D), (B,).
        checkpoint_layers: keep only each Emformer layer's inputs for the backward pass."""
        lengths = subsampled_lengths(feature_lengths, self.spec.subsample_kernel)
        return self.encode_frames(self.subsample(features), lengths, checkpoint_layers,
                                  segment_length), lengths

    def encode_frames(self, x, lengths, checkpoint_layers: bool = False, segment_length: int | None = None):
        """The Emformer layers, all segments at once, on subsampled frames (B, T', D)
        of which the first `lengths` (B,) are real. `segment_length` overrides the
        spec's (multi-chunk training; 0: the whole utterance is one segment)."""
        spec = self.spec
        if segment_length is not None:
            spec = replace(spec, segment_length=segment_length or max(x.shape[1], 1))
        B, n_frames, D = x.shape
        if n_frames == 0:
            return x
        S, R = spec.segment_length, spec.right_context
        layout = emformer_layout(n_frames, spec)
        N = layout.n_segments
        x = mx.pad(x, [(0, 0), (0, N * S + R - n_frames), (0, 0)])
        utterance = x[:, :N * S]
        right_context = x[:, mx.array(layout.right_context_frame)]
        if spec.use_memory:
            # Layer 0's memories: the mean of each segment's input frames (but the last).
            memory = utterance[:, :(N - 1) * S].reshape(B, N - 1, S, D).mean(axis=2)
        else:
            memory = mx.zeros((B, 0, D), x.dtype)
        key_valid = mx.array(layout.key_frame)[None, :] < lengths[:, None]             # (B, K)
        allowed = mx.array(layout.allowed)[None] & key_valid[:, None, :]               # (B, Q, K)
        mask = mx.where(allowed, 0.0, NEG).astype(x.dtype)[:, None]
        for layer in self.layers:
            utterance, right_context, memory = run_layer(
                layer, utterance, right_context, memory, mask, checkpoint=checkpoint_layers,
                call=lambda *inputs, layer=layer: layer(*inputs, N)[:3])
            memory = memory[:, :N - 1]
        return utterance[:, :n_frames]

    # -- streaming -------------------------------------------------------------------
    def init_stream(self, segment_length: int | None = None) -> dict:
        """segment_length: encoder frames per streamed segment (None: the spec's; 0: the
        whole utterance, encoded at stream_finish)."""
        D, n = self.spec.embed_dim, len(self.layers)
        empty = mx.zeros((1, 0, D))
        return {"features": mx.zeros((1, 0, self.spec.n_mels)),  # not yet subsampled
                "frames": empty,                                  # not yet encoded
                "memory": [empty] * n,                            # per layer, <= max_memory_size
                "left": [empty] * n,                              # per layer, <= left_context
                "segment_length": self.spec.segment_length if segment_length is None else segment_length}

    def stream_encode(self, chunk, state: dict):
        spec = self.spec
        S, R = state["segment_length"] or math.inf, spec.right_context   # whole utterance: at the end
        features = mx.concatenate([state["features"], mx.array(chunk).astype(mx.float32)], axis=1)
        n_new = encoder_length(features.shape[1], spec)
        frames = state["frames"]
        if n_new:
            # Encoder frame j reads feature frames 4j .. 4j + field - 1: convolve just the
            # frames the new outputs need, keep those the next outputs will.
            used = 4 * (n_new - 1) + spec.subsample_receptive_field
            frames = mx.concatenate([frames, self.subsample(features[:, :used])], axis=1)
            features = features[:, 4 * n_new:]
        state = dict(state, features=features)
        outputs = []
        while frames.shape[1] >= S + R:
            out, state = self._stream_segment(frames[:, :S], frames[:, S:S + R], state)
            outputs.append(out)
            frames = frames[:, S:]
        return self._emit(outputs, dict(state, frames=frames))

    def stream_finish(self, state: dict):
        """Encode what is left once the utterance has ended (right contexts cut short)."""
        frames, outputs = state["frames"], []
        S, R = state["segment_length"] or max(frames.shape[1], 1), self.spec.right_context
        while frames.shape[1] > 0:
            out, state = self._stream_segment(frames[:, :S], frames[:, S:S + R], state)
            outputs.append(out)
            frames = frames[:, S:]
        return self._emit(outputs, dict(state, frames=frames))

    def _emit(self, outputs, state):
        out = mx.concatenate(outputs, axis=1) if outputs else mx.zeros((1, 0, self.spec.embed_dim))
        # Evaluate now: a lazy state would carry the whole utterance's graph along.
        mx.eval(out, state)
        return out, state

    def _stream_segment(self, utterance, right_context, state):
        """One segment through every layer with its memory bank and left context."""
        spec = self.spec
        memory_in = utterance.mean(axis=1, keepdims=True)  # layer 0's memory for this segment
        banks, lefts = [], []
        for layer, bank, left in zip(self.layers, state["memory"], state["left"]):
            mask = mx.array(emformer_stream_mask(right_context.shape[1], utterance.shape[1],
                                                 bank.shape[1], left.shape[1], spec.use_memory))
            utterance, right_context, memory_out, normed = layer(utterance, right_context, bank,
                                                                 mask, 1, left=left)
            if spec.use_memory:
                bank = keep_last(mx.concatenate([bank, memory_in], axis=1), spec.max_memory_size)
            banks.append(bank)
            lefts.append(keep_last(mx.concatenate([left, normed], axis=1), spec.left_context))
            memory_in = memory_out
        return utterance, dict(state, memory=banks, left=lefts)


# -------------------------------------------------------------------------- heads
class STCTCHead(nn.Module):
    """Causal transformer layers over the encoder output, then a projection to the
    target vocabulary (causal, so the head can stream with the encoder)."""

    def __init__(self, spec: EchoStreamSpec):
        super().__init__()
        D = spec.embed_dim
        self.layers = [TransformerLayer(D, spec.encoder_heads, spec.encoder_ffn_dim, spec)
                       for _ in range(spec.st_ctc_layers)]
        self.norm = nn.LayerNorm(D, eps=spec.layer_norm_eps)
        self.proj = nn.Linear(D, spec.tgt_vocab_size)
        self.window = spec.st_ctc_left_context

    def __call__(self, x):
        mask = mx.array(causal_mask(x.shape[1], window=self.window)).astype(x.dtype)
        for layer in self.layers:
            x = layer(x, mask)
        return self.proj(self.norm(x))

    def stream(self, x, cache: list):
        """Logits for new encoder frames x (B, m, D) that follow the frames whose keys and
        values `cache` holds (one (k, v) per layer; extended in place): the same as
        __call__ on the whole sequence, for these frames, without recomputing the prefix."""
        for i, layer in enumerate(self.layers):
            h = layer.self_attn_norm(x)
            attn = layer.self_attn
            k, v = attn.k_proj(h), attn.v_proj(h)
            if i < len(cache):
                k = mx.concatenate([cache[i][0], k], axis=1)
                v = mx.concatenate([cache[i][1], v], axis=1)
            mask = mx.array(causal_mask(x.shape[1], k.shape[1] - x.shape[1], self.window)).astype(x.dtype)
            # keep what later frames can see: all, or the last window - 1 frames
            kept = (k, v) if not self.window else (keep_last(k, self.window - 1), keep_last(v, self.window - 1))
            cache[i:i + 1] = [kept]
            x = x + attn.attend(attn.q_proj(h), k, v, mask)
            x = x + layer.ffn(layer.ffn_norm(x))
        return self.proj(self.norm(x))


def cached_self_attention(layer, x, cache: dict, mask):
    """A decoder layer's self-attention block for new positions x (B, n, D) over the
    keys/values in `cache` and their own: x plus the attention, and the new positions'
    (k, v) for the caller to keep or drop."""
    h = layer.self_attn_norm(x)
    attn = layer.self_attn
    new_k, new_v = attn.k_proj(h), attn.v_proj(h)
    k, v = new_k, new_v
    if cache["k"] is not None:
        k, v = mx.concatenate([cache["k"], new_k], axis=1), mx.concatenate([cache["v"], new_v], axis=1)
    return x + attn.attend(attn.q_proj(h), k, v, mask), (new_k, new_v)


def append_keys_values(cache: list, new_keys_values: list):
    """Add new positions' self-attention keys and values (one (k, v) per layer) to a
    decoder's cache (MTDecoder, UnitDecoder)."""
    for c, (k, v) in zip(cache, new_keys_values):
        c["k"] = k if c["k"] is None else mx.concatenate([c["k"], k], axis=1)
        c["v"] = v if c["v"] is None else mx.concatenate([c["v"], v], axis=1)


class MTDecoder(nn.Module):
    """Autoregressive transformer decoder over target tokens, cross-attending to the
    encoder: scaled embeddings + sinusoidal positions, pre-norm layers, final norm."""

    def __init__(self, spec: EchoStreamSpec):
        super().__init__()
        Dm = spec.mt_embed_dim
        self.embed_tokens = nn.Embedding(spec.tgt_vocab_size, Dm)
        self.layers = [TransformerLayer(Dm, spec.mt_heads, spec.mt_ffn_dim, spec, cross_dim=spec.embed_dim)
                       for _ in range(spec.mt_layers)]
        self.norm = nn.LayerNorm(Dm, eps=spec.layer_norm_eps)
        self.out_proj = nn.Linear(Dm, spec.tgt_vocab_size, bias=False)
        self.dropout = Dropout(spec.dropout)
        self.embed_scale = math.sqrt(Dm)

    def __call__(self, tokens, encoder_out, encoder_mask):
        """tokens (B, L) -> logits (B, L, V) and the final states (B, L, Dm)."""
        L = tokens.shape[1]
        x = self.embed_tokens(tokens) * self.embed_scale
        x = self.dropout(x + mx.array(sinusoidal_positions(L, x.shape[-1])).astype(x.dtype))
        mask = mx.array(causal_mask(L)).astype(x.dtype)
        for layer in self.layers:
            x = layer(x, mask, encoder_out, encoder_mask)
        states = self.norm(x)
        return self.out_proj(states), states

    # -- incremental decoding (inference, eval mode) ---------------------------------
    def new_cache(self) -> list:
        """Per layer: self-attention keys/values of the tokens fed so far, and the
        cross-attention keys/values of the encoder frames seen so far."""
        return [{"k": None, "v": None, "cross_k": None, "cross_v": None} for _ in self.layers]

    def extend_memory(self, cache: list, frames):
        """Project new encoder frames (B, m, D) for every layer's cross-attention; a
        stream adds its frames as they come, so no frame is projected twice."""
        if frames is None or frames.shape[1] == 0:
            return
        for layer, c in zip(self.layers, cache):
            k, v = layer.cross_attn.k_proj(frames), layer.cross_attn.v_proj(frames)
            c["cross_k"] = k if c["cross_k"] is None else mx.concatenate([c["cross_k"], k], axis=1)
            c["cross_v"] = v if c["cross_v"] is None else mx.concatenate([c["cross_v"], v], axis=1)

    def step(self, tokens, cache: list, memory_mask=None):
        """Logits (B, n, V) and states (B, n, Dm) of n new tokens that follow those in
        `cache`, attending to the frames in `cache`: __call__'s last n positions without
        recomputing the prefix. Returns also the new tokens' keys/values; `commit` adds
        them to the cache (a policy that waits for more audio drops them instead)."""
        n = tokens.shape[1]
        past = 0 if cache[0]["k"] is None else cache[0]["k"].shape[1]
        x = self.embed_tokens(tokens) * self.embed_scale
        x = x + mx.array(sinusoidal_positions(past + n, x.shape[-1])[past:]).astype(x.dtype)
        mask = mx.array(causal_mask(n, past)).astype(x.dtype)
        if memory_mask is None:
            memory_mask = mx.zeros((1, 1, 1, cache[0]["cross_k"].shape[1]), x.dtype)
        new_keys_values = []
        for layer, c in zip(self.layers, cache):
            x, keys_values = cached_self_attention(layer, x, c, mask)
            new_keys_values.append(keys_values)
            cross = layer.cross_attn
            x = x + cross.attend(cross.q_proj(layer.cross_attn_norm(x)), c["cross_k"], c["cross_v"],
                                 memory_mask)
            x = x + layer.ffn(layer.ffn_norm(x))
        states = self.norm(x)
        return self.out_proj(states), states, new_keys_values

    commit = staticmethod(append_keys_values)


class UnitDecoder(nn.Module):
    """Non-autoregressive unit decoder: every MT state repeated unit_upsample times,
    projected, sinusoidal positions (the copies must differ), layers that see every state
    (or, with model.unit_causal, the states so far), CTC projection to the n_units + 1
    unit ids."""

    def __init__(self, spec: EchoStreamSpec):
        super().__init__()
        Du = spec.unit_embed_dim
        self.upsample, self.causal = spec.unit_upsample, spec.unit_causal
        self.in_proj = nn.Linear(spec.mt_embed_dim, Du)
        self.layers = [TransformerLayer(Du, spec.unit_heads, spec.unit_ffn_dim, spec)
                       for _ in range(spec.unit_layers)]
        self.norm = nn.LayerNorm(Du, eps=spec.layer_norm_eps)
        self.out_proj = nn.Linear(Du, spec.unit_vocab_size)
        self.dropout = Dropout(spec.dropout)

    def __call__(self, states, state_lengths):
        """states (B, L, Dm), (B,) valid states -> logits (B, L * upsample, n_units + 1), (B,)."""
        x = self.in_proj(mx.repeat(states, self.upsample, axis=1))
        n = x.shape[1]
        x = self.dropout(x + mx.array(sinusoidal_positions(n, x.shape[-1])).astype(x.dtype))
        lengths = state_lengths * self.upsample
        mask = padding_mask(lengths, n, x.dtype)
        if self.causal:
            mask = mask + mx.array(unit_causal_mask(states.shape[1], 0, self.upsample)).astype(x.dtype)
        for layer in self.layers:
            x = layer(x, mask)
        return self.out_proj(self.norm(x)), lengths

    # -- incremental decoding (model.unit_causal, inference, eval mode) --------------
    def new_cache(self) -> list:
        return [{"k": None, "v": None} for _ in self.layers]

    def step(self, states, cache: list):
        """Logits (1, n * upsample, n_units + 1) of n new MT states (1, n, Dm) that follow
        the states whose keys/values `cache` holds (extended): __call__'s positions for
        these states, for a block-causal decoder, without recomputing earlier ones."""
        n, past = states.shape[1], (0 if cache[0]["k"] is None else cache[0]["k"].shape[1] // self.upsample)
        x = self.in_proj(mx.repeat(states, self.upsample, axis=1))
        total = (past + n) * self.upsample
        x = x + mx.array(sinusoidal_positions(total, x.shape[-1])[past * self.upsample:]).astype(x.dtype)
        mask = mx.array(unit_causal_mask(n, past, self.upsample)).astype(x.dtype)
        new_keys_values = []
        for layer, c in zip(self.layers, cache):
            x, keys_values = cached_self_attention(layer, x, c, mask)
            new_keys_values.append(keys_values)
            x = x + layer.ffn(layer.ffn_norm(x))
        append_keys_values(cache, new_keys_values)
        return self.out_proj(self.norm(x))


# -------------------------------------------------------------------------- model
class EchoStream(nn.Module):
    def __init__(self, spec: EchoStreamSpec):
        super().__init__()
        self.spec = spec
        self.encoder = EmformerEncoder(spec)
        self.asr_ctc = nn.Linear(spec.embed_dim, spec.src_vocab_size)
        self.st_ctc = STCTCHead(spec)
        self.mt_decoder = MTDecoder(spec)
        self.unit_decoder = UnitDecoder(spec)
        # Set by the trainer: recompute each Emformer layer in the backward pass instead of
        # storing its activations (the heads are small next to the encoder).
        self.checkpoint_activations = False

    def encode(self, features, feature_lengths, segment_length: int | None = None):
        """(B, T, n_mels), (B,) -> encoder frames (B, T', D), lengths (B,)."""
        return self.encoder(features, feature_lengths, self.checkpoint_activations and self.training,
                            segment_length)

    def __call__(self, batch) -> dict:
        """Teacher-forced logits of every head for a training batch (see loss_terms). A
        multi-chunk batch carries its "segment_length" (shared/data/s2ut.py); the MT
        decoder then sees only the frames the CTC policy would have read."""
        segment_length = int(np.array(batch["segment_length"])[0]) if "segment_length" in batch else None
        memory_mask = None
        if segment_length:   # (0: the whole utterance is read before anything is written)
            limits = self.policy_reads(batch, segment_length)
        encoder_out, lengths = self.encode(batch["features"], batch["feature_lengths"], segment_length)
        encoder_mask = padding_mask(lengths, encoder_out.shape[1], encoder_out.dtype)
        st_logits = self.st_ctc(encoder_out)
        if segment_length:
            memory_mask = mx.array(limits_to_mask(limits, encoder_out.shape[1])).astype(encoder_out.dtype)
        else:
            memory_mask = encoder_mask
        mt_logits, states = self.mt_decoder(batch["prev_output_tokens"], encoder_out, memory_mask)
        # The states of [BOS] + target: one per target token and one for EOS.
        unit_logits, unit_lengths = self.unit_decoder(states, batch["tgt_lengths"] + 1)
        return {"encoder_lengths": lengths, "asr_logits": self.asr_ctc(encoder_out),
                "st_logits": st_logits, "mt_logits": mt_logits,
                "unit_logits": unit_logits, "unit_lengths": unit_lengths}

    def policy_reads(self, batch, segment_length: int) -> np.ndarray:
        """(B, L) encoder frames each MT query may see in multi-chunk training: what the
        CTC policy would have read, from the ST CTC's best path (mt_memory_limits), a
        constant of the step. A forward of its own, without dropout (as at inference),
        evaluated now: evaluating part of the training graph early instead made MLX's
        results vary in the last bit from run to run."""
        training = self.training
        self.eval()
        try:
            frames, lengths = self.encode(batch["features"], batch["feature_lengths"], segment_length)
            st_log_probs = nn.log_softmax(mx.stop_gradient(self.st_ctc(frames)).astype(mx.float32), axis=-1)
            return mt_memory_limits(np.array(st_log_probs), np.array(batch["tgt_tokens"]),
                                    np.array(batch["tgt_lengths"]), np.array(lengths), segment_length,
                                    batch["prev_output_tokens"].shape[1])
        finally:
            self.train(training)

    # -- streaming encoder -----------------------------------------------------------
    def init_stream(self, segment_length: int | None = None) -> dict:
        return self.encoder.init_stream(segment_length)

    def stream_encode(self, features_chunk, state: dict):
        """(1, n, n_mels) new feature frames (any n) -> (1, m, D) newly final encoder
        frames (m may be 0) and the new state."""
        return self.encoder.stream_encode(features_chunk, state)

    def stream_finish(self, state: dict):
        return self.encoder.stream_finish(state)

    # -- inference -------------------------------------------------------------------
    def decode(self, batch, max_target_len: int = 200) -> dict:
        """Greedy outputs of every head (call in eval mode). mt_tokens end with EOS, then
        PAD; the unit decoder runs on the MT states of the greedy output."""
        encoder_out, lengths = self.encode(batch["features"], batch["feature_lengths"])
        return self.decode_encoded(encoder_out, lengths, max_target_len)

    def decode_encoded(self, encoder_out, lengths, max_target_len: int = 200) -> dict:
        """decode() from encoder frames (B, T', D) and their lengths (B,): the streaming
        CLI's encoder output goes straight to the heads."""
        encoder_mask = padding_mask(lengths, encoder_out.shape[1], encoder_out.dtype)
        B = encoder_out.shape[0]
        tokens = mx.full((B, 1), BOS, mx.int32)
        finished = mx.zeros((B,), mx.bool_)
        never = mx.arange(self.spec.tgt_vocab_size) == PAD   # PAD is never predicted
        cache = self.mt_decoder.new_cache()   # keys/values: each token is fed once
        self.mt_decoder.extend_memory(cache, encoder_out)
        outputs, step_states = [], []
        for _ in range(max(max_target_len, 1)):
            logits, states, new_keys_values = self.mt_decoder.step(tokens, cache, encoder_mask)
            self.mt_decoder.commit(cache, new_keys_values)
            step_states.append(states)
            last = mx.where(never, -mx.inf, logits[:, -1].astype(mx.float32))
            next_token = mx.where(finished, PAD, mx.argmax(last, axis=-1).astype(mx.int32))
            outputs.append(next_token)
            finished = finished | (next_token == EOS)
            if finished.all().item() or len(outputs) == max_target_len:
                break
            tokens = next_token[:, None]
        mt_tokens = mx.stack(outputs, axis=1)
        # The states of [BOS] + mt_tokens[:, :-1]: valid up to and including the step
        # that produced EOS, as in training.
        states = mx.concatenate(step_states, axis=1)
        is_eos = mt_tokens == EOS
        n_states = mx.where(is_eos.any(axis=1), mx.argmax(is_eos, axis=1) + 1, mt_tokens.shape[1])
        unit_logits, unit_lengths = self.unit_decoder(states, n_states.astype(mx.int32))
        return {"encoder_lengths": lengths,
                "asr_ctc_argmax": mx.argmax(self.asr_ctc(encoder_out), axis=-1).astype(mx.int32),
                "st_ctc_argmax": mx.argmax(self.st_ctc(encoder_out), axis=-1).astype(mx.int32),
                "mt_tokens": mt_tokens,
                "unit_ctc_argmax": mx.argmax(unit_logits, axis=-1).astype(mx.int32),
                "unit_lengths": unit_lengths.astype(mx.int32)}


def label_smoothed_cross_entropy(logits, target, smoothing: float, divisor=None):
    """Mean over non-PAD targets of (1 - e) * nll + e * mean over classes of -log p:
    torch's F.cross_entropy(label_smoothing=e, ignore_index=PAD). A `divisor` replaces the
    count of non-PAD targets (a batch part's: shared/specs/echostream.py)."""
    logp = nn.log_softmax(logits.astype(mx.float32), axis=-1)
    nll = -mx.take_along_axis(logp, target[..., None].astype(mx.int32), axis=-1)[..., 0]
    per_token = (1.0 - smoothing) * nll - smoothing * logp.mean(axis=-1)
    valid = (target != PAD).astype(mx.float32)
    if divisor is None:
        divisor = mx.maximum(valid.sum(), 1.0)
    return (per_token * valid).sum() / divisor


def _ctc_terms(*terms):
    """The mean CTC losses of several (logits, targets, input lengths, target lengths), in
    one recursion over frames (ctc_losses: MLX's CPU cost is per operation)."""
    return ctc_losses([(nn.log_softmax(logits.astype(mx.float32), axis=-1), *rest) for logits, *rest in terms],
                      blank=BLANK, reduction="mean", zero_infinity=True)


def loss_terms(model: EchoStream, batch) -> dict:
    """{"loss": weighted total, "asr_ctc", "st_ctc", "mt", "unit_ctc"} on a batch dict
    (keys in shared/specs/echostream.py's contract)."""
    spec, out = model.spec, model(batch)
    asr_ctc, st_ctc, unit_ctc = _ctc_terms(
        (out["asr_logits"], batch["src_tokens"], out["encoder_lengths"], batch["src_lengths"]),
        (out["st_logits"], batch["tgt_tokens"], out["encoder_lengths"], batch["tgt_lengths"]),
        (out["unit_logits"], batch["units"], out["unit_lengths"], batch["unit_lengths"]))
    terms = {
        "asr_ctc": asr_ctc, "st_ctc": st_ctc,
        "mt": label_smoothed_cross_entropy(out["mt_logits"], batch["target"], spec.label_smoothing,
                                           batch.get("mt_divisor")),
        "unit_ctc": unit_ctc,
    }
    total = (spec.asr_ctc_weight * terms["asr_ctc"] + spec.st_ctc_weight * terms["st_ctc"]
             + spec.mt_weight * terms["mt"] + spec.unit_weight * terms["unit_ctc"])
    return {"loss": total, **terms}


def loss(model: EchoStream, batch):
    return loss_terms(model, batch)["loss"]
