"""Model families as data: everything family-specific, registered once by the family.

A family is a `Family` record, made and registered by the family's own module
(`shared/families/<name>.py` for the four that ship; any importable module for yours,
named by the config's `family_module`, see docs/adding-a-family.md). Every other part of
the workbench -- configs, the training loop, the planner, the bench, checkpoints, both
backends -- looks the family up here by the name a config or checkpoint carries, and never
compares that name itself.

The framework-neutral parts are plain callables. The backends' parts are import paths
("mlx_models.lm:LanguageModel"), imported only by the backend that asks for them, so
shared/ never imports a framework.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, fields
from typing import Any, Callable

import numpy as np

from shared.errors import SpecError
from shared.specs.base import ParamSpec, split_examples

# The families that ship, each registered by importing its module.
BUILTIN_MODULES = ("shared.families.lm", "shared.families.tflocoformer",
                   "shared.families.bandsplit", "shared.families.echostream")


def _no_check(config) -> None:
    return None


@dataclass(frozen=True)
class Family:
    name: str
    # --- the model, framework-neutrally (shared/specs/base.py)
    spec_class: type                                        # frozen dataclass: the `model:` section
    manifest: Callable[[Any], list[ParamSpec]]              # spec -> every parameter
    init_weights: Callable[[Any, int], dict[str, np.ndarray]]   # (spec, seed) -> canonical numpy
    param_counts: Callable[[Any], dict[str, int]]           # spec -> {"total": ..., ...}
    # --- per backend: "module:ModelClass". The module also holds `loss(model, batch)` and,
    # for a weighted sum of terms, `loss_terms(model, batch) -> {"loss": total, term: value}`.
    backends: dict[str, str]
    # --- training (shared/engine)
    data_config: type                                       # frozen dataclass: the `data:` section
    task: Callable                                          # (config, out_dir, rank, world_size) -> Task
    random_batch: Callable                                  # (config, batch_size, rng) -> one micro-batch
    # --- the memory planner (shared/planner/core.py: MemoryModel)
    memory: Any
    # --- throughput: what one example holds, for the progress bar and the bench
    unit: str = "examples"                                  # "tokens", "audio_s", ...
    units_per_example: Callable[[Any], float] = lambda config: 1.0
    flops_per_unit: Callable[[Any], float] | None = None    # training FLOPs (bench MFU); None: not modelled
    # --- what the inference CLIs and the bench can do with a trained model:
    # "generation" (generate), "separation" (separate), "streaming" (stream), or None
    inference: str | None = None
    bench_configs: tuple[str, ...] = ()                     # what `bench/run.py --models NAME` runs
    # Cross-section checks of a whole config, raising ConfigError (e.g. seq_length <= max_seq_length).
    check_config: Callable[[Any], None] = _no_check
    # Weights in another format that train.init_from may name: directory -> (spec, canonical
    # weights), or None where the directory is not in that format (the LM: Hugging Face Llama).
    import_weights: Callable[[Any], Any] | None = None
    # A numpy batch in parts whose losses, each weighted by the part's share of the examples,
    # add up to the whole batch's loss (MLX's parallel CPU streams rely on it). Plain
    # splitting does where the loss is a mean over examples; EchoStream's parts carry the
    # batch's token count for its token-mean MT term.
    batch_parts: Callable[[Any, int], list] = split_examples
    # Whether train.cpu_streams=0 (auto) splits this family's batches: a step made of many
    # tiny ops (EchoStream's CTC loops) costs more to build part by part than the parts
    # save (EchoStream demo, 2 cores: 2.2 steps/s on one stream, 1.6 on two).
    split_by_default: bool = True
    # What an evaluation shows besides numbers, for the tracking sinks that can (TensorBoard,
    # W&B, trackio: shared/engine/tracking.py AudioClip / TextTable): (task, trainer) -> media.
    # Called after each evaluation only when train.report_to has such a sink.
    eval_media: Callable[[Any, Any], list] | None = None

    def backend(self, backend: str) -> "BackendModel":
        """The family's model class and losses on `backend` ("mlx" or "torch")."""
        if backend not in self.backends:
            raise SpecError(f"family {self.name!r} has no {backend} model; it has: "
                            f"{', '.join(self.backends) or 'none'}")
        module_name, _, class_name = self.backends[backend].partition(":")
        module = importlib.import_module(module_name)
        return BackendModel(getattr(module, class_name), module.loss,
                            getattr(module, "loss_terms", None))


@dataclass(frozen=True)
class BackendModel:
    model_class: type
    loss: Callable
    loss_terms: Callable | None     # None: the loss is one term


_FAMILIES: dict[str, Family] = {}
_builtins_loaded = False


def register(family: Family) -> Family:
    """Make a family known by its name. Two different specs under one name is an error
    (two families would answer to one config); registering the same one again is not."""
    known = _FAMILIES.get(family.name)
    if known is not None and known.spec_class.__qualname__ != family.spec_class.__qualname__:
        raise SpecError(f"family {family.name!r} is registered twice, with {known.spec_class.__name__} "
                        f"and {family.spec_class.__name__}; give one of them another name")
    _FAMILIES[family.name] = family
    return family


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for name in BUILTIN_MODULES:
            importlib.import_module(name)


def families() -> dict[str, Family]:
    """Every registered family by name: the built-in ones, then any registered since."""
    _load_builtins()
    return dict(_FAMILIES)


def import_family_module(module: str) -> None:
    """Import the module that registers a family of one's own (a config's `family_module`),
    from the current directory or the path, as `python -m` would find it."""
    import os
    import sys

    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise SpecError(f"family_module {module!r} cannot be imported ({e}); it must be a Python "
                        f"module in the current directory or on PYTHONPATH that calls "
                        f"shared.registry.register") from None


def get_family(name: str) -> Family:
    known = families()
    if name not in known:
        raise SpecError(f"unknown model family {name!r}; known: {', '.join(known)} (a family of "
                        f"your own: set family_module to the module that registers it)")
    return known[name]


def spec_from_dict(family: str, values: dict) -> Any:
    """Build a family's spec from plain data (a config section or a checkpoint's config),
    rejecting unknown keys by name."""
    cls = get_family(family).spec_class
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SpecError(f"unknown model key(s) for family {family!r}: {', '.join(unknown)}; "
                        f"known keys: {', '.join(sorted(known))}")
    return cls(**values)


def family_of(spec: Any) -> str:
    for fam in families().values():
        if isinstance(spec, fam.spec_class):
            return fam.name
    raise SpecError(f"{type(spec).__name__} is not a registered model spec")
