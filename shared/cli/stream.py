"""The command line of `python -m mlx_models.stream` and `python -m torch_models.stream`:
simultaneous speech-to-unit translation of a WAV file, fed chunk by chunk as if it came
from a microphone, with the translation written while the audio is read.

    audio chunk --StreamingFbank--> new frames --CMVN--> session.push (Emformer state
    carried: constant work per chunk) --> ASR CTC and ST CTC transcripts so far
    --policy (shared/simultaneous.py)--> MT tokens (KV-cached greedy decoding) --> units

The backend supplies `load(checkpoint) -> (new_session, config)` (the session's methods:
shared/simultaneous.py). Reading audio, the policy, timing, detokenising and printing
live here and in shared/simultaneous.py, once.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from shared.audio.files import read_audio_file
from shared.cli import run_cli
from shared.data.lm_text import load_tokenizer
from shared.data.s2ut import cmvn_from_file
from shared.engine.checkpoint import resolve_checkpoint
from shared.errors import CheckpointError, DataError
from shared.eval.text import ctc_collapse
from shared.registry import spec_from_dict
from shared.simultaneous import POLICIES, Policy, SimultaneousTranslator, segment_for_chunk

CHECKPOINT_FILES = ("src_tokenizer.model", "tgt_tokenizer.model", "cmvn.npz")


def read_speech(path: Path, sample_rate: int) -> np.ndarray:
    """(samples,) float32 mono at the model's rate (resampled if need be), or a DataError
    that says how to convert."""
    audio, _ = read_audio_file(path, sample_rate)
    if audio.shape[1] != 1:
        raise DataError(f"{path} has {audio.shape[1]} channels; EchoStream takes mono: "
                        f"sox {path.name} -c 1 out.wav")
    return audio[:, 0]


def summary(ms: list[float]) -> dict:
    a = np.asarray(ms, np.float64)
    return {"mean": float(a.mean()), "p50": float(np.median(a)), "p95": float(np.percentile(a, 95)),
            "max": float(a.max())}


def check_companions(backend: str, ckpt: Path) -> None:
    """One CheckpointError naming the files an EchoStream checkpoint keeps beside its
    weights (tokenizers, CMVN) that `ckpt` lacks."""
    missing = [name for name in CHECKPOINT_FILES if not (ckpt / name).is_file()]
    if missing:
        raise CheckpointError(f"{ckpt} lacks {', '.join(missing)}: streaming needs a checkpoint "
                              f"saved by EchoStream training (python -m {backend}_models.train "
                              f"--config configs/echostream_demo.yaml)")


def checkpoint_companions(backend: str, ckpt: Path, config: dict) -> dict:
    """What an EchoStream checkpoint keeps beside its weights: tokenizers, CMVN and the
    sample rate."""
    check_companions(backend, ckpt)
    spec = config["model"]
    return {"src": load_tokenizer(ckpt / "src_tokenizer.model", spec["src_vocab_size"]),
            "tgt": load_tokenizer(ckpt / "tgt_tokenizer.model", spec["tgt_vocab_size"]),
            "cmvn": cmvn_from_file(ckpt / "cmvn.npz"),
            "sample_rate": int(config.get("data", {}).get("sample_rate", 16000))}


def load_checkpoint(backend: str, load, checkpoint: str) -> dict:
    """The session factory, config, spec and companions of an EchoStream checkpoint."""
    ckpt = resolve_checkpoint(checkpoint, report=sys.stderr)
    check_companions(backend, ckpt)   # before the model loads
    new_session, config = load(ckpt)
    return {"new_session": new_session, "config": config,
            "spec": spec_from_dict(config["family"], config["model"]),
            **checkpoint_companions(backend, ckpt, config)}


def check_stream_args(args):
    if args.chunk_ms < 10:
        raise DataError(f"--chunk-ms must be >= 10 (one feature frame), got {args.chunk_ms}")
    if args.max_target_len < 1:
        raise DataError(f"--max-target-len must be >= 1, got {args.max_target_len}")
    if args.k < 0:
        raise DataError(f"--k must be >= 0, got {args.k}")


def add_policy_args(p: argparse.ArgumentParser):
    p.add_argument("--policy", choices=POLICIES, default="ctc",
                   help="when to write: ctc (StreamSpeech: when the ASR CTC transcript grows, up to "
                        "the ST CTC length - k tokens), wait-k (one token per chunk after k chunks), "
                        "offline (everything after the audio ends); default ctc")
    p.add_argument("--k", type=int, default=0, help="the policy's lag (tokens for ctc, chunks for wait-k)")
    p.add_argument("--max-target-len", type=int, default=200, help="MT decoder tokens at most")


def main(backend: str, load, argv=None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m {backend}_models.stream",
                                description="Simultaneous speech-to-unit translation with an EchoStream "
                                            f"checkpoint ({backend}): the audio is fed chunk by chunk and "
                                            "MT words and units are printed as they are written, with the "
                                            "audio time at which each was written.")
    p.add_argument("--checkpoint", required=True, help="checkpoint or run directory")
    p.add_argument("input", help="mono WAV (any rate soundfile reads; resampled to the model's "
                                 "data.sample_rate, 16 kHz by default)")
    p.add_argument("--chunk-ms", type=int, default=320, help="audio per chunk (default 320 ms)")
    add_policy_args(p)
    p.add_argument("--quiet", action="store_true", help="print only the final results")
    p.add_argument("--json", help="also write results, what was written when, and per-chunk timings here")
    args = p.parse_args(argv)

    def run():
        from shared.eval.latency import TimedOutput, latency_scores
        from shared.eval.streaming import json_safe
        from shared.simultaneous import word_delays

        check_stream_args(args)
        if args.json and not Path(args.json).resolve().parent.is_dir():
            raise DataError(f"--json {args.json}: no such directory {Path(args.json).parent}")
        loaded = load_checkpoint(backend, load, args.checkpoint)
        src, tgt, sample_rate = loaded["src"], loaded["tgt"], loaded["sample_rate"]
        audio = read_speech(Path(args.input), sample_rate)
        seconds = len(audio) / sample_rate
        session = loaded["new_session"](segment_for_chunk(loaded["spec"], args.chunk_ms, args.policy))
        translator = SimultaneousTranslator(session, Policy(args.policy, args.k), loaded["cmvn"],
                                            sample_rate, args.max_target_len)
        def show(t, new_tokens, new_units):
            """What was written after the audio up to t: the translation so far (a word
            may still grow) and the new units."""
            if args.quiet:
                return
            line = f"[{t:6.2f} s]"
            if new_tokens:
                line += f" MT: {tgt.decode(translator.out.mt_tokens)}"
            if new_units:
                line += f"{' |' if new_tokens else ''} +units: {' '.join(map(str, new_units))}"
            print(line, flush=True)

        written = translator.run(audio, sample_rate * args.chunk_ms // 1000, show)
        pieces = [tgt.id_to_piece(t) for t in written.mt_tokens]
        word_elapsed = word_delays(pieces, written.mt_elapsed, written.source_ms + written.compute_ms)
        text_latency = latency_scores([TimedOutput(word_delays(pieces, written.mt_delays, written.source_ms),
                                                   written.source_ms, elapsed=word_elapsed)])
        unit_latency = latency_scores([TimedOutput(written.unit_delays, written.source_ms,
                                                   elapsed=written.unit_elapsed)])
        total_ms = sum(written.chunk_ms) + written.finish_ms
        result = {
            "asr": src.decode(ctc_collapse(session.asr_argmax())),
            "st_ctc": tgt.decode(ctc_collapse(session.st_argmax())),
            "mt": tgt.decode(written.mt_tokens), "units": written.units, "audio_seconds": seconds,
            "policy": args.policy, "k": args.k, "chunk_ms_setting": args.chunk_ms,
            "chunks": len(written.chunk_ms),
            "encoder_ms": summary(written.encoder_ms), "chunk_ms": summary(written.chunk_ms),
            "finish_ms": written.finish_ms, "real_time_factor": total_ms / 1e3 / max(seconds, 1e-9),
            "latency_ms": {"text": text_latency, "units": unit_latency},
            "computation_aware_latency_ms": {
                "text": latency_scores([TimedOutput(word_elapsed, written.source_ms)]),
                "units": latency_scores([TimedOutput(written.unit_elapsed, written.source_ms)])},
        }
        print(f"ASR:   {result['asr']}\nST:    {result['st_ctc']}\nMT:    {result['mt']}\n"
              f"units: {' '.join(map(str, written.units))}")
        c, e = result["chunk_ms"], result["encoder_ms"]
        al = text_latency["AL"]
        print(f"[{backend}] {seconds:.2f} s of audio in {len(written.chunk_ms)} chunks of {args.chunk_ms} ms, "
              f"policy {args.policy} (k={args.k}): per chunk {c['mean']:.1f} ms mean, {c['p95']:.1f} ms p95 "
              f"(encoder {e['mean']:.1f} ms); after the audio {written.finish_ms:.0f} ms; text AL "
              f"{al:.0f} ms; real-time factor {result['real_time_factor']:.3f}", file=sys.stderr)
        if args.json:
            timing = {"chunk_ms": written.chunk_ms, "encoder_ms": written.encoder_ms}
            emitted = {"mt_tokens": written.mt_tokens, "mt_delays_ms": written.mt_delays,
                       "mt_elapsed_ms": written.mt_elapsed, "unit_delays_ms": written.unit_delays,
                       "unit_elapsed_ms": written.unit_elapsed}
            Path(args.json).write_text(json.dumps(json_safe(result | {"timing": timing, "written": emitted}),
                                                  indent=1))
            print(f"wrote the results and per-chunk timings to {args.json}", file=sys.stderr)
    return run_cli(run, errors=(CheckpointError, DataError, ValueError))
