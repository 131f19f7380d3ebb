"""Property-based config fuzz (hypothesis): over every key of every family's config, any
value -- boundaries, huge, negative, zero, wrong types, NaN, strings -- either loads (and
then the memory planner and model construction work) or is one ConfigError line. Never
another exception, never a hang. Plus a small subprocess sample of the training CLI: exit
0, or exit 2 with one `error:` line, never a traceback.

`pytest tests/test_config_fuzz.py -s` prints the outcome counts; FUZZ_EXAMPLES=500 draws
500 configs per family instead of 50."""
import collections
import dataclasses
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.engine.config import SECTIONS, config_from_dict
from shared.errors import ConfigError
from shared.planner.core import plan
from shared.registry import get_family

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"lm": "configs/tiny.yaml", "tflocoformer": "configs/musdb18_demo.yaml",
           "bandsplit": "configs/bandsplit_demo.yaml", "echostream": "configs/echostream_demo.yaml",
           "regressor": "tests/fifth_family/regressor.yaml"}
SMALL_MODEL = 3_000_000       # parameters: build the model only below this (fast, no big allocations)
PER_EXAMPLE_SECONDS = 20      # an example that takes longer is a hang
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", 50))   # per family; more for a longer hunt
OUTCOMES = collections.Counter()


def raw_config(name: str) -> dict:
    return yaml.safe_load((ROOT / CONFIGS[name]).read_text())


def config_keys(name: str) -> list[tuple[str, str, object]]:
    """(section, key, default) of every key the family's config takes."""
    config = config_from_dict(raw_config(name))
    family = get_family(config.family)
    classes = {"model": family.spec_class, "data": family.data_config, **SECTIONS}
    return [(section, f.name, getattr(getattr(config, section), f.name))
            for section, cls in classes.items() for f in dataclasses.fields(cls)]


BOUNDARIES = st.sampled_from([
    0, 1, -1, 2, 3, 7, 2 ** 31 - 1, 2 ** 31, 2 ** 32, 2 ** 63, -2 ** 31, 10 ** 30,
    0.0, -0.0, 0.5, 1.5, -1.5, 1e-30, 1e30, -1e30, math.nan, math.inf, -math.inf, 1e3,
    "", "abc", "1e3", "nan", "-1", "2**31", True, False, None, [], [1, 2], [-1, 0], {"a": 1},
])


def near(default):
    """Values around a key's own default: what a user is most likely to type."""
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        return BOUNDARIES
    values = [default * 2, default * 10, default * 1000, default + 1, default - 1, -default,
              default / 2, default * 2 ** 20]
    if isinstance(default, int):
        values = [int(v) if math.isfinite(v) else v for v in values]
    return st.sampled_from(values)


def overrides(name: str):
    keys = config_keys(name)
    one = st.sampled_from(keys).flatmap(
        lambda k: st.tuples(st.just(k[0]), st.just(k[1]), st.one_of(BOUNDARIES, near(k[2]))))
    return st.lists(one, min_size=1, max_size=3)


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def check_config(name: str, changes) -> str:
    """Load the family's config with `changes`; on success plan it on both backends and
    build the torch model when small. The outcome, for the counts."""
    raw = raw_config(name)
    for section, key, value in changes:
        raw.setdefault(section, {})[key] = value
    try:
        config = config_from_dict(raw)
    except ConfigError as e:
        assert "\n" not in str(e), f"a multi-line error for {changes}: {e}"
        assert str(e).strip(), f"an empty error for {changes}"
        return "error: " + ("range" if "out of range" in str(e) or "finite" in str(e) else "other")
    family = get_family(config.family)
    for backend in ("mlx", "torch"):
        plan(config, backend)
    if family.param_counts(config.model)["total"] <= SMALL_MODEL:
        import torch_models.models as torch_io
        torch_io.build_model(config.model)
        return "loaded+built"
    return "loaded (too big to build here)"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_config_value_loads_or_is_one_config_error_line(name):
    strategy = overrides(name)
    previous = signal.signal(signal.SIGALRM, _alarm)

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(changes=strategy)
    def run(changes):
        signal.alarm(PER_EXAMPLE_SECONDS)
        try:
            outcome = check_config(name, changes)
        except Hang:
            pytest.fail(f"{name}: {changes} took over {PER_EXAMPLE_SECONDS} s (a hang)")
        finally:
            signal.alarm(0)
        OUTCOMES[(name, outcome)] += 1

    try:
        run()
    finally:
        signal.signal(signal.SIGALRM, previous)
    print(f"\nconfig fuzz {name}: " + ", ".join(
        f"{outcome} {n}" for (family, outcome), n in sorted(OUTCOMES.items()) if family == name))


