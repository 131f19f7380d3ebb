"""What a training run tells its user: the memory plan is respected before any work, a log
file gets plain lines, memory readouts say what they measure, and the last line says what
was done."""
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlx_models.trainer import Trainer as MLXTrainer
from shared.cli.train import main as train_main
from shared.engine.config import load_config
from shared.engine.train_loop import Run, format_duration, format_memory
from tests.helpers import TRAINERS, metric_rows

ROOT = Path(__file__).resolve().parent.parent
REGRESSOR = str(ROOT / "tests" / "fifth_family" / "regressor.yaml")   # trains in a second


def test_a_run_that_does_not_fit_stops_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    code = train_main("mlx", MLXTrainer, ["--out", str(out), "--no-progress", "train.batch_size=4096",
                                          "train.max_steps=1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "DOES NOT FIT cpu" in err and "--fit" in err and "--force" in err
    # the cheapest changes that fit, as overrides to paste
    assert "fits: micro-batch 4096 -> " in err and "train.gradient_accumulation_steps=" in err
    assert not out.exists()          # nothing written, no data built


def test_force_trains_anyway(tmp_path, capsys, monkeypatch):
    import shared.planner.core as core
    monkeypatch.setattr(core, "budget_bytes", lambda profile: 1.0)   # nothing fits one byte
    with pytest.raises(Exception, match="--force trains anyway"):
        Run(load_config(REGRESSOR), TRAINERS["torch"], tmp_path / "refused", progress=False)
    assert not (tmp_path / "refused").exists()
    run = Run(load_config(REGRESSOR, ["train.max_steps=2"]), TRAINERS["torch"], tmp_path / "forced",
              progress=False, force=True)
    assert run.train().step == 2
    assert "--force: training although the plan does not fit" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_a_log_file_gets_one_plain_line_per_log_step(tmp_path, capsys, backend):
    """stderr is not a terminal here (as under nohup, a scheduler or CI): no progress bar,
    a line every train.log_every steps with loss, lr, throughput, memory and ETA."""
    Run(load_config(REGRESSOR), TRAINERS[backend], tmp_path / "run", progress=True).train()
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("step ") and "| loss" in line]
    assert [line.split()[1] for line in lines] == [f"{s}/12" for s in range(2, 13, 2)]
    rows = {r["step"]: r for r in metric_rows(tmp_path / "run") if "loss" in r}
    for line in lines:
        step = int(line.split()[1].split("/")[0])
        assert f"loss {rows[step]['loss']:.4f}" in line
        assert "examples/s" in line and "eta " in line
        assert ("rss=" in line) == (backend == "torch")   # torch on a CPU: process RSS
        assert ("mem=" in line) == (backend == "mlx")


def test_memory_and_durations_read_as_what_they_are():
    assert format_memory(0.18, 0.2, "tensors") == "mem=180/200MB"
    assert format_memory(2.1, 3.45, "tensors") == "mem=2.1/3.5GB"
    assert format_memory(0.54, 0.6, "rss") == "rss=540MB"
    assert format_duration(133) == "2m13s" and format_duration(7300) == "2h01m"


def test_done_line_counts_this_runs_steps_and_does_not_compare_rss(tmp_path, capsys, monkeypatch):
    from torch_models.trainer import Trainer as TorchTrainer
    monkeypatch.chdir(ROOT)
    run_dir = str(tmp_path / "run")
    assert train_main("torch", TorchTrainer, ["--config", REGRESSOR, "--out", run_dir, "--no-progress",
                                              "train.max_steps=4"]) == 0
    assert train_main("torch", TorchTrainer, ["--resume", run_dir, "--no-progress",
                                              "train.max_steps=6"]) == 0
    done = [line for line in capsys.readouterr().err.splitlines() if line.startswith("done:")]
    assert done[0].startswith("done: 4 steps in")
    assert done[1].startswith("done: 2 steps (resumed at step 4, now at 6) in")
    assert all("process RSS" in line and "planner predicted" not in line for line in done)


def test_non_finite_stop_without_a_checkpoint_says_start_again(tmp_path):
    with pytest.raises(Exception, match="start again"):
        Run(load_config(REGRESSOR, ["train.learning_rate=1e30", "train.max_bad_steps=1",
                                    "train.max_grad_norm=0"]),
            TRAINERS["torch"], tmp_path / "run", progress=False).train()


@pytest.mark.slow
def test_a_second_ctrl_c_aborts_without_a_traceback(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlx_models.train", "--config", REGRESSOR, "--out", str(out),
         "--no-progress", "train.max_steps=10000000", "train.log_every=1", "train.eval_every=10000000",
         "train.save_every=10000000"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (
            (out / "metrics.jsonl").is_file() and len((out / "metrics.jsonl").read_text().splitlines()) > 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode in (0, 130), stderr     # 0: the step ended between the two signals
    assert "Traceback" not in stderr
    if proc.returncode == 130:
        assert "aborted (Ctrl+C)" in stderr
