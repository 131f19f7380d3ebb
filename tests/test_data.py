"""The LM data pipeline and the LR schedule."""
import math

import numpy as np
import pytest

from shared.data.lm_text import DataConfig
from shared.data.lm_text import (DataError, LMDataset, WindowSampler, builtin_corpus_files,
                                 eval_batches, read_paragraphs)
from shared.engine.schedule import lr_at


def test_builtin_corpus_is_real_korean_text():
    files = builtin_corpus_files()
    assert len(files) == 11
    text = "".join(read_paragraphs(files))
    hangul = sum("\uac00" <= c <= "\ud7a3" for c in text)
    assert len(text) > 50_000 and hangul / len(text) > 0.5
    assert "대한민국" in text


def test_dataset_builds_once_and_round_trips_text(tmp_path):
    ds = LMDataset(DataConfig(), 1024, tmp_path)
    assert ds.index["vocab_size"] <= 1024 and ds.train.dtype == np.uint16
    assert ds.index["train_tokens"] > 10 * ds.index["val_tokens"] > 0  # val_fraction 0.05
    sp = ds.tokenizer
    # Tokens decode back to the corpus text (byte fallback: nothing is lost to <unk>).
    first = read_paragraphs(builtin_corpus_files())[0]
    assert sp.decode(sp.encode(first)) == first
    mtime = (tmp_path / "train.bin").stat().st_mtime_ns
    LMDataset(DataConfig(), 1024, tmp_path)
    assert (tmp_path / "train.bin").stat().st_mtime_ns == mtime  # cached, not rebuilt


def test_user_files_and_their_errors(tmp_path):
    corpus = tmp_path / "a.txt"
    corpus.write_text("\n".join(f"문장 번호 {i}: 학습용 텍스트입니다." for i in range(400)))
    ds = LMDataset(DataConfig(train_files=[str(corpus)]), 512, tmp_path / "cache")
    assert ds.index["train_files"] == [str(corpus)]
    with pytest.raises(DataError, match="missing.txt not found"):
        LMDataset(DataConfig(train_files=[str(tmp_path / "missing.txt")]), 512, tmp_path / "c2")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="empty"):
        LMDataset(DataConfig(train_files=[str(empty)]), 512, tmp_path / "c3")
    with pytest.raises(DataError, match="model.vocab_size is 300"):
        LMDataset(DataConfig(train_files=[str(corpus)], tokenizer=str(ds.tokenizer_path)),
                  300, tmp_path / "c4")
    binary = tmp_path / "b.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="not UTF-8"):
        LMDataset(DataConfig(train_files=[str(binary)]), 512, tmp_path / "c5")


def test_sampler_windows_are_slices_and_deterministic():
    tokens = np.arange(10_000, dtype=np.uint16)
    s = WindowSampler(tokens, 16, seed=4)
    b = s.batch(37, 8)
    assert b.shape == (8, 17) and b.dtype == np.int32
    assert all(np.array_equal(row, np.arange(row[0], row[0] + 17)) for row in b)
    assert np.array_equal(WindowSampler(tokens, 16, seed=4).batch(37, 8), b)  # pure function
    assert not np.array_equal(WindowSampler(tokens, 16, seed=5).batch(37, 8), b)


def test_sampler_covers_an_epoch_without_repeats_and_splits_ranks():
    tokens = np.arange(2_000, dtype=np.uint16)
    s = WindowSampler(tokens, 10, seed=0)
    epoch = np.concatenate([s.batch(i, 1)[:, 0] for i in range(s.windows_per_epoch)])
    assert len(set(epoch.tolist())) == s.windows_per_epoch
    whole = WindowSampler(tokens, 10, seed=0).batch(40, 6)
    ranks = [WindowSampler(tokens, 10, seed=0, rank=r, world_size=2).batch(40, 3) for r in (0, 1)]
    assert np.array_equal(np.concatenate(ranks), whole)


def test_too_little_data_is_a_clear_error():
    with pytest.raises(DataError, match="fewer than one window"):
        WindowSampler(np.arange(10, dtype=np.uint16), 16, seed=0)
    with pytest.raises(DataError, match="validation split"):
        eval_batches(np.arange(10, dtype=np.uint16), 16, 2, 2)


def test_schedule_matches_its_formula():
    lr, lo, warm, total = 2e-4, 2e-5, 4000, 200_000
    assert lr_at(0, lr, lo, warm, total) == pytest.approx(lr / warm)
    assert lr_at(warm - 1, lr, lo, warm, total) == pytest.approx(lr)
    assert lr_at(warm, lr, lo, warm, total) == pytest.approx(lr)
    mid = warm + (total - warm) // 2
    assert lr_at(mid, lr, lo, warm, total) == pytest.approx((lr + lo) / 2)
    quarter = warm + (total - warm) // 4
    assert lr_at(quarter, lr, lo, warm, total) == pytest.approx(lo + (lr - lo) * (1 + math.cos(math.pi / 4)) / 2)
    assert lr_at(total, lr, lo, warm, total) == pytest.approx(lo)
    assert lr_at(0, lr, lo, 0, total) == pytest.approx(lr)
