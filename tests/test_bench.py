"""bench/run.py end to end on the tiny LM: both backends, a couple of steps, every output.
No timing assertions: CI machines are shared and slow; this checks the plumbing, and that the
bench notices when other work keeps the machine busy."""
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow   # each test runs the bench end to end in subprocesses


def run_bench(*args, cwd=REPO):
    return subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_bench_writes_table_json_and_plot_for_both_backends(tmp_path):
    pytest.importorskip("matplotlib")   # a dev extra
    out = run_bench("--configs", "configs/tiny.yaml", "--steps", "2", "--repeats", "2",
                    "--warmup", "1", "--gen-tokens", "4", "--prompt-tokens", "8",
                    "--json", str(tmp_path / "bench.json"), "--markdown", str(tmp_path / "bench.md"),
                    "--plot", str(tmp_path / "bench.png"), "train.batch_size=4")
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "bench.json").read_text())
    env = report["environment"]
    assert env["mlx"]["blas"] and env["mlx"]["version"]
    assert env["torch"]["config"] and "num_threads" in env["torch"]
    [run] = report["runs"]
    assert run["model"] == "lm" and run["unit"] == "tokens" and run["train"]["batch_size"] == 4
    for backend in ("mlx", "torch"):
        t = run["training"][backend]
        assert len(t["step_s"]["values"]) == 2
        assert t["tokens_per_s"]["median"] > 0 and t["steps_per_s"]["median"] > 0
        assert t["achieved_flops"]["median"] > 0
        assert t["mfu"] is None                   # no known peak FLOP/s for a CPU
        g = run["inference"][backend]
        assert g["new_tokens"] == 4 and g["decode_tokens_per_s"]["median"] > 0
        assert g["metric"] == "decode tokens/s" and g["value"] == g["decode_tokens_per_s"]
    assert run["training"]["mlx"]["peak_memory_bytes"]["median"] > 0
    from shared.engine.config import available_cores
    assert run["training"]["mlx"]["parallel_parts"] == min(available_cores(), 4)
    assert run["training"]["torch"]["parallel_parts"] == 1
    assert run["training"]["torch"]["peak_memory_bytes"] is None   # torch on CPU: no stats
    assert run["ratios"]["mlx_over_torch_step_time"]["median"] > 0
    # How busy other work kept the machine: measured, not asserted (CI machines are shared).
    assert run["other_load_cores"] >= 0 and run["other_load_method"]
    assert isinstance(run["ratios"]["reliable"], bool)
    assert "references" not in run["inference"]["torch"]
    if importlib.util.find_spec("mlx_lm"):    # a dev extra: mlx-lm's decoding, same weights
        ref = run["inference"]["mlx"]["references"]["mlx-lm"]
        assert ref["decode_tokens_per_s"]["median"] > 0
        assert len(ref["ours_over_theirs_decode_time"]["values"]) == 2
    table = (tmp_path / "bench.md").read_text()
    assert "other load while timing" in table
    assert table in out.stdout                    # printed always, written when asked
    assert "| mlx |" in table and "| torch |" in table and "MLX step time / torch" in table
    if importlib.util.find_spec("mlx_lm"):
        assert "mlx-lm on the same weights decodes" in table
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "bench.md", "bench.png"]


@pytest.mark.skipif(not os.path.exists("/proc/stat") or len(os.sched_getaffinity(0)) < 2,
                    reason="other load is measured from /proc/stat; two busy loops need two cores")
def test_bench_marks_the_ratio_unreliable_on_a_busy_machine(tmp_path):
    """Two busy loops of our own take the cores while the bench times: the bench must see
    them as other load, mark the MLX/torch ratio unreliable, and say so in the table. The
    loops start once the workers are up (the bench's first "bench: " line), so that they
    slow the timed blocks, not the imports."""
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        bench = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "run.py"), "--configs", "configs/tiny.yaml",
             "--steps", "1", "--repeats", "2", "--warmup", "0", "--gen-tokens", "0",
             "--json", str(tmp_path / "b.json"), "train.batch_size=2"],
            cwd=REPO, stdout=out, stderr=err, text=True)
    loops = []
    try:
        deadline = time.monotonic() + 120
        while "bench: " not in err_path.read_text() and bench.poll() is None:
            assert time.monotonic() < deadline, "the bench's workers did not start"
            time.sleep(0.05)
        loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
        returncode = bench.wait(timeout=120)
    finally:
        for p in [*loops, bench]:
            p.kill()
            p.wait()
    stdout, stderr = out_path.read_text(), err_path.read_text()
    assert returncode == 0, stderr
    [run] = json.loads((tmp_path / "b.json").read_text())["runs"]
    assert run["other_load_cores"] > run["other_load_threshold_cores"], run   # two loops: ~1 core or more
    assert run["other_load_threshold_cores"] == 0.5     # every core is the backends'
    assert run["ratios"]["reliable"] is False
    assert "MLX step time / torch step time = " in stdout and "(unreliable: machine busy," in stdout
    assert stderr.count("bench: warning: other work kept") == 1


