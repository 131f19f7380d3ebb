"""The MLX side of the training loop: one optimizer step from numpy micro-batches.

shared/train_loop.py owns the schedule, logging, evaluation and checkpoints; this file
only does what needs MLX: gradients, accumulation, clipping, the AdamW update.
"""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from mlx_models.models import LOSS_TERMS, LOSSES, build_model
from mlx_models.weights import get_weights, set_weights, to_numpy
from shared.layout import from_backend, to_backend
from shared.specs import family_of, get_family


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


class Trainer:
    backend = "mlx"

    def __init__(self, spec, train, weights: dict[str, np.ndarray] | None = None):
        family = get_family(family_of(spec))
        self.spec, self.train_cfg, self.manifest = spec, train, family.manifest(spec)
        self.model = build_model(spec, train.seed, weights)
        self.model.checkpoint_activations = train.gradient_checkpointing
        self.model.train()
        self._family, self._loss_fn = family.name, LOSSES[family.name]
        self.optimizer = make_optimizer(train)
        mx.random.seed(train.seed)
        if train.precision == "fp16":
            raise ValueError("train.precision=fp16 is for torch on CUDA; MLX trains in bf16 "
                             "(train.precision=bf16) or fp32")
        # MLX has no autocast: mixed precision is explicit. The weights and AdamW state
        # stay fp32 (master copy); each forward/backward runs on a bf16 cast of them, and
        # the cast's gradient brings the gradients back to fp32.
        self.compute_dtype = mx.bfloat16 if train.precision == "bf16" else mx.float32
        value_and_grad = nn.value_and_grad(self.model, self._cast_loss)
        grad_fn, update_fn = (lambda batch: value_and_grad(self.model, batch)), self._update
        if train.compile:
            # State the compiled functions read and write must be declared, or it would be
            # frozen into the graph at the first call. The model is an output of the
            # gradient function too: value_and_grad swaps traced parameters into it.
            state = [self.model.state, mx.random.state]
            grad_fn = mx.compile(grad_fn, inputs=state, outputs=state)
            state = [self.model.state, self.optimizer.state]
            update_fn = mx.compile(update_fn, inputs=state, outputs=state)
        self._grad_fn, self._update_fn = grad_fn, update_fn

    def _cast_loss(self, model, batch):
        if self.compute_dtype != mx.float32:
            model.update(tree_map(lambda p: p.astype(self.compute_dtype),
                                  model.trainable_parameters()))
        return self._loss_fn(model, batch)

    def _update(self, grads, lr):
        self.optimizer.learning_rate = lr
        self.optimizer.update(self.model, grads)

    def gradients(self, micro_batches: list[np.ndarray]):
        """Mean loss and mean gradients over equal-sized micro-batches (a tree of fp32)."""
        master = self.model.trainable_parameters()
        grads, total = None, 0.0
        for batch in micro_batches:
            loss, g = self._grad_fn(to_mx(batch))
            grads = g if grads is None else tree_map(mx.add, grads, g)
            # Evaluate now so only one micro-batch's graph is alive at a time:
            # memory stays flat as accumulation grows.
            mx.eval(loss, grads)
            total += loss.item()
        self.model.update(master)  # the forward left bf16 casts in place of the fp32 masters
        k = len(micro_batches)
        return total / k, tree_map(lambda g: g / k, grads)

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
        terms_fn = LOSS_TERMS.get(self._family)
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
        # The global key is two uint32 words, and seed(s) sets it to [s >> 32, s & 0xffffffff]:
        # seeding with the saved words restores the key exactly.
        hi, lo = (int(w) for w in state["mlx"])
        mx.random.seed((hi << 32) | lo)
        return True

    def memory(self) -> tuple[int, int]:
        """(active, peak) bytes as MLX reports them."""
        return mx.get_active_memory(), mx.get_peak_memory()
