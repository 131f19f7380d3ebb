"""Per-device memory when several ranks train (train.parallel, the job's world size).

    data parallel (ddp): each rank holds a full replica -- weights, AdamW state, gradients
        and the activations of its own micro-batch (train.batch_size is per rank) -- plus
        what the gradient all-reduce adds: torch one flat bucket (torch_models/
        distributed.py: BUCKET_BYTES), MLX the averaged copy of the gradients
        (mlx.nn.average_gradients returns new arrays; the old ones die after).
    fsdp (torch, FSDP2): weights, gradients and AdamW state divided by the world size, plus
        what is gathered whole at a time: the root module's own parameters (embeddings,
        output layer: gathered for the whole step), two blocks (the one computing and the
        one prefetched) and one block's unsharded gradient before its reduce-scatter.

A block is what torch_models/trainer.py shards: each element of a ModuleList, i.e. the
parameters whose canonical name starts with a `<list>.<index>.` prefix.
"""
from __future__ import annotations

import dataclasses
import re

from shared.planner.core import MemoryPlan, Term
from shared.registry import get_family

TORCH_BUCKET_BYTES = 25 * 2**20      # torch_models/distributed.py: BUCKET_BYTES


def block_of(name: str) -> str:
    """"layers.3.mlp.up_proj.weight" -> "layers.3"; "" for a parameter in no block."""
    match = re.match(r"^(.*?\.\d+)\.", name)
    return match.group(1) if match else ""


def block_sizes(config) -> tuple[int, dict[str, int]]:
    """(parameters of the root module, {block: parameters})."""
    import math

    root, blocks = 0, {}
    for p in get_family(config.family).manifest(config.model):
        count, block = math.prod(p.shape), block_of(p.name)
        if block:
            blocks[block] = blocks.get(block, 0) + count
        else:
            root += count
    return root, blocks


def per_device(result: MemoryPlan, config, world_size: int) -> MemoryPlan:
    """`result` (one process's plan) as each of `world_size` ranks needs it."""
    if world_size <= 1:
        return result
    n = get_family(config.family).param_counts(config.model)["total"]
    terms = list(result.terms)
    if config.train.parallel == "fsdp" and result.backend == "torch":
        shared = {"weights", "optimizer state", "gradients"}
        terms = [dataclasses.replace(t, bytes=t.bytes / world_size,
                                     detail=f"{t.detail}, sharded over {world_size} ranks (FSDP2)")
                 if t.name in shared else t for t in terms]
        root, blocks = block_sizes(config)
        largest = max(blocks.values(), default=0)
        # bf16 on CUDA: FSDP2's mixed-precision policy gathers bf16 parameters, which
        # autocast then uses as they are (no cached casts of whole weights).
        mixed = config.train.precision == "bf16" and config.hardware.device != "cpu"
        if mixed:
            terms = [t for t in terms if t.name != "low-precision weight copies"]
        param_bytes = 2 if mixed else 4
        terms.append(Term("gathered parameters", (root + 2 * largest) * param_bytes,
                          f"the root's {root:,} and two blocks of {largest:,} (computing, "
                          f"prefetched), unsharded"))
        terms.append(Term("unsharded block gradient", 4 * largest,
                          "one block's gradient before its reduce-scatter"))
    elif result.backend == "torch":
        terms.append(Term("gradient all-reduce bucket", min(TORCH_BUCKET_BYTES, 4 * n),
                          f"flat float32 bucket (data parallel over {world_size} ranks)"))
    else:
        terms.append(Term("averaged gradients", 4 * n,
                          f"mlx.nn.average_gradients' copy (data parallel over {world_size} ranks)"))
    return dataclasses.replace(result, terms=terms)
