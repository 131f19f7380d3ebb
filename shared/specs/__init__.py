"""Model families as data. Each family registers its spec class, manifest builder,
parameter counter and initialiser here; everything framework-specific looks them up."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable

import numpy as np

from shared.specs.base import ParamSpec, SpecError, split_examples
from shared.specs.bandsplit import (BandSplitSpec, bandsplit_init_weights, bandsplit_manifest,
                                    bandsplit_param_counts)
from shared.specs.echostream import (EchoStreamSpec, echostream_batch_parts, echostream_init_weights,
                                     echostream_manifest, echostream_param_counts)
from shared.specs.lm import LMSpec, lm_init_weights, lm_manifest, lm_param_counts
from shared.specs.tflocoformer import (TFLocoformerSpec, tflocoformer_init_weights,
                                       tflocoformer_manifest, tflocoformer_param_counts)


@dataclass(frozen=True)
class Family:
    name: str
    spec_class: type
    manifest: Callable[[Any], list[ParamSpec]]
    init_weights: Callable[[Any, int], dict[str, np.ndarray]]
    param_counts: Callable[[Any], dict[str, int]]
    # A numpy batch in parts whose losses, each weighted by the part's share of the examples,
    # add up to the whole batch's loss (MLX's parallel CPU streams rely on it). Plain
    # splitting does where the loss is a mean over examples; EchoStream's parts carry the
    # batch's token count for its token-mean MT term.
    batch_parts: Callable[[Any, int], list] = split_examples
    # Whether train.cpu_streams=0 (auto) splits this family's batches: a step made of many
    # tiny ops (EchoStream's CTC loops) costs more to build part by part than the parts
    # save (EchoStream demo, 2 cores: 2.2 steps/s on one stream, 1.6 on two).
    split_by_default: bool = True


FAMILIES: dict[str, Family] = {
    "lm": Family("lm", LMSpec, lm_manifest, lm_init_weights, lm_param_counts),
    "tflocoformer": Family("tflocoformer", TFLocoformerSpec, tflocoformer_manifest,
                           tflocoformer_init_weights, tflocoformer_param_counts),
    "bandsplit": Family("bandsplit", BandSplitSpec, bandsplit_manifest, bandsplit_init_weights,
                        bandsplit_param_counts),
    "echostream": Family("echostream", EchoStreamSpec, echostream_manifest,
                         echostream_init_weights, echostream_param_counts,
                         batch_parts=echostream_batch_parts, split_by_default=False),
}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise SpecError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


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
    for fam in FAMILIES.values():
        if isinstance(spec, fam.spec_class):
            return fam.name
    raise SpecError(f"{type(spec).__name__} is not a registered model spec")
