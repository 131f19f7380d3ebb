"""Multi-chunk training (model.train_segment_lengths): the ST CTC best path against every
path enumerated, the MT decoder's reads against a hand-made alignment, both backends'
losses equal with a batch's own segment length, and the encoder streamed in any segment
length (or the whole utterance) equal to its parallel forward."""
import itertools

import mlx.core as mx
import numpy as np
import pytest
import torch

from mlx_models import echostream as mes
from shared.specs.echostream import (BLANK, EchoStreamSpec, chunk_segment_length, ctc_best_path_first_frames,
                                     mt_memory_limits)
from tests.helpers import one_torch_thread  # noqa: F401  (an autouse fixture)
from tests.parity.test_echostream_parity import make_batch, tiny_spec, to_mx, to_torch
from tests.test_echostream_streaming import build, parallel_encode, stream_encode, utterance
from torch_models import echostream as tes


def brute_force_first_frames(log_probs, target):
    """Every label path of T frames, kept if it collapses to the target; the best one's
    first frame of each label."""
    best, best_path = -np.inf, None
    for path in itertools.product(range(log_probs.shape[1]), repeat=log_probs.shape[0]):
        collapsed = [p for i, p in enumerate(path) if p != BLANK and (i == 0 or p != path[i - 1])]
        if collapsed == list(target):
            score = sum(log_probs[t, p] for t, p in enumerate(path))
            if score > best:
                best, best_path = score, path
    return [t for t, p in enumerate(best_path) if p != BLANK and (t == 0 or p != best_path[t - 1])]


def test_best_path_equals_enumerating_every_path():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(120):
        T, S = int(rng.integers(2, 7)), int(rng.integers(1, 4))
        log_probs = np.log(rng.dirichlet(np.ones(4), T))
        target = rng.integers(1, 4, S)
        if T < S + int((target[1:] == target[:-1]).sum()):
            continue   # no alignment exists
        assert list(ctc_best_path_first_frames(log_probs, target)) == brute_force_first_frames(log_probs, target)
        checked += 1
    assert checked > 60


def test_each_query_reads_to_the_end_of_its_tokens_segment():
    # 12 frames; the ST CTC emits target tokens 5, 6, 7 at frames 1, 6 and 10.
    T, V = 12, 9
    log_probs = np.full((1, T, V), np.log(1e-3))
    log_probs[0, :, BLANK] = 0.0
    for frame, token in ((1, 5), (6, 6), (10, 7)):
        log_probs[0, frame, token] = 0.0
    tokens = np.array([[5, 6, 7]])
    limits = mt_memory_limits(log_probs, tokens, np.array([3]), np.array([T]), segment_length=4, n_queries=5)
    # segments [0,4) [4,8) [8,12): tokens in segments 0, 1, 2; EOS and padding see all
    assert limits.tolist() == [[4, 8, 12, 12, 12]]
    limits = mt_memory_limits(log_probs, tokens, np.array([3]), np.array([11]), segment_length=3, n_queries=4)
    assert limits.tolist() == [[3, 9, 11, 11]]   # frame 10's segment ends at 12 > 11 frames


def test_chunk_sizes_map_to_segments():
    spec = EchoStreamSpec(train_segment_lengths=[4, 8, 0])
    assert spec.train_segment_lengths == (4, 8, 0)
    assert [chunk_segment_length(spec, ms) for ms in (160, 320, 0, 100)] == [4, 8, 0, 2]
    assert chunk_segment_length(EchoStreamSpec(), 160) == 16   # not multi-chunk: its own segment


@pytest.mark.parametrize("segment_length", [2, 5, 0])
def test_losses_match_across_backends_with_a_batch_segment_length(segment_length):
    spec = tiny_spec()
    data = make_batch(spec, seed=4)
    data["segment_length"] = np.full(len(data["features"]), segment_length, np.int32)
    mlx_terms = mes.loss_terms(build("mlx", spec, seed=1), to_mx(data))
    with torch.no_grad():
        torch_terms = tes.loss_terms(build("torch", spec, seed=1), to_torch(data))
        del data["segment_length"]
        default_terms = tes.loss_terms(build("torch", spec, seed=1), to_torch(data))
    for name in ("loss", "asr_ctc", "st_ctc", "mt", "unit_ctc"):
        assert mlx_terms[name].item() == pytest.approx(torch_terms[name].item(), rel=2e-5), name
    # the segment length and the restricted reads change what the model computes
    assert torch_terms["mt"].item() != pytest.approx(default_terms["mt"].item(), rel=1e-4)


@pytest.mark.parametrize("backend", ["mlx", "torch"])
@pytest.mark.parametrize("segment_length", [3, 0], ids=["3 frames", "whole"])
def test_streaming_in_another_segment_length_equals_the_parallel_encoder(backend, segment_length):
    spec = tiny_spec(n_mels=16)
    model = build(backend, spec)
    features = utterance(150, seed=5)
    lengths = np.array([features.shape[1]], np.int32)
    if backend == "mlx":
        expected = np.array(model.encode(mx.array(features), mx.array(lengths), segment_length)[0])[0]
    else:
        with torch.no_grad():
            expected = model.encode(torch.from_numpy(features), torch.from_numpy(lengths), segment_length)[0].numpy()[0]
    original_init = model.init_stream
    model.init_stream = lambda: original_init(segment_length)
    got = stream_encode(backend, model, features, [13, 7, 29])
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=2e-5)
    # a different segment length is a different encoder output
    assert np.abs(expected - parallel_encode(backend, model, features)).max() > 1e-3


@pytest.mark.parametrize("backend", ["mlx", "torch"])
@pytest.mark.parametrize("window", [1, 5])
def test_st_ctc_with_a_window_streams_as_its_forward(backend, window):
    """model.st_ctc_left_context: the head fed frames a few at a time (its cache cut to the
    window) gives the logits of its forward over the whole sequence, which differ from the
    unbounded head's."""
    spec = tiny_spec(st_ctc_left_context=window, st_ctc_layers=2)
    model = build(backend, spec)
    frames = np.random.default_rng(3).standard_normal((1, 23, spec.embed_dim)).astype(np.float32)
    arr = mx.array if backend == "mlx" else torch.from_numpy
    as_np = (lambda a: np.array(a)) if backend == "mlx" else (lambda a: a.detach().numpy())
    with torch.no_grad():
        whole = as_np(model.st_ctc(arr(frames)))
        cache, pieces = [], []
        for start, stop in [(0, 4), (4, 5), (5, 13), (13, 23)]:
            pieces.append(as_np(model.st_ctc.stream(arr(frames[:, start:stop]), cache)))
        unbounded = as_np(build(backend, tiny_spec(st_ctc_layers=2)).st_ctc(arr(frames)))
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), whole, atol=2e-5, rtol=1e-5)
    assert all(k.shape[1] <= window - 1 for k, _ in cache)
    assert np.abs(whole[:, window:] - unbounded[:, window:]).max() > 1e-3
