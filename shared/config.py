"""Typed, strict run configs: YAML -> dataclasses.

A config file has the sections `family` (which model), `model` (the family's spec),
`data`, `train` and `hardware`. Unknown keys, wrong types and impossible values raise
ConfigError with one line that names the key and the fix. `section.key=value` overrides
from the command line are parsed as YAML scalars and applied before validation.
"""
from __future__ import annotations

import difflib
import os
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from shared.specs import FAMILIES, get_family
from shared.specs.base import SpecError


class ConfigError(ValueError):
    """A config problem; the message is one line naming the key and the fix."""


@dataclass(frozen=True)
class DataConfig:
    # Text files to train on. Empty: the built-in corpus that ships with the package.
    train_files: list[str] = field(default_factory=list)
    val_files: list[str] = field(default_factory=list)
    # SentencePiece model; empty: train one from the training text into the run directory.
    tokenizer: str = ""
    tokenizer_type: str = "bpe"         # bpe (Llama-compatible, exports to HF) | unigram
    val_fraction: float = 0.05          # held out from train_files when val_files is empty
    seed: int = 0

    def validate(self):
        if self.tokenizer_type not in ("unigram", "bpe"):
            raise ConfigError(f"data.tokenizer_type must be 'unigram' or 'bpe', got {self.tokenizer_type!r}")
        if not 0.0 < self.val_fraction < 0.5:
            raise ConfigError(f"data.val_fraction must be in (0, 0.5), got {self.val_fraction}")


@dataclass(frozen=True)
class AudioDataConfig:
    """Music separation data: a MUSDB18-HQ-layout root (see shared/data/musdb.py)."""
    # MUSDB18-HQ root (train/, test/). Empty: a synthetic demo set is generated into the
    # run directory (python -m shared.data.synth_musdb), so training works from a clone.
    root: str = ""
    sample_rate: int = 44100
    segment_seconds: float = 3.0
    remix: bool = True                 # stems of an example from different tracks
    gain_min: float = 0.25
    gain_max: float = 1.25
    channel_swap: bool = True
    min_rms: float = 1e-3              # redraw near-silent stem segments
    val_tracks: int = 0                # validation tracks to score (0: all)
    val_segments: int = 8              # fixed validation segments for val_loss
    synth_tracks: int = 8              # size of the generated demo set
    synth_seconds: float = 12.0
    seed: int = 0

    def validate(self):
        if self.sample_rate <= 0 or self.segment_seconds <= 0:
            raise ConfigError("data.sample_rate and data.segment_seconds must be > 0")
        if not 0 < self.gain_min <= self.gain_max:
            raise ConfigError(f"data.gain_min/gain_max must satisfy 0 < min <= max, got "
                              f"{self.gain_min}, {self.gain_max}")
        if self.val_tracks < 0 or self.val_segments <= 0 or self.synth_tracks < 2:
            raise ConfigError("data.val_tracks must be >= 0, data.val_segments > 0, "
                              "data.synth_tracks >= 2")

    @property
    def segment_samples(self) -> int:
        return int(round(self.segment_seconds * self.sample_rate))


