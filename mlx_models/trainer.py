"""The MLX side of the training loop: one optimizer step from numpy micro-batches.

shared/engine/train_loop.py owns the schedule, logging, evaluation and checkpoints; this file
only does what needs MLX: gradients, accumulation, clipping, the AdamW update.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, wait

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from mlx_models.blas import set_blas_threads
from mlx_models.models import BACKEND, build_model
from mlx_models.weights import get_weights, set_weights, to_numpy
from shared.engine.config import available_cores, cpu_parts
from shared.engine.distributed import SINGLE
from shared.engine.layout import from_backend, to_backend
from shared.errors import ConfigError
from shared.registry import family_of, get_family


def make_optimizer(train) -> optim.Optimizer:
    """AdamW with torch's conventions: bias correction on, decay only on matrices."""
    def adamw(weight_decay):
        return optim.AdamW(learning_rate=train.learning_rate, betas=[train.beta1, train.beta2],
                           eps=train.eps, weight_decay=weight_decay, bias_correction=True)
    return optim.MultiOptimizer([adamw(train.weight_decay), adamw(0.0)],
                                [lambda path, p: p.ndim >= 2])


def to_mx(batch):
    """A numpy batch (an array, or a dict of arrays) as MLX arrays."""
    if isinstance(batch, dict):
        return {k: mx.array(v) for k, v in batch.items()}
    return mx.array(batch)


def set_random_key(words) -> None:
    """Make `words` (two uint32) MLX's global random key. seed(s) sets the key to
    [s >> 32, s & 0xffffffff], so seeding with the words sets it exactly."""
    hi, lo = (int(w) for w in words)
    mx.random.seed((hi << 32) | lo)


def cpu_streams(train, family: str) -> int:
    """Parts per micro-batch (shared/engine/config.py: cpu_parts) on a CPU; 1 on a GPU. MLX runs
    each stream's ops on a thread of its own, and on a CPU only its BLAS is multi-threaded:
    with one stream the element-wise ops, reductions and softmaxes leave the other cores
    idle. A part per core uses them (tiny LM on 2 cores: 340 -> 260 ms per step)."""
    return cpu_parts(train, family) if mx.default_device() == mx.cpu else 1


def batch_length(batch) -> int:
    return len(next(iter(batch.values()))) if isinstance(batch, dict) else len(batch)


