"""The command line of `python -m mlx_models.evaluate` and `python -m torch_models.evaluate`:
the numbers users compare with papers, for a trained checkpoint.

    separator + --data DIR   every track of a MUSDB18-HQ split (or any folder in that
                             layout) separated as `separate` does (shared/audio/chunked.py),
                             scored with museval's BSS Eval v4 and MDX's uSDR
                             (shared/eval/bss_eval.py): museval's JSON per track, a summary
    LM + --text FILE...      perplexity with a strided sliding window, counted as Hugging
                             Face's guide counts it (shared/eval/perplexity.py)
    streaming translator     every utterance translated while it is read, at each
      + --manifest FILE      --chunk-ms: BLEU, WER, unit error rate and SimulEval's
                             latency, a table and a PNG (shared/eval/streaming.py)

What a checkpoint can be evaluated on follows its family's inference kind
(shared/registry.py: Family.inference): "separation", "generation" or "streaming". The backend
supplies `build(spec, weights) -> model` and, per kind, a runner made from the model:
"separation": run_chunks((N, C, T) float32) -> (N, S, C, T) (as for `separate`);
"generation": token_nll(ids (L,) int32) -> (L - 1,) next-token negative log-likelihoods;
"streaming": new_session(segment_length) -> a stream session (shared/simultaneous.py).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from shared.cli import run_cli
from shared.cli.separate import add_chunk_options, check_chunk_options, chunk_samples
from shared.engine.checkpoint import CONFIG_FILE, open_checkpoint, resolve_checkpoint
from shared.errors import CheckpointError, DataError, DependencyError
from shared.registry import families, get_family
from shared.simultaneous import POLICIES

SUMMARY_FILES = ("summary.json", "summary.txt")
PERPLEXITY_FILE = "perplexity.json"


def parser(backend: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {backend}_models.evaluate",
        description=f"Evaluate a checkpoint with {backend}: a separator on a MUSDB18-HQ split "
                    f"(--data; museval BSS Eval v4 and uSDR), an LM's perplexity on text "
                    f"files (--text), or EchoStream's simultaneous translation quality and "
                    f"latency on an S2UT manifest (--manifest).")
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint or run directory (its best checkpoint, else its newest); "
                        "for --text also a Hugging Face Llama directory")
    p.add_argument("--out", help="directory for the results (separation default: "
                                 "RUN/eval/<checkpoint>/<split>; perplexity: printed only, "
                                 "unless given)")
    p.add_argument("--force", action="store_true", help="replace results already in --out")
    sep = p.add_argument_group("separation (a separator checkpoint)")
    sep.add_argument("--data", help="MUSDB18-HQ root, or any folder in its layout "
                                    "(train/ and test/, a folder per track)")
    sep.add_argument("--split", default="test", choices=("test", "valid", "train", "train_all"),
                     help="which tracks (default test; valid: the 14 official validation "
                          "tracks of train/, or root/valid_tracks.txt)")
    sep.add_argument("--tracks", type=int, help="evaluate only the first N tracks (name order)")
    add_chunk_options(sep)
    lm = p.add_argument_group("perplexity (an LM checkpoint or Hugging Face Llama directory)")
    lm.add_argument("--text", nargs="+", metavar="FILE",
                    help="UTF-8 text files, one paragraph per line, read as training reads "
                         "them: each line BOS ... EOS, all in one token stream")
    lm.add_argument("--max-length", type=int,
                    help="tokens per window (default: the model's context, max_seq_length)")
    lm.add_argument("--stride", type=int,
                    help="tokens the window moves by (default: half of --max-length)")
    lm.add_argument("--tokenizer", help="SentencePiece model (default: the checkpoint's "
                                        "tokenizer.model)")
    st = p.add_argument_group("simultaneous translation (an EchoStream checkpoint)")
    st.add_argument("--manifest", help="an S2UT manifest (the training format: id, src_audio, "
                                       "src_text, tgt_text, tgt_audio units): quality and latency "
                                       "at each --chunk-ms")
    st.add_argument("--chunk-ms", default="160,320,640,0",
                    help="comma-separated READ chunk sizes in ms, 0 for the whole utterance "
                         "(default 160,320,640,0): one point of the quality-latency curve each")
    st.add_argument("--policy", choices=POLICIES, default="ctc", help="when to write (see stream --help)")
    st.add_argument("--k", type=int, default=0, help="the policy's lag")
    st.add_argument("--max-target-len", type=int, default=200, help="MT decoder tokens at most")
    st.add_argument("--max-utterances", type=int, help="evaluate only the first N rows")
    return p


# ------------------------------------------------------------------ what is evaluated
@dataclass
class Source:
    """A model to evaluate: its family, spec and canonical weights, and where they came from."""
    family: Any                 # shared.registry.Family
    spec: Any
    weights: dict
    config: dict                # the checkpoint's config ({} for an imported model)
    path: Path                  # the checkpoint (or imported) directory
    run_dir: Path | None        # the run it belongs to, if any


def open_source(path: str | Path) -> Source:
    """Our checkpoint (or run directory), else a directory a family imports (a Hugging Face
    Llama directory for the LM, Family.import_weights)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint, run or model directory")
    ours = (path / CONFIG_FILE).is_file() or (path / "checkpoints").is_dir()
    if not ours:
        for family in families().values():
            imported = family.import_weights(path) if family.import_weights else None
            if imported is not None:
                spec, weights = imported
                return Source(family, spec, weights, {}, path, None)
    ckpt = resolve_checkpoint(path, report=sys.stderr)
    name, spec, _, weights, config = open_checkpoint(ckpt)
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None
    return Source(get_family(name), spec, weights, config, ckpt, run_dir)


