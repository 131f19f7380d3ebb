"""MLX implementations of the model families and the MLX training adapter."""
from mlx_models.blas import use_optimized_blas

use_optimized_blas()  # before anything imports mlx.core
