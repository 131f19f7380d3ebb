"""Export an LM checkpoint as a Hugging Face Llama model directory.

    python -m shared.export_hf CKPT_OR_RUN OUT_DIR [--dtype float32|bfloat16|float16] [--force]

CKPT_OR_RUN is a checkpoint directory or a run directory (its best checkpoint, else its
newest), as for generate.

OUT_DIR loads with transformers (LlamaForCausalLM.from_pretrained, AutoTokenizer) and with
mlx-lm: config.json, model.safetensors, generation_config.json, and, when CKPT holds a
Llama-compatible SentencePiece tokenizer.model, that file plus tokenizer_config.json.
The directory appears complete or not at all.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shared.cli import check_output_dir, run_cli
from shared.engine.checkpoint import open_checkpoint, resolve_checkpoint, write_directory
from shared.errors import CheckpointError
from shared.interop.hf_llama import (DTYPES, HF_CONFIG_FILE, HF_WEIGHTS_FILE, TOKENIZER_FILE,
                             cast_weights, spec_to_hf_config, to_hf_weights)
from shared.specs.lm import LMSpec


def export(checkpoint: str | Path, out_dir: str | Path, dtype: str = "float32",
           force: bool = False) -> Path:
    """Write OUT_DIR from a checkpoint, or from a run directory's best (else newest) one."""
    out_dir = Path(out_dir)
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    checkpoint = resolve_checkpoint(checkpoint)
    check_output_dir(out_dir, force, source=checkpoint)
    family, spec, _, weights, _ = open_checkpoint(checkpoint)
    if not isinstance(spec, LMSpec):    # the Llama format holds exactly our LM's parameters
        raise CheckpointError(f"checkpoint {checkpoint} holds a {family!r} model; only LM "
                              f"checkpoints export as Hugging Face Llama")

    files, special_ids = {}, {}
    if (checkpoint / TOKENIZER_FILE).is_file():
        files, special_ids = llama_tokenizer_files(checkpoint / TOKENIZER_FILE,
                                                   spec.max_seq_length)
    config = spec_to_hf_config(spec, dtype, special_ids.get("bos_token_id"),
                               special_ids.get("eos_token_id"))
    generation = {"bos_token_id": config["bos_token_id"],
                  "eos_token_id": config["eos_token_id"],
                  "pad_token_id": special_ids.get("pad_token_id")}
    files[HF_CONFIG_FILE] = _json_bytes(config)
    files["generation_config.json"] = _json_bytes(generation)
    hf_weights = cast_weights(to_hf_weights(weights, spec, f"checkpoint {checkpoint}"), dtype)

    files[HF_WEIGHTS_FILE] = hf_weights
    write_directory(out_dir, files, manifest=False)   # a plain Hugging Face folder
    return out_dir


def llama_tokenizer_files(path: Path, max_length: int) -> tuple[dict[str, bytes], dict]:
    """tokenizer.model plus a tokenizer_config.json under which AutoTokenizer builds a
    LlamaTokenizer, and the special token ids; nothing (with a warning) for a model that
    LlamaTokenizer would tokenize differently from SentencePiece.

    transformers 5's LlamaTokenizer rebuilds the model as byte-fallback BPE with no
    normalizer and a single prefix space, so it reproduces SentencePiece only for models
    trained like Llama's own: model_type=bpe, byte_fallback=true,
    normalization_rule_name=identity, remove_extra_whitespaces=false. A tokenizer.model
    shipped without that check would be silently mis-tokenized, since transformers picks
    LlamaTokenizer for any llama directory holding one."""
    from sentencepiece import sentencepiece_model_pb2

    data = path.read_bytes()
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as e:  # protobuf's DecodeError
        raise CheckpointError(f"{path} is not a SentencePiece model ({e})") from None
    trainer, normalizer = proto.trainer_spec, proto.normalizer_spec
    problems = []
    if trainer.model_type != trainer.BPE:
        problems.append(f"model_type={trainer.ModelType.Name(trainer.model_type).lower()}")
    if not trainer.byte_fallback:
        problems.append("byte_fallback=false")
    if normalizer.name != "identity":
        problems.append(f"normalization_rule_name={normalizer.name}")
    if normalizer.remove_extra_whitespaces:
        problems.append("remove_extra_whitespaces=true")
    if not normalizer.add_dummy_prefix:
        problems.append("add_dummy_prefix=false")
    if problems:
        print(f"warning: {path} not exported: transformers' LlamaTokenizer would tokenize "
              f"differently ({', '.join(problems)}); it needs model_type=bpe, "
              f"byte_fallback=true, normalization_rule_name=identity, "
              f"remove_extra_whitespaces=false", file=sys.stderr)
        return {}, {}

    def special(token_id: int):
        valid = 0 <= token_id < len(proto.pieces)
        return (token_id, proto.pieces[token_id].piece) if valid else (None, None)

    (bos_id, bos), (eos_id, eos) = special(trainer.bos_id), special(trainer.eos_id)
    (_, unk), (pad_id, pad) = special(trainer.unk_id), special(trainer.pad_id)
    tokenizer_config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": bos, "eos_token": eos, "unk_token": unk, "pad_token": pad,
        "add_bos_token": bos is not None,   # the Llama convention
        "add_eos_token": False,
        "legacy": False,
        "model_max_length": max_length,
        "clean_up_tokenization_spaces": False,
    }
    files = {TOKENIZER_FILE: data, "tokenizer_config.json": _json_bytes(tokenizer_config)}
    return files, {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id}


def _json_bytes(value: dict) -> bytes:
    return (json.dumps(value, indent=2) + "\n").encode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.export_hf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="our LM checkpoint directory, or a run directory "
                                           "(its best checkpoint, else its newest)")
    parser.add_argument("out_dir", help="Hugging Face model directory to write")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32",
                        help="dtype of the exported weights (default float32)")
    parser.add_argument("--force", action="store_true",
                        help="replace OUT_DIR if it is not empty")
    args = parser.parse_args(argv)

    def run():
        checkpoint = resolve_checkpoint(args.checkpoint, report=sys.stderr)
        out = export(checkpoint, args.out_dir, args.dtype, args.force)
        files = sorted(p.name for p in out.iterdir())
        tokenizer = "with" if TOKENIZER_FILE in files else "without"
        print(f"exported {checkpoint} -> {out} (Hugging Face Llama, {args.dtype}, "
              f"{len(files)} files, {tokenizer} {TOKENIZER_FILE})", file=sys.stderr)
    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
