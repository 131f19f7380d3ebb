"""Hugging Face Llama interchange: our checkpoints exported to transformers and mlx-lm, and
transformers models imported, compute the same logits; errors name the problem."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")         # nothing here may touch the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import dataclasses  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import ml_dtypes  # noqa: E402
import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

transformers = pytest.importorskip("transformers")   # dev dependency

import mlx_models.models as mm  # noqa: E402
import torch_models.models as tm  # noqa: E402
from mlx_models.weights import get_weights, set_weights  # noqa: E402
from shared.engine.checkpoint import (CheckpointError, checkpoint_config, load_checkpoint,  # noqa: E402
                               load_safetensors, save_checkpoint, save_safetensors)
from shared.interop.export_hf import main as export_main  # noqa: E402
from shared.interop.hf_llama import hf_config_to_spec, spec_to_hf_config  # noqa: E402
from shared.interop.import_hf import import_hf, main as import_main  # noqa: E402
from shared.specs.lm import lm_manifest  # noqa: E402
from tests.helpers import rel_err

REPO = Path(__file__).resolve().parent.parent


def tokens(spec, batch=2, length=24, seed=0):
    return np.random.default_rng(seed).integers(0, spec.vocab_size, (batch, length))


@pytest.fixture(params=[False, True], ids=["untied", "tied"])
def spec(request, tiny_lm_spec):
    # A RoPE base other than the usual default, so a config that loses it is caught.
    return dataclasses.replace(tiny_lm_spec, rope_theta=500.0, tie_embeddings=request.param)


def save_ours(spec, directory: Path, seed=1):
    """Our MLX model saved as a checkpoint, with random norm scales: all-ones norms would
    hide a swapped input/post-attention layernorm mapping."""
    model = mm.build_model(spec, seed)
    manifest = lm_manifest(spec)
    weights = get_weights(model, manifest)
    rng = np.random.default_rng(seed)
    for name in weights:
        if name.endswith("norm.weight"):
            weights[name] = rng.uniform(0.5, 1.5, weights[name].shape).astype(np.float32)
    set_weights(model, manifest, weights)
    mm.save_model(model, directory)
    return model


def hf_logits(model, x) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).logits.numpy()


def load_hf(directory):
    return transformers.LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32)


def make_hf_model(spec, seed=0):
    """A randomly initialised transformers Llama with our spec's sizes (norms random too)."""
    config = transformers.LlamaConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_seq_length, rms_norm_eps=spec.norm_eps,
        rope_theta=spec.rope_theta, tie_word_embeddings=spec.tie_embeddings)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


