"""EchoStream's memory model (docs/memory.md)."""
from __future__ import annotations

from shared.planner.core import (Allocation, MemoryModel, MemoryPlan, Term, dtype_bytes, overhead_term,
                                 static_terms)
from shared.specs.echostream import echostream_param_counts
from shared.tasks.echostream import echostream_lengths, longest_utterance_seconds

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


def echostream_activation_elements(spec, batch: int, seconds: float, checkpointing: bool,
                                   stacked_ctc: bool = False) -> dict:
    """Activation elements of one EchoStream training step, by kind (see
    ECHO_COEFFICIENTS) and by part, for `batch` utterances of `seconds`. stacked_ctc: the
    three CTC lattices are one, padded to the longest frames and labels (MLX's ctc_losses)."""
    n = echostream_lengths(spec, seconds)
    B, T, T4 = batch, n["frames"], n["encoder"]
    R, mem = spec.right_context, spec.use_memory

    def queries_keys(S: int) -> tuple[int, int]:
        N = max(-(-T4 // S), 1)
        return (N * (S + R) + (N if mem else 0),       # right contexts, utterance, summaries
                N * (S + R) + ((N - 1) if mem else 0))  # memories, right contexts, utterance
    # Multi-chunk training: the segment length with the most attention scores (the shortest).
    segments = [S or max(T4, 1) for S in spec.train_segment_lengths] or [spec.segment_length]
    Q, K = max((queries_keys(S) for S in segments), key=lambda qk: qk[0] * qk[1])
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
    if stacked_ctc:
        for part in ("ASR CTC head", "ST CTC head", "unit decoder"):
            del parts[part]["ctc"]
        labels = 2 * max(n["src"], n["tgt"], n["units"]) + 1
        parts["CTC lattices (stacked)"] = {"ctc": 3 * B * max(T4, U) * labels}
    shapes = {"B": B, "seconds": seconds, "frames": T, "encoder_frames": T4, "Q": Q, "K": K,
              "target": Lt, "unit_frames": U, **n}
    return {"parts": parts, "shapes": shapes}


def plan_echostream(config, backend: str, device_type: str = "cuda") -> MemoryPlan:
    """Peak memory of an EchoStream step: batches of the longest utterances the config
    allows (data.max_duration, data.max_tokens), typical text lengths for them."""
    spec, train = config.model, config.train
    n = echostream_param_counts(spec)["total"]
    coef = ECHO_COEFFICIENTS[backend]
    c = dtype_bytes(train.precision)
    # MLX keeps this model's activations in float32 even under bf16 (the CTC lattices,
    # softmaxes and norms run in float32; measured), so they cost 4 bytes there.
    act_bytes = 4 if backend == "mlx" else c
    seconds = longest_utterance_seconds(config, train.batch_size)
    act = echostream_activation_elements(spec, train.batch_size, seconds, train.gradient_checkpointing,
                                         stacked_ctc=backend == "mlx")
    sh = act["shapes"]
    terms = static_terms(n, train, backend, c)
    for part, elements in act["parts"].items():
        detail = {"subsampler": f"{sh['B']} x {sh['frames']} fbank frames -> {sh['encoder_frames']}",
                  "Emformer encoder": f"{spec.encoder_layers} layers x {sh['Q']} queries x {sh['K']} keys"
                                      + (", checkpointed" if train.gradient_checkpointing else ""),
                  "ASR CTC head": f"{sh['encoder_frames']} frames x {spec.src_vocab_size} pieces",
                  "ST CTC head": f"{sh['encoder_frames']} frames x {spec.tgt_vocab_size} pieces",
                  "MT decoder": f"{sh['target']} target positions",
                  "unit decoder": f"{sh['unit_frames']} unit frames x {spec.unit_vocab_size} ids",
                  "CTC lattices (stacked)": f"3 x {sh['B']} x {max(sh['encoder_frames'], sh['unit_frames'])} "
                                            f"frames x {2 * max(sh['src'], sh['tgt'], sh['units']) + 1} states"}[part]
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


def plan(config, backend: str, attention: str | None, device_type: str) -> MemoryPlan:
    return plan_echostream(config, backend, device_type)


def shorter_utterances(config, backend: str, attention: str | None) -> list:
    longest = config.data.max_duration
    return [(f"utterances up to {longest:g} s -> {shorter:g} s (data.max_duration; longer ones "
             f"are skipped)", {"data.max_duration": shorter}, False) for shorter in (longest / 2, longest / 3)]


def activation_elements(config) -> dict:
    return echostream_activation_elements(
        config.model, config.train.batch_size, longest_utterance_seconds(config, config.train.batch_size),
        config.train.gradient_checkpointing, stacked_ctc=True)   # calibrated on MLX


# Measured by bench/calibrate_memory.py --family echostream: overrides of a base config that vary
# batch, lengths, widths, depth and checkpointing one at a time.
ECHOSTREAM_CALIBRATION = ("configs/m2_8gb.yaml", [
    {}, {"train.batch_size": 1}, {"train.batch_size": 4}, {"data.max_duration": 5.0},
    {"data.max_duration": 20.0, "data.max_tokens": 5000, "train.batch_size": 1},
    {"model.encoder_layers": 8}, {"model.src_vocab_size": 12000}, {"model.tgt_vocab_size": 4000},
    {"model.n_units": 3000}, {"model.unit_upsample": 20}, {"model.encoder_ffn_dim": 2048},
    {"model.embed_dim": 256, "model.encoder_heads": 4}, {"model.segment_length": 64},
    {"train.gradient_checkpointing": True},
    {"train.gradient_checkpointing": True, "model.encoder_layers": 8},
    {"model.subsample_channels": 384}, {"train.precision": "bf16", "data.max_duration": 5.0},
    {"model.embed_dim": 96, "model.encoder_layers": 2, "model.encoder_ffn_dim": 256,  # the demo's shape
     "model.subsample_channels": 192, "model.src_vocab_size": 40, "model.tgt_vocab_size": 40,
     "model.n_units": 100, "model.mt_embed_dim": 64, "model.mt_layers": 1, "model.mt_ffn_dim": 128,
     "model.unit_embed_dim": 64, "model.unit_layers": 1, "model.unit_ffn_dim": 128,
     "model.unit_upsample": 8, "train.batch_size": 4},
])


ECHOSTREAM_MEMORY = MemoryModel(
    plan=plan, depth_key="encoder_layers", shorter_hint="a shorter data.max_duration", full_speed_units=3.0,
    suggestions=shorter_utterances, coefficients=ECHO_COEFFICIENTS, activation_elements=activation_elements,
    calibration_design=ECHOSTREAM_CALIBRATION)
