"""Greedy decoding speed of our MLX decoder against mlx-lm's on the same model.

    python bench/decode_vs_mlx_lm.py                       # configs/tiny.yaml's LM
    python bench/decode_vs_mlx_lm.py --tokens 128 --repeats 15 --config configs/m2_8gb_lm.yaml

Trains nothing: builds the config's LM from its spec's initial weights, saves it as a
checkpoint, exports that to a temporary Hugging Face Llama directory (shared.export_hf)
and loads the directory with mlx-lm. Each repeat times every decoder once, in turns, so a
change in machine load hits them all alike (who goes first rotates): a prefill of
--prompt-tokens random tokens, then --tokens greedy tokens through the KV cache. Prints
the median decode tokens/s of each, the spread (min-max) over repeats, the median of the
per-repeat time ratios against mlx-lm, and the process's CPU time per decoded token (all
its threads: the work, where tokens/s is the wall time). The first repeat is a warm-up
and not counted. Needs mlx-lm (a dev dependency).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def ours(model):
    """Our decoder (mlx_models.generate), greedy, as the generate CLI drives it."""
    from mlx_models.generate import decoder

    def run(prompt: np.ndarray, new: int) -> tuple[list[int], float, float]:
        step = decoder(model)
        tokens = [step(prompt)]
        t1, c1 = time.perf_counter(), time.process_time()
        for _ in range(new):
            tokens.append(step(np.array([[tokens[-1]]], np.int32)))
        return tokens, t1, c1
    return run


def numpy_logits(model):
    """The decoder before the pipelined step (up to commit bb82d02): each token's logits
    read back to numpy, the greedy token picked there, the next step built after."""
    import mlx.core as mx

    def run(prompt: np.ndarray, new: int) -> tuple[list[int], float, float]:
        cache = model.make_cache()

        def next_logits(ids):
            return np.array(model(mx.array(ids), cache)[0, -1].astype(mx.float32))
        tokens = [int(np.argmax(next_logits(prompt)))]
        t1, c1 = time.perf_counter(), time.process_time()
        for _ in range(new):
            tokens.append(int(np.argmax(next_logits(np.array([[tokens[-1]]], np.int32)))))
        return tokens, t1, c1
    return run


def mlx_lm_decoder(model):
    """mlx-lm's generate_step (its default sampler: greedy), as its stream_generate drives it."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    def run(prompt: np.ndarray, new: int) -> tuple[list[int], float, float]:
        steps = generate_step(mx.array(prompt[0]), model, max_tokens=new + 1)
        tokens = [next(steps)[0]]
        t1, c1 = time.perf_counter(), time.process_time()
        tokens += [token for token, _ in steps]
        return tokens, t1, c1
    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python bench/decode_vs_mlx_lm.py",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "tiny.yaml"), help="an LM config")
    p.add_argument("--tokens", type=int, default=64, help="greedy tokens after the first")
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=30, help="timed turns of every decoder")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import mlx_models  # noqa: F401  -- loads OpenBLAS before mlx.core (Linux)
    import mlx.core as mx
    from mlx_lm.utils import load_model as mlx_lm_load_model

    from mlx_models.models import build_model, save_model
    from shared.engine.config import load_config
    from shared.interop.export_hf import export

    config = load_config(args.config)
    spec = config.model
    if args.prompt_tokens + args.tokens + 1 > spec.max_seq_length:
        p.error(f"--prompt-tokens + --tokens + 1 must fit the model's context of {spec.max_seq_length}")
    model = build_model(spec, config.train.seed)
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        save_model(model, Path(tmp) / "ckpt")
        export(Path(tmp) / "ckpt", Path(tmp) / "hf")
        theirs, _ = mlx_lm_load_model(Path(tmp) / "hf")
    decoders = {"ours": ours(model), "ours before (numpy logits)": numpy_logits(model),
                "mlx-lm": mlx_lm_decoder(theirs)}

    prompt = np.random.default_rng(args.seed).integers(0, spec.vocab_size, (1, args.prompt_tokens))
    prompt = prompt.astype(np.int32)
    speed = {name: [] for name in decoders}
    seconds = {name: [] for name in decoders}
    cpu_ms = {name: [] for name in decoders}
    outputs = {}
    names = list(decoders)
    for rep in range(args.repeats + 1):
        for name in names[rep % len(names):] + names[:rep % len(names)]:   # who goes first rotates
            mx.synchronize()
            tokens, t1, c1 = decoders[name](prompt, args.tokens)
            t2, c2 = time.perf_counter(), time.process_time()
            mx.synchronize()   # work a decoder queued beyond its last token is not timed
            outputs[name] = tokens
            if rep:
                speed[name].append(args.tokens / (t2 - t1))
                seconds[name].append(t2 - t1)
                cpu_ms[name].append(1e3 * (c2 - c1) / args.tokens)

    print(f"{args.config}: prompt {args.prompt_tokens} tokens, then {args.tokens} greedy tokens; "
          f"{args.repeats} repeats after a warm-up, decoders in turns; mlx {mx.__version__}")
    print("| decoder | decode tokens/s: median | min-max | decode time / mlx-lm's: median "
          "(min-max) | CPU ms/token (all threads): median |")
    print("|---|---|---|---|---|")
    for name in decoders:
        ratios = [a / b for a, b in zip(seconds[name], seconds["mlx-lm"])]
        print(f"| {name} | {statistics.median(speed[name]):.1f} | {min(speed[name]):.1f}-"
              f"{max(speed[name]):.1f} | {statistics.median(ratios):.3f} "
              f"({min(ratios):.3f}-{max(ratios):.3f}) | {statistics.median(cpu_ms[name]):.2f} |")
    same = {name: out == outputs["mlx-lm"] for name, out in outputs.items()}
    print("same greedy tokens as mlx-lm: " + ", ".join(f"{n}: {'yes' if s else 'NO'}"
                                                       for n, s in same.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
