"""The command line of `python -m mlx_models.stream` and `python -m torch_models.stream`:
simultaneous speech-to-unit translation of a WAV file, fed chunk by chunk as if it came
from a microphone.

    audio chunk --StreamingFbank--> new frames --CMVN--> StreamSession.push (Emformer state
    carried: constant work per chunk) --> ASR CTC and ST CTC transcripts so far
    end of audio --> StreamSession.finish --> MT decoder (greedy) --> unit decoder (CTC)

The backend supplies `load(checkpoint) -> (new_session, config)`; a session has
`push(features) -> new encoder frames`, `finish()`, `asr_argmax()`, `st_argmax()` and
`translate(max_target_len) -> {"mt_tokens", "unit_ctc_argmax", "unit_length"}`.
Reading audio, features, timing, detokenising and printing live here, once.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from shared.audio.fbank import CMVN, FbankOptions, StreamingFbank
from shared.audio.files import read_audio_file
from shared.engine.checkpoint import resolve_checkpoint
from shared.errors import CheckpointError
from shared.cli import run_cli
from shared.data.lm_text import load_tokenizer
from shared.errors import DataError
from shared.data.s2ut import cmvn_from_file, mt_token_ids, unit_sequence
from shared.eval.text import ctc_collapse

CHECKPOINT_FILES = ("src_tokenizer.model", "tgt_tokenizer.model", "cmvn.npz")


def read_speech(path: Path, sample_rate: int) -> np.ndarray:
    """(samples,) float32 mono at the model's rate (resampled if need be), or a DataError
    that says how to convert."""
    audio, _ = read_audio_file(path, sample_rate)
    if audio.shape[1] != 1:
        raise DataError(f"{path} has {audio.shape[1]} channels; EchoStream takes mono: "
                        f"sox {path.name} -c 1 out.wav")
    return audio[:, 0]


def stream(session, audio: np.ndarray, cmvn: CMVN, chunk_samples: int, on_chunk=None,
           sample_rate: int = 16000) -> dict:
    """Feed `audio` through `session` chunk by chunk. Per chunk: features, the encoder
    step and the CTC heads, timed separately; `on_chunk(i, seconds_so_far, session)` is
    called after each (for printing; not timed). Returns per-chunk milliseconds."""
    fbank = StreamingFbank(FbankOptions(sample_rate=sample_rate))  # as in training
    encoder_ms, total_ms = [], []
    starts = range(0, max(len(audio), 1), chunk_samples)
    for i, start in enumerate(starts):
        t0 = time.perf_counter()
        features = cmvn.apply(fbank.accept_waveform(audio[start:start + chunk_samples]))
        t1 = time.perf_counter()
        session.push(features)
        t2 = time.perf_counter()
        session.asr_argmax(), session.st_argmax()
        t3 = time.perf_counter()
        encoder_ms.append(1e3 * (t2 - t1))
        total_ms.append(1e3 * (t3 - t0))
        if on_chunk is not None:
            on_chunk(i, min(start + chunk_samples, len(audio)) / sample_rate, session)
    t0 = time.perf_counter()
    session.finish()
    finish_ms = 1e3 * (time.perf_counter() - t0)
    return {"chunks": len(total_ms), "encoder_ms": encoder_ms, "chunk_ms": total_ms,
            "finish_ms": finish_ms}


def summary(ms: list[float]) -> dict:
    a = np.asarray(ms, np.float64)
    return {"mean": float(a.mean()), "p50": float(np.median(a)), "p95": float(np.percentile(a, 95)),
            "max": float(a.max())}


def main(backend: str, load, argv=None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m {backend}_models.stream",
                                description="Streaming speech-to-unit translation with an EchoStream "
                                            f"checkpoint ({backend}): the audio is fed chunk by chunk "
                                            "and the transcripts are printed as they grow.")
    p.add_argument("--checkpoint", required=True, help="checkpoint or run directory")
    p.add_argument("input", help="mono WAV at the model's data.sample_rate, 16 kHz by default "
                                 "(or any format soundfile reads)")
    p.add_argument("--chunk-ms", type=int, default=320, help="audio per chunk (default 320 ms)")
    p.add_argument("--max-target-len", type=int, default=200, help="MT decoder tokens at most")
    p.add_argument("--quiet", action="store_true", help="print only the final results")
    p.add_argument("--json", help="also write results and per-chunk timings here")
    args = p.parse_args(argv)

    def run():
        if args.chunk_ms < 10:
            raise DataError(f"--chunk-ms must be >= 10 (one feature frame), got {args.chunk_ms}")
        if args.max_target_len < 1:
            raise DataError(f"--max-target-len must be >= 1, got {args.max_target_len}")
        if args.json and not Path(args.json).resolve().parent.is_dir():
            raise DataError(f"--json {args.json}: no such directory {Path(args.json).parent}")
        ckpt = resolve_checkpoint(args.checkpoint, report=sys.stderr)
        missing = [name for name in CHECKPOINT_FILES if not (ckpt / name).is_file()]
        if missing:
            raise CheckpointError(f"{ckpt} lacks {', '.join(missing)}: stream needs a checkpoint "
                                  f"saved by EchoStream training (python -m {backend}_models.train "
                                  f"--config configs/echostream_demo.yaml)")
        new_session, config = load(ckpt)
        spec = config["model"]
        src = load_tokenizer(ckpt / "src_tokenizer.model", spec["src_vocab_size"])
        tgt = load_tokenizer(ckpt / "tgt_tokenizer.model", spec["tgt_vocab_size"])
        cmvn = cmvn_from_file(ckpt / "cmvn.npz")
        sample_rate = int(config.get("data", {}).get("sample_rate", 16000))
        audio = read_speech(Path(args.input), sample_rate)
        seconds = len(audio) / sample_rate
        shown = {"asr": None, "st": None}

        def show(i, t, session):
            asr = src.decode(ctc_collapse(session.asr_argmax()))
            st = tgt.decode(ctc_collapse(session.st_argmax()))
            if not args.quiet and (asr, st) != (shown["asr"], shown["st"]):
                print(f"[{t:6.2f} s] ASR: {asr}\n{'':11}ST:  {st}", flush=True)
            shown.update(asr=asr, st=st)

        session = new_session()
        timing = stream(session, audio, cmvn, sample_rate * args.chunk_ms // 1000, show, sample_rate)
        t0 = time.perf_counter()
        out = session.translate(args.max_target_len)
        translate_ms = 1e3 * (time.perf_counter() - t0)
        mt_ids = mt_token_ids(out["mt_tokens"])
        units = unit_sequence(out["unit_ctc_argmax"], out["unit_length"])
        result = {
            "asr": src.decode(ctc_collapse(session.asr_argmax())),
            "st_ctc": tgt.decode(ctc_collapse(session.st_argmax())),
            "mt": tgt.decode(mt_ids), "units": units, "audio_seconds": seconds,
            "chunk_ms_setting": args.chunk_ms, "chunks": timing["chunks"],
            "encoder_ms": summary(timing["encoder_ms"]), "chunk_ms": summary(timing["chunk_ms"]),
            "finish_ms": timing["finish_ms"], "translate_ms": translate_ms,
            "real_time_factor": (sum(timing["chunk_ms"]) + timing["finish_ms"] + translate_ms)
            / 1e3 / max(seconds, 1e-9)}
        print(f"ASR:   {result['asr']}\nST:    {result['st_ctc']}\nMT:    {result['mt']}\n"
              f"units: {' '.join(map(str, units))}")
        c, e = result["chunk_ms"], result["encoder_ms"]
        print(f"[{backend}] {seconds:.2f} s of audio in {timing['chunks']} chunks of {args.chunk_ms} ms: "
              f"per chunk {c['mean']:.1f} ms mean, {c['p95']:.1f} ms p95 (encoder {e['mean']:.1f} ms); "
              f"final MT + units {translate_ms:.0f} ms; real-time factor "
              f"{result['real_time_factor']:.3f}", file=sys.stderr)
        if args.json:
            Path(args.json).write_text(json.dumps(result | {"timing": timing}, indent=1))
            print(f"wrote the results and per-chunk timings to {args.json}", file=sys.stderr)
    return run_cli(run, errors=(CheckpointError, DataError, ValueError))
