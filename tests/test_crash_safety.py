"""Crash-safe run directories and verified checkpoints (shared/engine/durable.py,
shared/engine/checkpoint.py): a kill at any durable write loses nothing and resumes exactly;
a damaged or edited artefact is one clear error naming the file, or a cache rebuilt.

Kills are injected in-process: at the N-th durable write the run directory is copied as it
lies on disk at that moment (what `kill -9` would leave), the run is stopped, and the run
resumed from the copy -- at another path, with the original deleted, so a copy that read the
original's files would fail."""
import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from shared.engine import durable
from shared.engine.checkpoint import (MANIFEST_FILE, load_checkpoint, open_checkpoint,
                                      resolve_checkpoint, save_checkpoint, verify_checkpoint)
from shared.engine.train_loop import Run, find_checkpoint, read_train_state
from shared.errors import CheckpointError, ConfigError, StorageError
from tests.helpers import TRAINERS, one_torch_thread  # noqa: F401  (fixture)
from tests.test_train_engine import tiny_config

# Evaluations at 2, 4, 6, 7 (each a new best), checkpoints at 3, 6, 7; keep_last=2 prunes
# step 3 at the end: every kind of write happens, a best swap included.
CONFIG = tiny_config(max_steps=7, save_every=3, eval_every=2, eval_batches=1, keep_last=2,
                     log_every=1)
TIMING = {"tokens_per_s", "mem_gb", "peak_mem_gb"}   # measured, not computed: may differ


class Killed(BaseException):
    """What the injected fault raises after copying the run directory."""


def train(run_dir: Path, resume=None, stop_after=None):
    run = Run(CONFIG, TRAINERS["torch"], run_dir, resume=resume, progress=False)
    run.train(stop_after=stop_after)
    return run


