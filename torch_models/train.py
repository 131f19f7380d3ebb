"""Train with PyTorch: python -m torch_models.train [--config FILE] [section.key=value ...]"""
import sys

from shared.cli.train import main


def trainer():
    """The Trainer class, imported only when training starts: --help and bad arguments
    answer without importing torch."""
    from torch_models.trainer import Trainer
    return Trainer


def launcher():
    """The job's ranks when a launcher started several (torch_models/distributed.py)."""
    from torch_models.distributed import from_launcher
    return from_launcher()


if __name__ == "__main__":
    sys.exit(main("torch", trainer, launcher=launcher))
