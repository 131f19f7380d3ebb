"""TF-Locoformer for music source separation (seeds 003 and 004)."""
from shared.data.musdb import AudioDataConfig
from shared.planner.tflocoformer import TFLOCOFORMER_MEMORY
from shared.registry import Family, register
from shared.specs.tflocoformer import (TFLocoformerSpec, tflocoformer_init_weights, tflocoformer_manifest,
                                       tflocoformer_param_counts)
from shared.tasks.separation import SeparationTask, segment_seconds, separation_batch

TFLOCOFORMER = register(Family(
    name="tflocoformer", spec_class=TFLocoformerSpec, manifest=tflocoformer_manifest,
    init_weights=tflocoformer_init_weights, param_counts=tflocoformer_param_counts,
    backends={"mlx": "mlx_models.tflocoformer:TFLocoformer",
              "torch": "torch_models.tflocoformer:TFLocoformer"},
    data_config=AudioDataConfig, task=SeparationTask, random_batch=separation_batch,
    memory=TFLOCOFORMER_MEMORY, unit="audio_s", units_per_example=segment_seconds,
    inference="separation", bench_configs=("configs/musdb18_demo.yaml",)))
