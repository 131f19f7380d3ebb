"""CTC loss in MLX, matching torch.nn.functional.ctc_loss (values and gradients).

Mirrors torch_models/ctc.py (same name and signature; torch has no CTC kernel on MPS,
pytorch/pytorch#153976, so on a Mac this is the CTC that trains). Conventions, all
torch's except the layout: log_probs (B, T, V) batch-first and already log-softmaxed,
targets (B, S) padded with anything, per-sample input and target lengths, `blank`
default 0, reduction "mean" (each loss divided by its target length, then the batch
mean), "sum" or "none", `zero_infinity`.

The forward (alpha) recursion of Graves et al. 2006 over the extended label sequence
blank y1 blank y2 ... yS blank (L = 2S + 1 states): the emissions of all T frames are
gathered once, (B, T, L), and each of the T steps is a few element-wise ops on (B, L).
Two ways of computing it, chosen by device:

- On a CPU, in the probability domain in float64, each frame scaled to sum to one
  (Rabiner's scaling), with a hand-written gradient: the backward (beta) recursion and
  the posteriors alpha * beta. MLX's CPU exp and log cost ~10 ns an element against a
  fraction of a ns for an add, and each op ~10 us whatever its size, so the log domain's
  four transcendentals per state and frame, and autodiff replaying them op by op, made
  the CTC the largest part of an EchoStream step. float64 keeps the scaled probabilities
  from underflowing: with 1000 frames for 40 labels, float32 loses 2 % of the loss
  (tests/parity/test_ctc.py: test_long_input_short_target).
- On a GPU (Metal has no float64), in the log domain in float32, renormalised every
  frame, compiled eight frames per call, differentiated by MLX's autodiff.
"""
from __future__ import annotations

from typing import NamedTuple

import mlx.core as mx

# log(0) as a finite number. With a true -inf, logsumexp over three unreachable states is
# -inf - -inf = NaN in the backward pass, and that NaN leaks into every gradient. A finite
# floor keeps unreachable paths at weight exp(-1e30) = 0 and gradients exact; impossible
# alignments are then recognised by counting (`_impossible`), not by an overflowing sum.
NEG = -1e30

REDUCTIONS = ("mean", "sum", "none")

# Frames per compiled call of the log-domain recursion: one traced graph, unrolled.
FRAMES_PER_CALL = 8


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


def _impossible(targets, input_lengths, target_lengths) -> mx.array:
    """A target needs one frame per label plus one blank between each pair of equal
    neighbours; with fewer frames no alignment exists and the loss is +inf."""
    S = targets.shape[1]
    if S < 2:
        return input_lengths < target_lengths
    inside = mx.arange(1, S)[None, :] < target_lengths[:, None]
    repeats = ((targets[:, 1:] == targets[:, :-1]) & inside).sum(axis=1)
    return input_lengths < target_lengths + repeats


def _probability_domain() -> bool:
    """The CPU's algorithm (module docstring); MLX has float64 on the CPU only."""
    return mx.default_device() == mx.cpu


class Lattice(NamedTuple):
    """One batch's CTC problem, ready for a recursion."""
    emissions: mx.array        # (B, T, L) float32 log-probability of each state's label per frame
    probs: mx.array | None     # (B, T, L) float64 exp(emissions) on a CPU; None on a GPU
    can_skip: mx.array         # (B, L) a state that may be entered by skipping the blank before it
    active: mx.array           # (B, T) frames inside each input
    end: mx.array              # (B, L) the states a path may end in
    target_lengths: mx.array   # (B,)
    impossible: mx.array       # (B,) too few frames for the target


def _prepare(log_probs, targets, input_lengths, target_lengths, blank: int) -> Lattice:
    """Checked inputs -> the Lattice that the recursions and the end need."""
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
    index = mx.broadcast_to(ext[:, None, :], (B, T, L))
    log_probs = log_probs.astype(mx.float32)
    emissions = mx.maximum(mx.take_along_axis(log_probs, index, axis=2), NEG)
    probs = None
    if _probability_domain():   # exp (~10 ns each here) over the vocabulary or the states: the fewer
        probs = (mx.take_along_axis(mx.exp(log_probs.astype(mx.float64)), index, axis=2) if V < L
                 else mx.exp(emissions.astype(mx.float64)))
    active = mx.arange(T)[None, :] < input_lengths[:, None]
    # A path ends in the final blank (state 2 * target_length) or on the last label.
    state, last = mx.arange(L)[None, :], (2 * target_lengths)[:, None]
    end = (state == last) | ((state == last - 1) & (last > 0))
    return Lattice(emissions, probs, can_skip, active, end, target_lengths,
                   _impossible(targets, input_lengths, target_lengths))