def main(backend: str, build: Callable, runners: dict[str, Callable], argv=None) -> int:
    """`build(spec, weights)` -> a model; `runners[kind](model)` -> what that kind's
    evaluation calls (module docstring)."""
    args = parser(backend).parse_args(argv)

    def run():
        given = [name for name in ("data", "text", "manifest") if getattr(args, name) is not None]
        if len(given) != 1:
            raise DataError("give one of --data DIR (a separator: museval scores on a MUSDB18-HQ "
                            "split), --text FILE... (an LM: perplexity) or --manifest FILE (EchoStream: "
                            "simultaneous translation quality and latency)")
        if args.manifest is not None:
            check_stream_options(args)
        elif args.data is not None:
            from shared.eval.bss_eval import require_museval

            check_chunk_options(args)
            if args.tracks is not None and args.tracks < 1:
                raise DataError(f"--tracks must be >= 1, got {args.tracks}")
            require_museval()       # before any work: it names what to install
        else:
            check_text_options(args)
        source = open_source(args.checkpoint)
        kind = source.family.inference
        wanted = {"data": "separation", "text": "generation", "manifest": "streaming"}[given[0]]
        if kind != wanted:
            what = {"separation": "a separator (--data)", "generation": "an LM (--text)",
                    "streaming": "a streaming translator (--manifest)"}
            raise CheckpointError(f"{source.path} holds a {source.family.name!r} model, not "
                                  f"{what[wanted]}; evaluate scores separators on --data, "
                                  f"LMs on --text and streaming translators on --manifest")
        evaluate = {"separation": evaluate_separation, "generation": evaluate_perplexity,
                    "streaming": evaluate_streaming}[wanted]
        evaluate(args, backend, source, lambda: runners[kind](build(source.spec, source.weights)))
    return run_cli(run, errors=(CheckpointError, DataError, DependencyError, ValueError))


