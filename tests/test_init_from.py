"""train.init_from: a new run starts from existing weights (a checkpoint or run of either
backend, or a Hugging Face Llama directory for the LM), at step 0 with its own optimizer
and schedule; train.init_exclude keeps chosen parameters at their initial values."""
from pathlib import Path

import numpy as np
import pytest

from shared.engine.checkpoint import load_checkpoint
from shared.engine.config import load_config
from shared.engine.train_loop import Run
from shared.errors import ConfigError
from shared.interop.export_hf import export
from shared.registry import get_family
from tests.helpers import TRAINERS, bits, one_torch_thread  # noqa: F401  (an autouse fixture)

ROOT = Path(__file__).resolve().parent.parent
REGRESSOR = ROOT / "tests" / "fifth_family" / "regressor.yaml"
TINY_LM = ["model.num_layers=1", "model.hidden_size=32", "model.intermediate_size=64",
           "model.max_seq_length=32", "train.batch_size=2", "train.eval_batches=1", "train.max_steps=2"]


def trained_regressor(tmp_path, backend="mlx") -> Path:
    Run(load_config(REGRESSOR, ["train.max_steps=4"]), TRAINERS[backend], tmp_path / "source",
        progress=False).train()
    return tmp_path / "source"


@pytest.mark.parametrize("source_backend, backend", [("mlx", "torch"), ("torch", "mlx")])
def test_a_new_run_starts_from_another_backends_run(tmp_path, source_backend, backend):
    source = trained_regressor(tmp_path, source_backend)
    saved, _ = load_checkpoint(source / "checkpoints" / "best")
    run = Run(load_config(REGRESSOR, [f"train.init_from={source}"]), TRAINERS[backend],
              tmp_path / "new", progress=False)
    assert run.state.step == 0
    assert bits(run.trainer.get_weights()) == bits(saved)            # the run's best, exactly
    assert all(not np.any(v) for k, v in run.trainer.optimizer_state().items() if k.endswith((".m", ".v")))
    run.train()
    assert (tmp_path / "new" / "checkpoints" / "step_00000012").is_dir()


def test_init_exclude_keeps_parameters_at_their_initial_values(tmp_path):
    source = trained_regressor(tmp_path)
    saved, _ = load_checkpoint(source / "checkpoints" / "best")
    wider = load_config(REGRESSOR, [f"train.init_from={source}", "model.out_dim=3"])
    with pytest.raises(ConfigError, match=r"layers\.2\.weight: .* has \(2, 32\), the model \(3, 32\)"):
        Run(wider, TRAINERS["torch"], tmp_path / "refused", progress=False)
    assert not (tmp_path / "refused").exists()                      # nothing written
    config = load_config(REGRESSOR, [f"train.init_from={source}", "model.out_dim=3",
                                     "train.init_exclude=[layers.2.*]"])
    weights = Run(config, TRAINERS["torch"], tmp_path / "new", progress=False).trainer.get_weights()
    start = get_family("regressor").init_weights(config.model, config.train.seed)
    for name, value in weights.items():
        expected = start[name] if name.startswith("layers.2.") else saved[name]
        assert bits({name: value}) == bits({name: expected}), name


def test_a_hugging_face_llama_directory_starts_an_lm_run(tmp_path):
    lm = Run(load_config(None, TINY_LM), TRAINERS["mlx"], tmp_path / "lm", progress=False)
    lm.train()
    export(tmp_path / "lm" / "checkpoints" / "best", tmp_path / "hf")
    saved, _ = load_checkpoint(tmp_path / "lm" / "checkpoints" / "best")
    run = Run(load_config(None, TINY_LM + [f"train.init_from={tmp_path / 'hf'}"]), TRAINERS["torch"],
              tmp_path / "from_hf", progress=False)
    assert bits(run.trainer.get_weights()) == bits(saved)


def test_bad_sources_are_one_clear_error(tmp_path):
    source = trained_regressor(tmp_path)
    with pytest.raises(ConfigError, match="no such checkpoint, run or model directory"):
        Run(load_config(REGRESSOR, [f"train.init_from={tmp_path / 'missing'}"]), TRAINERS["torch"],
            tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="holds a 'regressor' model; this run trains 'lm'"):
        Run(load_config(None, TINY_LM + [f"train.init_from={source}"]), TRAINERS["torch"],
            tmp_path / "b", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
