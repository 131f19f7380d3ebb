"""The training engine on both backends: accumulation, activation checkpointing, mixed
precision, compilation, exact resume, bad steps, configs and the CLI."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_models.trainer import Trainer as MLXTrainer
from shared.engine.config import TrainConfig, config_from_dict
from shared.engine.train_loop import Run
from shared.specs.lm import LMSpec, lm_init_weights
from tests.helpers import rel_err, TRAINERS

REPO = Path(__file__).resolve().parent.parent
SPEC = LMSpec(vocab_size=128, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
              intermediate_size=96, max_seq_length=64)


def batch(n, length=33, seed=0):
    return np.random.default_rng(seed).integers(0, SPEC.vocab_size, (n, length)).astype(np.int32)


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_accumulation_equals_the_big_batch(backend):
    """Batch 4 x accumulation 3 gives the gradient of batch 12."""
    weights = lm_init_weights(SPEC, 1)
    big = batch(12)
    t = TRAINERS[backend](SPEC, TrainConfig(), weights)
    loss_big, g_big = t.gradients_numpy([big])
    loss_acc, g_acc = t.gradients_numpy([big[0:4], big[4:8], big[8:12]])
    assert rel_err(loss_acc, loss_big) <= 1e-6
    for name in g_big:
        assert rel_err(g_acc[name], g_big[name]) <= 1e-5, name


def test_accumulation_memory_stays_flat_mlx():
    # One stream: parallel CPU parts peak differently from run to run (thread interleaving).
    t = MLXTrainer(SPEC, TrainConfig(cpu_streams=1), lm_init_weights(SPEC, 1))
    micro = batch(8, length=65)
    t.train_step([micro], 1e-3)  # allocate optimizer state first
    # K >= 2 holds one running-sum buffer of gradients more than K = 1; beyond that,
    # more micro-batches must not cost more memory. (Kept graphs would make K = 16 several
    # times K = 2; the allocator's own run-to-run noise here is about 3 %.)
    peaks = {}
    for k in (2, 16):
        mx.reset_peak_memory()
        t.train_step([micro] * k, 1e-3)
        peaks[k] = mx.get_peak_memory()
    assert peaks[16] <= 1.10 * peaks[2], peaks


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_activation_checkpointing_gives_the_same_gradients(backend, dropout):
    """With dropout on, the recomputation in the backward pass must draw the forward's
    masks (mx.checkpoint alone would draw new ones: mlx_models/recompute.py). Each
    trainer seeds the RNG, so each is built right before its step."""
    spec = dataclasses.replace(SPEC, dropout=dropout)
    weights = lm_init_weights(spec, 2)
    b = batch(4, seed=3)
    plain = TRAINERS[backend](spec, TrainConfig(), weights).gradients_numpy([b])
    ckpt = TRAINERS[backend](spec, TrainConfig(gradient_checkpointing=True), weights).gradients_numpy([b])
    assert ckpt[0] == pytest.approx(plain[0], rel=1e-6)
    for name in plain[1]:
        assert rel_err(ckpt[1][name], plain[1][name]) <= 1e-5, name


@pytest.mark.slow
def test_activation_checkpointing_lowers_mlx_peak_memory():
    spec = LMSpec(vocab_size=128, hidden_size=64, num_layers=8, num_heads=4, num_kv_heads=2,
                  intermediate_size=256, max_seq_length=256)
    weights, b = lm_init_weights(spec, 0), batch(8, length=257)
    peaks = {}
    for on in (False, True):
        t = MLXTrainer(spec, TrainConfig(gradient_checkpointing=on), weights)
        t.train_step([b], 1e-3)
        mx.reset_peak_memory()
        t.train_step([b], 1e-3)
        peaks[on] = mx.get_peak_memory()
    assert peaks[True] < 0.7 * peaks[False], peaks


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_bf16_tracks_fp32(backend):
    """bf16 compute with fp32 master weights follows the fp32 loss curve."""
    weights = lm_init_weights(SPEC, 4)
    pattern = np.random.default_rng(5).integers(0, SPEC.vocab_size, 9)
    batches = [np.stack([np.resize(np.roll(pattern, -s), 33) for s in range(i, i + 4)]).astype(np.int32)
               for i in range(15)]
    curves = {}
    for precision in ("fp32", "bf16"):
        t = TRAINERS[backend](SPEC, TrainConfig(precision=precision, learning_rate=3e-3), weights)
        curves[precision] = np.array([t.train_step([b], 3e-3)["loss"] for b in batches])
        assert all(v.dtype == np.float32 for v in t.get_weights().values())
    assert curves["fp32"][-1] < 0.5 * curves["fp32"][0]
    assert np.abs(curves["bf16"] - curves["fp32"]).max() <= 0.02 * curves["fp32"][0], curves


def test_mlx_compiled_step_equals_eager():
    weights = lm_init_weights(SPEC, 6)
    batches = [batch(4, seed=s) for s in range(4)]
    runs = {}
    for compiled in (False, True):
        t = MLXTrainer(SPEC, TrainConfig(compile=compiled), weights)
        losses = [t.train_step([b[:2], b[2:]], 1e-3)["loss"] for b in batches]
        runs[compiled] = (losses, t.get_weights())
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-6)
    for name, w in runs[False][1].items():
        assert rel_err(runs[True][1][name], w) <= 1e-6, name


@pytest.mark.slow
def test_torch_compiled_step_equals_eager():
    """torch.compile (inductor; on the CPU here, CUDA in real use) trains like eager mode.
    Compiling takes ~30 s on two cores; it is the one slow test of the engine. eps is 1e-4
    because inductor reorders fp32 arithmetic and Adam's first steps amplify such roundoff
    in near-zero gradients by up to lr/eps (see tests/parity/test_lm_parity.py)."""
    weights = lm_init_weights(SPEC, 6)
    batches = [batch(4, seed=s) for s in range(3)]
    runs = {}
    for compiled in (False, True):
        t = TRAINERS["torch"](SPEC, TrainConfig(compile=compiled, eps=1e-4), weights)
        runs[compiled] = ([t.train_step([b], 1e-3)["loss"] for b in batches], t.get_weights())
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-5)
    for name, w in runs[False][1].items():
        assert rel_err(runs[True][1][name], w) <= 1e-4, name


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_non_finite_steps_are_skipped_and_stop_the_run(backend):
    weights = lm_init_weights(SPEC, 7)
    t = TRAINERS[backend](SPEC, TrainConfig(), weights)
    bad = {k: v.copy() for k, v in weights.items()}
    bad["norm.weight"][:] = np.nan
    t.set_weights(bad)
    result = t.train_step([batch(2)], 1e-3)
    assert result["skipped"]
    after = t.get_weights()
    assert np.isnan(after["norm.weight"]).all()
    assert np.array_equal(after["layers.0.attention.q_proj.weight"], weights["layers.0.attention.q_proj.weight"])


# ---------------------------------------------------------------------- the loop
def tiny_config(**train):
    settings = dict(seed=3, batch_size=4, max_steps=24, warmup_steps=4, learning_rate=3e-3,
                    min_lr=3e-4, log_every=1, eval_every=8, eval_batches=2, save_every=6,
                    keep_last=2) | train
    return config_from_dict({
        "family": "lm",
        "model": dict(vocab_size=1024, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      intermediate_size=64, max_seq_length=32, tie_embeddings=True, dropout=0.1),
        "train": settings})


def test_too_small_vocab_is_a_clear_error(tmp_path):
    from shared.errors import DataError
    with pytest.raises(DataError, match="model.vocab_size=300 is too small"):
        Run(config_from_dict({"family": "lm", "model": dict(
            vocab_size=300, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2,
            intermediate_size=64, max_seq_length=32)}), TRAINERS["torch"], tmp_path, progress=False)


def losses(run_dir):
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}, \
           {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_resume_is_exact(tmp_path, backend):
    """Stopped at step 12 and resumed to 24, a run logs bit-identical losses to an
    uninterrupted 24-step run (dropout on, so the RNG state must be restored too)."""
    cfg = tiny_config()
    whole = Run(cfg, TRAINERS[backend], tmp_path / "whole", progress=False)
    whole.train()
    parted = Run(cfg, TRAINERS[backend], tmp_path / "parted", progress=False)
    parted.train(stop_after=12)
    resumed = Run(cfg, TRAINERS[backend], tmp_path / "parted", resume=tmp_path / "parted",
                  progress=False)
    assert resumed.state.step == 12
    resumed.train()
    train_w, val_w = losses(tmp_path / "whole")
    train_p, val_p = losses(tmp_path / "parted")
    assert sorted(train_w) == list(range(1, 25))
    assert train_p == train_w
    assert val_p == val_w
    assert np.array_equal(whole.trainer.get_weights()["norm.weight"],
                          resumed.trainer.get_weights()["norm.weight"])
    ckpts = sorted(p.name for p in (tmp_path / "parted" / "checkpoints").iterdir())
    assert ckpts == ["best", "step_00000018", "step_00000024"]  # keep_last=2, plus best
    assert val_w[24] < val_w[0]


def test_checkpoint_from_one_backend_resumes_on_the_other(tmp_path):
    cfg = tiny_config(max_steps=12)
    Run(cfg, TRAINERS["mlx"], tmp_path / "run", progress=False).train(stop_after=6)
    resumed = Run(cfg, TRAINERS["torch"], tmp_path / "run", resume=tmp_path / "run", progress=False)
    assert resumed.state.step == 6
    resumed.train()
    train, _ = losses(tmp_path / "run")
    assert sorted(train) == list(range(1, 13))


# ---------------------------------------------------------------------- configs and CLI
def cli(backend, *args, cwd=None):
    return subprocess.run([sys.executable, "-m", f"{backend}_models.train", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize("override,message", [
    ("train.learning_rat=1e-3", "unknown key train.learning_rat (did you mean 'learning_rate'?)"),
    ("train.batch_size=0", "train.batch_size=0 is out of range: need 1 <= batch_size"),
    ("train.learning_rate=-1", "train.learning_rate=-1.0 is out of range: need learning_rate > 0"),
    ("train.batch_size=two", "train.batch_size must be int, got str 'two'"),
    ("model.num_kv_heads=3", "must be divisible by model.num_kv_heads (3)"),
    ("hardware.device=m4_max", "unknown device profile 'm4_max'"),
    ("trian.seed=1", "unknown section 'trian' in override"),
    ("data.train_files=[a.txt", "is not valid YAML"),
    ("train.precision=fp16", "fp16 needs a CUDA device"),
])
@pytest.mark.slow
def test_bad_config_is_one_line_and_exit_2(override, message, tmp_path):
    result = cli("torch", override, cwd=tmp_path)   # no runs/ of ours in the way
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


FRAMEWORK = {"torch": "torch", "mlx": "mlx.core"}


def run_module_without_framework(module: str, args: list, backend: str, cwd) -> str:
    """Run `python -m module args` in a fresh process; its last line says the exit status
    and whether the backend's framework got imported."""
    script = (f"import runpy, sys\nsys.argv = ['{module}', *{args!r}]\n"
              f"try:\n    runpy.run_module('{module}', run_name='__main__')\n"
              f"except SystemExit as e:\n    code = e.code\n"
              f"print('exit', code, '{FRAMEWORK[backend]}' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       cwd=cwd, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    return (r.stdout.splitlines() or [r.stderr])[-1]


@pytest.mark.parametrize("backend", ["mlx", "torch"])
@pytest.mark.parametrize("args,status", [(["--help"], 0), (["--bogus"], 2),
                                         (["train.batch_size=0"], 2)])
def test_help_and_bad_arguments_do_not_import_the_framework(backend, args, status, tmp_path):
    """Importing torch takes seconds; the train CLIs answer --help, argument errors and
    config errors without it (the Trainer is imported only when training starts)."""
    assert run_module_without_framework(f"{backend}_models.train", args, backend, tmp_path) == \
        f"exit {status} False"


@pytest.mark.parametrize("backend", ["mlx", "torch"])
@pytest.mark.parametrize("command", ["generate", "separate", "find_batch_size"])
def test_other_cli_help_does_not_import_the_framework(backend, command, tmp_path):
    assert run_module_without_framework(f"{backend}_models.{command}", ["--help"], backend,
                                        tmp_path) == "exit 0 False"


def test_exponent_without_a_dot_is_a_float():
    """YAML 1.1 reads 1e-4 as a string; the --help example uses it."""
    assert config_from_dict({"family": "lm"}, ["train.learning_rate=1e-4"]).train.learning_rate == 1e-4


def test_bad_config_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("family: lm\nmodel:\n  hidden_size: 64\n  num_headz: 4\n")
    result = cli("mlx", "--config", str(path))
    assert result.returncode == 2
    assert "unknown key model.num_headz (did you mean 'num_heads'?)" in result.stderr
    result = cli("mlx", "--config", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2 and "not found" in result.stderr
    result = cli("mlx", "--config", str(tmp_path))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert f"{tmp_path} is a directory, not a config file; pass a YAML file" in result.stderr
    (tmp_path / "config.yaml").write_text("family: lm\n")     # a run directory: name its config
    from shared.engine.config import load_config
    from shared.errors import ConfigError
    with pytest.raises(ConfigError, match=f"is a directory, not a config file; pass {tmp_path / 'config.yaml'}$"):
        load_config(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_cli_trains_and_refuses_to_overwrite(tmp_path, backend):
    out = tmp_path / "run"
    args = ["--out", str(out), "--no-progress", "train.max_steps=4", "train.eval_every=2",
            "train.save_every=2", "train.eval_batches=1", "model.num_layers=1",
            "model.hidden_size=32", "model.intermediate_size=64", "model.max_seq_length=32"]
    result = cli(backend, *args)
    assert result.returncode == 0, result.stderr
    assert (out / "checkpoints" / "best" / "model.safetensors").is_file()
    assert (out / "checkpoints" / "best" / "tokenizer.model").is_file()
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    step_rows = [r for r in rows if "loss" in r]
    assert set(step_rows[0]) >= {"step", "loss", "lr", "tokens_per_s", "mem_gb", "peak_mem_gb"}
    assert {"val_loss", "val_ppl"} <= set(rows[0])
    again = cli(backend, *args)
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = cli(backend, "--resume", str(out), "--no-progress", "train.max_steps=6")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr


@pytest.mark.slow
def test_cli_never_writes_over_another_run(tmp_path):
    """A resume sent to another run's directory, a standalone checkpoint with no --out, a
    max_steps already reached, and leftover metrics all stop before anything is written."""
    import shutil
    out, other = tmp_path / "run", tmp_path / "other"
    small = ["--no-progress", "train.eval_every=2", "train.save_every=2", "train.eval_batches=1",
             "model.num_layers=1", "model.hidden_size=32", "model.intermediate_size=64",
             "model.max_seq_length=32"]
    assert cli("torch", "--out", str(out), "train.max_steps=2", *small).returncode == 0
    shutil.copytree(out, other)

    def snapshot(*dirs):
        return {p: p.read_bytes() for d in dirs for p in sorted(d.rglob("*")) if p.is_file()}
    before = snapshot(out, other)
    into_other = cli("torch", "--resume", str(out), "--out", str(other), "train.max_steps=4")
    assert into_other.returncode == 2 and "already holds a run" in into_other.stderr
    reached = cli("torch", "--resume", str(out), "train.max_steps=2")
    assert reached.returncode == 2 and "nothing to train" in reached.stderr
    assert snapshot(out, other) == before
    loose = tmp_path / "downloads" / "ckpt"
    shutil.copytree(out / "checkpoints" / "step_00000002", loose)
    refused = cli("torch", "--resume", str(loose), "train.max_steps=4")
    assert refused.returncode == 2 and "outside a run directory" in refused.stderr
    assert sorted(p.name for p in (tmp_path / "downloads").iterdir()) == ["ckpt"]
    shutil.rmtree(other / "checkpoints")
    before = snapshot(other)
    leftover = cli("torch", "--out", str(other), "train.max_steps=2", *small)
    assert leftover.returncode == 2 and "metrics.jsonl" in leftover.stderr
    assert snapshot(other) == before


def test_resume_refuses_another_model_before_building_data(tmp_path):
    from shared.errors import CheckpointError
    cfg = tiny_config(max_steps=2, save_every=2, eval_every=2, eval_batches=1)
    Run(cfg, TRAINERS["torch"], tmp_path / "run", progress=False).train()
    wider = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, hidden_size=64))
    with pytest.raises(CheckpointError, match="another shape.*model.hidden_size 32 -> 64"):
        Run(wider, TRAINERS["torch"], tmp_path / "run", resume=tmp_path / "run", progress=False)
    separator = config_from_dict({"family": "bandsplit", "train": {"max_steps": 4}})
    with pytest.raises(CheckpointError, match="holds a 'lm' model but the config is for 'bandsplit'"):
        Run(separator, TRAINERS["torch"], tmp_path / "sep", resume=tmp_path / "run", progress=False)
    assert not (tmp_path / "sep").exists()   # no demo data built
    # Settings that do not change the shapes may change on resume.
    no_dropout = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dropout=0.0),
                                     train=dataclasses.replace(cfg.train, max_steps=4))
    assert Run(no_dropout, TRAINERS["torch"], tmp_path / "run", resume=tmp_path / "run",
               progress=False).state.step == 2


