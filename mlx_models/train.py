"""Train with MLX: python -m mlx_models.train [--config FILE] [section.key=value ...]"""
import sys

from shared.cli.train import main


def trainer():
    """The Trainer class, imported only when training starts: --help and bad arguments
    answer without importing mlx.core."""
    from mlx_models.trainer import Trainer
    return Trainer


def launcher():
    """The job's ranks when a launcher started several (mlx_models/distributed.py)."""
    from mlx_models.distributed import from_launcher
    return from_launcher()


if __name__ == "__main__":
    sys.exit(main("mlx", trainer, launcher=launcher))
