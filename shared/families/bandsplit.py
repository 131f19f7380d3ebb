"""The band-split dual-path separator, Mamba2 or RoPE-transformer layers (seed 002)."""
from shared.data.musdb import AudioDataConfig
from shared.planner.bandsplit import BANDSPLIT_MEMORY
from shared.registry import Family, register
from shared.specs.bandsplit import (BandSplitSpec, bandsplit_init_weights, bandsplit_manifest,
                                    bandsplit_param_counts)
from shared.tasks.separation import SeparationTask, segment_seconds, separation_batch

BANDSPLIT = register(Family(
    name="bandsplit", spec_class=BandSplitSpec, manifest=bandsplit_manifest,
    init_weights=bandsplit_init_weights, param_counts=bandsplit_param_counts,
    backends={"mlx": "mlx_models.bandsplit:BandSplitSeparator",
              "torch": "torch_models.bandsplit:BandSplitSeparator"},
    data_config=AudioDataConfig, task=SeparationTask, random_batch=separation_batch,
    memory=BANDSPLIT_MEMORY, unit="audio_s", units_per_example=segment_seconds,
    inference="separation", bench_configs=("configs/bandsplit_demo.yaml",)))