def test_bench_separation_training_and_speed(tmp_path):
    """A separator: audio seconds per second of training and x real time of separation."""
    out = run_bench("--configs", "configs/musdb18_demo.yaml", "--models", "tflocoformer",
                    "--steps", "1", "--repeats", "1", "--warmup", "1", "--audio-seconds", "2",
                    "--json", str(tmp_path / "bench.json"), "train.batch_size=1",
                    "data.segment_seconds=0.5")
    assert out.returncode == 0, out.stderr
    [run] = json.loads((tmp_path / "bench.json").read_text())["runs"]
    assert run["model"] == "tflocoformer" and run["unit"] == "audio_s" and run["units_per_step"] == 0.5
    for backend in ("mlx", "torch"):
        assert run["training"][backend]["audio_s_per_s"]["median"] > 0
        sep = run["inference"][backend]
        assert sep["metric"] == "x real time" and sep["audio_seconds"] == 2.0 and sep["value"]["median"] > 0
        assert sep["computed_seconds"] == 2.5        # five 0.5 s chunks, overlapping by 25 %
    assert "x real time" in out.stdout and "audio_s/s" in out.stdout


def test_bench_threads_sets_the_mlx_parts(tmp_path):
    """--threads N: N cores per backend, so MLX splits micro-batches into N parts."""
    out = run_bench("--configs", "configs/tiny.yaml", "--backends", "mlx", "--steps", "1",
                    "--repeats", "1", "--warmup", "1", "--gen-tokens", "0", "--threads", "1",
                    "--json", str(tmp_path / "b.json"), "train.batch_size=2")
    assert out.returncode == 0, out.stderr
    [run] = json.loads((tmp_path / "b.json").read_text())["runs"]
    assert run["training"]["mlx"]["parallel_parts"] == 1


def test_bench_rejects_unknown_names_and_bad_configs(tmp_path):
    out = run_bench("--backends", "jax")
    assert out.returncode == 2 and "unknown backends: jax" in out.stderr
    out = run_bench("--configs", "configs/tiny.yaml", "train.learning_rat=1")
    assert out.returncode == 2 and "did you mean 'learning_rate'" in out.stderr
    # Checked before anything runs: a bad output path must not throw away a finished bench.
    out = run_bench("--json", str(tmp_path / "missing" / "b.json"))
    assert out.returncode == 2 and "not a file in an existing directory" in out.stderr
    out = run_bench("--models", "echostream", "--chunk-ms", "0")
    assert out.returncode == 2 and "--chunk-ms >= 10" in out.stderr


def test_bench_bandsplit_and_echostream_streaming(tmp_path):
    """The band-split separator trains and separates; EchoStream trains and reports its
    per-chunk streaming latency for each utterance length."""
    out = run_bench("--configs", "configs/bandsplit_demo.yaml", "--models", "bandsplit",
                    "--steps", "1", "--repeats", "1", "--warmup", "1", "--audio-seconds", "1",
                    "--json", str(tmp_path / "bs.json"), "train.batch_size=1", "data.segment_seconds=0.5")
    assert out.returncode == 0, out.stderr
    [run] = json.loads((tmp_path / "bs.json").read_text())["runs"]
    assert run["model"] == "bandsplit" and run["inference"]["mlx"]["metric"] == "x real time"
    out = run_bench("--configs", "configs/echostream_demo.yaml", "--models", "echostream",
                    "--steps", "1", "--repeats", "1", "--warmup", "1", "--stream-seconds", "1,3",
                    "--json", str(tmp_path / "es.json"), "train.batch_size=1", "data.max_duration=2")
    assert out.returncode == 0, out.stderr
    [run] = json.loads((tmp_path / "es.json").read_text())["runs"]
    assert run["unit"] == "audio_s" and run["units_per_step"] == 2.0
    for backend in ("mlx", "torch"):
        assert run["training"][backend]["audio_s_per_s"]["median"] > 0
        latency = run["inference"][backend]["by_utterance_length"]
        assert set(latency) == {"1s", "3s"} and latency["3s"]["chunks"] == 10   # 3 s / 320 ms
        assert latency["3s"]["encoder_ms"]["median"] > 0
    assert "streaming, 320 ms chunks" in out.stdout