def metric_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def leftovers(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.rglob("*") if p.name.startswith(".")
                  and (durable.TMP_MARK in p.name or p.name.endswith(".previous")))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """The tokenizer and token files, built once and copied into every run."""
    root = tmp_path_factory.mktemp("data")
    Run(CONFIG, TRAINERS["torch"], root / "run", progress=False)
    return root / "run" / "data"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir) -> dict:
    """An uninterrupted run: its metrics, final weights, best weights and checkpoints."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    shutil.copytree(data_dir, run_dir / "data")
    durable.set_fault(None)
    run = train(run_dir)
    count = durable.writes_so_far()
    return {"rows": metric_rows(run_dir), "weights": run.trainer.get_weights(),
            "best": load_checkpoint(run_dir / "checkpoints" / "best")[0],
            "checkpoints": sorted(p.name for p in (run_dir / "checkpoints").iterdir()),
            "writes": count, "dir": run_dir}


def resume_as_told(run_dir: Path):
    """Continue a killed run as its error messages tell a user to."""
    from shared.cli.train import run_directory

    try:
        ckpt = find_checkpoint(run_dir)
    except CheckpointError as e:
        message = str(e)
        if "only checkpoints/best" in message:
            ckpt = run_dir / "checkpoints" / "best"
        elif "start it over with" in message or "holds no checkpoint" in message:
            # --restart (or a plain fresh start when the run had not begun to log)
            args = argparse.Namespace(out=str(run_dir), restart=True, config=None)
            run_directory(args, "torch", None)
            return train(run_dir), "restarted"
        else:
            raise
    try:
        return train(run_dir, resume=ckpt), "resumed"
    except ConfigError as e:    # killed after its last checkpoint: the run is complete
        assert "nothing to train" in str(e)
        return None, "complete"


def train_until_killed(fault, run_dir: Path, **kw) -> None:
    """train(run_dir) with `fault` called at every durable write; it must end in Killed."""
    durable.set_fault(fault)
    try:
        with pytest.raises(Killed):
            train(run_dir, **kw)
    finally:
        durable.set_fault(None)


def kill_and_resume(n: int, tmp_path: Path, data_dir: Path | None):
    """Kill a run at its n-th durable write, resume a copy of what was on disk; returns
    (the resumed run's directory, the run, how it went on). data_dir: a built data cache to
    start from (None: the run builds it)."""
    original, copy = tmp_path / f"run{n}", tmp_path / f"moved{n}"
    if data_dir is not None:
        shutil.copytree(data_dir, original / "data")

    def fault(count, what):
        if count == n:
            shutil.copytree(original, copy)
            raise Killed(what)
    train_until_killed(fault, original)
    shutil.rmtree(original)         # the copy must not need it
    run, how = resume_as_told(copy)
    return copy, run, how


def assert_exact(run_dir: Path, run, reference: dict) -> None:
    assert metric_rows(run_dir) == reference["rows"]          # history intact, no duplicates
    last = run_dir / "checkpoints" / reference["checkpoints"][-1]
    weights = run.trainer.get_weights() if run else load_checkpoint(last)[0]
    assert all(np.array_equal(weights[k], reference["weights"][k]) for k in weights)
    best = load_checkpoint(run_dir / "checkpoints" / "best")[0]
    assert all(np.array_equal(best[k], reference["best"][k]) for k in best)
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    if run:
        assert names == reference["checkpoints"]
        assert leftovers(run_dir) == []
    else:   # killed while pruning after the last save: the old checkpoint is simply kept
        assert set(reference["checkpoints"]) <= set(names)


# A handful of kill points for the fast suite (the whole sweep is test_kill_at_every_write;
# the numbering is the uninterrupted run's): the run's config.yaml, a metrics append before
# any checkpoint, an append with only `best` saved, a best swap between its two renames
# (no `best`, only `.best.previous`), just after it, and the prune after the last save.
FAST_POINTS = [1, 5, 13, 30, 31, -1]


@pytest.mark.parametrize("point", FAST_POINTS)
def test_kill_resumes_exactly(point, tmp_path, data_dir, reference):
    n = reference["writes"] + 1 + point if point < 0 else point
    run_dir, run, _ = kill_and_resume(n, tmp_path, data_dir)
    assert_exact(run_dir, run, reference)


@pytest.mark.slow
def test_kill_at_every_write(tmp_path, data_dir, reference):
    """Every durable write of the run (checkpoint files, manifests, renames, best swaps,
    prunes, metrics appends): killed there, resumed from a moved copy, the run ends as the
    uninterrupted one did."""
    outcomes = {}
    for n in range(1, reference["writes"] + 1):
        run_dir, run, how = kill_and_resume(n, tmp_path, data_dir)
        assert_exact(run_dir, run, reference)
        outcomes[how] = outcomes.get(how, 0) + 1
        shutil.rmtree(run_dir)
    print(f"kills: {reference['writes']} write points, outcomes {outcomes}")
    assert sum(outcomes.values()) == reference["writes"] > 40


@pytest.mark.parametrize("point", [1, 2, 3])
def test_kill_while_a_resume_rewrites_the_metrics(point, tmp_path, data_dir, reference):
    """A resume drops the metrics rows after its checkpoint by writing a new file and
    renaming it over the old one: killed at that rewrite or just after it (the resume's
    own config.yaml, its first append), the history is intact and a second
    resume ends exact."""
    run_dir, _, _ = kill_and_resume_twice(point, tmp_path, data_dir)
    run, _ = resume_as_told(run_dir)
    assert_exact(run_dir, run, reference)


def kill_and_resume_twice(point: int, tmp_path: Path, data_dir: Path):
    """Killed at write 33 (rows up to step 6 logged, newest checkpoint step 3), then the
    resume killed at its write `point`; returns the copy left by the second kill."""
    first, second = tmp_path / "first", tmp_path / "second"
    shutil.copytree(data_dir, first / "data")

    def fault(count, what):
        if count == 33:
            raise Killed(what)
    train_until_killed(fault, first)
    rows = metric_rows(first)
    assert rows[-1] == {"step": 6, "loss": rows[-1]["loss"], "lr": rows[-1]["lr"],
                        "grad_norm": rows[-1]["grad_norm"]}
    seen = []

    def fault_in_resume(count, what):
        seen.append(what)
        if count == point:
            shutil.copytree(first, second)
            raise Killed(what)
    train_until_killed(fault_in_resume, first, resume=find_checkpoint(first))
    assert seen[0] == "rewriting metrics.jsonl up to step 3"
    kept = metric_rows(second)
    assert kept in (rows, [r for r in rows if r["step"] <= 3])   # the old file or the new one
    return second, rows, seen


@pytest.mark.slow
def test_kill_while_building_the_data_cache(tmp_path, reference):
    """Killed while the tokenizer, token files or index.json are written, a run starts over
    cleanly and trains as the uninterrupted one did."""
    for n in range(1, 5):     # tokenizer.model, train.bin, val.bin, index.json
        run_dir, run, how = kill_and_resume(n, tmp_path, None)
        assert how == "restarted"
        assert_exact(run_dir, run, reference)


# ------------------------------------------------------------------ a full disk
@pytest.mark.parametrize("point", [8, 16, 29, 44])
def test_disk_full_mid_checkpoint_is_one_error_and_keeps_everything(point, tmp_path, data_dir,
                                                                    reference):
    """ENOSPC at a write inside the first checkpoints: one StorageError naming the file and
    the way on, the partial write removed, earlier checkpoints intact; resuming ends exact."""
    run_dir = tmp_path / "run"
    shutil.copytree(data_dir, run_dir / "data")
    import errno

    def full(count, what):
        if count == point:
            raise OSError(errno.ENOSPC, "No space left on device")
    durable.set_fault(full)
    try:
        with pytest.raises(StorageError, match="No space left on device") as e:
            train(run_dir)
    finally:
        durable.set_fault(None)
    assert "training stopped at step" in str(e.value) and "\n" not in str(e.value)
    assert leftovers(run_dir) == []
    for ckpt in (run_dir / "checkpoints").iterdir():
        verify_checkpoint(ckpt)     # every checkpoint written before is whole
    run, _ = resume_as_told(run_dir)
    assert_exact(run_dir, run, reference)


def test_too_little_free_space_stops_before_writing(tmp_path, data_dir, monkeypatch):
    run_dir = tmp_path / "run"
    shutil.copytree(data_dir, run_dir / "data")
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=100_000))
    with pytest.raises(StorageError, match=r"not enough space for checkpoint .*best: it needs "
                                           r"about \d+ MB .* 0 MB free.*no checkpoint"):
        train(run_dir)
    assert not (run_dir / "checkpoints").exists() or not any((run_dir / "checkpoints").iterdir())


# ------------------------------------------------------------------ damaged artefacts
@pytest.fixture(scope="module")
def finished(reference) -> Path:
    return reference["dir"]


def copy_run(finished: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    return run_dir


def damage(path: Path, edit) -> None:
    path.write_bytes(edit(path.read_bytes()))


def test_every_checkpoint_file_is_hashed(finished):
    ckpt = finished / "checkpoints" / "step_00000007"
    listed = json.loads((ckpt / MANIFEST_FILE).read_text())["files"]
    assert sorted(listed) == sorted(p.name for p in ckpt.iterdir() if p.name != MANIFEST_FILE)
    import hashlib
    for name, record in listed.items():
        data = (ckpt / name).read_bytes()
        assert record == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def flip_a_weight_bit(data: bytes) -> bytes:
    data = bytearray(data)
    data[-100] ^= 0x01          # inside the last tensor's values, past the JSON header
    return bytes(data)


@pytest.mark.parametrize("name, edit, why", [
    ("model.safetensors", flip_a_weight_bit, "differs from the file that was saved"),
    ("config.yaml", lambda d: d.replace(b"dropout: 0.1", b"dropout: 0.2"), "differs"),
    ("train_state.json", lambda d: d.replace(b'"step": 7', b'"step": 5'), "differs"),
    ("trainer_state.safetensors", lambda d: d[:-8], "420096 when saved): it was cut short"),
    ("model.safetensors", lambda d: d.replace(b'"F32"', b'"I32"', 1), "differs"),
])
def test_a_changed_file_is_named_with_the_previous_checkpoint(name, edit, why, finished, tmp_path):
    run_dir = copy_run(finished, tmp_path)
    ckpt = run_dir / "checkpoints" / "step_00000007"
    damage(ckpt / name, edit)
    for load in (load_checkpoint, find_checkpoint_and_resume):
        with pytest.raises(CheckpointError) as e:
            load(ckpt)
        message = str(e.value)
        assert f"{ckpt / name}" in message and why in message, message
        assert f"use the previous checkpoint, {run_dir / 'checkpoints' / 'step_00000006'}" in message
        assert "\n" not in message


def find_checkpoint_and_resume(ckpt: Path):
    more = dataclasses.replace(CONFIG, train=dataclasses.replace(CONFIG.train, max_steps=9))
    return Run(more, TRAINERS["torch"], ckpt.parent.parent, resume=find_checkpoint(ckpt),
               progress=False)


def test_a_swapped_tokenizer_is_caught(finished, tmp_path):
    """Another tokenizer (here: of another text) in the checkpoint is named, for generate
    (resolve_checkpoint + load) as for resume."""
    import sentencepiece as spm
    import io
    run_dir = copy_run(finished, tmp_path)
    ckpt = run_dir / "checkpoints" / "best"
    other = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter([f"다른 말뭉치의 문장 {i}" for i in range(50)]),
                                   model_writer=other, vocab_size=30, hard_vocab_limit=False,
                                   minloglevel=2)
    (ckpt / "tokenizer.model").write_bytes(other.getvalue())
    with pytest.raises(CheckpointError, match=r"tokenizer.model differs .*use the previous "
                                              r"checkpoint, .*step_00000007"):
        open_checkpoint(resolve_checkpoint(run_dir))


def drop_manifest(ckpt: Path) -> None:
    """A checkpoint as an older version saved it (no manifest.json)."""
    (ckpt / MANIFEST_FILE).unlink()


@pytest.mark.parametrize("state, message", [
    ({"step": -5}, "step must be an integer >= 0, got -5"),
    ({"step": "40"}, "step must be an integer >= 0, got '40'"),
    ({"step": 5}, "says step 5 but the checkpoint is step_00000007"),
    ({"step": 9}, "says step 9 but the checkpoint is step_00000007"),
    ("{}", "it must hold step, samples_seen"),
    ("[1, 2]", "it must hold step, samples_seen"),
    ("{", "is damaged"),
    ({"samples_seen": True}, "samples_seen must be an integer >= 0, got True"),
    ({"best_val_loss": "nan"}, "best_val_loss must be a number"),
])
def test_an_edited_train_state_is_refused_without_a_manifest(state, message, finished, tmp_path):
    """Old checkpoints (no manifest) still have their train_state.json checked as a config:
    types, ranges, and the step the checkpoint's name says."""
    run_dir = copy_run(finished, tmp_path)
    ckpt = run_dir / "checkpoints" / "step_00000007"
    drop_manifest(ckpt)
    path = ckpt / "train_state.json"
    if isinstance(state, dict):
        raw = json.loads(path.read_text()) | state
        raw = {k: (float(v) if v == "nan" else v) for k, v in raw.items()}
        path.write_text(json.dumps(raw))
    else:
        path.write_text(state)
    with pytest.raises(CheckpointError, match="step_00000006") as e:
        read_train_state(ckpt)
    assert message in str(e.value) and str(path) in str(e.value)


def test_an_old_checkpoint_without_manifest_loads_with_one_note(finished, tmp_path, capsys):
    run_dir = copy_run(finished, tmp_path)
    ckpt = run_dir / "checkpoints" / "step_00000007"
    drop_manifest(ckpt)
    load_checkpoint(ckpt)
    load_checkpoint(ckpt)
    assert capsys.readouterr().err.count("has no manifest.json") == 1
    assert read_train_state(ckpt).step == 7


def test_an_edited_family_is_named_as_such(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path)
    ckpt = run_dir / "checkpoints" / "step_00000007"
    drop_manifest(ckpt)
    damage(ckpt / "config.yaml", lambda d: d.replace(b"family: lm", b"family: tflocoformer"))
    with pytest.raises(CheckpointError, match="its model section is a 'lm' model's, not a "
                                              "'tflocoformer' one's: the family was changed"):
        open_checkpoint(ckpt)


def test_an_edited_dtype_without_manifest_is_one_error(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path)
    ckpt = run_dir / "checkpoints" / "step_00000007"
    drop_manifest(ckpt)
    original = (ckpt / "model.safetensors").read_bytes()
    damage(ckpt / "model.safetensors", lambda d: d.replace(b'"F32"', b'"F16"', 1))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        open_checkpoint(ckpt)
    # The same size: the file reads, but as integers
    (ckpt / "model.safetensors").write_bytes(original.replace(b'"F32"', b'"I32"', 1))
    with pytest.raises(CheckpointError, match="stores it as int32, not a floating-point type"):
        open_checkpoint(ckpt)


def test_garbage_tokenizer_in_an_old_checkpoint_is_named_on_resume(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path)
    ckpt = run_dir / "checkpoints" / "step_00000007"
    drop_manifest(ckpt)
    (ckpt / "tokenizer.model").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match=r"tokenizer.model is damaged \(not a SentencePiece "
                                              r"model.*use the previous checkpoint"):
        find_checkpoint_and_resume(ckpt)


