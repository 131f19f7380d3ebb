"""MLX vs PyTorch on EchoStream (Emformer encoder + ASR CTC, ST CTC, MT decoder, unit
decoder): same weights and batches in, same loss terms, gradients, training curves and
greedy decodes out.

A tiny spec (embed 16, 2 Emformer layers, vocabularies of 20/16 tokens and 12 units) on
three utterances of 0.4-0.9 s keeps every test to a few seconds on two CPU cores."""
import dataclasses

import mlx.core as mx
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mlx_models.echostream as mes
import mlx_models.models as mm
import torch_models.echostream as tes
import torch_models.models as tm
from mlx_models.trainer import Trainer as MLXTrainer
from shared.engine.config import TrainConfig
from shared.errors import SpecError
from shared.registry import spec_from_dict
from shared.specs.echostream import (BOS, EOS, PAD, EchoStreamSpec, echostream_init_weights,
                                     echostream_manifest, echostream_param_counts, encoder_length,
                                     unit_id)
from tests.helpers import assert_trees_match_manifest, rel_err, one_torch_thread  # noqa: F401  (an autouse fixture)
from torch_models.trainer import Trainer as TorchTrainer


def tiny_spec(**changes) -> EchoStreamSpec:
    values = dict(n_mels=16, src_vocab_size=20, tgt_vocab_size=16, n_units=12, embed_dim=16,
                  encoder_layers=2, encoder_heads=2, encoder_ffn_dim=32, subsample_channels=24,
                  subsample_kernel=3, segment_length=4, left_context=3, right_context=2,
                  max_memory_size=2, st_ctc_layers=1, mt_embed_dim=16, mt_layers=2, mt_heads=2,
                  mt_ffn_dim=32, unit_embed_dim=24, unit_layers=2, unit_heads=2, unit_ffn_dim=32,
                  unit_upsample=3, dropout=0.0, label_smoothing=0.1)
    return EchoStreamSpec(**{**values, **changes})


@pytest.fixture(scope="module")
def spec():
    return tiny_spec()


