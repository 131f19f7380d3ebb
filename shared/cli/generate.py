"""The command line of `python -m mlx_models.generate` and `python -m torch_models.generate`.

The backend supplies `load(checkpoint) -> (start, spec)`, where `start(temperature, top_p,
seed)` gives a decoder over a fresh KV cache: `step(ids) -> int` feeds new token ids (a
(1, T) int32 array) through the cache and returns the next token, picked on the backend's
own framework (greedy at temperature 0, else top-p sampling; mlx_models.generate also
computes the following token while the caller prints this one). Prompting, streaming,
stopping and timing live here, once.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from shared.cli import run_cli
from shared.data.lm_text import load_tokenizer
from shared.engine.checkpoint import resolve_checkpoint
from shared.errors import CheckpointError, DataError


def parser(backend: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m {backend}_models.generate",
                                description=f"Generate text from an LM checkpoint with {backend}.")
    p.add_argument("--checkpoint", required=True, help="checkpoint or run directory")
    p.add_argument("--prompt", default="", help="text to continue")
    p.add_argument("--max-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0,
                   help="sampling seed (temperature > 0); mlx and torch draw differently for "
                        "the same seed (each its own RNG); greedy output is the same on both")
    p.add_argument("--tokenizer", help="SentencePiece model (default: the checkpoint's)")
    return p


def generate(step, tokenizer, prompt: str, max_tokens: int, max_length: int,
             out=sys.stdout) -> dict:
    """Stream the continuation of `prompt` to `out`, one token per `step` (a decoder's, see
    the module docstring); return ids, timings and why it stopped (`stopped`:
    "max_tokens", "eos" or "context")."""
    ids = [tokenizer.bos_id()] + tokenizer.encode(prompt)
    if len(ids) >= max_length:
        raise DataError(f"the prompt is {len(ids)} tokens; the model's context is {max_length}")
    start = time.perf_counter()
    token = step(np.array([ids], np.int32))    # the prompt through the cache, and a token
    prefill_s = time.perf_counter() - start
    new, printed = [], tokenizer.decode(ids[1:])
    out.write(printed)
    start, steps = time.perf_counter(), 0
    stopped = "max_tokens"
    while len(new) < max_tokens:
        if len(ids) + len(new) >= max_length:
            stopped = "context"
            break
        if new:     # asked only when wanted: the first came with the prompt
            token = step(np.array([[new[-1]]], np.int32))
            steps += 1
        if token == tokenizer.eos_id():
            stopped = "eos"
            break
        new.append(token)
        # Decode the whole text (pieces merge across tokens), and hold back a character
        # whose bytes have not all arrived: a byte-fallback token decodes alone to U+FFFD.
        text = tokenizer.decode(ids[1:] + new).rstrip("\ufffd")
        out.write(text[len(printed):])
        out.flush()
        printed = text
    decode_s = time.perf_counter() - start
    out.write(tokenizer.decode(ids[1:] + new)[len(printed):] + "\n")
    return {"prompt_tokens": len(ids), "new_tokens": len(new), "prefill_s": prefill_s,
            # The decoding speed: tokens picked after the first (which came with the prompt).
            "tokens_per_s": steps / decode_s if steps else 0.0, "ids": ids + new,
            "stopped": stopped}


def main(backend: str, load, argv=None) -> int:
    args = parser(backend).parse_args(argv)

    def run():
        if args.max_tokens < 0:
            raise DataError(f"--max-tokens must be >= 0, got {args.max_tokens}")
        if not args.temperature >= 0:   # also NaN
            raise DataError(f"--temperature must be >= 0 (0: greedy), got {args.temperature}")
        if not 0 < args.top_p <= 1:
            raise DataError(f"--top-p must be within (0, 1], got {args.top_p}")
        ckpt = resolve_checkpoint(args.checkpoint, report=sys.stderr)
        tokenizer_path = Path(args.tokenizer) if args.tokenizer else ckpt / "tokenizer.model"
        start, spec = load(ckpt)
        tokenizer = load_tokenizer(tokenizer_path, spec.vocab_size,
                                   fix="pass --tokenizer with the model's SentencePiece file")
        stats = generate(start(args.temperature, args.top_p, args.seed), tokenizer, args.prompt,
                         args.max_tokens, spec.max_seq_length)
        if stats["stopped"] == "eos":
            print(f"(stopped at end-of-sequence after {stats['new_tokens']} tokens)", file=sys.stderr)
        elif stats["stopped"] == "context":
            print(f"(stopped after {stats['new_tokens']} tokens: the model's context of "
                  f"{spec.max_seq_length} tokens is full)", file=sys.stderr)
        print(f"[{backend}] prompt {stats['prompt_tokens']} tokens in {stats['prefill_s']:.3f}s, "
              f"generated {stats['new_tokens']} tokens at {stats['tokens_per_s']:.1f} tokens/s",
              file=sys.stderr)
    return run_cli(run, errors=(CheckpointError, DataError))
