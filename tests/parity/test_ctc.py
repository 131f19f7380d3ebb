"""MLX CTC loss (mlx_models/ctc.py) against torch.nn.functional.ctc_loss: losses and
gradients with respect to the logits (log_softmax inside), for varied lengths, repeated
labels, the longest target a length allows, impossible alignments, every reduction.

Gradients are held to torch run in float64: torch's own float32 CTC gradient is off by up
to ~4e-4 of the largest entry at T=200 (it adds alpha and beta in log space, where a
log-likelihood of -1000 leaves float32 1e-4 of resolution), while the MLX recursions are
rescaled every step and stay within ~2e-6. The float32-vs-float32 error is recorded too.

Every test runs both of mlx_models/ctc.py's algorithms: the CPU's (float64 probabilities,
hand-written gradient) and the GPU's (float32 log domain, autodiff), forced here on the CPU."""
import mlx.core as mx
import numpy as np
import pytest
import torch

from mlx_models import ctc
from mlx_models.ctc import ctc_loss as mlx_ctc
from torch_models.ctc import ctc_loss as torch_ctc
from tests.helpers import rel_err


@pytest.fixture(params=["probability", "log"], autouse=True)
def algorithm(request, monkeypatch):
    if request.param == "log":
        monkeypatch.setattr(ctc, "_probability_domain", lambda: False)
    return request.param


def mlx_loss_and_grad(logits, targets, input_lengths, target_lengths, **kw):
    """Loss, and the gradient of the sum of its finite entries w.r.t. the logits."""
    def objective(x):
        loss = mlx_ctc(x - mx.logsumexp(x, axis=-1, keepdims=True), mx.array(targets),
                       mx.array(input_lengths), mx.array(target_lengths), **kw)
        return mx.where(mx.isinf(loss), 0.0, loss).sum(), loss
    (_, loss), grad = mx.value_and_grad(objective)(mx.array(logits))
    return np.array(loss), np.array(grad)


def torch_loss_and_grad(logits, targets, input_lengths, target_lengths, dtype, **kw):
    x = torch.tensor(logits, dtype=dtype, requires_grad=True)
    loss = torch_ctc(x.log_softmax(-1), torch.from_numpy(targets), input_lengths,
                     target_lengths, **kw)
    torch.where(torch.isinf(loss), 0.0, loss).sum().backward()
    return loss.detach().numpy(), x.grad.numpy()


def case(B, T, V, S, input_lengths, target_lengths, seed=0, labels=None, blank=0):
    """Random logits and targets (labels avoid `blank`); padding past each target
    length is random labels, which both sides must ignore."""
    rng = np.random.default_rng(seed)
    logits = (2 * rng.standard_normal((B, T, V))).astype(np.float32)
    if labels is None:
        labels = rng.integers(0, V - 1, (B, S))
        labels = labels + (labels >= blank)  # skip the blank index
    return (logits, np.asarray(labels, np.int64), np.asarray(input_lengths, np.int64),
            np.asarray(target_lengths, np.int64))


def compare(inputs, record, feasible=slice(None), torch_fp32_gradient_error=1e-3, **kw):
    """Loss vs torch fp32 (values; inf where torch says inf) and gradients vs torch fp64
    and fp32 on the samples whose gradient is defined. Returns the MLX loss."""
    loss, grad = mlx_loss_and_grad(*inputs, **kw)
    loss32, grad32 = torch_loss_and_grad(*inputs, torch.float32, **kw)
    loss64, grad64 = torch_loss_and_grad(*inputs, torch.float64, **kw)
    assert loss.dtype == np.float32 and loss.shape == loss32.shape
    np.testing.assert_array_equal(np.isinf(loss), np.isinf(loss32))
    finite = np.isfinite(loss32)
    if finite.any():
        assert record("ctc loss vs torch (fp32)", rel_err(loss[finite], loss32[finite])) <= 1e-5
        assert record("ctc loss vs torch (fp64)", rel_err(loss[finite], loss64[finite])) <= 1e-5
    assert np.isfinite(grad).all()
    if np.abs(grad64[feasible]).max() > 0:
        g, g64, g32 = grad[feasible], grad64[feasible], grad32[feasible]
        assert record("ctc gradient vs torch (fp64)", rel_err(g, g64)) <= 1e-4
        # torch's own fp32 gradient is ~4e-4 off at T=200 (module docstring)
        assert record("ctc gradient vs torch (fp32)", rel_err(g, g32)) <= torch_fp32_gradient_error
    return loss


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("blank", [0, 12])
def test_random_batch_varied_lengths(reduction, blank, record):
    # an empty target (length 0) and a one-frame-per-label fit are in the batch too
    inputs = case(B=5, T=40, V=13, S=10, input_lengths=[40, 33, 21, 12, 3],
                  target_lengths=[10, 7, 3, 0, 3], seed=blank, blank=blank)
    inputs[1][4] = [5, 6, 7] + [1] * 7  # distinct labels, so 3 frames are enough
    compare(inputs, record, blank=blank, reduction=reduction)


