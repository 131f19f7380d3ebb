"""Train with MLX: python -m mlx_models.train [--config FILE] [section.key=value ...]"""
import sys

from mlx_models.trainer import Trainer
from shared.cli.train import main

if __name__ == "__main__":
    sys.exit(main("mlx", Trainer))