def test_garbage_and_nan_cmvn_are_damage_not_different_data(tmp_path):
    """A checkpoint's CMVN statistics: garbage or NaN is "damaged", in the checkpoint check
    (data_file_problem, before any comparison) and in `stream`'s reader."""
    import io
    from shared.data.s2ut import cmvn_from_file
    from shared.engine.tasks import data_file_problem
    from shared.errors import DataError
    nan = io.BytesIO()
    np.savez(nan, mean=np.full(4, np.nan, np.float32), std=np.ones(4, np.float32), count=np.int64(3))
    good = io.BytesIO()
    np.savez(good, mean=np.zeros(4, np.float32), std=np.ones(4, np.float32), count=np.int64(3))
    assert data_file_problem("cmvn.npz", good.getvalue()) is None
    assert data_file_problem("cmvn.npz", nan.getvalue()) == "mean holds non-finite values"
    assert data_file_problem("cmvn.npz", b"garbage").startswith("not a numpy .npz archive")
    for content, match in ((nan.getvalue(), "non-finite"), (b"garbage", "not readable")):
        (tmp_path / "cmvn.npz").write_bytes(content)
        with pytest.raises(DataError, match=match):
            cmvn_from_file(tmp_path / "cmvn.npz")
    # In a checkpoint with a manifest, garbage written over it is named by the hash check.
    ckpt = save_checkpoint(tmp_path / "checkpoints" / "step_00000001", {"w": np.zeros(2, np.float32)},
                           {"family": "lm", "model": {}}, {"cmvn.npz": good.getvalue()})
    (ckpt / "cmvn.npz").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"cmvn.npz differs from the file that was saved \(7 bytes, \d+ when saved\)"):
        verify_checkpoint(ckpt)


