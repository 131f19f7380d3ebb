"""Per-chunk cost of simultaneous translation at two utterance lengths, from a trained
EchoStream checkpoint: everything a stream does per chunk (features, the Emformer step,
both CTC heads, the policy, KV-cached MT decoding, the units of the new MT states).

    python bench/stream_cost.py --checkpoint RUN --backend torch [--seconds 5,60] [--chunk-ms 320]

The speech is the manifest's utterances end to end (RUN's dev set by default), cut to each
length. Reported: the mean per-chunk cost over the chunks after the first two, median over
--repeats runs after a warm-up. Run with OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 for
steady numbers on a shared machine (docs/benchmarks.md).
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(1, str(Path(__file__).resolve().parent.parent))   # this checkout's packages

from shared.cli.stream import load_checkpoint  # noqa: E402
from shared.data.s2ut import load_audio, read_manifest  # noqa: E402
from shared.simultaneous import Policy, SimultaneousTranslator, segment_for_chunk  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--backend", choices=("mlx", "torch"), default="torch")
    p.add_argument("--manifest", help="speech to stream (default: RUN/data/synth_s2ut/dev.tsv)")
    p.add_argument("--seconds", default="5,60")
    p.add_argument("--chunk-ms", type=int, default=320)
    p.add_argument("--policy", default="ctc")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.backend == "torch":
        import torch
        torch.set_num_threads(1)
    load = importlib.import_module(f"{args.backend}_models.stream").load
    loaded = load_checkpoint(args.backend, load, args.checkpoint)
    rate = loaded["sample_rate"]
    manifest = args.manifest or Path(args.checkpoint) / "data" / "synth_s2ut" / "dev.tsv"
    speech = np.concatenate([load_audio(u) for u in read_manifest(manifest, rate)])
    lengths = [float(s) for s in args.seconds.split(",")]
    speech = np.tile(speech, int(np.ceil(max(lengths) * rate / len(speech))))
    segment = segment_for_chunk(loaded["spec"], args.chunk_ms, args.policy)
    costs = {}
    for seconds in lengths:
        runs = []
        for rep in range(args.repeats + 1):
            written = SimultaneousTranslator(loaded["new_session"](segment), Policy(args.policy), loaded["cmvn"],
                                             rate, max_target_len=10 ** 6).run(
                speech[:int(seconds * rate)], rate * args.chunk_ms // 1000)
            if rep:   # the first: warm-up
                runs.append((statistics.mean(written.chunk_ms[2:]), statistics.mean(written.encoder_ms[2:])))
        chunk, encoder = (statistics.median(r[i] for r in runs) for i in (0, 1))
        costs[seconds] = chunk
        print(f"{args.backend} {seconds:g} s: {len(written.chunk_ms)} chunks of {args.chunk_ms} ms, "
              f"{len(written.mt_tokens)} MT tokens, {len(written.units)} units written; per chunk "
              f"{chunk:.2f} ms (encoder + CTC heads {encoder:.2f} ms)")
    longest, shortest = costs[max(lengths)], costs[min(lengths)]
    print(f"{args.backend} {max(lengths):g} s / {min(lengths):g} s per chunk: {longest / shortest:.2f}x")


if __name__ == "__main__":
    main()
