"""shared/eval/separation.py and shared/eval/text.py against hand-computable cases and an independent implementation.

The reference is mir_eval's BSS Eval (`mir_eval.separation.bss_eval_sources`, the Python
port of the BSS Eval toolbox that museval extends). Its SDR is not the plain SDR: it
first projects the estimate onto all 512-tap filtered versions of the reference,
s_target = P ŝ, and reports |s_target|² / |ŝ - s_target|². The two coincide only when that
best filter is trivial. So the test builds estimates ŝ = a·s + e whose error e is exactly
orthogonal to every delayed copy s(t - k), k = 0..511. Then P ŝ = a·s and

    BSS Eval SDR = 10 log10(a²|s|² / |e|²) = SI-SDR(s, ŝ)     for any a,
                 = plain SDR(s, ŝ)                            for a = 1.

(museval's `bss_eval` is the same decomposition per window, with v4's shared filters;
on these signals it would give the same numbers, but it pulls in musdb, pandas and
stempeg, so the lighter mir_eval is the dev dependency.)
"""
import warnings

import numpy as np
import pytest

from shared.eval.separation import chunk_sdr, chunk_sdr_over_tracks, chunk_sdrs, sdr, si_sdr, usdr_over_tracks

FILTER_TAPS = 512  # BSS Eval's distortion filter length (mir_eval and museval default)