def test_missing_files_and_leftover_runs_get_the_way_on(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path)
    steps = run_dir / "checkpoints"
    (steps / "step_00000007" / "train_state.json").unlink()
    with pytest.raises(CheckpointError, match=r"step_00000007/train_state.json is missing.*use "
                                              r"the previous checkpoint, .*step_00000006"):
        find_checkpoint_and_resume(steps / "step_00000007")
    for step in ("step_00000006", "step_00000007"):
        shutil.rmtree(steps / step)
    with pytest.raises(CheckpointError, match=r"no step_\* checkpoint left, only checkpoints/best; "
                                              r"resume from it with --resume .*checkpoints/best"):
        find_checkpoint(run_dir)
    shutil.rmtree(steps / "best")
    with pytest.raises(CheckpointError, match=r"holds no completed checkpoint .* start it over "
                                              r"with --config .*config.yaml --out .* --restart"):
        find_checkpoint(run_dir)


def test_a_model_only_checkpoint_is_pointed_to_init_from(tmp_path):
    """A checkpoint with weights but no training state (save_model, import_hf) cannot be
    resumed: the message says how to start from it instead."""
    save_checkpoint(tmp_path / "imported", {"w": np.zeros(2, np.float32)}, {"family": "lm", "model": {}})
    with pytest.raises(CheckpointError, match=r"not a training checkpoint, so it cannot be "
                                              r"resumed; .* train.init_from=.*imported"):
        find_checkpoint(tmp_path / "imported")


