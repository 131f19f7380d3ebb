"""Training data at another sample rate (shared/audio/files.py read_span, used by
shared/data/musdb.py and shared/data/s2ut.py): files are resampled on reading (soxr), and the
samples match the analytic signal at the dataset's rate, an independent reference."""

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from shared.audio.fbank import FbankOptions
from shared.audio.files import read_span, resample, resampled_length
import shared.data.musdb as musdb
from shared.data.musdb import FILES, MusdbDataset, RemixSampler
from shared.data.s2ut import FeatureCache, read_manifest

SECONDS = 1.5
FREQS = {"mixture": 440.0, "vocals": 523.25, "drums": 97.0, "bass": 61.7, "other": 1234.5}


def sine(freq, rate, frames, phase=0.3):
    """(frames, 2): the left channel a sine, the right one at half the amplitude."""
    t = np.arange(frames) / rate
    left = 0.5 * np.sin(2 * np.pi * freq * t + phase)
    return np.stack([left, 0.5 * left], axis=1)


def sine_track(folder, rate):
    folder.mkdir(parents=True)
    for name in FILES:
        sf.write(folder / f"{name}.wav", sine(FREQS[name], rate, int(SECONDS * rate)), rate,
                 subtype="FLOAT")


@pytest.mark.parametrize("from_rate,to_rate", [(22050, 44100), (48000, 44100), (44100, 8000),
                                               (8000, 22050)])
def test_resampled_length_is_soxrs(from_rate, to_rate):
    for frames in (1, 3, 5, 999, 4410, 12345):
        assert len(resample(np.zeros((frames, 1), np.float32), from_rate, to_rate)) == \
            resampled_length(frames, from_rate, to_rate)


@pytest.mark.parametrize("file_rate", [22050, 48000])
def test_musdb_track_at_another_rate_reads_as_the_sine_at_the_dataset_rate(tmp_path, capsys, file_rate):
    rate = 44100
    for name in ("Song A", "Song B"):
        sine_track(tmp_path / "train" / name, file_rate)
    data = MusdbDataset(tmp_path, "train_all", sample_rate=rate)
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "2 of 2 tracks" in notes[0] and f"{file_rate} Hz" in notes[0]
    track = data.tracks[0]
    assert track.frames == resampled_length(int(SECONDS * file_rate), file_rate, rate)
    whole = data.load(0)
    edge = 200  # soxr's filter sees zeros beyond the file's ends
    for s, stem in enumerate(("vocals", "drums", "bass", "other")):
        expected = sine(FREQS[stem], rate, track.frames).T
        assert np.abs(whole["sources"][s][:, edge:-edge] - expected[:, edge:-edge]).max() < 1e-3
    # A training segment, read alone from an offset no multiple of anything, equals the same
    # samples of the whole file resampled, and the analytic sine.
    start, frames = 12345, 20000
    segment = musdb.read_audio(track, "bass", start, frames)
    assert segment.shape == (2, frames)
    np.testing.assert_allclose(segment, whole["sources"][2][:, start:start + frames], atol=1e-5)
    expected = sine(FREQS["bass"], rate, start + frames)[start:].T
    assert np.abs(segment - expected).max() < 1e-3
    # the remix sampler trains on them like on files at the rate
    batch = RemixSampler(data, 4410, seed=0).batch(0, 2)
    assert batch["sources"].shape == (2, 4, 2, 4410) and np.isfinite(batch["mixture"]).all()


def test_span_reads_agree_with_scipy_resample_poly(tmp_path):
    """An independent resampler (scipy's polyphase filter) on the whole file agrees with a
    span read through soxr, away from the ends (different filters: a looser bound)."""
    rng = np.random.default_rng(0)
    # noise band-limited to a quarter of the band: well inside both filters' passbands
    noise = 0.1 * resample_poly(rng.standard_normal((22050 // 4, 1)), 4, 1, axis=0)
    path = tmp_path / "noise.wav"
    sf.write(path, noise, 22050, subtype="FLOAT")
    reference = resample_poly(noise, 2, 1, axis=0)
    span = read_span(path, 22050, 44100, 5001, 30000)
    # measured 8e-4 of the peak (scipy's Kaiser filter ripples); one sample off would be ~0.1
    assert np.abs(span - reference[5001:35001]).max() < 3e-3 * np.abs(reference).max()


# ------------------------------------------------------------------ S2UT
def speechlike(rate, seconds=1.2):
    """A mono test signal below 7 kHz: a few sines with a slow amplitude envelope."""
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    tones = sum(a * np.sin(2 * np.pi * f * t) for a, f in [(0.3, 220), (0.2, 950), (0.1, 2700),
                                                          (0.05, 5100)])
    return (envelope * tones).astype(np.float32)


def test_s2ut_utterance_at_22k_gives_the_features_of_the_16k_file(tmp_path):
    for name, rate in (("a16.wav", 16000), ("a22.wav", 22050)):
        sf.write(tmp_path / name, speechlike(rate), rate, subtype="FLOAT")
    (tmp_path / "m.tsv").write_text(
        "id\tsrc_audio\tsrc_n_frames\tsrc_text\ttgt_text\ttgt_audio\n"
        "u16\ta16.wav\t0\tba\tlu\t1\nu22\ta22.wav\t0\tba\tlu\t1\n")
    logs = []
    at16, at22 = read_manifest(tmp_path / "m.tsv", sample_rate=16000, log=logs.append)
    assert len(logs) == 1 and "1 of 2 audio files" in logs[0] and "22050 Hz" in logs[0]
    assert at22.num_samples == at16.num_samples == 19200 and at22.file_rate == 22050
    cache = FeatureCache(tmp_path / "fbank", FbankOptions(sample_rate=16000))
    f16 = cache.features(at16, cache.key(at16))
    f22 = cache.features(at22, cache.key(at22))
    assert f16.shape == f22.shape
    # bins within e^15 of the loudest (42 % of them): the rest hold next to no energy, whose
    # logarithm is rounding noise. Measured: at most 0.004 apart (log-mel) there.
    loud = f16 > f16.max() - 15
    assert loud.mean() > 0.3
    assert np.abs(f22 - f16)[loud].max() < 0.02


def test_the_feature_cache_key_notices_the_file_rate(tmp_path):
    from dataclasses import replace

    sf.write(tmp_path / "a.wav", speechlike(16000), 16000)
    (tmp_path / "m.tsv").write_text(
        "id\tsrc_audio\tsrc_n_frames\tsrc_text\ttgt_text\ttgt_audio\nu\ta.wav\t0\tba\tlu\t1\n")
    utt, = read_manifest(tmp_path / "m.tsv")
    cache = FeatureCache(None)
    assert cache.key(utt) != cache.key(replace(utt, file_rate=22050))
    assert cache.key(utt) != FeatureCache(None, FbankOptions(sample_rate=8000)).key(utt)
