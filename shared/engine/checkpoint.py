"""Framework-neutral checkpoints: a directory with the weights as safetensors in canonical
layout plus the resolved config.

    CKPT/
      model.safetensors   canonical names, shapes and dtypes (bf16 stays bf16)
      config.yaml         {"family": ..., "model": {...}, ...} -- everything needed to rebuild

Writes go to a temporary sibling directory that is renamed into place, so a crash never
leaves a half-written checkpoint and never destroys the previous one.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy
import yaml

from shared.errors import CheckpointError, SpecError
from shared.specs.base import ParamSpec

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"

_DTYPE_TO_ST = {
    np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.float64): "F64",
    np.dtype(ml_dtypes.bfloat16): "BF16", np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32", np.dtype(np.int16): "I16", np.dtype(np.int8): "I8",
    np.dtype(np.uint64): "U64", np.dtype(np.uint32): "U32", np.dtype(np.uint16): "U16",
    np.dtype(np.uint8): "U8", np.dtype(np.bool_): "BOOL",
}
_ST_TO_DTYPE = {v: k for k, v in _DTYPE_TO_ST.items()}


# ---------------------------------------------------------------- safetensors files
def save_safetensors(path: str | Path, tensors: dict[str, np.ndarray],
                     metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file through safetensors' own numpy API (bf16 arrays of
    ml_dtypes are written as BF16, bit for bit).

    The library writes an array's memory as it lies, so every array is made C-contiguous
    first (a transposed view would otherwise be stored with the wrong element order)."""
    arrays = {}
    for name, array in tensors.items():
        array = np.asarray(array, order="C")  # (ascontiguousarray would turn 0-d into 1-d)
        if array.dtype not in _DTYPE_TO_ST:
            raise CheckpointError(f"cannot store {name!r}: unsupported dtype {array.dtype}")
        arrays[name] = array
    meta = {str(k): str(v) for k, v in metadata.items()} if metadata else None
    safetensors.numpy.save_file(arrays, path, metadata=meta)


def load_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Read a safetensors file into numpy arrays with safetensors' own reader, which gives
    BF16 as ml_dtypes.bfloat16 (ml_dtypes is imported above, so numpy knows the name).
    A damaged or unreadable file raises CheckpointError naming it."""
    path = Path(path)
    def unreadable(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: not a readable safetensors file ({why}); "
                               f"re-save it or point at another checkpoint")
    try:
        with safetensors.safe_open(str(path), framework="np") as f:
            names = list(f.keys())
            for name in names:
                dtype = f.get_slice(name).get_dtype()
                if dtype not in _ST_TO_DTYPE:
                    raise unreadable(f"tensor {name!r} has unsupported dtype {dtype}")
            return {name: f.get_tensor(name) for name in names}
    except (safetensors.SafetensorError, OSError) as e:
        raise unreadable(str(e)) from None


# ---------------------------------------------------------------- checkpoint directories
def write_directory(directory: str | Path, files: dict[str, bytes | dict[str, np.ndarray]]) -> Path:
    """Write a directory of files atomically: raw bytes, or arrays (written as
    safetensors). It is built in a temporary sibling and renamed into place, so readers
    see the old directory or the complete new one, never a half-written one, and a failed
    write leaves the old one untouched."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; a checkpoint gets the usual mode
    try:
        for name, content in files.items():
            if isinstance(content, dict):
                # "format: pt" lets Hugging Face tools open the file too.
                save_safetensors(tmp / name, content, metadata={"format": "pt"})
            else:
                (tmp / name).write_bytes(content)
        _replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def save_checkpoint(directory: str | Path, weights: dict[str, np.ndarray], config: dict,
                    extra_files: dict[str, bytes | dict[str, np.ndarray]] | None = None) -> Path:
    """Weights + resolved config (+ extra files), written atomically by write_directory."""
    files = {WEIGHTS_FILE: weights, CONFIG_FILE: yaml.safe_dump(config, sort_keys=False).encode()}
    return write_directory(directory, files | (extra_files or {}))


