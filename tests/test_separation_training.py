"""The separation family end to end on a tiny generated dataset: training through the
shared loop on both backends, evaluation with SDR per stem, exact resume, and the
separate CLI."""
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from shared.engine.config import config_from_dict
from shared.engine.train_loop import Run
from tests.helpers import TRAINERS, metric_rows


def tiny(**train):
    return config_from_dict({
        "family": "tflocoformer",
        "model": dict(n_fft=128, hop=64, emb_dim=8, n_heads=2, n_layers=1, ffn_hidden_dim=[16, 16],
                      norm_groups=4),
        "data": dict(sample_rate=4000, segment_seconds=0.5, synth_tracks=3, synth_seconds=2.0,
                     val_tracks=1, val_segments=2),
        "train": dict(batch_size=2, max_steps=6, warmup_steps=1, learning_rate=3e-3, min_lr=3e-4,
                      log_every=1, eval_every=3, save_every=3, keep_last=1, eval_batches=2) | train})


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_trains_evaluates_and_resumes_exactly(tmp_path, backend):
    cfg = tiny()
    Run(cfg, TRAINERS[backend], tmp_path / "whole", progress=False).train()
    Run(cfg, TRAINERS[backend], tmp_path / "parted", progress=False).train(stop_after=3)
    Run(cfg, TRAINERS[backend], tmp_path / "parted", resume=tmp_path / "parted", progress=False).train()
    whole, parted = metric_rows(tmp_path / "whole"), metric_rows(tmp_path / "parted")
    assert [r["loss"] for r in whole if "loss" in r] == [r["loss"] for r in parted if "loss" in r]
    evals = [r for r in whole if "usdr_vocals" in r]
    assert [r["step"] for r in evals] == [0, 3, 6]
    for stem in ("vocals", "drums", "bass", "other"):
        assert np.isfinite(evals[-1][f"usdr_{stem}"]) and np.isfinite(evals[-1][f"chunk_sdr_{stem}"])
    assert "audio_s_per_s" in whole[1]
    assert (tmp_path / "whole" / "data" / "synth_musdb" / "valid_tracks.txt").is_file()


def test_configs_the_data_cannot_serve_are_refused(tmp_path):
    from shared.errors import DataError
    with pytest.raises(DataError, match="model.n_sources=2, but the MUSDB18 data give 4 stems"):
        Run(config_from_dict({**tiny().to_dict(), "model": {**tiny().to_dict()["model"], "n_sources": 2}}),
            TRAINERS["torch"], tmp_path / "a", progress=False)
    with pytest.raises(DataError, match="data.val_tracks=5, but .* has 2 validation tracks"):
        Run(config_from_dict({**tiny().to_dict(), "data": {**tiny().to_dict()["data"], "val_tracks": 5}}),
            TRAINERS["torch"], tmp_path / "b", progress=False)


@pytest.mark.parametrize("option,value,message", [
    ("--batch-chunks", "0", "--batch-chunks must be >= 1"),
    ("--overlap", "0.95", "--overlap must be within 0..0.9"),
    ("--chunk-seconds", "-1", "--chunk-seconds must be > 0"),
])
def test_separate_options_are_checked_before_any_work(capsys, option, value, message, tmp_path):
    from shared.cli.separate import main
    assert main("torch", None, ["--checkpoint", "nowhere", "song.wav", "--out", str(tmp_path), option, value]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_separate_cli_writes_one_file_per_stem(tmp_path, backend):
    Run(tiny(max_steps=1), TRAINERS[backend], tmp_path / "run", progress=False).train()
    song = np.random.default_rng(0).standard_normal((4000 * 3 + 123, 1)).astype(np.float32) * 0.1
    sf.write(str(tmp_path / "song.wav"), song, 4000)      # mono: spread to both channels
    out = subprocess.run([sys.executable, "-m", f"{backend}_models.separate", "--checkpoint",
                          str(tmp_path / "run"), str(tmp_path / "song.wav"), "--out", str(tmp_path / "stems")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "x real time" in out.stderr
    # 8 chunks of 1953 samples (0.5 s segments, 25 % overlap) for 12123 samples:
    assert "computed 3.9 s for 3.0 s of audio" in out.stderr.splitlines()[-1]
    for stem in ("vocals", "drums", "bass", "other"):
        audio, rate = sf.read(str(tmp_path / "stems" / f"{stem}.wav"))
        assert rate == 4000 and audio.shape == (4000 * 3 + 123, 2)
    # A second run into the same --out replaces the stems only with --force.
    import contextlib
    import importlib
    import io
    from shared.cli.separate import main
    load = importlib.import_module(f"{backend}_models.separate").load
    argv = ["--checkpoint", str(tmp_path / "run"), str(tmp_path / "song.wav"), "--out", str(tmp_path / "stems")]
    (tmp_path / "stems" / "vocals.wav").write_bytes(b"edited")
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(backend, load, argv) == 2
    assert "already holds vocals.wav, drums.wav, bass.wav, other.wav; pass --force" in err.getvalue()
    assert (tmp_path / "stems" / "vocals.wav").read_bytes() == b"edited"
    assert main(backend, load, argv + ["--force"]) == 0
    assert sf.read(str(tmp_path / "stems" / "vocals.wav"))[0].shape == (4000 * 3 + 123, 2)
    wrong = tmp_path / "wrong.wav"
    sf.write(str(wrong), song, 8000)
    bad = subprocess.run([sys.executable, "-m", f"{backend}_models.separate", "--checkpoint",
                          str(tmp_path / "run"), str(wrong), "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=300)
    # A file at another rate is resampled to the model's, and the stems are at the model's rate.
    assert bad.returncode == 0, bad.stderr
    assert "is 8000 Hz; resampled to the model's 4000 Hz (soxr)" in bad.stderr
    stems, rate = sf.read(str(tmp_path / "x" / "vocals.wav"))
    assert rate == 4000 and abs(len(stems) - len(song) / 2) <= 1
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(backend, load, ["--checkpoint", str(tmp_path / "run"), str(tmp_path), "--out",
                                    str(tmp_path / "y")]) == 2
    assert f"{tmp_path} is a directory, not a WAV file" in err.getvalue()


def test_separate_refuses_to_replace_stems_before_any_work(capsys, tmp_path):
    from shared.cli.separate import main
    stems = tmp_path / "stems"
    stems.mkdir()
    (stems / "drums.wav").write_bytes(b"mine")
    (stems / "other.wav").write_bytes(b"mine too")
    assert main("torch", None, ["--checkpoint", "nowhere", "song.wav", "--out", str(stems)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "drums.wav, other.wav" in err and "--force" in err
    assert "vocals.wav" not in err     # only the files that are there
    assert sorted(p.name for p in stems.iterdir()) == ["drums.wav", "other.wav"]
    assert (stems / "drums.wav").read_bytes() == b"mine"
