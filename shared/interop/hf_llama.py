"""Hugging Face Llama <-> our LM: config translation and parameter renaming.

Our LM is transformers' LlamaForCausalLM (RMSNorm, rotate-half RoPE, grouped-query
attention, SwiGLU, no biases), so interchange is renaming only: both sides store Linear
weights as (out, in), and both use the rotate-half RoPE convention, so the q/k row
permutation that Meta's original interleaved-RoPE checkpoints need does not apply.

Pure numpy + json, like all of shared/; the CLIs are shared.export_hf and shared.import_hf.
"""
from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np

from shared.engine.checkpoint import check_weights, load_safetensors
from shared.errors import CheckpointError, SpecError
from shared.specs.lm import LMSpec, lm_manifest

HF_CONFIG_FILE = "config.json"
HF_WEIGHTS_FILE = "model.safetensors"
HF_INDEX_FILE = "model.safetensors.index.json"   # sharded: weight name -> shard file
TOKENIZER_FILE = "tokenizer.model"               # SentencePiece; same name on both sides

DTYPES = {"float32": np.dtype(np.float32),
          "bfloat16": np.dtype(ml_dtypes.bfloat16),
          "float16": np.dtype(np.float16)}

# Ours -> HF. Per-layer names sit under "layers.{i}." and "model.layers.{i}." respectively.
_LAYER_NAMES = {
    "attention_norm.weight": "input_layernorm.weight",
    "attention.q_proj.weight": "self_attn.q_proj.weight",
    "attention.k_proj.weight": "self_attn.k_proj.weight",
    "attention.v_proj.weight": "self_attn.v_proj.weight",
    "attention.o_proj.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.gate_proj.weight": "mlp.gate_proj.weight",
    "mlp.up_proj.weight": "mlp.up_proj.weight",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {
    "embed_tokens.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
# Buffers, not parameters, that older transformers versions wrote into checkpoints.
_HF_BUFFER_SUFFIXES = ("rotary_emb.inv_freq",)
_DEFAULT_ROPE_THETA = 10000.0   # what transformers and mlx-lm assume when none is given


def hf_name(name: str) -> str:
    """Our canonical parameter name -> the Hugging Face Llama name."""
    if name.startswith("layers."):
        _, index, rest = name.split(".", 2)
        return f"model.layers.{index}.{_LAYER_NAMES[rest]}"
    return _TOP_NAMES[name]


# ---------------------------------------------------------------- configs
def spec_to_hf_config(spec: LMSpec, dtype: str = "float32", bos_token_id: int | None = None,
                      eos_token_id: int | None = None) -> dict:
    """A transformers LlamaConfig as a config.json dict.

    RoPE's base goes in twice: transformers 5 reads `rope_parameters` (it moves a top-level
    `rope_theta` there when loading older files, but only writes `rope_parameters`), while
    transformers 4 and mlx-lm's llama read only the top-level `rope_theta`. Special token
    ids are written even when unknown (null): left out, LlamaConfig would assume bos=1, eos=2.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": spec.max_seq_length,
        "rms_norm_eps": spec.norm_eps,
        "rope_theta": spec.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": spec.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        # mlx-lm's llama defaults to tied embeddings, transformers' to untied: always say.
        "tie_word_embeddings": spec.tie_embeddings,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "dtype": dtype,          # transformers 5
        "torch_dtype": dtype,    # transformers 4
        "use_cache": True,
    }


def hf_config_to_spec(cfg: dict, source: str = HF_CONFIG_FILE) -> LMSpec:
    """The LMSpec of a Llama config.json; CheckpointError naming the field for anything our
    LM cannot represent (it would load but compute something else)."""
    def fail(field: str, problem: str, fix: str):
        raise CheckpointError(f"{source}: {field} {problem}; {fix}")

    model_type = cfg.get("model_type")
    if model_type != "llama":
        fail("model_type", f"is {model_type!r}, not 'llama'",
             "only Llama-architecture models (LlamaForCausalLM) can be imported")
    architectures = cfg.get("architectures") or ["LlamaForCausalLM"]
    if "LlamaForCausalLM" not in architectures:
        fail("architectures", f"is {architectures}", "import a LlamaForCausalLM checkpoint")
    for field in ("attention_bias", "mlp_bias"):
        if cfg.get(field):
            fail(field, "is true", "our LM has no biases; only bias-free Llama models import")
    act = cfg.get("hidden_act", "silu")
    if act not in ("silu", "swish"):   # transformers treats both names as SiLU
        fail("hidden_act", f"is {act!r}", "our MLP is SwiGLU; only 'silu' models import")
    if cfg.get("quantization_config"):
        fail("quantization_config", "is set", "import an unquantized (float) checkpoint")
    missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size",
                           "num_hidden_layers", "num_attention_heads") if k not in cfg]
    if missing:
        fail(missing[0], "is missing", "config.json must give every Llama size field")
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim")
    if head_dim is not None and head_dim * heads != hidden:
        fail("head_dim", f"is {head_dim}, not hidden_size / num_attention_heads = "
             f"{hidden} / {heads}", "our LM derives the head size; such models cannot import")
    try:
        return LMSpec(
            vocab_size=cfg["vocab_size"],
            hidden_size=hidden,
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            intermediate_size=cfg["intermediate_size"],
            max_seq_length=cfg.get("max_position_embeddings", 2048),   # LlamaConfig's defaults
            rope_theta=_rope_theta(cfg, fail),
            norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        )
    except SpecError as e:
        raise CheckpointError(f"{source}: {e}") from None


def _rope_theta(cfg: dict, fail) -> float:
    """RoPE's base from either generation of config. transformers 5 writes `rope_parameters`
    ({rope_type, rope_theta}) and reads a legacy `rope_scaling` dict as the same thing;
    transformers 4 wrote a top-level `rope_theta` plus `rope_scaling` (null unless scaled)."""
    thetas = {}
    if "rope_theta" in cfg:
        thetas["rope_theta"] = cfg["rope_theta"]
    for field in ("rope_parameters", "rope_scaling"):
        params = cfg.get(field)
        if params is None:
            continue
        if not isinstance(params, dict) or any(isinstance(v, dict) for v in params.values()):
            fail(field, "is not one flat RoPE setting", "per-layer-type RoPE cannot import")
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type != "default":
            fail(f"{field}.rope_type", f"is {rope_type!r} (scaled RoPE)",
                 "our LM implements plain RoPE only; set it to 'default' only if the model "
                 "was trained without scaling")
        if params.get("partial_rotary_factor", 1.0) != 1.0:
            fail(f"{field}.partial_rotary_factor", f"is {params['partial_rotary_factor']}",
                 "our LM rotates the whole head")
        if "rope_theta" in params:
            thetas[f"{field}.rope_theta"] = params["rope_theta"]
    if len({float(t) for t in thetas.values()}) > 1:
        fail(" and ".join(thetas), f"disagree ({thetas})",
             "make them equal (transformers 5 reads rope_parameters, mlx-lm rope_theta)")
    return float(next(iter(thetas.values()), _DEFAULT_ROPE_THETA))


# ---------------------------------------------------------------- weights
def to_hf_weights(weights: dict[str, np.ndarray], spec: LMSpec,
                  source: str = "checkpoint") -> dict[str, np.ndarray]:
    """Our canonical weights -> HF names. Tied models have no lm_head in the manifest, so
    none is written (transformers and mlx-lm tie it to the embedding themselves)."""
    manifest = lm_manifest(spec)
    check_weights(weights, manifest, source)
    return {hf_name(p.name): weights[p.name] for p in manifest}


def from_hf_weights(hf: dict[str, np.ndarray], spec: LMSpec,
                    source: str = "Hugging Face checkpoint") -> dict[str, np.ndarray]:
    """HF names -> our canonical weights, validated against the manifest. Names we do not
    know are kept as they are, so the mismatch report lists them."""
    hf = {n: a for n, a in hf.items() if not n.endswith(_HF_BUFFER_SUFFIXES)}
    if spec.tie_embeddings and "lm_head.weight" in hf:
        head, embed = hf.pop("lm_head.weight"), hf.get("model.embed_tokens.weight")
        if embed is None or head.shape != embed.shape or not np.array_equal(head, embed):
            raise CheckpointError(
                f"{source}: tie_word_embeddings is true but lm_head.weight differs from "
                f"model.embed_tokens.weight; set tie_word_embeddings to false in config.json")
    ours = {hf_name(p.name): p.name for p in lm_manifest(spec)}
    weights = {ours.get(n, n): a for n, a in hf.items()}
    check_weights(weights, lm_manifest(spec), source)
    return weights


def cast_weights(weights: dict[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
    """Every tensor in `dtype` (one of DTYPES); float32 -> bfloat16 rounds to nearest even."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return {n: a.astype(DTYPES[dtype], copy=False) for n, a in weights.items()}


# ---------------------------------------------------------------- HF directories
def load_hf_checkpoint(directory: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json, weights by HF name) of a save_pretrained directory, one safetensors
    file or several shards listed in model.safetensors.index.json."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"Hugging Face model {directory} does not exist or is not a "
                              f"directory")
    config_path = directory / HF_CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{directory} has no {HF_CONFIG_FILE}; point at a directory "
                              f"written by save_pretrained")
    return _read_json(config_path), _load_hf_weights(directory)


