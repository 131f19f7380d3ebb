"""The torch side of the training loop: one optimizer step from numpy micro-batches.

shared/engine/train_loop.py owns the schedule, logging, evaluation and checkpoints; this file
only does what needs torch: gradients, accumulation, clipping, the AdamW update.
"""
from __future__ import annotations

import numpy as np
import torch

from shared.engine.distributed import SINGLE
from shared.errors import ConfigError
from shared.registry import family_of, get_family
from torch_models.models import BACKEND, build_model
from torch_models.weights import from_numpy, get_weights, like, set_weights, to_numpy


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_optimizer(model: torch.nn.Module, train, fused: bool | None = None) -> torch.optim.Optimizer:
    """AdamW, decay only on matrices (norm scales and biases are not decayed).

    fused=None: the fused kernel on CUDA -- one launch updates every parameter, and its
    step counters live on the device, so the update never waits for the host -- and
    torch's default elsewhere (on the CPU, the per-parameter loop: torch has no CPU
    foreach kernels). fused=True/False forces the choice (tests use it on the CPU)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": train.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    if fused is None:
        fused = bool(params) and all(p.device.type == "cuda" for p in params)
    return torch.optim.AdamW(groups, lr=train.learning_rate, betas=(train.beta1, train.beta2),
                             eps=train.eps, **({"fused": True} if fused else {}))


class Trainer:
    backend = "torch"

    def __init__(self, spec, train, weights: dict[str, np.ndarray] | None = None,
                 device: torch.device | str | None = None, collective=None):
        family = get_family(family_of(spec))
        self.spec, self.train_cfg, self.manifest = spec, train, family.manifest(spec)
        # Several processes (torch_models/distributed.py): each rank on its own device.
        self.collective = collective or SINGLE
        if device is None and collective is not None:
            device = collective.device
        self.device = torch.device(device) if device is not None else default_device()
        torch.manual_seed(train.seed)
        self.model = build_model(spec, train.seed, weights).to(self.device)
        self.model.checkpoint_activations = train.gradient_checkpointing
        self.model.train()
        self.sharded = False          # FSDP2: parameters, gradients and AdamW state sharded
        if self.collective.world_size > 1:
            self._replicate_or_shard(train)
        # Ranks evaluate their shares of the validation set, unless every forward is a
        # collective (FSDP): then every rank evaluates it all, in step.
        self.eval_collective = None if self.sharded else self.collective
        losses = family.backend(BACKEND)
        self._loss_fn, self._loss_terms_fn = losses.loss, losses.loss_terms
        self.optimizer = make_optimizer(self.model, train)
        if train.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("train.precision=fp16 needs a CUDA device; use bf16 or fp32")
        # Weights and AdamW state stay fp32; autocast runs matmuls in the compute dtype.
        # fp16 also needs loss scaling, or small gradients underflow to zero.
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(train.precision)
        self.scaler = torch.amp.GradScaler("cuda") if train.precision == "fp16" else None
        # torch.compile specialises the forward/backward; the loss function is the unit.
        # Compiling the backward and the optimizer step too was no faster on the CPU
        # (docs/benchmarks.md, "The torch step, prepared for a GPU").
        self._forward_loss = torch.compile(self._loss_fn) if train.compile else self._loss_fn

    def _replicate_or_shard(self, train) -> None:
        """Rank 0's initial weights on every rank; then, under train.parallel=fsdp, FSDP2's
        fully_shard on each block (each element of the model's ModuleLists) and on the
        model. fully_shard keeps the module and its attributes (EchoStream's loss reads
        model.spec), unlike a DistributedDataParallel wrapper. Each rank then draws its own
        dropout numbers."""
        self.collective.broadcast_([p.data for p in self.model.parameters()])
        torch.manual_seed(train.seed + self.collective.rank)
        if train.parallel != "fsdp":
            return
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(self.device.type, (self.collective.world_size,))
        # bf16 on CUDA: FSDP2 gathers bf16 parameters and reduces gradients in fp32.
        policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
                  if train.precision == "bf16" and self.device.type == "cuda" else MixedPrecisionPolicy())
        for module in list(self.model.modules()):
            if isinstance(module, torch.nn.ModuleList):
                for block in module:
                    fully_shard(block, mesh=mesh, mp_policy=policy)
        fully_shard(self.model, mesh=mesh, mp_policy=policy)
        self.sharded = True

    def _batch(self, batch):
        """A numpy batch (an array, or a dict of arrays) as tensors on the device."""
        if isinstance(batch, dict):
            return {k: self._batch(v) for k, v in batch.items()}
        tensor = torch.from_numpy(np.ascontiguousarray(batch))
        if self.device.type == "cuda":
            # From page-locked memory the copy is a real asynchronous DMA; from pageable
            # memory non_blocking=True still waits while the driver stages the bytes.
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def _loss(self, batch: np.ndarray) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.autocast_dtype,
                            enabled=self.autocast_dtype is not None):
            return self._forward_loss(self.model, self._batch(batch))

    def _accumulate(self, micro_batches: list[np.ndarray]) -> tuple[torch.Tensor, int]:
        """Leave the mean gradient of equal-sized micro-batches (of every rank's) in .grad;
        return the sum of their losses as a float64 scalar on the device, and how many
        micro-batches it sums. Nothing here waits for the device: the caller reads the sum
        back once per step. float64 because fp32 -> fp64 is exact and fp64 addition in the
        same order is what summing the Python floats of loss.item() did, so the mean is
        bit-identical to that."""
        self.optimizer.zero_grad(set_to_none=True)
        k = len(micro_batches)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for i, batch in enumerate(micro_batches):
            if self.sharded:   # FSDP2 reduce-scatters once, after the last micro-batch
                self.model.set_requires_gradient_sync(i == k - 1)
            loss = self._loss(batch)
            scaled = self.scaler.scale(loss / k) if self.scaler else loss / k
            scaled.backward()  # .grad sums across micro-batches; activations are freed
            total = total + loss.detach().double()
        world = self.collective.world_size
        if world > 1:
            if not self.sharded:   # data parallel: one all-reduce of the gradients per step
                params = [p for p in self.model.parameters() if p.requires_grad]
                for p in params:   # a parameter no micro-batch used still takes part
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                self.collective.average_([p.grad for p in params])
            self.collective.sum_(total)
        if self.scaler:   # after the all-reduce: every rank sees the same inf and skips alike
            self.scaler.unscale_(self.optimizer)
        return total, k * world

    def gradients(self, micro_batches: list[np.ndarray]) -> float:
        """Mean loss over equal-sized micro-batches; their mean gradient is left in .grad."""
        total, count = self._accumulate(micro_batches)
        return total.item() / count

    def gradients_numpy(self, micro_batches: list[np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
        """gradients() in canonical names and layout (for tests and tools)."""
        loss = self.gradients(micro_batches)
        params = dict(self.model.named_parameters())
        return loss, {p.name: to_numpy(params[p.name].grad) for p in self.manifest}

    def train_step(self, micro_batches: list[np.ndarray], lr: float) -> dict:
        """Average gradients over the micro-batches, clip, update. A non-finite loss or
        gradient norm leaves weights and optimizer state untouched."""
        total, count = self._accumulate(micro_batches)
        max_norm = self.train_cfg.max_grad_norm if self.train_cfg.max_grad_norm > 0 else float("inf")
        params = list(self.model.parameters())
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        if self.sharded:   # FSDP2: the norm of the sharded gradients, reduced over the ranks
            norm = norm.full_tensor()
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        # The step's one read-back from the device: the loss sum and the norm together
        # (fp32 -> fp64 is exact, so the norm is the value norm.item() would give).
        total, norm = torch.stack([total, norm.detach().double()]).tolist()
        loss = total / count
        # Under fp16 loss scaling an inf gradient norm usually means "scale too high":
        # the scaler skips that step and lowers the scale; only the loss says "bad step".
        finite = bool(np.isfinite(loss) and (self.scaler is not None or np.isfinite(norm)))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.scaler:
            # The scaler skips the step itself on inf/nan and lowers its scale; a skip
            # caused by the scale alone is not a bad step.
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss, "grad_norm": norm, "skipped": not finite}

    @torch.no_grad()
    def eval_loss(self, batch: np.ndarray) -> float:
        was_training = self.model.training
        self.model.eval()
        loss = self._loss_fn(self.model, self._batch(batch)).item()
        self.model.train(was_training)
        return loss

    @torch.no_grad()
    def eval_terms(self, batch) -> dict[str, float]:
        """Every term of the loss on `batch` (eval mode); {"loss": ...} for single-term losses."""
        terms_fn = self._loss_terms_fn
        if terms_fn is None:
            return {"loss": self.eval_loss(batch)}
        was_training = self.model.training
        self.model.eval()
        terms = {name: value.item() for name, value in terms_fn(self.model, self._batch(batch)).items()}
        self.model.train(was_training)
        return terms

    @torch.no_grad()
    def decode(self, batch, **options) -> dict[str, np.ndarray]:
        """The model's own inference (e.g. greedy decoding), eval mode, outputs as numpy."""
        was_training = self.model.training
        self.model.eval()
        out = self.model.decode(self._batch(batch), **options)
        self.model.train(was_training)
        return {k: v.cpu().numpy() for k, v in out.items()}

    @torch.no_grad()
    def predict(self, inputs: np.ndarray) -> np.ndarray:
        """The model's output for `inputs`, in eval mode, as float32 numpy."""
        was_training = self.model.training
        self.model.eval()
        with torch.autocast(self.device.type, dtype=self.autocast_dtype,
                            enabled=self.autocast_dtype is not None):
            out = self.model(self._batch(inputs))
        self.model.train(was_training)
        return out.float().cpu().numpy()

    # -- state for checkpoints and parity checks --------------------------------------
    def _sharded_parameters(self) -> None:
        """FSDP2 leaves the root's parameters gathered after a forward without gradients
        (an evaluation); state is read from and written to the shards."""
        if self.sharded:
            self.model.reshard()

    def get_weights(self) -> dict[str, np.ndarray]:
        self._sharded_parameters()
        return get_weights(self.model, self.manifest)

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        self._sharded_parameters()
        set_weights(self.model, self.manifest, weights, source="checkpoint")

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """AdamW moments under canonical names ("<param>.m", "<param>.v") plus "step":
        the same format mlx_models writes, so state moves across backends."""
        self._sharded_parameters()
        params = dict(self.model.named_parameters())
        state, step = {}, 0
        for p in self.manifest:
            s = self.optimizer.state.get(params[p.name], {})
            if s:
                state[f"{p.name}.m"] = to_numpy(s["exp_avg"])
                state[f"{p.name}.v"] = to_numpy(s["exp_avg_sq"])
                step = int(s["step"])
        state["step"] = np.array(step, np.int64)
        return state

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        self._sharded_parameters()
        params = dict(self.model.named_parameters())
        # The fused kernel keeps its step counters (fp32) beside the parameters; the
        # per-parameter loop keeps them on the host.
        fused = bool(self.optimizer.defaults.get("fused"))
        step = torch.tensor(float(state["step"]))
        for p in self.manifest:
            param = params[p.name]
            self.optimizer.state[param] = {
                "step": step.to(param.device, torch.float32, copy=True) if fused else step.clone(),
                "exp_avg": like(from_numpy(state[f"{p.name}.m"]), param),
                "exp_avg_sq": like(from_numpy(state[f"{p.name}.v"]), param)}

    def rng_state(self) -> dict[str, np.ndarray]:
        state = {"torch": torch.get_rng_state().numpy()}
        if self.device.type == "cuda":
            state["torch_cuda"] = torch.cuda.get_rng_state(self.device).numpy()
        return state

    def set_rng_state(self, state: dict[str, np.ndarray]) -> bool:
        """Restore the random state; False if `state` came from another backend."""
        if "torch" not in state:
            return False
        torch.set_rng_state(torch.from_numpy(np.array(state["torch"])))
        if "torch_cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(torch.from_numpy(np.array(state["torch_cuda"])), self.device)
        return True

    def memory(self) -> tuple[int, int]:
        """(allocated, peak) bytes on CUDA; on CPU torch keeps no allocator statistics."""
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device), torch.cuda.max_memory_allocated(self.device)
        return 0, 0
