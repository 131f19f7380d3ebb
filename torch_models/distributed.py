"""torch's side of several processes (shared/engine/distributed.py): torch.distributed
set up from torchrun's environment, gloo on CPUs and NCCL on CUDA.

    torchrun --nproc_per_node=2 -m torch_models.train --config ...

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; a plain
`python -m torch_models.train` sets none of them and stays one process.
"""
from __future__ import annotations

import os
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

# Gradients are summed in buckets of this many bytes (DDP's default bucket size): one
# all-reduce per bucket per optimizer step, and never more than one bucket of extra memory.
BUCKET_BYTES = 25 * 2**20


class TorchCollective:
    """The default process group of a torchrun job."""

    def __init__(self, device: torch.device):
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.device = device          # where gloo (CPU) or NCCL (CUDA) tensors live

    def all_gather(self, array: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
        out = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(out, tensor)
        return np.stack([t.cpu().numpy() for t in out])

    def barrier(self) -> None:
        dist.barrier()

    def average_(self, tensors: list[torch.Tensor]) -> None:
        """Replace each tensor by its mean over the ranks, bucket by bucket (the data
        parallel gradient all-reduce: once per optimizer step)."""
        bucket, size = [], 0
        for tensor in tensors:
            bucket.append(tensor)
            size += tensor.numel() * tensor.element_size()
            if size >= BUCKET_BYTES:
                self._average_bucket(bucket)
                bucket, size = [], 0
        if bucket:
            self._average_bucket(bucket)

    def _average_bucket(self, tensors: list[torch.Tensor]) -> None:
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    def sum_(self, tensor: torch.Tensor) -> None:
        dist.all_reduce(tensor)

    def close(self) -> None:
        """The end of a run that finished on every rank."""
        dist.destroy_process_group()

    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        """Every rank gets rank 0's values (the initial weights)."""
        for tensor in tensors:
            dist.broadcast(tensor, src=0)


def from_launcher() -> TorchCollective | None:
    """The job's collective when torchrun started this process with WORLD_SIZE > 1 (the
    process group is created here), else None: a one-process run."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device, timeout=timedelta(minutes=10))
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", timeout=timedelta(minutes=10))
    return TorchCollective(device)

