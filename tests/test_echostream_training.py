"""EchoStream through the shared loop on a tiny generated corpus, both backends: all four
loss terms and the decoding metrics are logged, and a run stopped and resumed from its
checkpoint (dropout and SpecAugment on, so RNG and data position must be restored) logs
exactly the losses of an uninterrupted one -- seed 000's missing resume."""

import pytest

from shared.engine.config import load_config
from shared.engine.train_loop import Run
from shared.planner.core import with_overrides
from tests.helpers import TRAINERS, metric_rows


def tiny():
    return with_overrides(load_config("configs/echostream_demo.yaml"), {
        "model.embed_dim": 32, "model.encoder_layers": 1, "model.subsample_channels": 64,
        "model.mt_embed_dim": 32, "model.mt_ffn_dim": 64, "model.unit_embed_dim": 32,
        "model.unit_ffn_dim": 64, "model.dropout": 0.1,
        "data.synth_train_utterances": 40, "data.synth_dev_utterances": 4, "data.specaugment": True,
        "data.dev_max_utterances": 4, "train.batch_size": 2, "train.max_steps": 6,
        "train.warmup_steps": 1, "train.log_every": 1, "train.eval_every": 3, "train.save_every": 3,
        "train.keep_last": 1})


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_trains_evaluates_and_resumes_exactly(tmp_path, backend):
    cfg = tiny()
    Run(cfg, TRAINERS[backend], tmp_path / "whole", progress=False).train()
    Run(cfg, TRAINERS[backend], tmp_path / "parted", progress=False).train(stop_after=3)
    resumed = Run(cfg, TRAINERS[backend], tmp_path / "parted", resume=tmp_path / "parted", progress=False)
    assert resumed.state.step == 3
    resumed.train()
    whole, parted = metric_rows(tmp_path / "whole"), metric_rows(tmp_path / "parted")
    losses = [r["loss"] for r in whole if "loss" in r]
    assert len(losses) == 6 and losses == [r["loss"] for r in parted if "loss" in r]
    evals = [r for r in whole if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 3, 6]
    for key in ("val_asr_ctc", "val_st_ctc", "val_mt", "val_unit_ctc", "wer", "cer", "bleu",
                "st_ctc_bleu", "unit_error_rate"):
        assert key in evals[-1], key
    assert [r["val_loss"] for r in evals] == [r["val_loss"] for r in parted if "val_loss" in r]
    for name in ("src_tokenizer.model", "tgt_tokenizer.model", "cmvn.npz"):
        assert (tmp_path / "parted" / "checkpoints" / "best" / name).is_file()