class Trainer:
    backend = "mlx"

    def __init__(self, spec, train, weights: dict[str, np.ndarray] | None = None, collective=None):
        family = get_family(family_of(spec))
        self.spec, self.train_cfg, self.manifest = spec, train, family.manifest(spec)
        # Several processes (mlx_models/distributed.py): data parallel, each rank evaluating
        # its share of the validation set.
        self.collective = self.eval_collective = collective or SINGLE
        if train.parallel == "fsdp" and self.collective.world_size > 1:
            raise ConfigError("train.parallel=fsdp is for torch: MLX's ring and MPI backends "
                              "lack the sum_scatter sharded training needs; use "
                              "train.parallel=ddp with MLX")
        self.model = build_model(spec, train.seed, weights)
        if self.collective.world_size > 1:   # rank 0's initial weights on every rank
            self.model.update(self.collective.broadcast(self.model.parameters()))
            mx.eval(self.model.parameters())
        self.model.checkpoint_activations = train.gradient_checkpointing
        self.model.train()
        losses = family.backend(BACKEND)
        self._loss_fn, self._loss_terms_fn = losses.loss, losses.loss_terms
        self._batch_parts = family.batch_parts
        self.optimizer = make_optimizer(train)
        mx.random.seed(train.seed + self.collective.rank)   # each rank its own dropout draws
        if train.precision == "fp16":
            raise ConfigError("train.precision=fp16 is for torch on CUDA; MLX trains in bf16 "
                             "(train.precision=bf16) or fp32")
        # MLX has no autocast: mixed precision is explicit. The weights and AdamW state
        # stay fp32 (master copy); each forward/backward runs on a bf16 cast of them, and
        # the cast's gradient brings the gradients back to fp32.
        self.compute_dtype = mx.bfloat16 if train.precision == "bf16" else mx.float32
        value_and_grad = nn.value_and_grad(self.model, self._cast_loss)
        grad_fn = lambda batch, weight: value_and_grad(self.model, batch, weight)  # noqa: E731
        update_fn = self._update
        if train.compile:
            # State the compiled functions read and write must be declared, or it would be
            # frozen into the graph at the first call. The model is an output of the
            # gradient function too: value_and_grad swaps traced parameters into it.
            state = [self.model.state, mx.random.state]
            grad_fn = mx.compile(grad_fn, inputs=state, outputs=state)
            state = [self.model.state, self.optimizer.state]
            update_fn = mx.compile(update_fn, inputs=state, outputs=state)
        self._grad_fn, self._update_fn = grad_fn, update_fn
        n_streams = cpu_streams(train, family.name)
        # A part's graph is built here, in order (so random draws are reproducible), and
        # evaluated by a worker thread that owns its stream: MLX streams belong to the thread
        # that made them. (Evaluating all parts in one mx.eval does not overlap them unless
        # MLX's breadth-first width is raised, which costs activation checkpointing its savings.)
        self._part_workers = [ThreadPoolExecutor(1, thread_name_prefix="mlx-part")
                              for _ in range(n_streams if n_streams > 1 else 0)]
        self._part_streams = [w.submit(mx.new_stream, mx.cpu).result() for w in self._part_workers]
        if n_streams > 1:
            # One BLAS thread per part: more would compete for the same cores. Set for the
            # process, not per step: toggling it would race with mlx-data's loader threads,
            # which set it too, and OpenBLAS's results depend (slightly) on the count.
            set_blas_threads(max(1, available_cores() // n_streams))

    def _cast_loss(self, model, batch, weight):
        """The loss times `weight` (a part's share of its micro-batch; 1 for a whole one)."""
        if self.compute_dtype != mx.float32:
            model.update(tree_map(lambda p: p.astype(self.compute_dtype),
                                  model.trainable_parameters()))
        return self._loss_fn(model, batch) * weight

    def _update(self, grads, lr):
        self.optimizer.learning_rate = lr
        self.optimizer.update(self.model, grads)

    def gradients(self, micro_batches: list[np.ndarray]):
        """Mean loss and mean gradients over equal-sized micro-batches (a tree of fp32)."""
        master = self.model.trainable_parameters()
        grads, total = None, 0.0
        for batch in micro_batches:
            loss, g = self._micro_batch_gradients(batch)
            grads = g if grads is None else tree_map(mx.add, grads, g)
            # Evaluate now so only one micro-batch's graph is alive at a time:
            # memory stays flat as accumulation grows.
            mx.eval(loss, grads)
            total += loss.item()
        self.model.update(master)  # the forward left bf16 casts in place of the fp32 masters
        k = len(micro_batches)
        grads = tree_map(lambda g: g / k, grads)
        if self.collective.world_size > 1:   # the mean over every rank's micro-batches
            grads = self.collective.average_gradients(grads)
            total = self.collective.sum(total)
            k *= self.collective.world_size
        return total / k, grads

    @property
    def parallel_parts(self) -> int:
        """Parts each micro-batch is split into, computed in parallel (1: not split)."""
        return max(1, len(self._part_workers))

    def _micro_batch_gradients(self, batch):
        """Loss and gradients of one numpy micro-batch. On several CPU streams: the sum of
        its parts' losses and gradients, each weighted by its share of the examples -- the
        whole batch's (Family.batch_parts) -- with the parts computed concurrently."""
        total_size = batch_length(batch)
        n_parts = min(len(self._part_workers), total_size)  # a short last batch: fewer
        if n_parts <= 1:
            return self._grad_fn(to_mx(batch), mx.array(1.0))
        # A part may use nothing computed on another part's stream (its thread could not
        # evaluate it): each starts from the master weights, and draws its random numbers
        # (dropout) from a key of its own, made here and evaluated first.
        master = self.model.trainable_parameters()
        parts = self._batch_parts(batch, n_parts)
        keys = np.array(mx.random.split(mx.random.state[0], len(parts) + 1))
        losses, grads, running = [], [], []
        try:
            for worker, stream, part, key in zip(self._part_workers, self._part_streams, parts, keys):
                self.model.update(master)
                set_random_key(key)
                with mx.stream(stream):
                    # Weighting the loss weights the gradients, with no copy of them.
                    loss, g = self._grad_fn(to_mx(part), mx.array(batch_length(part) / total_size))
                losses.append(loss)
                grads.append(g)
                running.append(worker.submit(mx.eval, loss, g))
        finally:
            wait(running)  # every part done (or failed) before anything else runs
            self.model.update(master)
        for job in running:
            job.result()   # a part's error (out of memory, say) is raised here
        set_random_key(keys[-1])
        return sum(losses[1:], losses[0]), tree_map(lambda *xs: sum(xs[1:], xs[0]), *grads)

    def gradients_numpy(self, micro_batches: list[np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
        """gradients() in canonical names and layout (for tests and tools)."""
        loss, grads = self.gradients(micro_batches)
        flat = dict(tree_flatten(grads))
        return loss, {p.name: from_backend(to_numpy(flat[p.name]), p.kind, "mlx") for p in self.manifest}

    def train_step(self, micro_batches: list[np.ndarray], lr: float) -> dict:
        """Average gradients over the micro-batches, clip, update. A non-finite loss or
        gradient norm leaves weights and optimizer state untouched."""
        loss, grads = self.gradients(micro_batches)
        max_norm = self.train_cfg.max_grad_norm if self.train_cfg.max_grad_norm > 0 else float("inf")
        grads, norm = optim.clip_grad_norm(grads, max_norm)
        norm = norm.item()
        if not (np.isfinite(loss) and np.isfinite(norm)):
            return {"loss": loss, "grad_norm": norm, "skipped": True}
        self._update_fn(grads, mx.array(lr, mx.float32))
        mx.eval(self.model.parameters(), self.optimizer.state)
        return {"loss": loss, "grad_norm": norm, "skipped": False}

    def eval_loss(self, batch: np.ndarray) -> float:
        was_training = self.model.training
        self.model.eval()
        loss = self._loss_fn(self.model, to_mx(batch)).item()
        self.model.train(was_training)
        return loss

    def eval_terms(self, batch) -> dict[str, float]:
        """Every term of the loss on `batch` (eval mode); {"loss": ...} for single-term losses."""
        terms_fn = self._loss_terms_fn
        if terms_fn is None:
            return {"loss": self.eval_loss(batch)}
        was_training = self.model.training
        self.model.eval()
        terms = {name: value.item() for name, value in terms_fn(self.model, to_mx(batch)).items()}
        self.model.train(was_training)
        return terms

    def decode(self, batch, **options) -> dict[str, np.ndarray]:
        """The model's own inference (e.g. greedy decoding), eval mode, outputs as numpy."""
        was_training = self.model.training
        self.model.eval()
        out = self.model.decode(to_mx(batch), **options)
        self.model.train(was_training)
        return {k: np.array(v) for k, v in out.items()}

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        """The model's output for `inputs`, in eval mode, as float32 numpy."""
        was_training = self.model.training
        self.model.eval()
        out = self.model(to_mx(inputs))
        self.model.train(was_training)
        return np.array(out.astype(mx.float32))

    # -- state for checkpoints and parity checks --------------------------------------
    def get_weights(self) -> dict[str, np.ndarray]:
        return get_weights(self.model, self.manifest)

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        set_weights(self.model, self.manifest, weights, source="checkpoint")

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """AdamW moments under canonical names and layout ("<param>.m", "<param>.v"),
        plus "step": the same format torch_models writes, so state moves across backends."""
        kinds = {p.name: p.kind for p in self.manifest}
        state = {}
        for key, value in tree_flatten(self.optimizer.state):
            _, _, rest = key.split(".", 2)           # "states.<i>.<param>.m"
            if rest in ("step", "learning_rate"):
                if rest == "step":
                    state["step"] = np.array(value.item(), np.int64)
                continue
            name, moment = rest.rsplit(".", 1)
            state[f"{name}.{moment}"] = from_backend(to_numpy(value), kinds[name], "mlx")
        return state

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        params = dict(tree_flatten(self.model.trainable_parameters()))
        trees = []
        for i, owns in enumerate([lambda p: p.ndim >= 2, lambda p: p.ndim < 2]):
            entries = [(f"{p.name}.{m}", mx.array(to_backend(state[f"{p.name}.{m}"], p.kind, "mlx")))
                       for p in self.manifest if owns(params[p.name]) for m in ("m", "v")]
            tree = tree_unflatten(entries)
            tree["step"] = mx.array(int(state["step"]), mx.uint64)
            tree["learning_rate"] = mx.array(self.train_cfg.learning_rate, mx.float32)
            trees.append(tree)
        self.optimizer.state = {"states": trees}
        for sub, tree in zip(self.optimizer.optimizers, trees):
            sub.state = tree
            sub._initialized = True
        mx.eval(self.optimizer.state)

    def rng_state(self) -> dict[str, np.ndarray]:
        return {"mlx": np.array(mx.random.state[0])}

    def set_rng_state(self, state: dict[str, np.ndarray]) -> bool:
        """Restore the random state; False if `state` came from another backend."""
        if "mlx" not in state:
            return False
        set_random_key(state["mlx"])
        return True

    def memory(self) -> tuple[int, int]:
        """(active, peak) bytes as MLX reports them."""
        return mx.get_active_memory(), mx.get_peak_memory()
