"""Simultaneous translation (shared/simultaneous.py with the backends' stream sessions):
the KV-cached MT decoder step equals the full decoder, the offline policy equals batch
decoding, both backends write the same tokens and units at the same times under every
policy, and the policies follow their rules (checked on a scripted session)."""
import mlx.core as mx
import numpy as np
import pytest
import torch

from mlx_models.stream import StreamSession as MLXSession
from shared.audio.fbank import CMVN, FbankOptions, StreamingFbank
from shared.data.s2ut import mt_token_ids, unit_sequence
from shared.simultaneous import Policy, SimultaneousTranslator, word_delays
from shared.specs.echostream import BOS, EOS
from tests.helpers import one_torch_thread  # noqa: F401  (an autouse fixture)
from tests.parity.test_echostream_parity import tiny_spec
from tests.test_echostream_streaming import build
from torch_models.stream import StreamSession as TorchSession

RATE = 16000
N_MELS = 80   # the streaming fbank's
IDENTITY = CMVN(np.zeros(N_MELS), np.ones(N_MELS))


def spec(**changes):
    return tiny_spec(n_mels=N_MELS, tgt_vocab_size=24, **changes)


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t * (1 + 0.3 * np.sin(3 * t))) + 0.05 * rng.standard_normal(t.size)
            ).astype(np.float32)


def model_for(backend, **changes):
    """The tiny random model with the EOS row of its output projection zeroed: random
    weights often predict EOS first, and a translation of several tokens is what the tests
    need (the scripted tests below cover EOS)."""
    model = build(backend, spec(**changes))
    weight = model.mt_decoder.out_proj.weight
    if backend == "mlx":
        row = mx.arange(weight.shape[0])[:, None] == EOS
        model.mt_decoder.out_proj.weight = mx.where(row, 0.0, weight)
    else:
        with torch.no_grad():
            weight[EOS] = 0.0
    return model


def session(backend, model):
    return MLXSession(model) if backend == "mlx" else TorchSession(model, torch.device("cpu"))


