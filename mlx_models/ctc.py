"""CTC loss in MLX, matching torch.nn.functional.ctc_loss (values and gradients).

Mirrors torch_models/ctc.py (same name and signature; torch has no CTC kernel on MPS,
pytorch/pytorch#153976, so on a Mac this is the CTC that trains). Conventions, all
torch's except the layout: log_probs (B, T, V) batch-first and already log-softmaxed,
targets (B, S) padded with anything, per-sample input and target lengths, `blank`
default 0, reduction "mean" (each loss divided by its target length, then the batch
mean), "sum" or "none", `zero_infinity`.

The forward (alpha) recursion of Graves et al. 2006 in log space, over the extended label
sequence  blank y1 blank y2 ... yS blank  (L = 2S + 1 states), written with ordinary MLX
ops so autodiff produces the backward pass: the emissions of all T frames are gathered
once, (B, T, L), and each of the T steps is a few element-wise ops on (B, L), compiled
with mx.compile eight frames at a time. Computed in float32 whatever the input dtype: the recursion sums
hundreds of log-probabilities.
"""
from __future__ import annotations

import mlx.core as mx

# log(0) as a finite number. With a true -inf, logsumexp over three unreachable states is
# -inf - -inf = NaN in the backward pass, and that NaN leaks into every gradient. A finite
# floor keeps unreachable paths at weight exp(-1e30) = 0 and gradients exact; impossible
# alignments are then recognised by counting (`_impossible`), not by an overflowing sum.
NEG = -1e30

REDUCTIONS = ("mean", "sum", "none")


def _extended_labels(targets: mx.array, target_lengths: mx.array, blank: int):
    """(B, S) targets -> (B, 2S + 1) extended labels and the mask of states that may be
    entered by skipping the blank before them: a label that differs from the label two
    states back (between two equal labels the blank is mandatory)."""
    B, S = targets.shape
    labels = mx.where(mx.arange(S)[None, :] < target_lengths[:, None], targets, blank)
    blanks = mx.full((B, S), blank, dtype=labels.dtype)
    ext = mx.concatenate([mx.stack([blanks, labels], axis=-1).reshape(B, 2 * S),
                          mx.full((B, 1), blank, dtype=labels.dtype)], axis=1)
    two_back = mx.pad(ext, [(0, 0), (2, 0)], constant_values=blank)[:, :2 * S + 1]
    return ext, (ext != blank) & (ext != two_back)


def _shift(alpha: mx.array, k: int) -> mx.array:
    """alpha[:, s - k], NEG where s - k < 0 (pad then cut, so L < k works too)."""
    return mx.pad(alpha, [(0, 0), (k, 0)], constant_values=NEG)[:, :alpha.shape[1]]


def _step(alpha: mx.array, log_scale: mx.array, emit: mx.array, can_skip: mx.array,
          active: mx.array) -> tuple[mx.array, mx.array]:
    """One frame: a state is reached by staying, moving one state on, or skipping a
    blank; samples whose input has ended (active False) keep their alpha.

    alpha is kept relative to its best state, the offset summed in log_scale: a long
    utterance's log-likelihood reaches -1000s, where float32's spacing is 1e-4, and the
    gradients (posteriors exp(alpha + beta - total)) would inherit that error. The offset
    is a constant to autodiff (stop_gradient), which is exact: log_scale + lse(alpha - c)
    is the same function for any constant c."""
    stay, move, jump = alpha, _shift(alpha, 1), mx.where(can_skip, _shift(alpha, 2), NEG)
    # logsumexp of the three written element-wise, so mx.compile fuses it (a stack and a
    # reduction cost several kernels per frame, and MLX's CPU cost is per kernel). The
    # max is a constant to autodiff: the function does not depend on it.
    top = mx.stop_gradient(mx.maximum(mx.maximum(stay, move), jump))
    new = top + mx.log(mx.exp(stay - top) + mx.exp(move - top) + mx.exp(jump - top)) + emit
    offset = mx.stop_gradient(new.max(axis=1, keepdims=True))
    return (mx.where(active, new - offset, alpha),
            mx.where(active, log_scale + offset, log_scale))


FRAMES_PER_CALL = 8


@mx.compile
def _steps(alpha: mx.array, log_scale: mx.array, emit: mx.array, can_skip: mx.array,
           active: mx.array) -> tuple[mx.array, mx.array]:
    """_step over the frames of emit (B, K, L) / active (B, K), unrolled into one compiled
    function: per call and per kernel overheads, not arithmetic, dominate a frame."""
    for k in range(emit.shape[1]):
        alpha, log_scale = _step(alpha, log_scale, emit[:, k], can_skip, active[:, k:k + 1])
    return alpha, log_scale


def _impossible(targets, input_lengths, target_lengths) -> mx.array:
    """A target needs one frame per label plus one blank between each pair of equal
    neighbours; with fewer frames no alignment exists and the loss is +inf."""
    S = targets.shape[1]
    if S < 2:
        return input_lengths < target_lengths
    inside = mx.arange(1, S)[None, :] < target_lengths[:, None]
    repeats = ((targets[:, 1:] == targets[:, :-1]) & inside).sum(axis=1)
    return input_lengths < target_lengths + repeats


