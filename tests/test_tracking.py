"""Experiment tracking (train.report_to, shared/engine/tracking.py): the sinks get the rows of
metrics.jsonl, read back here with each library's own reader (TensorBoard's EventAccumulator,
W&B's record protos, trackio's storage); a sink that is not installed stops the run before
step 0 with the pip extra to install; separators log stem excerpts, EchoStream transcripts."""
import io
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from shared.engine.config import config_from_dict
from shared.engine.tracking import TextTable
from shared.engine.train_loop import Run
from shared.errors import ConfigError
from tests.helpers import TRAINERS, metric_rows

REPO = Path(__file__).resolve().parent.parent


def tiny_lm(**train):
    settings = dict(seed=3, batch_size=4, max_steps=8, warmup_steps=2, learning_rate=3e-3,
                    min_lr=3e-4, log_every=1, eval_every=4, eval_batches=1, save_every=4,
                    keep_last=3) | train
    return config_from_dict({
        "family": "lm",
        "model": dict(vocab_size=1024, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2,
                      intermediate_size=64, max_seq_length=32, tie_embeddings=True),
        "train": settings})


def expected_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} from metrics.jsonl: every number but the step."""
    out = {}
    for row in metric_rows(run_dir):
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                out.setdefault(key, []).append((row["step"], value))
    return out


def tensorboard_events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "audio": 0,
                                                                        "tensors": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def tensorboard_run(tmp_path_factory):
    """A tiny LM run with report_to [tensorboard] that crashed after step 6 (its step 6
    checkpoint lost), was resumed from step 4 and trained to step 8."""
    run = tmp_path_factory.mktemp("tb") / "run"
    cfg = tiny_lm(report_to=["tensorboard"])
    Run(cfg, TRAINERS["torch"], run, progress=False).train(stop_after=6)
    shutil.rmtree(run / "checkpoints" / "step_00000006")     # as if killed before saving it
    resumed = Run(cfg, TRAINERS["torch"], run, resume=run, progress=False)
    assert resumed.state.step == 4
    resumed.train()
    return run


def test_tensorboard_scalars_are_the_metrics_rows_across_a_resume(tensorboard_run):
    acc = tensorboard_events(tensorboard_run)
    expected = expected_scalars(tensorboard_run)
    assert set(acc.Tags()["scalars"]) == set(expected)
    for tag, rows in expected.items():
        # TensorBoard stores float32; the rows after step 4 were logged twice, once before
        # the crash and once after the resume: TensorBoard keeps the second only.
        assert [(e.step, e.value) for e in acc.Scalars(tag)] == \
            [(step, float(np.float32(v))) for step, v in rows], tag
    assert [s for s, _ in expected["loss"]] == list(range(1, 9))
    assert [s for s, _ in expected["val_loss"]] == [0, 4, 8]
    assert len(list((tensorboard_run / "tensorboard").iterdir())) == 2   # one file per start


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_missing_extra_stops_before_step_0_and_changes_nothing(tensorboard_run, tmp_path,
                                                               monkeypatch, capsys):
    from shared.cli.train import main

    monkeypatch.setitem(sys.modules, "wandb", None)     # import wandb now raises ImportError
    fresh = tmp_path / "fresh"
    with pytest.raises(ConfigError, match=r"pip install 'workbench\[wandb\]'"):
        Run(tiny_lm(report_to=["tensorboard", "wandb"]), TRAINERS["torch"], fresh, progress=False)
    assert not fresh.exists()
    # the command line: one line, exit status 2, a resumed run's directory untouched
    run = tmp_path / "run"
    shutil.copytree(tensorboard_run, run)
    before = snapshot(run)
    capsys.readouterr()
    status = main("torch", TRAINERS["torch"], ["--resume", str(run), "--no-progress",
                                               "train.max_steps=12", "train.report_to=[wandb]"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert "train.report_to names wandb" in err and "pip install 'workbench[wandb]'" in err
    assert snapshot(run) == before


def test_report_to_is_checked_and_set_from_the_command_line():
    assert tiny_lm().train.report_to == []
    assert config_from_dict({"family": "lm"}, ["train.report_to=tensorboard"]).train.report_to == \
        ["tensorboard"]
    assert config_from_dict({"family": "lm"}, ["train.report_to=[wandb,trackio]"]).train.report_to == \
        ["wandb", "trackio"]
    with pytest.raises(ConfigError, match=r"unknown sink 'tensorbord' \(did you mean 'tensorboard'\?\)"):
        config_from_dict({"family": "lm"}, ["train.report_to=[tensorbord]"])
    with pytest.raises(ConfigError, match="names a sink twice"):
        config_from_dict({"family": "lm"}, ["train.report_to=[wandb,wandb]"])


def test_text_table_markdown_escapes_cells():
    table = TextTable("t", ("id", "text"), [("a|b", "line\nbreak"), ("c", "")])
    assert table.markdown().splitlines() == ["| id | text |", "|---|---|", "| a\\|b | line break |",
                                             "| c |   |"]


# ------------------------------------------------------------------ media from evaluations
def tiny_separator(**train):
    return config_from_dict({
        "family": "tflocoformer",
        "model": dict(n_fft=128, hop=64, emb_dim=8, n_heads=2, n_layers=1, ffn_hidden_dim=[16, 16],
                      norm_groups=4),
        "data": dict(sample_rate=4000, segment_seconds=0.5, synth_tracks=3, synth_seconds=2.0,
                     val_tracks=1, val_segments=1),
        "train": dict(batch_size=2, max_steps=1, warmup_steps=1, log_every=1, eval_every=1,
                      save_every=1, report_to=["tensorboard"]) | train})


def test_separator_evaluations_log_an_excerpt_of_each_stem(tmp_path):
    run = Run(tiny_separator(), TRAINERS["torch"], tmp_path / "run", progress=False)
    run.train()
    acc = tensorboard_events(tmp_path / "run")
    assert sorted(acc.Tags()["audio"]) == sorted(f"excerpt/{s}" for s in
                                                 ("mixture", "vocals", "drums", "bass", "other"))
    track = run.task.valid.tracks[0]
    for tag in acc.Tags()["audio"]:
        events = acc.Audio(tag)
        assert [e.step for e in events] == [0, 1] and events[0].sample_rate == 4000
        audio, rate = sf.read(io.BytesIO(events[-1].encoded_audio_string), dtype="float32")
        assert rate == 4000 and audio.shape == (track.frames, 2) and np.isfinite(audio).all()
    # the mixture excerpt is the validation track's own mixture.wav (2 s: all of it)
    mixture, _ = sf.read(track.path("mixture"), dtype="float32")
    played, _ = sf.read(io.BytesIO(acc.Audio("excerpt/mixture")[0].encoded_audio_string), dtype="float32")
    assert np.abs(played - np.clip(mixture, -1, 1)).max() < 1e-4    # 16-bit WAV


@pytest.mark.slow
def test_echostream_evaluations_log_transcripts(tmp_path):
    from shared.planner.core import with_overrides
    from shared.engine.config import load_config

    cfg = with_overrides(load_config(REPO / "configs" / "echostream_demo.yaml"), {
        "model.embed_dim": 32, "model.encoder_layers": 1, "model.subsample_channels": 64,
        "model.mt_embed_dim": 32, "model.mt_ffn_dim": 64, "model.unit_embed_dim": 32,
        "model.unit_ffn_dim": 64, "data.synth_train_utterances": 8, "data.synth_dev_utterances": 3,
        "data.dev_max_utterances": 3, "train.batch_size": 2, "train.max_steps": 1,
        "train.warmup_steps": 1, "train.report_to": ["tensorboard"]})
    run = Run(cfg, TRAINERS["torch"], tmp_path / "run", progress=False)
    run.train()
    events = tensorboard_events(tmp_path / "run").Tensors("transcripts")
    assert [e.step for e in events] == [0, 1]
    text = events[-1].tensor_proto.string_val[0].decode()
    lines = text.splitlines()
    assert lines[0] == "| id | source | ASR (CTC) | target | MT | ST (CTC) |"
    indices, _ = run.task.dev_batches[0]
    assert len(lines) == 2 + len(indices)
    for line, i in zip(lines[2:], indices):
        utt = run.task.corpus.dev.utterances[i]
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        assert cells[0] == utt.id and cells[1] == utt.src_text and cells[3] == utt.tgt_text


@pytest.mark.slow
def test_tensorboard_sink_imports_no_framework(tmp_path):
    """tensorboardX and torch.utils.tensorboard import torch; this sink must not, or an MLX
    run would load torch."""
    code = ("import sys, numpy as np\n"
            "from shared.engine.tracking import Tracker, AudioClip, TextTable\n"
            f"t = Tracker.open(['tensorboard'], {str(tmp_path)!r}, {{}}, 0)\n"
            "t.log_row({'step': 1, 'loss': 2.0})\n"
            "t.log_media(1, [AudioClip('a', np.zeros((100, 2), np.float32), 8000), "
            "TextTable('t', ('a',), [('b',)])])\n"
            "t.close()\n"
            "print([m for m in sys.modules if m == 'torch' or m.startswith(('mlx.core', 'tensorflow'))])\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stderr


# ------------------------------------------------------------------ wandb and trackio
def wandb_records(path: Path):
    """The records of a W&B run file (run-ID.wandb): W&B's LevelDB-style log -- a 7-byte
    header (":W&B", magic 0xBEE1, version), then 32 KiB blocks of chunks, each with a 7-byte
    header (CRC, length, type: 1 full, 2 first, 3 middle, 4 last) -- of Record protos."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:     # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


