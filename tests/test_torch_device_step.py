"""The torch trainer's step as a GPU runs it: one read-back from the device per optimizer
step, the fused AdamW path, pinned host copies, and RoPE tables computed once.

What a CPU can check runs everywhere; the CUDA-only checks skip without a GPU."""
import dataclasses

import numpy as np
import pytest
import torch

import torch_models.lm as tlm
import torch_models.models as tm
from shared.engine.config import TrainConfig
from shared.specs.lm import LMSpec, lm_init_weights
from torch_models import rope
from torch_models.tflocoformer import RoPE as InterleavedRoPE
from torch_models.trainer import Trainer, make_optimizer

SPEC = LMSpec(vocab_size=128, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
              intermediate_size=96, max_seq_length=64)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def micro_batches(k=4, n=2, length=33):
    return [np.random.default_rng(i).integers(0, SPEC.vocab_size, (n, length)).astype(np.int32)
            for i in range(k)]


# ---------------------------------------------------------------------- host reads
READS = ["item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu"]


def count_device_reads(monkeypatch, trainer):
    """Wrap every Tensor method that copies a value to the host; return the list of the
    calls made on tensors other than the optimizer's host-side step counters (the CPU
    AdamW reads those every step; on CUDA they never live on the device)."""
    calls = []

    def wrap(name, original):
        def read(self, *args, **kwargs):
            counters = {id(s["step"]) for s in trainer.optimizer.state.values() if "step" in s}
            if id(self) not in counters:
                calls.append(name)
            return original(self, *args, **kwargs)
        return read

    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, wrap(name, getattr(torch.Tensor, name)))
    return calls


@pytest.mark.parametrize("max_grad_norm", [0.0, 1.0])
def test_one_read_back_per_step(monkeypatch, max_grad_norm):
    """Four micro-batches, one read from the device: the loss sum and the gradient norm
    together (it was one loss.item() per micro-batch plus one for the norm)."""
    t = Trainer(SPEC, TrainConfig(max_grad_norm=max_grad_norm), lm_init_weights(SPEC, 1), device="cpu")
    t.train_step(micro_batches(), 1e-3)  # the optimizer state exists from here on
    calls = count_device_reads(monkeypatch, t)
    result = t.train_step(micro_batches(), 1e-3)
    monkeypatch.undo()
    assert calls == ["tolist"], calls
    assert not result["skipped"]


def test_step_returns_what_per_micro_batch_reads_gave():
    """The loss summed on the device (float64) and read once is bit-identical to summing
    each micro-batch's loss.item() as Python floats; the norm to norm.item()."""
    weights, micro = lm_init_weights(SPEC, 2), micro_batches(k=3)
    train = TrainConfig(max_grad_norm=1.0)
    ours = Trainer(SPEC, train, weights, device="cpu").train_step(micro, 1e-3)
    ref = Trainer(SPEC, train, weights, device="cpu")
    ref.optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for b in micro:
        loss = ref._loss(b)
        (loss / len(micro)).backward()
        total += loss.item()
    norm = torch.nn.utils.clip_grad_norm_(ref.model.parameters(), 1.0).item()
    assert ours["loss"] == total / len(micro)
    assert ours["grad_norm"] == norm
    assert isinstance(ours["loss"], float) and isinstance(ours["grad_norm"], float)


def test_non_finite_loss_still_skips_with_one_read():
    t = Trainer(SPEC, TrainConfig(), lm_init_weights(SPEC, 3), device="cpu")
    bad = t.get_weights()
    bad["norm.weight"][:] = np.inf
    t.set_weights(bad)
    result = t.train_step(micro_batches(k=2), 1e-3)
    assert result["skipped"] and not np.isfinite(result["loss"])


# ---------------------------------------------------------------------- fused AdamW
def test_cpu_keeps_the_default_optimizer():
    t = Trainer(SPEC, TrainConfig(), lm_init_weights(SPEC, 4), device="cpu")
    assert not t.optimizer.defaults.get("fused")