@dataclass(frozen=True)
class S2UTDataConfig:
    """Speech-to-unit translation data (EchoStream): fairseq S2UT manifests, see
    shared/data/s2ut.py. Both manifests empty: a synthetic demo corpus is generated into
    the run directory (python -m shared.data.synth_s2ut), so training works from a clone."""
    train_manifest: str = ""
    dev_manifest: str = ""
    # SentencePiece models (pad 0, unk 1, bos 2, eos 3); empty: trained from the training
    # manifest's texts into the run directory, with model.src_vocab_size / tgt_vocab_size.
    src_tokenizer: str = ""
    tgt_tokenizer: str = ""
    sample_rate: int = 16000
    max_duration: float = 10.0         # seconds; longer utterances are skipped (and counted)
    max_tokens: int = 5000             # padded feature frames per batch (B x longest)
    skip_bad_rows: bool = False        # false: unusable manifest rows stop the run, listed
    sort_window_batches: int = 50      # length-sort within windows of this many batches
    specaugment: bool = True           # training batches only
    num_freq_masks: int = 2
    freq_mask_width: int = 27
    num_time_masks: int = 2
    time_mask_width: int = 100
    dev_max_utterances: int = 200      # dev utterances scored at each evaluation (0: all)
    synth_train_utterances: int = 400  # size of the generated demo corpus
    synth_dev_utterances: int = 40
    synth_min_seconds: float = 1.0
    synth_max_seconds: float = 4.0
    seed: int = 0                      # the demo corpus

    def validate(self):
        if bool(self.train_manifest) != bool(self.dev_manifest):
            raise ConfigError("set both data.train_manifest and data.dev_manifest, or neither "
                              "(both empty: train on the generated demo corpus)")
        if self.sample_rate <= 0 or not self.max_duration > 0:
            raise ConfigError("data.sample_rate and data.max_duration must be > 0")
        if self.max_tokens <= 0 or self.sort_window_batches <= 0:
            raise ConfigError("data.max_tokens and data.sort_window_batches must be > 0")
        for name in ("num_freq_masks", "freq_mask_width", "num_time_masks", "time_mask_width",
                     "dev_max_utterances"):
            if getattr(self, name) < 0:
                raise ConfigError(f"data.{name} must be >= 0, got {getattr(self, name)}")
        if self.synth_train_utterances < 1 or self.synth_dev_utterances < 1:
            raise ConfigError("data.synth_train_utterances and data.synth_dev_utterances "
                              "must be >= 1")
        if not 0 < self.synth_min_seconds < self.synth_max_seconds:
            raise ConfigError(f"need 0 < data.synth_min_seconds < data.synth_max_seconds, got "
                              f"{self.synth_min_seconds}, {self.synth_max_seconds}")


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
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 20
    save_every: int = 500
    keep_last: int = 3
    max_bad_steps: int = 5                 # stop after this many non-finite steps in a row

    def validate(self):
        for name in ("batch_size", "gradient_accumulation_steps", "max_steps", "log_every",
                     "eval_every", "eval_batches", "save_every", "keep_last", "max_bad_steps"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be > 0, got {getattr(self, name)}")
        for name in ("seq_length", "warmup_steps", "cpu_streams"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ConfigError(f"train.learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.min_lr <= self.learning_rate:
            raise ConfigError(f"train.min_lr must be in [0, learning_rate={self.learning_rate}], "
                              f"got {self.min_lr}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.eps <= 0 or self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ConfigError("train.eps must be > 0, train.weight_decay and "
                              "train.max_grad_norm must be >= 0")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"train.precision must be fp32, bf16 or fp16, got {self.precision!r}")


@dataclass(frozen=True)
class HardwareConfig:
    device: str = "cpu"   # a profile name (see shared/hardware.py); informs the planner

    def validate(self):
        from shared.hardware import get_profile
        try:
            get_profile(self.device)
        except ValueError as e:
            raise ConfigError(f"hardware.device: {e}") from None


@dataclass(frozen=True)
class RunConfig:
    family: str
    model: typing.Any
    data: typing.Any = field(default_factory=DataConfig)   # DataConfig or AudioDataConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)

    @property
    def seq_length(self) -> int:
        """Tokens per training sequence (LM family)."""
        return self.train.seq_length or self.model.max_seq_length

    def to_dict(self) -> dict:
        return {"family": self.family, "model": asdict(self.model), "data": asdict(self.data),
                "train": asdict(self.train), "hardware": asdict(self.hardware)}


SECTIONS = {"data": DataConfig, "train": TrainConfig, "hardware": HardwareConfig}
# The data section's schema depends on the family.
DATA_CONFIGS = {"lm": DataConfig, "echostream": S2UTDataConfig}


def data_config_class(family: str):
    return DATA_CONFIGS.get(family, AudioDataConfig)


def _did_you_mean(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(value, annotation, where: str):
    """Check `value` against a dataclass field type; ints are accepted for floats."""
    hint = typing.get_origin(annotation) or annotation
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:    # YAML 1.1 reads 1e-4 (no dot) as a string
            return float(value)
        except ValueError:
            pass
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
    try:
        return cls(**kwargs)
    except SpecError as e:
        raise ConfigError(str(e)) from None


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
        if section not in ("model", *SECTIONS):
            raise ConfigError(f"unknown section {section!r} in override {text!r}"
                              f"{_did_you_mean(section, ['model', *SECTIONS])}")
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raw[section] = {}
        raw[section][key] = value
    known_top = {"family", "model", *SECTIONS}
    for key in raw:
        if key not in known_top:
            raise ConfigError(f"unknown section {key!r}{_did_you_mean(key, known_top)}; "
                              f"sections are: {', '.join(sorted(known_top))}")
    family = raw.get("family", "lm")
    if family not in FAMILIES:
        raise ConfigError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    model = _build(get_family(family).spec_class, raw.get("model"), "model")
    classes = SECTIONS | {"data": data_config_class(family)}
    sections = {name: _build(cls, raw.get(name), name) for name, cls in classes.items()}
    for section in sections.values():
        section.validate()
    config = RunConfig(family=family, model=model, **sections)
    if family == "lm" and config.seq_length > config.model.max_seq_length:
        raise ConfigError(f"train.seq_length ({config.seq_length}) exceeds model.max_seq_length "
                          f"({config.model.max_seq_length})")
    return config


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML config (None: the built-in tiny default) and apply overrides."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
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
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"