def make_batch(spec, seed=0, feature_lengths=(90, 61, 37)) -> dict[str, np.ndarray]:
    """A batch in the data contract's layout: zero-padded features, source/target tokens
    without BOS/EOS, [BOS] + target and target + [EOS] for the MT decoder, units + 1.
    Features carry a slow per-utterance pattern so the model has something to fit."""
    rng = np.random.default_rng(seed)
    B, T = len(feature_lengths), max(feature_lengths)
    lengths = np.array(feature_lengths, np.int32)
    features = np.zeros((B, T, spec.n_mels), np.float32)
    src_len = np.array([max(1, encoder_length(n, spec) // 3) for n in lengths], np.int32)
    tgt_len = np.array([max(1, n // 2) for n in src_len], np.int32)
    unit_len = np.array([2 * n + 1 for n in tgt_len], np.int32)

    def tokens(lens, vocab, first):
        out = np.zeros((B, int(lens.max())), np.int32)
        for b, n in enumerate(lens):
            out[b, :n] = rng.integers(first, vocab, n)
        return out
    src = tokens(src_len, spec.src_vocab_size, EOS + 1)
    tgt = tokens(tgt_len, spec.tgt_vocab_size, EOS + 1)
    units = unit_id(tokens(unit_len, spec.n_units, 0)) * (np.arange(unit_len.max()) < unit_len[:, None])
    prev = np.zeros((B, tgt.shape[1] + 1), np.int32)
    target = np.zeros_like(prev)
    for b in range(B):
        n = tgt_len[b]
        prev[b, 0], prev[b, 1:n + 1] = BOS, tgt[b, :n]
        target[b, :n], target[b, n] = tgt[b, :n], EOS
        t = np.arange(lengths[b])[:, None]
        features[b, :lengths[b]] = (np.sin(0.05 * (b + 1) * t + np.arange(spec.n_mels))
                                    + 0.3 * rng.standard_normal((lengths[b], spec.n_mels)))
    return {"features": features, "feature_lengths": lengths, "src_tokens": src, "src_lengths": src_len,
            "tgt_tokens": tgt, "tgt_lengths": tgt_len, "prev_output_tokens": prev, "target": target,
            "units": units.astype(np.int32), "unit_lengths": unit_len}


def to_mx(b):
    return {k: mx.array(v) for k, v in b.items()}


def to_torch(b):
    return {k: torch.from_numpy(v) for k, v in b.items()}


def test_parameter_trees_match_manifest(spec):
    assert_trees_match_manifest(mes.EchoStream(spec), tes.EchoStream(spec), echostream_manifest(spec))


def test_default_sizes_near_seed_000():
    """Seed 000's Mac M2 8 GB model: encoder ~2.5M, ASR CTC ~0.8M, ST CTC ~0.3M, MT decoder
    ~1.0M, unit decoder ~1.2M, total ~5.8M. The manifest's counts are checked against a
    real torch module part by part, then against the note within 15% per part, 5% total."""
    spec = EchoStreamSpec()
    counts = echostream_param_counts(spec)
    model = tes.EchoStream(spec)
    for part in ("encoder", "asr_ctc", "st_ctc", "mt_decoder", "unit_decoder"):
        assert counts[part] == sum(p.numel() for p in getattr(model, part).parameters()), part
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    seed = {"encoder": 2.5e6, "asr_ctc": 0.8e6, "st_ctc": 0.3e6, "mt_decoder": 1.0e6,
            "unit_decoder": 1.2e6}
    for part, expected in seed.items():
        assert abs(counts[part] / expected - 1) <= 0.15, (part, counts[part])
    assert abs(counts["total"] / 5.8e6 - 1) <= 0.05, counts["total"]


def test_spec_validation():
    assert spec_from_dict("echostream", {"embed_dim": 64, "encoder_heads": 4}).embed_dim == 64
    for bad, field in [({"embed_dim": 130, "encoder_heads": 4}, "model.embed_dim"),
                       ({"mt_embed_dim": 100, "mt_heads": 3}, "model.mt_embed_dim"),
                       ({"unit_embed_dim": 33, "unit_heads": 1}, "model.unit_embed_dim"),
                       ({"subsample_channels": 25}, "model.subsample_channels"),
                       ({"subsample_kernel": 1}, "model.subsample_kernel"),
                       ({"segment_length": 0}, "model.segment_length"),
                       ({"right_context": -1}, "model.right_context"),
                       ({"max_memory_size": 1.5}, "model.max_memory_size"),
                       ({"tgt_vocab_size": 4}, "model.tgt_vocab_size"),
                       ({"dropout": 1.0}, "model.dropout"),
                       ({"label_smoothing": -0.1}, "model.label_smoothing"),
                       ({"unit_weight": -1.0}, "model.unit_weight"),
                       ({"asr_ctc_weight": 0.0, "st_ctc_weight": 0.0, "mt_weight": 0.0,
                         "unit_weight": 0.0}, "must be > 0")]:
        with pytest.raises(SpecError, match=field):
            EchoStreamSpec(**bad)
    with pytest.raises(SpecError, match="segment"):
        spec_from_dict("echostream", {"segment": 4})


def test_loss_terms_match(spec, record):
    a, b = mm.build_model(spec, seed=1), tm.build_model(spec, seed=1)
    data = make_batch(spec, seed=2)
    terms_a = {k: v.item() for k, v in mes.loss_terms(a, to_mx(data)).items()}
    with torch.no_grad():
        terms_b = {k: v.item() for k, v in tes.loss_terms(b, to_torch(data)).items()}
        out = b(to_torch(data))
    assert set(terms_a) == set(terms_b) == {"loss", "asr_ctc", "st_ctc", "mt", "unit_ctc"}
    for name in terms_b:
        assert np.isfinite(terms_b[name]) and terms_b[name] > 0, (name, terms_b[name])
        assert record(f"echostream loss term {name}", rel_err(terms_a[name], terms_b[name])) <= 1e-5
    assert terms_b["loss"] == pytest.approx(sum(terms_b[k] for k in ("asr_ctc", "st_ctc", "mt", "unit_ctc")), rel=1e-6)
    # The written-out label smoothing is torch's own cross entropy.
    reference = F.cross_entropy(out["mt_logits"].flatten(0, 1), torch.from_numpy(data["target"]).long().flatten(),
                                ignore_index=PAD, label_smoothing=spec.label_smoothing).item()
    assert terms_b["mt"] == pytest.approx(reference, rel=1e-6)
    # Loss weights scale their terms.
    weighted = dataclasses.replace(spec, asr_ctc_weight=0.5, st_ctc_weight=0.0, mt_weight=2.0, unit_weight=0.25)
    total = mes.loss(mm.build_model(weighted, seed=1), to_mx(data)).item()
    expected = 0.5 * terms_b["asr_ctc"] + 2.0 * terms_b["mt"] + 0.25 * terms_b["unit_ctc"]
    assert total == pytest.approx(expected, rel=1e-5)


def test_every_gradient_through_trainers(spec, record):
    """Trainer.gradients_numpy on both backends, every parameter. Measured ~4e-6."""
    train = TrainConfig(learning_rate=1e-3, warmup_steps=0)
    weights = echostream_init_weights(spec, seed=3)
    data = make_batch(spec, seed=4)
    loss_a, grads_a = MLXTrainer(spec, train, weights).gradients_numpy([data])
    loss_b, grads_b = TorchTrainer(spec, train, weights, device="cpu").gradients_numpy([data])
    assert record("echostream loss (trainer)", rel_err(loss_a, loss_b)) <= 1e-5
    assert set(grads_a) == set(grads_b) == {p.name for p in echostream_manifest(spec)}
    for name in grads_b:
        assert np.abs(grads_b[name]).max() > 0, name   # every parameter is trained
        err = record("echostream gradient (every parameter)", rel_err(grads_a[name], grads_b[name]))
        assert err <= 5e-5, (name, err)


def test_activation_checkpointing_keeps_the_gradients(spec, record):
    """Emformer layers recomputed in the backward pass (train.gradient_checkpointing) give
    the gradients of the stored-activation run, on each backend, with dropout on (the
    recomputation must replay the same dropout masks)."""
    spec = dataclasses.replace(spec, dropout=0.1)
    weights = echostream_init_weights(spec, seed=5)
    data = make_batch(spec, seed=6)
    for make in (lambda t: MLXTrainer(spec, t, weights),
                 lambda t: TorchTrainer(spec, t, weights, device="cpu")):
        # Each trainer seeds the framework's RNG: build it right before its step, so both
        # steps draw the same dropout masks.
        plain = make(TrainConfig(seed=7))
        loss_a, grads_a = plain.gradients_numpy([data])
        ckpt = make(TrainConfig(seed=7, gradient_checkpointing=True))
        loss_b, grads_b = ckpt.gradients_numpy([data])
        assert ckpt.model.checkpoint_activations and not plain.model.checkpoint_activations
        assert abs(loss_a - loss_b) <= 1e-6 * abs(loss_a)
        for name in grads_a:
            err = record("echostream checkpointing vs stored (gradient)", rel_err(grads_b[name], grads_a[name]))
            assert err <= 1e-5, (name, err)


def test_fifteen_step_loss_curves(spec, record):
    """Both trainers, 15 AdamW steps on the same batches; the curves agree per step and
    fall. Dropout off: the backends draw different random masks."""
    train = TrainConfig(learning_rate=3e-3, warmup_steps=0, weight_decay=0.01, max_grad_norm=1.0)
    weights = echostream_init_weights(spec, seed=5)
    a, b = MLXTrainer(spec, train, weights), TorchTrainer(spec, train, weights, device="cpu")
    pool = [make_batch(spec, seed=10 + i, feature_lengths=(70, 45)) for i in range(3)]
    curve_a, curve_b = [], []
    for step in range(15):
        data = pool[step % len(pool)]
        curve_a.append(a.train_step([data], lr=3e-3)["loss"])
        curve_b.append(b.train_step([data], lr=3e-3)["loss"])
    assert np.mean(curve_b[-3:]) < 0.8 * np.mean(curve_b[:3]), curve_b
    for i in range(15):
        err = record("echostream 15-step loss curve (per step)", abs(curve_a[i] - curve_b[i]) / abs(curve_b[i]))
        assert err <= 1e-4, (i, curve_a[i], curve_b[i])
    # Evaluation through the trainers: every term, in eval mode, on both.
    terms_a, terms_b = a.eval_terms(pool[0]), b.eval_terms(pool[0])
    for name in terms_b:
        assert record("echostream eval terms after training", rel_err(terms_a[name], terms_b[name])) <= 1e-4


def test_decode_equal_on_both_backends(spec):
    """Greedy decoding through Trainer.decode: identical ids on both backends, in the
    contract's shapes, and consistent with a teacher-forced pass over its own output."""
    train = TrainConfig(warmup_steps=0)
    weights = echostream_init_weights(spec, seed=6)
    data = make_batch(spec, seed=7)
    a, b = MLXTrainer(spec, train, weights), TorchTrainer(spec, train, weights, device="cpu")
    out_a, out_b = a.decode(data, max_target_len=8), b.decode(data, max_target_len=8)
    assert set(out_a) == set(out_b) == {"encoder_lengths", "asr_ctc_argmax", "st_ctc_argmax",
                                        "mt_tokens", "unit_ctc_argmax", "unit_lengths"}
    for key in out_b:
        np.testing.assert_array_equal(out_a[key], out_b[key], err_msg=key)
    B = len(data["feature_lengths"])
    lengths = out_b["encoder_lengths"]
    assert lengths.tolist() == [encoder_length(n, spec) for n in data["feature_lengths"]]
    assert out_b["asr_ctc_argmax"].shape == (B, lengths.max())
    assert out_b["st_ctc_argmax"].shape == (B, lengths.max())
    tokens = out_b["mt_tokens"]
    assert tokens.shape[0] == B and 1 <= tokens.shape[1] <= 8
    n_states = []
    for row in tokens:
        eos = np.flatnonzero(row == EOS)
        n = eos[0] + 1 if len(eos) else len(row)
        assert (row[n:] == PAD).all() and (row[:n] != PAD).all()
        n_states.append(n)
    np.testing.assert_array_equal(out_b["unit_lengths"], spec.unit_upsample * np.array(n_states))
    assert out_b["unit_ctc_argmax"].shape == (B, spec.unit_upsample * tokens.shape[1])
    # Teacher forcing on [BOS] + the greedy tokens predicts those tokens again, and the
    # unit decoder on those states gives the same unit argmax (valid frames).
    model = b.model.eval()
    with torch.no_grad():
        feats = to_torch({k: data[k] for k in ("features", "feature_lengths")})
        enc, enc_len = model.encode(feats["features"], feats["feature_lengths"])
        inputs = torch.from_numpy(np.concatenate([np.full((B, 1), BOS, np.int32), tokens[:, :-1]], 1))
        logits, states = model.mt_decoder(inputs, enc, tes.padding_mask(enc_len, enc.shape[1], enc.dtype))
        logits[..., PAD] = -torch.inf
        units, unit_len = model.unit_decoder(states, torch.tensor(n_states))
    for i, n in enumerate(n_states):
        np.testing.assert_array_equal(logits[i, :n].argmax(-1).numpy(), tokens[i, :n])
        m = int(unit_len[i])
        np.testing.assert_array_equal(units[i, :m].argmax(-1).numpy(), out_b["unit_ctc_argmax"][i, :m])
