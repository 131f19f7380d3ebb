"""Bad numbers are found, named and stop the run: truncated, non-finite and far out-of-range
audio in every reader (training, validation, inference), NaN stems never written, a run
that diverges never ends with exit 0, and the one-line data files that used to give
puzzling messages."""
import contextlib
import io
import struct

import numpy as np
import pytest
import soundfile as sf

from shared.audio.files import MAX_ABS_SAMPLE, audio_info, check_samples, read_audio_file
from shared.data.musdb import STEMS, MusdbDataset, RemixSampler
from shared.data.s2ut import load_audio, read_manifest
from shared.data.synth_musdb import write_track
from shared.engine.config import load_config
from shared.engine.train_loop import Run
from shared.errors import ConfigError, DataError
from tests.helpers import TRAINERS, metric_rows

SR = 8000
REGRESSOR = "tests/fifth_family/regressor.yaml"


def noise(frames, channels=2, seed=0):
    return (0.1 * np.random.default_rng(seed).standard_normal((frames, channels))).astype(np.float32)


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return path


# ------------------------------------------------------------------ the checks themselves
@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT"])
def test_a_truncated_wav_is_named(tmp_path, subtype):
    path = tmp_path / "song.wav"
    sf.write(path, noise(SR), SR, subtype=subtype)
    assert audio_info(path).frames == SR            # the whole file passes
    truncate(path)
    assert 0 < sf.info(str(path)).frames < SR        # what libsndfile alone reports: no error
    with pytest.raises(DataError, match=r"song.wav is truncated: its header promises \d+ bytes"):
        audio_info(path)
    with pytest.raises(DataError, match="truncated"):
        read_audio_file(path)


