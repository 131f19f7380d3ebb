"""The LM spec: validation, and counts checked against real modules."""
import dataclasses

import pytest
import torch

from shared.errors import SpecError
from shared.specs.lm import LMSpec, lm_manifest, lm_param_counts, lm_train_flops_per_token
from torch_models.lm import LanguageModel

MEDIUM = LMSpec(vocab_size=32000, hidden_size=1024, num_layers=24, num_heads=16, num_kv_heads=4,
                intermediate_size=4096, max_seq_length=2048, rope_theta=10000.0, dropout=0.1)
LARGE = dataclasses.replace(MEDIUM, hidden_size=1536, num_heads=24, num_kv_heads=6,
                            intermediate_size=6144)


@pytest.mark.parametrize("spec", [MEDIUM, LARGE, dataclasses.replace(MEDIUM, tie_embeddings=True)],
                         ids=["medium", "large", "medium-tied"])
def test_counts_match_a_real_module(spec):
    with torch.device("meta"):  # shapes only, no memory
        model = LanguageModel(spec)
    real = sum(p.numel() for p in model.parameters())
    assert lm_param_counts(spec)["total"] == real
    embedding = spec.vocab_size * spec.hidden_size
    head = 0 if spec.tie_embeddings else embedding
    assert lm_param_counts(spec)["non_embedding"] == real - embedding - head


def test_seed_sizes():
    # Seed 001 quotes ~350M and ~800M: the transformer body without embeddings.
    assert lm_param_counts(MEDIUM) == {"total": 430_490_624, "non_embedding": 364_954_624,
                                       "matmul": 397_672_448}
    assert lm_param_counts(LARGE) == {"total": 919_414_272, "non_embedding": 821_110_272,
                                      "matmul": 870_187_008}


def test_flops_per_token_counts_every_matmul():
    spec = LMSpec(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                  intermediate_size=48, max_seq_length=16)
    # Count forward multiply-adds by hand from the manifest: every LINEAR matrix and the
    # output head multiply once per token; attention does 2 * T * head_dim per head.
    matmul = sum(p.numel for p in lm_manifest(spec) if p.kind == "linear")
    forward_flops = 2 * matmul + 2 * spec.num_layers * spec.num_heads * (2 * 16 * spec.head_dim)
    assert lm_train_flops_per_token(spec, seq_len=16) == 3 * forward_flops


@pytest.mark.parametrize("change,message", [
    ({"num_kv_heads": 3}, "divisible by model.num_kv_heads"),
    ({"num_heads": 5}, "hidden_size (1024) must be divisible by model.num_heads"),
    ({"hidden_size": 1000, "num_heads": 8, "num_kv_heads": 4}, "must be even"),
    ({"vocab_size": 0}, "model.vocab_size must be a positive integer"),
    ({"dropout": 1.0}, "model.dropout"),
    ({"rope_theta": -1.0}, "rope_theta"),
])
def test_invalid_specs_name_the_field(change, message):
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        dataclasses.replace(MEDIUM, **change)


def test_every_shipped_config_loads():
    import pathlib

    from shared.engine.config import load_config
    configs = sorted((pathlib.Path(__file__).parent.parent / "configs").glob("*.yaml"))
    assert {c.name for c in configs} >= {"tiny.yaml", "m4max.yaml", "m4max_large.yaml",
                                          "m2_8gb_lm.yaml", "cuda_lm.yaml"}
    for path in configs:
        load_config(path)
    medium = load_config(configs[0].parent / "m4max.yaml")
    assert medium.model == MEDIUM
    assert (medium.train.batch_size, medium.train.gradient_accumulation_steps) == (16, 4)
    assert (medium.train.learning_rate, medium.train.min_lr, medium.train.warmup_steps) == (2e-4, 2e-5, 4000)
    large = load_config(configs[0].parent / "m4max_large.yaml")
    assert large.model == LARGE and large.train.gradient_checkpointing and large.seq_length == 1536
