"""Chunked overlap-add separation, against the unchunked result."""
import numpy as np
import pytest
import soundfile as sf

from shared.audio.chunked import fade_window, separate


def test_identity_model_reconstructs_any_length():
    """A 'model' that returns the mixture as every stem must give the mixture back exactly,
    whatever the chunking: the cross-fade weights sum correctly everywhere."""
    rng = np.random.default_rng(0)
    for length in (50, 1000, 1037, 4096):
        mix = rng.standard_normal((2, length)).astype(np.float32)
        out = separate(mix, lambda x: np.stack([x, 2 * x], axis=1), chunk=256, overlap=0.25, batch_chunks=3)
        assert out.shape == (2, 2, length)
        assert np.allclose(out[0], mix, atol=1e-6) and np.allclose(out[1], 2 * mix, atol=1e-6)


def test_chunked_linear_filter_matches_whole_signal_away_from_edges():
    """A position-independent model (a short FIR filter) gives the unchunked answer
    wherever a chunk saw enough context."""
    rng = np.random.default_rng(1)
    mix = rng.standard_normal((1, 3000)).astype(np.float32)
    taps = np.array([0.5, 0.3, 0.2], np.float32)
    filt = lambda x: np.stack([np.apply_along_axis(lambda r: np.convolve(r, taps)[: r.size], -1, x)], axis=1)
    whole = filt(mix[None])[0]
    chunked = separate(mix, filt, chunk=500, overlap=0.5)
    # Only chunk 1 covers [0, 250): exact there. Later, each chunk's first 2 samples lack
    # filter context, but the cross-fade gives them a weight of at most 2/251.
    assert np.allclose(chunked[..., :250], whole[..., :250], atol=1e-5)
    assert np.abs(chunked - whole).max() < 0.05


def test_fade_window_and_bad_overlap():
    w = fade_window(8, 3)
    assert w.min() > 0 and w[3:5].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="overlap"):
        separate(np.zeros((1, 10), np.float32), lambda x: x[:, None], 4, overlap=1.0)


def test_audio_at_another_rate_is_resampled_on_reading(tmp_path, capsys):
    """A 1 kHz tone at 48 kHz, read for a 16 kHz model: a third of the samples, and the tone
    still at 1 kHz (its spectrum's peak), with a note saying so."""
    from shared.audio.files import read_audio_file
    t = np.arange(48000) / 48000
    sf.write(str(tmp_path / "tone.wav"), (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), 48000)
    audio, rate = read_audio_file(tmp_path / "tone.wav", 16000)
    assert rate == 16000 and audio.shape == (16000, 1) and audio.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(audio[:, 0]))
    assert np.argmax(spectrum) == 1000                       # 1 Hz bins over one second
    assert "tone.wav is 48000 Hz; resampled to the model's 16000 Hz" in capsys.readouterr().err
    same, rate = read_audio_file(tmp_path / "tone.wav")     # no target: as stored
    assert rate == 48000 and same.shape == (48000, 1)
