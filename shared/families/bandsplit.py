"""The band-split dual-path separator, Mamba2 or RoPE-transformer layers (seed 002)."""
from shared.planner.bandsplit import BANDSPLIT_MEMORY
from shared.registry import Family, register
from shared.specs.bandsplit import (BandSplitSpec, bandsplit_init_weights, bandsplit_manifest,
                                    bandsplit_param_counts, bandsplit_train_flops_per_second)
from shared.tasks.separation import separator_parts

BANDSPLIT = register(Family(
    name="bandsplit", spec_class=BandSplitSpec, manifest=bandsplit_manifest,
    init_weights=bandsplit_init_weights, param_counts=bandsplit_param_counts,
    backends={"mlx": "mlx_models.bandsplit:BandSplitSeparator",
              "torch": "torch_models.bandsplit:BandSplitSeparator"},
    memory=BANDSPLIT_MEMORY, flops_per_unit=bandsplit_train_flops_per_second,
    bench_configs=("configs/bandsplit_demo.yaml",), **separator_parts()))
