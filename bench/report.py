"""The report: the environment the bench ran in, the markdown table with its notes, and
the PNG chart."""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np

from backends import cpu_name


def environment(workers: dict) -> dict:
    env = {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "platform": platform.platform(), "python": platform.python_version(),
        "cpu": cpu_name(), "logical_cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "numpy": np.__version__,
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                               "MKL_NUM_THREADS", "MLX_ENABLE_TF32",
                                               "WORKBENCH_BLAS")},
        "memory_note": "peak memory is the framework's own: mx.get_peak_memory() after "
                       "mx.reset_peak_memory(), torch.cuda.max_memory_allocated() after "
                       "reset_peak_memory_stats(); torch on CPU keeps no allocator "
                       "statistics, so it is null there.",
    }
    for name, w in workers.items():
        env[name] = w.call("environment")
    return env


# ---------------------------------------------------------------------------- reports
def fmt_median(s: dict | None, scale: float = 1.0, digits: int = 0) -> str:
    """'median ±half-range%': the spread over timed blocks."""
    if not s:
        return "n/a"
    half = (s["max"] - s["min"]) / (2 * s["median"]) if s["median"] else 0.0
    return f"{s['median'] * scale:,.{digits}f} ±{half:.0%}"


def busy(run: dict) -> str | None:
    """'machine busy, 1.3 other cores' when other work loaded the machine past the
    threshold while the run was timed (bench/load.py), else None."""
    load = run.get("other_load_cores")
    if load is None or load <= run["other_load_threshold_cores"]:
        return None
    return f"machine busy, {load:.1f} other cores"


