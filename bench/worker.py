"""The Worker: a Backend in a spawned child process of its own, driven over a Pipe by
`call(method, *args)` from the bench's main process (why: bench/run.py's docstring)."""
from __future__ import annotations

import multiprocessing
import traceback

from backends import BACKENDS


class Worker:
    """A Backend in a child process; `call` runs one of its methods there."""

    def __init__(self, name: str, threads: int | None):
        self.name = name
        ctx = multiprocessing.get_context("spawn")   # a clean process: no framework inherited
        self.conn, child = ctx.Pipe()
        # Not a daemon: torch.compile starts compile workers of its own.
        self.process = ctx.Process(target=_serve, args=(child, name, threads), name=f"bench-{name}")
        self.process.start()

    def call(self, method: str, *args):
        self.conn.send((method, args))
        try:
            ok, value = self.conn.recv()
        except EOFError:
            self.process.join(timeout=5)
            raise RuntimeError(f"the {self.name} backend's process died during {method} "
                               f"(exit code {self.process.exitcode})") from None
        if not ok:
            raise RuntimeError(f"{self.name} backend failed:\n{value}")
        return value

    def close(self) -> None:
        if self.process.is_alive():
            self.conn.send(("stop", ()))
        self.process.join(timeout=30)


def _serve(conn, name: str, threads: int | None) -> None:
    try:
        backend = BACKENDS[name]()
        if threads is not None:
            backend.set_threads(threads)
    except Exception:
        backend = None
        failure = traceback.format_exc()
    while True:
        try:
            method, args = conn.recv()
        except EOFError:        # the main process is gone
            return
        if method == "stop":
            return
        try:
            if backend is None:
                raise RuntimeError(failure)
            conn.send((True, getattr(backend, method)(*args)))
        except Exception:
            conn.send((False, traceback.format_exc()))
