"""Planner accuracy: every shipped config, scaled to run on this machine, predicted peak
vs measured peak (mx.get_peak_memory on MLX).

    python bench/memory_accuracy.py [--markdown FILE]

tests/test_memory.py checks the same rows against a +-15 % bound. The scaled versions keep
each config's structure -- precision, checkpointing, accumulation, head grouping, tied or
untied embeddings, MLP ratio -- and shrink width, depth, vocabulary, batch and sequence.
"""
from __future__ import annotations

import argparse
import sys

# name -> (shipped config, overrides that scale it to this machine)
SCALED = {
    "tiny": ("configs/tiny.yaml", {}),
    "m4max (medium, bf16)": ("configs/m4max.yaml", {
        "model.vocab_size": 2048, "model.hidden_size": 256, "model.num_layers": 4,
        "model.num_heads": 4, "model.num_kv_heads": 1, "model.intermediate_size": 1024,
        "train.batch_size": 4, "train.seq_length": 256, "train.gradient_accumulation_steps": 2}),
    "m4max (medium, fp32)": ("configs/m4max.yaml", {
        "model.vocab_size": 2048, "model.hidden_size": 256, "model.num_layers": 4,
        "model.num_heads": 4, "model.num_kv_heads": 1, "model.intermediate_size": 1024,
        "train.batch_size": 4, "train.seq_length": 256, "train.precision": "fp32"}),
    "m4max_large (checkpointing)": ("configs/m4max_large.yaml", {
        "model.vocab_size": 2048, "model.hidden_size": 384, "model.num_layers": 4,
        "model.num_heads": 6, "model.num_kv_heads": 1, "model.intermediate_size": 1536,
        "train.batch_size": 2, "train.seq_length": 192, "train.gradient_accumulation_steps": 2}),
    "m2_8gb_lm": ("configs/m2_8gb_lm.yaml", {
        "model.vocab_size": 2048, "model.hidden_size": 128, "model.num_layers": 4,
        "model.num_heads": 2, "model.num_kv_heads": 1, "model.intermediate_size": 352,
        "train.batch_size": 4, "train.seq_length": 256, "train.gradient_accumulation_steps": 2}),
    "musdb18_ultra_safe (scaled)": ("configs/musdb18_ultra_safe.yaml", {
        "data.sample_rate": 8000, "data.segment_seconds": 1.0, "model.n_fft": 512, "model.hop": 128,
        "model.emb_dim": 32, "model.n_layers": 2, "model.ffn_hidden_dim": (128, 128),
        "train.precision": "fp32"}),
    "musdb18_small (checkpointing, scaled)": ("configs/musdb18_small.yaml", {
        "data.sample_rate": 8000, "data.segment_seconds": 1.0, "model.n_fft": 512, "model.hop": 128,
        "model.emb_dim": 48, "model.n_heads": 3, "model.n_layers": 3, "model.ffn_hidden_dim": (96, 96),
        "train.gradient_accumulation_steps": 1}),
    "musdb18 XLarge (batch 2, scaled)": ("configs/musdb18.yaml", {
        "data.sample_rate": 8000, "data.segment_seconds": 0.5, "model.n_fft": 256, "model.hop": 64,
        "model.emb_dim": 32, "model.n_heads": 4, "model.n_layers": 2, "model.ffn_hidden_dim": (64, 64),
        "train.batch_size": 2, "train.gradient_accumulation_steps": 1}),
    "bandsplit_demo": ("configs/bandsplit_demo.yaml", {}),
    "bandsplit_32gb (bf16, checkpointing, scaled)": ("configs/bandsplit_32gb.yaml", {
        "data.sample_rate": 8000, "data.segment_seconds": 1.0, "model.n_fft": 256, "model.hop": 64,
        "model.hidden": 32, "model.n_layers": 2, "model.d_state": 16, "model.head_dim": 16,
        "model.chunk_size": 16, "train.gradient_accumulation_steps": 2}),
    "bandsplit_full (bf16, scaled)": ("configs/bandsplit_full.yaml", {
        "data.sample_rate": 8000, "data.segment_seconds": 1.0, "model.n_fft": 256, "model.hop": 64,
        "model.hidden": 32, "model.n_layers": 2, "model.d_state": 16, "model.head_dim": 16,
        "model.chunk_size": 16, "train.batch_size": 2, "train.gradient_accumulation_steps": 2}),
    "m2_8gb (EchoStream, accumulation 2)": ("configs/m2_8gb.yaml", {"train.gradient_accumulation_steps": 2}),
    "echostream_full (bf16, scaled)": ("configs/echostream_full.yaml", {
        "model.encoder_layers": 4, "train.batch_size": 2, "data.max_tokens": 1000}),
    "echostream_demo": ("configs/echostream_demo.yaml", {}),
    "cuda_lm (on MLX)": ("configs/cuda_lm.yaml", {
        "model.vocab_size": 2048, "model.hidden_size": 256, "model.num_layers": 4,
        "model.num_heads": 4, "model.num_kv_heads": 1, "model.intermediate_size": 1024,
        "train.batch_size": 2, "train.seq_length": 256, "train.gradient_accumulation_steps": 2,
        "train.compile": False}),
}


def scaled_config(name: str):
    from shared.engine.config import load_config
    from shared.planner.core import with_overrides

    path, overrides = SCALED[name]
    config = load_config(path)
    # One stream, as MLX trains on a GPU. With parallel CPU parts the peak depends on how
    # the parts' threads interleave (tests/test_memory.py bounds it separately).
    overrides = {"train.cpu_streams": 1, **overrides}
    if "train.seq_length" in overrides:     # the model must hold the sequences it trains on
        model_max = max(config.model.max_seq_length, overrides["train.seq_length"])
        overrides = {"model.max_seq_length": model_max, **overrides}
    return with_overrides(config, overrides)


def measure_peak(config) -> int:
    """Peak memory of one full training step (after a first step allocated AdamW state)."""
    import gc

    import mlx.core as mx
    import numpy as np

    from mlx_models.trainer import Trainer
    from shared.tasks import random_batch

    trainer = Trainer(config.model, config.train)
    batch = random_batch(config, config.train.batch_size, np.random.default_rng(0))
    micro = [batch] * config.train.gradient_accumulation_steps
    trainer.train_step(micro, 1e-4)
    gc.collect()
    mx.reset_peak_memory()
    trainer.train_step(micro, 1e-4)
    peak = mx.get_peak_memory()
    del trainer
    gc.collect()
    return peak


def rows() -> list[dict]:
    from shared.planner.core import plan

    out = []
    for name in SCALED:
        config = scaled_config(name)
        predicted = plan(config, "mlx").peak_bytes
        measured = measure_peak(config)
        out.append({"config": name, "predicted_mb": predicted / 1e6, "measured_mb": measured / 1e6,
                    "error": predicted / measured - 1})
    return out


def markdown(table: list[dict]) -> str:
    lines = ["| config (scaled) | predicted MB | measured MB | error |", "|---|---|---|---|"]
    lines += [f"| {r['config']} | {r['predicted_mb']:.1f} | {r['measured_mb']:.1f} | {r['error']:+.1%} |"
              for r in table]
    return "\n".join(lines) + "\n"


def main() -> None:
    import mlx_models  # noqa: F401  (optimized BLAS before mlx.core)

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--markdown", help="also write the table to this file")
    args = p.parse_args()
    text = markdown(rows())
    print(text)
    if args.markdown:
        open(args.markdown, "w").write(text)


if __name__ == "__main__":
    sys.exit(main())
