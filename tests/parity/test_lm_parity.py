"""MLX vs PyTorch on the LM: same weights and batches in, same numbers out."""
import dataclasses

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten

import mlx_models.lm as mlm
import mlx_models.models as mm
import torch_models.lm as tlm
import torch_models.models as tm
from mlx_models.trainer import Trainer as MLXTrainer
from shared.engine.config import TrainConfig
from shared.specs.lm import lm_init_weights, lm_manifest
from tests.helpers import rel_err
from torch_models.trainer import Trainer as TorchTrainer


def tokens(spec, batch=2, length=24, seed=0):
    return np.random.default_rng(seed).integers(0, spec.vocab_size, (batch, length)).astype(np.int32)


@pytest.fixture(params=[False, True], ids=["untied", "tied"])
def spec(request, tiny_lm_spec):
    return dataclasses.replace(tiny_lm_spec, tie_embeddings=request.param)


def test_parameter_trees_match_manifest(spec):
    manifest = {p.name: p.shape for p in lm_manifest(spec)}
    mlx_tree = {k: tuple(v.shape) for k, v in tree_flatten(mlm.LanguageModel(spec).parameters())}
    torch_tree = {k: tuple(v.shape) for k, v in tlm.LanguageModel(spec).named_parameters()}
    assert mlx_tree == manifest
    assert torch_tree == manifest


def test_forward_logits(spec, record):
    a, b = mm.build_model(spec, seed=1), tm.build_model(spec, seed=1)
    x = tokens(spec)
    err = record("forward logits", rel_err(np.array(a(mx.array(x))), b(torch.from_numpy(x)).detach().numpy()))
    assert err <= 1e-5, err


def test_loss_and_every_gradient(spec, record):
    a, b = mm.build_model(spec, seed=2), tm.build_model(spec, seed=2)
    batch = tokens(spec, length=25, seed=3)
    loss_a, grads_a = nn.value_and_grad(a, mlm.loss)(a, mx.array(batch))
    loss_b = tlm.loss(b, torch.from_numpy(batch).long())
    loss_b.backward()
    assert record("loss", rel_err(loss_a.item(), loss_b.item())) <= 1e-4
    grads_a = dict(tree_flatten(grads_a))
    for name, p in b.named_parameters():
        err = record("gradient (every parameter)", rel_err(np.array(grads_a[name]), p.grad.numpy()))
        assert err <= 1e-4, (name, err)


def test_one_adamw_step_same_gradients(spec, record):
    """The optimizers alone: identical gradients in, identical weights out (seed eps 1e-8)."""
    from mlx.utils import tree_unflatten
    train = TrainConfig(learning_rate=1e-3, weight_decay=0.1, eps=1e-8)
    weights = lm_init_weights(spec, seed=4)
    a, b = MLXTrainer(spec, train, weights), TorchTrainer(spec, train, weights, device="cpu")
    rng = np.random.default_rng(5)
    grads = {p.name: (rng.standard_normal(p.shape) * 1e-3).astype(np.float32)
             for p in lm_manifest(spec)}
    a.optimizer.learning_rate = 1e-3
    a.optimizer.update(a.model, tree_unflatten([(k, mx.array(v)) for k, v in grads.items()]))
    for name, p in b.model.named_parameters():
        p.grad = torch.from_numpy(grads[name])
    b.optimizer.step()
    wa, wb = a.get_weights(), b.get_weights()
    for name in wb:
        assert np.abs(wb[name] - weights[name]).max() > 0, f"{name} did not move"
        err = record("one AdamW step (same gradients)", rel_err(wa[name], wb[name]))
        assert err <= 1e-5, (name, err)
    # Decay applies to matrices only, on both sides: a norm scale moves by the Adam step alone.
    norm = "norm.weight"
    expected = weights[norm] - 1e-3 * np.sign(grads[norm])
    assert rel_err(wb[norm], expected) <= 1e-5


