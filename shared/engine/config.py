"""Typed, strict run configs: YAML -> dataclasses.

A config file has the sections `family` (which model), `model` (the family's spec),
`data` (the family's data config), `train` and `hardware`; and, for a family of your own,
`family_module` (the module that registers it, docs/adding-a-family.md). Unknown keys,
wrong types and impossible values raise ConfigError with one line that names the key and
the fix. `section.key=value` overrides
from the command line are parsed as YAML scalars and applied before validation.
"""
from __future__ import annotations

import difflib
import math
import os
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from shared.errors import ConfigError, SpecError
from shared import ranges as R
from shared.ranges import out_of_range
from shared.registry import get_family, import_family_module


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 1337
    batch_size: int = 8                    # micro-batch: sequences per forward/backward
    gradient_accumulation_steps: int = 1   # micro-batches per optimizer step
    seq_length: int = 0                    # tokens per training sequence; 0: model.max_seq_length
    max_steps: int = 1000
    learning_rate: float = 3e-4
    min_lr: float = 3e-5
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    max_grad_norm: float = 1.0             # 0 disables clipping
    gradient_checkpointing: bool = False
    precision: str = "fp32"                # fp32 | bf16 | fp16 (fp16: torch CUDA only)
    compile: bool = False
    cpu_streams: int = 0                   # MLX on a CPU: parallel parts per micro-batch; 0: one per core
    parallel: str = "ddp"                  # several ranks: ddp (replicas) | fsdp (torch: FSDP2 shards)
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 20
    save_every: int = 500
    keep_last: int = 3
    max_bad_steps: int = 5                 # stop after this many non-finite steps in a row
    # Start a new run from weights (step 0, this config's optimizer and schedule): a checkpoint
    # or run directory of the same family from either backend, or what the family imports
    # (the LM: a Hugging Face Llama directory). init_exclude: name patterns (fnmatch, e.g.
    # "output.*") kept at their initial values.
    init_from: str = ""
    init_exclude: list[str] = field(default_factory=list)
    # Experiment tracking: any of tensorboard, wandb, trackio (shared/engine/tracking.py), fed
    # the rows of metrics.jsonl; each needs its pip extra, e.g. pip install 'workbench[wandb]'.
    report_to: list[str] = field(default_factory=list)

    # Valid ranges (shared/ranges.py); cross-key rules (min_lr <= learning_rate) in validate.
    RANGES = {
        "seed": R.SEED, "batch_size": R.at_least(1, 1 << 16),
        "gradient_accumulation_steps": R.at_least(1, 1 << 16),
        "seq_length": R.at_least(0, R.MAX_SEQ), "max_steps": R.at_least(1, R.MAX_STEPS),
        "learning_rate": R.positive(), "min_lr": R.at_least(0.0),
        "warmup_steps": R.at_least(0, R.MAX_STEPS), "weight_decay": R.at_least(0.0),
        "beta1": R.FRACTION, "beta2": R.FRACTION, "eps": R.EPS,
        "max_grad_norm": R.at_least(0.0), "cpu_streams": R.at_least(0, 1024),
        "log_every": R.at_least(1, R.MAX_STEPS), "eval_every": R.at_least(1, R.MAX_STEPS),
        "eval_batches": R.at_least(1, 100_000), "save_every": R.at_least(1, R.MAX_STEPS),
        "keep_last": R.at_least(1, 1_000_000), "max_bad_steps": R.at_least(1, 1_000_000),
    }

    def validate(self):
        """The rules between keys (each key's own range is in RANGES)."""
        if not self.min_lr <= self.learning_rate:
            raise ConfigError(f"train.min_lr must be in [0, learning_rate={self.learning_rate}], "
                              f"got {self.min_lr}")
        if self.parallel not in ("ddp", "fsdp"):
            raise ConfigError(f"train.parallel must be ddp or fsdp, got {self.parallel!r}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"train.precision must be fp32, bf16 or fp16, got {self.precision!r}")
        from shared.engine.tracking import SINKS
        for name in self.report_to:
            if name not in SINKS:
                raise ConfigError(f"train.report_to: unknown sink {name!r}{_did_you_mean(name, SINKS)}; "
                                  f"choose from {', '.join(SINKS)}, e.g. train.report_to=[tensorboard]")
        if len(set(self.report_to)) < len(self.report_to):
            raise ConfigError(f"train.report_to names a sink twice: {self.report_to}")


@dataclass(frozen=True)
class HardwareConfig:
    device: str = "cpu"   # a profile name (see shared/planner/hardware.py); informs the planner

    def validate(self):
        from shared.planner.hardware import get_profile
        try:
            get_profile(self.device)
        except ValueError as e:
            raise ConfigError(f"hardware.device: {e}") from None


@dataclass(frozen=True)
class RunConfig:
    family: str
    model: typing.Any                       # the family's spec
    data: typing.Any                        # the family's data config
    train: TrainConfig = field(default_factory=TrainConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    family_module: str = ""                 # the module that registers a family of one's own

    @property
    def seq_length(self) -> int:
        """Tokens per training sequence (LM family)."""
        return self.train.seq_length or self.model.max_seq_length

    def to_dict(self) -> dict:
        plugin = {"family_module": self.family_module} if self.family_module else {}
        return {"family": self.family, **plugin, "model": asdict(self.model),
                "data": asdict(self.data), "train": asdict(self.train),
                "hardware": asdict(self.hardware)}


# The sections every family shares; `model` and `data` are the family's own (shared/registry.py).
SECTIONS = {"train": TrainConfig, "hardware": HardwareConfig}
DEFAULT_FAMILY = "lm"


def _did_you_mean(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(value, annotation, where: str):
    """Check `value` against a dataclass field type; ints are accepted for floats."""
    hint = typing.get_origin(annotation) or annotation
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (float, int) and isinstance(value, str):
        try:    # YAML 1.1 reads 1e-4 (no dot) as a string
            value = float(value)
        except ValueError:
            pass
        else:
            if hint is float:
                return value
    if hint is int and isinstance(value, float):
        # 1e3, 1.0e+3: an integral float is that integer; 2.5 is not an integer.
        if math.isfinite(value) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if hint is tuple:  # e.g. tuple[int, int]: YAML gives a list
        kinds = [k for k in typing.get_args(annotation) if k is not Ellipsis]
        if not isinstance(value, (list, tuple)) or (Ellipsis not in typing.get_args(annotation)
                                                     and len(value) != len(kinds)):
            raise ConfigError(f"{where} must be a list of {len(kinds)} values, got {value!r}")
        return tuple(_coerce(v, kinds[min(i, len(kinds) - 1)], f"{where}[{i}]") for i, v in enumerate(value))
    if hint in (list, typing.List):
        if not isinstance(value, list):
            value = [value] if isinstance(value, str) else value
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {type(value).__name__} {value!r}")
        return [str(v) for v in value]
    if hint in (int, float, str, bool):
        ok = isinstance(value, hint) and not (hint is int and isinstance(value, bool))
        if not ok:
            raise ConfigError(f"{where} must be {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls, values: dict, section: str):
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"section {section!r} must be a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown key {section}.{key}{_did_you_mean(key, known)}")
        kwargs[key] = _coerce(value, hints[key], f"{section}.{key}")
    # Before the dataclass is built: a huge value could hang its own checks (shared/ranges.py).
    problem = out_of_range(cls, kwargs, section)
    if problem:
        raise ConfigError(problem)
    try:
        return cls(**kwargs)
    except SpecError as e:
        raise ConfigError(str(e)) from None


build_section = _build   # a checkpoint's model section is checked as a user's is


def parse_override(text: str) -> tuple[str, str, object]:
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override {text!r} must look like section.key=value, e.g. train.batch_size=4")
    path, raw = text.split("=", 1)
    section, key = path.split(".", 1)
    try:
        return section, key, yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML "
                          f"({getattr(e, 'problem', None) or e}); quote it or fix the brackets") from None


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def cpu_parts(train: TrainConfig, family: str) -> int:
    """How many parts MLX splits each micro-batch into when it trains on a CPU, each part on
    a stream (and thread) of its own (mlx_models/trainer.py): train.cpu_streams, or when 0
    one per core (one for a family where splitting does not pay), at most one per example."""
    auto = available_cores() if get_family(family).split_by_default else 1
    return max(1, min(train.cpu_streams or auto, train.batch_size))


def config_from_dict(raw: dict, overrides: list[str] = ()) -> RunConfig:
    if not isinstance(raw, dict):
        raise ConfigError("a config file must be a YAML mapping with sections family, model, "
                          "data, train, hardware")
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for text in overrides:
        section, key, value = parse_override(text)
        if section not in ("model", "data", *SECTIONS):
            raise ConfigError(f"unknown section {section!r} in override {text!r}"
                              f"{_did_you_mean(section, ['model', 'data', *SECTIONS])}")
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raw[section] = {}
        raw[section][key] = value
    known_top = {"family", "family_module", "model", "data", *SECTIONS}
    for key in raw:
        if key not in known_top:
            raise ConfigError(f"unknown section {key!r}{_did_you_mean(key, known_top)}; "
                              f"sections are: {', '.join(sorted(known_top))}")
    module = raw.get("family_module") or ""
    if not isinstance(module, str):
        raise ConfigError(f"family_module must be a Python module name, got {module!r}")
    try:
        if module:
            import_family_module(module)
        family = get_family(raw.get("family", DEFAULT_FAMILY))
    except SpecError as e:
        raise ConfigError(str(e)) from None
    model = _build(family.spec_class, raw.get("model"), "model")
    classes = {"data": family.data_config, **SECTIONS}
    sections = {name: _build(cls, raw.get(name), name) for name, cls in classes.items()}
    for section in sections.values():
        section.validate()
    config = RunConfig(family=family.name, model=model, family_module=module, **sections)
    family.check_config(config)
    return config


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML config (None: the built-in tiny default) and apply overrides."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    if path.is_dir():
        inside = path / "config.yaml"
        hint = f"pass {inside}" if inside.is_file() else "pass a YAML file such as configs/tiny.yaml"
        raise ConfigError(f"{path} is a directory, not a config file; {hint}")
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    try:
        return config_from_dict(raw or {}, overrides)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


# The default run (no --config): the tiny LM in the repository's configs/.
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
