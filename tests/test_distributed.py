"""Several processes training one model, on the CPU: torch through torchrun and gloo, MLX
through its ring backend started with MLX_RANK + MLX_HOSTFILE, on free ports.

Each backend's 2-rank job trains every family once (tests/distributed_driver.py runs them
one after another, so the launch costs are paid once); the references are one-process runs
here. 2 ranks x batch B must equal one process accumulating 2 micro-batches of B: bit for
bit on torch, within 1e-5 on MLX (the same here, since each rank and the one process run
whole micro-batches: train.cpu_streams=1). Dropout is off: each rank draws its own."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from shared.engine.checkpoint import load_checkpoint, load_safetensors
from shared.engine.config import config_from_dict, load_config
from shared.engine.train_loop import TRAINER_STATE, Run
from shared.errors import ConfigError
from shared.planner.core import with_overrides
from tests.helpers import TRAINERS, metric_rows, one_torch_thread, rel_err  # noqa: F401 (one thread, as each rank)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
DRIVER = REPO / "tests" / "distributed_driver.py"
TIMEOUT = 240
STEPS = dict(max_steps=4, warmup_steps=1, log_every=1, eval_every=2, save_every=2, keep_last=2,
             cpu_streams=1)
SEPARATION_DATA = dict(sample_rate=4000, segment_seconds=0.5, synth_tracks=3, synth_seconds=2.0,
                       val_tracks=1, val_segments=2)


def family_configs() -> dict[str, dict]:
    """Tiny configs of every family (batch 2 per rank), as the driver reads them."""
    train = dict(seed=3, batch_size=2, learning_rate=3e-3, min_lr=3e-4, eval_batches=2) | STEPS
    echo = with_overrides(load_config(REPO / "configs" / "echostream_demo.yaml"), {
        "model.embed_dim": 32, "model.encoder_layers": 1, "model.subsample_channels": 64,
        "model.mt_embed_dim": 32, "model.mt_ffn_dim": 64, "model.unit_embed_dim": 32,
        "model.unit_ffn_dim": 64, "model.dropout": 0.0, "data.synth_train_utterances": 24,
        "data.synth_dev_utterances": 4, "data.dev_max_utterances": 4})
    return {
        "lm": {"family": "lm", "train": train,
               "model": dict(vocab_size=1024, hidden_size=32, num_layers=2, num_heads=4,
                             num_kv_heads=2, intermediate_size=64, max_seq_length=32,
                             tie_embeddings=True, dropout=0.0)},
        "tflocoformer": {"family": "tflocoformer", "train": train, "data": SEPARATION_DATA,
                         "model": dict(n_fft=128, hop=64, emb_dim=8, n_heads=2, n_layers=1,
                                       ffn_hidden_dim=[16, 16], norm_groups=4)},
        "bandsplit": {"family": "bandsplit", "train": train, "data": SEPARATION_DATA,
                      "model": dict(n_fft=64, hop=32, band_widths=[8, 8, 8, 9], hidden=8,
                                    n_layers=1, d_state=8, head_dim=8, chunk_size=8,
                                    mask_mlp_hidden=16)},
        "echostream": echo.to_dict() | {"train": echo.to_dict()["train"] | train},
    }


def with_train(config: dict, **train) -> dict:
    return config | {"train": config["train"] | train}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment() -> dict:
    # One thread per rank (and per reference process: tests/helpers.py), the CPU only.
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def torchrun(args: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={free_port()}", str(DRIVER), "torch", *args],
                          capture_output=True, text=True, cwd=cwd, env=environment(),
                          timeout=TIMEOUT)


def mlx_ranks(args: list[str], cwd, ranks: int = 2) -> subprocess.CompletedProcess:
    """What mlx.launch does on one machine, on free ports: start each rank with MLX_RANK
    and a ring hostfile; when one fails, stop the others."""
    hostfile = Path(cwd) / "ring.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{free_port()}"] for _ in range(ranks)]))
    logs = [tempfile.TemporaryFile("w+") for _ in range(ranks)]
    procs = [subprocess.Popen([sys.executable, str(DRIVER), "mlx", *args], cwd=cwd,
                              env={**environment(), "MLX_RANK": str(r), "MLX_HOSTFILE": str(hostfile)},
                              stdout=log, stderr=subprocess.STDOUT, text=True)
             for r, log in enumerate(logs)]
    deadline = time.monotonic() + TIMEOUT
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        if any(p.poll() not in (None, 0) for p in procs):
            break
        time.sleep(0.1)
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
    output = ""
    for log in logs:
        log.seek(0)
        output += log.read()
    return subprocess.CompletedProcess(args, max(abs(p.returncode) for p in procs), output, output)


def launch(backend: str, plan: list[dict], directory: Path) -> None:
    plan_path = directory / "plan.json"
    plan_path.write_text(json.dumps(plan))
    result = (torchrun if backend == "torch" else mlx_ranks)(["runs", str(plan_path)], directory)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(autouse=True)
def one_blas_thread():
    """MLX's OpenBLAS on one thread, as on each pinned rank: its sums depend on the count."""
    from mlx_models.blas import blas_thread_count, set_blas_threads

    threads = blas_thread_count()
    set_blas_threads(1)
    yield
    if threads:
        set_blas_threads(threads)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """Per backend, once: the 2-rank runs of every family, the LM stopped at step 2 and
    resumed, and (torch) the LM under FSDP2."""
    done = {}

    def job(backend: str) -> Path:
        if backend not in done:
            directory = tmp_path_factory.mktemp(f"two-ranks-{backend}")
            configs = family_configs()
            plan = [{"config": config, "out": str(directory / name)} for name, config in configs.items()]
            plan += [{"config": configs["lm"], "out": str(directory / "lm-parted"), "stop_after": 2},
                     {"config": configs["lm"], "out": str(directory / "lm-parted"),
                      "resume": str(directory / "lm-parted")}]
            if backend == "torch":
                plan.append({"config": with_train(configs["lm"], parallel="fsdp"),
                             "out": str(directory / "lm-fsdp")})
            launch(backend, plan, directory)
            done[backend] = directory
        return done[backend]
    return job


