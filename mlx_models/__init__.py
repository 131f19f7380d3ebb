"""MLX implementations of the model families and the MLX training adapter."""
