"""bench/gpu_check.py, the one command for a lent GPU. Its dry run (tiny sizes on the CPU)
runs every part end to end, as CI can; the pieces that decide what a GPU run does (the
guarded runner, the sizing, the factor fit) are checked on their own."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
import gpu_check  # noqa: E402

from shared.engine.config import load_config  # noqa: E402
from shared.planner.core import plan, with_overrides  # noqa: E402

PARTS = ["parity", "lm_speed", "planner", "seed003", "inference"]


@pytest.mark.slow
def test_dry_run_runs_every_part_and_writes_json_and_markdown(tmp_path):
    shipped = gpu_check.planner.CUDA_CALIBRATION_FILE
    before = shipped.read_bytes() if shipped.exists() else None
    start = time.monotonic()
    out = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--dry-run", "--out", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    wall = time.monotonic() - start
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    md = (tmp_path / "gpu_check.md").read_text()
    assert report["dry_run"] is True and report["device"] == "cpu"
    assert "DRY RUN" in out.stdout and "DRY RUN" in md and "No number below is a GPU measurement" in md
    assert list(report["parts"]) == PARTS
    for key, part in report["parts"].items():
        assert part["status"] == "ok", (key, part.get("error"))
        rows = part["result"]["rows"]
        assert rows, key
        for row in rows:
            # Skipped only where a CPU cannot: torch.compile (minutes of inductor) and fp16.
            assert row["status"] in ("ok", "skipped"), (key, row)
            if row["status"] == "skipped":
                assert "dry run" in row["reason"], (key, row)
    # A table per part in the Markdown, under the part's heading.
    sections = md.split("\n##### ")[1:]
    assert len(sections) == len(PARTS)
    for section in sections:
        assert "\n|---" in section, section[:200]

    parts = {k: v["result"] for k, v in report["parts"].items()}
    parity = parts["parity"]["rows"]
    assert len(parity) == 4 and all(r["within_bounds"] for r in parity)
    assert all(r["curves"]["fp16"]["status"] == "skipped" and "needs CUDA" in r["curves"]["fp16"]["reason"]
               for r in parity)
    assert all(r["curves"]["bf16"]["max_rel_diff"] < 0.05 for r in parity)
    speed = [r for r in parts["lm_speed"]["rows"] if r["status"] == "ok"]
    assert {(r["model"], r["attention"]) for r in speed} == {(m, a) for m in ("medium", "tiny") for a in ("flash", "math")}
    assert all(r["tokens_per_s"] > 0 and r["mfu"] is None for r in speed)
    planner = parts["planner"]
    assert set(planner["configs"]) == {str(p.relative_to(REPO)) for p in (REPO / "configs").glob("*.yaml")}
    assert len(planner["rows"]) == 16       # 4 bench configs x flash/math x checkpointing off/on
    assert all(r["measured_bytes"] is None and r["predicted_bytes"] > 0 for r in planner["rows"])
    calibration = json.loads((tmp_path / "cuda_calibration.json").read_text())
    assert calibration["dry_run"] is True and calibration["factors"] == {}
    assert (shipped.read_bytes() if shipped.exists() else None) == before    # shared/ untouched
    # The planner's largest allocation under math attention is the score tensor torch
    # builds: the same elements (torch's math SDPA computes it in float32 under bf16).
    math = next(r for r in parts["seed003"]["rows"] if r["case"] == "math")
    assert math["planned_largest"]["name"] == "frequency-path attention scores"
    assert math["largest_same_elements"]
    inference = parts["inference"]["rows"]
    assert [r["kind"] for r in inference] == ["separation", "separation", "streaming"]
    assert all(r.get("x_real_time", 0) > 0 or r.get("median_chunk_ms", 0) > 0 for r in inference)
    print(f"dry run: {wall:.1f} s")


def test_a_failing_or_late_measurement_is_recorded_and_the_next_one_runs(tmp_path):
    ctx = gpu_check.Context(device=gpu_check.torch.device("cpu"), dry_run=True, out=tmp_path, budget_s=60)
    ctx.deadline = time.monotonic() + 30
    rows = []

    def broken():
        raise RuntimeError("CUDA out of memory. Tried to allocate 80.89 GiB")
    gpu_check.case(ctx, rows, "first", 1, broken)
    gpu_check.case(ctx, rows, "second", 1, lambda: {"value": 1})
    gpu_check.case(ctx, rows, "third", 60, lambda: {"value": 2})
    assert [r["status"] for r in rows] == ["error", "ok", "skipped"]
    assert "Tried to allocate 80.89 GiB" in rows[0]["error"] and rows[1]["value"] == 1
    assert rows[2]["reason"].startswith("skipped: time budget")


def test_parts_share_the_budget_and_a_broken_part_keeps_its_rows(tmp_path):
    ctx = gpu_check.Context(device=gpu_check.torch.device("cpu"), dry_run=True, out=tmp_path, budget_s=1e6)
    shares = {}

    def broken(ctx, result):
        result["rows"] = [{"case": "measured", "status": "ok"}, {"case": "interrupted"}]
        raise RuntimeError("boom")

    def fine(ctx, result):
        shares["fine"] = ctx.part_left()
        result["rows"] = []
    parts = [gpu_check.Part("a", "A", broken, lambda r: [], 1.0),
             gpu_check.Part("b", "B", fine, lambda r: [], 3.0)]
    report, saved = {"parts": {}}, []
    gpu_check.run_parts(parts, ctx, report, lambda: saved.append(1))
    a, b = report["parts"]["a"], report["parts"]["b"]
    assert a["status"] == "error" and "boom" in a["error"] and b["status"] == "ok"
    assert [r["status"] for r in a["result"]["rows"]] == ["ok", "error"]
    assert shares["fine"] > 0.99 * ctx.budget_left()     # the last part gets all that is left
    assert len(saved) == 2                                # the JSON is written after every part


def test_fit_factors_is_the_median_ratio_per_family_and_attention_path():
    rows = [{"status": "ok", "family": "f", "attention": "flash", "activation_ratio": r} for r in (1.0, 1.5, 4.0)]
    rows += [{"status": "ok", "family": "f", "attention": "math", "activation_ratio": 2.0},
             {"status": "error", "family": "f", "attention": "math"},
             {"status": "ok", "family": "g", "attention": "math", "activation_ratio": None}]
    factors = gpu_check.fit_factors(rows)
    assert factors == {"f": {"flash": {"factor": 1.5, "n": 3, "min": 1.0, "max": 4.0},
                             "math": {"factor": 2.0, "n": 1, "min": 2.0, "max": 2.0}}}


@pytest.mark.parametrize("path", ["configs/musdb18.yaml", "configs/m4max_large.yaml", "configs/bandsplit_full.yaml"])
def test_configs_are_sized_to_fit_the_gpu_before_they_are_measured(path):
    """Batch 2 or less, no accumulation or compile, then shorter sequences / segments and
    fewer layers until the worst plan (math, no checkpointing) is under 40 % of the card."""
    config = load_config(REPO / path)
    fitted, overrides = gpu_check.fitted_for_measurement(config, 80e9, 0.4, "h100_80gb")
    assert fitted.train.batch_size <= 2 and fitted.train.gradient_accumulation_steps == 1
    assert not fitted.train.compile and fitted.hardware.device == "h100_80gb"
    worst = plan(with_overrides(fitted, {"train.gradient_checkpointing": False}), "torch", "math")
    assert worst.peak_bytes <= 0.4 * 80e9
    assert "hardware.device" not in overrides and with_overrides(config, overrides).train == fitted.train


def test_a_part_that_runs_past_its_share_is_stopped_and_the_next_one_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "PART_GRACE_S", 0.5)
    ctx = gpu_check.Context(device=gpu_check.torch.device("cpu"), dry_run=True, out=tmp_path,
                            budget_s=2.0 + 10.0, started=time.monotonic())

    def hangs(ctx, result):
        result["rows"] = [{"case": "stuck"}]
        time.sleep(30)

    parts = [gpu_check.Part("slow", "Slow", hangs, lambda r: [], 1.0),
             gpu_check.Part("next", "Next", lambda ctx, result: result.update(rows=[]), lambda r: [], 5.0)]
    report = {"parts": {}}
    start = time.monotonic()
    gpu_check.run_parts(parts, ctx, report, lambda: None)
    assert time.monotonic() - start < 5                     # 12 s / 6 = 2 s share + 0.5 s grace
    slow = report["parts"]["slow"]
    assert slow["status"] == "error" and "time budget" in slow["error"]
    assert slow["result"]["rows"] == [{"case": "stuck", "status": "error", "error": "interrupted: time budget"}]
    assert report["parts"]["next"]["status"] == "ok"
