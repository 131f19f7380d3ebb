"""The MLP regressor in PyTorch (mirrors mlx_model.py: same classes, same parameter names)."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class Regressor(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.spec = spec
        self.checkpoint_activations = False
        dims = [spec.in_dim] + [spec.hidden] * spec.depth + [spec.out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = F.gelu(layer(x))
        return self.layers[-1](x)


def loss(model, batch):
    return torch.mean((model(batch["x"]) - batch["y"]).float() ** 2)
