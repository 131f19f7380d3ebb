import os

# Parity needs true fp32 matmuls on both sides (docs/architecture.md, "Parity conventions").
os.environ.setdefault("MLX_ENABLE_TF32", "0")

# torch first: OpenBLAS loaded with RTLD_GLOBAL (mlx_models/blas.py) would otherwise also
# catch torch's BLAS calls in this process, 3-4x slower than torch's MKL.
import torch  # noqa: E402
import mlx_models  # noqa: E402,F401  -- loads OpenBLAS before any test imports mlx.core
import pytest  # noqa: E402

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.set_float32_matmul_precision("highest")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tiny_lm_spec():
    from shared.specs.lm import LMSpec
    return LMSpec(vocab_size=97, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                  intermediate_size=96, max_seq_length=64, rope_theta=10000.0, norm_eps=1e-5)
