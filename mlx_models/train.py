"""Train with MLX: python -m mlx_models.train [--config FILE] [section.key=value ...]"""
import sys

from shared.cli.train import main


def trainer():
    """The Trainer class, imported only when training starts: --help and bad arguments
    answer without importing mlx.core."""
    from mlx_models.trainer import Trainer
    return Trainer


if __name__ == "__main__":
    sys.exit(main("mlx", trainer))
