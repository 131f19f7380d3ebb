"""Helpers the test files share."""
import numpy as np
import pytest
import torch


def rel_err(a, b) -> float:
    """max |a - b| / max |b|: the error relative to the tensor's scale."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny tensors: a second torch thread buys nothing, and on a busy two-core machine its
    barrier waits made torch steps up to 10x slower. Imported by a test module, it applies
    to that module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
