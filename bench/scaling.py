"""Throughput of 1 process against 2 ranks (data parallel), per backend, on this machine.

    python bench/scaling.py [--backend torch|mlx] [--steps 30] [--config configs/tiny.yaml]

Three runs per backend, each through its train CLI: one process at train.batch_size B;
2 ranks at B each (weak scaling: twice the examples per step); 2 ranks at B/2 each (strong
scaling: the one process's global batch). torch ranks start with torchrun, MLX ranks with
MLX_RANK + MLX_HOSTFILE on free ports (what mlx.launch does on one machine). Reports the
median tokens/s of the logged steps after the first (compilation, warm-up) and the scaling
efficiency: throughput(2 ranks) / (2 x throughput(1 process)) for weak scaling.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(backend: str, ranks: int, out: Path, overrides: list[str], config: str) -> float:
    args = ["-m", f"{backend}_models.train", "--config", config, "--out", str(out), "--no-progress",
            *overrides]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(max(1, os.cpu_count() // ranks))}
    if ranks == 1:
        subprocess.run([sys.executable, *args], env=env, check=True, capture_output=True)
    elif backend == "torch":
        subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}",
                        f"--master_port={free_port()}", *args], env=env, check=True, capture_output=True)
    else:
        hostfile = out.with_suffix(".ring.json")
        hostfile.write_text(json.dumps([[f"127.0.0.1:{free_port()}"] for _ in range(ranks)]))
        procs = [subprocess.Popen([sys.executable, *args], env={**env, "MLX_RANK": str(r),
                                                                "MLX_HOSTFILE": str(hostfile)},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for r in range(ranks)]
        if any(p.wait() for p in procs):
            raise RuntimeError(f"an MLX rank failed ({out})")
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][1:]
    return statistics.median(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=["torch", "mlx"], action="append")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--config", default=str(REPO / "configs" / "tiny.yaml"))
    a = p.parse_args()
    common = [f"train.max_steps={a.steps}", "train.log_every=1", f"train.eval_every={a.steps}",
              f"train.save_every={a.steps}", "train.eval_batches=1"]
    with tempfile.TemporaryDirectory() as tmp:
        for backend in a.backend or ["torch", "mlx"]:
            one = train(backend, 1, Path(tmp) / f"{backend}-1", common + [f"train.batch_size={a.batch}"], a.config)
            weak = train(backend, 2, Path(tmp) / f"{backend}-2w", common + [f"train.batch_size={a.batch}"], a.config)
            strong = train(backend, 2, Path(tmp) / f"{backend}-2s",
                           common + [f"train.batch_size={a.batch // 2}"], a.config)
            print(f"{backend}: 1 process {one:.0f} tok/s (batch {a.batch}); 2 ranks x {a.batch}: "
                  f"{weak:.0f} tok/s (efficiency {weak / (2 * one):.0%}); 2 ranks x {a.batch // 2}: "
                  f"{strong:.0f} tok/s ({strong / one:.2f}x the one process)", flush=True)


if __name__ == "__main__":
    main()