@pytest.mark.parametrize("path, message", [
    ("/dev/null", "is a file, not a checkpoint"),
    ("EMPTY", "is a directory but holds no checkpoint"),
    ("MISSING", "does not exist: no such checkpoint or run directory"),
])
def test_what_is_not_a_checkpoint_is_described(path, message, tmp_path):
    path = {"EMPTY": tmp_path, "MISSING": tmp_path / "nope"}.get(path, Path(path))
    for look in (resolve_checkpoint, find_checkpoint, load_checkpoint):
        with pytest.raises(CheckpointError, match=message):
            look(path)


def test_an_interrupted_best_swap_still_has_a_best(finished, tmp_path):
    """Killed between the swap's two renames: `best` is missing, its complete predecessor
    is under .best.previous; readers use it, and the next start puts it back."""
    run_dir = copy_run(finished, tmp_path)
    best = run_dir / "checkpoints" / "best"
    best.rename(best.with_name(".best.previous"))
    assert resolve_checkpoint(run_dir) == best.with_name(".best.previous")
    assert resolve_checkpoint(best) == best.with_name(".best.previous")
    more = dataclasses.replace(CONFIG, train=dataclasses.replace(CONFIG.train, max_steps=9))
    resumed = find_checkpoint(best)     # --resume RUN/checkpoints/best
    assert resumed == best.with_name(".best.previous")
    run = Run(more, TRAINERS["torch"], run_dir, resume=resumed, progress=False)
    assert best.is_dir() and not best.with_name(".best.previous").exists()
    assert run.state.step == 7