EXACT = ("step", "loss", "grad_norm", "lr", "val_loss")
NOT_COMPARED = {"tokens_per_s", "audio_s_per_s", "mem_gb", "peak_mem_gb"}


def rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in NOT_COMPARED} for r in metric_rows(run_dir)]


def final_weights(run_dir: Path) -> dict[str, np.ndarray]:
    return load_checkpoint(sorted((run_dir / "checkpoints").glob("step_*"))[-1])[0]


def assert_rows_close(got: list[dict], want: list[dict], rel: float) -> None:
    assert [r.keys() for r in got] == [r.keys() for r in want]
    for g, w in zip(got, want):
        for key, value in w.items():
            if isinstance(value, float):
                assert abs(g[key] - value) <= rel * max(abs(value), 1e-12), (g["step"], key, g[key], value)
            else:
                assert g[key] == value, (g["step"], key)


@pytest.mark.parametrize("family", ["lm", "tflocoformer", "bandsplit", "echostream"])
@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_two_ranks_equal_one_process_accumulating_two(jobs, tmp_path, backend, family):
    two = jobs(backend) / family
    config = config_from_dict(with_train(family_configs()[family], gradient_accumulation_steps=2))
    Run(config, TRAINERS[backend], tmp_path / "one", progress=False).train()
    got, want = rows(two), rows(tmp_path / "one")
    ours, theirs = final_weights(two), final_weights(tmp_path / "one")
    weight_error = max(rel_err(ours[k], theirs[k]) for k in theirs)
    print(f"{backend} {family}: weights after 4 steps, max relative error {weight_error:.2e}")
    if backend == "torch":
        # bit for bit: losses, gradient norms, validation losses, weights
        assert [{k: r[k] for k in EXACT if k in r} for r in got] == \
               [{k: r[k] for k in EXACT if k in r} for r in want]
        assert weight_error == 0
        # Separation scores come from whole tracks, separated chunk by chunk: last bits differ.
        assert_rows_close(got, want, 1e-6)
    else:
        assert_rows_close(got, want, 1e-5)
        assert weight_error <= 1e-5
    assert len([r for r in got if "loss" in r]) == 4


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_two_rank_run_resumed_midway_equals_the_uninterrupted_one(jobs, backend):
    directory = jobs(backend)
    assert rows(directory / "lm-parted") == rows(directory / "lm")
    ours, theirs = final_weights(directory / "lm-parted"), final_weights(directory / "lm")
    assert all(np.array_equal(ours[k], theirs[k]) for k in theirs)
    # every rank's random state was kept: rank 0's as rng.*, rank 1's as rng.rank1.*
    extra = load_safetensors(directory / "lm-parted" / "checkpoints" / "step_00000002" / TRAINER_STATE)
    assert {k.split(".")[1] for k in extra if k.startswith("rng.")} >= {"rank1", backend}


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_two_rank_checkpoint_resumes_in_one_process(jobs, tmp_path, backend):
    """The global batch kept (2 ranks x 2 = 1 process x 2 micro-batches of 2), one process
    continues a 2-rank run where the 2 ranks did; another global batch is refused."""
    directory = jobs(backend)
    checkpoint = directory / "lm-parted" / "checkpoints" / "step_00000002"
    lm = family_configs()["lm"]
    with pytest.raises(ConfigError, match="keep the global batch, e.g. train.gradient_accumulation_steps=2"):
        Run(config_from_dict(lm), TRAINERS[backend], tmp_path / "refused", resume=checkpoint, progress=False)
    run_dir = tmp_path / "one"
    shutil.copytree(directory / "lm-parted", run_dir)   # the run directory, checkpoints and metrics
    resumed = Run(config_from_dict(with_train(lm, gradient_accumulation_steps=2)), TRAINERS[backend],
                  run_dir, resume=run_dir / "checkpoints" / "step_00000002", progress=False)
    assert resumed.state.step == 2
    resumed.train()
    if backend == "torch":
        assert rows(run_dir) == rows(directory / "lm")
        ours, theirs = final_weights(run_dir), final_weights(directory / "lm")
        assert all(np.array_equal(ours[k], theirs[k]) for k in theirs)
    else:
        assert_rows_close(rows(run_dir), rows(directory / "lm"), 1e-5)


