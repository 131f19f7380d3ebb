"""MLX vs PyTorch on the band-split dual-path separator, with both sequence layers
(bidirectional Mamba2 and RoPE transformer): same weights and audio in, same waveforms,
losses, gradients and training curves out.

A tiny stereo spec (n_fft 128 -> 30 bands, hidden 16, 2 DualPathModules, SSD chunks of 16
over 51 frames, so the last chunk is short) on 0.2 s of 8 kHz audio."""
import dataclasses

import mlx.core as mx
import numpy as np
import pytest
import torch

import mlx_models.bandsplit as mbs
import mlx_models.models as mm
import torch_models.bandsplit as tbs
import torch_models.models as tm
from mlx_models.trainer import Trainer as MLXTrainer
from shared.engine.config import TrainConfig
from shared.specs.bandsplit import (BandSplitSpec, bandsplit_init_weights, bandsplit_manifest,
                                    bandsplit_param_counts)
from torch_models.trainer import Trainer as TorchTrainer
from tests.helpers import (assert_trees_match_manifest, one_torch_thread,  # noqa: F401  (an autouse fixture)
                           rel_err, round_trip_mlx_torch_mlx, separator_outputs, stems_batch)

SAMPLE_RATE, LENGTH = 8000, 1600  # 0.2 s: 51 frames x 65 bins at n_fft 128, hop 32
LAYERS = ["mamba2", "transformer"]


def tiny_spec(sequence_layer: str, **changes) -> BandSplitSpec:
    spec = BandSplitSpec(n_fft=128, hop=32, audio_channels=2, n_sources=4, hidden=16, n_layers=2,
                         sequence_layer=sequence_layer, d_state=8, d_conv=4, expand=2, head_dim=8,
                         chunk_size=16, n_heads=2, ffn_mult=2, mask_mlp_hidden=24)
    return dataclasses.replace(spec, **changes)


def batch(spec, size=2, seed=0) -> dict[str, np.ndarray]:
    return stems_batch(spec, size, seed, LENGTH, SAMPLE_RATE)


def train_config(**changes) -> TrainConfig:
    return dataclasses.replace(TrainConfig(learning_rate=1e-3, warmup_steps=0, weight_decay=0.01,
                                           max_grad_norm=1.0, eps=1e-4), **changes)


@pytest.mark.parametrize("layer", LAYERS)
def test_parameter_trees_match_manifest(layer):
    spec = tiny_spec(layer)
    torch_model = tbs.BandSplitSeparator(spec)
    assert_trees_match_manifest(mbs.BandSplitSeparator(spec), torch_model, bandsplit_manifest(spec))
    counts = bandsplit_param_counts(spec)
    assert counts["total"] == sum(v.numel() for v in torch_model.parameters())
    assert counts["total"] == counts["band_split"] + counts["dual_path"] + counts["mask_estimators"]


@pytest.mark.parametrize("layer", LAYERS)
def test_forward_waveforms(layer, record):
    spec = tiny_spec(layer)
    out_a, out_b = separator_outputs(spec, batch(spec)["mixture"])
    assert out_a.shape == out_b.shape == (2, spec.n_sources, spec.audio_channels, LENGTH)
    err = record(f"bandsplit {layer} forward waveforms", rel_err(out_a, out_b))
    assert err <= 1e-5, err


@pytest.mark.parametrize("layer,objective", [("mamba2", "l1_mrstft"), ("mamba2", "si_sdr"),
                                             ("transformer", "l1_mrstft")])
def test_loss_and_every_gradient(layer, objective, record):
    """Every parameter's gradient through Trainer.gradients_numpy (canonical layout), MLX
    vs torch fp32, and torch fp32 vs torch float64 for scale. Bound 1e-4 as for
    TF-Locoformer: the same L1/STFT objectives, sums over many (frame, bin) positions."""
    spec = tiny_spec(layer, loss=objective)
    weights = bandsplit_init_weights(spec, seed=2)
    data = batch(spec, seed=3)
    loss_a, grads_a = MLXTrainer(spec, train_config(), weights).gradients_numpy([data])
    loss_b, grads_b = TorchTrainer(spec, train_config(), weights, device="cpu").gradients_numpy([data])
    model64 = tm.build_model(spec, weights=weights).double()
    loss64 = tbs.loss(model64, {k: torch.from_numpy(v.astype(np.float64)) for k, v in data.items()})
    loss64.backward()
    grads_64 = {name: p.grad.numpy() for name, p in model64.named_parameters()}
    assert record(f"bandsplit {layer} loss", rel_err(loss_a, loss_b)) <= 1e-5, (loss_a, loss_b)
    assert rel_err(loss_b, loss64.item()) <= 1e-5
    assert set(grads_a) == set(grads_b) == {p.name for p in bandsplit_manifest(spec)}
    for name in grads_b:
        record(f"bandsplit {layer} gradient, torch fp32 vs float64", rel_err(grads_b[name], grads_64[name]))
        err = record(f"bandsplit {layer} gradient (every parameter)", rel_err(grads_a[name], grads_b[name]))
        assert err <= 1e-4, (name, err)
        assert np.abs(grads_b[name]).max() > 0, name          # every parameter is used


