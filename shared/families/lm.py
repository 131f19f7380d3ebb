"""The Korean LLaMA-style language model (seed 001)."""
from shared.data.lm_text import DataConfig
from shared.errors import ConfigError
from shared.interop.hf_llama import read_hf_directory
from shared.planner.lm import LM_MEMORY
from shared.registry import Family, register
from shared.specs.lm import LMSpec, lm_init_weights, lm_manifest, lm_param_counts, lm_train_flops_per_token
from shared.tasks.lm import LMTask, lm_batch


def check_config(config) -> None:
    if config.seq_length > config.model.max_seq_length:
        raise ConfigError(f"train.seq_length ({config.seq_length}) exceeds model.max_seq_length "
                          f"({config.model.max_seq_length})")


LM = register(Family(
    name="lm", spec_class=LMSpec, manifest=lm_manifest, init_weights=lm_init_weights,
    param_counts=lm_param_counts,
    backends={"mlx": "mlx_models.lm:LanguageModel", "torch": "torch_models.lm:LanguageModel"},
    data_config=DataConfig, task=LMTask, random_batch=lm_batch, memory=LM_MEMORY,
    unit="tokens", units_per_example=lambda config: config.seq_length,
    flops_per_unit=lambda config: lm_train_flops_per_token(config.model, config.seq_length),
    inference="generation", bench_configs=("configs/tiny.yaml",), check_config=check_config,
    import_weights=read_hf_directory))