def _load_hf_weights(directory: Path) -> dict[str, np.ndarray]:
    index = directory / HF_INDEX_FILE
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index} has no 'weight_map'")
        weights = {}
        for shard in sorted(set(weight_map.values())):
            tensors = load_safetensors(directory / shard)
            weights.update({n: a for n, a in tensors.items() if weight_map.get(n) == shard})
        absent = [n for n in weight_map if n not in weights]
        if absent:
            raise CheckpointError(f"{index} lists {absent[0]!r} in {weight_map[absent[0]]}, "
                                  f"which does not hold it ({len(absent)} such tensors)")
        return weights
    if (directory / HF_WEIGHTS_FILE).is_file():
        return load_safetensors(directory / HF_WEIGHTS_FILE)
    raise CheckpointError(f"{directory} has neither {HF_WEIGHTS_FILE} nor {HF_INDEX_FILE}; "
                          f"only safetensors weights are read (re-save the model with "
                          f"save_pretrained(..., safe_serialization=True))")


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not readable JSON: {e}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return value


def read_hf_directory(directory) -> tuple[LMSpec, dict[str, np.ndarray]] | None:
    """A Hugging Face Llama directory as (spec, canonical weights); None if `directory` holds
    no config.json (not one). What train.init_from reads for the LM (shared/families/lm.py)."""
    directory = Path(directory)
    if not (directory / HF_CONFIG_FILE).is_file():
        return None
    cfg, hf_weights = load_hf_checkpoint(directory)
    spec = hf_config_to_spec(cfg, source=str(directory / HF_CONFIG_FILE))
    return spec, from_hf_weights(hf_weights, spec, source=f"Hugging Face model {directory}")
