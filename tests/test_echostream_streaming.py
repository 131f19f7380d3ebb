"""EchoStream's streaming encoder: fed any chunking of an utterance, `stream_encode` +
`stream_finish` return exactly the parallel (training) encoder's frames, on both
backends, with a bounded state; and padding in a batch never changes a valid output.

The parallel encoder is also checked against a float64 numpy Emformer written here from
the paper's per-segment description (our torch layers were compared once with
torchaudio 2.11's `Emformer.forward` / `infer`, same weights: within 6e-7)."""
import mlx.core as mx
import numpy as np
import pytest
import torch

import mlx_models.models as mm
import torch_models.models as tm
from shared.specs.echostream import (EchoStreamSpec, echostream_init_weights, encoder_length)
from tests.parity.test_echostream_parity import make_batch, tiny_spec
from tests.helpers import one_torch_thread  # noqa: F401  (an autouse fixture)

N_MELS = 16
VARIANTS = {
    "memory+left+right": {},
    "no memory": {"max_memory_size": 0},
    "no left context": {"left_context": 0},
    "no right context": {"right_context": 0},
    "right context > segment": {"segment_length": 2, "right_context": 3, "left_context": 5},
}


def utterance(n_frames: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames)[:, None]
    return (np.sin(0.07 * t + np.arange(N_MELS)) + 0.5 * rng.standard_normal((n_frames, N_MELS))
            ).astype(np.float32)[None]


def build(backend: str, spec, seed=0):
    model = (mm if backend == "mlx" else tm).build_model(spec, seed=seed)
    model.eval()
    return model


def parallel_encode(backend, model, features: np.ndarray) -> np.ndarray:
    lengths = np.array([features.shape[1]], np.int32)
    if backend == "mlx":
        return np.array(model.encode(mx.array(features), mx.array(lengths))[0])[0]
    with torch.no_grad():
        return model.encode(torch.from_numpy(features), torch.from_numpy(lengths))[0].numpy()[0]


def chunks(n_frames: int, chunk):
    """(start, stop) pieces: every `chunk` frames, or cycling through a list of sizes."""
    sizes, start = [chunk] if isinstance(chunk, int) else chunk, 0
    for i in range(10 * n_frames):
        if start >= n_frames:
            return
        stop = min(start + sizes[i % len(sizes)], n_frames)
        yield start, stop
        start = stop


def as_numpy(frames) -> np.ndarray:
    """torch tensors through .numpy(): numpy 2's np.array(tensor) warns about the copy keyword."""
    return frames.detach().numpy() if isinstance(frames, torch.Tensor) else np.array(frames)


def stream_encode(backend, model, features: np.ndarray, chunk, check_state=None) -> np.ndarray:
    state, outputs = model.init_stream(), []
    for start, stop in chunks(features.shape[1], chunk):
        piece = features[:, start:stop]
        frames, state = model.stream_encode(mx.array(piece) if backend == "mlx" else torch.from_numpy(piece), state)
        outputs.append(as_numpy(frames))
        if check_state:
            check_state(state)
    frames, state = model.stream_finish(state)
    outputs.append(as_numpy(frames))
    return np.concatenate(outputs, axis=1)[0]


