"""MLX STFT / iSTFT against torch.stft / torch.istft: values, perfect reconstruction and
gradients, at the sizes the separators use (44.1 kHz, a few seconds, stereo batches)."""
import mlx.core as mx
import numpy as np
import pytest
import torch

import mlx_models.stft as ms
import torch_models.stft as ts
from tests.helpers import rel_err

SAMPLE_RATE = 44100
# (n_fft, hop): the separators' two settings, a speech-style one, and an odd n_fft whose
# hop divides neither n_fft nor the signal length.
SETTINGS = [(2048, 512), (4096, 1024), (400, 160), (1023, 300)]
IDS = [f"{n}/{h}" for n, h in SETTINGS]


def audio(shape, seed=0) -> np.ndarray:
    """Music-like float32 test signal: a few partials over noise, peak about 0.5."""
    rng = np.random.default_rng(seed)
    t = np.arange(shape[-1]) / SAMPLE_RATE
    tones = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) / (k + 1)
                for k, f in enumerate(rng.uniform(50, 5000, 6)))
    x = 0.1 * tones + 0.1 * rng.standard_normal(shape)
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


@pytest.fixture(scope="module")
def stereo_batch():
    return audio((2, 2, 3 * SAMPLE_RATE + 37))  # 2 items, stereo, just over 3 s


@pytest.mark.parametrize("n_fft,hop", SETTINGS, ids=IDS)
def test_stft_matches_torch(n_fft, hop, stereo_batch, record):
    a = np.array(ms.stft(mx.array(stereo_batch), n_fft, hop))
    b = ts.stft(torch.from_numpy(stereo_batch), n_fft, hop).numpy()
    assert a.shape == b.shape == (2, 2, n_fft // 2 + 1, 1 + (stereo_batch.shape[-1] - (n_fft % 2)) // hop)
    assert a.dtype == np.complex64
    err = record("stft vs torch.stft", rel_err(a, b))
    assert err <= 1e-5, err


@pytest.mark.parametrize("n_fft,hop", SETTINGS, ids=IDS)
def test_istft_matches_torch_and_reconstructs(n_fft, hop, stereo_batch, record):
    length = stereo_batch.shape[-1]
    spec = ts.stft(torch.from_numpy(stereo_batch), n_fft, hop)
    y_torch = ts.istft(spec, n_fft, hop, length).numpy()
    y_mlx = np.array(ms.istft(mx.array(spec.numpy()), n_fft, hop, length))
    err = record("istft vs torch.istft", rel_err(y_mlx, y_torch))
    assert err <= 1e-5, err
    round_trip = np.array(ms.istft(ms.stft(mx.array(stereo_batch), n_fft, hop), n_fft, hop, length))
    err = record("istft(stft(x)) vs x (mlx)", rel_err(round_trip, stereo_batch))
    assert err <= 1e-5, err
    err = record("istft(stft(x)) vs x (torch)", rel_err(y_torch, stereo_batch))
    assert err <= 1e-5, err


@pytest.mark.parametrize("n_fft,hop", SETTINGS, ids=IDS)
def test_gradient_of_magnitude_loss_matches_torch(n_fft, hop, stereo_batch, record):
    """d/dx sum(w * |stft(x)|) with fixed random weights w, so every bin and frame counts
    differently; covers the reflect padding, framing, window and rfft backward."""
    x = stereo_batch[:1]
    n_frames = ts.stft(torch.from_numpy(x), n_fft, hop).shape[-1]
    w = np.random.default_rng(1).uniform(0, 1, (1, 2, n_fft // 2 + 1, n_frames)).astype(np.float32)

    grad_mlx = mx.grad(lambda x: (mx.array(w) * mx.abs(ms.stft(x, n_fft, hop))).sum())(mx.array(x))
    xt = torch.from_numpy(x).requires_grad_()
    (torch.from_numpy(w) * ts.stft(xt, n_fft, hop).abs()).sum().backward()
    err = record("stft gradient of sum(w*|S|)", rel_err(np.array(grad_mlx), xt.grad.numpy()))
    assert err <= 1e-4, err


def test_gradient_through_istft_matches_torch(record):
    """The inverse is differentiable too (a separator's loss is often on the waveform)."""
    n_fft, hop, length = 512, 128, 8000
    spec = ts.stft(torch.from_numpy(audio((2, length), seed=2)), n_fft, hop).numpy()
    w = np.random.default_rng(3).standard_normal((2, length)).astype(np.float32)
    grad_mlx = mx.grad(lambda s: (mx.array(w) * ms.istft(s, n_fft, hop, length)).sum())(mx.array(spec))
    st = torch.from_numpy(spec).requires_grad_()
    (torch.from_numpy(w) * ts.istft(st, n_fft, hop, length)).sum().backward()
    err = record("istft gradient", rel_err(np.array(grad_mlx), st.grad.numpy()))
    assert err <= 1e-4, err


def test_works_under_mx_compile():
    x = mx.array(audio((2, 20000), seed=5))
    round_trip = lambda x: ms.istft(ms.stft(x, 1024, 256), 1024, 256, 20000)  # noqa: E731
    np.testing.assert_allclose(np.array(mx.compile(round_trip)(x)), np.array(round_trip(x)), atol=1e-6)


@pytest.mark.parametrize("shape", [(5000,), (3, 5000), (2, 2, 2, 5000)])
def test_any_leading_shape(shape):
    x = audio(shape, seed=4)
    a = ms.stft(mx.array(x), 256, 64)
    b = ts.stft(torch.from_numpy(x), 256, 64)
    assert a.shape == tuple(b.shape) == (*shape[:-1], 129, 1 + 5000 // 64)
    assert ms.istft(a, 256, 64, 5000).shape == tuple(ts.istft(b, 256, 64, 5000).shape) == shape


def test_same_errors_as_torch():
    x = audio((1000,))
    for module, wrap in ((ms, mx.array), (ts, torch.from_numpy)):
        with pytest.raises(ValueError, match="hop"):
            module.stft(wrap(x), 256, 300)
        with pytest.raises(ValueError, match="window"):
            module.stft(wrap(x), 256, 64, window=wrap(np.ones(100, np.float32)))
    with pytest.raises(ValueError, match="too short"):
        ms.stft(mx.array(x[:100]), 256, 64)
    # hop = n_fft with a Hann window leaves zeros in the overlap-added envelope (not NOLA).
    spec = ts.stft(torch.from_numpy(x), 64, 64)
    with pytest.raises(ValueError, match="NOLA"):
        ms.istft(mx.array(spec.numpy()), 64, 64, 1000)
    with pytest.raises(RuntimeError):
        ts.istft(spec, 64, 64, 1000)
