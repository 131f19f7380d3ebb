"""TF-Locoformer's memory model (docs/memory.md)."""
from __future__ import annotations

from shared.planner.core import (GB, Allocation, MemoryModel, MemoryPlan, Term, dtype_bytes,
                                 default_attention, overhead_term, segment_escalations,
                                 segment_suggestions, static_terms)
from shared.specs.tflocoformer import tflocoformer_param_counts

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
    n = tflocoformer_param_counts(spec)["total"]
    coef = TFLOCO_COEFFICIENTS[backend]
    c = coef["bytes"] or dtype_bytes(train.precision)
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


def plan(config, backend: str, attention: str | None, device_type: str) -> MemoryPlan:
    return plan_tflocoformer(config.model, config.train, config.data.segment_samples, backend,
                             attention or default_attention(device_type), device_type)


def suggestions(config, backend: str, attention: str | None) -> list:
    """Shorter segments and chunked attention; then fewer bins (the band-split model keeps
    its bands and would only get more frames from a shorter hop, so only here)."""
    out = segment_suggestions(config, backend, attention)
    spec = config.model
    if spec.n_fft > 1024:
        out.append((f"STFT n_fft {spec.n_fft} -> {spec.n_fft // 2}, hop {spec.hop} -> {spec.hop // 2}",
                    {"model.n_fft": spec.n_fft // 2, "model.hop": spec.hop // 2}, False))
    return out


TFLOCOFORMER_MEMORY = MemoryModel(plan=plan, depth_key="n_layers",
                                  shorter_hint="a shorter data.segment_seconds", full_speed_units=3.0,
                                  suggestions=suggestions, escalations=segment_escalations)
