"""Measure MLX training-step memory and fit the activation coefficients that
shared/planner/<family>.py use for the MLX backend. Rerun when MLX changes.

    python bench/calibrate_memory.py --controlled fp32     # the method behind the numbers
    python bench/calibrate_memory.py --controlled bf16
    python bench/calibrate_memory.py --out rows.jsonl      # random designed configs...
    python bench/calibrate_memory.py --fit rows.jsonl      # ...and how the coefficients do
    python bench/calibrate_memory.py --family echostream   # EchoStream's coefficients
    python bench/calibrate_memory.py --family bandsplit    # the band-split separator's

--controlled measures, for several base shapes, depth 4 and depth 8 with and without
activation checkpointing. The depth difference isolates one block's saved activations;
what remains at depth 0 is the loss head plus the backward working set. Coefficients are
fitted (non-negative least squares) to those isolated quantities, not to totals, where
depth, width and vocabulary terms would be confounded.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys

import numpy as np


def measure(row: dict) -> dict:
    import mlx.core as mx
    from mlx_models.trainer import Trainer
    from shared.engine.config import TrainConfig
    from shared.specs.lm import LMSpec, lm_init_weights

    spec = LMSpec(vocab_size=row["V"], hidden_size=row["D"], num_layers=row["L"],
                  num_heads=row["H"], num_kv_heads=row["KV"], intermediate_size=row["I"],
                  max_seq_length=row["T"], tie_embeddings=row["tied"])
    train = TrainConfig(gradient_checkpointing=row["ck"], precision=row["prec"])
    trainer = Trainer(spec, train, lm_init_weights(spec, 0))
    batch = np.random.default_rng(0).integers(0, row["V"], (row["B"], row["T"] + 1)).astype(np.int32)
    micro = [batch] * row["K"]
    trainer.train_step(micro, 1e-3)  # the optimizer state exists from here on
    gc.collect()
    between = mx.get_active_memory()
    mx.reset_peak_memory()
    trainer.train_step(micro, 1e-3)
    row = row | {"between": between, "peak": mx.get_peak_memory()}
    del trainer
    gc.collect()
    return row


def design(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    while len(rows) < n:
        hd = int(rng.choice([32, 64]))
        kv = int(rng.choice([1, 2, 4]))
        heads = kv * int(rng.choice([1, 2, 4]))
        D = heads * hd
        precision = str(rng.choice(["fp32", "fp32", "bf16"]))
        # bf16 matmuls are slow on CPUs: keep those rows smaller so the run takes minutes.
        big = precision == "fp32"
        if not 128 <= D <= (384 if big else 256):
            continue
        rows.append(dict(V=int(rng.choice([512, 2048, 8192])), D=D, L=int(rng.choice([2, 4, 6])),
                         H=heads, KV=kv, I=int(rng.choice([2, 3, 4])) * D, tied=bool(rng.integers(2)),
                         B=int(rng.choice([2, 4, 8] if big else [2, 4])),
                         T=int(rng.choice([64, 128, 256] if big else [64, 128])),
                         ck=bool(rng.integers(2)), prec=precision, K=int(rng.choice([1, 2]))))
    return rows


def _spec_train(r):
    from shared.engine.config import TrainConfig
    from shared.specs.lm import LMSpec
    spec = LMSpec(vocab_size=r["V"], hidden_size=r["D"], num_layers=r["L"], num_heads=r["H"],
                  num_kv_heads=r["KV"], intermediate_size=r["I"], max_seq_length=r["T"],
                  tie_embeddings=r["tied"])
    train = TrainConfig(batch_size=r["B"], gradient_accumulation_steps=r["K"],
                        gradient_checkpointing=r["ck"], precision=r["prec"])
    return spec, train


def predict(r, coefficients) -> float:
    from shared.planner.core import plan_lm_mlx
    spec, train = _spec_train(r)
    return plan_lm_mlx(spec, train, r["T"], coefficients).peak_bytes


def fit_mlx_coefficients(rows: list[dict]) -> dict:
    """Non-negative least squares, in two stages: per precision, the block and head
    coefficients on rows without checkpointing; then the two checkpointing parameters.
    The terms that are not activations (weights, AdamW, gradients, casts) are exact and
    not fitted. Prints the coefficients to paste into shared/planner/lm.py."""
    from scipy.optimize import nnls

    from shared.planner.core import MLX_LM_COEFFICIENTS

    names = ["hidden", "kv", "mlp", "scores", "logits", "embed"]
    zero = {"fp32": dict.fromkeys(names, 0.0), "bf16": dict.fromkeys(names, 0.0),
            "checkpoint": {"input": 0.0, "recompute": 0.0}}

    def block(r):
        c = 2 if r["prec"] == "bf16" else 4
        bt = r["B"] * r["T"]
        return np.array([bt * r["D"], bt * r["KV"] * (r["D"] // r["H"]), bt * r["I"],
                         r["B"] * r["H"] * r["T"] ** 2], float) * c

    def head(r):
        c = 2 if r["prec"] == "bf16" else 4
        bt = r["B"] * r["T"]
        return np.array([bt * r["V"] * 4, bt * r["D"] * c], float)

    fitted = {k: dict(v) for k, v in MLX_LM_COEFFICIENTS.items()}
    for prec in ("fp32", "bf16"):
        sel = [r for r in rows if r["prec"] == prec and not r["ck"]]
        if len(sel) < len(names):
            continue
        X = np.array([np.concatenate([r["L"] * block(r), head(r)]) for r in sel])
        y = np.array([r["peak"] - predict(r, zero) for r in sel])
        coef, _ = nnls(X / y[:, None], np.ones(len(sel)))   # relative errors, not bytes
        fitted[prec] = dict(zip(names, coef.round(2).tolist()))
    sel = [r for r in rows if r["ck"]]
    if sel:
        no_ck = {"fp32": fitted["fp32"], "bf16": fitted["bf16"], "checkpoint": {"input": 0.0, "recompute": 0.0}}
        def ck_features(r):
            c = 2 if r["prec"] == "bf16" else 4
            coef = fitted["bf16" if c == 2 else "fp32"]
            per_block = block(r) @ np.array([coef[n] for n in names[:4]])
            return [r["L"] * r["B"] * r["T"] * r["D"] * c, per_block]
        X = np.array([ck_features(r) for r in sel])
        y = np.array([r["peak"] - predict(r, no_ck) for r in sel])
        coef, _ = nnls(X / y[:, None], np.ones(len(sel)))
        fitted["checkpoint"] = {"input": round(float(coef[0]), 2), "recompute": round(float(coef[1]), 2)}
    print("MLX_LM_COEFFICIENTS =", json.dumps(fitted, indent=1))
    for prec in ("fp32", "bf16"):
        for ck in (False, True):
            sel = [r for r in rows if r["prec"] == prec and r["ck"] == ck]
            if sel:
                err = np.array([predict(r, fitted) / r["peak"] - 1 for r in sel])
                print(f"{prec} {'checkpointing' if ck else 'plain':>13}: {len(sel):3d} rows, error "
                      f"{err.min():+.1%} .. {err.max():+.1%}")
    return fitted


BASES = [  # (B, T, D, H, KV, I, V): varied shapes, none equal to an accuracy row
    (4, 128, 256, 8, 2, 512, 1024), (2, 256, 192, 3, 1, 768, 4096), (8, 64, 128, 4, 4, 512, 2048),
    (2, 128, 320, 5, 5, 640, 512), (4, 192, 192, 6, 2, 384, 1536), (1, 384, 256, 4, 2, 1024, 3072),
]


def controlled(precision: str) -> dict:
    from scipy.optimize import nnls

    from shared.planner.core import MLX_LM_COEFFICIENTS

    names = ["hidden", "kv", "mlp", "scores"]
    zero = {p: dict.fromkeys(MLX_LM_COEFFICIENTS[p], 0.0) for p in MLX_LM_COEFFICIENTS}
    c = 2 if precision == "bf16" else 4
    blocks, block_features, intercepts, ck_slopes, ck_intercepts, heads = [], [], [], [], [], []
    for B, T, D, H, KV, I, V in BASES:
        def act(L, ck):
            r = measure(dict(V=V, D=D, L=L, H=H, KV=KV, I=I, tied=False, B=B, T=T, ck=ck,
                             prec=precision, K=1))
            return r["peak"] - predict(r, zero)   # minus weights, AdamW, gradients, casts
        a4, a8, c4, c8 = act(4, False), act(8, False), act(4, True), act(8, True)
        block = (a8 - a4) / 4
        blocks.append(block)
        block_features.append(np.array([B * T * D, B * T * KV * (D // H), B * T * I, B * H * T * T], float) * c)
        intercepts.append(a4 - 4 * block)
        heads.append(np.array([B * T * V * 4, B * T * D * c], float))
        ck_slopes.append((c8 - c4) / 4 / (B * T * D * c))
        ck_intercepts.append(c4 - 4 * (c8 - c4) / 4)
        print(f"base B{B} T{T} D{D} H{H} KV{KV} I{I} V{V}: block {block / 1e6:.2f} MB, "
              f"intercept {intercepts[-1] / 1e6:.2f} MB, checkpointed slope {ck_slopes[-1]:.2f}, "
              f"checkpointed intercept {ck_intercepts[-1] / 1e6:.2f} MB", flush=True)
    F = np.array(block_features)
    blocks = np.array(blocks)
    coef, _ = nnls(F / blocks[:, None], np.ones(len(blocks)))
    fitted = dict(zip(names, coef.round(2).tolist()))
    per_block = F @ coef
    embed = MLX_LM_COEFFICIENTS[precision]["embed"]
    rest = np.array(intercepts) - np.array(heads)[:, 1] * embed
    head_coef, _ = nnls(np.stack([np.array(heads)[:, 0], per_block], 1) / rest[:, None], np.ones(len(rest)))
    fitted |= {"logits": round(float(head_coef[0]), 2), "embed": embed,
               "working_set": round(float(head_coef[1]), 2)}
    head = np.array(heads)[:, 0] * head_coef[0] + np.array(heads)[:, 1] * embed
    recompute, _ = nnls((per_block / (np.array(ck_intercepts) - head))[:, None], np.ones(len(head)))
    fitted |= {"checkpoint_input": round(max(0.0, float(np.median(ck_slopes))), 2),
               "recompute": round(float(recompute[0]), 2)}
    print(f'"{precision}": {json.dumps(fitted)},')
    err = per_block / blocks - 1
    print(f"per-block fit error {err.min():+.1%} .. {err.max():+.1%}")
    return fitted


# ------------------------------------------------------------------------- other families
# The designs (base config, overrides) are the families' own: MemoryModel.calibration_design.


def calibrate_family(family: str) -> dict:
    """Measure MLX's peak over the family's design and fit its coefficients in
    shared/planner/<family>.py (non-negative least squares on the activation part: peak minus
    weights, AdamW state, gradients and buffers, rows weighted by 1 / activation bytes)."""
    import gc

    import mlx.core as mx
    from scipy.optimize import nnls

    from mlx_models.trainer import Trainer
    from shared.planner import core as memory
    from shared.engine.config import load_config
    from shared.registry import get_family
    from shared.tasks import random_batch

    model = get_family(family).memory
    base, design = model.calibration_design
    kinds = list(model.coefficients["mlx"])
    X, y = [], []
    for overrides in design:
        config = memory.with_overrides(load_config(base), {"train.gradient_accumulation_steps": 1} | overrides)
        trainer = Trainer(config.model, config.train)
        batch = random_batch(config, config.train.batch_size, np.random.default_rng(0))
        trainer.train_step([batch], 1e-4)
        gc.collect()
        mx.reset_peak_memory()
        trainer.train_step([batch], 1e-4)
        peak = mx.get_peak_memory()
        del trainer
        gc.collect()
        p = memory.plan(config, "mlx")
        static = sum(t.bytes for t in p.terms if not t.name.startswith("activations"))
        act = model.activation_elements(config)
        totals = {k: sum(part.get(k, 0) for part in act["parts"].values()) for k in kinds}
        X.append([4 * totals[k] for k in kinds])
        y.append(peak - static)
        print(f"{json.dumps(overrides)[:70]:<70} measured {peak / 1e6:8.1f} MB, planner now "
              f"{p.peak_bytes / 1e6:8.1f} MB ({p.peak_bytes / peak - 1:+.1%})", flush=True)
    X, y = np.array(X), np.array(y)
    coef, _ = nnls(X / y[:, None], np.ones(len(y)))
    fitted = {k: round(float(c), 2) for k, c in zip(kinds, coef)}
    print(f'"mlx": {json.dumps(fitted)},')
    err = X @ coef / y - 1
    print(f"activation fit error {err.min():+.1%} .. {err.max():+.1%}")
    return fitted


def calibrated_families() -> list[str]:
    from shared.registry import families

    return [name for name, f in families().items() if f.memory.calibration_design]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--controlled", choices=["fp32", "bf16"], help="the controlled calibration")
    p.add_argument("--family", choices=calibrated_families(),
                   help="measure and fit this family's coefficients")
    p.add_argument("--out", help="measure the design and append rows to this JSONL file")
    p.add_argument("--fit", help="fit coefficients from this JSONL file")
    p.add_argument("--n", type=int, default=80)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.controlled:
        import mlx_models  # noqa: F401  (optimized BLAS before mlx.core)
        controlled(args.controlled)
    if args.family:
        import mlx_models  # noqa: F401  (optimized BLAS before mlx.core)
        calibrate_family(args.family)
    if args.out:
        import mlx_models  # noqa: F401  (optimized BLAS before mlx.core)
        with open(args.out, "a") as f:
            for row in design(args.n, args.seed):
                f.write(json.dumps(measure(row)) + "\n")
                f.flush()
    if args.fit:
        rows = [json.loads(line) for line in open(args.fit)]
        fit_mlx_coefficients(rows)


if __name__ == "__main__":
    sys.exit(main())