def test_resume_refuses_data_that_change_the_tokenizer(tmp_path):
    from shared.errors import CheckpointError
    text = tmp_path / "a.txt"
    text.write_text("\n".join(f"문단 {i}: 서울의 하늘은 맑고 바람이 분다." for i in range(200)))
    cfg = tiny_config(max_steps=2, save_every=2, eval_every=2, eval_batches=1)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, train_files=[str(text)]))
    Run(cfg, TRAINERS["torch"], tmp_path / "run", progress=False).train()
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    other = tmp_path / "b.txt"
    other.write_text("\n".join(f"paragraph {i}: the sky over Seoul is clear." for i in range(200)))
    changed = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=4),
                                  data=dataclasses.replace(cfg.data, train_files=[str(other)]))
    with pytest.raises(CheckpointError, match="different tokenizer.model.*data.tokenizer"):
        Run(changed, TRAINERS["torch"], tmp_path / "run2", resume=tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics
    # The same data in a new directory trains the same tokenizer: the resume goes ahead.
    same = dataclasses.replace(changed, data=cfg.data)
    assert Run(same, TRAINERS["torch"], tmp_path / "run3", resume=tmp_path / "run",
               progress=False).state.step == 2


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    import signal
    import time
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch_models.train", "--out", str(out), "--no-progress",
         "train.max_steps=100000", "train.log_every=1", "train.eval_every=100000",
         "train.save_every=100000", "model.num_layers=1", "model.hidden_size=32",
         "model.intermediate_size=64", "model.max_seq_length=32"],
        stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (
            (out / "metrics.jsonl").is_file() and len((out / "metrics.jsonl").read_text().splitlines()) > 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "saved" in stderr and "--resume" in stderr
    saved = sorted((out / "checkpoints").glob("step_*"))
    assert len(saved) == 1 and (saved[0] / "train_state.json").is_file()
    step = json.loads((saved[0] / "train_state.json").read_text())["step"]
    assert saved[0].name == f"step_{step:08d}" and step >= 3