def test_repeated_labels_need_a_blank_between(record):
    """Runs of equal labels: each pair needs a blank between, so [2,2,2,4,4,1] needs
    6 + 3 = 9 frames. Given exactly that many there is a single alignment."""
    labels = [[2, 2, 2, 4, 4, 1], [5, 5, 5, 5, 0, 0], [3, 1, 3, 1, 3, 1]]
    inputs = case(B=3, T=16, V=7, S=6, input_lengths=[9, 16, 16], target_lengths=[6, 4, 6],
                  labels=labels, seed=1)
    loss = compare(inputs, record, reduction="none")
    # the single path through a tight fit: the sum of its log-probabilities
    logits = inputs[0][0, :9].astype(np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    path = [2, 0, 2, 0, 2, 4, 0, 4, 1]
    assert loss[0] == pytest.approx(-log_probs[np.arange(9), path].sum(), rel=1e-5)


def test_longest_target_the_input_allows(record):
    """T = S with all neighbours distinct, and T = S + repeats: the longest targets a
    length allows, each with exactly one alignment."""
    distinct = np.arange(12) % 5 + 1
    repeated = [1, 1, 2, 2, 3, 3, 4, 4, 0, 0, 0, 0]  # 8 labels + 4 mandatory blanks = 12
    inputs = case(B=2, T=12, V=6, S=12, input_lengths=[12, 12], target_lengths=[12, 8],
                  labels=[distinct, repeated], seed=2)
    loss = compare(inputs, record, reduction="none")
    assert np.isfinite(loss).all()


@pytest.mark.parametrize("zero_infinity", [False, True])
def test_impossible_alignment(zero_infinity, record):
    """Sample 0: 8 labels in 5 frames; sample 1: five equal labels need 9 frames, it has
    8; sample 2 is feasible. inf (or 0 with zero_infinity) and finite gradients."""
    labels = [[1, 2, 3, 4, 5, 6, 1, 2], [3, 3, 3, 3, 3, 0, 0, 0], [1, 2, 1, 2, 0, 0, 0, 0]]
    inputs = case(B=3, T=20, V=8, S=8, input_lengths=[5, 8, 20], target_lengths=[8, 5, 4],
                  labels=labels, seed=3)
    # torch's gradient of an inf loss is NaN: compare gradients on the feasible sample only
    # unless zero_infinity zeroes them on both sides.
    feasible = slice(None) if zero_infinity else slice(2, 3)
    loss = compare(inputs, record, feasible=feasible, zero_infinity=zero_infinity, reduction="none")
    assert (loss[:2] == 0).all() if zero_infinity else np.isinf(loss[:2]).all()
    mean = mlx_loss_and_grad(*inputs, zero_infinity=zero_infinity)[0]
    assert np.isfinite(mean) == zero_infinity
    _, grad = mlx_loss_and_grad(*inputs, zero_infinity=zero_infinity, reduction="mean")
    assert np.isfinite(grad).all() and (grad[:2] == 0).all()


def test_realistic_size_and_compiled(record):
    """B=8, T=200, V=500, S=50 (a batch of 2 s utterances after 4x subsampling), and the
    same loss inside mx.compile, as a compiled training step would run it."""
    rng = np.random.default_rng(4)
    inputs = case(B=8, T=200, V=500, S=50, input_lengths=rng.integers(150, 201, 8),
                  target_lengths=rng.integers(20, 51, 8), seed=4)
    inputs[2][0], inputs[3][0] = 200, 50
    compare(inputs, record)
    logits, targets, input_lengths, target_lengths = (mx.array(a) for a in inputs)

    def loss_fn(x):
        return mlx_ctc(x - mx.logsumexp(x, axis=-1, keepdims=True), targets, input_lengths,
                       target_lengths)
    eager = mx.value_and_grad(loss_fn)(logits)
    compiled = mx.compile(mx.value_and_grad(loss_fn))(logits)
    assert record("ctc compiled vs eager (mlx)", rel_err(compiled[1], eager[1])) <= 1e-6
    assert compiled[0].item() == pytest.approx(eager[0].item(), rel=1e-6)


def test_long_input_short_target(record):
    """1000 frames for 40 labels: early on, the alignments that reach the end too soon
    outweigh the rest by far more than float32's range (1e-38), the case that keeps the
    CPU's probability-domain recursion in float64."""
    rng = np.random.default_rng(6)
    inputs = case(B=2, T=1000, V=40, S=40, input_lengths=[1000, 700], target_lengths=[40, 25], seed=6)
    inputs[0][:] = (0.1 * rng.standard_normal(inputs[0].shape)).astype(np.float32)  # near uniform
    # torch's own fp32 gradient drifts further at T=1000: 1.3e-3 from its fp64
    compare(inputs, record, reduction="none", torch_fp32_gradient_error=3e-3)


@pytest.mark.parametrize("zero_infinity", [False, True])
def test_a_label_with_no_probability(algorithm, zero_infinity, record):
    """Sample 0's second label has log-probability -inf on every frame (a masked
    vocabulary entry): torch's loss is inf (0 with zero_infinity), as is the CPU
    algorithm's. The GPU's log domain floors -inf at -1e30 (module NEG) and reports a loss
    of ~1e30 instead: finite, and as unusable."""
    inputs = case(B=2, T=12, V=6, S=3, input_lengths=[12, 12], target_lengths=[3, 3],
                  labels=[[1, 4, 2], [1, 2, 3]], seed=7)
    logits = inputs[0]
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    log_probs[0, :, 4] = -np.inf
    targets, input_lengths, target_lengths = inputs[1:]
    loss = np.array(mlx_ctc(mx.array(log_probs), mx.array(targets), mx.array(input_lengths),
                            mx.array(target_lengths), reduction="none", zero_infinity=zero_infinity))
    reference = torch_ctc(torch.from_numpy(log_probs), torch.from_numpy(targets), input_lengths,
                          target_lengths, reduction="none", zero_infinity=zero_infinity).numpy()
    assert loss[1] == pytest.approx(reference[1], rel=1e-5)
    if algorithm == "probability":
        np.testing.assert_array_equal(loss[0], reference[0])
    else:
        assert loss[0] > 1e29


def test_bad_arguments():
    log_probs = mx.zeros((2, 5, 4))
    with pytest.raises(ValueError, match="reduction"):
        mlx_ctc(log_probs, mx.zeros((2, 3), mx.int32), [5, 5], [3, 3], reduction="avg")
    with pytest.raises(ValueError, match="blank"):
        mlx_ctc(log_probs, mx.zeros((2, 3), mx.int32), [5, 5], [3, 3], blank=4)
    with pytest.raises(ValueError, match="targets"):
        mlx_ctc(log_probs, mx.zeros((3,), mx.int32), [5, 5], [3, 3])


def test_several_ctc_losses_in_one_recursion_equal_one_each():
    """ctc_losses stacks terms of other vocabularies, lengths and batch sizes into one
    recursion: each term's loss and gradients equal its own ctc_loss, and torch's."""
    import mlx.nn as mnn

    from mlx_models.ctc import ctc_losses

    rng = np.random.default_rng(5)
    shapes = [(3, 20, 7, 5), (2, 33, 11, 9), (4, 12, 5, 6)]   # B, T, V, S (the last: some impossible)
    logits, rest = [], []
    for B, T, V, S in shapes:
        logits.append(rng.standard_normal((B, T, V)).astype(np.float32))
        rest.append((rng.integers(1, V, (B, S)).astype(np.int32), rng.integers(S // 2, T + 1, B).astype(np.int32),
                     rng.integers(1, S + 1, B).astype(np.int32)))

    def stacked(*xs):
        losses = ctc_losses([(mnn.log_softmax(x, axis=-1), mx.array(t), mx.array(i), mx.array(n))
                             for x, (t, i, n) in zip(xs, rest)], zero_infinity=True)
        return sum(w * loss for w, loss in zip((1.0, 2.0, 3.0), losses)), losses

    def separate(*xs):
        losses = [mlx_ctc(mnn.log_softmax(x, axis=-1), mx.array(t), mx.array(i), mx.array(n), zero_infinity=True)
                  for x, (t, i, n) in zip(xs, rest)]
        return sum(w * loss for w, loss in zip((1.0, 2.0, 3.0), losses)), losses

    args = [mx.array(x) for x in logits]
    (total_a, terms_a), grads_a = mx.value_and_grad(stacked, argnums=(0, 1, 2))(*args)
    (total_b, terms_b), grads_b = mx.value_and_grad(separate, argnums=(0, 1, 2))(*args)
    for a, b, x, (t, i, n) in zip(terms_a, terms_b, logits, rest):
        reference = torch.nn.functional.ctc_loss(torch.log_softmax(torch.from_numpy(x), -1).transpose(0, 1),
                                                 torch.from_numpy(t).long(), torch.from_numpy(i).long(),
                                                 torch.from_numpy(n).long(), zero_infinity=True).item()
        assert a.item() == pytest.approx(b.item(), rel=1e-5) == pytest.approx(reference, rel=1e-4)
    for ga, gb in zip(grads_a, grads_b):
        np.testing.assert_allclose(np.array(ga), np.array(gb), atol=1e-5, rtol=1e-4)