# ------------------------------------------------------------------ the data cache
def test_a_damaged_token_cache_is_rebuilt(data_dir, tmp_path, capsys):
    from shared.data.lm_text import LMDataset
    from shared.engine.tasks import same_data_file
    cache = tmp_path / "data"
    shutil.copytree(data_dir, cache)
    original = {n: (cache / n).read_bytes() for n in ("train.bin", "val.bin", "tokenizer.model")}
    cases = {"train.bin": lambda d: d[: len(d) // 2],               # truncated
             "val.bin": lambda d: bytes(len(d)),                     # zeroed, same size
             "tokenizer.model": lambda d: d[:100],
             "index.json": lambda d: d[:10]}                         # a kill mid-write, before
    for name, edit in cases.items():
        damage(cache / name, edit)
        ds = LMDataset(CONFIG.data, CONFIG.model.vocab_size, cache)
        err = capsys.readouterr().err
        if name != "index.json":
            assert f"rebuilding the token cache in {cache}" in err and name in err
        for n, content in original.items():     # (a tokenizer records where it was trained)
            assert same_data_file(n, (cache / n).read_bytes(), content), n
        assert np.array_equal(ds.train, np.fromfile(cache / "train.bin", ds.train.dtype))
    index = (cache / "index.json").read_text()
    assert str(tmp_path) not in index and str(data_dir) not in index   # relative paths only


def test_a_moved_run_resumes_without_the_original(finished, tmp_path):
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(finished, moved)
    more = dataclasses.replace(CONFIG, train=dataclasses.replace(CONFIG.train, max_steps=8))
    held = finished.with_name("held")
    finished.rename(held)           # the original is gone while the copy resumes
    try:
        run = Run(more, TRAINERS["torch"], moved, resume=find_checkpoint(moved), progress=False)
        run.train()
    finally:
        held.rename(finished)
    assert run.state.step == 8 and (moved / "checkpoints" / "step_00000008").is_dir()
    for text_file in moved.rglob("*.json"):
        assert str(finished) not in text_file.read_text()


# ------------------------------------------------------------------ the command line
SMALL = ["--no-progress", "train.max_steps=4", "train.eval_every=2", "train.save_every=2",
         "train.eval_batches=1", "train.log_every=1", "model.num_layers=1", "model.hidden_size=32",
         "model.intermediate_size=64", "model.max_seq_length=32"]


def cli(*args, fail_at: str | None = None):
    import os
    import subprocess
    import sys
    env = dict(os.environ)
    env.pop(durable.FAIL_AT_ENV, None)
    if fail_at:
        env[durable.FAIL_AT_ENV] = fail_at
    return subprocess.run([sys.executable, "-m", "torch_models.train", *args], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_kill_in_the_first_checkpoint_prints_the_restart_command(tmp_path):
    """WORKBENCH_FAIL_AT_WRITE kills the process (os._exit) inside the first checkpoint write:
    --resume then prints the one command that starts the run over, and that command works."""
    out = tmp_path / "run"
    # writes: tokenizer, train.bin, val.bin, index.json, config.yaml, 3 metrics rows,
    # then the first best checkpoint's files
    killed = cli("--out", str(out), *SMALL, fail_at="10")
    assert killed.returncode == 137 and "killed before writing best/" in killed.stderr, killed.stderr
    resumed = cli("--resume", str(out), "train.max_steps=4")
    command = (f"python -m torch_models.train --config {out / 'config.yaml'} --out {out} "
               f"--restart")
    assert resumed.returncode == 2 and command in resumed.stderr, resumed.stderr
    assert resumed.stderr.count("\n") == 1
    again = cli(*command.split()[3:], "--no-progress")
    assert again.returncode == 0, again.stderr
    assert (out / "metrics.jsonl.1").is_file()      # the first attempt's rows, kept
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best", "step_00000002",
                                                                      "step_00000004"]


@pytest.mark.slow
def test_cli_disk_full_is_one_line_and_the_run_resumes(tmp_path):
    out = tmp_path / "run"
    full = cli("--out", str(out), *SMALL, fail_at="20:enospc")   # inside step_00000002
    assert full.returncode == 2, full.stderr
    last = full.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot write") and "No space left on device" in last
    assert "training stopped at step 2" in last and "Traceback" not in full.stderr
    assert "the partial write was removed" in last
    assert f"continue with --resume {out / 'checkpoints' / 'best'}" in last
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["best"]
    resumed = cli("--resume", str(out / "checkpoints" / "best"), "train.max_steps=4", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr


def test_plan_fit_into_a_missing_folder_is_one_error(tmp_path):
    import contextlib
    import io
    from shared.planner.plan import main
    err = io.StringIO()
    config = Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(["--config", str(config), "--device", "cpu", "--fit",
                       "--out", str(tmp_path / "missing" / "fit.yaml")])
    assert status == 2 and "not a file in an existing directory" in err.getvalue()
    assert not (tmp_path / "missing").exists()
