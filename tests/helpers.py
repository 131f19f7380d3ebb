"""Helpers the test files share."""
import json

import mlx.core as mx
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten

import mlx_models.models as mlx_models_io
import torch_models.models as torch_models_io
from mlx_models.trainer import Trainer as MLXTrainer
from shared.engine.checkpoint import load_checkpoint
from shared.engine.layout import backend_shape
from torch_models.trainer import Trainer as TorchTrainer

class CPUTorchTrainer(TorchTrainer):
    """torch pinned to the CPU, so tests match on any machine."""
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs, device="cpu")


# Trainer classes by backend.
TRAINERS = {"mlx": MLXTrainer, "torch": CPUTorchTrainer}


def metric_rows(run_dir) -> list[dict]:
    """A run directory's metrics.jsonl, one dict per row."""
    return [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]


def rel_err(a, b) -> float:
    """max |a - b| / max |b|: the error relative to the tensor's scale (complex values are
    compared as complex numbers, real and imaginary parts both)."""
    dtype = np.complex128 if np.iscomplexobj(a) or np.iscomplexobj(b) else np.float64
    a, b = np.asarray(a, dtype), np.asarray(b, dtype)
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


def bits(weights) -> dict[str, bytes]:
    """Each array's raw bytes: equal only if bit-identical (NaN payloads and -0.0 too)."""
    return {k: np.ascontiguousarray(v).view(np.uint8).tobytes() for k, v in weights.items()}


def assert_trees_match_manifest(mlx_model, torch_model, manifest) -> None:
    """Both backends' parameter names and shapes are the manifest's, in each native layout."""
    mlx_tree = {k: tuple(v.shape) for k, v in tree_flatten(mlx_model.parameters())}
    torch_tree = {k: tuple(v.shape) for k, v in torch_model.named_parameters()}
    assert mlx_tree == {p.name: backend_shape(p, "mlx") for p in manifest}
    assert torch_tree == {p.name: backend_shape(p, "torch") for p in manifest}


def round_trip_mlx_torch_mlx(mlx_model, tmp_path):
    """Save an MLX model, load and save it with torch, load and save it with MLX again;
    both later checkpoints must hold the first one's weights bit for bit. Returns the
    first checkpoint's weights and config, the torch model and the MLX model loaded back."""
    mlx_models_io.save_model(mlx_model, tmp_path / "from_mlx")
    original, config = load_checkpoint(tmp_path / "from_mlx")
    torch_model, _ = torch_models_io.load_model(tmp_path / "from_mlx")
    torch_models_io.save_model(torch_model, tmp_path / "from_torch")
    mlx_again, _ = mlx_models_io.load_model(tmp_path / "from_torch")
    mlx_models_io.save_model(mlx_again, tmp_path / "back_to_mlx")
    for name in ("from_torch", "back_to_mlx"):
        assert bits(load_checkpoint(tmp_path / name)[0]) == bits(original), name
    return original, config, torch_model, mlx_again


def separator_outputs(spec, mixture: np.ndarray, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Both backends' separated waveforms of `mixture`, from the spec's initial weights."""
    mlx_model = mlx_models_io.build_model(spec, seed=seed)
    torch_model = torch_models_io.build_model(spec, seed=seed)
    with torch.no_grad():
        out_torch = torch_model(torch.from_numpy(mixture)).numpy()
    return np.array(mlx_model(mx.array(mixture))), out_torch