# ------------------------------------------------------------------ separation
def evaluate_separation(args, backend: str, source: Source, make_runner: Callable) -> None:
    from tqdm import tqdm

    from shared.audio.chunked import separate
    from shared.data.musdb import STEMS, MusdbDataset
    from shared.eval.bss_eval import dumps, score_track, summarize, table, write_track_json

    out = separation_out_dir(args, source)
    subset = "test" if args.split == "test" else "train"     # museval's folder: OUT/<subset>/<track>.json
    check_no_results(out, [out / name for name in SUMMARY_FILES] + sorted((out / subset).glob("*.json")),
                     args.force)
    rate, chunk = chunk_samples(args, source.config)
    dataset = MusdbDataset(args.data, args.split, rate, int(source.config["model"]["audio_channels"]))
    count = min(args.tracks or len(dataset), len(dataset))
    run_chunks = make_runner()
    print(f"[{backend}] evaluating {source.path} on {count} {args.split} track(s) of {args.data} "
          f"at {rate} Hz, {chunk / rate:g} s chunks", file=sys.stderr)
    scores, start = [], time.perf_counter()
    with tqdm(total=count, unit="track", file=sys.stderr, desc=f"evaluate[{backend}]") as bar:
        for i in range(count):
            track = dataset.load(i)
            bar.set_postfix_str(track["name"][:40])
            estimate = separate(track["mixture"], run_chunks, chunk, args.overlap, args.batch_chunks)
            scores.append(score_track(track["name"], track["sources"], estimate, rate, STEMS))
            for stem, why in scores[-1].left_out.items():
                bar.write(f"note: {track['name']}: {stem} not scored by BSS Eval ({why}; "
                          f"museval cannot score it), its SDR/SIR/ISR/SAR frames are nan",
                          file=sys.stderr)
            bar.update(1)
    summary = summarize(scores)
    report = {"checkpoint": str(source.path), "backend": backend, "data": str(args.data),
              "split": args.split, "tracks": count, "sample_rate": rate,
              "chunk_seconds": chunk / rate, "overlap": args.overlap,
              "aggregation": "uSDR: per track and stem 10 log10((sum s^2 + 1e-7) / (sum (s - "
                             "est)^2 + 1e-7)), mean over tracks (MDX); SDR/SIR/ISR/SAR: museval "
                             "BSS Eval v4, median over 1 s frames per track, then median over "
                             "tracks (SiSEC 2018)",
              "stems": summary["stems"], "per_track": summary["tracks"],
              "left_out": {t.name: t.left_out for t in scores if t.left_out}}
    text = (f"{source.path} on {args.data} ({args.split}, {count} tracks), {backend}\n"
            f"uSDR: mean over tracks; SDR/SIR/ISR/SAR: museval v4, median over frames, then "
            f"over tracks (dB)\n{table(summary)}\n")
    clear_results(out, subset)
    for track in scores:
        write_track_json(track, out / subset / f"{track.name}.json")
    (out / "summary.json").write_text(dumps(report))
    (out / "summary.txt").write_text(text)
    print(text, end="")
    print(f"[{backend}] {count} track(s) in {time.perf_counter() - start:.1f} s; wrote "
          f"{out / 'summary.txt'}, summary.json and museval's JSON per track in {out / subset}",
          file=sys.stderr)


def separation_out_dir(args, source: Source) -> Path:
    if args.out:
        return Path(args.out)
    if source.run_dir is None:
        raise DataError(f"{source.path} is not inside a run directory; pass --out DIR for "
                        f"the results")
    return source.run_dir / "eval" / source.path.name / args.split


def check_no_results(out: Path, results: list[Path], force: bool) -> None:
    """Refuse, before any work, to replace results unless told to (--force)."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; --out names a directory for the results")
    there = [p for p in results if p.exists()]
    if there and not force:
        names = ", ".join(str(p.relative_to(out)) for p in there[:4])
        more = f" and {len(there) - 4} more" if len(there) > 4 else ""
        raise DataError(f"{out} already holds results ({names}{more}); pass --force to "
                        f"replace them, or choose another --out")


def clear_results(out: Path, subset: str) -> None:
    """Remove an earlier evaluation's files (--force) so that the folder holds one
    evaluation: museval's tools read every JSON under OUT/<subset>."""
    for path in [out / name for name in SUMMARY_FILES] + list((out / subset).glob("*.json")):
        path.unlink(missing_ok=True)
    (out / subset).mkdir(parents=True, exist_ok=True)


# ------------------------------------------------------------------ perplexity
def check_text_options(args) -> None:
    for name in args.text:
        path = Path(name)
        if not path.is_file():
            raise DataError(f"--text {path}: no such file")
        if path.stat().st_size == 0:
            raise DataError(f"--text {path} is empty")
    if args.max_length is not None and args.max_length < 2:
        raise DataError(f"--max-length must be >= 2, got {args.max_length}")
    if args.stride is not None and args.stride < 1:
        raise DataError(f"--stride must be >= 1, got {args.stride}")
    if args.out:
        check_no_results(Path(args.out), [Path(args.out) / PERPLEXITY_FILE], args.force)


