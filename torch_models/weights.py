"""torch module <-> canonical numpy weights. Layout transforms come from the manifest."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import torch
from torch.distributed.tensor import DTensor, distribute_tensor

from shared.engine.checkpoint import check_weights
from shared.engine.layout import from_backend, to_backend
from shared.specs.base import ParamSpec


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """The whole tensor as numpy; a sharded one (FSDP2's DTensor) is gathered first, which
    every rank must do together."""
    if isinstance(tensor, DTensor):
        tensor = tensor.full_tensor()
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:  # numpy's bf16 comes from ml_dtypes; move the bits
        return tensor.view(torch.uint16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """`value` (a whole tensor) placed as `param` is: on its device, and sharded the same
    way when `param` is an FSDP2 shard."""
    value = value.to(param.device)
    if isinstance(param, DTensor):
        return distribute_tensor(value, param.device_mesh, param.placements)
    return value


def from_numpy(array: np.ndarray) -> torch.Tensor:
    """A torch tensor owning a copy (checkpoint arrays are read-only memory maps)."""
    array = np.array(array, copy=True, order="C")
    if array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def get_weights(model: torch.nn.Module, manifest: list[ParamSpec]) -> dict[str, np.ndarray]:
    params = dict(model.named_parameters())
    return {p.name: from_backend(to_numpy(params[p.name]), p.kind, "torch") for p in manifest}


def set_weights(model: torch.nn.Module, manifest: list[ParamSpec],
                weights: dict[str, np.ndarray], source: str = "checkpoint") -> None:
    """Copy weights in, keeping each weight's dtype (a bf16 checkpoint makes bf16 params)."""
    check_weights(weights, manifest, source)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for p in manifest:
            value = from_numpy(to_backend(weights[p.name], p.kind, "torch"))
            params[p.name].data = like(value, params[p.name])
