"""Chunked overlap-add separation, against the unchunked result."""
import numpy as np
import pytest
import soundfile as sf

from shared.audio.chunked import chunk_layout, fade_window, separate


LENGTHS = (50, 255, 256, 257, 320, 1000, 1037, 4096, 10_000)   # 320: 10 s in 8 s chunks
OVERLAPS = (0.0, 0.1, 0.25, 0.5, 0.9)


@pytest.mark.parametrize("overlap", OVERLAPS)
def test_identity_model_reconstructs_any_length(overlap):
    """A 'model' that returns the mixture as every stem must give the mixture back exactly,
    whatever the chunking: the cross-fade weights sum correctly everywhere. The model sees
    exactly the layout's chunks, in batches of at most batch_chunks."""
    rng = np.random.default_rng(0)
    for length in LENGTHS:
        mix = rng.standard_normal((2, length)).astype(np.float32)
        seen = []

        def identity(x):
            seen.append(x.shape)
            return np.stack([x, 2 * x], axis=1)

        out = separate(mix, identity, chunk=256, overlap=overlap, batch_chunks=3)
        assert out.shape == (2, 2, length)
        assert np.allclose(out[0], mix, atol=1e-6) and np.allclose(out[1], 2 * mix, atol=1e-6)
        layout = chunk_layout(length, 256, overlap)
        assert all(n <= 3 and c == 2 and t == layout.size for n, c, t in seen)
        assert sum(n * t for n, _, t in seen) == layout.computed


@pytest.mark.parametrize("overlap", OVERLAPS)
def test_layout_covers_the_song_with_at_least_the_requested_overlap(overlap):
    """The first chunk starts at 0, the last ends at the song's end (no padding unless the
    song is shorter than a chunk), no chunk is longer than `chunk`, and neighbours overlap
    by at least what the old fixed hop gave (so cross-fades are no shorter)."""
    chunk = 256
    least = chunk - max(1, int(chunk * (1 - overlap)))
    for length in LENGTHS:
        starts, size = chunk_layout(length, chunk, overlap)
        if length <= chunk:
            assert (starts, size) == ([0], chunk)
            continue
        assert starts[0] == 0 and starts[-1] + size == length and size <= chunk
        overlaps = [size - (b - a) for a, b in zip(starts, starts[1:])]
        assert least <= min(overlaps) and max(overlaps) - min(overlaps) <= 1   # evenly spread
        # The fewest such chunks: one fewer could not cover the song.
        assert len(starts) - 1 < (length - least) / (chunk - least)


def test_computed_audio_is_close_to_the_song_length():
    """10 s in 8 s chunks with 25 % overlap used to compute two 8 s chunks (16 s, 1.6x);
    now two 6 s chunks (12 s). Long songs cost about length / (1 - overlap)."""
    rate = 44100
    ten = chunk_layout(10 * rate, 8 * rate, 0.25)
    assert ten.computed <= 1.3 * 10 * rate and (len(ten.starts), ten.size) == (2, 6 * rate)
    for overlap in (0.1, 0.25, 0.5):
        ratio = chunk_layout(3600 * rate, 8 * rate, overlap).computed / (3600 * rate)
        assert 1 / (1 - overlap) - 0.01 < ratio <= 1 / (1 - overlap) + 0.01
    assert chunk_layout(8 * rate, 8 * rate).computed == 8 * rate          # one exact chunk
    assert chunk_layout(3 * rate, 8 * rate).computed == 8 * rate          # padded to one chunk


@pytest.mark.parametrize("overlap", (0.1, 0.25, 0.4))
def test_cross_fades_are_continuous_for_a_position_dependent_model(overlap):
    """A 'model' whose output depends on the position in its chunk (a ramp from 1 to 2)
    makes neighbouring chunks disagree by gap / size where they overlap. The cross-fade
    over the whole overlap (f samples) spreads that disagreement: consecutive output
    samples differ by at most the ramp's slope, 1 / size, plus gap / (size * (f + 1)).
    A hard cut, or a fade shorter than the overlap, jumps further."""
    chunk = 256
    for length in (257, 320, 1000, 1037, 4096):
        starts, size = chunk_layout(length, chunk, overlap)
        ramp = lambda x: (x * (1 + np.arange(x.shape[-1]) / x.shape[-1]))[:, None]
        out = separate(np.ones((1, length), np.float32), ramp, chunk, overlap)[0, 0]
        gaps = np.diff(starts)
        bound = (1 + max(gaps / (size - gaps + 1))) / size
        assert np.abs(np.diff(out)).max() <= bound + 1e-6


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
    assert np.allclose(fade_window(8, 0, 3), [1, 1, 1, 1, 1, 0.75, 0.5, 0.25])
    assert np.allclose(fade_window(5, 4), [0.2, 0.4, 0.6, 0.4, 0.2])       # ramps meet
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
