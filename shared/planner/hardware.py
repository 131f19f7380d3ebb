"""Hardware profiles: what a device offers, for the memory planner, the bench's MFU and
per-device defaults. Peak FLOP/s are vendor figures for dense math (None: not known)."""
from __future__ import annotations

from dataclasses import dataclass

GB = 1e9


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    description: str
    memory_bytes: float          # what training may use: unified memory is shared with the OS
    bandwidth_bytes_s: float | None
    peak_flops_bf16: float | None
    peak_flops_fp32: float | None
    backend: str                 # the backend that runs best here: mlx | torch
    precision: str               # default train.precision
    compile: bool                # default train.compile


PROFILES = {p.name: p for p in [
    # Apple silicon: Metal may wire about 2/3 (8 GB) to 3/4 (36 GB) of unified memory.
    HardwareProfile("m2_8gb", "MacBook Air M2, 8 GB unified memory", 5.3 * GB, 100 * GB,
                    3.6e12, 3.6e12, "mlx", "fp32", True),
    HardwareProfile("m4max_36gb", "MacBook Pro M4 Max (32-core GPU), 36 GB", 27 * GB, 410 * GB,
                    14.7e12, 14.7e12, "mlx", "bf16", True),
    HardwareProfile("rtx_pro_6000_96gb", "NVIDIA RTX PRO 6000 Blackwell, 96 GB", 95.6 * GB,
                    1792 * GB, 503.8e12, 125e12, "torch", "bf16", True),
    HardwareProfile("rtx_32gb", "NVIDIA 32 GB card (RTX 5090 figures)", 31.4 * GB, 1792 * GB,
                    209.5e12, 104.8e12, "torch", "bf16", True),
    HardwareProfile("h100_80gb", "NVIDIA H100 SXM, 80 GB", 79.1 * GB, 3350 * GB,
                    989e12, 67e12, "torch", "bf16", True),
    # H200 SXM: the H100's compute (989 TFLOP/s bf16 dense, 67 fp32) with 141 GB of HBM3e at
    # 4.8 TB/s; usable memory counted as for the H100 (79.1 of 80).
    HardwareProfile("h200_141gb", "NVIDIA H200 SXM, 141 GB", 139.4 * GB, 4800 * GB,
                    989e12, 67e12, "torch", "bf16", True),
    HardwareProfile("cpu", "CPU only (this class of machine: 2 cores, 24 GB)", 20 * GB, None,
                    None, None, "torch", "fp32", False),
]}


def get_profile(name: str) -> HardwareProfile:
    if name not in PROFILES:
        import difflib
        close = difflib.get_close_matches(name, PROFILES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown device profile {name!r}{hint}; known: {', '.join(PROFILES)}")
    return PROFILES[name]