def test_one_training_step_end_to_end(spec, record):
    """Forward, backward, clipping and update through both trainers.

    eps is 1e-4 here: Adam's first step is lr * g / (|g| + eps), whose slope near g = 0 is
    up to lr / eps, so fp32 gradient roundoff delta (~1e-8 here, 3e-6 of the gradient
    scale) becomes an update error of up to lr * delta / eps: 1e-3 at eps 1e-8, far above
    the 1e-5 bound, for any element whose gradient happens to be ~eps. That measures
    conditioning, not the implementation. The optimizer itself is checked at eps 1e-8
    above with identical gradients."""
    train = TrainConfig(learning_rate=1e-3, weight_decay=0.1, max_grad_norm=1.0, eps=1e-4)
    weights = lm_init_weights(spec, seed=4)
    a, b = MLXTrainer(spec, train, weights), TorchTrainer(spec, train, weights, device="cpu")
    batch = tokens(spec, length=25, seed=5)
    ra, rb = a.train_step([batch], lr=1e-3), b.train_step([batch], lr=1e-3)
    assert rel_err(ra["loss"], rb["loss"]) <= 1e-5
    assert rel_err(ra["grad_norm"], rb["grad_norm"]) <= 1e-4
    wa, wb = a.get_weights(), b.get_weights()
    for name in wb:
        err = record("one training step end to end", rel_err(wa[name], wb[name]))
        assert err <= 1e-5, (name, err)


def test_twenty_step_loss_curves(spec, record):
    train = TrainConfig(learning_rate=3e-3, warmup_steps=0, weight_decay=0.1, max_grad_norm=1.0)
    weights = lm_init_weights(spec, seed=6)
    a, b = MLXTrainer(spec, train, weights), TorchTrainer(spec, train, weights, device="cpu")
    rng = np.random.default_rng(7)
    # A learnable stream (repeating pattern) so the loss really moves over 20 steps.
    pattern = rng.integers(0, spec.vocab_size, 11)
    curve_a, curve_b = [], []
    for step in range(20):
        starts = rng.integers(0, 11, 4)
        batch = np.stack([np.resize(np.roll(pattern, -s), 25) for s in starts]).astype(np.int32)
        curve_a.append(a.train_step([batch], lr=3e-3)["loss"])
        curve_b.append(b.train_step([batch], lr=3e-3)["loss"])
    assert curve_b[-1] < 0.5 * curve_b[0], "the test batches should be learnable"
    for i in range(20):
        err = record("20-step loss curve (per step)", abs(curve_a[i] - curve_b[i]) / abs(curve_b[i]))
        assert err <= 1e-4, (i, curve_a[i], curve_b[i])


def test_kv_cache_matches_full_forward_mlx(spec, record):
    model = mm.build_model(spec, seed=8)
    x = tokens(spec, batch=2, length=20, seed=9)
    full = np.array(model(mx.array(x)))
    cache = model.make_cache()
    # A prefill block, then single tokens, then another multi-token block after the
    # cached prefix (the case where causal-mask alignment matters).
    pieces = [np.array(model(mx.array(x[:, :7]), cache))]
    pieces += [np.array(model(mx.array(x[:, t:t + 1]), cache)) for t in range(7, 12)]
    pieces.append(np.array(model(mx.array(x[:, 12:]), cache)))
    assert record("KV cache vs full forward (mlx)", rel_err(np.concatenate(pieces, axis=1), full)) <= 1e-5


def test_kv_cache_matches_full_forward_torch(spec, record):
    model = tm.build_model(spec, seed=8)
    x = torch.from_numpy(tokens(spec, batch=2, length=20, seed=9)).long()
    with torch.no_grad():
        full = model(x).numpy()
        cache = model.make_cache()
        pieces = [model(x[:, :7], cache).numpy()]
        pieces += [model(x[:, t:t + 1], cache).numpy() for t in range(7, 12)]
        pieces.append(model(x[:, 12:], cache).numpy())
    assert record("KV cache vs full forward (torch)", rel_err(np.concatenate(pieces, axis=1), full)) <= 1e-5


def test_kv_cache_grows_past_one_block(tiny_lm_spec):
    spec = dataclasses.replace(tiny_lm_spec, max_seq_length=600)
    a, b = mm.build_model(spec, seed=10), tm.build_model(spec, seed=10)
    x = tokens(spec, batch=1, length=300, seed=11)
    cache_a, cache_b = a.make_cache(), b.make_cache()
    a(mx.array(x[:, :250]), cache_a)
    with torch.no_grad():
        b(torch.from_numpy(x[:, :250]).long(), cache_b)
        last_b = b(torch.from_numpy(x[:, 250:]).long(), cache_b).numpy()
        full_b = b(torch.from_numpy(x).long()).numpy()
    last_a = np.array(a(mx.array(x[:, 250:]), cache_a))
    assert cache_a[0].offset == cache_b[0].offset == 300
    assert rel_err(last_b, full_b[:, 250:]) <= 1e-5
    assert rel_err(last_a, last_b) <= 1e-5
