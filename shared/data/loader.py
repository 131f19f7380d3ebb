"""Background batch loading on mlx-data: native threads, no Python worker processes
(multiprocessing workers broke on macOS in seed 000), numpy out, same for both backends."""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np


def prefetch(make_batch: Callable[[int], dict[str, np.ndarray]], start: int, stop: int,
             depth: int = 4) -> Iterator[dict[str, np.ndarray]]:
    """Yield make_batch(i) for i in [start, stop), computed ahead on an mlx-data thread.

    Batches are a pure function of the index, so a resumed run simply starts at a later
    index and sees exactly the batches the uninterrupted run would have seen."""
    import mlx.data as dx

    stream = dx.stream_python_iterable(lambda: (make_batch(i) for i in range(start, stop)))
    yield from stream.prefetch(depth, 1)
