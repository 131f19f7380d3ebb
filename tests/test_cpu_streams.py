"""MLX on a CPU splits each micro-batch over parallel streams (mlx_models/trainer.py). The
size-weighted mean of the parts' gradients must be the whole batch's: checked against
torch's trainer on the whole batch, with parts of unequal size."""
import dataclasses

import numpy as np
import pytest

from mlx_models.trainer import Trainer as MLXTrainer
from shared.engine.config import TrainConfig, config_from_dict
from shared.errors import ConfigError
from shared.registry import get_family
from shared.specs.bandsplit import BandSplitSpec
from shared.specs.lm import LMSpec
from tests.helpers import TRAINERS, rel_err, stems_batch
from tests.parity.test_echostream_parity import tiny_spec as echostream_tiny_spec
from tests.parity.test_echostream_parity import make_batch as echostream_batch

LM = LMSpec(vocab_size=128, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
            intermediate_size=96, max_seq_length=64)
# The band-split transformer of tests/parity/test_bandsplit_parity.py: a separator whose
# gradients agree across backends to 1e-5 (a dict batch; TF-Locoformer's tiny specs have
# weight gradients that cancel to ~0, where either backend's fp32 is far from float64).
SEPARATOR = BandSplitSpec(n_fft=128, hop=32, audio_channels=2, n_sources=4, hidden=16, n_layers=2,
                          sequence_layer="transformer", n_heads=2, ffn_mult=2, mask_mlp_hidden=24)


def lm_batch(size):
    return np.random.default_rng(0).integers(0, LM.vocab_size, (size, 33)).astype(np.int32)


ECHOSTREAM = echostream_tiny_spec()


@pytest.mark.parametrize("family,spec,make_batch,bound", [
    ("lm", LM, lm_batch, 1e-4),
    ("bandsplit", SEPARATOR, lambda size: stems_batch(SEPARATOR, size, seed=0, length=1600,
                                                      sample_rate=8000), 1e-4),
    # EchoStream's MT term is a mean over all the batch's target tokens, and its parts hold
    # different numbers of them: each part divides by the batch's count (scaled by its share
    # of the examples), so the parts still add up to the whole batch's loss and gradients.
    ("echostream", ECHOSTREAM, lambda size: echostream_batch(
        ECHOSTREAM, seed=4, feature_lengths=(90, 37, 61, 20, 75)[:size]), 5e-5),
])
@pytest.mark.slow
def test_parts_give_the_whole_batch_gradient(family, spec, make_batch, bound):
    weights = get_family(family).init_weights(spec, 1)
    batch = make_batch(5)                            # 3 parts: 2 + 2 + 1 examples
    mlx = MLXTrainer(spec, TrainConfig(cpu_streams=3), weights)
    assert mlx.parallel_parts == 3
    loss, grads = mlx.gradients_numpy([batch])
    ref_loss, ref_grads = TRAINERS["torch"](spec, TrainConfig(), weights).gradients_numpy([batch])
    assert rel_err(loss, ref_loss) <= 1e-5
    for name in ref_grads:
        assert rel_err(grads[name], ref_grads[name]) <= bound, name


def test_one_stream_when_asked_or_when_the_batch_is_one_example():
    assert MLXTrainer(LM, TrainConfig(cpu_streams=1)).parallel_parts == 1
    assert MLXTrainer(LM, TrainConfig(cpu_streams=4, batch_size=1)).parallel_parts == 1
    assert MLXTrainer(LM, TrainConfig(cpu_streams=4, batch_size=2)).parallel_parts == 2
    # EchoStream splits only when asked: its many tiny CTC ops do not pay for the parts.
    assert MLXTrainer(ECHOSTREAM, TrainConfig(cpu_streams=0)).parallel_parts == 1


def test_negative_streams_are_a_config_error():
    with pytest.raises(ConfigError, match=r"train.cpu_streams=-1 is out of range: need 0 <= cpu_streams <= 1024"):
        config_from_dict({"family": "lm", "model": dataclasses.asdict(LM),
                          "train": {"cpu_streams": -1}})