def fused_trainer(weights):
    t = Trainer(SPEC, TrainConfig(eps=1e-4), weights, device="cpu")
    t.optimizer = make_optimizer(t.model, t.train_cfg, fused=True)
    return t


def test_fused_optimizer_state_round_trips_exactly():
    """The fused kernel (CUDA's; torch has it on the CPU too) keeps fp32 step counters
    beside the parameters: a state saved and loaded into a fresh trainer continues
    bit-identically to the trainer that never stopped."""
    weights, batches = lm_init_weights(SPEC, 5), [micro_batches(k=2)[::-1], micro_batches(k=2)]
    whole = fused_trainer(weights)
    whole.train_step(batches[0], 1e-3)
    resumed = fused_trainer(whole.get_weights())
    resumed.load_optimizer_state(whole.optimizer_state())
    counters = [s["step"] for s in resumed.optimizer.state.values()]
    assert all(c.dtype == torch.float32 and c.device.type == "cpu" for c in counters)
    # One counter per parameter: the fused kernel adds 1 to each, so a shared one would
    # count the step once per parameter.
    assert len({id(c) for c in counters}) == len(counters)
    a, b = whole.train_step(batches[1], 1e-3), resumed.train_step(batches[1], 1e-3)
    assert a == b
    for name, w in whole.get_weights().items():
        assert np.array_equal(resumed.get_weights()[name], w), name
    assert int(resumed.optimizer_state()["step"]) == 2


def test_fused_step_matches_the_default_step():
    weights, micro = lm_init_weights(SPEC, 6), micro_batches(k=2)
    fused, plain = fused_trainer(weights), Trainer(SPEC, TrainConfig(eps=1e-4), weights, device="cpu")
    fused.train_step(micro, 1e-3), plain.train_step(micro, 1e-3)
    for name, w in plain.get_weights().items():
        np.testing.assert_allclose(fused.get_weights()[name], w, rtol=1e-5, atol=1e-7, err_msg=name)


# ---------------------------------------------------------------------- host copies
def test_cpu_batches_are_plain_tensors():
    t = Trainer(SPEC, TrainConfig(), lm_init_weights(SPEC, 7), device="cpu")
    out = t._batch({"a": micro_batches(k=1)[0], "b": np.zeros((2, 3), np.float32)})
    assert all(v.device.type == "cpu" and not v.is_pinned() for v in out.values())
    np.testing.assert_array_equal(out["a"].numpy(), micro_batches(k=1)[0])


# ---------------------------------------------------------------------- RoPE tables
@pytest.fixture(autouse=True)
def empty_rope_cache():
    rope.clear_cache()
    yield
    rope.clear_cache()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("length,offset", [(24, 0), (1, 37), (13, 7)])
def test_rope_cache_is_the_fresh_computation_and_reused(dtype, length, offset):
    cos, sin = rope.cos_sin(16, 10000.0, length, offset, dtype, torch.device("cpu"))
    fresh_cos, fresh_sin = rope.compute_cos_sin(16, 10000.0, length, offset, dtype, torch.device("cpu"))
    assert cos.dtype == dtype and cos.shape == (length, 8)
    assert torch.equal(cos, fresh_cos) and torch.equal(sin, fresh_sin)
    again = rope.cos_sin(16, 10000.0, length, offset, dtype, torch.device("cpu"))
    assert again[0] is cos and again[1] is sin
    other = rope.cos_sin(16, 10000.0, length, offset + 1, dtype, torch.device("cpu"))
    assert other[0] is not cos


def test_rope_cache_keys_every_setting():
    device = torch.device("cpu")
    base = rope.cos_sin(16, 10000.0, 8, 0, torch.float32, device)
    for args in [(32, 10000.0, 8, 0, torch.float32), (16, 500.0, 8, 0, torch.float32),
                 (16, 10000.0, 9, 0, torch.float32), (16, 10000.0, 8, 0, torch.float64)]:
        assert rope.cos_sin(*args, device)[0] is not base[0], args


