"""The command line of `python -m mlx_models.separate` and `python -m torch_models.separate`:
separate a song of any length into stems with a trained separation checkpoint.

The backend supplies `load(checkpoint) -> (run_chunks, config)`, where
`run_chunks((N, C, T) float32) -> (N, S, C, T)`; reading and writing audio, chunking with
cross-fades (shared/audio/chunked.py), the progress bar and the speed report live here.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from shared.audio.chunked import chunk_layout, separate
from shared.audio.files import read_audio_file
from shared.cli import run_cli
from shared.data.musdb import STEMS
from shared.engine.checkpoint import resolve_checkpoint
from shared.errors import CheckpointError, DataError


def read_input(path: Path, sample_rate: int, channels: int) -> np.ndarray:
    """(C, T) float32; mono is copied to every channel the model expects."""
    audio, _ = read_audio_file(path, sample_rate)
    audio = audio.T
    if audio.shape[0] == 1 and channels > 1:
        audio = np.repeat(audio, channels, axis=0)
    if audio.shape[0] != channels:
        raise DataError(f"{path} has {audio.shape[0]} channels; the model takes {channels} "
                        f"(mono input is also accepted)")
    return audio


def add_chunk_options(p: argparse.ArgumentParser) -> None:
    """How a song is cut into chunks (shared/audio/chunked.py): separate and evaluate."""
    p.add_argument("--chunk-seconds", type=float, help="default: the training segment length")
    p.add_argument("--overlap", type=float, default=0.25, help="chunk overlap, 0..0.9 (default 0.25)")
    p.add_argument("--batch-chunks", type=int, default=4, help="chunks per forward pass")


def check_chunk_options(args) -> None:
    if args.chunk_seconds is not None and not args.chunk_seconds > 0:
        raise DataError(f"--chunk-seconds must be > 0, got {args.chunk_seconds}")
    if not 0 <= args.overlap <= 0.9:
        raise DataError(f"--overlap must be within 0..0.9, got {args.overlap}")
    if args.batch_chunks < 1:
        raise DataError(f"--batch-chunks must be >= 1, got {args.batch_chunks}")


def chunk_samples(args, config: dict) -> tuple[int, int]:
    """(the model's sample rate, samples per chunk) for a checkpoint's config: --chunk-seconds,
    else the training segment length."""
    data, model = config.get("data", {}), config["model"]
    rate = int(data.get("sample_rate", 44100))
    chunk = int(round((args.chunk_seconds or data.get("segment_seconds", 3.0)) * rate))
    if chunk <= model.get("n_fft", 0):
        raise DataError(f"--chunk-seconds {args.chunk_seconds} is {chunk} samples, not more "
                        f"than the model's n_fft ({model['n_fft']}); use longer chunks")
    return rate, chunk


def main(backend: str, load, argv=None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m {backend}_models.separate",
                                description=f"Separate a song into {', '.join(STEMS)} with {backend}.")
    p.add_argument("--checkpoint", required=True, help="checkpoint or run directory")
    p.add_argument("input", help="audio file (WAV, FLAC, ...)")
    p.add_argument("--out", required=True, help="directory for <stem>.wav")
    add_chunk_options(p)
    p.add_argument("--force", action="store_true",
                   help="replace <stem>.wav files already in --out")
    args = p.parse_args(argv)

    def run():
        from tqdm import tqdm

        check_chunk_options(args)
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise DataError(f"--out {out} is a file; --out names a directory for the stems")
        existing = [f"{name}.wav" for name in STEMS if (out / f"{name}.wav").exists()]
        if existing and not args.force:
            raise DataError(f"--out {out} already holds {', '.join(existing)}; pass --force to "
                            f"replace them, or choose another --out")
        ckpt = resolve_checkpoint(args.checkpoint, report=sys.stderr)
        run_chunks, config = load(ckpt)
        rate, chunk = chunk_samples(args, config)
        mixture = read_input(Path(args.input), rate, int(config["model"]["audio_channels"]))
        out.mkdir(parents=True, exist_ok=True)  # before the work: a bad --out fails now
        layout = chunk_layout(mixture.shape[1], chunk, args.overlap)
        start = time.perf_counter()
        with tqdm(total=len(layout.starts), unit="chunk", file=sys.stderr,
                  desc=f"separate[{backend}]") as bar:
            stems = separate(mixture, run_chunks, chunk, args.overlap, args.batch_chunks, bar.update)
        elapsed = time.perf_counter() - start
        if not all(np.isfinite(audio).all() for audio in stems):   # never write NaN stems
            raise DataError(f"the model of {ckpt} gives non-finite samples (NaN/inf) for "
                            f"{args.input}; nothing was written: its weights are broken (a "
                            f"diverged run?), separate with another checkpoint")
        for name, audio in zip(STEMS, stems):
            sf.write(str(out / f"{name}.wav"), audio.T, rate, subtype="FLOAT")
        seconds = mixture.shape[1] / rate
        print(f"[{backend}] computed {layout.computed / rate:.1f} s for {seconds:.1f} s of audio "
              f"in {elapsed:.1f} s ({seconds / elapsed:.2f}x real time); "
              f"wrote {', '.join(f'{s}.wav' for s in STEMS)} to {out}", file=sys.stderr)
    return run_cli(run, errors=(CheckpointError, DataError, ValueError))