def test_a_streamed_wav_with_an_unknown_size_is_not_truncated(tmp_path):
    """Writers that stream (pipes, live recorders) leave 0xFFFFFFFF in the data size."""
    path = tmp_path / "live.wav"
    sf.write(path, noise(SR), SR, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    at = data.index(b"data") + 4
    data[at:at + 4] = struct.pack("<I", 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    assert audio_info(path).frames == SR


@pytest.mark.parametrize("bad,message", [(np.nan, "non-finite"), (np.inf, "non-finite"),
                                         (-np.inf, "non-finite"), (1000.0, "magnitude 1000")])
def test_non_finite_and_far_out_of_range_samples_are_named(tmp_path, bad, message):
    audio = noise(SR)
    audio[123, 1] = bad
    path = tmp_path / "damaged.wav"
    sf.write(path, audio, SR, subtype="FLOAT")
    with pytest.raises(DataError, match=f"damaged.wav holds .*{message}"):
        read_audio_file(path)


def test_overs_within_the_bound_are_accepted():
    audio = noise(100)
    audio[5, 0] = MAX_ABS_SAMPLE * 0.9       # a float mix past full scale: kept
    check_samples(audio, "x.wav")
    audio[5, 0] = MAX_ABS_SAMPLE * 1.1
    with pytest.raises(DataError, match="beyond 16"):
        check_samples(audio, "x.wav")


# ------------------------------------------------------------------ MUSDB (training, validation)
def musdb_root(tmp_path, names=("Song A", "Song B"), seconds=0.5):
    for i, name in enumerate(names):
        write_track(tmp_path / "train" / name,
                    {s: noise(int(seconds * SR), seed=10 * i + j).T for j, s in enumerate(STEMS)}, SR)
    return tmp_path


def poison(path, value=np.nan, at=100):
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    audio[at:, :] = value           # a damaged tail
    sf.write(path, audio, rate, subtype="FLOAT")


def test_nan_in_training_audio_stops_the_sampler_naming_the_file(tmp_path):
    """It used to be skipped as "silent" (the RMS of NaN is not >= min_rms)."""
    root = musdb_root(tmp_path, names=("Song A",))
    poison(root / "train" / "Song A" / "vocals.wav")
    sampler = RemixSampler(MusdbDataset(root, "train_all", sample_rate=SR), 1000, seed=0)
    with pytest.raises(DataError, match=r"track 'Song A': .*vocals.wav holds \d+ non-finite"):
        sampler.sample(0)


def test_inf_and_nan_in_a_validation_track_are_named(tmp_path):
    root = musdb_root(tmp_path)
    (root / "valid_tracks.txt").write_text("Song B\n")
    poison(root / "train" / "Song B" / "drums.wav", np.inf)
    with pytest.raises(DataError, match=r"track 'Song B': .*drums.wav holds \d+ non-finite"):
        MusdbDataset(root, "valid", sample_rate=SR).load(0)


def test_a_truncated_track_file_is_named_when_the_dataset_is_built(tmp_path):
    root = musdb_root(tmp_path)
    truncate(root / "train" / "Song B" / "bass.wav")
    with pytest.raises(DataError, match=r"track 'Song B': .*bass.wav is truncated"):
        MusdbDataset(root, "train_all", sample_rate=SR)


def test_a_valid_tracks_list_that_is_not_utf8_is_one_error(tmp_path):
    root = musdb_root(tmp_path)
    (root / "valid_tracks.txt").write_bytes("Song \xc4\n".encode("latin-1"))
    with pytest.raises(DataError, match="valid_tracks.txt is not UTF-8 text"):
        MusdbDataset(root, "valid", sample_rate=SR)


# ------------------------------------------------------------------ S2UT manifests
def test_nan_and_truncated_audio_in_a_manifest_name_file_and_row(tmp_path):
    for name in ("a", "b", "c"):
        sf.write(tmp_path / f"{name}.wav", noise(8000, channels=1)[:, 0], 16000, subtype="FLOAT")
    poison(tmp_path / "b.wav")
    truncate(tmp_path / "c.wav")
    header = "id\tsrc_audio\tsrc_n_frames\tsrc_text\ttgt_text\ttgt_audio\n"
    rows = [f"{n}\t{n}.wav\t48\tba ki\tlumi\t3 4\n" for n in ("a", "b", "c")]
    manifest = tmp_path / "m.tsv"
    manifest.write_text(header + "".join(rows))
    with pytest.raises(DataError, match=r"row 3 \(line 4\): .*c.wav is truncated"):
        read_manifest(manifest)
    a, b = read_manifest(manifest, skip_bad_rows=True, log=lambda _: None)
    assert load_audio(a).shape == (8000,)
    with pytest.raises(DataError, match=r"manifest .*m.tsv row 2 \(id 'b'\): .*b.wav holds \d+ non-finite"):
        load_audio(b)


# ------------------------------------------------------------------ separate
def separator_checkpoint(tmp_path, broken=False):
    import torch_models.models as torch_io
    from shared.engine.config import config_from_dict
    from shared.registry import get_family

    config = config_from_dict({"family": "tflocoformer", "model": dict(
        n_fft=128, hop=64, emb_dim=8, n_heads=2, n_layers=1, ffn_hidden_dim=[16, 16], norm_groups=4)})
    family = get_family("tflocoformer")
    weights = family.init_weights(config.model, 0)
    if broken:   # a diverged run's weights
        weights = {k: np.full_like(v, np.nan) for k, v in weights.items()}
    model = torch_io.build_model(config.model, weights=weights)
    return torch_io.save_model(model, tmp_path / "ckpt",
                               {"data": {"sample_rate": SR, "segment_seconds": 0.5}})


def separate(args):
    from shared.cli.separate import main
    from torch_models.separate import load
    with contextlib.redirect_stderr(io.StringIO()) as err:
        code = main("torch", load, args)
    return code, err.getvalue()


def test_separate_refuses_nan_input_and_never_writes_nan_stems(tmp_path):
    song = noise(SR * 2)
    sf.write(tmp_path / "song.wav", song, SR, subtype="FLOAT")
    song[500] = np.nan
    sf.write(tmp_path / "nan.wav", song, SR, subtype="FLOAT")
    good, broken = separator_checkpoint(tmp_path / "good"), separator_checkpoint(tmp_path / "bad", True)

    code, err = separate(["--checkpoint", str(good), str(tmp_path / "nan.wav"), "--out", str(tmp_path / "a")])
    assert code == 2 and "nan.wav holds 2 non-finite samples" in err.splitlines()[-1]
    assert not list((tmp_path / "a").glob("*.wav"))

    code, err = separate(["--checkpoint", str(broken), str(tmp_path / "song.wav"), "--out", str(tmp_path / "b")])
    assert code == 2 and "gives non-finite samples (NaN/inf) for" in err.splitlines()[-1]
    assert "song.wav" in err.splitlines()[-1] and not list((tmp_path / "b").glob("*.wav"))

    code, err = separate(["--checkpoint", str(good), str(tmp_path / "song.wav"), "--out", str(tmp_path / "c")])
    assert code == 0 and all(np.isfinite(sf.read(tmp_path / "c" / f"{s}.wav")[0]).all() for s in STEMS)


# ------------------------------------------------------------------ runs that diverge
@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_a_run_whose_evaluation_is_not_finite_stops_non_zero(tmp_path, backend):
    """train.learning_rate=1e30: the evaluation gives val_loss nan; the run stops there,
    saves nothing from the diverged weights, and says what to do."""
    config = load_config(REGRESSOR, ["train.learning_rate=1e30", "train.max_steps=4",
                                     "train.save_every=100", "train.eval_every=2"])
    with pytest.raises(ConfigError, match=r"evaluation at step 2 gave val_loss=nan: .* lower "
                                          r"train.learning_rate and start again"):
        Run(config, TRAINERS[backend], tmp_path / "run", progress=False).train()
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert metric_rows(tmp_path / "run")[-1]["val_loss"] is None


def test_non_finite_weights_are_never_saved(tmp_path):
    class NaNAfterStep2(TRAINERS["torch"]):
        steps = 0

        def train_step(self, micro, lr):
            NaNAfterStep2.steps += 1
            return super().train_step(micro, lr)

        def get_weights(self):
            weights = super().get_weights()
            if NaNAfterStep2.steps > 2:
                weights["layers.1.weight"] = np.full_like(weights["layers.1.weight"], np.nan)
            return weights

    config = load_config(REGRESSOR, ["train.max_steps=4", "train.save_every=1", "train.eval_every=4"])
    with pytest.raises(ConfigError, match=r"step 3: weight layers.1.weight is no longer finite .* no "
                                          r"checkpoint step_00000003 was written; .* resume"):
        Run(config, NaNAfterStep2, tmp_path / "run", progress=False).train()
    saved = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*"))
    assert saved == ["step_00000001", "step_00000002"]


def test_a_run_that_ends_on_skipped_steps_exits_non_zero(tmp_path):
    """Fewer non-finite steps than train.max_bad_steps, but the last ones: not a success."""
    class LastStepBad(TRAINERS["torch"]):
        calls = 0

        def train_step(self, micro, lr):
            LastStepBad.calls += 1
            result = super().train_step(micro, lr)
            return {**result, "skipped": True} if LastStepBad.calls == 4 else result

    config = load_config(REGRESSOR, ["train.max_steps=4", "train.max_bad_steps=5"])
    with pytest.raises(ConfigError, match="training ended at step 4 on 1 non-finite step"):
        Run(config, LastStepBad, tmp_path / "run", progress=False).train()


# ------------------------------------------------------------------ text
def test_a_one_paragraph_text_file_says_where_the_paragraph_went(tmp_path):
    from shared.data.lm_text import LMDataset
    (tmp_path / "one.txt").write_text("대한민국은 민주공화국이다.\n", encoding="utf-8")
    config = load_config(None, [f"data.train_files=[{tmp_path / 'one.txt'}]"])
    with pytest.raises(DataError, match="one paragraph .* held out for validation .* set data.val_files"):
        LMDataset(config.data, config.model.vocab_size, tmp_path / "run")
