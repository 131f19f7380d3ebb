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

from shared.config import cpu_parts
from shared.hardware import HardwareProfile
from shared.specs import get_family
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
        overhead_term("torch", device_type),
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


def plan_tflocoformer(spec, train, samples: int, backend: str, attention: str,
                      device_type: str = "cuda") -> MemoryPlan:
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
    terms = static_terms(n, train, backend, c)
    terms += [
        Term("activations: encoder, decoder", 4 * s["tokens"] * (2 * s["D"] + 4 * spec.audio_channels
             * (1 + spec.n_sources)) * (c / 4 + 0.5), "STFT, Conv2d + GroupNorm in, ConvTranspose2d out"),
        blocks,
        Term("activations: STFT loss and iSTFT", coef["audio"] * 4 * s["audio"],
             "multi-resolution STFTs of estimates and references, iSTFT"),
        overhead_term(backend, device_type),
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


# ----------------------------------------------------------------------------- band-split
# Elements MLX keeps per activation of each kind, fitted like EchoStream's
# (bench/calibrate_memory.py --family bandsplit). Per (frame, band) token: "hidden" x width,
# "inner" x Mamba2's expanded width, "ssd" x the chunked scan's within-chunk scores and
# carried states, "ffn" x the transformer FFN width, "scores" per attention score, "mask"
# x the mask MLP width; "spectrum" per complex mask / spectrum value; "audio" per sample
# of estimates and references (STFT loss, iSTFT).
BANDSPLIT_COEFFICIENTS = {
    "mlx": {"hidden": 9.84, "inner": 3.68, "ssd": 7.32, "ffn": 4.71, "scores": 1.89, "mask": 7.36,
            "spectrum": 0.0, "audio": 43.97},
    # torch: derived from the saved-tensor list, not yet calibrated on a GPU.
    "torch": {"hidden": 10.0, "inner": 6.0, "ssd": 2.0, "ffn": 3.0, "scores": 2.0, "mask": 3.0,
              "spectrum": 6.0, "audio": 48.0},
}


def bandsplit_activation_elements(spec, batch: int, samples: int, checkpointing: bool,
                                  attention: str = "math") -> dict:
    """Activation elements of one band-split training step, by kind and part. Each
    DualPathModule runs a sequence layer along time (B x bands sequences of frames) and
    one along the bands (B x frames sequences of bands)."""
    B, K, Hd = batch, spec.n_bands, spec.hidden
    T = 1 + samples // spec.hop
    tokens = B * T * K
    if spec.sequence_layer == "mamba2":
        heads, q = spec.mamba_heads, spec.chunk_size
        # Bidirectional: two mixers per sequence layer; the scan keeps chunk x chunk decays
        # and scores per head, and one d_state x head_dim state per chunk and head.
        per_path = {"hidden": 2 * tokens * Hd, "inner": 2 * tokens * spec.conv_channels,
                    "ssd": 2 * tokens * heads * (q + spec.head_dim * spec.d_state / q)}
        path_time = path_band = per_path
    else:
        fused = attention == "flash"
        heads = spec.n_heads
        base = {"hidden": tokens * Hd, "ffn": tokens * Hd * spec.ffn_mult}
        path_time = base | {"scores": 0 if fused else B * K * heads * T * T}
        path_band = base | {"scores": 0 if fused else B * T * heads * K * K}
    module = {kind: path_time.get(kind, 0) + path_band.get(kind, 0) for kind in {*path_time, *path_band}}
    if checkpointing:   # module inputs kept, one module's activations alive at a time
        blocks = {kind: v for kind, v in module.items()}
        blocks["hidden"] = blocks.get("hidden", 0) + spec.n_layers * tokens * Hd / 10.0
    else:
        blocks = {kind: v * spec.n_layers for kind, v in module.items()}
    spectrum = B * T * spec.n_freq * spec.audio_channels * 2
    parts = {
        "band split": {"hidden": tokens * Hd, "spectrum": spectrum},
        "dual-path modules": blocks,
        "mask estimation": {"mask": tokens * spec.mask_hidden,
                            "spectrum": spectrum * spec.n_sources * 2},
        "STFT loss and iSTFT": {"audio": B * spec.n_sources * spec.audio_channels * samples},
    }
    shapes = {"B": B, "frames": T, "bands": K, "tokens": tokens, "heads": heads}
    return {"parts": parts, "shapes": shapes}


def plan_bandsplit(config, backend: str, attention: str, device_type: str = "cuda") -> MemoryPlan:
    from shared.specs.bandsplit import bandsplit_param_counts

    spec, train = config.model, config.train
    n = bandsplit_param_counts(spec)["total"]
    coef = BANDSPLIT_COEFFICIENTS[backend]
    c = _bytes(train.precision)
    # MLX under bf16 keeps ~78 % of its float32 activation bytes (measured: the scan, the
    # masks and the STFT domain stay float32), i.e. ~3.1 bytes per element.
    act_bytes = (4 if c == 4 else 3.1) if backend == "mlx" else c
    samples = config.data.segment_samples
    act = bandsplit_activation_elements(spec, train.batch_size, samples, train.gradient_checkpointing,
                                        attention)
    sh = act["shapes"]
    terms = static_terms(n, train, backend, c)
    details = {"band split": f"{sh['B']} x {sh['frames']} frames x {sh['bands']} bands",
               "dual-path modules": f"{spec.n_layers} x ({spec.sequence_layer} along time, then bands)"
                                    + (", checkpointed" if train.gradient_checkpointing else ""),
               "mask estimation": f"{sh['bands']} band MLPs of {spec.mask_hidden}, complex masks",
               "STFT loss and iSTFT": "multi-resolution STFTs of estimates and references"}
    for part, elements in act["parts"].items():
        terms.append(Term(f"activations: {part}",
                          act_bytes * sum(coef[kind] * v for kind, v in elements.items()), details[part]))
    terms.append(overhead_term(backend, device_type))
    B, T, K = sh["B"], sh["frames"], sh["bands"]
    candidates = [Allocation("band features", (B, T, K, spec.hidden), B * T * K * spec.hidden * act_bytes),
                  Allocation("mask MLP hidden (all bands)", (B, T, K, spec.mask_hidden),
                             B * T * K * spec.mask_hidden * act_bytes)]
    if spec.sequence_layer == "transformer" and attention != "flash":
        candidates.append(Allocation("time-layer attention scores", (B * K, spec.n_heads, T, T),
                                     B * K * spec.n_heads * T * T * c))
    if spec.sequence_layer == "mamba2":
        candidates.append(Allocation("Mamba2 in-projection (time layer)", (B * K, T, spec.conv_channels),
                                     B * K * T * spec.conv_channels * act_bytes))
    return MemoryPlan(backend, terms, max(candidates, key=lambda a: a.bytes), calibrated=backend == "mlx")


# ----------------------------------------------------------------------------- EchoStream
# Elements MLX keeps per activation of each kind, fitted to mx.get_peak_memory() over a
# designed set of shapes (bench/calibrate_memory.py --family echostream): "hidden" per
# row x model width, "ffn" per row x FFN width, "scores" per attention score, "logits" per
# output logit (softmax, its gradient), "ctc" per CTC lattice cell (MLX's forward
# algorithm keeps every frame's alphas), "frames" per fbank value (the features and the
# subsampler's activations, which scale with them; a separate subsampler-width term fitted
# to zero).
ECHO_COEFFICIENTS = {
    "mlx": {"hidden": 11.68, "ffn": 2.46, "scores": 1.32, "logits": 0.8, "ctc": 8.07, "frames": 2.65},
    # torch: derived from the saved-tensor list, not yet calibrated on a GPU.
    "torch": {"hidden": 10.0, "ffn": 2.0, "scores": 2.0, "logits": 2.0, "ctc": 4.0, "frames": 3.0},
}


def echostream_activation_elements(spec, batch: int, seconds: float, checkpointing: bool) -> dict:
    """Activation elements of one EchoStream training step, by kind (see
    ECHO_COEFFICIENTS) and by part, for `batch` utterances of `seconds`."""
    from shared.specs.echostream import num_segments
    from shared.synthetic import echostream_lengths

    n = echostream_lengths(spec, seconds)
    B, T, T4 = batch, n["frames"], n["encoder"]
    S, R, mem = spec.segment_length, spec.right_context, spec.use_memory
    N = max(num_segments(T4, spec), 1)
    Q = N * (S + R) + (N if mem else 0)              # right contexts, utterance, summaries
    K = N * (S + R) + ((N - 1) if mem else 0)        # memories, right contexts, utterance
    Lt = n["tgt"] + 1                                # [BOS] + target
    U = Lt * spec.unit_upsample
    D, Dm, Du = spec.embed_dim, spec.mt_embed_dim, spec.unit_embed_dim

    def layer(rows, width, ffn, heads, keys):
        return {"hidden": B * rows * width, "ffn": B * rows * ffn, "scores": B * heads * rows * keys}

    encoder_layer = layer(Q, D, spec.encoder_ffn_dim, spec.encoder_heads, K)
    layers = spec.encoder_layers
    if checkpointing:   # each layer's inputs kept, one layer's activations alive at a time
        encoder = {kind: v + (layers - 1) * (B * Q * D if kind == "hidden" else 0) / 12.0
                   for kind, v in encoder_layer.items()}
    else:
        encoder = {kind: v * layers for kind, v in encoder_layer.items()}
    parts = {
        "subsampler": {"frames": B * T * spec.n_mels},
        "Emformer encoder": encoder,
        "ASR CTC head": {"logits": B * T4 * spec.src_vocab_size, "ctc": B * T4 * (2 * n["src"] + 1)},
        "ST CTC head": {**{kind: v * spec.st_ctc_layers for kind, v in layer(
            T4, D, spec.encoder_ffn_dim, spec.encoder_heads, T4).items()},
            "logits": B * T4 * spec.tgt_vocab_size, "ctc": B * T4 * (2 * n["tgt"] + 1)},
        "MT decoder": {**{kind: v * spec.mt_layers for kind, v in layer(
            Lt, Dm, spec.mt_ffn_dim, spec.mt_heads, Lt + T4).items()},
            "logits": B * Lt * spec.tgt_vocab_size},
        "unit decoder": {**{kind: v * spec.unit_layers for kind, v in layer(
            U, Du, spec.unit_ffn_dim, spec.unit_heads, U).items()},
            "logits": B * U * spec.unit_vocab_size, "ctc": B * U * (2 * n["units"] + 1)},
    }
    shapes = {"B": B, "seconds": seconds, "frames": T, "encoder_frames": T4, "Q": Q, "K": K,
              "target": Lt, "unit_frames": U, **n}
    return {"parts": parts, "shapes": shapes}


def plan_echostream(config, backend: str, device_type: str = "cuda") -> MemoryPlan:
    """Peak memory of an EchoStream step: batches of the longest utterances the config
    allows (data.max_duration, data.max_tokens), typical text lengths for them."""
    from shared.specs.echostream import echostream_param_counts
    from shared.synthetic import longest_utterance_seconds

    spec, train = config.model, config.train
    n = echostream_param_counts(spec)["total"]
    coef = ECHO_COEFFICIENTS[backend]
    c = _bytes(train.precision)
    # MLX keeps this model's activations in float32 even under bf16 (the CTC lattices,
    # softmaxes and norms run in float32; measured), so they cost 4 bytes there.
    act_bytes = 4 if backend == "mlx" else c
    seconds = longest_utterance_seconds(config, train.batch_size)
    act = echostream_activation_elements(spec, train.batch_size, seconds, train.gradient_checkpointing)
    sh = act["shapes"]
    terms = static_terms(n, train, backend, c)
    for part, elements in act["parts"].items():
        detail = {"subsampler": f"{sh['B']} x {sh['frames']} fbank frames -> {sh['encoder_frames']}",
                  "Emformer encoder": f"{spec.encoder_layers} layers x {sh['Q']} queries x {sh['K']} keys"
                                      + (", checkpointed" if train.gradient_checkpointing else ""),
                  "ASR CTC head": f"{sh['encoder_frames']} frames x {spec.src_vocab_size} pieces",
                  "ST CTC head": f"{sh['encoder_frames']} frames x {spec.tgt_vocab_size} pieces",
                  "MT decoder": f"{sh['target']} target positions",
                  "unit decoder": f"{sh['unit_frames']} unit frames x {spec.unit_vocab_size} ids"}[part]
        terms.append(Term(f"activations: {part}", act_bytes * sum(coef[kind] * v for kind, v in elements.items()),
                          detail))
    terms.append(overhead_term(backend, device_type))
    B, T4, U = sh["B"], sh["encoder_frames"], sh["unit_frames"]
    largest = max([
        Allocation("ASR CTC logits", (B, T4, spec.src_vocab_size), B * T4 * spec.src_vocab_size * 4),
        Allocation("unit decoder logits", (B, U, spec.unit_vocab_size), B * U * spec.unit_vocab_size * 4),
        Allocation("Emformer attention scores", (B, spec.encoder_heads, sh["Q"], sh["K"]),
                   B * spec.encoder_heads * sh["Q"] * sh["K"] * c)], key=lambda a: a.bytes)
    return MemoryPlan(backend, terms, largest, calibrated=backend == "mlx")


# ----------------------------------------------------------------------------- dispatch
def plan(config, backend: str, attention: str | None = None) -> MemoryPlan:
    """The predicted memory of one training step of `config` on `backend`."""
    if backend not in ("mlx", "torch"):
        raise ValueError(f"unknown backend {backend!r}; expected mlx or torch")
    device_type = "cpu" if config.hardware.device == "cpu" else "cuda"
    result = _family_plan(config, backend, attention, device_type)
    parts = cpu_parts(config.train, config.family) if (backend, device_type) == ("mlx", "cpu") else 1
    if parts > 1:
        extra = Term("gradients of parallel CPU parts", parts_gradient_bytes(config, parts),
                     f"{parts} parts of each micro-batch on parallel CPU streams "
                     f"(train.cpu_streams), one float32 gradient each")
        result = dataclasses.replace(result, terms=result.terms + [extra])
    return result


def parts_gradient_bytes(config, parts: int) -> float:
    """What MLX's parallel CPU parts hold beyond one stream's step: each part's gradients
    are whole before they are added up, one float32 copy per extra part. (Their
    activations add up to the whole batch's at most.)"""
    return 4 * get_family(config.family).param_counts(config.model)["total"] * (parts - 1)


def _family_plan(config, backend: str, attention: str | None, device_type: str) -> MemoryPlan:
    # torch's SDPA uses its fused kernels on CUDA unless told otherwise, the math path elsewhere.
    default = "math" if device_type == "cpu" else "flash"
    if config.family == "lm":
        if backend == "mlx":
            return plan_lm_mlx(config.model, config.train, config.seq_length)
        return plan_lm_torch(config.model, config.train, config.seq_length,
                             attention or default, device_type)
    if config.family == "tflocoformer":
        return plan_tflocoformer(config.model, config.train, config.data.segment_samples, backend,
                                 attention or default, device_type)
    if config.family == "bandsplit":
        # MLX trains attention unfused (plan_tflocoformer decides that itself).
        return plan_bandsplit(config, backend, attention or ("math" if backend == "mlx" else default),
                              device_type)
    if config.family == "echostream":
        return plan_echostream(config, backend, device_type)
    raise ValueError(f"the memory planner does not cover family {config.family!r} yet")


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
    if config.family == "lm":
        seq = config.seq_length
        for shorter in (seq // 2, seq // 4):
            if shorter >= 64:
                add(f"sequence {seq} -> {shorter} tokens (keeps tokens/step only with batch x "
                    f"{seq // shorter})", {"train.seq_length": shorter}, keeps=False)
    elif config.family == "echostream":
        longest = config.data.max_duration
        for shorter in (longest / 2, longest / 3):
            add(f"utterances up to {longest:g} s -> {shorter:g} s (data.max_duration; longer ones "
                f"are skipped)", {"data.max_duration": shorter}, keeps=False)
    else:
        seconds = config.data.segment_seconds
        for shorter in (seconds / 2, seconds / 3):
            add(f"segment {seconds:g} s -> {shorter:g} s", {"data.segment_seconds": shorter}, keeps=False)
        if hasattr(config.model, "attention_chunk") and not config.model.attention_chunk:
            chunked = plan(with_overrides(config, {"model.attention_chunk": 256}), backend, attention)
            add(f"chunked attention (model.attention_chunk=256): largest allocation "
                f"{chunked.largest.bytes / GB:.1f} GB", {"model.attention_chunk": 256})
        # Fewer bins for TF-Locoformer; the band-split model keeps its bands and would
        # only get more frames from the shorter hop.
        if config.family == "tflocoformer" and config.model.n_fft > 1024:
            add(f"STFT n_fft {config.model.n_fft} -> {config.model.n_fft // 2}, hop "
                f"{config.model.hop} -> {config.model.hop // 2}",
                {"model.n_fft": config.model.n_fft // 2, "model.hop": config.model.hop // 2}, keeps=False)
    layers_key = {"lm": "num_layers", "echostream": "encoder_layers"}.get(config.family, "n_layers")
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
        from shared.synthetic import audio_seconds_per_sample
        seconds = config.train.batch_size * audio_seconds_per_sample(config)
        if getattr(config.model, "attention_chunk", 0):
            slowdown *= 0.9
        return min(1.0, seconds / 3.0) * slowdown
    tokens = config.train.batch_size * config.seq_length
    return min(1.0, tokens / 8192) * slowdown


def _escalations(config) -> list[dict]:
    """Changes beyond batch, checkpointing and precision, mildest first. Chunked attention
    computes the same function (only memory and speed change); a shorter training
    segment keeps the model but shows it less context per example, so it comes last."""
    if config.family in ("lm", "echostream"):
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
