"""Layout conversion checked against the frameworks themselves: a canonical (torch-layout)
kernel, converted for MLX by its declared kind, must give torch's convolution output."""
import mlx.core as mx
import mlx.nn as mnn
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shared.engine.layout import backend_shape, from_backend, to_backend
from shared.specs.base import (CONV1D, CONV2D, CONV_TRANSPOSE1D, CONV_TRANSPOSE2D, LINEAR,
                               ParamSpec)

rng = np.random.default_rng(0)


def close(a, b):
    return np.abs(a - b).max() <= 1e-5 * max(np.abs(b).max(), 1)


def test_conv1d():
    w = rng.standard_normal((6, 3, 5)).astype(np.float32)     # torch (O, I, K)
    x = rng.standard_normal((2, 3, 20)).astype(np.float32)    # torch (B, C, T)
    ref = F.conv1d(torch.from_numpy(x), torch.from_numpy(w), padding=2).numpy()
    out = mx.conv1d(mx.array(x.transpose(0, 2, 1)), mx.array(to_backend(w, CONV1D, "mlx")), padding=2)
    assert close(np.array(out).transpose(0, 2, 1), ref)


def test_conv2d_square_kernel():
    # 3x3 with I == O: a shape-guessing converter cannot tell the axes apart.
    w = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
    x = rng.standard_normal((1, 4, 9, 7)).astype(np.float32)
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1).numpy()
    out = mx.conv2d(mx.array(x.transpose(0, 2, 3, 1)), mx.array(to_backend(w, CONV2D, "mlx")), padding=1)
    assert close(np.array(out).transpose(0, 3, 1, 2), ref)


def test_conv_transpose1d():
    w = rng.standard_normal((3, 6, 4)).astype(np.float32)     # torch (I, O, K)
    x = rng.standard_normal((2, 3, 10)).astype(np.float32)
    ref = F.conv_transpose1d(torch.from_numpy(x), torch.from_numpy(w), stride=2).numpy()
    out = mx.conv_transpose1d(mx.array(x.transpose(0, 2, 1)),
                              mx.array(to_backend(w, CONV_TRANSPOSE1D, "mlx")), stride=2)
    assert close(np.array(out).transpose(0, 2, 1), ref)


def test_conv_transpose2d():
    w = rng.standard_normal((5, 2, 3, 3)).astype(np.float32)  # torch (I, O, kH, kW)
    x = rng.standard_normal((1, 5, 6, 8)).astype(np.float32)
    ref = F.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w), padding=1).numpy()
    out = mx.conv_transpose2d(mx.array(x.transpose(0, 2, 3, 1)),
                              mx.array(to_backend(w, CONV_TRANSPOSE2D, "mlx")), padding=1)
    assert close(np.array(out).transpose(0, 3, 1, 2), ref)


@pytest.mark.parametrize("kind,shape", [(CONV1D, (6, 3, 5)), (CONV2D, (4, 2, 3, 5)),
                                        (CONV_TRANSPOSE1D, (3, 6, 4)),
                                        (CONV_TRANSPOSE2D, (5, 2, 3, 4)), (LINEAR, (7, 3))])
def test_round_trip_and_shape(kind, shape):
    w = rng.standard_normal(shape).astype(np.float32)
    native = to_backend(w, kind, "mlx")
    assert native.shape == backend_shape(ParamSpec("w", shape, kind), "mlx")
    assert np.array_equal(from_backend(native, kind, "mlx"), w)
    assert to_backend(w, kind, "torch") is w


def test_mlx_module_shapes_match_backend_shape():
    # MLX's own modules agree with the layout table.
    assert mnn.Conv1d(3, 6, 5).weight.shape == backend_shape(ParamSpec("w", (6, 3, 5), CONV1D), "mlx")
    assert mnn.Conv2d(2, 4, (3, 5)).weight.shape == backend_shape(ParamSpec("w", (4, 2, 3, 5), CONV2D), "mlx")
    assert mnn.ConvTranspose1d(3, 6, 4).weight.shape == backend_shape(
        ParamSpec("w", (3, 6, 4), CONV_TRANSPOSE1D), "mlx")


def test_unknown_kind_is_an_error():
    with pytest.raises(ValueError, match="unknown layout kind"):
        to_backend(np.zeros(3), "conv3d", "mlx")
