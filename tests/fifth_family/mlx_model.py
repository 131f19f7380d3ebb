"""The MLP regressor in MLX (mirrors torch_model.py: same classes, same parameter names)."""
import mlx.core as mx
import mlx.nn as nn


class Regressor(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.spec = spec
        self.checkpoint_activations = False
        dims = [spec.in_dim] + [spec.hidden] * spec.depth + [spec.out_dim]
        self.layers = [nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])]

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = nn.gelu(layer(x))
        return self.layers[-1](x)


def loss(model, batch):
    return mx.mean((model(batch["x"]) - batch["y"]).astype(mx.float32) ** 2)
