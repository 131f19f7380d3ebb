"""MLX's side of several processes (shared/engine/distributed.py): mx.distributed, set up
from the launcher's environment.

    mlx.launch -n 2 python -m mlx_models.train --config ...                 # one machine
    mlx.launch --hostfile hosts.json python -m mlx_models.train --config ... # several Macs

mx.distributed.init() reads what mlx.launch sets (MLX_RANK and MLX_HOSTFILE for the ring
backend; MPI's or JACCL's own variables); a plain `python -m mlx_models.train` gets a
one-process group and stays one process. MLX's sharded training needs `sum_scatter`, which
the ring and MPI backends lack: data parallel only.
"""
from __future__ import annotations

import json
import os

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlx_models.blas import set_blas_threads


class MLXCollective:
    """The job's mx.distributed group."""

    def __init__(self, group):
        self.group = group
        self.rank, self.world_size = group.rank(), group.size()

    def all_gather(self, array: np.ndarray) -> np.ndarray:
        # Moved as bytes: every dtype numpy has travels, float64 and bools included.
        array = np.ascontiguousarray(array)
        data = mx.array(array.reshape(-1).view(np.uint8))
        gathered = np.array(mx.distributed.all_gather(data, group=self.group, stream=mx.cpu))
        return gathered.view(array.dtype).reshape(self.world_size, *array.shape)

    def barrier(self) -> None:
        mx.eval(mx.distributed.all_sum(mx.array(1.0), group=self.group, stream=mx.cpu))

    def average_gradients(self, grads):
        """The data parallel all-reduce: once per optimizer step."""
        return nn.average_gradients(grads, group=self.group)

    def sum(self, value: float) -> float:
        """A float64 sum over the ranks (the loss), added in rank order on every rank."""
        return float(sum(self.all_gather(np.array([value], np.float64))[:, 0].tolist()))

    def broadcast(self, tree):
        """Rank 0's values of a tree of arrays on every rank (the initial weights): a sum
        in which every other rank adds zeros."""
        from mlx.utils import tree_map
        keep = self.rank == 0
        return tree_map(lambda x: mx.distributed.all_sum(x if keep else mx.zeros_like(x),
                                                         group=self.group, stream=mx.cpu), tree)


def local_ranks(rank: int) -> tuple[int, int]:
    """(this rank's index among the ranks on its machine, how many ranks it has): from
    MPI's variables, or from the ring hostfile (ranks listed with the same first address
    run on the same machine)."""
    if "OMPI_COMM_WORLD_LOCAL_RANK" in os.environ:
        return (int(os.environ["OMPI_COMM_WORLD_LOCAL_RANK"]),
                int(os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE", "1")))
    try:
        with open(os.environ["MLX_HOSTFILE"]) as f:
            hosts = json.load(f)
        address = [h["ips"][0].rsplit(":", 1)[0] if isinstance(h, dict) else str(h[0]).rsplit(":", 1)[0]
                   for h in hosts]
    except (KeyError, OSError, ValueError, IndexError, TypeError):
        return 0, 1
    here = [r for r, a in enumerate(address) if a == address[rank]]
    return here.index(rank), len(here)


def pin_to_cores(local_rank: int, local_size: int) -> None:
    """On a CPU host, each local rank gets its own share of the cores (and that many BLAS
    threads): two ranks on two cores otherwise fight over both (pinned, the MLX step took
    half the time). train.cpu_streams=0 then splits each micro-batch over the rank's share."""
    if not hasattr(os, "sched_setaffinity") or local_size <= 1:
        return
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < local_size:
        return
    share = [int(c) for c in np.array_split(cores, local_size)[local_rank]]
    os.sched_setaffinity(0, share)
    set_blas_threads(len(share))


def from_launcher() -> MLXCollective | None:
    """The job's collective when a launcher started several ranks, else None."""
    group = mx.distributed.init()
    if group.size() <= 1:
        return None
    if mx.default_device() == mx.cpu:
        pin_to_cores(*local_ranks(group.rank()))
    return MLXCollective(group)

