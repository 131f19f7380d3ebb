"""Several processes training one model (data parallel): the framework-neutral side.

A launcher starts one process per device -- `torchrun` for torch, `mlx.launch` (or
MLX_RANK + MLX_HOSTFILE) for MLX -- and each backend turns the launcher's environment into
a `Collective` (torch_models/distributed.py, mlx_models/distributed.py). The engine uses
nothing of it beyond this protocol: every rank's numpy array gathered, and a barrier.
Gradients are the trainer's business: each backend's Trainer averages them once per
optimizer step through its own collective (a flat all-reduce; mlx.nn.average_gradients).

What the engine builds on it, here and once for both backends:
    gather_objects(collective, obj)      every rank's picklable object, in rank order
    shard_map(trainer, fn, items)        [fn(x) for x in items], each rank doing its share
    any_rank(collective, flag)           whether any rank says yes (Ctrl+C, a bad step)
"""
from __future__ import annotations

import pickle
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class Collective(Protocol):
    """One backend's communication among the ranks of a job."""
    rank: int
    world_size: int

    def all_gather(self, array: np.ndarray) -> np.ndarray:
        """Every rank's `array` (the same shape and dtype on every rank), stacked along a
        new first axis in rank order; the same result on every rank."""

    def barrier(self) -> None:
        """Return once every rank has called it."""


class SingleProcess:
    """The one-process run: nothing to communicate."""
    rank, world_size = 0, 1

    def all_gather(self, array: np.ndarray) -> np.ndarray:
        return np.asarray(array)[None]

    def barrier(self) -> None:
        pass


SINGLE = SingleProcess()


def gather_objects(collective: Collective, obj) -> list:
    """Every rank's `obj` (anything picklable), in rank order, on every rank."""
    if collective.world_size == 1:
        return [obj]
    data = np.frombuffer(pickle.dumps(obj), np.uint8)
    sizes = collective.all_gather(np.array([data.size], np.int64))[:, 0]
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:data.size] = data
    gathered = collective.all_gather(padded)
    return [pickle.loads(gathered[r, :sizes[r]].tobytes()) for r in range(collective.world_size)]


def any_rank(collective: Collective, flag: bool) -> bool:
    if collective.world_size == 1:
        return bool(flag)
    return bool(collective.all_gather(np.array([flag], np.int32)).any())


def evaluation_collective(trainer) -> Collective:
    """The collective a task shards its evaluation over: the trainer's, unless its model
    is sharded (FSDP: every forward is a collective, so every rank evaluates every batch,
    in step, and gets the same results)."""
    return getattr(trainer, "eval_collective", None) or SINGLE


def shard_map(trainer, fn: Callable, items: Sequence) -> list:
    """[fn(item) for item in items], rank r computing items r, r + N, r + 2N...; the
    results gathered in the items' order, so every rank reduces them exactly as one
    process would (the same val_loss to the bit, hence the same `best`)."""
    collective = evaluation_collective(trainer)
    if collective.world_size == 1:
        return [fn(item) for item in items]
    rank, world = collective.rank, collective.world_size
    mine = [fn(item) for item in items[rank::world]]
    results: list = [None] * len(items)
    for r, theirs in enumerate(gather_objects(collective, mine)):
        results[r::world] = theirs
    return results