# ---------------------------------------------------------------- export
def test_export_loads_in_transformers_with_our_logits(spec, tmp_path):
    mlx_model = save_ours(spec, tmp_path / "ckpt")
    assert export_main([str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    assert {p.name for p in (tmp_path / "hf").iterdir()} == {
        "config.json", "model.safetensors", "generation_config.json"}
    written = load_safetensors(tmp_path / "hf" / "model.safetensors")
    assert ("lm_head.weight" in written) == (not spec.tie_embeddings)
    hf = load_hf(tmp_path / "hf")
    assert hf.config.rope_parameters["rope_theta"] == spec.rope_theta
    assert hf.config.tie_word_embeddings == spec.tie_embeddings
    torch_model, _ = tm.load_model(tmp_path / "ckpt")
    x = tokens(spec)
    ours_torch = torch_model(torch.from_numpy(x)).detach().numpy()
    ours_mlx = np.array(mlx_model(mx.array(x)))
    theirs = hf_logits(hf, x)
    assert rel_err(theirs, ours_torch) <= 1e-5
    assert rel_err(theirs, ours_mlx) <= 1e-5


def test_export_loads_in_mlx_lm_with_our_logits(spec, tmp_path):
    mlx_lm_utils = pytest.importorskip("mlx_lm.utils")
    mlx_model = save_ours(spec, tmp_path / "ckpt")
    assert export_main([str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    model, _ = mlx_lm_utils.load_model(tmp_path / "hf")
    # mlx-lm reads only the top-level rope_theta, and defaults to tied embeddings.
    assert model.args.rope_theta == spec.rope_theta
    assert model.args.tie_word_embeddings == spec.tie_embeddings
    x = mx.array(tokens(spec))
    assert rel_err(np.array(model(x)), np.array(mlx_model(x))) <= 1e-5


def test_export_cli_as_a_program(tiny_lm_spec, tmp_path):
    save_ours(tiny_lm_spec, tmp_path / "ckpt")
    run = lambda *args: subprocess.run([sys.executable, "-m", "shared.export_hf", *args],
                                       cwd=REPO, capture_output=True, text=True)
    ok = run(str(tmp_path / "ckpt"), str(tmp_path / "hf"))
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    bad = run(str(tmp_path / "nowhere"), str(tmp_path / "hf2"))
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: ") and "nowhere" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert not (tmp_path / "hf2").exists()


@pytest.mark.parametrize("stored", ["float32", "bfloat16"])
def test_bfloat16_export_keeps_bits(tiny_lm_spec, tmp_path, stored):
    """Exported bf16 weights are exactly ours rounded by ml_dtypes (or ours, if already
    bf16), read back with safetensors' own reader."""
    from safetensors.torch import load_file as load_torch   # numpy's reader has no bf16

    save_ours(tiny_lm_spec, tmp_path / "ckpt")
    weights, config = load_checkpoint(tmp_path / "ckpt")
    weights = {n: a.astype(ml_dtypes.bfloat16 if stored == "bfloat16" else np.float32)
               for n, a in weights.items()}
    save_checkpoint(tmp_path / "ckpt", weights, config)
    assert export_main([str(tmp_path / "ckpt"), str(tmp_path / "hf"), "--dtype", "bfloat16"]) == 0
    exported = load_torch(str(tmp_path / "hf" / "model.safetensors"))
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"
    assert exported["model.norm.weight"].dtype == torch.bfloat16
    ours = weights["layers.1.attention.k_proj.weight"].astype(ml_dtypes.bfloat16)
    theirs = exported["model.layers.1.self_attn.k_proj.weight"].view(torch.int16).numpy()
    np.testing.assert_array_equal(theirs.view(np.uint16), ours.view(np.uint16))
    ours = weights["embed_tokens.weight"].astype(ml_dtypes.bfloat16)
    theirs = exported["model.embed_tokens.weight"].view(torch.int16).numpy()
    np.testing.assert_array_equal(theirs.view(np.uint16), ours.view(np.uint16))


def test_export_then_import_is_exact(spec, tmp_path):
    save_ours(spec, tmp_path / "ckpt")
    assert export_main([str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    assert import_main([str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    (original, config), (back, back_config) = (load_checkpoint(tmp_path / "ckpt"),
                                               load_checkpoint(tmp_path / "back"))
    assert back_config["model"] == config["model"]
    assert back.keys() == original.keys()
    for name in original:
        np.testing.assert_array_equal(back[name], original[name])


def test_export_and_import_end_with_one_line_saying_what_and_where(tiny_lm_spec, tmp_path, capsys):
    save_ours(tiny_lm_spec, tmp_path / "ckpt")
    assert export_main([str(tmp_path / "ckpt"), str(tmp_path / "hf"), "--dtype", "bfloat16"]) == 0
    err = capsys.readouterr().err
    assert err == (f"exported {tmp_path / 'ckpt'} -> {tmp_path / 'hf'} (Hugging Face Llama, "
                   f"bfloat16, 3 files, without tokenizer.model)\n")
    assert import_main([str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    n = sum(p.numel for p in lm_manifest(tiny_lm_spec))
    assert capsys.readouterr().err == (f"imported {tmp_path / 'hf'} -> {tmp_path / 'back'} "
                                       f"(LM, {n:,} parameters, bfloat16, without tokenizer.model)\n")


def test_export_takes_a_run_directory_like_generate(tiny_lm_spec, tmp_path, capsys):
    run = tmp_path / "run"
    save_ours(tiny_lm_spec, run / "checkpoints" / "step_00000002", seed=1)
    save_ours(tiny_lm_spec, run / "checkpoints" / "step_00000004", seed=2)
    assert export_main([str(run), str(tmp_path / "hf")]) == 0
    newest = run / "checkpoints" / "step_00000004"
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"{run} has no checkpoints/best; using its newest checkpoint, {newest}"
    assert lines[1].startswith(f"exported {newest} -> {tmp_path / 'hf'} (") and len(lines) == 2
    hf_weights = load_safetensors(tmp_path / "hf" / "model.safetensors")
    ours, _ = load_checkpoint(newest)
    np.testing.assert_array_equal(hf_weights["model.norm.weight"], ours["norm.weight"])

    save_ours(tiny_lm_spec, run / "checkpoints" / "best", seed=3)
    assert export_main([str(run), str(tmp_path / "hf"), "--force"]) == 0
    assert capsys.readouterr().err.startswith(f"exported {run / 'checkpoints' / 'best'} -> ")
    # Writing over the run itself is still refused.
    assert export_main([str(run), str(run), "--force"]) == 2
    assert "overlaps the input" in capsys.readouterr().err


# ---------------------------------------------------------------- import
def test_import_from_transformers(spec, tmp_path):
    hf = make_hf_model(spec)
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    assert import_main([str(tmp_path / "hf"), str(tmp_path / "ckpt")]) == 0
    model, config = tm.load_model(tmp_path / "ckpt")
    assert config["model"]["rope_theta"] == spec.rope_theta
    assert config["model"]["tie_embeddings"] == spec.tie_embeddings
    x = tokens(spec, seed=1)
    assert rel_err(model(torch.from_numpy(x)).detach().numpy(), hf_logits(hf, x)) <= 1e-5


def test_import_sharded(tiny_lm_spec, tmp_path):
    hf = make_hf_model(tiny_lm_spec, seed=1)
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True, max_shard_size="40KB")
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1, "the model should be sharded"
    assert not (tmp_path / "hf" / "model.safetensors").exists()
    assert import_main([str(tmp_path / "hf"), str(tmp_path / "ckpt"), "--dtype", "float32"]) == 0
    model, _ = tm.load_model(tmp_path / "ckpt")
    x = tokens(tiny_lm_spec, seed=2)
    assert rel_err(model(torch.from_numpy(x)).detach().numpy(), hf_logits(hf, x)) <= 1e-5


def test_import_drops_buffers_and_a_tied_head_copy(tiny_lm_spec, tmp_path):
    """Older transformers wrote RoPE's inv_freq buffer, and some tied checkpoints store
    lm_head.weight as a copy of the embedding: both are not parameters of ours."""
    spec = dataclasses.replace(tiny_lm_spec, tie_embeddings=True)
    hf = make_hf_model(spec)
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    path = tmp_path / "hf" / "model.safetensors"
    # Copies: the file is rewritten below, under the memory map.
    tensors = {n: np.array(a) for n, a in load_safetensors(path).items()}
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(8, np.float32)
    save_safetensors(path, tensors, metadata={"format": "pt"})
    assert import_main([str(tmp_path / "hf"), str(tmp_path / "ckpt")]) == 0
    weights, _ = load_checkpoint(tmp_path / "ckpt")
    assert "lm_head.weight" not in weights

    tensors["lm_head.weight"] = tensors["lm_head.weight"] + np.float32(1)
    save_safetensors(path, tensors, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="tie_word_embeddings"):
        import_hf(tmp_path / "hf", tmp_path / "ckpt2")


def test_transformers_4_style_config(tiny_lm_spec):
    """transformers 4 wrote rope_theta at top level with rope_scaling null."""
    cfg = spec_to_hf_config(tiny_lm_spec)
    del cfg["rope_parameters"]
    cfg.update(rope_theta=123.0, rope_scaling=None)
    assert hf_config_to_spec(cfg).rope_theta == 123.0
    assert hf_config_to_spec(spec_to_hf_config(tiny_lm_spec)) == tiny_lm_spec


# ---------------------------------------------------------------- tokenizer
def train_sentencepiece(model_type: str, **options) -> bytes:
    """A tiny SentencePiece model, trained on generated text, Llama's settings by default."""
    import sentencepiece as spm

    rng = random.Random(0)
    words = "the cat sat on a mat while dogs ran far away, saying hello world 42 times".split()
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(400)]
    settings = dict(model_type=model_type, vocab_size=300, byte_fallback=True,
                    normalization_rule_name="identity", remove_extra_whitespaces=False,
                    character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                    hard_vocab_limit=False, minloglevel=2)
    settings.update(options)
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=out, **settings)
    return out.getvalue()


def test_tokenizer_export_loads_as_llama_tokenizer(tiny_lm_spec, tmp_path):
    import sentencepiece as spm

    spec = dataclasses.replace(tiny_lm_spec, vocab_size=300)
    save_ours(spec, tmp_path / "ckpt")
    model_bytes = train_sentencepiece("bpe")
    (tmp_path / "ckpt" / "tokenizer.model").write_bytes(model_bytes)
    assert export_main([str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0

    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert type(tokenizer).__name__ == "LlamaTokenizer"
    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    texts = ["the cat sat on a mat", "hello world,  42 times\nthe dogs", "zebra ünïcode 7"]
    for text in texts:   # unseen words, double spaces, newlines and byte fallback
        assert tokenizer.encode(text, add_special_tokens=False) == sp.encode(text), text
        assert tokenizer.decode(sp.encode(text)) == text
    assert tokenizer(texts[0]).input_ids == [sp.bos_id()] + sp.encode(texts[0])
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (sp.bos_id(), sp.eos_id())

    # Imported back, the checkpoint keeps the tokenizer.
    assert import_main([str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    assert (tmp_path / "back" / "tokenizer.model").read_bytes() == model_bytes


def test_tokenizer_llama_cannot_reproduce_is_left_out(tiny_lm_spec, tmp_path, capsys):
    """transformers' LlamaTokenizer is BPE; a unigram model would be silently mis-tokenized."""
    save_ours(tiny_lm_spec, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "tokenizer.model").write_bytes(train_sentencepiece("unigram"))
    assert export_main([str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    assert "model_type=unigram" in capsys.readouterr().err
    assert not (tmp_path / "hf" / "tokenizer.model").exists()
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["eos_token_id"] is None


# ---------------------------------------------------------------- errors
def test_export_errors_exit_2_naming_the_problem(tiny_lm_spec, tmp_path, capsys):
    missing = tmp_path / "missing"
    assert export_main([str(missing), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(missing) in err

    save_ours(tiny_lm_spec, tmp_path / "ckpt")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    assert export_main([str(tmp_path / "ckpt"), str(tmp_path / "busy")]) == 2
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"
    assert export_main([str(tmp_path / "ckpt"), str(tmp_path / "busy"), "--force"]) == 0
    assert not (tmp_path / "busy" / "keep.txt").exists()
    # --force never replaces a directory holding the input (a run, with its checkpoints).
    assert export_main([str(tmp_path / "ckpt"), str(tmp_path), "--force"]) == 2
    assert "overlaps the input" in capsys.readouterr().err
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_export_refuses_other_families(tmp_path, capsys, monkeypatch):
    from shared import registry
    from shared.specs.base import OTHER, ParamSpec

    @dataclasses.dataclass(frozen=True)
    class ToySpec:
        size: int = 3

    manifest = lambda spec: [ParamSpec("w", (spec.size,), OTHER)]
    registry.families()   # the built-in ones first, then the toy beside them
    monkeypatch.setitem(registry._FAMILIES, "toy", registry.Family(
        "toy", ToySpec, manifest, lambda spec, seed: {"w": np.zeros(spec.size, np.float32)},
        lambda spec: {"total": spec.size}, backends={}, data_config=None, task=None,
        random_batch=None, memory=None))
    save_checkpoint(tmp_path / "ckpt", {"w": np.zeros(3, np.float32)},
                    checkpoint_config(ToySpec()))
    assert export_main([str(tmp_path / "ckpt"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "'toy'" in err and "only LM checkpoints" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change, field", [
    ({"attention_bias": True}, "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"model_type": "mistral"}, "model_type"),
    ({"head_dim": 32}, "head_dim"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling.rope_type"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}},
     "rope_parameters.rope_type"),
    ({"rope_theta": 1e6}, "rope_theta"),   # disagrees with rope_parameters
])
def test_unsupported_hf_configs_name_the_field(tiny_lm_spec, change, field):
    cfg = {**spec_to_hf_config(tiny_lm_spec), **change}
    with pytest.raises(CheckpointError, match=field):
        hf_config_to_spec(cfg)


def test_import_errors_exit_2_naming_the_problem(tiny_lm_spec, tmp_path, capsys):
    assert import_main([str(tmp_path / "missing"), str(tmp_path / "ckpt")]) == 2
    assert "missing" in capsys.readouterr().err

    make_hf_model(tiny_lm_spec).save_pretrained(tmp_path / "hf", safe_serialization=True)
    config_path = tmp_path / "hf" / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()),
                                       "attention_bias": True}))
    capsys.readouterr()   # save_pretrained's progress bar
    assert import_main([str(tmp_path / "hf"), str(tmp_path / "ckpt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "attention_bias" in err
    assert not (tmp_path / "ckpt").exists()
