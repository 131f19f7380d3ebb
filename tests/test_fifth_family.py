"""Bring your own family: an MLP regressor written entirely under tests/fifth_family (one spec
file, two model files, a config) gets training on both backends, exact resume, parity, a
memory plan and a bench row through the code paths the CLIs use -- with nothing under
shared/, mlx_models/, torch_models/ or bench/ that knows it exists."""
import json
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch

import mlx_models.models as mlx_io
import torch_models.models as torch_io
from mlx_models.trainer import Trainer as MLXTrainer
from shared.cli.train import main as train_main
from shared.engine.checkpoint import load_checkpoint
from shared.engine.config import load_config
from shared.engine.train_loop import Run
from shared.plan import main as plan_main
from shared.registry import get_family
from tests.fifth_family.spec import RegressorSpec, manifest
from tests.helpers import (TRAINERS, assert_trees_match_manifest, bits, metric_rows, one_torch_thread,  # noqa: F401
                           rel_err, round_trip_mlx_torch_mlx)
from torch_models.trainer import Trainer as TorchTrainer

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "tests/fifth_family/regressor.yaml"
CLI_TRAINERS = {"mlx": MLXTrainer, "torch": TorchTrainer}


def losses(run_dir):
    rows = metric_rows(run_dir)
    return ({r["step"]: r["loss"] for r in rows if "loss" in r},
            {r["step"]: r["val_loss"] for r in rows if "val_loss" in r})


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_trains_through_the_cli_and_resumes_exactly(tmp_path, backend, monkeypatch):
    monkeypatch.chdir(ROOT)
    whole = tmp_path / "whole"
    assert train_main(backend, CLI_TRAINERS[backend], ["--config", CONFIG, "--out", str(whole),
                                                       "--no-progress"]) == 0
    train_w, val_w = losses(whole)
    assert sorted(train_w) == list(range(2, 13, 2))   # train.log_every=2
    assert val_w[12] < 0.5 * val_w[0]            # it learns the teacher
    # Stopped at step 8 and resumed by the CLI: the same losses, bit for bit.
    parted = tmp_path / "parted"
    Run(load_config(CONFIG), TRAINERS[backend], parted, progress=False).train(stop_after=8)
    assert train_main(backend, CLI_TRAINERS[backend], ["--resume", str(parted), "--no-progress"]) == 0
    assert losses(parted) == (train_w, val_w)
    assert bits(load_checkpoint(parted / "checkpoints" / "step_00000012")[0]) == \
        bits(load_checkpoint(whole / "checkpoints" / "step_00000012")[0])


@pytest.mark.slow
def test_a_fresh_process_resumes_it_from_the_run_directory(tmp_path):
    """The run's config names family_module, so a new process registers the family before
    reading the checkpoint; and a checkpoint of one backend resumes on the other."""
    Run(load_config(ROOT / CONFIG), TRAINERS["torch"], tmp_path / "run", progress=False).train(stop_after=4)
    out = subprocess.run([sys.executable, "-m", "mlx_models.train", "--resume", str(tmp_path / "run"),
                          "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "done: 8 steps (resumed at step 4, now at 12)" in out.stderr
    assert (tmp_path / "run" / "checkpoints" / "step_00000012" / "model.safetensors").is_file()


def test_parity_mlx_equals_torch(tmp_path):
    spec = RegressorSpec(in_dim=5, hidden=16, depth=3, out_dim=3)
    config = load_config(ROOT / CONFIG, ["model.in_dim=5", "model.hidden=16", "model.depth=3",
                                         "model.out_dim=3"])
    batch = get_family("regressor").task(config, tmp_path, 0, 1).train_batch(0, 16)
    mlx_trainer, torch_trainer = (TRAINERS[b](spec, config.train) for b in ("mlx", "torch"))
    assert_trees_match_manifest(mlx_trainer.model, torch_trainer.model, manifest(spec))
    loss_m, grads_m = mlx_trainer.gradients_numpy([batch])
    loss_t, grads_t = torch_trainer.gradients_numpy([batch])
    assert abs(loss_m - loss_t) <= 1e-6 * abs(loss_t)
    for name in grads_t:
        assert rel_err(grads_m[name], grads_t[name]) < 1e-5, name
    with torch.no_grad():
        out_t = torch_trainer.model(torch.from_numpy(batch["x"])).numpy()
    assert rel_err(np.array(mlx_trainer.model(mx.array(batch["x"]))), out_t) < 1e-6
    # One optimizer step each: the same weights after the update.
    mlx_trainer.train_step([batch], 1e-2)
    torch_trainer.train_step([batch], 1e-2)
    after_m, after_t = mlx_trainer.get_weights(), torch_trainer.get_weights()
    for name in after_t:
        assert rel_err(after_m[name], after_t[name]) < 1e-5, name
    # Checkpoints move between the backends bit for bit.
    _, saved_config, _, _ = round_trip_mlx_torch_mlx(mlx_io.build_model(spec, seed=3), tmp_path)
    assert saved_config["family"] == "regressor"
    assert saved_config["family_module"] == "tests.fifth_family.spec"
    assert isinstance(torch_io.load_model(tmp_path / "from_mlx")[0].spec, RegressorSpec)


def test_the_planner_plans_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert plan_main(["--config", CONFIG, "--device", "cpu", "--backend", "torch", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    n = sum(p.numel() for p in torch_io.build_model(load_config(CONFIG).model).parameters())
    terms = {t["name"]: t["bytes"] for t in report["terms"]}
    assert terms["weights"] == 4 * n and terms["optimizer state"] == 8 * n and terms["gradients"] == 4 * n
    batch, spec = 8, load_config(CONFIG).model
    assert terms["activations: layers"] == batch * (spec.in_dim + 2 * spec.hidden * spec.depth + spec.out_dim) * 4
    assert report["fits"] and report["peak_gb"] == pytest.approx(sum(terms.values()) / 1e9)
    # --fit writes a config that loads (here: nothing to change).
    out = tmp_path / "fitted.yaml"
    assert plan_main(["--config", CONFIG, "--device", "m2_8gb", "--fit", "--out", str(out)]) == 0
    assert load_config(out).family == "regressor"
    capsys.readouterr()
    # An impossibly small budget: the planner's suggestions include the family's depth key.
    assert plan_main(["--config", CONFIG, "--device", "cpu", "--json", "model.hidden=60000", "model.depth=4",
                      "train.batch_size=64"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert not report["fits"]
    assert any("layers (a smaller model)" in s["change"] for s in report["suggestions"])


@pytest.mark.slow
def test_the_bench_gives_it_a_row(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--configs", CONFIG,
                          "--steps", "1", "--repeats", "1", "--warmup", "0", "--json",
                          str(tmp_path / "bench.json")], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    [run] = json.loads((tmp_path / "bench.json").read_text())["runs"]
    assert run["model"] == "regressor" and run["unit"] == "examples"
    for backend in ("mlx", "torch"):
        assert run["training"][backend]["examples_per_s"]["median"] > 0
    assert "| regressor |" in out.stdout


def test_nothing_in_the_product_knows_it():
    product = [p for d in ("shared", "mlx_models", "torch_models", "bench") for p in (ROOT / d).rglob("*.py")]
    assert [p for p in product if "regressor" in p.read_text().lower() or "fifth_family" in p.read_text()] == []
