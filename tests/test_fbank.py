"""shared/audio/fbank.py: Kaldi-compatible log-mel filterbank against kaldi-native-fbank
(k2-fsa's port of Kaldi's feature code, a dev dependency), streaming == whole signal,
global CMVN and SpecAugment."""
import numpy as np
import pytest
import yaml

from shared.audio import CMVN, FbankOptions, SpecAugment, StreamingFbank, fbank, num_frames
from shared.errors import DataError

SR = 16000


def random_audio(seconds=3.0, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.5, 0.5, int(seconds * SR)).astype(np.float32)


def speech_like(seconds=4.0, seed=1) -> np.ndarray:
    """A voiced-speech stand-in: a harmonic source with a wandering pitch, syllable-rate
    amplitude envelope, a rising chirp, a little noise and a stretch of digital silence
    (which exercises the log floor)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR) + 123
    t = np.arange(n) / SR
    phase = 2 * np.pi * np.cumsum(120 + 80 * np.sin(2 * np.pi * 0.5 * t)) / SR
    voiced = sum(np.sin(k * phase) / k for k in range(1, 30))
    envelope = np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None)
    chirp = np.sin(2 * np.pi * (200 * t + 900 * t ** 2))
    x = 0.3 * voiced * envelope + 0.05 * chirp + 0.01 * rng.standard_normal(n)
    x[SR:SR + 4000] = 0.0
    return (0.8 * x / np.abs(x).max()).astype(np.float32)


def kaldi_reference(x: np.ndarray, opts: FbankOptions = FbankOptions()) -> np.ndarray:
    knf = pytest.importorskip("kaldi_native_fbank")  # dev dependency
    o = knf.FbankOptions()
    o.frame_opts.samp_freq = opts.sample_rate
    o.frame_opts.frame_length_ms = opts.frame_length_ms
    o.frame_opts.frame_shift_ms = opts.frame_shift_ms
    o.frame_opts.dither = 0.0
    o.frame_opts.preemph_coeff = opts.preemph_coeff
    o.frame_opts.snip_edges = True
    o.mel_opts.num_bins = opts.num_mel_bins
    o.mel_opts.low_freq = opts.low_freq
    o.mel_opts.high_freq = opts.high_freq
    o.use_energy = False
    online = knf.OnlineFbank(o)
    online.accept_waveform(opts.sample_rate, (x.astype(np.float64) * 32768).tolist())
    online.input_finished()
    return np.array([online.get_frame(i) for i in range(online.num_frames_ready)], np.float32)


@pytest.mark.parametrize("signal", ["random", "speech_like"])
def test_matches_kaldi_native_fbank(signal):
    x = random_audio() if signal == "random" else speech_like()
    ours, ref = fbank(x, SR), kaldi_reference(x)
    assert ours.shape == ref.shape == (num_frames(x.size), 80) and ours.dtype == np.float32
    err = np.abs(ours - ref).max()
    print(f"fbank vs kaldi-native-fbank ({signal}): max abs diff {err:.2e}")
    assert err <= 1e-3, err  # float64 here vs float32 in Kaldi; measured ~2e-4


def test_other_options_match_kaldi_native_fbank():
    """The options map onto Kaldi's: 8 kHz, 23 bins (Kaldi's default count), a high_freq
    given as an offset below Nyquist, a window size that is not a power of two."""
    opts = FbankOptions(sample_rate=8000, num_mel_bins=23, frame_length_ms=30.0,
                        low_freq=60.0, high_freq=-400.0, preemph_coeff=0.9)
    x = random_audio(1.0, seed=3)
    err = np.abs(fbank(x, 8000, opts) - kaldi_reference(x, opts)).max()
    assert err <= 1e-3, err


def test_int16_input_and_frame_count():
    x = speech_like(1.0)
    pcm = np.round(x * 32767).astype(np.int16)
    # int16 is used as is, float is scaled by 32768: the same file gives the same features.
    np.testing.assert_allclose(fbank(pcm, SR), fbank(pcm / 32768.0, SR), atol=1e-5)
    # snip_edges=True: only windows that fit.
    assert [num_frames(n) for n in (0, 399, 400, 559, 560)] == [0, 0, 1, 1, 2]
    assert fbank(x[:399], SR).shape == (0, 80)
    silence = fbank(np.zeros(400, np.float32), SR)  # zero energy: Kaldi's log floor
    np.testing.assert_allclose(silence, np.log(np.finfo(np.float32).eps), rtol=1e-7)


def test_bad_input_is_a_clear_error():
    with pytest.raises(DataError, match="44100 Hz.*16000 Hz"):
        fbank(random_audio(0.1), 44100)
    with pytest.raises(DataError, match="mono"):
        fbank(np.zeros((2, 1600), np.float32), SR)
    with pytest.raises(DataError, match="NaN"):
        fbank(np.full(1600, np.nan, np.float32), SR)
    with pytest.raises(ValueError, match="high_freq"):
        FbankOptions(low_freq=9000.0)


@pytest.mark.parametrize("chunk", [5120, 1234, 160, 399, 400, 1])
def test_streaming_equals_whole_signal(chunk):
    x = speech_like(4.0 if chunk > 1 else 0.3)
    whole = fbank(x, SR)
    stream = StreamingFbank()
    parts = [stream.accept_waveform(x[i:i + chunk]) for i in range(0, x.size, chunk)]
    streamed = np.concatenate(parts)
    assert streamed.shape == whole.shape and stream.frames_emitted == len(whole)
    assert np.abs(streamed - whole).max() <= 1e-6  # measured: exactly equal
    # a new utterance after reset starts from scratch
    stream.reset()
    np.testing.assert_array_equal(stream.accept_waveform(x[:SR // 10]), fbank(x[:SR // 10], SR))


def test_cmvn_fit_apply_and_round_trip():
    rng = np.random.default_rng(0)
    feats = [(rng.standard_normal((n, 80)) * 3 + 12).astype(np.float32)
             for n in (50, 1, 300, 0, 77)]
    feats[2][:, 5] = 7.0  # a constant bin: its std is floored, not zero
    cmvn = CMVN.fit(f for f in feats)  # one pass over a generator
    everything = np.concatenate(feats).astype(np.float64)
    np.testing.assert_allclose(cmvn.mean, everything.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cmvn.std, everything.std(0), rtol=1e-10)
    assert cmvn.count == len(everything)
    normed = cmvn.apply(np.concatenate(feats))
    assert normed.dtype == np.float32
    np.testing.assert_allclose(normed.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(normed.std(0), 1, atol=1e-5)
    # saved with a checkpoint's YAML and read back: exactly the same numbers
    back = CMVN.from_dict(yaml.safe_load(yaml.safe_dump(cmvn.to_dict())))
    np.testing.assert_array_equal(back.mean, cmvn.mean)
    np.testing.assert_array_equal(back.std, cmvn.std)
    constant = CMVN.fit([np.full((10, 4), 3.0)])
    assert np.isfinite(constant.apply(np.full((2, 4), 3.0))).all()
    with pytest.raises(DataError, match="no frames"):
        CMVN.fit([np.zeros((0, 80))])
    with pytest.raises(DataError, match="bins"):
        cmvn.apply(np.zeros((3, 40)))


def test_spec_augment_is_deterministic_and_bounded():
    feats = np.random.default_rng(0).standard_normal((300, 80)).astype(np.float32) + 5
    aug = SpecAugment()
    a = aug(feats, np.random.default_rng(7))
    np.testing.assert_array_equal(a, aug(feats, np.random.default_rng(7)))
    assert a.dtype == feats.dtype and not np.shares_memory(a, feats)
    masked = a == 0.0
    bins, frames = masked.all(axis=0).sum(), masked.all(axis=1).sum()
    assert bins <= 2 * 27 and frames <= 2 * min(100, int(0.2 * 300))
    # over many draws masks do appear, in both directions, and never touch unmasked cells
    seen_f = seen_t = 0
    for seed in range(20):
        out = aug(feats, np.random.default_rng(seed))
        keep = out != 0.0
        np.testing.assert_array_equal(out[keep], feats[keep])
        seen_f += (out == 0).all(axis=0).any()
        seen_t += (out == 0).all(axis=1).any()
    assert seen_f > 10 and seen_t > 10
    # no masks, or a short utterance with zero allowed time width
    none = SpecAugment(num_freq_masks=0, num_time_masks=0)
    np.testing.assert_array_equal(none(feats, np.random.default_rng(0)), feats)
    short = SpecAugment(freq_mask_width=0)(feats[:4], np.random.default_rng(0))
    np.testing.assert_array_equal(short, feats[:4])
    with pytest.raises(ValueError, match="max_time_ratio"):
        SpecAugment(max_time_ratio=1.5)
