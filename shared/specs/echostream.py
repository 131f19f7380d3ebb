"""EchoStream, streaming speech-to-unit translation, as data: hyperparameters, manifest,
parameter counts, initial weights, and the numpy pieces both backends share (token ids,
length arithmetic, the Emformer's attention masks, sinusoidal positions).

    fbank (B, T, 80) --conv subsampling x4--> Emformer encoder (B, T', D) --+-> ASR CTC (linear)
                                                                            +-> ST CTC (1 causal layer + linear)
                                                                            +-> MT decoder (autoregressive, cross-attends)
                                                                                   | states (B, L+1, Dm)
                                                                                   v  repeat each x unit_upsample
                                                                               unit decoder (non-causal) -> unit CTC

The encoder is an Emformer (Shi et al., ICASSP 2021), after torchaudio's design: the
frames are cut into segments of `segment_length`; every segment attends to itself, to
`left_context` earlier frames, to its own copy of the `right_context` frames after it
(look-ahead, recomputed per segment and never passed on), and to a memory bank: one
summary per earlier segment (the mean of its frames, turned into a memory vector by the
attention of the layer below), at most `max_memory_size` of them. Training runs all
segments at once with the masks built here; streaming runs one segment at a time with a
bounded state, and both give the same frames.

Both `mlx_models/echostream.py` and `torch_models/echostream.py` build exactly the
parameters listed by `echostream_manifest`, under the same names.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from shared import ranges as R
from shared.specs.base import (BIAS, CONV1D, EMBEDDING, LINEAR, NORM, ParamSpec, SpecError, check_int,
                               count_params, split_examples, torch_default_init)

# Token ids shared with the data side. SentencePiece models are trained with pad_id=0,
# unk_id=1, bos_id=2, eos_id=3; id 0 is also the CTC blank of every CTC head.
PAD = 0
BLANK = 0
UNK = 1
BOS = 2
EOS = 3


def unit_id(unit):
    """Discrete unit u in 0..n_units-1 -> its id (0 is the blank/pad): works on ints and
    numpy arrays."""
    return unit + 1


# A masked attention score. Finite, so a row with every key masked (a padding query)
# gives a uniform softmax instead of NaN; exp(NEG - max) is exactly 0 in float32 and
# bfloat16 for any unmasked score, so masked keys contribute nothing.
NEG = -1e9
# Memory vectors are clamped to this range (torchaudio's Emformer, tanh_on_mem=False).
MEMORY_CLAMP = 10.0
PART_PREFIXES = {"encoder": "encoder.", "asr_ctc": "asr_ctc.", "st_ctc": "st_ctc.",
                 "mt_decoder": "mt_decoder.", "unit_decoder": "unit_decoder."}


@dataclass(frozen=True)
class EchoStreamSpec:
    """Defaults: seed 000's Mac M2 8 GB model (encoder embed 128, 4 layers, 2 heads, FFN
    512). The widths the note leaves open are chosen so that each part lands near the
    note's count (see `echostream_param_counts`): source vocabulary 6000 (ASR CTC ~0.8M =
    128 x 6000 + 6000), target vocabulary 1000 (ST CTC ~0.3M = one 128-d layer, 0.2M, plus
    a 128 x V projection, so V ~ 1000), HuBERT-km1000 units (n_units 1000; 1001 ids with
    the blank). Frame rates: fbank 10 ms, encoder 40 ms."""
    n_mels: int = 80
    src_vocab_size: int = 6000
    tgt_vocab_size: int = 1000
    n_units: int = 1000
    # Encoder: Conv1d(k, stride 2) + GLU twice (x4 fewer frames), then Emformer layers.
    embed_dim: int = 128
    encoder_layers: int = 4
    encoder_heads: int = 2
    encoder_ffn_dim: int = 512
    subsample_channels: int = 1536      # first conv's output channels (GLU halves them)
    subsample_kernel: int = 5
    segment_length: int = 16            # encoder frames per segment (640 ms)
    # Multi-chunk training (StreamSpeech): each training batch draws its segment length
    # from this set (0: the whole utterance is one segment), and the MT decoder's
    # cross-attention sees only what the CTC policy would have read (mt_memory_limits),
    # so one model serves every chunk size in the set, chosen at inference (--chunk-ms).
    # Empty: every batch uses segment_length.
    train_segment_lengths: tuple[int, ...] = ()
    left_context: int = 32              # encoder frames of left context (1.28 s)
    right_context: int = 4              # encoder frames of look-ahead (160 ms)
    max_memory_size: int = 4            # memory bank size; 0: no memory
    # Heads.
    st_ctc_layers: int = 1              # causal transformer layers before the ST CTC projection
    # Encoder frames each ST CTC position sees (itself included; 0: all before it). A window
    # keeps a stream's per-chunk cost flat however long the speech goes on.
    st_ctc_left_context: int = 0
    mt_embed_dim: int = 128
    mt_layers: int = 2
    mt_heads: int = 2
    mt_ffn_dim: int = 1024
    unit_embed_dim: int = 192
    unit_layers: int = 2
    unit_heads: int = 2
    unit_ffn_dim: int = 768
    unit_upsample: int = 10             # unit frames per MT decoder state
    # False: the unit decoder sees every MT state of the sentence (offline quality).
    # True: a state's units see only the states written so far (block-causal: the
    # unit_upsample copies of one state see each other), so simultaneous translation
    # writes them once, with cached keys and values (shared/simultaneous.py).
    unit_causal: bool = False
    dropout: float = 0.1
    layer_norm_eps: float = 1e-5
    # Loss: weighted sum of the four terms.
    asr_ctc_weight: float = 1.0
    st_ctc_weight: float = 1.0
    mt_weight: float = 1.0
    unit_weight: float = 1.0
    label_smoothing: float = 0.1        # MT cross entropy

    RANGES = {  # shared/ranges.py; the rules between keys in __post_init__
        "n_mels": R.at_least(1, 256), "src_vocab_size": R.at_least(EOS + 2, R.MAX_VOCAB),
        "tgt_vocab_size": R.at_least(EOS + 2, R.MAX_VOCAB), "n_units": R.at_least(2, R.MAX_VOCAB),
        "embed_dim": R.at_least(1, R.MAX_WIDTH), "encoder_layers": R.at_least(1, R.MAX_LAYERS),
        "encoder_heads": R.at_least(1, R.MAX_HEADS), "encoder_ffn_dim": R.at_least(1, R.MAX_FFN),
        "subsample_channels": R.at_least(2, R.MAX_FFN), "subsample_kernel": R.at_least(2, 1024),
        "segment_length": R.at_least(1, 1 << 16), "left_context": R.at_least(0, 1 << 16),
        "train_segment_lengths": R.at_least(0, 1 << 16),   # each value; 0: the whole utterance
        "right_context": R.at_least(0, 1 << 16), "max_memory_size": R.at_least(0, 1 << 16),
        "st_ctc_layers": R.at_least(0, R.MAX_LAYERS), "st_ctc_left_context": R.at_least(0, 1 << 16), "mt_embed_dim": R.at_least(1, R.MAX_WIDTH),
        "mt_layers": R.at_least(1, R.MAX_LAYERS), "mt_heads": R.at_least(1, R.MAX_HEADS),
        "mt_ffn_dim": R.at_least(1, R.MAX_FFN), "unit_embed_dim": R.at_least(1, R.MAX_WIDTH),
        "unit_layers": R.at_least(1, R.MAX_LAYERS), "unit_heads": R.at_least(1, R.MAX_HEADS),
        "unit_ffn_dim": R.at_least(1, R.MAX_FFN), "unit_upsample": R.at_least(1, 1024),
        "dropout": R.FRACTION, "layer_norm_eps": R.EPS, "asr_ctc_weight": R.WEIGHT,
        "st_ctc_weight": R.WEIGHT, "mt_weight": R.WEIGHT, "unit_weight": R.WEIGHT,
        "label_smoothing": R.FRACTION,
    }

    def __post_init__(self):
        positive = ("n_mels", "n_units", "embed_dim", "encoder_layers", "encoder_heads",
                    "encoder_ffn_dim", "subsample_channels", "segment_length", "mt_embed_dim",
                    "mt_layers", "mt_heads", "mt_ffn_dim", "unit_embed_dim", "unit_layers",
                    "unit_heads", "unit_ffn_dim", "unit_upsample")
        for name in positive:
            check_int(name, getattr(self, name), minimum=1)
        for name in ("left_context", "right_context", "max_memory_size", "st_ctc_layers", "st_ctc_left_context"):
            check_int(name, getattr(self, name), minimum=0)
        for name in ("src_vocab_size", "tgt_vocab_size"):
            # pad/blank, unk, bos, eos and at least one real token
            check_int(name, getattr(self, name), minimum=EOS + 2)
        check_int("subsample_kernel", self.subsample_kernel, minimum=2)
        if self.subsample_channels % 2:
            raise SpecError(f"model.subsample_channels must be even (a GLU halves it), "
                            f"got {self.subsample_channels}")
        for dim, heads in (("embed_dim", "encoder_heads"), ("mt_embed_dim", "mt_heads"),
                           ("unit_embed_dim", "unit_heads")):
            if getattr(self, dim) % getattr(self, heads):
                raise SpecError(f"model.{dim} ({getattr(self, dim)}) must be divisible by "
                                f"model.{heads} ({getattr(self, heads)})")
        for dim in ("mt_embed_dim", "unit_embed_dim"):
            if getattr(self, dim) % 2:
                raise SpecError(f"model.{dim} must be even (sinusoidal positions), "
                                f"got {getattr(self, dim)}")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise SpecError(f"model.dropout must be in [0, 1), got {self.dropout!r}")
        if not (isinstance(self.label_smoothing, (int, float)) and 0.0 <= self.label_smoothing < 1.0):
            raise SpecError(f"model.label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if not (isinstance(self.layer_norm_eps, (int, float)) and self.layer_norm_eps > 0):
            raise SpecError(f"model.layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        weights = ("asr_ctc_weight", "st_ctc_weight", "mt_weight", "unit_weight")
        for name in weights:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
                raise SpecError(f"model.{name} must be a finite number >= 0, got {value!r}")
        if not any(getattr(self, name) > 0 for name in weights):
            raise SpecError("at least one of model." + ", model.".join(weights) + " must be > 0")
        if not isinstance(self.train_segment_lengths, (list, tuple)):
            raise SpecError(f"model.train_segment_lengths must be a list of encoder frames per "
                            f"segment (0: whole utterance), got {self.train_segment_lengths!r}")
        for value in self.train_segment_lengths:
            check_int("train_segment_lengths", value, minimum=0)
        # a tuple: the spec is hashable (emformer_layout caches on it)
        object.__setattr__(self, "train_segment_lengths", tuple(int(v) for v in self.train_segment_lengths))
        if not isinstance(self.unit_causal, bool):
            raise SpecError(f"model.unit_causal must be true or false, got {self.unit_causal!r}")

    @property
    def unit_vocab_size(self) -> int:
        """Unit ids: the blank 0 and unit_id(u) = u + 1."""
        return self.n_units + 1

    @property
    def subsample_receptive_field(self) -> int:
        """Feature frames behind one encoder frame: frame j reads frames 4j .. 4j + field - 1."""
        return 3 * self.subsample_kernel - 2

    @property
    def use_memory(self) -> bool:
        return self.max_memory_size > 0


# ------------------------------------------------------------------------ lengths
def conv_output_length(n: int, kernel: int) -> int:
    """Frames out of one Conv1d(kernel, stride 2) without padding ("valid"): every output
    frame sees only real input frames, so streaming and padded batches are exact."""
    return max((n - kernel) // 2 + 1, 0)


def encoder_length(n_frames: int, spec: EchoStreamSpec) -> int:
    """Encoder frames for `n_frames` feature frames (two valid stride-2 convs)."""
    k = spec.subsample_kernel
    return conv_output_length(conv_output_length(n_frames, k), k)


def num_segments(n_encoder_frames: int, spec: EchoStreamSpec) -> int:
    return -(-n_encoder_frames // spec.segment_length)


ENCODER_FRAME_MS = 40   # 10 ms fbank hop, subsampled 4x


def chunk_segment_length(spec: EchoStreamSpec, chunk_ms: int) -> int:
    """Encoder frames per segment for a READ chunk of chunk_ms (0: the whole utterance).
    A model trained on several segment lengths (train_segment_lengths) streams in
    segments of the chunk; any other keeps its segment_length, and the chunk only sets
    how often the policy decides."""
    if not spec.train_segment_lengths:
        return spec.segment_length
    return 0 if chunk_ms == 0 else max(chunk_ms // ENCODER_FRAME_MS, 1)


def ctc_best_path_first_frames(log_probs: np.ndarray, target: np.ndarray, blank: int = BLANK) -> np.ndarray:
    """(T, V) log-probabilities and a (S,) target -> (S,) the frame at which each target
    label is first emitted on the most likely CTC path that spells the target (Viterbi
    forced alignment). Needs T >= S + repeats; otherwise every label gets frame T - 1."""
    T, S = log_probs.shape[0], len(target)
    if S == 0:
        return np.zeros(0, np.int64)
    ext = np.full(2 * S + 1, blank, np.int64)
    ext[1::2] = target
    L = len(ext)
    can_skip = np.zeros(L, bool)
    can_skip[3::2] = ext[3::2] != ext[1:-2:2]          # a label may follow the previous one directly
    emit = log_probs[:, ext]                            # (T, L)
    score = np.full(L, -np.inf)
    score[:2] = emit[0, :2]
    came_from = np.zeros((T, L), np.int64)              # 0: stay, 1: from s - 1, 2: from s - 2
    for t in range(1, T):
        stay, move = score, np.concatenate([[-np.inf], score[:-1]])
        jump = np.where(can_skip, np.concatenate([[-np.inf, -np.inf], score[:-2]]), -np.inf)
        options = np.stack([stay, move, jump])
        came_from[t] = options.argmax(axis=0)
        score = options.max(axis=0) + emit[t]
    if not np.isfinite(max(score[L - 1], score[L - 2])):
        return np.full(S, T - 1, np.int64)
    state = L - 1 if score[L - 1] >= score[L - 2] else L - 2
    first = np.full(S, T - 1, np.int64)
    for t in range(T - 1, -1, -1):
        if state % 2 == 1:
            first[state // 2] = t
        state -= came_from[t, state]
    return first


def mt_memory_limits(st_log_probs: np.ndarray, tgt_tokens: np.ndarray, tgt_lengths: np.ndarray,
                     encoder_lengths: np.ndarray, segment_length: int, n_queries: int) -> np.ndarray:
    """(B, n_queries) encoder frames each MT decoder query may attend to in multi-chunk
    training: query j predicts target token j, which the CTC policy writes once the ST CTC
    has emitted it, i.e. after the segment holding that token's first frame on the ST
    CTC's best path; so it sees the frames up to the end of that segment. EOS and padding
    queries see every frame (the policy writes EOS after the source has ended)."""
    B = len(tgt_lengths)
    limits = np.repeat(np.asarray(encoder_lengths, np.int64)[:, None], n_queries, axis=1)
    for b in range(B):
        n, frames = int(tgt_lengths[b]), int(encoder_lengths[b])
        if n == 0 or frames == 0:
            continue
        first = ctc_best_path_first_frames(st_log_probs[b, :frames], tgt_tokens[b, :n])
        ends = (first // segment_length + 1) * segment_length
        limits[b, :n] = np.minimum(ends, frames)
    return limits


def limits_to_mask(limits: np.ndarray, n_keys: int) -> np.ndarray:
    """(B, Q) frame limits -> additive (B, 1, Q, n_keys) mask hiding keys at or past them."""
    return np.where(np.arange(n_keys)[None, None, :] < limits[:, :, None], 0.0, NEG).astype(np.float32)[:, None]


# ------------------------------------------------------------------ Emformer masks
@dataclass(frozen=True)
class EmformerLayout:
    """How the parallel (training) Emformer lays out one batch of N segments of S frames.

    Queries: [right-context blocks (N*R rows), utterance (N*S), summaries (N, with memory)].
    Keys:    [memories (N-1, with memory), right-context blocks (N*R), utterance (N*S)].
    allowed (Q, K) says which key each query may see before padding is considered;
    key_frame (K,) is the encoder frame a key holds (-1 for memories, which are never
    padding for a query that is itself valid), so a backend masks padding with
    key_frame < length. right_context_frame (N*R,) is the frame each right-context row
    copies (it may point past the input: those rows are padding)."""
    n_segments: int
    allowed: np.ndarray
    key_frame: np.ndarray
    right_context_frame: np.ndarray


@functools.lru_cache(maxsize=64)
def emformer_layout(n_frames: int, spec: EchoStreamSpec) -> EmformerLayout:
    """The training-time layout for `n_frames` (padded) encoder frames, N >= 1 segments.
    Segment i holds frames [iS, (i+1)S), its right context frames [(i+1)S, (i+1)S + R),
    its left context frames [max(iS - LC, 0), iS), its memories the summaries of segments
    [max(i - M, 0), i) -- exactly what the streaming `infer` sees for that segment."""
    S, R, LC, M = spec.segment_length, spec.right_context, spec.left_context, spec.max_memory_size
    N = max(num_segments(n_frames, spec), 1)
    n_mem = N - 1 if spec.use_memory else 0
    seg = np.arange(N)
    # Segment of every query row and key column.
    q_seg = np.concatenate([np.repeat(seg, R), np.repeat(seg, S), seg if spec.use_memory else seg[:0]])
    q_is_summary = np.arange(len(q_seg)) >= N * (R + S)
    k_kind = np.concatenate([np.full(n_mem, 0), np.full(N * R, 1), np.full(N * S, 2)])
    k_index = np.concatenate([np.arange(n_mem), np.repeat(seg, R), np.arange(N * S)])
    q, ki, kk = q_seg[:, None], k_index[None, :], k_kind[None, :]
    memory_ok = (kk == 0) & (ki < q) & (ki >= q - M) & ~q_is_summary[:, None]
    right_context_ok = (kk == 1) & (ki == q)
    utterance_ok = (kk == 2) & (ki < (q + 1) * S) & (ki >= q * S - LC)
    right_context_frame = (np.repeat(seg, R) + 1) * S + np.tile(np.arange(R), N)
    key_frame = np.concatenate([np.full(n_mem, -1), right_context_frame, np.arange(N * S)])
    return EmformerLayout(N, memory_ok | right_context_ok | utterance_ok,
                          key_frame.astype(np.int32), right_context_frame.astype(np.int32))


@functools.lru_cache(maxsize=256)
def emformer_stream_mask(n_right: int, n_utterance: int, n_memory: int, n_left: int,
                         use_memory: bool) -> np.ndarray:
    """Additive mask (Q, K) for one streamed segment: queries [right context, utterance,
    summary], keys [memories, right context, left context, utterance]. Everything is
    visible except the memories to the summary (as in training)."""
    n_q = n_right + n_utterance + (1 if use_memory else 0)
    mask = np.zeros((n_q, n_memory + n_right + n_left + n_utterance), np.float32)
    if use_memory:
        mask[-1, :n_memory] = NEG
    return mask


@functools.lru_cache(maxsize=64)
def causal_mask(n: int, past: int = 0, window: int = 0) -> np.ndarray:
    """Additive (n, past + n) mask for n queries that follow `past` earlier positions:
    query i sees keys 0..past + i, or with a window W > 0 only the last W of them
    (past + i - W + 1 .. past + i). Built explicitly (not the backends' own causal flags,
    which align differently when query and key lengths differ)."""
    mask = np.triu(np.full((n, past + n), NEG, np.float32), k=past + 1)
    if window > 0:
        mask += np.tril(np.full((n, past + n), NEG, np.float32), k=past - window)
    return mask


def unit_causal_mask(n_states: int, past_states: int, upsample: int) -> np.ndarray:
    """Additive (n * upsample, (past + n) * upsample) mask of a block-causal unit decoder
    (model.unit_causal) for the unit positions of n states that follow `past` states: a
    position of state i sees the positions of states 0 .. past + i."""
    query_state = past_states + np.arange(n_states * upsample) // upsample
    key_state = np.arange((past_states + n_states) * upsample) // upsample
    return np.where(key_state[None, :] <= query_state[:, None], 0.0, NEG).astype(np.float32)


@functools.lru_cache(maxsize=64)
def sinusoidal_positions(length: int, dim: int) -> np.ndarray:
    """(length, dim) float32 table, fairseq's layout: sin of every frequency, then cos.
    Computed in float64 so both backends add the identical table."""
    half = dim // 2
    freq = np.exp(np.arange(half, dtype=np.float64) * -(math.log(10000.0) / max(half - 1, 1)))
    angles = np.arange(length, dtype=np.float64)[:, None] * freq[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


# ------------------------------------------------------------------------ manifest
def _linear(name: str, out_dim: int, in_dim: int, bias: bool = True) -> list[ParamSpec]:
    params = [ParamSpec(f"{name}.weight", (out_dim, in_dim), LINEAR)]
    return params + [ParamSpec(f"{name}.bias", (out_dim,), BIAS)] if bias else params


def _layer_norm(name: str, dim: int) -> list[ParamSpec]:
    return [ParamSpec(f"{name}.weight", (dim,), NORM), ParamSpec(f"{name}.bias", (dim,), BIAS)]


def _attention(name: str, dim: int, kv_dim: int) -> list[ParamSpec]:
    # No key bias: it adds the same q.b to every score of a query, which softmax ignores
    # (its gradient is 0 up to roundoff, and AdamW would amplify that noise).
    return (_linear(f"{name}.q_proj", dim, dim) + _linear(f"{name}.k_proj", dim, kv_dim, bias=False)
            + _linear(f"{name}.v_proj", dim, kv_dim) + _linear(f"{name}.out_proj", dim, dim))


def _ffn(name: str, dim: int, hidden: int) -> list[ParamSpec]:
    return _linear(f"{name}.fc1", hidden, dim) + _linear(f"{name}.fc2", dim, hidden)


def _transformer_layer(name: str, dim: int, ffn: int, cross_dim: int = 0) -> list[ParamSpec]:
    """Pre-norm layer: self-attention, (cross-attention), FFN."""
    params = _layer_norm(f"{name}.self_attn_norm", dim) + _attention(f"{name}.self_attn", dim, dim)
    if cross_dim:
        params += (_layer_norm(f"{name}.cross_attn_norm", dim)
                   + _attention(f"{name}.cross_attn", dim, cross_dim))
    return params + _layer_norm(f"{name}.ffn_norm", dim) + _ffn(f"{name}.ffn", dim, ffn)


def echostream_batch_parts(batch: dict[str, np.ndarray], n_parts: int) -> list[dict]:
    """A batch split by examples, for training the parts in parallel and adding their
    gradients weighted by their share of the examples. The CTC terms are means over
    examples, so they add up; the MT term is a mean over all the batch's target tokens, so
    each part carries "mt_divisor": the batch's target-token count times the part's share of
    the examples. Weighted by that share, the parts' MT terms then add up to the batch's."""
    tokens = max(int((batch["target"] != PAD).sum()), 1)
    parts = split_examples(batch, n_parts)
    for part in parts:
        part["mt_divisor"] = np.float32(tokens * len(part["target"]) / len(batch["target"]))
    return parts


def echostream_manifest(spec: EchoStreamSpec) -> list[ParamSpec]:
    D, C, k = spec.embed_dim, spec.subsample_channels, spec.subsample_kernel
    params = [
        ParamSpec("encoder.subsample.conv1.weight", (C, spec.n_mels, k), CONV1D),
        ParamSpec("encoder.subsample.conv1.bias", (C,), BIAS),
        ParamSpec("encoder.subsample.conv2.weight", (2 * D, C // 2, k), CONV1D),
        ParamSpec("encoder.subsample.conv2.bias", (2 * D,), BIAS),
    ]
    for i in range(spec.encoder_layers):
        # Emformer layer (torchaudio's order): LN -> attention -> residual -> LN-FFN ->
        # residual -> LN.
        p = f"encoder.layers.{i}"
        params += (_layer_norm(f"{p}.norm_in", D) + _attention(f"{p}.attention", D, D)
                   + _layer_norm(f"{p}.ffn_norm", D) + _ffn(f"{p}.ffn", D, spec.encoder_ffn_dim)
                   + _layer_norm(f"{p}.norm_out", D))
    params += _linear("asr_ctc", spec.src_vocab_size, D)
    for i in range(spec.st_ctc_layers):
        params += _transformer_layer(f"st_ctc.layers.{i}", D, spec.encoder_ffn_dim)
    params += _layer_norm("st_ctc.norm", D) + _linear("st_ctc.proj", spec.tgt_vocab_size, D)
    Dm = spec.mt_embed_dim
    params.append(ParamSpec("mt_decoder.embed_tokens.weight", (spec.tgt_vocab_size, Dm), EMBEDDING))
    for i in range(spec.mt_layers):
        params += _transformer_layer(f"mt_decoder.layers.{i}", Dm, spec.mt_ffn_dim, cross_dim=D)
    params += _layer_norm("mt_decoder.norm", Dm)
    params += _linear("mt_decoder.out_proj", spec.tgt_vocab_size, Dm, bias=False)
    Du = spec.unit_embed_dim
    params += _linear("unit_decoder.in_proj", Du, Dm)
    for i in range(spec.unit_layers):
        params += _transformer_layer(f"unit_decoder.layers.{i}", Du, spec.unit_ffn_dim)
    params += _layer_norm("unit_decoder.norm", Du) + _linear("unit_decoder.out_proj", spec.unit_vocab_size, Du)
    return params


def echostream_param_counts(spec: EchoStreamSpec) -> dict[str, int]:
    """Parameters per part (encoder = subsampling + Emformer) and in total."""
    manifest = echostream_manifest(spec)
    counts = {part: sum(p.numel for p in manifest if p.name.startswith(prefix))
              for part, prefix in PART_PREFIXES.items()}
    counts["total"] = count_params(manifest)
    return counts


def echostream_init_weights(spec: EchoStreamSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Initial weights in canonical layout, float32, identical for both backends.

    Linear and conv weights: torch's default bound U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
    fan_in = prod(shape[1:]); biases zeros; LayerNorm scales ones. The token embedding is
    N(0, 1/dim) (fairseq's; it is multiplied by sqrt(dim) in the decoder), the padding
    row zero."""
    rng = np.random.default_rng(seed)
    weights = {}
    for p in echostream_manifest(spec):
        if p.kind == EMBEDDING:
            table = rng.normal(0.0, p.shape[1] ** -0.5, p.shape).astype(np.float32)
            table[PAD] = 0.0
            weights[p.name] = table
        else:
            weights[p.name] = torch_default_init(p, rng)
    return weights