def evaluate_perplexity(args, backend: str, source: Source, make_runner: Callable) -> None:
    import json

    from tqdm import tqdm

    from shared.data.lm_text import load_tokenizer, read_paragraphs, token_stream
    from shared.eval.perplexity import perplexity, sliding_windows

    context = source.spec.max_seq_length
    max_length = args.max_length or context
    if max_length > context:
        raise DataError(f"--max-length {max_length} exceeds the model's context "
                        f"({context} tokens, model.max_seq_length)")
    stride = args.stride or max(1, max_length // 2)
    if stride > max_length:
        raise DataError(f"--stride {stride} exceeds --max-length {max_length}: tokens "
                        f"between windows would never be scored")
    tokenizer_path = Path(args.tokenizer) if args.tokenizer else source.path / "tokenizer.model"
    tokenizer = load_tokenizer(tokenizer_path, source.spec.vocab_size,
                               fix="pass --tokenizer with the model's SentencePiece file")
    ids = token_stream(read_paragraphs(args.text), tokenizer)
    windows = sliding_windows(len(ids), max_length, stride)
    token_nll = make_runner()
    start = time.perf_counter()
    with tqdm(total=len(windows), unit="window", file=sys.stderr,
              desc=f"perplexity[{backend}]") as bar:
        result = perplexity(ids, token_nll, max_length, stride, bar.update)
    print(f"perplexity {result.perplexity:.4f} (nll {result.nll:.6f} nats/token over "
          f"{result.tokens} tokens; {len(ids)} tokens in {result.windows} windows of "
          f"{max_length}, stride {stride}) -- {source.path}, {backend}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        report = {"checkpoint": str(source.path), "backend": backend, "text": args.text,
                  "tokenizer": str(tokenizer_path), "stream_tokens": len(ids), **result.as_dict()}
        (out / PERPLEXITY_FILE).write_text(json.dumps(report, indent=2) + "\n")
    print(f"[{backend}] {result.windows} windows in {time.perf_counter() - start:.1f} s",
          file=sys.stderr)


# ------------------------------------------------------------------ simultaneous translation
CURVE_FILES = ("results.json", "curve.md", "curve.png")


def chunk_sizes(text: str) -> list[int]:
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DataError(f"--chunk-ms takes comma-separated integers (0: whole utterance), got {text!r}") from None
    if not sizes or any(v != 0 and v < 10 for v in sizes):
        raise DataError(f"--chunk-ms sizes must be >= 10 ms (or 0: the whole utterance), got {text!r}")
    return sizes


def check_stream_options(args) -> None:
    chunk_sizes(args.chunk_ms)
    if not Path(args.manifest).is_file():
        raise DataError(f"--manifest {args.manifest}: no such file")
    for name, low in (("k", 0), ("max_target_len", 1), ("max_utterances", 1)):
        value = getattr(args, name)
        if value is not None and value < low:
            raise DataError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")


def evaluate_streaming(args, backend: str, source: Source, make_runner: Callable) -> None:
    """Every utterance of the manifest translated while it is read, at each chunk size:
    BLEU, ASR WER, unit error rate and SimulEval's latency (shared/eval/streaming.py)."""
    from shared.cli.stream import checkpoint_companions
    from shared.data.s2ut import load_audio, read_manifest
    from shared.eval.streaming import curve_table, evaluate_simultaneous, write_curve

    if args.out:
        out = Path(args.out)
    elif source.run_dir is not None:
        out = source.run_dir / "eval" / source.path.name / f"simultaneous-{args.policy}-k{args.k}"
    else:
        raise DataError(f"{source.path} is not inside a run directory; pass --out DIR for the results")
    check_no_results(out, [out / name for name in CURVE_FILES], args.force)
    companions = checkpoint_companions(backend, source.path, source.config)
    rate = companions["sample_rate"]
    utterances = read_manifest(args.manifest, rate, source.spec.n_units)
    utterances = utterances[:args.max_utterances or len(utterances)]
    print(f"[{backend}] simultaneous translation of {len(utterances)} utterance(s) of {args.manifest}, "
          f"policy {args.policy} (k={args.k}), chunks {args.chunk_ms} ms", file=sys.stderr)
    rows = evaluate_simultaneous(make_runner(), source.spec, companions["src"], companions["tgt"],
                                 companions["cmvn"], rate, utterances, load_audio, chunk_sizes(args.chunk_ms),
                                 args.policy, args.k, args.max_target_len)
    for row in rows:
        row["checkpoint"], row["backend"], row["manifest"] = str(source.path), backend, str(args.manifest)
    written = write_curve(rows, out, backend)
    print(curve_table(rows, backend), end="")
    print(f"[{backend}] wrote {', '.join(p.name for p in written)} in {out}", file=sys.stderr)