def _prepare(log_probs, targets, input_lengths, target_lengths, blank: int):
    """Checked inputs -> (emissions (B, T, L), can_skip (B, L), active (B, T), target
    lengths, impossible (B,)): everything the recursion and the end need."""
    if log_probs.ndim != 3 or targets.ndim != 2 or targets.shape[0] != log_probs.shape[0]:
        raise ValueError(f"expected log_probs (B, T, V) and targets (B, S), got "
                         f"{tuple(log_probs.shape)} and {tuple(targets.shape)}")
    B, T, V = log_probs.shape
    if not 0 <= blank < V:
        raise ValueError(f"blank must be a class index in 0..{V - 1}, got {blank}")
    targets = targets.astype(mx.int32)
    input_lengths = mx.array(input_lengths).astype(mx.int32)
    target_lengths = mx.array(target_lengths).astype(mx.int32)

    ext, can_skip = _extended_labels(targets, target_lengths, blank)
    L = ext.shape[1]
    # Every frame's emission for every state, in one gather: (B, T, L). Clamped so that
    # a -inf log-probability (a masked vocabulary entry) stays finite, see NEG.
    emissions = mx.take_along_axis(log_probs.astype(mx.float32),
                                   mx.broadcast_to(ext[:, None, :], (B, T, L)), axis=2)
    emissions = mx.maximum(emissions, NEG)
    active = mx.arange(T)[None, :] < input_lengths[:, None]           # (B, T)
    return emissions, can_skip, active, target_lengths, _impossible(targets, input_lengths, target_lengths)


def _recursion(emissions, can_skip, active):
    """The alpha recursion over every frame -> (alpha (B, L), log_scale (B, 1))."""
    B, T, L = emissions.shape
    # Start one step before frame 0 in state 0 with probability 1: the first step then
    # enters states 0 and 1 (a blank or the first label), like every other step.
    alpha = mx.where(mx.arange(L)[None, :] == 0, 0.0, mx.full((B, L), NEG))
    log_scale = mx.zeros((B, 1))
    for t in range(0, T, FRAMES_PER_CALL):
        alpha, log_scale = _steps(alpha, log_scale, emissions[:, t:t + FRAMES_PER_CALL], can_skip,
                                  active[:, t:t + FRAMES_PER_CALL])
    return alpha, log_scale


def _per_sample(alpha, log_scale, target_lengths, impossible, zero_infinity: bool):
    # A path ends in the final blank (state 2 * target_length) or on the last label.
    last = (2 * target_lengths)[:, None]
    end_blank = mx.take_along_axis(alpha, last, axis=1)[:, 0]
    end_label = mx.take_along_axis(alpha, mx.maximum(last - 1, 0), axis=1)[:, 0]
    end_label = mx.where(target_lengths > 0, end_label, NEG)
    loss = -(log_scale[:, 0] + mx.logaddexp(end_blank, end_label))
    return mx.where(impossible, 0.0 if zero_infinity else float("inf"), loss)


def _reduce(loss, target_lengths, reduction: str):
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return (loss / mx.maximum(target_lengths, 1)).mean()


def ctc_loss(log_probs: mx.array, targets: mx.array, input_lengths, target_lengths,
             blank: int = 0, reduction: str = "mean", zero_infinity: bool = False) -> mx.array:
    """log_probs (B, T, V), targets (B, S), input_lengths (B,) in 0..T, target_lengths
    (B,) in 0..S (lengths as mx arrays, numpy arrays or lists) -> loss, float32: a scalar,
    or (B,) for reduction "none".

    An impossible alignment (too few frames for the target) has loss +inf, or 0 with
    zero_infinity=True, as in torch. Its gradient here is 0 either way; torch's is NaN
    without zero_infinity (the loss is inf on both, so a non-finite check catches it)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    emissions, can_skip, active, target_lengths, impossible = _prepare(
        log_probs, targets, input_lengths, target_lengths, blank)
    alpha, log_scale = _recursion(emissions, can_skip, active)
    return _reduce(_per_sample(alpha, log_scale, target_lengths, impossible, zero_infinity),
                   target_lengths, reduction)


def ctc_losses(terms: list[tuple], blank: int = 0, reduction: str = "mean",
               zero_infinity: bool = False) -> list[mx.array]:
    """Several CTC losses (each a (log_probs, targets, input_lengths, target_lengths) as
    ctc_loss takes them; vocabularies, lengths and batch sizes may differ) computed by one
    recursion: their emissions padded to the longest input and label sequence and stacked
    on the batch axis (padded frames inactive, padded states unreachable). The same values
    as one ctc_loss per term, in one pass of frame steps instead of one per term: on a
    CPU, where MLX's cost is per operation, EchoStream's three CTC terms take about half
    the time (82 -> 40 ms for a demo-sized step)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    prepared = [_prepare(*term, blank) for term in terms]
    T = max(p[0].shape[1] for p in prepared)
    L = max(p[0].shape[2] for p in prepared)
    emissions = mx.concatenate([mx.pad(p[0], [(0, 0), (0, T - p[0].shape[1]), (0, L - p[0].shape[2])],
                                       constant_values=NEG) for p in prepared])
    can_skip = mx.concatenate([mx.pad(p[1], [(0, 0), (0, L - p[1].shape[1])]) for p in prepared])
    active = mx.concatenate([mx.pad(p[2], [(0, 0), (0, T - p[2].shape[1])]) for p in prepared])
    alpha, log_scale = _recursion(emissions, can_skip, active)
    losses, start = [], 0
    for _, _, _, target_lengths, impossible in prepared:
        stop = start + len(target_lengths)
        loss = _per_sample(alpha[start:stop], log_scale[start:stop], target_lengths, impossible, zero_infinity)
        losses.append(_reduce(loss, target_lengths, reduction))
        start = stop
    return losses