def _replace_dir(new: Path, target: Path) -> None:
    if not target.exists():
        os.replace(new, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(directory: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {directory} does not exist or is not a directory")
    for required in (WEIGHTS_FILE, CONFIG_FILE):
        if not (directory / required).is_file():
            raise CheckpointError(f"checkpoint {directory} has no {required}; a checkpoint "
                                  f"directory holds {WEIGHTS_FILE} and {CONFIG_FILE}")
    try:
        config = yaml.safe_load((directory / CONFIG_FILE).read_text())
    except yaml.YAMLError as e:
        raise CheckpointError(f"{directory / CONFIG_FILE} is not valid YAML: {e}") from None
    if not isinstance(config, dict) or "family" not in config or "model" not in config:
        raise CheckpointError(f"{directory / CONFIG_FILE} must hold 'family' and 'model' keys")
    return load_safetensors(directory / WEIGHTS_FILE), config


def check_weights(weights: dict[str, np.ndarray], manifest: list[ParamSpec],
                  source: str = "checkpoint") -> None:
    """Raise CheckpointError listing every missing, unexpected and mis-shaped parameter."""
    expected = {p.name: p.shape for p in manifest}
    missing = [n for n in expected if n not in weights]
    unexpected = [n for n in weights if n not in expected]
    wrong = [f"{n}: {source} has {tuple(weights[n].shape)}, model expects {expected[n]}"
             for n in expected if n in weights and tuple(weights[n].shape) != expected[n]]
    if not (missing or unexpected or wrong):
        return
    lines = [f"{source} does not match the model config "
             f"({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} wrong shape):"]
    for kind, names in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)):
        lines += [f"  {kind}: {n}" for n in names[:20]]
        if len(names) > 20:
            lines.append(f"  ... and {len(names) - 20} more ({kind})")
    lines.append("Fix: build the model from the checkpoint's own config.yaml, or point at a "
                 "checkpoint trained with this model config.")
    raise CheckpointError("\n".join(lines))


def open_checkpoint(directory: str | Path):
    """Load a checkpoint and rebuild its spec: returns (family, spec, manifest, weights,
    config). Weights are validated against the manifest the config implies."""
    from shared.registry import get_family, import_family_module, spec_from_dict

    weights, config = load_checkpoint(directory)
    try:
        if config.get("family_module"):
            import_family_module(config["family_module"])
        family = get_family(config["family"])
        spec = spec_from_dict(family.name, config["model"])
    except (SpecError, TypeError) as e:
        raise CheckpointError(f"{Path(directory) / CONFIG_FILE}: {e}") from None
    manifest = family.manifest(spec)
    check_weights(weights, manifest, source=f"checkpoint {directory}")
    return family.name, spec, manifest, weights, config


def checkpoint_config(spec, extra: dict | None = None) -> dict:
    """The config.yaml content for a model spec (plus any resolved training config). A
    family of one's own also names its module, which loading imports to register it."""
    from dataclasses import asdict

    from shared.registry import family_of

    module = type(spec).__module__       # a spec file registers its family (docs/adding-a-family.md)
    plugin = {} if module.startswith("shared.") else {"family_module": module}
    return {"family": family_of(spec), **plugin, "model": asdict(spec), **(extra or {})}


def resolve_checkpoint(path: str | Path, report=None) -> Path:
    """A checkpoint directory, or a run directory (its best, else newest, checkpoint).
    `report` (a text stream, e.g. sys.stderr): where to say so when a run directory without
    checkpoints/best resolves to its newest step."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    best = path / "checkpoints" / "best"
    for candidate in [best, *sorted((path / "checkpoints").glob("step_*"))[::-1]]:
        if (candidate / "model.safetensors").is_file():
            if candidate != best and report is not None:
                print(f"{path} has no checkpoints/best; using its newest checkpoint, {candidate}",
                      file=report)
            return candidate
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run directory")
    raise CheckpointError(f"{path} holds no checkpoint (model.safetensors); pass a checkpoint "
                          f"directory or a run directory")
