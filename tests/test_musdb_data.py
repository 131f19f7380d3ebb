"""MUSDB18-HQ reader, remix sampler and synthetic generator (shared/data/musdb.py,
shared/data/synth_musdb.py), on short tracks at a low sample rate to stay fast."""
import shutil

import numpy as np
import pytest
import soundfile as sf

import shared.data.musdb as musdb
from shared.data.musdb import STEMS, MusdbDataset, RemixSampler
from shared.data.synth_musdb import generate, main, synth_track, write_track
from shared.errors import DataError

SR = 8000
SECONDS = 3.0


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """4 train tracks (the first listed as validation) + 1 test track, 3 s at 8 kHz."""
    return generate(tmp_path_factory.mktemp("synth") / "musdb", tracks=4, test_tracks=1,
                    valid_tracks=1, seconds=SECONDS, sample_rate=SR, seed=7)


def tiny_root(tmp_path, names=("Song A", "Song B"), seconds=0.5, silent=()):
    """Tracks of random stems; stems named in `silent` are all zeros."""
    rng = np.random.default_rng(0)
    for name in names:
        stems = {s: np.zeros((2, int(seconds * SR))) if s in silent
                 else 0.1 * rng.standard_normal((2, int(seconds * SR))) for s in STEMS}
        write_track(tmp_path / "train" / name, stems, SR)
    return tmp_path


def segment_of(root, draw, stem, frames):
    audio, _ = sf.read(root / "train" / draw.track / f"{stem}.wav", start=draw.start,
                       frames=frames, dtype="float32", always_2d=True)
    return audio.T


# ------------------------------------------------------------------ generator
def test_generator_writes_the_musdb_layout(root):
    train = sorted(p.name for p in (root / "train").iterdir())
    assert train == [f"Synth 7 - Train Song {i:02d}" for i in range(4)]
    assert [p.name for p in (root / "test").iterdir()] == ["Synth 7 - Test Song 00"]
    assert (root / "valid_tracks.txt").read_text() == "Synth 7 - Train Song 00\n"
    for folder in [*(root / "train").iterdir(), *(root / "test").iterdir()]:
        assert sorted(p.name for p in folder.iterdir()) == sorted(f"{f}.wav" for f in musdb.FILES)
        for f in folder.iterdir():
            info = sf.info(str(f))
            assert (info.samplerate, info.channels, info.frames, info.subtype) == \
                (SR, 2, int(SECONDS * SR), "PCM_16")


