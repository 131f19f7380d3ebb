"""Valid ranges of numeric config keys: one table per config dataclass, checked at load.

Every config dataclass (a family's spec, its data config, TrainConfig) lists its numeric
keys in a class attribute `RANGES = {"key": Range(...)}`. `shared.engine.config` checks
every value given in a config file or override against it before the dataclass is built,
so a value that would hang (2^31 layers), overflow an allocator (a 10^9-point FFT) or crash
a library (a negative seed) is one line naming the key, the value and the allowed range.
Upper bounds are sanity caps far above any real model (the largest LLMs have ~130 layers,
hidden sizes ~25k, vocabularies ~256k); whether a config within them fits a device is the
memory planner's call. A key of a tuple type (band widths) is checked element by element.
Non-finite floats (nan, inf) are never in range. A numeric key a table does not list
(a family of one's own without RANGES) must only be finite; tests/test_config_ranges.py
makes sure the shipped families list every numeric key.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# Sanity caps shared by the tables.
MAX_WIDTH = 1 << 16          # hidden / embedding / head sizes
MAX_FFN = 1 << 18            # feed-forward widths
MAX_LAYERS = 1024
MAX_HEADS = 1024
MAX_VOCAB = 1 << 21          # tokens or units
MAX_SEQ = 1 << 20            # tokens per sequence, frames per chunk
MAX_FFT = 1 << 16            # STFT size (n_fft, hop)
MAX_CHANNELS = 64            # audio channels, sources
MAX_STEPS = 10 ** 12         # optimizer steps and step counters
MAX_SEED = (1 << 32) - 1     # numpy, torch and MLX all take an unsigned 32-bit seed
MAX_SAMPLE_RATE = 768_000


@dataclass(frozen=True)
class Range:
    """low <= value <= high (< with low_open / high_open)."""
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def contains(self, value) -> bool:
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self, key: str) -> str:
        """E.g. `1 <= num_layers <= 1024`, `learning_rate > 0`, `min_lr >= 0`."""
        low_op, high_op = ("<" if self.low_open else "<="), ("<" if self.high_open else "<=")
        if self.low != -math.inf and self.high != math.inf:
            return f"{_number(self.low)} {low_op} {key} {high_op} {_number(self.high)}"
        if self.low != -math.inf:
            return f"{key} {'>' if self.low_open else '>='} {_number(self.low)}"
        if self.high != math.inf:
            return f"{key} {high_op} {_number(self.high)}"
        return f"{key} a finite number"


def _number(x) -> str:
    if isinstance(x, int) and x >= 1 << 16 and (x + 1) & x == 0:
        return f"2^{x.bit_length()}-1"
    if isinstance(x, int) and x >= 1 << 16 and x & (x - 1) == 0:
        return f"2^{x.bit_length() - 1}"
    return f"{x:g}" if isinstance(x, float) else str(x)


def at_least(low, high=math.inf) -> Range:
    return Range(low, high)


def positive(high=math.inf) -> Range:
    """> 0 (floats)."""
    return Range(0.0, high, low_open=True)


FRACTION = Range(0.0, 1.0, high_open=True)   # dropout, label smoothing, betas
SEED = Range(0, MAX_SEED)
EPS = Range(0.0, 1.0, low_open=True)
WEIGHT = Range(0.0, 1e6)                      # loss weights


def out_of_range(cls, values: dict, section: str) -> str | None:
    """The message for the first value of `values` (key -> coerced value) outside its
    range in `cls.RANGES`, or None when all are in range."""
    table = getattr(cls, "RANGES", {})
    for key, value in values.items():
        rule = table.get(key, Range())
        for item in (value if isinstance(value, tuple) else (value,)):
            if isinstance(item, bool) or not isinstance(item, (int, float)) or rule.contains(item):
                continue
            what = "is not a finite number" if not math.isfinite(item) else "is out of range"
            if item is value:
                return f"{section}.{key}={value!r} {what}: need {rule.describe(key)}"
            return (f"{section}.{key}={list(value)!r}: {item!r} {what}: need "
                    f"{rule.describe('each value')}")
    return None