@pytest.mark.slow
def test_wandb_runs_offline_and_resumes_the_same_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")     # the `wandb` extra (in `dev`)
    for key in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    for key in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(key, str(tmp_path / key.lower()))
    run = tmp_path / "run"
    cfg = tiny_lm(max_steps=4, eval_every=2, save_every=2, report_to=["wandb"])
    Run(cfg, TRAINERS["torch"], run, progress=False).train(stop_after=2)
    Run(cfg, TRAINERS["torch"], run, resume=run, progress=False).train()
    run_id = json.loads((run / "tracking.json").read_text())["wandb_id"]
    files = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2 and all(f.name == f"run-{run_id}.wandb" for f in files)  # offline, one run
    logged = {}
    for f in files:
        for record in wandb_records(f):
            if record.HasField("history"):
                for item in record.history.item:
                    key = item.key or "/".join(item.nested_key)
                    if not key.startswith("_"):
                        logged.setdefault(key, []).append((record.history.step.num,
                                                           json.loads(item.value_json)))
    assert logged == expected_scalars(run)


@pytest.mark.slow
def test_trackio_logs_locally(tmp_path):
    pytest.importorskip("trackio")   # the `trackio` extra (in `dev`)
    # trackio reads TRACKIO_DIR when imported: a process of its own
    code = (
        "import json, sys\n"
        "from tests.test_tracking import tiny_lm\n"
        "from tests.helpers import TRAINERS\n"
        "from shared.engine.train_loop import Run\n"
        f"run = {str(tmp_path / 'run')!r}\n"
        "Run(tiny_lm(max_steps=3, eval_every=3, report_to=['trackio']), TRAINERS['torch'], run,"
        " progress=False).train()\n"
        "from trackio.sqlite_storage import SQLiteStorage\n"
        "name = json.load(open(run + '/tracking.json'))['trackio_run']\n"
        "print('LOGS', json.dumps(SQLiteStorage.get_logs('workbench', name)))\n")
    env = {**__import__("os").environ, "TRACKIO_DIR": str(tmp_path / "trackio"),
           "PYTHONPATH": str(REPO)}
    env.pop("TRACKIO_SPACE_ID", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    logs = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("LOGS "))[5:])
    logged = {}
    for entry in logs:
        for key, value in entry.items():
            if key not in ("step", "timestamp") and not key.startswith("_") and value is not None:
                logged.setdefault(key, []).append((entry["step"], value))
    assert logged == expected_scalars(tmp_path / "run")
    assert (tmp_path / "trackio" / "workbench.db").is_file()
