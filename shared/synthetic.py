"""Random training batches of the right shapes for any family, without data files: what
the benchmark times, the batch-size finder probes and the memory calibration measures.

    random_batch(config, batch_size, rng) -> one micro-batch, as the family's task makes it
"""
from __future__ import annotations

import numpy as np

def lm_batch(config, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """(batch, seq + 1) random token ids."""
    return rng.integers(0, config.model.vocab_size, (batch_size, config.seq_length + 1)).astype(np.int32)


def separation_batch(config, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random stems of one training segment and their mixture."""
    spec = config.model
    shape = (batch_size, spec.n_sources, spec.audio_channels, config.data.segment_samples)
    sources = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    return {"mixture": sources.sum(axis=1), "sources": sources}


# Text per second of speech, for planning and synthetic batches: ~4 source and ~3 target
# subword tokens, ~25 deduplicated discrete units (HuBERT units are 50 Hz before merging).
SRC_TOKENS_PER_S, TGT_TOKENS_PER_S, UNITS_PER_S = 4.0, 3.0, 25.0


def echostream_lengths(spec, seconds: float) -> dict[str, int]:
    """Typical sequence lengths of an utterance of `seconds`, each short enough for its CTC
    head to align: feature frames, source tokens, target tokens, units."""
    from shared.specs.echostream import encoder_length

    frames = int(seconds * 100)                              # 10 ms fbank frames
    encoder = encoder_length(frames, spec)
    src = max(1, min(round(seconds * SRC_TOKENS_PER_S), encoder // 2))
    tgt = max(1, min(round(seconds * TGT_TOKENS_PER_S), encoder // 2))
    units = max(1, min(round(seconds * UNITS_PER_S), (tgt + 1) * spec.unit_upsample // 2))
    return {"frames": frames, "encoder": encoder, "src": src, "tgt": tgt, "units": units}


def longest_utterance_seconds(config, batch_size: int) -> float:
    """The longest utterances a batch can hold: data.max_duration, or less where
    data.max_tokens (padded feature frames per batch) allows less at this batch size."""
    d = config.data
    return min(d.max_duration, d.max_tokens / (100 * batch_size))


def echostream_batch(config, batch_size: int, rng: np.random.Generator,
                     seconds: float | None = None) -> dict[str, np.ndarray]:
    """Utterances of `seconds` (default: the longest the config's batches can hold):
    normalised-looking features, and source, target and unit sequences of typical
    lengths (echostream_lengths)."""
    from shared.specs.echostream import BOS, EOS

    spec, B = config.model, batch_size
    seconds = longest_utterance_seconds(config, B) if seconds is None else seconds
    n = echostream_lengths(spec, seconds)
    full = lambda k: np.full(B, k, np.int32)  # noqa: E731
    tgt = rng.integers(EOS + 1, spec.tgt_vocab_size, (B, n["tgt"])).astype(np.int32)
    return {
        "features": rng.standard_normal((B, n["frames"], spec.n_mels)).astype(np.float32),
        "feature_lengths": full(n["frames"]),
        "src_tokens": rng.integers(EOS + 1, spec.src_vocab_size, (B, n["src"])).astype(np.int32),
        "src_lengths": full(n["src"]), "tgt_tokens": tgt, "tgt_lengths": full(n["tgt"]),
        "prev_output_tokens": np.concatenate([np.full((B, 1), BOS, np.int32), tgt], axis=1),
        "target": np.concatenate([tgt, np.full((B, 1), EOS, np.int32)], axis=1),
        "units": rng.integers(1, spec.n_units + 1, (B, n["units"])).astype(np.int32),
        "unit_lengths": full(n["units"])}


BATCHES = {"lm": lm_batch, "tflocoformer": separation_batch, "bandsplit": separation_batch,
           "echostream": echostream_batch}


def random_batch(config, batch_size: int, rng: np.random.Generator):
    return BATCHES[config.family](config, batch_size, rng)


def audio_seconds_per_sample(config) -> float:
    """Seconds of audio in one example of an audio family's random batch."""
    if config.family == "echostream":
        return longest_utterance_seconds(config, config.train.batch_size)
    return config.data.segment_seconds