def with_noise_at(reference: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    """reference + noise whose energy is exactly |reference|² / 10^(snr/10)."""
    noise = np.random.default_rng(seed).standard_normal(reference.shape)
    noise *= np.sqrt(np.sum(reference ** 2) / np.sum(noise ** 2) / 10 ** (snr_db / 10))
    return reference + noise


def orthogonal_to_delays(reference: np.ndarray, taps: int, seed: int) -> np.ndarray:
    """Noise with <e, s(· - k)> = 0 for k = 0..taps-1 (s zero before the start): the
    residual of a least-squares fit of random noise on the delayed copies."""
    n = reference.size
    delayed = np.zeros((n, taps))
    for k in range(taps):
        delayed[k:, k] = reference[:n - k]
    noise = np.random.default_rng(seed).standard_normal(n)
    coef = np.linalg.solve(delayed.T @ delayed, delayed.T @ noise)
    return noise - delayed @ coef


@pytest.fixture(scope="module")
def track():
    """4000 samples of a non-stationary signal and an error orthogonal to its delays."""
    rng = np.random.default_rng(1)
    t = np.arange(4000)
    s = rng.standard_normal(4000) * (1.2 + np.sin(t / 300)) + np.sin(t / 7)
    return s, orthogonal_to_delays(s, FILTER_TAPS, seed=2)


@pytest.mark.parametrize("gain,noise_scale", [(1.0, 0.1), (1.0, 3.0), (0.5, 1.0), (1.7, 0.1)])
def test_against_mir_eval_bss_eval(track, gain, noise_scale):
    mir_eval = pytest.importorskip("mir_eval")
    s, e = track
    estimate = gain * s + noise_scale * e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mir_eval's own deprecation warnings
        reference_sdr = mir_eval.separation.bss_eval_sources(s[None], estimate[None])[0][0]
    closed_form = 10 * np.log10(gain ** 2 * np.sum(s ** 2) / np.sum((noise_scale * e) ** 2))
    assert reference_sdr == pytest.approx(closed_form, abs=1e-6)  # the premise holds
    assert si_sdr(s, estimate) == pytest.approx(reference_sdr, abs=1e-6)
    if gain == 1.0:
        assert sdr(s, estimate) == pytest.approx(reference_sdr, abs=1e-6)
    else:  # plain SDR charges the gain error: |s|² / (|(a-1)s|² + |e|²) since e ⟂ s
        plain = 10 * np.log10(np.sum(s ** 2) / ((gain - 1) ** 2 * np.sum(s ** 2)
                                                + np.sum((noise_scale * e) ** 2)))
        assert sdr(s, estimate) == pytest.approx(plain, abs=1e-6)


@pytest.mark.parametrize("snr_db", [-10.0, 0.0, 12.5, 40.0])
@pytest.mark.parametrize("shape", [(3000,), (2, 3000)])
def test_sdr_of_known_noise_power(snr_db, shape):
    s = np.random.default_rng(3).standard_normal(shape)
    assert sdr(s, with_noise_at(s, snr_db), eps=0.0) == pytest.approx(snr_db, abs=1e-9)
    # the default eps (1e-7) moves the score by less than 1e-5 dB at these energies
    assert sdr(s, with_noise_at(s, snr_db)) == pytest.approx(snr_db, abs=1e-5)


def test_sdr_sums_channels_and_time():
    """Stereo is one signal: a clean left channel does not average with a noisy right."""
    s = np.random.default_rng(4).standard_normal((2, 1000))
    e = s.copy()
    e[1] += 1.0
    expected = 10 * np.log10(np.sum(s ** 2) / 1000.0)
    assert sdr(s, e) == pytest.approx(expected, abs=1e-6)
    assert sdr(s.astype(np.float32), e.astype(np.float32)) == pytest.approx(expected, abs=1e-4)


def test_sdr_eps_handles_silence():
    silent = np.zeros(100)
    assert sdr(silent, silent) == 0.0                    # (0 + eps) / (0 + eps)
    assert sdr(silent, np.ones(100)) == pytest.approx(10 * np.log10(1e-7 / 100), abs=1e-6)
    assert np.isfinite(sdr(np.ones(100), np.ones(100)))  # perfect estimate: finite, large


def test_si_sdr_closed_form_and_scale_invariance():
    rng = np.random.default_rng(5)
    s = rng.standard_normal((2, 2000))
    e = rng.standard_normal((2, 2000))
    e -= np.sum(e * s) / np.sum(s * s) * s                # e ⟂ s
    estimate = 0.3 * s + e
    expected = 10 * np.log10(np.sum((0.3 * s) ** 2) / np.sum(e ** 2))
    assert si_sdr(s, estimate) == pytest.approx(expected, abs=1e-6)
    for scale in (1e-3, 0.5, 7.0, -2.0):
        assert si_sdr(s, scale * estimate) == pytest.approx(expected, abs=1e-6)
    assert sdr(s, 2 * estimate) != pytest.approx(sdr(s, estimate))  # plain SDR is not


def test_chunk_sdr_skips_silent_reference_chunks():
    sr = 1000
    rng = np.random.default_rng(6)
    s = rng.standard_normal((2, 5500))                   # 5 full chunks + a half one
    s[:, 1000:2000] = 0.0                                # chunk 1: digital silence
    estimate = s.copy()
    targets = {0: 10.0, 2: 20.0, 3: 5.0, 4: 30.0}
    for chunk, snr_db in targets.items():
        part = slice(chunk * sr, (chunk + 1) * sr)
        estimate[:, part] = with_noise_at(s[:, part], snr_db, seed=chunk)
    estimate[:, 1000:2000] = 1.0                         # would score -inf-ish if counted
    estimate[:, 5000:] += 100.0                          # trailing partial chunk: dropped

    scores = chunk_sdrs(s, estimate, sr)
    assert scores.shape == (5,) and np.isnan(scores[1])
    np.testing.assert_allclose(scores[[0, 2, 3, 4]], list(targets.values()), atol=1e-6)
    assert chunk_sdr(s, estimate, sr) == pytest.approx(15.0, abs=1e-6)   # median of 5, 10, 20, 30
    assert np.isnan(chunk_sdr(np.zeros(3000), np.ones(3000), sr))        # every chunk silent
    assert np.isnan(chunk_sdr(s[:, :500], estimate[:, :500], sr))        # shorter than a chunk


def test_aggregates_over_tracks():
    assert chunk_sdr_over_tracks([1.0, 9.0, np.nan, 4.0]) == 4.0
    assert np.isnan(chunk_sdr_over_tracks([np.nan, np.nan]))
    assert usdr_over_tracks([1.0, 2.0, 6.0]) == 3.0


def test_shape_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        sdr(np.zeros((2, 10)), np.zeros(10))
    with pytest.raises(ValueError, match="channels, time"):
        si_sdr(np.zeros((1, 2, 10)), np.zeros((1, 2, 10)))


# ------------------------------------------------------------------ speech / translation
import functools  # noqa: E402

from shared.eval.text import (char_error_rate, corpus_bleu, ctc_collapse, edit_distance,  # noqa: E402
                              unit_error_rate, word_error_rate)


def reference_edit_distance(a, b) -> int:
    """Levenshtein distance by the textbook recursion over suffixes (memoised), written
    independently of shared.eval.text's row-by-row DP."""
    a, b = tuple(a), tuple(b)

    @functools.lru_cache(maxsize=None)
    def d(i, j):
        if i == len(a):
            return len(b) - j
        if j == len(b):
            return len(a) - i
        if a[i] == b[j]:
            return d(i + 1, j + 1)
        return 1 + min(d(i + 1, j), d(i, j + 1), d(i + 1, j + 1))

    return d(0, 0)


def test_edit_distance_and_wer_against_reference_recursion():
    rng = np.random.default_rng(0)
    words = ["ba", "ki", "to", "mesu", "lumi", "ra"]
    refs, hyps = [], []
    for _ in range(40):
        ref = list(rng.choice(words, rng.integers(0, 9)))
        hyp = list(rng.choice(words, rng.integers(0, 9)))
        assert edit_distance(ref, hyp) == reference_edit_distance(ref, hyp)
        refs.append(" ".join(ref))
        hyps.append(" ".join(hyp))
    edits = sum(reference_edit_distance(r.split(), h.split()) for r, h in zip(refs, hyps))
    assert word_error_rate(refs, hyps) == pytest.approx(edits / sum(len(r.split()) for r in refs))
    chars = sum(reference_edit_distance(r, h) for r, h in zip(refs, hyps))
    assert char_error_rate(refs, hyps) == pytest.approx(chars / sum(len(r) for r in refs))


def table_edit_distance(a, b) -> int:
    """Levenshtein distance by the full Wagner-Fischer table, integers only, comparing
    elements with Python's == (independent of rapidfuzz, which compares hashes)."""
    a, b = list(a), list(b)
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        table[i][0] = i
    for j in range(len(b) + 1):
        table[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            table[i][j] = min(table[i - 1][j] + 1, table[i][j - 1] + 1,
                              table[i - 1][j - 1] + (0 if a[i - 1] == b[j - 1] else 1))
    return table[len(a)][len(b)]


def test_unit_and_char_edit_distance_against_a_table_dp():
    """Unit ids (lists of ints, numpy arrays), strings and word lists, random and empty,
    against the table DP; unit_error_rate is the corpus sum over the same pairs."""
    rng = np.random.default_rng(7)
    refs, hyps = [[], [], [3]], [[], [5, 5], []]          # empty against empty and not
    for n_units in (4, 1000):                              # many matches, almost none
        for _ in range(30):
            refs.append(rng.integers(0, n_units, rng.integers(0, 40)).tolist())
            hyps.append(rng.integers(0, n_units, rng.integers(0, 40)).tolist())
    for ref, hyp in zip(refs, hyps):
        expected = table_edit_distance(ref, hyp)
        assert edit_distance(ref, hyp) == expected
        assert edit_distance(np.array(ref, np.int64), np.array(hyp, np.int64)) == expected
        assert edit_distance(hyp, ref) == expected
        text_ref, text_hyp = "".join(chr(97 + u % 26) for u in ref), "".join(chr(97 + u % 26) for u in hyp)
        assert edit_distance(text_ref, text_hyp) == table_edit_distance(text_ref, text_hyp)
        words_ref, words_hyp = [f"w{u}" for u in ref], [f"w{u}" for u in hyp]
        assert edit_distance(words_ref, words_hyp) == expected
    total = sum(table_edit_distance(r, h) for r, h in zip(refs, hyps))
    assert unit_error_rate(refs, hyps) == pytest.approx(total / sum(len(r) for r in refs))
    assert unit_error_rate([[]], [[1, 2]]) != unit_error_rate([[]], [[1, 2]])  # nan: no reference
    assert isinstance(edit_distance([1, 2], [2]), int)


def test_wer_cer_hand_examples():
    # one substitution (sat -> sit), one deletion (the), one insertion (down): 3 / 6
    assert word_error_rate("the cat sat on the mat", "the cat sit on mat down") == 0.5
    assert word_error_rate(["a b", "c"], ["a b", "c"]) == 0.0
    assert word_error_rate("a b", "") == 1.0 and word_error_rate("a", "x y z") == 3.0
    assert char_error_rate("abc  d", " abd d ") == pytest.approx(1 / 5)   # "abc d" vs "abd d"
    assert unit_error_rate([[1, 2, 3, 4]], [[1, 3, 4, 5]]) == 0.5
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        word_error_rate(["a", "b"], ["a"])


def test_bleu_matches_hand_computed_value():
    # hypothesis vs reference: clipped n-gram precisions 5/6, 3/5, 2/4, 1/3, equal length
    # (brevity penalty 1): BLEU = 100 * (5/6 * 3/5 * 2/4 * 1/3) ** (1/4)
    hand = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert corpus_bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(hand)
    # shorter hypothesis: c = 4, r = 6, brevity penalty exp(1 - 6/4); precisions 1, 1, 1, 1
    assert corpus_bleu("the cat sat on", "the cat sat on a mat") == pytest.approx(
        100 * np.exp(1 - 6 / 4))
    # corpus level: n-gram counts are pooled before the precisions are taken
    assert corpus_bleu(["a b c d", "e f g h"], ["a b c d", "e f g h"]) == pytest.approx(100.0)
    assert corpus_bleu(["x y z w"], ["a b c d"]) == 0.0


def test_ctc_collapse():
    assert ctc_collapse([3, 3, 0, 3, 5, 5, 0, 0, 7]) == [3, 3, 5, 7]
    assert ctc_collapse(np.array([3, 3, 0, 4, 9, 9]), length=4) == [3, 4]
    assert ctc_collapse([1, 1, 2], blank=1) == [2]
    assert ctc_collapse([0, 0, 0]) == [] and ctc_collapse([], 0) == []