def test_fsdp_equals_data_parallel(jobs):
    """Not to the bit: the gradient norm is summed shard by shard, then over the ranks
    (measured: 1e-6 relative), and the reduce-scatter divides before it sums."""
    directory = jobs("torch")
    assert_rows_close(rows(directory / "lm-fsdp"), rows(directory / "lm"), 1e-5)
    ours, theirs = final_weights(directory / "lm-fsdp"), final_weights(directory / "lm")
    error = max(rel_err(ours[k], theirs[k]) for k in theirs)
    print(f"FSDP2 vs data parallel: weights after 4 steps, max relative error {error:.2e}")
    assert error <= 1e-5


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_a_failing_rank_ends_the_job_with_its_message(tmp_path, backend):
    """torchrun stops the other rank. For MLX the test launches like mlx.launch does (which
    also stops the others, in ~6 s here, but exits 0 whatever the ranks did: MLX 0.32.4)."""
    config = tmp_path / "lm.yaml"
    config.write_text(json.dumps(with_train(family_configs()["lm"], max_steps=50, save_every=50,
                                            eval_every=50)))
    args = ["fail", "--config", str(config), "--out", str(tmp_path / "run"), "--no-progress"]
    result = torchrun(args, tmp_path) if backend == "torch" else mlx_ranks(args, tmp_path)
    ended = time.time()
    assert result.returncode != 0
    failed_at = re.search(r"rank 1 fails on purpose at ([0-9.]+)", result.stderr)
    assert failed_at, result.stderr[-2000:]
    assert ended - float(failed_at.group(1)) < 30   # the other rank did not hang
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_a_non_finite_step_on_one_rank_is_skipped_on_every_rank(tmp_path, backend):
    """Rank 1's audio turns NaN at the second step: the averaged gradients are not finite,
    so every rank skips that step alike and the ranks' weights stay identical."""
    config = with_train(family_configs()["tflocoformer"], max_steps=4, eval_every=4, save_every=4)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps([{"config": config, "out": str(tmp_path / "run")}]))
    if backend == "torch":
        result = torchrun(["nan", str(plan)], tmp_path)
    else:
        result = mlx_ranks(["nan", str(plan)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    logged = [r for r in metric_rows(tmp_path / "run") if "loss" in r and "val_loss" not in r]
    assert [r["step"] for r in logged if r.get("skipped")] == [2]
    assert all(isinstance(r["loss"], float) for r in logged if r["step"] != 2)   # finite again
    digests = {(tmp_path / "run" / f"weights.rank{r}.sha256").read_text() for r in (0, 1)}
    assert len(digests) == 1


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="needs Open MPI's mpirun (CI installs openmpi-bin)")
def test_mlx_over_mpi_equals_one_process_accumulating_two(tmp_path):
    """mx.distributed's MPI backend, started by mpirun (Debian's Open MPI 4 rejects
    `mlx.launch --backend mpi`; MLX_MPI_LIBNAME names its library): the LM's 2-rank run
    equals one process accumulating two micro-batches, as over the ring."""
    config = family_configs()["lm"]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps([{"config": config, "out": str(tmp_path / "mpi")}]))
    env = {**environment(), "MLX_MPI_LIBNAME": "libmpi.so.40", "OMPI_MCA_rmaps_base_oversubscribe": "1"}
    result = subprocess.run(["mpirun", "--allow-run-as-root", "-np", "2", "-x", "MLX_MPI_LIBNAME", "-x", "PYTHONPATH",
                             "-x", "OMP_NUM_THREADS", "-x", "OPENBLAS_NUM_THREADS", "-x", "CUDA_VISIBLE_DEVICES",
                             sys.executable, str(DRIVER), "mlx", "runs", str(plan)],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=TIMEOUT)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert json.loads((sorted((tmp_path / "mpi" / "checkpoints").glob("step_*"))[-1]
                       / "train_state.json").read_text())["world_size"] == 2
    one = config_from_dict(with_train(config, gradient_accumulation_steps=2))
    Run(one, TRAINERS["mlx"], tmp_path / "one", progress=False).train()
    assert_rows_close(rows(tmp_path / "mpi"), rows(tmp_path / "one"), 1e-5)
    ours, theirs = final_weights(tmp_path / "mpi"), final_weights(tmp_path / "one")
    assert max(rel_err(ours[k], theirs[k]) for k in theirs) <= 1e-5