def markdown(report: dict) -> str:
    lines = ["| model | config | backend | device | precision | steps/s | throughput "
             "| peak memory | GFLOP/s | MFU | inference |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for run in report["runs"]:
        unit = run["unit"]
        for name, r in run["training"].items():
            g = run.get("inference", {}).get(name)
            mem = fmt_median(r["peak_memory_bytes"], 1e-6) + " MB" if r["peak_memory_bytes"] else "n/a"
            mfu = fmt_median(r["mfu"], 100, 1) + " %" if r["mfu"] else "n/a"
            lines.append(
                f"| {run['model']} | {run['config']} | {name} | {r['device']} | {run['precision']} "
                f"| {fmt_median(r['steps_per_s'], digits=2)} | {fmt_median(r[f'{unit}_per_s'], digits=0 if unit == 'tokens' else 2)} {unit}/s "
                f"| {mem} | {fmt_median(r['achieved_flops'], 1e-9, 1)} | {mfu} "
                f"| {fmt_median(g['value'], digits=1) + ' ' + g['metric'] if g else 'n/a'} |")
        if run.get("ratios"):
            rt = run["ratios"]
            r = rt["mlx_over_torch_step_time"]
            flag = "" if rt.get("reliable", True) else f" (unreliable: {busy(run)})"
            text = (f"{run['model']} {run['config']}: MLX step time / torch step time = "
                    f"{r['median']:.2f}x{flag} (per-block ratios {r['min']:.2f}-{r['max']:.2f})")
            if "mlx_over_torch_inference" in rt:
                metric = run["inference"]["mlx"]["metric"]
                text += (f"; MLX/torch {metric} = {rt['mlx_over_torch_inference']:.2f}x"
                         f"{' (unreliable)' if flag else ''}")
            notes.append(text)
        if "other_load_method" in run:
            load = run["other_load_cores"]
            notes.append(f"{run['model']} {run['config']}: other load while timing = "
                         f"{'n/a' if load is None else f'{load:.2f}'} cores (threshold "
                         f"{run['other_load_threshold_cores']:.2f}; {run['other_load_method']})"
                         + (": busy, the timings are unreliable" if busy(run) else ""))
        parts = run["training"].get("mlx", {}).get("parallel_parts", 1)
        if parts > 1:
            notes.append(f"{run['model']} {run['config']}: MLX splits each micro-batch into {parts} "
                         f"parts computed in parallel, one CPU stream and one BLAS thread each "
                         f"(train.cpu_streams)")
        for name, inf in run.get("inference", {}).items():
            for ref, r in inf.get("references", {}).items():
                ratio = r["ours_over_theirs_decode_time"]
                notes.append(f"{run['model']} {run['config']}: {ref} on the same weights decodes "
                             f"{fmt_median(r['decode_tokens_per_s'], digits=1)} tokens/s; our {name} "
                             f"decode time / {ref}'s = {ratio['median']:.2f}x (per-run ratios "
                             f"{ratio['min']:.2f}-{ratio['max']:.2f})")
            if "by_utterance_length" in inf:
                per = ", ".join(f"{length}: {r['chunk_ms']['median']:.1f} ms/chunk (last tenth "
                                f"{r['chunk_ms_last_tenth']['median']:.1f}; encoder "
                                f"{r['encoder_ms']['median']:.1f}; {r['mt_tokens']} MT tokens, "
                                f"{r['units']} units written)"
                                for length, r in inf["by_utterance_length"].items())
                notes.append(f"{run['model']} {name} streaming, {inf['chunk_ms_setting']} ms chunks, "
                             f"{inf['policy']} policy: {per}")
    env, settings = report["environment"], report["settings"]
    mlx_env, torch_env = env.get("mlx", {}), env.get("torch", {})
    notes.append(f"{settings['repeats']} blocks of {settings['steps']} steps after "
                 f"{settings['warmup']} warm-up steps; ± is half the min-max range over blocks.")
    backends = [f"MLX BLAS: {mlx_env.get('blas')} ({mlx_env.get('blas_threads', '?')} threads at start)"
                if mlx_env else "", f"torch threads: {torch_env.get('num_threads')}" if torch_env else ""]
    notes.append("; ".join([b for b in backends if b] + [
        f"load average at start: {', '.join(f'{x:.2f}' for x in env['load_average'] or [])}."]))
    rows = [r for run in report["runs"] for r in run["training"].values()]
    if any(not r["mfu"] for r in rows):
        notes.append("MFU n/a: no FLOP count for the model (the LM and band-split families "
                     "have one) or no known peak FLOP/s for the device (--hardware names one).")
    if any(not r["peak_memory_bytes"] for r in rows):
        notes.append("Peak memory n/a: torch on CPU keeps no allocator statistics.")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # A row per model x config: families differ in units (tokens/s, audio s/s, ms/chunk)
    # and in scale, so each panel gets its own axis.
    runs = report["runs"]
    fig, axes = plt.subplots(len(runs), 2, figsize=(10, 2.6 * len(runs)), squeeze=False)
    for (train_ax, infer_ax), run in zip(axes, runs):
        for ax, key, title in [(train_ax, "training", f"training: {run['unit']}/s"),
                               (infer_ax, "inference", "inference")]:
            names, med, err = [], [], [[], []]
            for backend, result in run.get(key, {}).items():
                s = result.get("value" if key == "inference" else f"{run['unit']}_per_s")
                if s:
                    names.append(backend)
                    med.append(s["median"])
                    err[0].append(s["median"] - s["min"])
                    err[1].append(s["max"] - s["median"])
                    if key == "inference":
                        title = f"inference: {result['metric']}"
            ax.bar(names, med, 0.6, yerr=err, capsize=3, color=["C0", "C1"][:len(names)])
            note = busy(run)
            ax.set_title(f"{run['model']} ({run['config']}) {title}" + (f"\n{note}" if note else ""),
                         fontsize=8, color="red" if note else "black")
    unreliable = [f"{run['model']} {run['config']}: {run['other_load_cores']:.1f} other cores"
                  for run in runs if busy(run)]
    fig.suptitle(f"MLX vs torch on {report['environment']['cpu']}" + (
        "\nUNRELIABLE: other work kept the machine busy while timing (" + "; ".join(unreliable)
        + f", threshold {runs[0]['other_load_threshold_cores']:.1f})" if unreliable else ""),
        fontsize=9, color="red" if unreliable else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
