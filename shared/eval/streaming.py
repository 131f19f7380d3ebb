"""Quality against latency for simultaneous speech-to-unit translation: every utterance of
a manifest translated while it is read (shared/simultaneous.py) at each chunk size, then
scored as papers score it: BLEU of the MT text (sacrebleu), WER of the ASR CTC transcript,
unit error rate, and SimulEval's latency metrics of the words and of the units
(shared/eval/latency.py), plain and computation-aware.

Word latency uses the reference's word count as |Y| (SimulEval's default with a
reference); unit latency the reference's unit count.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from shared.eval.latency import LATENCY_METRICS, TimedOutput, latency_scores
from shared.eval.text import corpus_bleu, ctc_collapse, unit_error_rate, word_error_rate
from shared.simultaneous import Policy, SimultaneousTranslator, segment_for_chunk, word_delays

WHOLE = 0   # chunk_ms 0: the whole utterance is one chunk (the offline reference point)


def json_safe(value):
    """`value` with NaN/inf floats (a latency of nothing written) as None: valid JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def chunk_label(chunk_ms: int) -> str:
    return "whole" if chunk_ms == WHOLE else f"{chunk_ms} ms"


def evaluate_simultaneous(new_session, spec, src, tgt, cmvn, sample_rate: int, utterances, read_audio,
                          chunk_sizes_ms: list[int], policy: str = "ctc", k: int = 0,
                          max_target_len: int = 200, progress: bool = True) -> list[dict]:
    """One row per chunk size: quality, latency and compute. `new_session(segment_length)`
    makes a backend session; `read_audio(utterance)` gives (samples,) float32 at
    `sample_rate`, checked (shared/data/s2ut.py: load_audio names a damaged file and its
    row); `utterances` carry src_text, tgt_text and units."""
    from tqdm import tqdm

    audio = {utt.id: read_audio(utt) for utt in utterances}   # the reader checks the samples
    rows = []
    bar = tqdm(total=len(chunk_sizes_ms) * len(utterances), disable=not progress, unit="utt",
               desc="simultaneous translation", file=sys.stderr)
    for chunk_ms in chunk_sizes_ms:
        segment = segment_for_chunk(spec, chunk_ms, policy, warn=bar.write)
        mt, asr, units, text_out, unit_out, chunk_ms_all = [], [], [], [], [], []
        started = time.perf_counter()
        for utt in utterances:
            session = new_session(segment)
            samples = audio[utt.id]
            chunk = len(samples) if chunk_ms == WHOLE else sample_rate * chunk_ms // 1000
            written = SimultaneousTranslator(session, Policy(policy, k), cmvn, sample_rate,
                                             max_target_len).run(samples, max(chunk, 1))
            mt.append(tgt.decode(written.mt_tokens))
            asr.append(src.decode(ctc_collapse(session.asr_argmax())))
            units.append(written.units)
            pieces = [tgt.id_to_piece(t) for t in written.mt_tokens]
            text_out.append(TimedOutput(
                word_delays(pieces, written.mt_delays, written.source_ms), written.source_ms,
                len(utt.tgt_text.split()),
                word_delays(pieces, written.mt_elapsed, written.source_ms + written.compute_ms)))
            unit_out.append(TimedOutput(written.unit_delays, written.source_ms, len(utt.units),
                                        written.unit_elapsed))
            chunk_ms_all += written.chunk_ms
            bar.update(1)
        seconds = sum(len(a) for a in audio.values()) / sample_rate
        rows.append({
            "chunk_ms": chunk_ms, "chunk": chunk_label(chunk_ms), "policy": policy, "k": k,
            "utterances": len(utterances),
            "bleu": corpus_bleu(mt, [u.tgt_text for u in utterances]),
            "asr_wer": word_error_rate([u.src_text for u in utterances], asr),
            "unit_error_rate": unit_error_rate([list(u.units) for u in utterances], units),
            "text_latency_ms": latency_scores(text_out),
            "text_latency_ca_ms": latency_scores(text_out, computation_aware=True),
            "unit_latency_ms": latency_scores(unit_out),
            "unit_latency_ca_ms": latency_scores(unit_out, computation_aware=True),
            "mean_chunk_compute_ms": float(np.mean(chunk_ms_all)) if chunk_ms_all else 0.0,
            "real_time_factor": (time.perf_counter() - started) / max(seconds, 1e-9),
            "hypotheses": [{"id": u.id, "mt": h, "asr": a} for u, h, a in zip(utterances, mt, asr)],
        })
    bar.close()
    return rows


def curve_table(rows: list[dict], backend: str = "") -> str:
    """The quality-latency curve as a Markdown table."""
    head = (["chunk", "BLEU", "ASR WER", "unit ER"] + [f"text {m}" for m in LATENCY_METRICS]
            + ["text AL (CA)", "unit AL", "unit AL (CA)", "ms/chunk", "RTF"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        text = r["text_latency_ms"]
        cells = ([r["chunk"], f"{r['bleu']:.2f}", f"{r['asr_wer']:.3f}", f"{r['unit_error_rate']:.3f}"]
                 + [f"{text[m]:.2f}" if m == "AP" else f"{text[m]:.0f}" for m in LATENCY_METRICS]
                 + [f"{r['text_latency_ca_ms']['AL']:.0f}", f"{r['unit_latency_ms']['AL']:.0f}",
                    f"{r['unit_latency_ca_ms']['AL']:.0f}", f"{r['mean_chunk_compute_ms']:.1f}",
                    f"{r['real_time_factor']:.3f}"])
        lines.append("| " + " | ".join(cells) + " |")
    policy = f"policy {rows[0]['policy']} (k={rows[0]['k']})" if rows else ""
    title = f"Simultaneous translation{f' ({backend})' if backend else ''}, {policy}; latency in ms " \
            f"of audio (CA: computation-aware)"
    return title + "\n\n" + "\n".join(lines) + "\n"


def write_curve(rows: list[dict], out: Path, backend: str = "") -> list[Path]:
    """results.json, curve.md and curve.png (BLEU against text AL, one point per chunk size)."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.json", out / "curve.md"]
    (out / "results.json").write_text(json.dumps(json_safe(rows), indent=1))
    (out / "curve.md").write_text(curve_table(rows, backend))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no curve.png: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return written
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, name, quality, quality_name in (
            (axes[0], "text_latency_ms", "MT text AL (ms)", "bleu", "BLEU"),
            (axes[1], "unit_latency_ms", "unit AL (ms)", "unit_error_rate", "unit error rate")):
        x, y = [r[key]["AL"] for r in rows], [r[quality] for r in rows]
        ax.plot(x, y, "o-")
        for r, xi, yi in zip(rows, x, y):
            ax.annotate(r["chunk"], (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(name)
        ax.set_ylabel(quality_name)
        ax.grid(alpha=0.3)
    fig.suptitle(f"EchoStream quality vs latency{f' ({backend})' if backend else ''}, "
                 f"policy {rows[0]['policy']}" if rows else "")
    fig.tight_layout()
    fig.savefig(out / "curve.png", dpi=110)
    plt.close(fig)
    return written + [out / "curve.png"]