def test_generated_stems_are_distinct_and_sum_to_the_mixture(root):
    track = MusdbDataset(root, "train_all", sample_rate=SR).load(1)
    # each of the 5 files is quantised to 16 bits on its own: a few steps of 1/32768 apart
    np.testing.assert_allclose(track["sources"].sum(0), track["mixture"], atol=5 / 32768)
    flat = track["sources"].reshape(4, -1).astype(np.float64)
    assert np.all(np.sqrt(np.mean(flat ** 2, axis=1)) > 1e-3)           # none is silent
    corr = np.corrcoef(flat)
    assert np.abs(corr[np.triu_indices(4, 1)]).max() < 0.2              # unrelated signals
    power = np.abs(np.fft.rfft(flat, axis=1)) ** 2
    centroid = dict(zip(STEMS, power @ np.fft.rfftfreq(flat.shape[1], 1 / SR) / power.sum(1)))
    assert centroid["bass"] < 200 < min(centroid["vocals"], centroid["drums"], centroid["other"])
    # drums are hits on a grid, "other" a steady pad: compare loud and typical 10 ms frames
    frames = track["sources"][:, 0].reshape(4, -1, SR // 100).astype(np.float64)
    energy = dict(zip(STEMS, np.mean(frames ** 2, axis=2)))
    peakiness = {s: np.percentile(e, 95) / np.percentile(e, 50) for s, e in energy.items()}
    assert peakiness["drums"] > 10 > 3 > peakiness["other"]


def test_generator_is_deterministic_per_seed():
    a, b, c = (synth_track(1.0, SR, seed, number=3) for seed in (5, 5, 6))
    assert all(np.array_equal(a[s], b[s]) for s in STEMS)
    assert not any(np.array_equal(a[s], c[s]) for s in STEMS)


def test_cli(tmp_path, capsys):
    main([str(tmp_path / "d"), "--tracks", "2", "--test-tracks", "1", "--valid-tracks", "1",
          "--seconds", "0.5", "--sample-rate", str(SR), "--seed", "3"])
    assert "wrote 2 train (1 of them valid) + 1 test tracks" in capsys.readouterr().out
    assert len(MusdbDataset(tmp_path / "d", "train", sample_rate=SR)) == 1
    with pytest.raises(SystemExit):
        main([str(tmp_path / "e"), "--tracks", "1", "--valid-tracks", "2"])


# ------------------------------------------------------------------ reader
def test_splits(root, tmp_path):
    names = {s: [t.name for t in MusdbDataset(root, s, sample_rate=SR).tracks]
             for s in musdb.SPLITS}
    assert names["valid"] == ["Synth 7 - Train Song 00"]
    assert names["train"] == [f"Synth 7 - Train Song {i:02d}" for i in (1, 2, 3)]
    assert names["train_all"] == names["valid"] + names["train"]
    assert names["test"] == ["Synth 7 - Test Song 00"]
    # without valid_tracks.txt, the official MUSDB18 validation list decides
    shutil.copytree(root / "train" / "Synth 7 - Train Song 01", tmp_path / "train" / "Leaf - Summerghost")
    shutil.copytree(root / "train" / "Synth 7 - Train Song 02", tmp_path / "train" / "Other Band - Song")
    assert [t.name for t in MusdbDataset(tmp_path, "valid", sample_rate=SR).tracks] == ["Leaf - Summerghost"]
    assert [t.name for t in MusdbDataset(tmp_path, "train", sample_rate=SR).tracks] == ["Other Band - Song"]
    assert len(musdb.VALIDATION_TRACKS) == len(set(musdb.VALIDATION_TRACKS)) == 14


def test_full_track_iteration(root):
    dataset = MusdbDataset(root, "train_all", sample_rate=SR)
    tracks = list(dataset.full_tracks())
    assert [t["name"] for t in tracks] == [t.name for t in dataset.tracks]
    for track in tracks:
        folder = root / "train" / track["name"]
        assert track["mixture"].dtype == track["sources"].dtype == np.float32
        assert track["mixture"].shape == (2, int(SECONDS * SR))
        assert track["sources"].shape == (4, 2, int(SECONDS * SR))
        np.testing.assert_array_equal(track["mixture"], sf.read(folder / "mixture.wav", dtype="float32")[0].T)
        np.testing.assert_array_equal(track["sources"][2], sf.read(folder / "bass.wav", dtype="float32")[0].T)


def test_sampler_reads_only_the_segment(root, monkeypatch):
    calls = []
    real_read = sf.read
    monkeypatch.setattr(sf, "read", lambda *a, **k: calls.append(k) or real_read(*a, **k))
    RemixSampler(MusdbDataset(root, "train", sample_rate=SR), 1000, seed=0, min_rms=0).sample(0)
    assert len(calls) == 4 and all(k["frames"] == 1000 for k in calls)


# ------------------------------------------------------------------ sampler
def test_sampler_output(root):
    sampler = RemixSampler(MusdbDataset(root, "train", sample_rate=SR), 2000, seed=1)
    sample = sampler.sample(0)
    assert sample["mixture"].shape == (2, 2000) and sample["sources"].shape == (4, 2, 2000)
    assert sample["mixture"].dtype == sample["sources"].dtype == np.float32
    np.testing.assert_allclose(sample["mixture"], sample["sources"].sum(0), atol=1e-6)
    batch = sampler.batch(3, 2)
    assert batch["mixture"].shape == (2, 2, 2000) and batch["sources"].shape == (2, 4, 2, 2000)


def test_sampler_is_a_pure_function_of_seed_and_index(root):
    dataset = MusdbDataset(root, "train", sample_rate=SR)
    run = RemixSampler(dataset, 2000, seed=1)
    uninterrupted = [run.batch(p, 2) for p in (0, 2, 4)]
    resumed = RemixSampler(dataset, 2000, seed=1).batch(4, 2)    # a fresh process at step 2
    for key in ("mixture", "sources"):
        np.testing.assert_array_equal(resumed[key], uninterrupted[2][key])
        np.testing.assert_array_equal(run.sample(3)[key], uninterrupted[1][key][1])
    assert not np.array_equal(run.sample(0)["mixture"], run.sample(1)["mixture"])
    other_seed = RemixSampler(dataset, 2000, seed=2)
    assert not np.array_equal(run.sample(0)["mixture"], other_seed.sample(0)["mixture"])
    # data-parallel ranks take consecutive shares of the global batch
    rank1 = RemixSampler(dataset, 2000, seed=1, rank=1, world_size=2).batch(0, 2)
    np.testing.assert_array_equal(rank1["sources"], uninterrupted[1]["sources"])


def test_remix_draws_each_stem_from_its_own_track_and_offset(root):
    sampler = RemixSampler(MusdbDataset(root, "train", sample_rate=SR), 2000, seed=3)
    examples = [sampler.example(i) for i in range(6)]
    assert any(len({d.track for d in draws}) > 1 for _, draws in examples)
    assert any(len({d.start for d in draws}) > 1 for _, draws in examples)
    for sample, draws in examples:  # each source really is that track's segment, scaled
        for stem, source, draw in zip(STEMS, sample["sources"], draws):
            assert 0.25 <= draw.gain <= 1.25
            segment = segment_of(root, draw, stem, 2000)
            expected = draw.gain * (segment[::-1] if draw.swapped else segment)
            np.testing.assert_allclose(source, expected, rtol=1e-6, atol=1e-7)
    together = RemixSampler(MusdbDataset(root, "train", sample_rate=SR), 2000, seed=3, remix=False)
    for i in range(4):
        draws = together.example(i)[1]
        assert len({(d.track, d.start) for d in draws}) == 1


def test_channel_swap(root):
    dataset = MusdbDataset(root, "train", sample_rate=SR)
    sampler = RemixSampler(dataset, 500, seed=4)
    swaps = [(i, stem) for i in range(8) for stem, d in enumerate(sampler.example(i)[1]) if d.swapped]
    assert 0 < len(swaps) < 32                         # about half of the 8 x 4 stems
    i, stem = swaps[0]
    sample, draws = sampler.example(i)
    segment = segment_of(root, draws[stem], STEMS[stem], 500)
    assert not np.allclose(segment[0], segment[1])     # the channels differ, so a swap shows
    np.testing.assert_allclose(sample["sources"][stem], draws[stem].gain * segment[::-1], rtol=1e-6)
    fixed = RemixSampler(dataset, 500, seed=4, channel_swap=False)
    assert not any(d.swapped for i in range(8) for d in fixed.example(i)[1])


def test_silent_segments_are_redrawn_a_bounded_number_of_times(tmp_path):
    tiny_root(tmp_path, names=("Instrumental",), silent=("vocals",))
    tiny_root(tmp_path, names=("Song",))
    dataset = MusdbDataset(tmp_path, "train_all", sample_rate=SR)

    def vocal_tracks(sampler):
        return [sampler.example(i)[1][0].track for i in range(30)]
    assert set(vocal_tracks(RemixSampler(dataset, 1000, seed=0, max_retries=30))) == {"Song"}
    unchecked = vocal_tracks(RemixSampler(dataset, 1000, seed=0, min_rms=0.0))
    assert "Instrumental" in unchecked and "Song" in unchecked

    only_silent = MusdbDataset(tiny_root(tmp_path / "s", names=("Quiet",), silent=("vocals",)),
                               "train_all", sample_rate=SR)
    sample = RemixSampler(only_silent, 1000, seed=0, max_retries=3).sample(0)  # returns
    assert not sample["sources"][0].any() and sample["sources"][1].any()


# ------------------------------------------------------------------ errors
def error(root, split="train_all", **kwargs) -> str:
    with pytest.raises(DataError) as e:
        MusdbDataset(root, split, **{"sample_rate": SR, **kwargs})
    return str(e.value)


def test_missing_stem_names_the_track(tmp_path):
    (tiny_root(tmp_path) / "train" / "Song B" / "bass.wav").unlink()
    msg = error(tmp_path)
    assert "'Song B'" in msg and "missing bass.wav" in msg and "restore the files" in msg


def test_a_file_at_another_rate_must_still_last_as_long(tmp_path):
    tiny_root(tmp_path)
    sf.write(tmp_path / "train" / "Song A" / "drums.wav", np.zeros((4000, 2)), 16000)
    msg = error(tmp_path)
    assert "'Song A'" in msg and "differ in length" in msg and "drums.wav 2000" in msg \
        and "at 8000 Hz" in msg


def test_wrong_channel_count_names_the_track(tmp_path):
    tiny_root(tmp_path)
    sf.write(tmp_path / "train" / "Song B" / "vocals.wav", np.zeros(4000), SR)
    msg = error(tmp_path)
    assert "'Song B'" in msg and "vocals.wav has 1 channel(s), expected 2" in msg and "convert" in msg


def test_unreadable_file_names_the_track(tmp_path):
    tiny_root(tmp_path)
    (tmp_path / "train" / "Song A" / "other.wav").write_bytes(b"not a wav file" * 10)
    msg = error(tmp_path)
    assert "'Song A'" in msg and "other.wav is not readable audio" in msg and "replace" in msg


def test_files_of_different_length_name_the_track(tmp_path):
    tiny_root(tmp_path)
    sf.write(tmp_path / "train" / "Song A" / "vocals.wav", np.zeros((100, 2)), SR)
    msg = error(tmp_path)
    assert "'Song A'" in msg and "differ in length" in msg


def test_empty_splits(tmp_path):
    assert "not found" in error(tmp_path) and "synth_musdb" in error(tmp_path)
    (tmp_path / "train").mkdir()
    assert "the train_all split is empty" in error(tmp_path)
    tiny_root(tmp_path, names=("Song A",))
    msg = error(tmp_path, split="valid")
    assert "none of the 14 validation tracks (from the official MUSDB18 validation list)" in msg
    (tmp_path / "valid_tracks.txt").write_text("Song A\n")
    assert "every track in" in error(tmp_path, split="train")
    assert "test not found" in error(tmp_path, split="test")
    assert "unknown MUSDB split 'validation'" in error(tmp_path, split="validation")


def test_segment_longer_than_every_track(tmp_path):
    dataset = MusdbDataset(tiny_root(tmp_path, seconds=0.5), "train_all", sample_rate=SR)
    with pytest.raises(DataError, match="the longest, 'Song A', has 4000"):
        RemixSampler(dataset, 5000, seed=0)
