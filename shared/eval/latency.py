"""Latency of simultaneous translation, computed as SimulEval computes it.

A streaming system emits its output (words, or units) while it reads the source. For each
emitted item we record its *delay*: how much source had been read when it was written
(milliseconds of audio for speech input). Computation-aware scores use the *elapsed* time
instead: the delay plus the wall-clock time the system had spent computing so far.

The scorers below follow SimulEval 1.1 (``simuleval/evaluator/scorers/latency_scorer.py``)
line for line, including its conventions, so our numbers can be put next to papers that
report SimulEval's (StreamSpeech reports AL, LAAL, AP, DAL, StartOffset and EndOffset):

- AL and LAAL stop at the first item written after the whole source was read (tau); when
  the first delay already exceeds the source length, the score is that delay.
- With a reference, |Y| is the reference length (``use_ref_len``); LAAL takes the longer
  of reference and hypothesis. DAL always uses the hypothesis length.
- Corpus scores are the plain mean of the per-sentence scores; sentences without any
  output are skipped (SimulEval warns and skips them too).
tests/test_latency.py checks every metric against SimulEval's own scorers.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import mean
from typing import Callable, Sequence

LATENCY_METRICS = ("AL", "LAAL", "AP", "DAL", "StartOffset", "EndOffset")


@dataclass
class TimedOutput:
    """One sentence's output with the time each item was written.

    delays: source read (ms) when each output item was written, non-decreasing.
    source_length: length of the whole source (ms).
    reference_length: number of items in the reference (words or units), or None.
    elapsed: delays plus the compute time spent so far (ms), for computation-aware scores.
    """

    delays: Sequence[float]
    source_length: float
    reference_length: int | None = None
    elapsed: Sequence[float] | None = None


def average_lagging(delays, source_length, target_length) -> float:
    if delays[0] > source_length:
        return float(delays[0])
    rate = target_length / source_length  # target items per unit of source
    lag_sum, tau = 0.0, 0
    for index, delay in enumerate(delays):
        lag_sum += delay - index / rate
        tau = index + 1
        if delay >= source_length:
            break
    return lag_sum / tau


def length_adaptive_average_lagging(delays, source_length, target_length) -> float:
    # AL with |Y| = max(reference, hypothesis): over-long outputs are not rewarded.
    return average_lagging(delays, source_length, max(len(delays), target_length))


def average_proportion(delays, source_length, target_length) -> float:
    return sum(delays) / (source_length * target_length)


def differentiable_average_lagging(delays, source_length, target_length) -> float:
    del target_length  # DAL uses the hypothesis length (as SimulEval does)
    rate = len(delays) / source_length
    total, previous = 0.0, 0.0
    for index, delay in enumerate(delays):
        adjusted = delay if index == 0 else max(delay, previous + 1 / rate)
        total += adjusted - index / rate
        previous = adjusted
    return total / len(delays)


def start_offset(delays, source_length, target_length) -> float:
    return float(delays[0])


def end_offset(delays, source_length, target_length) -> float:
    return float(delays[-1] - source_length)


SENTENCE_SCORERS: dict[str, Callable[[Sequence[float], float, float], float]] = {
    "AL": average_lagging,
    "LAAL": length_adaptive_average_lagging,
    "AP": average_proportion,
    "DAL": differentiable_average_lagging,
    "StartOffset": start_offset,
    "EndOffset": end_offset,
}


def latency_scores(
    outputs: Sequence[TimedOutput],
    *,
    computation_aware: bool = False,
    use_reference_length: bool = True,
    metrics: Sequence[str] = LATENCY_METRICS,
) -> dict[str, float]:
    """Corpus latency: the mean over sentences of each metric (NaN if nothing was written)."""
    unknown = [name for name in metrics if name not in SENTENCE_SCORERS]
    if unknown:
        raise ValueError(f"unknown latency metrics {unknown}; known: {list(SENTENCE_SCORERS)}")
    per_metric: dict[str, list[float]] = {name: [] for name in metrics}
    for output in outputs:
        delays = output.elapsed if computation_aware else output.delays
        if computation_aware and delays is None:
            raise ValueError("computation-aware latency needs the elapsed times of each output")
        if not delays:
            continue
        if use_reference_length and output.reference_length is not None:
            target_length = output.reference_length
        else:
            target_length = len(delays)
        for name in metrics:
            per_metric[name].append(SENTENCE_SCORERS[name](delays, output.source_length, target_length))
    return {name: (mean(values) if values else float("nan")) for name, values in per_metric.items()}
