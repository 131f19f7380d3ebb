"""shared/eval/latency.py against SimulEval's own latency scorers on the same delays."""

from types import SimpleNamespace

import numpy as np
import pytest

from shared.eval.latency import LATENCY_METRICS, TimedOutput, latency_scores

scorers = pytest.importorskip("simuleval.evaluator.scorers.latency_scorer",
                              reason="simuleval is a dev dependency")
SIMULEVAL_SCORERS = {
    "AL": scorers.ALScorer, "LAAL": scorers.LAALScorer, "AP": scorers.APScorer,
    "DAL": scorers.DALScorer, "StartOffset": scorers.StartOffsetScorer,
    "EndOffset": scorers.EndOffsetScorer,
}


def random_outputs(seed: int, count: int = 12) -> list[TimedOutput]:
    """Sentences like a chunked streaming system writes them: several items per chunk,
    some written only after the source ended, one whose first item comes after the end."""
    rng = np.random.default_rng(seed)
    outputs = []
    for index in range(count):
        source_ms = float(rng.integers(800, 9000))
        chunk_ms = float(rng.choice([160, 320, 640]))
        n_items = int(rng.integers(1, 25))
        reads = np.minimum(np.ceil(np.sort(rng.uniform(0, source_ms * 1.1, n_items)) / chunk_ms) * chunk_ms,
                           source_ms)
        if index == 0:  # everything written after the speaker stopped (offline-like)
            reads = np.full(n_items, source_ms)
        delays = [float(d) for d in reads]
        if index == 1:  # SimulEval returns the first delay when it exceeds the source
            delays = [source_ms + 100.0] * n_items
        compute = np.cumsum(rng.uniform(1, 40, n_items))
        elapsed = [float(d + c) for d, c in zip(delays, compute)]
        reference = None if index % 3 == 0 else int(rng.integers(1, 30))
        outputs.append(TimedOutput(delays, source_ms, reference, elapsed))
    return outputs


def simuleval_instances(outputs):
    # The scorers read these attributes of an Instance (delays/elapsed, source_length,
    # reference_length, reference); a namespace holds the same numbers.
    return {
        index: SimpleNamespace(delays=list(o.delays), elapsed=list(o.elapsed), metrics={},
                               source_length=o.source_length, reference_length=o.reference_length,
                               reference=None if o.reference_length is None else "ref")
        for index, o in enumerate(outputs)
    }


@pytest.mark.parametrize("computation_aware", [False, True])
@pytest.mark.parametrize("use_ref_len", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_latency_equals_simuleval(seed, use_ref_len, computation_aware):
    outputs = random_outputs(seed)
    ours = latency_scores(outputs, computation_aware=computation_aware,
                          use_reference_length=use_ref_len)
    for name in LATENCY_METRICS:
        scorer = SIMULEVAL_SCORERS[name](computation_aware=computation_aware, use_ref_len=use_ref_len)
        theirs = scorer(simuleval_instances(outputs))
        assert ours[name] == pytest.approx(theirs, rel=1e-12, abs=1e-9), name


def test_latency_by_hand():
    # 4 words over 2000 ms, written at 500, 1000, 2000, 2000 ms; reference of 4 words:
    # AL = mean over tau=3 of (500-0, 1000-500, 2000-1000) = 2000/3.
    scores = latency_scores([TimedOutput([500, 1000, 2000, 2000], 2000, 4)])
    assert scores["AL"] == pytest.approx(2000 / 3)
    assert scores["AP"] == pytest.approx(5500 / (2000 * 4))
    assert scores["StartOffset"] == 500 and scores["EndOffset"] == 0


def test_unknown_metric_and_missing_elapsed_are_errors():
    with pytest.raises(ValueError, match="unknown latency metrics"):
        latency_scores([TimedOutput([1.0], 2.0)], metrics=["XYZ"])
    with pytest.raises(ValueError, match="elapsed"):
        latency_scores([TimedOutput([1.0], 2.0)], computation_aware=True)