def test_rope_cache_stays_small_while_decoding():
    for offset in range(3 * rope.MAX_ENTRIES):
        rope.cos_sin(16, 10000.0, 1, offset, torch.float32, torch.device("cpu"))
    assert len(rope._cache) == rope.MAX_ENTRIES


def test_rope_cache_under_inference_mode_does_not_break_training():
    """A table made under inference_mode cannot be saved for backward; it gets its own key."""
    layer = InterleavedRoPE(16, 10000.0)
    with torch.inference_mode():
        layer(torch.randn(2, 4, 10, 16))
    x = torch.randn(2, 4, 10, 16, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None


def uncached(monkeypatch):
    monkeypatch.setattr(rope, "cos_sin", rope.compute_cos_sin)


@pytest.mark.parametrize("tied", [False, True])
def test_lm_forward_and_gradients_equal_the_uncached_ones(monkeypatch, tied):
    spec = dataclasses.replace(SPEC, tie_embeddings=tied)
    x = torch.from_numpy(micro_batches(k=1, length=25)[0]).long()
    runs = []
    for cached in (True, False):
        if not cached:
            uncached(monkeypatch)
        model = tm.build_model(spec, seed=8)
        loss = tlm.loss(model, x)
        loss.backward()
        runs.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert len(rope._cache) == 1   # one table for both layers, q and k
    assert torch.equal(runs[0][0], runs[1][0])
    for name, g in runs[1][1].items():
        assert torch.equal(runs[0][1][name], g), name


def test_lm_kv_cache_decoding_equals_the_uncached_one(monkeypatch):
    x = torch.from_numpy(micro_batches(k=1, length=20)[0]).long()

    def decode():
        model = tm.build_model(SPEC, seed=9)
        with torch.no_grad():
            cache = model.make_cache()
            pieces = [model(x[:, :7], cache)]
            pieces += [model(x[:, t:t + 1], cache) for t in range(7, 12)]
            pieces.append(model(x[:, 12:], cache))
        return torch.cat(pieces, dim=1)

    cached = decode()
    assert len(rope._cache) == 7   # the prefill, five single tokens, the last block
    uncached(monkeypatch)
    assert torch.equal(cached, decode())


def test_interleaved_rope_equals_the_uncached_one(monkeypatch):
    layer, x = InterleavedRoPE(16, 10000.0), torch.randn(3, 4, 21, 16)
    out = layer(x)
    assert layer(x) is not out and torch.equal(layer(x), out)
    uncached(monkeypatch)
    assert torch.equal(layer(x), out)


def test_rope_tables_stay_out_of_the_state_dict():
    model = tm.build_model(SPEC, seed=10)
    model(torch.zeros(1, 5, dtype=torch.long))
    assert set(model.state_dict()) == {n for n, _ in model.named_parameters()}


# ---------------------------------------------------------------------- CUDA only
@cuda
def test_cuda_uses_fused_adamw_pinned_copies_and_one_sync():
    t = Trainer(SPEC, TrainConfig(), lm_init_weights(SPEC, 11), device="cuda")
    assert t.optimizer.defaults.get("fused")
    micro = micro_batches()
    t.train_step(micro, 1e-3)
    assert all(s["step"].device.type == "cuda" for s in t.optimizer.state.values())
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with pytest.warns(UserWarning) as record:
            t.train_step(micro, 1e-3)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = [str(w.message) for w in record if "synchroniz" in str(w.message)]
    assert len(syncs) <= 1, syncs


@cuda
def test_cuda_resume_keeps_fused_step_counters_on_the_device():
    weights = lm_init_weights(SPEC, 12)
    a = Trainer(SPEC, TrainConfig(), weights, device="cuda")
    a.train_step(micro_batches(), 1e-3)
    b = Trainer(SPEC, TrainConfig(), a.get_weights(), device="cuda")
    b.load_optimizer_state(a.optimizer_state())
    assert all(s["step"].device.type == "cuda" and s["step"].dtype == torch.float32
               for s in b.optimizer.state.values())
    assert a.train_step(micro_batches(), 1e-3) == b.train_step(micro_batches(), 1e-3)
