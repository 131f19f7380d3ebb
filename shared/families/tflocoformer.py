"""TF-Locoformer for music source separation (seeds 003 and 004)."""
from shared.planner.tflocoformer import TFLOCOFORMER_MEMORY
from shared.registry import Family, register
from shared.specs.tflocoformer import (TFLocoformerSpec, tflocoformer_init_weights, tflocoformer_manifest,
                                       tflocoformer_param_counts)
from shared.tasks.separation import separator_parts

TFLOCOFORMER = register(Family(
    name="tflocoformer", spec_class=TFLocoformerSpec, manifest=tflocoformer_manifest,
    init_weights=tflocoformer_init_weights, param_counts=tflocoformer_param_counts,
    backends={"mlx": "mlx_models.tflocoformer:TFLocoformer",
              "torch": "torch_models.tflocoformer:TFLocoformer"},
    memory=TFLOCOFORMER_MEMORY, bench_configs=("configs/musdb18_demo.yaml",), **separator_parts()))