# -- the log domain (GPU) ------------------------------------------------------------
def _shift(alpha: mx.array, k: int) -> mx.array:
    """alpha[:, s - k], NEG where s - k < 0 (pad then cut, so L < k works too)."""
    return mx.pad(alpha, [(0, 0), (k, 0)], constant_values=NEG)[:, :alpha.shape[1]]


def _log_step(alpha: mx.array, log_scale: mx.array, emit: mx.array, can_skip: mx.array,
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


@mx.compile
def _log_steps(alpha: mx.array, log_scale: mx.array, emit: mx.array, can_skip: mx.array,
               active: mx.array) -> tuple[mx.array, mx.array]:
    """_log_step over the frames of emit (B, K, L) / active (B, K), unrolled into one
    compiled function (on a GPU, per-kernel overheads dominate a frame)."""
    for k in range(emit.shape[1]):
        alpha, log_scale = _log_step(alpha, log_scale, emit[:, k], can_skip, active[:, k:k + 1])
    return alpha, log_scale


def _log_domain_loglik(emissions, can_skip, active, end) -> mx.array:
    """log P(target | input) per sample, (B,), by the log-domain alpha recursion over every
    frame, differentiated by autodiff (the GPU's algorithm)."""
    B, T, L = emissions.shape
    # Start one step before frame 0 in state 0 with probability 1: the first step then
    # enters states 0 and 1 (a blank or the first label), like every other step.
    alpha = mx.where(mx.arange(L)[None, :] == 0, 0.0, mx.full((B, L), NEG))
    log_scale = mx.zeros((B, 1))
    for t in range(0, T, FRAMES_PER_CALL):
        alpha, log_scale = _log_steps(alpha, log_scale, emissions[:, t:t + FRAMES_PER_CALL], can_skip,
                                      active[:, t:t + FRAMES_PER_CALL])
    return log_scale[:, 0] + mx.logsumexp(mx.where(end, alpha, NEG), axis=1)


# -- the probability domain (CPU) ------------------------------------------------------
# Not mx.compile'd: under mx.grad (training) compile traces its function inline instead of
# fusing it (the log domain's compiled calls too), so the ops below are written for count:
# about ten per frame each way.
@mx.custom_function
def _probability_domain_loglik(emissions, probs, can_skip, active, end):
    """log P(target | input) per sample (B,) float32 (-inf where no path is left), and every
    frame's scaled alpha (B, T, L), kept for the gradient. probs is exp(emissions) in
    float64 (made by _prepare, where it takes fewer exps); the gradient flows to emissions.
    Frames are (B, 1, L) views made by one split (not a slice op per frame)."""
    B, T, L = probs.shape
    skip = can_skip[:, None].astype(probs.dtype)
    # Start one step before frame 0 in state 0 with probability 1: the first step then
    # enters states 0 and 1 (a blank or the first label), like every other step.
    alpha = mx.broadcast_to((mx.arange(L) == 0).astype(probs.dtype), (B, 1, L))
    alphas, totals = [], []
    for frame_probs, frame_active in zip(mx.split(probs, T, axis=1), mx.split(active[..., None], T, axis=1)):
        # A state is reached by staying, moving one state on, or skipping a blank.
        before = mx.pad(alpha, [(0, 0), (0, 0), (2, 0)])     # before[..., s + 2] = alpha[..., s]
        new = (alpha + before[..., 1:L + 1] + skip * before[..., :L]) * frame_probs
        total = new.sum(axis=2, keepdims=True)
        alpha = mx.where(frame_active, new / total, alpha)   # an ended input keeps its alpha
        alphas.append(alpha)
        totals.append(total)
    totals = mx.concatenate(totals, axis=1)[..., 0]
    dead = (active & (totals <= 0)).any(axis=1)   # every path gone: no alignment
    loglik = (mx.where(active, mx.log(totals), 0.0).sum(axis=1)
              + mx.log(mx.where(end, alpha[:, 0], 0.0).sum(axis=1)))
    return mx.where(dead, -mx.inf, loglik).astype(mx.float32), mx.concatenate(alphas, axis=1)


@_probability_domain_loglik.vjp
def _probability_domain_vjp(primals, cotangents, outputs):
    """d log P / d emission[t, s] is the posterior of state s at frame t: alpha * beta,
    normalised per frame (Graves et al. 2006, eq. 16), 0 on frames past the input. beta
    excludes its own frame's emission; its scale per frame is arbitrary."""
    emissions, probs, can_skip, active, end = primals
    B, T, L = probs.shape
    skip_ahead = mx.pad(can_skip, [(0, 0), (0, 2)])[:, None, 2:].astype(probs.dtype)   # can_skip[s + 2]
    beta, betas = end[:, None].astype(probs.dtype), []
    frames = zip(mx.split(probs, T, axis=1), mx.split(active[..., None], T, axis=1))
    for frame_probs, frame_active in reversed(list(frames)):
        betas.append(beta)
        onward = frame_probs * beta                          # leaving s: to s, s + 1, s + 2
        after = mx.pad(onward, [(0, 0), (0, 0), (0, 2)])     # after[..., s] = onward[..., s]
        new = onward + after[..., 1:L + 1] + skip_ahead * after[..., 2:]
        beta = mx.where(frame_active, new / new.sum(axis=2, keepdims=True), beta)
    joint = outputs[1] * mx.concatenate(betas[::-1], axis=1)
    posterior = joint / joint.sum(axis=2, keepdims=True) * active[..., None]
    dead = mx.isinf(outputs[0])[:, None, None]
    grad = cotangents[0][:, None, None] * mx.where(dead, 0.0, posterior).astype(mx.float32)
    return (grad, mx.zeros_like(probs), mx.zeros_like(can_skip), mx.zeros_like(active),
            mx.zeros_like(end))


def _loglik(lattice: Lattice) -> mx.array:
    """log P(target | input) per sample (B,), by the device's algorithm (module docstring)."""
    if lattice.probs is not None:
        return _probability_domain_loglik(lattice.emissions, mx.stop_gradient(lattice.probs),
                                          lattice.can_skip, lattice.active, lattice.end)[0]
    return _log_domain_loglik(lattice.emissions, lattice.can_skip, lattice.active, lattice.end)


def _reduce(loss, target_lengths, reduction: str):
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return (loss / mx.maximum(target_lengths, 1)).mean()


def _loss(loglik, impossible, zero_infinity: bool):
    """-log P, inf where no alignment exists (too few frames, or no path left), 0 there
    with zero_infinity (torch's conventions)."""
    loss = mx.where(impossible, float("inf"), -loglik)
    return mx.where(mx.isinf(loss), 0.0, loss) if zero_infinity else loss


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
    lattice = _prepare(log_probs, targets, input_lengths, target_lengths, blank)
    loss = _loss(_loglik(lattice), lattice.impossible, zero_infinity)
    return _reduce(loss, lattice.target_lengths, reduction)


def _stack(lattices: list[Lattice]) -> Lattice:
    """Lattices of other batch sizes, frames and states as one: padded to the longest
    input and label sequence (padded frames inactive, padded states unreachable) and
    stacked on the batch axis."""
    T = max(lat.emissions.shape[1] for lat in lattices)
    L = max(lat.emissions.shape[2] for lat in lattices)

    def stacked(field: str, sizes: tuple, fill=0):
        return mx.concatenate([mx.pad(getattr(lat, field), [(0, 0)] + [(0, size - n) for size, n in zip(
            sizes, getattr(lat, field).shape[1:])], constant_values=fill) for lat in lattices])

    return Lattice(emissions=stacked("emissions", (T, L), NEG),
                   probs=None if lattices[0].probs is None else stacked("probs", (T, L)),
                   can_skip=stacked("can_skip", (L,)), active=stacked("active", (T,)),
                   end=stacked("end", (L,)), target_lengths=None, impossible=None)


def ctc_losses(terms: list[tuple], blank: int = 0, reduction: str = "mean",
               zero_infinity: bool = False) -> list[mx.array]:
    """Several CTC losses (each a (log_probs, targets, input_lengths, target_lengths) as
    ctc_loss takes them; vocabularies, lengths and batch sizes may differ) computed by one
    recursion over their stacked lattices (_stack). The same values as one ctc_loss per
    term, in one pass of frame steps instead of one per term: MLX's cost per frame is
    mostly per operation, not per element."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    lattices = [_prepare(*term, blank) for term in terms]
    loglik = _loglik(_stack(lattices))
    losses, start = [], 0
    for lattice in lattices:
        stop = start + len(lattice.target_lengths)
        loss = _loss(loglik[start:stop], lattice.impossible, zero_infinity)
        losses.append(_reduce(loss, lattice.target_lengths, reduction))
        start = stop
    return losses