@pytest.mark.parametrize("layer", LAYERS)
def test_activation_checkpointing_same_gradients(layer, record):
    spec = tiny_spec(layer)
    weights = bandsplit_init_weights(spec, seed=9)
    data = batch(spec, size=1, seed=8)
    for name, make in (("mlx", lambda t: MLXTrainer(spec, t, weights)),
                       ("torch", lambda t: TorchTrainer(spec, t, weights, device="cpu"))):
        loss_plain, grads_plain = make(train_config()).gradients_numpy([data])
        loss_ckpt, grads_ckpt = make(train_config(gradient_checkpointing=True)).gradients_numpy([data])
        assert loss_ckpt == pytest.approx(loss_plain, rel=1e-6)
        for p in grads_plain:
            err = record(f"bandsplit checkpointed vs plain gradients ({name})",
                         rel_err(grads_ckpt[p], grads_plain[p]))
            assert err <= 1e-6, (name, p, err)


@pytest.mark.slow
@pytest.mark.parametrize("layer", LAYERS)
def test_twenty_step_loss_curves(layer, record):
    """Both trainers, 20 AdamW steps on the same numpy batches (SI-SDR: smooth, so the
    curves measure the backends rather than L1 kinks; see test_tflocoformer_parity)."""
    spec = tiny_spec(layer, loss="si_sdr")
    train = train_config(learning_rate=2e-3)
    weights = bandsplit_init_weights(spec, seed=10)
    a, b = MLXTrainer(spec, train, weights), TorchTrainer(spec, train, weights, device="cpu")
    pool = [batch(spec, size=1, seed=100 + i) for i in range(4)]
    curve_a, curve_b = [], []
    for step in range(20):
        data = pool[step % len(pool)]
        curve_a.append(a.train_step([data], lr=2e-3)["loss"])
        curve_b.append(b.train_step([data], lr=2e-3)["loss"])
    assert np.mean(curve_b[-4:]) < np.mean(curve_b[:4]) - 1.0, curve_b   # it learns (>1 dB)
    for i in range(20):
        err = record(f"bandsplit {layer} 20-step loss curve (per step)",
                     abs(curve_a[i] - curve_b[i]) / abs(curve_b[i]))
        assert err <= 1e-4, (i, curve_a[i], curve_b[i])


@pytest.mark.parametrize("layer", LAYERS)
def test_bf16_training_step_runs_on_both(layer):
    """bf16 compute (MLX: explicit casts, torch: CPU autocast) gives a finite loss close to
    fp32's, with the SSD scan kept in fp32."""
    spec = tiny_spec(layer)
    weights = bandsplit_init_weights(spec, seed=12)
    data = batch(spec, size=1, seed=13)
    reference = TorchTrainer(spec, train_config(), weights, device="cpu").eval_loss(data)
    for trainer in (MLXTrainer(spec, train_config(precision="bf16"), weights),
                    TorchTrainer(spec, train_config(precision="bf16"), weights, device="cpu")):
        out = trainer.train_step([data], lr=1e-3)
        assert not out["skipped"] and out["loss"] == pytest.approx(reference, rel=0.05), (trainer.backend, out)


def test_checkpoint_round_trip_mlx_torch_mlx(tmp_path):
    """Weights (the depthwise conv1d's layout included) go MLX -> canonical -> torch ->
    canonical -> MLX without changing a bit; the spec's band table travels along."""
    spec = tiny_spec("mamba2", band_widths=(5, 10, 20, 30))
    _, config, torch_model, mlx_again = round_trip_mlx_torch_mlx(mm.build_model(spec, seed=11), tmp_path)
    assert config["family"] == "bandsplit" and config["model"]["band_widths"] == [5, 10, 20, 30]
    assert torch_model.spec == spec
    mixture = batch(spec, size=1, seed=12)["mixture"]
    with torch.no_grad():
        out_b = torch_model(torch.from_numpy(mixture)).numpy()
    assert rel_err(np.array(mlx_again(mx.array(mixture))), out_b) <= 1e-5