# The reports, each checked by name: one line, naming the key.
@pytest.mark.parametrize("name,override,key", [
    ("lm", "train.seed=-1", "train.seed"),
    ("lm", "model.num_layers=2147483648", "model.num_layers"),
    ("lm", "train.batch_size=2147483648", "train.batch_size"),
    ("lm", "train.gradient_accumulation_steps=2147483648", "train.gradient_accumulation_steps"),
    ("lm", "model.hidden_size=1000000000", "model.hidden_size"),
    ("lm", "train.learning_rate=.nan", "train.learning_rate"),
    ("tflocoformer", "model.n_fft=1000000000", "model.n_fft"),
    ("tflocoformer", "data.synth_seconds=-3", "data.synth_seconds"),
    ("tflocoformer", "data.val_segments=2147483648", "data.val_segments"),
    ("tflocoformer", "data.segment_seconds=1e9", "data.segment_seconds"),
    ("bandsplit", "model.band_widths=[1,2,-3]", "model.band_widths"),
    ("echostream", "data.max_tokens=1e12", "data.max_tokens"),
])
def test_reported_values_are_one_line_naming_the_key(name, override, key):
    with pytest.raises(ConfigError) as e:
        config_from_dict(raw_config(name), [override])
    assert str(e.value).startswith(f"{key}=") and "\n" not in str(e.value)
    assert "need " in str(e.value)


# Found by running the training CLI on drawn values: each was a traceback at the first step.
@pytest.mark.parametrize("name,override,message", [
    ("tflocoformer", "data.segment_seconds=0.001", "data.segment_seconds=0.001 is 8 samples at "
                                                   "data.sample_rate=8000, fewer than one STFT frame"),
    ("bandsplit", "data.segment_seconds=0.01", "fewer than one STFT frame of model.n_fft=256"),
    ("tflocoformer", "data.sample_rate=1", "data.sample_rate=1 is out of range"),
    ("tflocoformer", "model.hop=256", "model.hop (256) must be < model.n_fft (256)"),
    ("bandsplit", "model.hop=256", "model.hop (256) must be < model.n_fft (256)"),
    ("lm", "model.vocab_size=1", "model.vocab_size=1 is out of range: need 3 <= vocab_size"),
    ("echostream", "model.n_mels=64", "model.n_mels=64, but the data give 80-bin Kaldi fbank"),
    ("echostream", "model.n_units=1", "model.n_units=1 is out of range: need 2 <= n_units"),
    ("echostream", "data.sample_rate=8000", "the generated demo corpus (data.train_manifest empty) "
                                            "is 16000 Hz"),
])
def test_values_that_crashed_training_are_config_errors(name, override, message):
    with pytest.raises(ConfigError) as e:
        config_from_dict(raw_config(name), [override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_integral_floats_are_integers_and_fractions_are_refused():
    config = config_from_dict(raw_config("lm"), ["train.max_steps=1e3", "train.batch_size=4.0",
                                                 "model.max_seq_length=1.28e2"])
    assert (config.train.max_steps, config.train.batch_size, config.model.max_seq_length) == (1000, 4, 128)
    assert type(config.train.max_steps) is int
    with pytest.raises(ConfigError, match=r"train.batch_size must be an integer, got 2.5"):
        config_from_dict(raw_config("lm"), ["train.batch_size=2.5"])


def test_every_numeric_key_of_the_shipped_families_has_a_range():
    """shared/ranges.py: an unlisted key would only be checked for being finite."""
    for name in CONFIGS:
        config = config_from_dict(raw_config(name))
        family = get_family(config.family)
        for cls in (family.spec_class, family.data_config, *SECTIONS.values()):
            for f in dataclasses.fields(cls):
                kind = str(f.type)
                if any(t in kind for t in ("int", "float")) and "bool" not in kind:
                    assert f.name in getattr(cls, "RANGES", {}), f"{cls.__name__}.{f.name} has no range"


# ------------------------------------------------------------------ the CLI, in a subprocess
CLI_SAMPLE = [  # (config, overrides): each must exit 0 or 2 with one line, in bounded time
    ("tests/fifth_family/regressor.yaml", ["train.seed=-1"]),
    ("tests/fifth_family/regressor.yaml", ["train.max_steps=1e3", "train.learning_rate=.inf"]),
    ("tests/fifth_family/regressor.yaml", ["train.batch_size=2147483648"]),
    ("tests/fifth_family/regressor.yaml", ["train.gradient_accumulation_steps=2147483648"]),
    ("tests/fifth_family/regressor.yaml", ["model.depth=abc"]),
    ("tests/fifth_family/regressor.yaml", ["train.max_steps=2", "train.eval_batches=100000"]),
    ("configs/musdb18_demo.yaml", ["model.n_fft=1000000000"]),
    ("configs/musdb18_demo.yaml", ["data.synth_seconds=-1"]),
    ("configs/tiny.yaml", ["model.num_layers=2147483648"]),
    ("configs/tiny.yaml", ["train.batch_size=65536", "train.max_steps=1"]),
    ("configs/tiny.yaml", ["model.vocab_size=1"]),
    ("configs/musdb18_demo.yaml", ["data.segment_seconds=0.001"]),
    ("configs/echostream_demo.yaml", ["model.n_mels=64"]),
    ("configs/echostream_demo.yaml", ["data.synth_train_utterances=8", "data.synth_dev_utterances=2",
                                      "model.subsample_kernel=1023"]),
    ("configs/echostream_demo.yaml", ["data.synth_min_seconds=0.001", "data.synth_max_seconds=0.002"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("config,changes", CLI_SAMPLE)
def test_cli_exits_0_or_2_with_one_line_never_a_traceback(tmp_path, config, changes):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch_models.train", "--config", str(ROOT / config),
                             "--out", str(tmp_path / "run"), "--no-progress", *changes],
                            capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode in (0, 2), result.stderr[-3000:]
    if result.returncode == 2:
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0])