@pytest.mark.parametrize("backend", ["mlx", "torch"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_streaming_equals_parallel_for_any_chunking(backend, variant):
    """Chunks of 1 frame (10 ms), 7, 32 (320 ms), the whole utterance, and irregular
    sizes with empty chunks. 157 feature frames = 38 encoder frames: 9.5 segments of 4,
    so memories are dropped (max 2), left contexts span segments and the last segment
    is partial."""
    spec = tiny_spec(n_mels=N_MELS, **VARIANTS[variant])
    model = build(backend, spec, seed=1)
    features = utterance(157, seed=2)
    expected = parallel_encode(backend, model, features)
    assert expected.shape == (encoder_length(157, spec), spec.embed_dim)

    def bounded(state):
        # The state never grows with the utterance: what it buffers is less than one
        # encoder frame's receptive field plus one stride, one segment plus its right
        # context, and per layer at most the memory bank and the left context.
        assert state["features"].shape[1] < spec.subsample_receptive_field + 4
        assert state["frames"].shape[1] < spec.segment_length + spec.right_context
        assert all(m.shape[1] <= spec.max_memory_size for m in state["memory"])
        assert all(x.shape[1] <= spec.left_context for x in state["left"])
    for chunk in (1, 7, 32, 157, [0, 3, 1, 17, 0, 32, 2]):
        got = stream_encode(backend, model, features, chunk, check_state=bounded)
        assert got.shape == expected.shape, (chunk, got.shape)
        err = np.abs(got - expected).max()
        assert err <= 1e-5, (variant, chunk, err)


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_first_segment_comes_out_as_soon_as_its_right_context_is_in(backend):
    """Encoder frames 0 .. S+R-1 need feature frames 0 .. 4(S+R-1) + field - 1: one frame
    fewer gives nothing, that frame releases the first segment's S frames."""
    spec = tiny_spec(n_mels=N_MELS)
    model = build(backend, spec)
    needed = 4 * (spec.segment_length + spec.right_context - 1) + spec.subsample_receptive_field
    features = utterance(needed, seed=3)
    wrap = mx.array if backend == "mlx" else torch.from_numpy
    frames, state = model.stream_encode(wrap(features[:, :needed - 1]), model.init_stream())
    assert frames.shape == (1, 0, spec.embed_dim)
    frames, state = model.stream_encode(wrap(features[:, needed - 1:]), state)
    assert frames.shape == (1, spec.segment_length, spec.embed_dim)


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_memory_and_left_context_reach_later_segments_only(backend):
    """max_memory_size and left_context change no parameter, so one seed gives the same
    weights: the first segment (no past) is the same either way, later ones differ --
    both mechanisms are live."""
    features = utterance(157, seed=4)
    base = parallel_encode(backend, build(backend, tiny_spec(n_mels=N_MELS), seed=5), features)
    S = tiny_spec().segment_length
    for change in ({"max_memory_size": 0}, {"left_context": 0}):
        other = parallel_encode(backend, build(backend, tiny_spec(n_mels=N_MELS, **change), seed=5), features)
        assert np.abs(other[:S] - base[:S]).max() <= 1e-6, change
        assert np.abs(other[S:] - base[S:]).max() > 1e-3, change


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_padding_in_a_batch_changes_no_valid_output(backend):
    """Each utterance of a zero-padded batch of three lengths gives, on its valid frames
    and tokens, what it gives alone: encoder, ASR/ST CTC logits, MT logits, unit logits."""
    spec = tiny_spec(n_mels=N_MELS)
    model = build(backend, spec, seed=6)
    batch = make_batch(spec, seed=7, feature_lengths=(101, 66, 39))

    def run(b):
        if backend == "mlx":
            out = model({k: mx.array(v) for k, v in b.items()})
            return {k: np.array(v) for k, v in out.items()}
        with torch.no_grad():
            return {k: v.numpy() for k, v in model({k: torch.from_numpy(v) for k, v in b.items()}).items()}
    together = run(batch)
    for i in range(3):
        n_feat, n_tgt = batch["feature_lengths"][i], batch["tgt_lengths"][i]
        alone = {"features": batch["features"][i:i + 1, :n_feat]}
        for key, length in (("src_tokens", "src_lengths"), ("tgt_tokens", "tgt_lengths"),
                            ("units", "unit_lengths")):
            alone[key] = batch[key][i:i + 1, :batch[length][i]]
        alone["prev_output_tokens"] = batch["prev_output_tokens"][i:i + 1, :n_tgt + 1]
        alone["target"] = batch["target"][i:i + 1, :n_tgt + 1]
        for key in ("feature_lengths", "src_lengths", "tgt_lengths", "unit_lengths"):
            alone[key] = batch[key][i:i + 1]
        single = run(alone)
        n_enc, n_unit = encoder_length(n_feat, spec), spec.unit_upsample * (n_tgt + 1)
        assert together["encoder_lengths"][i] == single["encoder_lengths"][0] == n_enc
        assert together["unit_lengths"][i] == single["unit_lengths"][0] == n_unit
        for key, n in (("asr_logits", n_enc), ("st_logits", n_enc), ("mt_logits", n_tgt + 1),
                       ("unit_logits", n_unit)):
            assert single[key].shape[1] == n, key
            err = np.abs(together[key][i, :n] - single[key][0]).max()
            assert err <= 1e-5, (backend, i, key, err)


# ------------------------------------------------------- float64 numpy reference
def _layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * w + b


def _reference_encoder(spec: EchoStreamSpec, W: dict, x: np.ndarray) -> np.ndarray:
    """Emformer per Shi et al., one segment at a time, float64, from canonical weights."""
    W = {k: v.astype(np.float64) for k, v in W.items()}
    for conv in ("conv1", "conv2"):             # valid Conv1d, stride 2, then GLU
        w, b = W[f"encoder.subsample.{conv}.weight"], W[f"encoder.subsample.{conv}.bias"]
        k = w.shape[2]
        n_out = (len(x) - k) // 2 + 1
        y = np.stack([np.einsum("oik,ki->o", w, x[2 * j:2 * j + k]) + b for j in range(n_out)])
        half = y.shape[1] // 2
        x = y[:, :half] / (1 + np.exp(-y[:, half:]))
    S, R, LC, M, H = (spec.segment_length, spec.right_context, spec.left_context,
                      spec.max_memory_size, spec.encoder_heads)
    eps, L = spec.layer_norm_eps, spec.encoder_layers
    banks, lefts = [[] for _ in range(L)], [np.zeros((0, x.shape[1])) for _ in range(L)]
    outputs = []
    for start in range(0, len(x), S):
        utt, rc = x[start:start + S], x[start + S:start + S + R]
        memory_in = utt.mean(0, keepdims=True)
        for i in range(L):
            p = f"encoder.layers.{i}."

            def lin(name, v):
                bias = W.get(p + name + ".bias")
                return v @ W[p + name + ".weight"].T + (0 if bias is None else bias)
            normed = _layer_norm(np.concatenate([rc, utt]), W[p + "norm_in.weight"], W[p + "norm_in.bias"], eps)
            rc_n, utt_n = normed[:len(rc)], normed[len(rc):]
            bank = np.concatenate(banks[i][-M:]) if M and banks[i] else np.zeros((0, x.shape[1]))
            queries = np.concatenate([rc_n, utt_n] + ([utt_n.mean(0, keepdims=True)] if M else []))
            keys = np.concatenate([bank, rc_n, lefts[i], utt_n])
            q, k, v = (lin("attention.q_proj", queries), lin("attention.k_proj", keys),
                       lin("attention.v_proj", keys))
            hd = q.shape[1] // H
            out = np.zeros_like(q)
            for h in range(H):
                s = q[:, h * hd:(h + 1) * hd] @ k[:, h * hd:(h + 1) * hd].T / np.sqrt(hd)
                if M:
                    s[-1, :len(bank)] = -np.inf            # the summary does not see memories
                prob = np.exp(s - s.max(1, keepdims=True))
                out[:, h * hd:(h + 1) * hd] = prob / prob.sum(1, keepdims=True) @ v[:, h * hd:(h + 1) * hd]
            out = lin("attention.out_proj", out)
            n = len(rc) + len(utt)
            y = np.concatenate([rc, utt]) + out[:n]
            h1 = _layer_norm(y, W[p + "ffn_norm.weight"], W[p + "ffn_norm.bias"], eps)
            y = y + lin("ffn.fc2", np.maximum(lin("ffn.fc1", h1), 0))
            y = _layer_norm(y, W[p + "norm_out.weight"], W[p + "norm_out.bias"], eps)
            banks[i].append(memory_in)
            seen = np.concatenate([lefts[i], utt_n])
            lefts[i] = seen[max(len(seen) - LC, 0):] if LC else lefts[i]
            memory_in = np.clip(out[n:], -10, 10)
            rc, utt = y[:len(rc)], y[len(rc):]
        outputs.append(utt)
    return np.concatenate(outputs)


@pytest.mark.parametrize("backend", ["mlx", "torch"])
@pytest.mark.parametrize("variant", ["memory+left+right", "right context > segment"])
def test_parallel_encoder_matches_float64_reference(backend, variant):
    spec = tiny_spec(n_mels=N_MELS, **VARIANTS[variant])
    weights = echostream_init_weights(spec, seed=8)
    model = (mm if backend == "mlx" else tm).build_model(spec, weights=weights)
    features = utterance(118, seed=9)
    expected = _reference_encoder(spec, weights, features[0].astype(np.float64))
    got = parallel_encode(backend, model, features)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 2e-5


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_stream_session_heads_equal_batch_decoding(backend):
    """The stream CLI's session (the encoder, ASR CTC per new frame, ST CTC with cached
    keys and values) gives the per-frame outputs that batch decoding of the whole
    utterance gives (its MT and units: tests/test_simultaneous.py)."""
    from mlx_models.stream import StreamSession as MLXSession
    from torch_models.stream import StreamSession as TorchSession

    spec = tiny_spec(n_mels=N_MELS, st_ctc_layers=2)
    model = build(backend, spec)
    features = utterance(173, seed=3)
    session = MLXSession(model) if backend == "mlx" else TorchSession(model, torch.device("cpu"))
    for start, stop in chunks(features.shape[1], [7, 32, 1, 19]):
        session.push(features[0, start:stop])
    session.finish()
    lengths = np.array([features.shape[1]], np.int32)
    if backend == "mlx":
        decoded = {k: np.array(v) for k, v in model.decode(
            {"features": mx.array(features), "feature_lengths": mx.array(lengths)}, max_target_len=12).items()}
        st_logits = np.array(model.st_ctc(session.encoder_out()))
        cache, pieces = [], []
        for frames in session.frames:
            pieces.append(np.array(model.st_ctc.stream(frames, cache)))
    else:
        with torch.no_grad():
            decoded = {k: v.numpy() for k, v in model.decode(
                {"features": torch.from_numpy(features), "feature_lengths": torch.from_numpy(lengths)},
                max_target_len=12).items()}
            st_logits = model.st_ctc(session.encoder_out()).numpy()
            cache, pieces = [], []
            for frames in session.frames:
                pieces.append(model.st_ctc.stream(frames, cache).numpy())
    assert len(session.frames) > 3
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), st_logits, atol=1e-5, rtol=1e-5)
    n = int(decoded["encoder_lengths"][0])
    assert len(session.asr_argmax()) == n == encoder_length(features.shape[1], spec)
    np.testing.assert_array_equal(session.asr_argmax(), decoded["asr_ctc_argmax"][0, :n])
    np.testing.assert_array_equal(session.st_argmax(), decoded["st_ctc_argmax"][0, :n])
