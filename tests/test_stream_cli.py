"""`python -m {mlx,torch}_models.stream` end to end: a two-step EchoStream checkpoint (its
tokenizers and CMVN saved beside the weights by training), a WAV of the demo corpus fed in
320 ms chunks; both backends print the same transcripts, translation and units. Bad input
gets one line naming the problem."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
SMALL = ["train.max_steps=2", "train.eval_every=2", "train.save_every=2", "train.batch_size=2",
         "data.synth_train_utterances=60", "data.synth_dev_utterances=4",
         "model.embed_dim=32", "model.encoder_layers=1"]


def run(*args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("echostream_run")
    r = run("torch_models.train", "--config", "configs/echostream_demo.yaml", "--out", str(out),
            "--no-progress", *SMALL)
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.slow
def test_both_backends_stream_the_same_results(checkpoint, tmp_path):
    wav = sorted((checkpoint / "data").rglob("*.wav"))[0]
    results = {}
    for backend in ("mlx", "torch"):
        out = tmp_path / f"{backend}.json"
        r = run(f"{backend}_models.stream", "--checkpoint", str(checkpoint), str(wav),
                "--chunk-ms", "320", "--json", str(out))
        assert r.returncode == 0, r.stderr
        assert "real-time factor" in r.stderr and "MT:" in r.stdout
        assert r.stderr.splitlines()[-1] == f"wrote the results and per-chunk timings to {out}"
        results[backend] = json.loads(out.read_text())
    m, t = results["mlx"], results["torch"]
    for key in ("asr", "st_ctc", "mt", "units", "chunks"):
        assert m[key] == t[key], key
    seconds = sf.info(str(wav)).duration
    assert m["chunks"] == int(np.ceil(seconds / 0.32)) and abs(m["audio_seconds"] - seconds) < 1e-3
    assert len(m["timing"]["chunk_ms"]) == m["chunks"] and m["real_time_factor"] > 0


@pytest.mark.slow
def test_the_checkpoint_sets_the_sample_rate(checkpoint, tmp_path):
    """Features are computed at the rate the model was trained on (data.sample_rate)."""
    import shutil
    import yaml
    ckpt = tmp_path / "at8k"
    shutil.copytree(checkpoint / "checkpoints" / "best", ckpt)
    config = yaml.safe_load((ckpt / "config.yaml").read_text())
    config["data"]["sample_rate"] = 8000
    (ckpt / "config.yaml").write_text(yaml.safe_dump(config))
    (ckpt / "manifest.json").unlink()   # a deliberate edit: the hash check would refuse it
    speech = tmp_path / "speech8k.wav"
    sf.write(str(speech), 0.1 * np.random.default_rng(0).standard_normal(8000).astype(np.float32), 8000)
    r = run("torch_models.stream", "--checkpoint", str(ckpt), str(speech), "--json", str(tmp_path / "r.json"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["audio_seconds"] == pytest.approx(1.0)
    wav16k = sorted((checkpoint / "data").rglob("*.wav"))[0]
    r = run("torch_models.stream", "--checkpoint", str(ckpt), str(wav16k), "--json", str(tmp_path / "r16.json"))
    assert r.returncode == 0 and "resampled to the model's 8000 Hz" in r.stderr, r.stderr
    seconds = sf.info(str(wav16k)).duration
    assert json.loads((tmp_path / "r16.json").read_text())["audio_seconds"] == pytest.approx(seconds, abs=1e-3)


@pytest.mark.slow
def test_bad_inputs_are_one_line(checkpoint, tmp_path):
    stereo = tmp_path / "stereo.wav"
    sf.write(str(stereo), np.zeros((16000, 2), np.float32), 16000)
    r = run("torch_models.stream", "--checkpoint", str(checkpoint), str(stereo))
    assert r.returncode == 2 and "mono" in r.stderr and "Traceback" not in r.stderr
    rate = tmp_path / "rate.wav"
    sf.write(str(rate), np.zeros(8000, np.float32), 8000)
    r = run("torch_models.stream", "--checkpoint", str(checkpoint), str(tmp_path / "missing.wav"))
    assert r.returncode == 2 and "no such file" in r.stderr
    r = run("torch_models.stream", "--checkpoint", str(checkpoint), str(tmp_path))
    assert r.returncode == 2 and f"{tmp_path} is a directory, not a WAV file" in r.stderr
    assert r.stderr.count("\n") == 1
    r = run("torch_models.stream", "--checkpoint", str(checkpoint), str(rate), "--max-target-len", "0")
    assert r.returncode == 2 and "--max-target-len must be >= 1" in r.stderr
    lm_like = tmp_path / "not_echostream"
    lm_like.mkdir()
    r = run("torch_models.stream", "--checkpoint", str(lm_like), str(rate))
    assert r.returncode == 2 and "holds no checkpoint" in r.stderr


@pytest.mark.slow
def test_simuleval_with_our_agent_scores_what_our_evaluation_scores(checkpoint, tmp_path):
    """SimulEval itself, running shared/simuleval_agent.py on three demo utterances in
    320 ms segments, reports the BLEU and latency that shared/eval/streaming.py computes
    for the same checkpoint, policy and chunk size."""
    import shutil

    from shared.cli.stream import load_checkpoint
    from shared.data.s2ut import load_audio, read_manifest
    from shared.eval.latency import LATENCY_METRICS
    from shared.eval.streaming import evaluate_simultaneous
    from torch_models.stream import load

    simuleval = shutil.which("simuleval")
    assert simuleval, "simuleval is a dev dependency"
    utterances = read_manifest(checkpoint / "data" / "synth_s2ut" / "dev.tsv")[:3]
    (tmp_path / "src.txt").write_text("".join(f"{u.audio}\n" for u in utterances))
    (tmp_path / "tgt.txt").write_text("".join(f"{u.tgt_text}\n" for u in utterances))
    r = subprocess.run([simuleval, "--agent-class", "shared.simuleval_agent.EchoStreamAgent",
                        "--checkpoint", str(checkpoint), "--backend", "torch", "--policy", "ctc",
                        "--max-target-len", "30",
                        "--source", str(tmp_path / "src.txt"), "--target", str(tmp_path / "tgt.txt"),
                        "--source-type", "speech", "--target-type", "text", "--source-segment-size", "320",
                        "--output", str(tmp_path / "out"), "--quality-metrics", "BLEU",
                        "--latency-metrics", *LATENCY_METRICS],
                       cwd=REPO, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-2000:]
    header, values = (tmp_path / "out" / "scores.tsv").read_text().splitlines()[:2]
    theirs = dict(zip(header.split(), map(float, values.split())))

    loaded = load_checkpoint("torch", load, str(checkpoint))
    [ours] = evaluate_simultaneous(loaded["new_session"], loaded["spec"], loaded["src"], loaded["tgt"], loaded["cmvn"],
                                   loaded["sample_rate"], utterances, load_audio, [320], policy="ctc",
                                   max_target_len=30, progress=False)
    assert ours["bleu"] == pytest.approx(theirs["BLEU"], abs=1e-3)
    for name in LATENCY_METRICS:   # SimulEval rounds to 3 decimals
        assert ours["text_latency_ms"][name] == pytest.approx(theirs[name], abs=2e-3), name


@pytest.mark.slow
def test_evaluate_writes_the_quality_latency_curve_and_keeps_it(checkpoint, tmp_path):
    manifest = checkpoint / "data" / "synth_s2ut" / "dev.tsv"
    out = tmp_path / "curve"
    args = ("--checkpoint", str(checkpoint), "--manifest", str(manifest), "--max-utterances", "2",
            "--chunk-ms", "320,0", "--out", str(out))
    r = run("torch_models.evaluate", *args)
    assert r.returncode == 0, r.stderr
    rows = json.loads((out / "results.json").read_text())
    assert [row["chunk"] for row in rows] == ["320 ms", "whole"]
    for row in rows:
        assert row["utterances"] == 2 and set(row["text_latency_ms"]) >= {"AL", "LAAL", "AP", "DAL"}
        assert 0 <= row["unit_error_rate"] and 0 <= row["bleu"] <= 100
    # the whole utterance is read before anything is written: every word waits for the end
    assert rows[1]["text_latency_ms"]["StartOffset"] >= rows[0]["text_latency_ms"]["StartOffset"]
    assert (out / "curve.png").stat().st_size > 0 and "| 320 ms |" in (out / "curve.md").read_text()
    before = (out / "results.json").read_bytes()
    r = run("torch_models.evaluate", *args)
    assert r.returncode == 2 and "--force" in r.stderr.strip().splitlines()[-1]
    assert (out / "results.json").read_bytes() == before
