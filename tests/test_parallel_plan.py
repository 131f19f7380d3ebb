"""The planner's per-device memory when several ranks train (shared/planner/parallel.py),
checked against the torch model's own module structure (what FSDP2 shards)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shared.engine.config import load_config
from shared.planner.core import plan, with_overrides
from shared.planner.parallel import TORCH_BUCKET_BYTES
from shared.registry import get_family
from torch_models.models import build_model
from torch_models.distributed import BUCKET_BYTES

REPO = Path(__file__).resolve().parent.parent


def test_data_parallel_is_a_replica_plus_the_all_reduce():
    config = load_config(REPO / "configs" / "tiny.yaml")
    n = get_family("lm").param_counts(config.model)["total"]
    one = plan(config, "torch")
    two = plan(config, "torch", world_size=2)
    assert two.peak_bytes == one.peak_bytes + min(TORCH_BUCKET_BYTES, 4 * n)
    assert TORCH_BUCKET_BYTES == BUCKET_BYTES   # the planner counts the bucket torch uses
    assert plan(config, "mlx", world_size=2).peak_bytes == plan(config, "mlx").peak_bytes + 4 * n


@pytest.mark.parametrize("path", ["configs/tiny.yaml", "configs/bandsplit_demo.yaml"])
def test_fsdp_divides_the_state_and_adds_the_gathered_blocks(path):
    """Blocks are the elements of the torch model's ModuleLists (what the trainer shards);
    the root is every parameter outside them."""
    config = with_overrides(load_config(REPO / path), {"train.parallel": "fsdp"})
    one, four = plan(config, "torch"), plan(config, "torch", world_size=4)
    for name in ("weights", "optimizer state", "gradients"):
        assert four.term(name) == one.term(name) / 4
    model = build_model(config.model)
    outermost = [m for m in model.children() if isinstance(m, torch.nn.ModuleList)]
    blocks = [sum(p.numel() for p in block.parameters()) for lst in outermost for block in lst]
    root = sum(p.numel() for p in model.parameters()) - sum(blocks)
    assert four.term("gathered parameters") == 4 * (root + 2 * max(blocks))
    assert four.term("unsharded block gradient") == 4 * max(blocks)


def test_plan_cli_takes_the_world_size():
    result = subprocess.run([sys.executable, "-m", "shared.plan", "--config", "configs/cuda_lm.yaml",
                             "--device", "rtx_32gb", "--world-size", "4", "train.parallel=fsdp",
                             "--json"], capture_output=True, text=True, cwd=REPO, timeout=120)
    report = json.loads(result.stdout)
    assert report["world_size"] == 4 and report["parallel"] == "fsdp"
    assert "gathered parameters" in {t["name"] for t in report["terms"]}
