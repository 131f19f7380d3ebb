"""Train with PyTorch: python -m torch_models.train [--config FILE] [section.key=value ...]"""
import sys

from shared.cli.train import main


def trainer():
    """The Trainer class, imported only when training starts: --help and bad arguments
    answer without importing torch."""
    from torch_models.trainer import Trainer
    return Trainer


if __name__ == "__main__":
    sys.exit(main("torch", trainer))
