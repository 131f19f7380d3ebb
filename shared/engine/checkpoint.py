"""Framework-neutral checkpoints: a directory with the weights as safetensors in canonical
layout plus the resolved config.

    CKPT/
      model.safetensors   canonical names, shapes and dtypes (bf16 stays bf16)
      config.yaml         {"family": ..., "model": {...}, ...} -- everything needed to rebuild
      manifest.json       the size and sha256 of every other file, written last

Writes go to a temporary sibling directory (each file fsync'd) that is renamed into place,
so a crash never leaves a half-written checkpoint and never destroys the previous one.
Every load checks the files against manifest.json, so a damaged or edited file is an error
naming it, never a silently different model.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import fields as dataclass_fields
from pathlib import Path

import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy
import yaml

from shared.engine.durable import (fsync_dir, fsync_file, remove_leftovers, sha256_file,
                                   storage_error, temp_path, write_point)
from shared.errors import CheckpointError, SpecError
from shared.specs.base import ParamSpec

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "manifest.json"      # every other file's size and sha256, written last
MANIFEST_FORMAT = 1

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
def write_directory(directory: str | Path, files: dict[str, bytes | dict[str, np.ndarray]],
                    manifest: bool = True) -> Path:
    """Write a directory of files atomically: raw bytes, or arrays (written as
    safetensors), each fsync'd, then (with `manifest`) manifest.json with every file's size
    and sha256, written last. It is built in a hidden temporary sibling and renamed into
    place (replace_directory), so readers see the old directory or the complete new one,
    never a half-written one, and a failed write leaves the old one untouched."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(directory)
    shutil.rmtree(tmp, ignore_errors=True)    # a dead process of the same pid's (containers)
    try:
        tmp.mkdir()
        recorded = {}
        for name, content in files.items():
            write_point(f"writing {directory.name}/{name}")
            if isinstance(content, dict):
                # "format: pt" lets Hugging Face tools open the file too.
                save_safetensors(tmp / name, content, metadata={"format": "pt"})
            else:
                (tmp / name).write_bytes(content)
            fsync_file(tmp / name)
            recorded[name] = {"bytes": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)}
        if manifest:
            write_point(f"writing {directory.name}/{MANIFEST_FILE}")
            (tmp / MANIFEST_FILE).write_text(json.dumps({"format": MANIFEST_FORMAT, "files": recorded},
                                                        indent=1))
            fsync_file(tmp / MANIFEST_FILE)
        fsync_dir(tmp)
        replace_directory(tmp, directory)
    except (OSError, safetensors.SafetensorError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(e, OSError):
            e = OSError(None, str(e))
        raise storage_error(directory, e, "; the partial write was removed and every earlier "
                                          "checkpoint is intact") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def save_checkpoint(directory: str | Path, weights: dict[str, np.ndarray], config: dict,
                    extra_files: dict[str, bytes | dict[str, np.ndarray]] | None = None) -> Path:
    """Weights + resolved config (+ extra files), written atomically by write_directory."""
    files = {WEIGHTS_FILE: weights, CONFIG_FILE: yaml.safe_dump(config, sort_keys=False).encode()}
    return write_directory(directory, files | (extra_files or {}))


def previous_path(target: Path) -> Path:
    """Where replace_directory keeps the old `target` while the new one is renamed in."""
    return target.with_name(f".{target.name}.previous")


def replace_directory(new: Path, target: Path) -> None:
    """Rename `new` to `target`. An existing target is first renamed to its previous_path
    and removed only after the new one is in place: at every moment one of the two names
    holds a complete directory, which readers (resolve_named) and the next start
    (recover_checkpoints) find."""
    previous = previous_path(target)
    if previous.exists() and target.exists():   # left by an earlier swap that was killed
        shutil.rmtree(previous)
    if target.exists():
        write_point(f"moving {target.name} aside")
        os.replace(target, previous)
        fsync_dir(target.parent)
    write_point(f"renaming the new {target.name} into place")
    os.replace(new, target)
    fsync_dir(target.parent)
    shutil.rmtree(previous, ignore_errors=True)


def is_checkpoint(path: Path) -> bool:
    return (path / WEIGHTS_FILE).is_file()


def resolve_named(path: Path) -> Path | None:
    """`path` if it holds a checkpoint, else the previous one a killed replace_directory left
    under previous_path(path), else None."""
    if is_checkpoint(path):
        return path
    previous = previous_path(path)
    if is_checkpoint(previous):
        return previous
    if path.name.startswith(".") and path.name.endswith(".previous"):
        # resolved before a run's start put it back under its own name (recover_checkpoints)
        restored = path.with_name(path.name[1:-len(".previous")])
        return restored if is_checkpoint(restored) else None
    return None


def recover_checkpoints(folder: Path) -> list[str]:
    """Tidy a run's checkpoints/ after a kill, before a run writes there again: remove the
    temporary folders of unfinished writes and put back any checkpoint a killed swap left
    under its previous name. Returns what was done, one line each."""
    done = [f"removed {p.name} (a checkpoint write that never finished)"
            for p in remove_leftovers(folder)]
    for previous in sorted(folder.glob(".*.previous")) if folder.is_dir() else []:
        target = folder / previous.name[1:-len(".previous")]
        if target.exists():
            shutil.rmtree(previous, ignore_errors=True)
        else:
            os.replace(previous, target)
            fsync_dir(folder)
            done.append(f"restored {target.name} (its replacement was interrupted)")
    return done


def completed_checkpoints(run_dir: Path) -> list[Path]:
    """A run directory's complete checkpoints (step_* and best, or a best a killed swap left
    under its previous name), oldest step first, best last."""
    folder = Path(run_dir) / "checkpoints"
    steps = [p for p in sorted(folder.glob("step_*")) if is_checkpoint(p)]
    best = resolve_named(folder / "best") if folder.is_dir() else None
    return steps + ([best] if best else [])


def step_of(ckpt: Path) -> int | None:
    """The step a checkpoint's name says (step_00000040 -> 40), None for other names."""
    name = ckpt.name
    if name.startswith("step_") and name[5:].isdigit():
        return int(name[5:])
    return None


def earlier_checkpoint_hint(ckpt: Path) -> str:
    """'; use the previous checkpoint, RUN/checkpoints/step_X' when the run has one."""
    ckpt = Path(ckpt)
    if ckpt.parent.name != "checkpoints":
        return "; copy or save the checkpoint again"
    mine = step_of(ckpt)
    earlier = [p for p in sorted(ckpt.parent.glob("step_*"), reverse=True)
               if p != ckpt and is_checkpoint(p) and (mine is None or (step_of(p) or 0) < mine)]
    if earlier:
        return f"; use the previous checkpoint, {earlier[0]}"
    return "; the run has no earlier checkpoint: start it again"


_verified: set[tuple] = set()   # (folder, manifest's mtime and size): hashed once per process
_noted_unverifiable: set[Path] = set()


def verify_checkpoint(directory: str | Path) -> None:
    """Check every file the checkpoint's manifest.json lists against its recorded size and
    sha256; one CheckpointError names the first file that differs and the checkpoint to use
    instead. A checkpoint saved before manifests existed is noted once and loaded as it is."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        if directory not in _noted_unverifiable:
            _noted_unverifiable.add(directory)
            print(f"note: {directory} has no {MANIFEST_FILE} (saved by an older version): its "
                  f"files cannot be checked for damage", file=sys.stderr)
        return
    stat = manifest_path.stat()
    memo = (directory.resolve(), stat.st_mtime_ns, stat.st_size)
    if memo in _verified:
        return
    hint = earlier_checkpoint_hint(directory)
    try:
        files = json.loads(manifest_path.read_text())["files"]
        entries = [(str(name), int(e["bytes"]), str(e["sha256"])) for name, e in files.items()]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CheckpointError(f"{manifest_path} is damaged (not the manifest this program "
                              f"writes){hint}") from None
    for name, size, digest in entries:
        path = directory / name
        if Path(name).name != name or not path.is_file():
            raise CheckpointError(f"{path} is missing (the checkpoint's {MANIFEST_FILE} lists "
                                  f"it){hint}")
        if path.stat().st_size != size:
            raise CheckpointError(f"{path} differs from the file that was saved ({path.stat().st_size} "
                                  f"bytes, {size} when saved): it was cut short, edited or "
                                  f"damaged{hint}")
        if sha256_file(path) != digest:
            raise CheckpointError(f"{path} differs from the file that was saved (its sha256 does "
                                  f"not match {MANIFEST_FILE}): it was edited or damaged{hint}")
    _verified.add(memo)


def load_checkpoint(directory: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    directory = Path(directory)
    if not is_checkpoint(directory):
        raise CheckpointError(not_a_checkpoint(directory))
    for required in (WEIGHTS_FILE, CONFIG_FILE):
        if not (directory / required).is_file():
            raise CheckpointError(f"checkpoint {directory} has no {required}; a checkpoint "
                                  f"directory holds {WEIGHTS_FILE} and {CONFIG_FILE}")
    verify_checkpoint(directory)
    try:
        config = yaml.safe_load((directory / CONFIG_FILE).read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{directory / CONFIG_FILE} is not valid YAML: {e}") from None
    if not isinstance(config, dict) or "family" not in config or "model" not in config:
        raise CheckpointError(f"{directory / CONFIG_FILE} must hold 'family' and 'model' keys")
    return load_safetensors(directory / WEIGHTS_FILE), config


def not_a_checkpoint(path: Path) -> str:
    """Why `path` is no checkpoint or run directory, in the words that fit what is there."""
    if not path.exists():
        return f"{path} does not exist: no such checkpoint or run directory"
    if not path.is_dir():
        return (f"{path} is a file, not a checkpoint: a checkpoint is a directory holding "
                f"{WEIGHTS_FILE} (or pass a run directory)")
    return (f"{path} is a directory but holds no checkpoint: it has no {WEIGHTS_FILE} and no "
            f"checkpoints/ of a run; pass a checkpoint directory or a run directory")


def check_weights(weights: dict[str, np.ndarray], manifest: list[ParamSpec],
                  source: str = "checkpoint") -> None:
    """Raise CheckpointError listing every missing, unexpected and mis-shaped parameter."""
    expected = {p.name: p.shape for p in manifest}
    missing = [n for n in expected if n not in weights]
    unexpected = [n for n in weights if n not in expected]
    wrong = [f"{n}: {source} has {tuple(weights[n].shape)}, model expects {expected[n]}"
             for n in expected if n in weights and tuple(weights[n].shape) != expected[n]]
    # Parameters are floating point (bf16 is ml_dtypes' kind "V"); an integer or boolean
    # tensor would be cast to numbers that mean nothing (an edited header, say).
    not_float = [f"{n}: {source} stores it as {weights[n].dtype}, not a floating-point type"
                 for n in expected if n in weights and weights[n].dtype.kind not in "fV"]
    if not (missing or unexpected or wrong or not_float):
        return
    dtypes = f", {len(not_float)} wrong dtype" if not_float else ""
    lines = [f"{source} does not match the model config ({len(missing)} missing, "
             f"{len(unexpected)} unexpected, {len(wrong)} wrong shape{dtypes}):"]
    for kind, names in (("missing", missing), ("unexpected", unexpected), ("shape", wrong),
                        ("dtype", not_float)):
        lines += [f"  {kind}: {n}" for n in names[:20]]
        if len(names) > 20:
            lines.append(f"  ... and {len(names) - 20} more ({kind})")
    lines.append("Fix: build the model from the checkpoint's own config.yaml, or point at a "
                 "checkpoint trained with this model config.")
    raise CheckpointError("\n".join(lines))


def open_checkpoint(directory: str | Path):
    """Load a checkpoint and rebuild its spec: returns (family, spec, manifest, weights,
    config). Its model section is checked as a user's config is (types, ranges), and the
    weights against the manifest the config implies."""
    from shared.engine.config import ConfigError, build_section
    from shared.registry import families, get_family, import_family_module

    weights, config = load_checkpoint(directory)
    where = Path(directory) / CONFIG_FILE
    try:
        if config.get("family_module"):
            import_family_module(config["family_module"])
        family = get_family(config["family"])
    except (SpecError, TypeError) as e:
        raise CheckpointError(f"{where}: {e}{earlier_checkpoint_hint(Path(directory))}") from None
    model = config["model"]
    try:
        spec = build_section(family.spec_class, model, "model")
    except (ConfigError, SpecError, TypeError) as e:
        # An edited `family` shows as keys unknown to it: say which family they belong to.
        keys = set(model) if isinstance(model, dict) else set()
        owners = [f.name for f in families().values() if f.name != family.name
                  and keys and keys <= {x.name for x in dataclass_fields(f.spec_class)}]
        why = (f"its model section is a {owners[0]!r} model's, not a {family.name!r} one's: "
               f"the family was changed" if owners else str(e))
        raise CheckpointError(f"{where}: {why}{earlier_checkpoint_hint(Path(directory))}") from None
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
    checkpoints/best resolves to its newest step. A best (or any checkpoint) whose
    replacement was interrupted resolves to the complete one it kept (replace_directory)."""
    path = Path(path)
    named = resolve_named(path)
    if named is not None:
        return named
    best = resolve_named(path / "checkpoints" / "best")
    if best is not None:
        return best
    steps = [p for p in sorted((path / "checkpoints").glob("step_*")) if is_checkpoint(p)]
    if steps:
        if report is not None:
            print(f"{path} has no checkpoints/best; using its newest checkpoint, {steps[-1]}",
                  file=report)
        return steps[-1]
    raise CheckpointError(not_a_checkpoint(path))
