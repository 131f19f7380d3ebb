"""RoPE's cos/sin tables, computed once per (head_dim, base, positions, dtype, device) and
reused by every layer, q and k, and every later step of the same length.

Both RoPE conventions (the LM's rotate-half in torch_models/lm.py, the interleaved pairs
of torch_models/tflocoformer.py and bandsplit.py) rotate by the same angles, position p
times base ** (-2i / head_dim); only how they pair the channels differs.

The tables live in a plain dict, not in registered buffers: buffers would enter
state_dict() and the checks that a model's parameters and state are its manifest's.
Entries are exactly what the uncached code computed for the same positions (the angles
of positions offset..offset+T-1, not a slice of a longer table: the CPU's vectorised
sin/cos and its scalar tail loop may round one element differently), so caching changes
no result bit. The dict keeps the few most recent entries: a decoding loop asks for a new
offset every token.
"""
from __future__ import annotations

import torch

MAX_ENTRIES = 32
_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def compute_cos_sin(head_dim: int, base: float, length: int, offset: int,
                    dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(length, head_dim // 2) cos and sin of the angles of positions offset.., uncached."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
    pos = torch.arange(offset, offset + length, dtype=torch.float32, device=device)
    angles = torch.outer(pos, inv_freq)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def cos_sin(head_dim: int, base: float, length: int, offset: int,
            dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """compute_cos_sin, from the cache when it has the entry.

    Under torch.compile the tables are computed in the traced graph (inductor folds them;
    a global dict of tensors would only add guards and recompilations). Tensors made under
    inference_mode cannot be saved for a later backward pass, so they get their own key."""
    if torch.compiler.is_compiling():
        return compute_cos_sin(head_dim, base, length, offset, dtype, device)
    key = (head_dim, float(base), length, offset, dtype, torch.device(device),
           torch.is_inference_mode_enabled())
    entry = _cache.get(key)
    if entry is None:
        with torch.no_grad():
            entry = compute_cos_sin(head_dim, base, length, offset, dtype, device)
        while len(_cache) >= MAX_ENTRIES:
            _cache.pop(next(iter(_cache)), None)
        _cache[key] = entry
    return entry


def clear_cache() -> None:
    _cache.clear()
