"""The band-split separator's memory model (docs/memory.md)."""
from __future__ import annotations

from shared.planner.core import (Allocation, MemoryModel, MemoryPlan, Term, dtype_bytes, default_attention,
                                 overhead_term, segment_escalations, segment_suggestions,
                                 static_terms)
from shared.specs.bandsplit import bandsplit_param_counts

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
    # Kinds in a fixed order: a set's order follows string hashing (PYTHONHASHSEED), which
    # changed the last bits of the planned peak from one process to the next.
    kinds = dict.fromkeys([*path_time, *path_band])
    module = {kind: path_time.get(kind, 0) + path_band.get(kind, 0) for kind in kinds}
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

    spec, train = config.model, config.train
    n = bandsplit_param_counts(spec)["total"]
    coef = BANDSPLIT_COEFFICIENTS[backend]
    c = dtype_bytes(train.precision)
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


def plan(config, backend: str, attention: str | None, device_type: str) -> MemoryPlan:
    # MLX trains attention unfused.
    return plan_bandsplit(config, backend,
                          attention or ("math" if backend == "mlx" else default_attention(device_type)),
                          device_type)


def activation_elements(config) -> dict:
    return bandsplit_activation_elements(
        config.model, config.train.batch_size, config.data.segment_samples,
        config.train.gradient_checkpointing)


# Measured by bench/calibrate_memory.py --family bandsplit: overrides of a base config that vary
# batch, lengths, widths, depth and checkpointing one at a time.
BANDSPLIT_CALIBRATION = ("configs/bandsplit_demo.yaml", [
    {}, {"train.batch_size": 1}, {"train.batch_size": 8}, {"data.segment_seconds": 2.0},
    {"model.hidden": 64}, {"model.n_layers": 4}, {"model.chunk_size": 32}, {"model.d_state": 32},
    {"model.expand": 4}, {"model.mask_mlp_hidden": 256}, {"train.gradient_checkpointing": True},
    {"train.gradient_checkpointing": True, "model.n_layers": 4},
    {"model.sequence_layer": "transformer"},
    {"model.sequence_layer": "transformer", "data.segment_seconds": 2.0},
    {"model.sequence_layer": "transformer", "model.ffn_mult": 4, "model.hidden": 64},
    {"model.sequence_layer": "transformer", "train.gradient_checkpointing": True},
    {"train.precision": "bf16"},
])


BANDSPLIT_MEMORY = MemoryModel(
    plan=plan, depth_key="n_layers", shorter_hint="a shorter data.segment_seconds", full_speed_units=3.0,
    suggestions=segment_suggestions, escalations=segment_escalations, coefficients=BANDSPLIT_COEFFICIENTS,
    activation_elements=activation_elements, calibration_design=BANDSPLIT_CALIBRATION)
