"""Import a Hugging Face Llama model directory as one of our LM checkpoints.

    python -m shared.import_hf HF_DIR OUT_CKPT [--dtype keep|float32|bfloat16] [--force]

HF_DIR is what save_pretrained writes: config.json and model.safetensors, or shards listed
in model.safetensors.index.json. A tokenizer.model in HF_DIR is copied along. Configs our
LM cannot represent exactly (scaled RoPE, biases, ...) are refused, naming the field.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shared.cli import check_output_dir, run_cli
from shared.engine.checkpoint import checkpoint_config, save_checkpoint
from shared.interop.hf_llama import (HF_CONFIG_FILE, TOKENIZER_FILE, cast_weights, from_hf_weights,
                             hf_config_to_spec, load_hf_checkpoint)

IMPORT_DTYPES = ("keep", "float32", "bfloat16")


def import_hf(hf_dir: str | Path, out_ckpt: str | Path, dtype: str = "keep",
              force: bool = False) -> Path:
    return _import_hf(hf_dir, out_ckpt, dtype, force)[0]


def _import_hf(hf_dir: str | Path, out_ckpt: str | Path, dtype: str,
               force: bool) -> tuple[Path, str]:
    """The written checkpoint and a description of it for the command's last line."""
    hf_dir, out_ckpt = Path(hf_dir), Path(out_ckpt)
    if dtype not in IMPORT_DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(IMPORT_DTYPES)}, got {dtype!r}")
    check_output_dir(out_ckpt, force, source=hf_dir)
    cfg, hf_weights = load_hf_checkpoint(hf_dir)
    spec = hf_config_to_spec(cfg, source=str(hf_dir / HF_CONFIG_FILE))
    weights = from_hf_weights(hf_weights, spec, source=f"Hugging Face model {hf_dir}")
    if dtype != "keep":
        weights = cast_weights(weights, dtype)
    tokenizer = hf_dir / TOKENIZER_FILE
    extra = {TOKENIZER_FILE: tokenizer.read_bytes()} if tokenizer.is_file() else None
    path = save_checkpoint(out_ckpt, weights, checkpoint_config(spec), extra_files=extra)
    dtypes = "/".join(sorted({str(a.dtype) for a in weights.values()}))
    params = sum(a.size for a in weights.values())
    return path, (f"LM, {params:,} parameters, {dtypes}, "
                  f"{'with' if extra else 'without'} {TOKENIZER_FILE}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.import_hf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("hf_dir", help="Hugging Face Llama model directory")
    parser.add_argument("out_ckpt", help="checkpoint directory to write")
    parser.add_argument("--dtype", choices=IMPORT_DTYPES, default="keep",
                        help="dtype of the imported weights (default: as stored)")
    parser.add_argument("--force", action="store_true",
                        help="replace OUT_CKPT if it is not empty")
    args = parser.parse_args(argv)

    def run():
        path, what = _import_hf(args.hf_dir, args.out_ckpt, args.dtype, args.force)
        print(f"imported {args.hf_dir} -> {path} ({what})", file=sys.stderr)
    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
