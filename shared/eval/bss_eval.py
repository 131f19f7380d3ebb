"""Separation scores users compare with papers: museval's BSS Eval v4 and MDX's uSDR.

    score_track(name, references, estimates, rate, stems)
        -> TrackScores: museval's TrackStore (SDR/SIR/ISR/SAR of every 1 s frame, as
           museval.eval_mus_track computes and stores them) and the uSDR of each stem
    summarize([TrackScores, ...])
        -> per stem: uSDR = mean over tracks of 10 log10((|s|² + eps) / (|s - ŝ|² + eps))
           (the Music Demixing Challenge's SDR, shared/eval/separation.py: sdr);
           SDR/SIR/ISR/SAR = median over frames per track, then median over tracks (SiSEC
           2018's aggregation, computed by museval's own EvalStore)

museval is the reference implementation of BSS Eval v4 (512-tap distortion filters,
shared over the track, metrics per frame), so it does the work: an optional dependency
(`pip install 'workbench[eval]'`) that needs ffmpeg at import (through musdb and stempeg).
It is imported only when scores are asked for (`require_museval`), which names what to
install when it is missing. Pure numpy otherwise, like all of shared/.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.errors import DependencyError
from shared.eval.separation import sdr

METRICS = ("SDR", "SIR", "ISR", "SAR")
INSTALL = ("install it with pip install 'workbench[eval]' (museval), and ffmpeg "
           "(apt install ffmpeg / brew install ffmpeg), which museval needs at import")


def require_museval():
    """The museval module, or a DependencyError saying what to install."""
    try:
        import museval
    except ImportError:
        raise DependencyError(f"separation scores need museval, which is not installed; "
                              f"{INSTALL}") from None
    except RuntimeError as e:   # stempeg refuses to import without ffmpeg and ffprobe
        if "ffmpeg" not in str(e):
            raise
        raise DependencyError(f"museval cannot be imported: ffmpeg/ffprobe not found; "
                              f"{INSTALL}") from None
    return museval


@dataclass
class TrackScores:
    name: str
    store: object                 # museval.TrackStore: every frame's four metrics per stem
    usdr: dict[str, float]        # stem -> MDX SDR of the whole track
    left_out: dict[str, str]      # stem -> why BSS Eval could not score it (its frames: nan)


def silent(source: np.ndarray) -> bool:
    """museval's test for a source it refuses (metrics._any_source_silent): the channels'
    sum is zero at every sample. source: (C, T)."""
    return bool(np.all(np.sum(source, axis=0) == 0))


def score_track(name: str, references: np.ndarray, estimates: np.ndarray, rate: int,
                stems: tuple[str, ...], frame_seconds: float = 1.0) -> TrackScores:
    """Score one track: references and estimates (S, C, T), stems in `stems` order.

    BSS Eval v4 over all stems at once (museval.evaluate, as museval.eval_mus_track calls
    it for MUSDB's four targets), 1 s windows and hops; frames stored as museval stores
    them (5 decimals, infinities as nan).

    museval refuses a track where any reference or estimate is entirely silent. Such a
    stem is left out of BSS Eval, its frames nan (as museval scores a silent frame), and
    the others are scored together. Leaving out a silent reference changes nothing for
    the others (it adds nothing to the space BSS Eval projects on); leaving out a silent
    estimate's reference counts that source's leakage into the others as artifacts
    rather than interference (their SDR and ISR stay the same; SIR and SAR move)."""
    museval = require_museval()
    references, estimates = np.asarray(references), np.asarray(estimates)
    if references.shape != estimates.shape or references.shape[0] != len(stems):
        raise ValueError(f"track {name!r}: references {references.shape} and estimates "
                         f"{estimates.shape} must both be (stems={len(stems)}, channels, time)")
    window = int(round(frame_seconds * rate))
    left_out = {}
    for i, stem in enumerate(stems):
        if silent(references[i]):
            left_out[stem] = "silent reference"
        elif silent(estimates[i]):
            left_out[stem] = "silent estimate"
    scored = [i for i, stem in enumerate(stems) if stem not in left_out]
    frames = museval.metrics.Framing(window, window, references.shape[-1]).nwin   # museval's
    values = {stem: {m: [float("nan")] * frames for m in METRICS} for stem in stems}
    if scored:
        # museval wants (sources, time, channels).
        sdr_frames, isr, sir, sar = museval.evaluate(references[scored].transpose(0, 2, 1),
                                                     estimates[scored].transpose(0, 2, 1),
                                                     win=window, hop=window, mode="v4")
        for row, i in enumerate(scored):
            values[stems[i]] = {"SDR": sdr_frames[row].tolist(), "SIR": sir[row].tolist(),
                                "ISR": isr[row].tolist(), "SAR": sar[row].tolist()}
    store = museval.TrackStore(track_name=name, win=frame_seconds, hop=frame_seconds)
    for stem in stems:
        store.add_target(target_name=stem, values=values[stem])
    store.validate()    # against museval's own JSON schema (musdb.schema.json)
    return TrackScores(name, store, {stem: sdr(references[i], estimates[i])
                                     for i, stem in enumerate(stems)}, left_out)


def summarize(tracks: list[TrackScores]) -> dict:
    """{"stems": {stem: {"uSDR", "SDR", "SIR", "ISR", "SAR"}}, "tracks": {name: {stem:
    {...}}}}: per track, the frame medians (nan frames skipped) and uSDR; per stem, uSDR
    averaged over tracks and the metrics' median over the per-track medians."""
    museval = require_museval()
    if not tracks:
        raise ValueError("no tracks to summarize")
    store = museval.EvalStore(frames_agg="median", tracks_agg="median")
    for track in tracks:
        store.add_track(track.store)
    per_track = store.agg_frames_scores()            # (track, target, metric) -> median
    overall = store.agg_frames_tracks_scores()       # (target, metric) -> median of those
    stems = list(tracks[0].usdr)
    result = {"stems": {}, "tracks": {}}
    for track in tracks:
        result["tracks"][track.name] = {
            stem: {"uSDR": track.usdr[stem],
                   **{m: _value(per_track, (track.name, stem, m)) for m in METRICS}}
            for stem in stems}
    for stem in stems:
        usdr = [t.usdr[stem] for t in tracks]
        result["stems"][stem] = {"uSDR": float(np.mean(usdr)),
                                 **{m: _value(overall, (stem, m)) for m in METRICS}}
    return result


def _value(series, key) -> float:
    """A pandas aggregate's value; nan where every frame was nan (no row at all)."""
    try:
        return float(series[key])
    except KeyError:
        return float("nan")


def table(summary: dict) -> str:
    """The per-stem summary as a text table, with the mean over stems as a last row."""
    columns = ("uSDR",) + METRICS
    lines = [f"{'stem':<10}" + "".join(f"{c:>9}" for c in columns)]
    rows = summary["stems"]
    for stem, values in rows.items():
        lines.append(f"{stem:<10}" + "".join(f"{values[c]:>9.3f}" for c in columns))
    means = {c: float(np.nanmean([v[c] for v in rows.values()])) for c in columns}
    lines.append(f"{'mean':<10}" + "".join(f"{means[c]:>9.3f}" for c in columns))
    return "\n".join(lines)


def write_track_json(track: TrackScores, path: Path) -> None:
    """museval's per-track JSON (what eval_mus_track writes to OUT/<subset>/<track>.json)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    track.store.save(str(path))


def json_safe(value):
    """nan and inf as null: a summary.json any JSON reader accepts."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def dumps(value: dict) -> str:
    return json.dumps(json_safe(value), indent=2) + "\n"
