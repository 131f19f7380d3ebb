"""Train with PyTorch: python -m torch_models.train [--config FILE] [section.key=value ...]"""
import sys

from shared.cli.train import main
from torch_models.trainer import Trainer

if __name__ == "__main__":
    sys.exit(main("torch", Trainer))