def to_numpy(x):
    return x.detach().numpy() if isinstance(x, torch.Tensor) else np.array(x)


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_cached_decoder_steps_equal_the_full_decoder(backend):
    """Tokens fed one (or three) at a time against frames added in two pieces give the
    logits and states of the decoder run over the whole sequence at once."""
    s = spec()
    model = build(backend, s)
    rng = np.random.default_rng(1)
    frames = rng.standard_normal((1, 23, s.embed_dim)).astype(np.float32)
    tokens = np.concatenate([[BOS], rng.integers(4, s.tgt_vocab_size, 9)]).astype(np.int32)[None]
    arr = mx.array if backend == "mlx" else torch.from_numpy
    decoder = model.mt_decoder
    with torch.no_grad():
        no_mask = arr(np.zeros((1, 1, 1, 23), np.float32))
        full_logits, full_states = map(to_numpy, decoder(arr(tokens), arr(frames), no_mask))
        cache = decoder.new_cache()
        decoder.extend_memory(cache, arr(frames[:, :10]))
        decoder.extend_memory(cache, arr(frames[:, 10:]))
        logits, states = [], []
        for start, stop in [(0, 1), (1, 2), (2, 5), (5, 6), (6, 10)]:
            out_logits, out_states, keys_values = decoder.step(arr(tokens[:, start:stop]), cache)
            decoder.commit(cache, keys_values)
            logits.append(to_numpy(out_logits))
            states.append(to_numpy(out_states))
    np.testing.assert_allclose(np.concatenate(logits, axis=1), full_logits, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(np.concatenate(states, axis=1), full_states, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("unit_causal", [False, True], ids=["units-see-all", "units-causal"])
@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_offline_policy_equals_batch_decoding(backend, unit_causal):
    """Written after the audio has ended, the translation and units are batch greedy
    decoding's on the same features (a causal unit decoder: through its cached step)."""
    model = model_for(backend, unit_causal=unit_causal)
    audio = speech(1.7)
    written = SimultaneousTranslator(session(backend, model), Policy("offline"), IDENTITY, RATE,
                                     max_target_len=15).run(audio, RATE * 320 // 1000)
    features = StreamingFbank(FbankOptions(sample_rate=RATE)).accept_waveform(audio)[None]
    lengths = np.array([features.shape[1]], np.int32)
    arr = mx.array if backend == "mlx" else torch.from_numpy
    with torch.no_grad():
        decoded = {k: to_numpy(v) for k, v in model.decode(
            {"features": arr(features.astype(np.float32)), "feature_lengths": arr(lengths)},
            max_target_len=15).items()}
    expected_tokens = mt_token_ids(decoded["mt_tokens"][0])
    assert len(expected_tokens) >= 3, "the test needs a translation of a few tokens"
    assert written.mt_tokens == expected_tokens
    assert written.units == unit_sequence(decoded["unit_ctc_argmax"][0], int(decoded["unit_lengths"][0]))
    assert set(written.mt_delays) == {1e3 * len(audio) / RATE}   # everything at the end


@pytest.mark.parametrize("unit_causal", [False, True], ids=["units-see-all", "units-causal"])
@pytest.mark.parametrize("policy, writes_early", [(Policy("ctc", k=0), True), (Policy("ctc", k=2), False),
                                                  (Policy("wait-k", k=2), True)],
                         ids=["ctc", "ctc-k2", "wait-2"])
def test_both_backends_write_the_same_things_at_the_same_times(policy, writes_early, unit_causal):
    audio = speech(2.5, seed=4)
    runs = {}
    for backend in ("mlx", "torch"):
        translator = SimultaneousTranslator(session(backend, model_for(backend, unit_causal=unit_causal)),
                                            Policy(policy.name, policy.k),
                                            IDENTITY, RATE, max_target_len=20)
        runs[backend] = translator.run(audio, RATE * 160 // 1000)
    m, t = runs["mlx"], runs["torch"]
    assert m.mt_tokens == t.mt_tokens and m.mt_delays == t.mt_delays
    assert m.units == t.units and m.unit_delays == t.unit_delays
    # simultaneous: something is written before the audio has ended (with k=2 this random
    # model's ST CTC never gets 2 tokens ahead, so everything waits for the end)
    assert len(m.mt_tokens) >= 2 and (min(m.mt_delays) < m.source_ms) == writes_early


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_causal_unit_decoder_steps_equal_its_forward_and_ignore_later_states(backend):
    """model.unit_causal: the positions of the first states do not change when more states
    follow (checked on the training forward itself), and the cached step, fed 2, 1 and 3
    states, gives the forward's logits."""
    s = spec(unit_causal=True)
    model = build(backend, s)
    states = np.random.default_rng(2).standard_normal((1, 6, s.mt_embed_dim)).astype(np.float32)
    arr = mx.array if backend == "mlx" else torch.from_numpy
    lengths = (lambda n: mx.array([n], mx.int32)) if backend == "mlx" else (lambda n: torch.tensor([n]))
    decoder, up = model.unit_decoder, s.unit_upsample
    with torch.no_grad():
        full = to_numpy(decoder(arr(states), lengths(6))[0])
        first_three = to_numpy(decoder(arr(states[:, :3]), lengths(3))[0])
        cache, pieces = decoder.new_cache(), []
        for start, stop in [(0, 2), (2, 3), (3, 6)]:
            pieces.append(to_numpy(decoder.step(arr(states[:, start:stop]), cache)))
    np.testing.assert_allclose(first_three, full[:, :3 * up], atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=2e-5, rtol=1e-5)
    # and the non-causal decoder does look ahead (the mask is what makes the difference)
    with torch.no_grad():
        open_decoder = build(backend, spec()).unit_decoder
        seen_all = to_numpy(open_decoder(arr(states), lengths(6))[0])[:, :3 * up]
        seen_three = to_numpy(open_decoder(arr(states[:, :3]), lengths(3))[0])
    assert np.abs(seen_all - seen_three).max() > 1e-3


def test_causal_unit_decoder_and_st_ctc_window_losses_match_across_backends():
    from mlx_models import echostream as mes
    from tests.parity.test_echostream_parity import make_batch, to_mx, to_torch
    from torch_models import echostream as tes

    s = tiny_spec(unit_causal=True, st_ctc_left_context=3)
    data = make_batch(s, seed=3)
    mlx_terms = mes.loss_terms(build("mlx", s, seed=1), to_mx(data))
    with torch.no_grad():
        torch_terms = tes.loss_terms(build("torch", s, seed=1), to_torch(data))
        open_terms = tes.loss_terms(build("torch", tiny_spec(), seed=1), to_torch(data))
    assert mlx_terms["unit_ctc"].item() == pytest.approx(torch_terms["unit_ctc"].item(), rel=1e-5)
    assert mlx_terms["st_ctc"].item() == pytest.approx(torch_terms["st_ctc"].item(), rel=1e-5)
    assert mlx_terms["loss"].item() == pytest.approx(torch_terms["loss"].item(), rel=1e-5)
    assert torch_terms["unit_ctc"].item() != pytest.approx(open_terms["unit_ctc"].item(), rel=1e-4)


class ScriptedSession:
    """A stand-in for a backend session: a fixed number of encoder frames and recognised
    source/target tokens per chunk, and MT proposals from a script."""

    def __init__(self, asr_per_chunk, st_per_chunk, proposals):
        self.asr_per_chunk, self.st_per_chunk = asr_per_chunk, st_per_chunk
        self.proposals, self.chunks, self.mt_states, self.accepted = list(proposals), 0, [], []

    def push(self, features):
        self.chunks += 1

    def finish(self):
        pass

    n_frames = property(lambda self: self.chunks)
    n_states = property(lambda self: len(self.mt_states))

    def asr_argmax(self):   # distinct labels: the collapsed length is the count
        return np.arange(1, 1 + sum(self.asr_per_chunk[:self.chunks]))

    def st_argmax(self):
        return np.arange(1, 1 + sum(self.st_per_chunk[:self.chunks]))

    def mt_propose(self):
        return self.proposals[len(self.accepted)]

    def mt_accept(self, token):
        self.accepted.append(token)
        self.mt_states.append(token)

    def unit_argmax(self, start, end):
        return np.array([u for t in self.mt_states[start:end] for u in (t, t, 0)])   # 1 unit per state


def run_scripted(policy, asr, st, proposals, chunks):
    audio = np.zeros(chunks * 1600, np.float32)
    translator = SimultaneousTranslator(ScriptedSession(asr, st, proposals), policy, CMVN(np.zeros(80), np.ones(80)),
                                        RATE, max_target_len=50)
    return translator.run(audio, 1600)   # 100 ms chunks


def test_ctc_policy_writes_when_the_source_grows_up_to_the_st_length_minus_k():
    proposals = [10, 11, 12, 13, 14, 15, 16, EOS]
    # chunk:           1  2  3  4  5
    asr, st = [0, 1, 0, 2, 0], [1, 2, 1, 1, 1]
    w = run_scripted(Policy("ctc", k=1), asr, st, proposals, 5)
    # chunk 2: source grew, ST length 3 -> 2 tokens; chunk 3: no new source, nothing;
    # chunk 4: grew, ST length 5 -> up to 4; the rest at the end (EOS written there).
    assert w.mt_tokens == [10, 11, 12, 13, 14, 15, 16]
    assert w.mt_delays == [200.0, 200.0, 400.0, 400.0, 500.0, 500.0, 500.0]
    assert w.finished and w.units == [t - 1 for t in w.mt_tokens] + [EOS - 1]


def test_wait_k_and_an_early_eos_waits_for_more_audio():
    # EOS proposed at the third token: before the end it is not written (the policy READs).
    proposals = [10, 11, EOS]
    w = run_scripted(Policy("wait-k", k=2), [1] * 6, [1] * 6, proposals, 6)
    assert w.mt_tokens == [10, 11] and w.mt_delays == [300.0, 400.0] and w.finished
    with pytest.raises(ValueError, match="unknown policy"):
        Policy("greedy")


def test_a_word_is_complete_when_the_next_one_begins():
    pieces = ["\u2581hel", "lo", "\u2581", "wor", "ld", "\u2581!"]
    # "hello" is known complete once "wor" is written (a lone "▁" starts no word yet)
    assert word_delays(pieces, [1, 2, 3, 4, 5, 6], 9) == [4, 6, 9]
    assert word_delays([], [], 9) == []


def test_the_growing_transcript_length_equals_collapsing_it_whole():
    from shared.eval.text import ctc_collapse
    from shared.simultaneous import GrowingCTC

    rng = np.random.default_rng(7)
    labels = rng.integers(0, 4, 300) * (rng.random(300) < 0.6)   # blanks, repeats, runs
    counter, end = GrowingCTC(), 0
    while end < len(labels):
        end = min(end + int(rng.integers(0, 9)), len(labels))
        assert counter.update(labels[:end]) == len(ctc_collapse(labels[:end]))
