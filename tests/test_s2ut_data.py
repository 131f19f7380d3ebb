"""EchoStream data (shared/data/s2ut.py), the synthetic corpus (shared/data/synth_s2ut.py),
the data config and EchoStreamTask's evaluation plumbing, on tiny corpora."""
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from shared.audio.fbank import CMVN, SpecAugment, fbank
from shared.data import synth_s2ut
from shared.data.s2ut import S2UTDataConfig
from shared.data.s2ut import (BOS, EOS, BucketBatcher, FeatureCache, S2UTCorpus, S2UTDataset,
                              collate, eval_batches, filter_duration, fit_cmvn, read_manifest,
                              tokenizer_for, train_sentencepiece)
from shared.engine.config import TrainConfig
from shared.errors import ConfigError, DataError

SR = 16000
HEADER = "id\tsrc_audio\tsrc_n_frames\tsrc_text\ttgt_text\ttgt_audio\n"


def write_wav(path, seconds, rate=SR, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    audio = 0.1 * rng.standard_normal((int(seconds * rate), channels) if channels > 1
                                      else int(seconds * rate))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, rate, subtype="PCM_16")
    return path


def write_manifest(path, rows):
    path.write_text(HEADER + "".join("\t".join(map(str, r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_s2ut") / "corpus"
    synth_s2ut.generate(root, train=24, dev=4, min_seconds=1.0, max_seconds=2.0, n_units=50, seed=3)
    return root


def data_config(corpus_dir, **kw):
    return S2UTDataConfig(train_manifest=str(corpus_dir / "train.tsv"),
                          dev_manifest=str(corpus_dir / "dev.tsv"), **kw)


@pytest.fixture(scope="module")
def corpus(corpus_dir, tmp_path_factory):
    logs = []
    c = S2UTCorpus(data_config(corpus_dir), 24, 24, 50, tmp_path_factory.mktemp("run") / "data",
                   log=logs.append)
    c.logs = logs
    return c


# ------------------------------------------------------------------ manifests
def test_manifest_rows_relative_and_absolute_paths(tmp_path):
    write_wav(tmp_path / "wav" / "a.wav", 0.5)
    b = write_wav(tmp_path / "elsewhere" / "b.wav", 0.25, seed=1)
    m = write_manifest(tmp_path / "m.tsv", [("a", "wav/a.wav", 48, "ba ki", "lumi", "3 4 5"),
                                            ("b", b.resolve(), 23, "to", "ra va", "0")])
    utts = read_manifest(m, n_units=10)
    assert [u.id for u in utts] == ["a", "b"]
    assert utts[0].audio == tmp_path / "wav" / "a.wav" and utts[1].audio == b.resolve()
    assert (utts[0].num_samples, utts[1].num_samples) == (8000, 4000)
    assert utts[0].seconds == 0.5 and utts[0].units == (3, 4, 5) and utts[1].tgt_text == "ra va"


def bad_manifest(tmp_path):
    write_wav(tmp_path / "ok.wav", 0.3)
    write_wav(tmp_path / "8k_short.wav", 0.01, rate=8000)  # 160 samples at 16 kHz
    write_wav(tmp_path / "stereo.wav", 0.3, channels=2)
    (tmp_path / "junk.wav").write_bytes(b"not audio at all")
    rows = [("u1", "ok.wav", 28, "ba", "lu", "1 2"),          # row 1: fine
            ("u2", "missing.wav", 28, "ba", "lu", "1"),       # row 2: no file
            ("u3", "ok.wav", 28, "", "lu", "1"),              # row 3: empty source text
            ("u4", "ok.wav", 28, "ba", "lu", ""),             # row 4: no units
            ("u5", "8k_short.wav", 28, "ba", "lu", "1"),      # row 5: under one frame at 16 kHz
            ("u6", "stereo.wav", 28, "ba", "lu", "1"),        # row 6: stereo
            ("u1", "ok.wav", 28, "ba", "lu", "1"),            # row 7: repeated id
            ("u8", "ok.wav", 28, "ba", "lu", "1 x"),          # row 8: not integers
            ("u9", "ok.wav", 28, "ba", "lu", "1 99"),         # row 9: unit out of range
            ("u10", "junk.wav", 28, "ba", "lu", "1"),         # row 10: unreadable
            ("u11", "ok.wav", 28, "ba", "", "1"),             # row 11: empty target text
            ("u12", "ok.wav", 28, "ba", "lu", "4")]           # row 12: fine
    m = write_manifest(tmp_path / "bad.tsv", rows)
    with open(m, "a") as f:
        f.write("u13\tok.wav\t28\tba\n")                      # row 13: too few fields
    return m


def test_bad_rows_are_listed_with_row_numbers(tmp_path):
    m = bad_manifest(tmp_path)
    with pytest.raises(DataError) as e:
        read_manifest(m, n_units=50)
    msg = str(e.value)
    assert "11 of 13 rows cannot be used" in msg and "data.skip_bad_rows=true" in msg
    for row, words in [(2, "not found"), (3, "empty src_text"), (4, "no target units"),
                       (5, "shorter than one 25 ms fbank frame"), (6, "2 channels"), (7, "repeats row 1"),
                       (8, "unit integers"), (9, "unit 99 outside 0..49"), (10, "is not readable audio"),
                       (11, "empty tgt_text"), (13, "has 4 tab-separated fields")]:
        if row <= 11:  # the first 10 bad rows are spelled out, the rest counted
            assert f"row {row} (line {row + 1}): " in msg and words in msg, (row, words)
    assert "and 1 more" in msg
    assert "row 1 (" not in msg and "row 12" not in msg


def test_bad_rows_skipped_with_a_count(tmp_path):
    logs = []
    utts = read_manifest(bad_manifest(tmp_path), n_units=50, skip_bad_rows=True, log=logs.append)
    assert [u.id for u in utts] == ["u1", "u12"]
    assert len(logs) == 1 and "skipped 11 of 13 rows" in logs[0] and "row 5 (line 6)" in logs[0]


def test_audio_at_another_rate_is_resampled_with_one_note(tmp_path):
    write_wav(tmp_path / "fast.wav", 0.3, rate=44100)
    write_wav(tmp_path / "fast2.wav", 0.5, rate=44100, seed=1)
    write_wav(tmp_path / "ok.wav", 0.3)
    m = write_manifest(tmp_path / "m.tsv", [("x", "fast.wav", 28, "ba", "lu", "1"),
                                            ("y", "fast2.wav", 48, "ba", "lu", "1"),
                                            ("z", "ok.wav", 28, "ba", "lu", "1")])
    logs = []
    utts = read_manifest(m, log=logs.append)
    assert [(u.num_samples, u.sample_rate, u.file_rate) for u in utts] == \
        [(4800, SR, 44100), (8000, SR, 44100), (4800, SR, 0)]
    assert len(logs) == 1 and "2 of 3 audio files" in logs[0] and "44100 Hz" in logs[0] \
        and "resampled to data.sample_rate=16000 Hz" in logs[0]


def test_header_and_missing_manifest_errors(tmp_path):
    (tmp_path / "h.tsv").write_text("id\taudio\tn_frames\n")
    with pytest.raises(DataError, match="header lacks src_audio, src_n_frames, src_text"):
        read_manifest(tmp_path / "h.tsv")
    with pytest.raises(DataError, match="not found; fix data.train_manifest"):
        read_manifest(tmp_path / "nope.tsv")


def test_max_duration_filter_counts_and_logs(tmp_path):
    for name, seconds in (("a", 0.5), ("b", 1.5), ("c", 2.5)):
        write_wav(tmp_path / f"{name}.wav", seconds)
    m = write_manifest(tmp_path / "m.tsv", [(n, f"{n}.wav", 0, "ba", "lu", "1") for n in "abc"])
    logs = []
    kept = filter_duration(read_manifest(m), 1.5, "m.tsv", logs.append)
    assert [u.id for u in kept] == ["a", "b"]
    assert "skipped 1 of 3 utterances" in logs[0] and "longest 2.50 s" in logs[0]
    with pytest.raises(DataError, match="raise data.max_duration"):
        filter_duration(read_manifest(m), 0.1, "m.tsv", logs.append)


# ------------------------------------------------------------------ tokenizers
def test_tokenizers_have_echostream_ids_and_exact_size(corpus):
    for sp in (corpus.src_tokenizer, corpus.tgt_tokenizer):
        assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2, 3)
        assert sp.get_piece_size() == 24
    ids = corpus.train.src_ids[0]
    assert ids.min() > 3 and corpus.src_tokenizer.decode(ids.tolist()) == corpus.train.utterances[0].src_text


def test_tokenizer_size_errors_name_the_key(corpus, tmp_path):
    texts = [u.src_text for u in corpus.train.utterances]
    with pytest.raises(DataError, match=r"model.src_vocab_size=5000 is more pieces .* set "
                                        r"model.src_vocab_size=\d+"):
        train_sentencepiece(texts, 5000, tmp_path / "a.model", "model.src_vocab_size", "the text")
    with pytest.raises(DataError, match=r"model.tgt_vocab_size=6 is too small .* at least \d+"):
        train_sentencepiece(texts, 6, tmp_path / "b.model", "model.tgt_vocab_size", "the text")
    # a given tokenizer whose size differs from the model's vocabulary
    with pytest.raises(DataError, match="has 24 pieces but model.src_vocab_size is 30; set "
                                        "model.src_vocab_size=24"):
        tokenizer_for(str(corpus.src_tokenizer_path), texts, 30, tmp_path / "c.model",
                      "model.src_vocab_size", "x", "data.src_tokenizer")


# ------------------------------------------------------------------ features and CMVN
def test_feature_cache_matches_fbank_and_is_reused(corpus, tmp_path):
    utt = corpus.train.utterances[2]
    audio, rate = sf.read(utt.audio, dtype="float32")
    expected = fbank(audio, rate)
    cache = FeatureCache(tmp_path / "fb")
    key = cache.key(utt)
    np.testing.assert_array_equal(cache.features(utt, key), expected)
    assert (tmp_path / "fb" / f"{key}.npy").is_file()
    np.save(tmp_path / "fb" / f"{key}.npy", expected * 0)   # served from the cache file now
    assert not cache.features(utt, key).any()
    memory = FeatureCache(None)
    np.testing.assert_array_equal(memory.features(utt, key), expected)
    assert corpus.train.frames[2] == len(expected)


def test_cmvn_matches_numpy_over_all_training_frames(corpus, tmp_path):
    frames = np.concatenate([fbank(*sf.read(u.audio, dtype="float32"))
                             for u in corpus.train.utterances]).astype(np.float64)
    np.testing.assert_allclose(corpus.cmvn.mean, frames.mean(axis=0), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(corpus.cmvn.std, frames.std(axis=0), rtol=1e-9)
    assert corpus.cmvn.count == len(frames)
    # cached: a second fit reads the file (its stats are what the file says)
    path = tmp_path / "cmvn.npz"
    first = fit_cmvn(corpus.train, path)
    with np.load(path) as z:
        np.savez(path, mean=z["mean"] + 1, std=z["std"], count=z["count"], key=z["key"])
    np.testing.assert_allclose(fit_cmvn(corpus.train, path).mean, first.mean + 1)


def test_damaged_caches_are_recomputed(corpus, corpus_dir, tmp_path):
    """A feature file, the CMVN statistics or a trained tokenizer cut short or garbled (a
    power loss, a full disk) is computed again, never read as data."""
    utt = corpus.train.utterances[2]
    cache = FeatureCache(tmp_path / "fb")
    key = cache.key(utt)
    expected = cache.features(utt, key)
    for garbage in (b"", b"\x93NUMPY garbage", (tmp_path / "fb" / f"{key}.npy").read_bytes()[:200]):
        (tmp_path / "fb" / f"{key}.npy").write_bytes(garbage)
        np.testing.assert_array_equal(FeatureCache(tmp_path / "fb").features(utt, key), expected)
    path = tmp_path / "cmvn.npz"
    fit_cmvn(corpus.train, path)
    for garbage in (b"garbage", path.read_bytes()[:100]):
        path.write_bytes(garbage)
        np.testing.assert_allclose(fit_cmvn(corpus.train, path).mean, corpus.cmvn.mean)
    with np.load(path) as z:    # NaN statistics under the right key: fitted again
        np.savez(path, mean=z["mean"] * np.nan, std=z["std"], count=z["count"], key=z["key"])
    np.testing.assert_allclose(fit_cmvn(corpus.train, path).mean, corpus.cmvn.mean)
    data = tmp_path / "data"
    S2UTCorpus(data_config(corpus_dir), 24, 24, 50, data, log=lambda _: None)
    pieces = (data / "src_tokenizer.model").read_bytes()
    (data / "src_tokenizer.model").write_bytes(pieces[:50])
    again = S2UTCorpus(data_config(corpus_dir), 24, 24, 50, data, log=lambda _: None)
    assert again.src_tokenizer.get_piece_size() == 24
    assert not [p.name for p in data.rglob(".*")]     # no temporaries left


# ------------------------------------------------------------------ batches
def test_collate_pads_and_shifts_bos_eos():
    examples = [{"features": np.ones((5, 80), np.float32), "src": np.array([7, 8], np.int32),
                 "tgt": np.array([9, 10, 11], np.int32), "units": np.array([4, 5], np.int32)},
                {"features": np.full((3, 80), 2, np.float32), "src": np.array([6], np.int32),
                 "tgt": np.array([12], np.int32), "units": np.array([3, 2, 1], np.int32)}]
    b = collate(examples)
    assert b["features"].shape == (2, 5, 80) and (b["features"][1, 3:] == 0).all()
    assert b["feature_lengths"].tolist() == [5, 3] and b["feature_lengths"].dtype == np.int32
    assert b["src_tokens"].tolist() == [[7, 8], [6, 0]] and b["src_lengths"].tolist() == [2, 1]
    assert b["tgt_tokens"].tolist() == [[9, 10, 11], [12, 0, 0]]
    assert b["prev_output_tokens"].tolist() == [[BOS, 9, 10, 11], [BOS, 12, 0, 0]]
    assert b["target"].tolist() == [[9, 10, 11, EOS], [12, EOS, 0, 0]]
    assert b["units"].tolist() == [[4, 5, 0], [3, 2, 1]] and b["unit_lengths"].tolist() == [2, 3]
    for key, value in b.items():
        assert value.dtype == (np.float32 if key == "features" else np.int32), key


def test_units_are_stored_plus_one(corpus):
    for i in range(3):
        np.testing.assert_array_equal(corpus.train.units[i],
                                      np.array(corpus.train.utterances[i].units) + 1)


def test_batches_deterministic_resumable_and_cover_each_epoch(corpus):
    def batcher(seed, max_tokens=10**6, augment=None):
        return BucketBatcher(corpus.train, corpus.cmvn, seed, max_tokens, augment, 2)

    a, b = batcher(5, augment=SpecAugment()), batcher(5, augment=SpecAugment())
    for position in (40, 0, 96, 8):   # any order, fresh or not: the same batch
        x, y = a.batch(position, 4), b.batch(position, 4)
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert not np.array_equal(batcher(6).batch(0, 4)["src_lengths"], a.batch(0, 4)["src_lengths"]) \
        or not np.array_equal(batcher(6).batch(4, 4)["src_lengths"], a.batch(4, 4)["src_lengths"])
    # an epoch (24 utterances, global batch 4) visits every utterance once
    plain = batcher(5)
    seen = [i for p in range(0, 24, 4) for _, i in plain.indices(p, 4)]
    assert sorted(seen) == list(range(24))
    assert sorted(i for p in range(24, 48, 4) for _, i in plain.indices(p, 4)) == list(range(24))
    # two ranks of world size 2 split each global batch
    ranks = [BucketBatcher(corpus.train, corpus.cmvn, 5, 10**6, None, 2, r, 2) for r in (0, 1)]
    both = [i for p in range(0, 24, 4) for r in ranks for _, i in r.indices(p, 2)]
    assert sorted(both) == list(range(24))


def test_batches_group_similar_lengths(corpus):
    frames = corpus.train.frames
    batcher = BucketBatcher(corpus.train, corpus.cmvn, 0, 10**6, None, 50)
    spread = np.mean([np.ptp(frames[[i for _, i in batcher.indices(p, 4)]]) for p in range(0, 24, 4)])
    random_spread = np.mean([np.ptp(frames[np.random.default_rng(s).choice(24, 4, replace=False)])
                             for s in range(200)])
    assert spread < 0.5 * random_spread


def test_max_tokens_bounds_padded_frames(corpus):
    frames = corpus.train.frames
    max_tokens = int(2.5 * frames.max())
    batcher = BucketBatcher(corpus.train, corpus.cmvn, 0, max_tokens, None, 50)
    sizes = []
    for p in range(0, 48, 6):
        x = batcher.batch(p, 6)
        n, t = x["features"].shape[:2]
        assert n * t <= max_tokens and n >= 1 and t == x["feature_lengths"].max()
        # the kept utterances are the shortest of the drawn ones
        drawn = sorted(frames[i] for _, i in batcher.indices(p, 6))
        assert sorted(x["feature_lengths"].tolist()) == drawn[:n]
        # ... and as many as fit: one more would break the bound
        assert n == 6 or (n + 1) * drawn[n] > max_tokens
        sizes.append(n)
    assert max(sizes) < 6
    tiny = BucketBatcher(corpus.train, corpus.cmvn, 0, 1, None, 50)   # never below one
    assert tiny.batch(0, 4)["features"].shape[0] == 1


def test_specaugment_only_in_training_batches(corpus):
    plain = BucketBatcher(corpus.train, corpus.cmvn, 0, 10**6, None).batch(0, 2)
    masked = BucketBatcher(corpus.train, corpus.cmvn, 0, 10**6,
                           SpecAugment(freq_mask_width=20, num_freq_masks=2)).batch(0, 2)
    assert (masked["features"] == 0).sum() > (plain["features"] == 0).sum()
    dev = eval_batches(corpus.dev, corpus.cmvn, 2, 10**6)
    idx, batch = dev[0]
    expected = corpus.cmvn.apply(corpus.dev.features(idx[0]))
    np.testing.assert_array_equal(batch["features"][0, :len(expected)], expected)
    assert sorted(i for ids, _ in dev for i in ids) == list(range(len(corpus.dev)))
    assert [len(ids) for ids, _ in eval_batches(corpus.dev, corpus.cmvn, 8, 10**6, 3)] == [3]


# ------------------------------------------------------------------ demo corpus
def test_translation_is_deterministic_word_by_word_with_reordering():
    assert synth_s2ut.translate("tami sato mapu") == "yelo fezo relo"   # adj noun -> noun adj
    assert synth_s2ut.translate("sato tami mapu") == "yelo fezo relo"   # noun adj stays
    assert synth_s2ut.translate("a ko bu bako") == "el ril lumi hav"    # only the pair next to the noun
    rng = np.random.default_rng(0)
    for _ in range(50):
        src = synth_s2ut.random_sentence(rng)
        tgt = synth_s2ut.translate(src)
        assert tgt == synth_s2ut.translate(src) and len(tgt.split()) == len(src.split())
        units = synth_s2ut.text_to_units(tgt, 100)
        assert len(units) == 2 * len(tgt.replace(" ", "")) + tgt.count(" ")
    with pytest.raises(ValueError, match="not a word"):
        synth_s2ut.translate("hello")
    # distinct characters get distinct unit runs
    table = synth_s2ut.unit_table(100)
    assert len(set(table.values())) == len(table)


def test_demo_corpus_deterministic_and_consistent(corpus_dir, tmp_path):
    again = synth_s2ut.generate(tmp_path / "again", train=24, dev=4, min_seconds=1.0,
                                max_seconds=2.0, n_units=50, seed=3)
    assert again["train"].read_text() == (corpus_dir / "train.tsv").read_text()
    a, _ = sf.read(corpus_dir / "wav" / "train_000005.wav")
    b, _ = sf.read(tmp_path / "again" / "wav" / "train_000005.wav")
    np.testing.assert_array_equal(a, b)
    other = synth_s2ut.generate(tmp_path / "other", train=3, dev=1, n_units=50, seed=4)
    assert other["train"].read_text() != again["train"].read_text()
    for split in ("train", "dev"):
        for u in read_manifest(corpus_dir / f"{split}.tsv", n_units=50):
            assert u.tgt_text == synth_s2ut.translate(u.src_text)
            assert list(u.units) == synth_s2ut.text_to_units(u.tgt_text, 50)
            assert 1.0 <= u.seconds <= 2.0 and sf.info(str(u.audio)).samplerate == SR


def test_same_words_sound_different_across_speakers_but_not_silent():
    rng = np.random.default_rng(1)
    x = synth_s2ut.synth_speech("bako mapu", rng)
    y = synth_s2ut.synth_speech("bako mapu", rng)
    assert x.dtype == np.float32 and np.abs(x).max() <= 1.0 and np.sqrt(np.mean(x ** 2)) > 0.01
    assert x.size != y.size or not np.allclose(x, y)


def test_cli_writes_corpus(tmp_path, capsys):
    synth_s2ut.main([str(tmp_path / "c"), "--train", "2", "--dev", "1", "--seed", "1"])
    assert "wrote 2 train and 1 dev" in capsys.readouterr().out
    assert len(read_manifest(tmp_path / "c" / "train.tsv")) == 2
    assert len(list((tmp_path / "c" / "wav").glob("*.wav"))) == 3


# ------------------------------------------------------------------ config and task
def test_data_config_validation():
    S2UTDataConfig().validate()
    with pytest.raises(ConfigError, match="both data.train_manifest and data.dev_manifest"):
        S2UTDataConfig(train_manifest="train.tsv").validate()
    with pytest.raises(ConfigError, match="data.time_mask_width must be >= 0"):
        S2UTDataConfig(time_mask_width=-1).validate()
    with pytest.raises(ConfigError, match="data.max_tokens"):
        S2UTDataConfig(max_tokens=0).validate()


class OracleTrainer:
    """Answers like a perfect model: CTC paths with a blank between labels, the MT target
    followed by EOS; `drop_last` removes the last ASR label of every utterance."""

    def __init__(self, drop_last=False):
        self.drop_last = drop_last

    def eval_terms(self, batch):
        return {"loss": 4.0, "asr_ctc": 1.0, "st_ctc": 1.0, "mt": 1.0, "unit_ctc": 1.0}

    @staticmethod
    def ctc_path(tokens, lengths, widths):
        """Label, blank, label, blank, ... padded with blanks to widths[b], then junk
        (label 5) that the task must ignore because it lies beyond the valid length."""
        out = np.full((len(tokens), max(widths) + 3), 5, np.int32)
        for b, (t, n, w) in enumerate(zip(tokens, lengths, widths)):
            path = np.stack([t[:n], np.zeros(n, np.int32)], 1).reshape(-1)
            out[b, :w] = 0
            out[b, :len(path)] = path
        return out

    def decode(self, batch, max_target_len):
        src_len, tgt_len = batch["src_lengths"], batch["tgt_lengths"]
        enc_len = np.maximum(2 * src_len, 2 * tgt_len)     # room for either CTC path
        unit_len = 2 * batch["unit_lengths"]
        return {"encoder_lengths": enc_len,
                "asr_ctc_argmax": self.ctc_path(batch["src_tokens"], src_len - self.drop_last, enc_len),
                "st_ctc_argmax": self.ctc_path(batch["tgt_tokens"], tgt_len, enc_len),
                "mt_tokens": batch["target"],
                "unit_ctc_argmax": self.ctc_path(batch["units"], batch["unit_lengths"], unit_len),
                "unit_lengths": unit_len}


def test_echostream_task_scores_an_oracle_perfectly(corpus_dir, tmp_path):
    from shared.specs.echostream import EchoStreamSpec
    from shared.tasks.echostream import EchoStreamTask

    config = SimpleNamespace(
        data=data_config(corpus_dir, dev_max_utterances=3),
        model=EchoStreamSpec(src_vocab_size=24, tgt_vocab_size=24, n_units=50),
        train=TrainConfig(batch_size=2))
    task = EchoStreamTask(config, tmp_path, 0, 1)
    assert sum(len(i) for i, _ in task.dev_batches) == 3
    assert task.units_per_sample == pytest.approx(task.corpus.train.seconds.mean())
    row = task.evaluate(OracleTrainer())
    assert row["val_loss"] == 4.0 and row["val_unit_ctc"] == 1.0
    assert row["wer"] == 0.0 and row["cer"] == 0.0 and row["unit_error_rate"] == 0.0
    assert row["bleu"] == pytest.approx(100.0) and row["st_ctc_bleu"] == pytest.approx(100.0)
    worse = task.evaluate(OracleTrainer(drop_last=True))
    assert worse["wer"] > 0 and worse["cer"] > 0 and worse["bleu"] == pytest.approx(100.0)
    files = task.checkpoint_files()
    assert set(files) == {"src_tokenizer.model", "tgt_tokenizer.model", "cmvn.npz"}
    (tmp_path / "c.npz").write_bytes(files["cmvn.npz"])
    with np.load(tmp_path / "c.npz") as z:
        restored = CMVN(z["mean"], z["std"], int(z["count"]))
    np.testing.assert_array_equal(restored.mean, task.corpus.cmvn.mean)
    # a given tokenizer must fill the model's vocabulary exactly
    config.data = data_config(corpus_dir, src_tokenizer=str(task.corpus.src_tokenizer_path))
    config.model = EchoStreamSpec(src_vocab_size=30, tgt_vocab_size=24, n_units=50)
    with pytest.raises(DataError, match="model.src_vocab_size"):
        EchoStreamTask(config, tmp_path / "run2", 0, 1)


def test_dataset_without_disk_cache(corpus):
    ds = S2UTDataset(corpus.train.utterances[:2], corpus.src_tokenizer, corpus.tgt_tokenizer,
                     FeatureCache(None))
    np.testing.assert_array_equal(ds.features(1), corpus.train.features(1))


def test_echostream_configs_load_with_seed_000_numbers():
    from pathlib import Path

    from shared.engine.config import load_config

    configs = Path(__file__).resolve().parent.parent / "configs"
    mac = load_config(configs / "m2_8gb.yaml")
    m, t, d = mac.model, mac.train, mac.data
    assert (mac.family, m.embed_dim, m.encoder_layers, m.encoder_heads, m.encoder_ffn_dim) == \
        ("echostream", 128, 4, 2, 512)
    assert (t.batch_size, t.gradient_accumulation_steps, t.precision) == (2, 8, "fp32")
    assert (d.max_tokens, d.max_duration, mac.hardware.device) == (5000, 10.0, "m2_8gb")
    full = load_config(configs / "echostream_full.yaml").model
    assert (full.embed_dim, full.encoder_layers, full.encoder_heads, full.encoder_ffn_dim) == \
        (256, 16, 4, 1024)
    demo = load_config(configs / "echostream_demo.yaml")
    assert isinstance(demo.data, S2UTDataConfig) and demo.data.train_manifest == ""
    with pytest.raises(ConfigError, match="unknown key data.max_token"):
        load_config(configs / "echostream_demo.yaml", ["data.max_token=3"])
