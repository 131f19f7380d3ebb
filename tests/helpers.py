"""Helpers the test files share."""
import json

import numpy as np
import pytest
import torch

from mlx_models.trainer import Trainer as MLXTrainer
from torch_models.trainer import Trainer as TorchTrainer

# Trainer classes by backend; torch pinned to the CPU so tests match on any machine.
TRAINERS = {"mlx": MLXTrainer, "torch": lambda *a, **k: TorchTrainer(*a, **k, device="cpu")}


def metric_rows(run_dir) -> list[dict]:
    """A run directory's metrics.jsonl, one dict per row."""
    return [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]


def rel_err(a, b) -> float:
    """max |a - b| / max |b|: the error relative to the tensor's scale."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def stems_batch(spec, size: int, seed: int, length: int, sample_rate: int) -> dict[str, np.ndarray]:
    """Four stereo 'stems' (tones of different pitch over noise, different levels) and
    their sum as the mixture, so a separator has something to learn."""
    rng = np.random.default_rng(seed)
    t = np.arange(length) / sample_rate
    stems = []
    for s in range(spec.n_sources):
        f = rng.uniform(100, 400) * (s + 1)
        phase = rng.uniform(0, 2 * np.pi, (size, spec.audio_channels, 1))
        stems.append(0.4 / (s + 1) * np.sin(2 * np.pi * f * t + phase)
                     + 0.02 * rng.standard_normal((size, spec.audio_channels, length)))
    sources = np.stack(stems, axis=1).astype(np.float32)     # (B, S, C, T)
    return {"mixture": sources.sum(axis=1), "sources": sources}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny tensors: a second torch thread buys nothing, and on a busy two-core machine its
    barrier waits made torch steps up to 10x slower. Imported by a test module, it applies
    to that module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
