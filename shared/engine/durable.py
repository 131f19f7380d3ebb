"""Crash-safe writes: every file a run keeps is written whole or not at all, and survives a
power loss once the write returns.

    atomic_write(path, writer)   into a hidden temporary sibling, fsync'd, renamed over the
                                 target, and the folder fsync'd: a kill leaves the old file or
                                 the complete new one, never a mix
    append_line(path, text)      one line at the end of an append-only log (metrics.jsonl)
    remove_leftovers(folder)     the temporaries a killed process left behind

Temporary names all look like `.NAME.tmp-...`, so the next start can find and remove them.
A write the disk refuses (full, read-only, over quota) is one StorageError naming the file,
with the partial write removed.

Fault injection, for the kill-and-resume tests: every durable step first calls write_point().
With WORKBENCH_FAIL_AT_WRITE=N in the environment the N-th such step ends the process at once
(os._exit(137), as `kill -9` would); with WORKBENCH_FAIL_AT_WRITE=N:enospc it raises the
OSError a full disk gives instead. Tests in the same process use set_fault().
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Callable

from shared.errors import StorageError

FAIL_AT_ENV = "WORKBENCH_FAIL_AT_WRITE"
TMP_MARK = ".tmp-"

_writes = 0                                   # durable steps taken by this process
_fault: Callable[[int, str], None] | None = None


# ---------------------------------------------------------------- fault injection
def write_point(what: str) -> None:
    """Mark the start of one durable step (`what` names it, for the injected failure's
    message); counts it and runs an injected fault, if any, here."""
    global _writes
    _writes += 1
    if _fault is not None:
        _fault(_writes, what)
    wanted = os.environ.get(FAIL_AT_ENV)
    if wanted:
        number, _, mode = wanted.partition(":")
        if int(number) == _writes:
            if mode == "enospc":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), what)
            print(f"{FAIL_AT_ENV}={wanted}: killed before {what}", file=sys.stderr, flush=True)
            os._exit(137)


def set_fault(fault: Callable[[int, str], None] | None) -> None:
    """Call `fault(n, what)` at every durable step from now on (n counts from 1 again);
    None switches it off."""
    global _fault, _writes
    _fault, _writes = fault, 0


def writes_so_far() -> int:
    return _writes


# ---------------------------------------------------------------- primitives
def temp_path(path: Path) -> Path:
    """A hidden temporary sibling of `path`, unique per process and thread."""
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{threading.get_ident()}")


def fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def storage_error(path: Path, error: OSError, kept: str = "") -> StorageError:
    """One line for a write the disk refused."""
    why = error.strerror or str(error)
    hint = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space (quota)",
            errno.EROFS: "the file system is read-only; write elsewhere",
            errno.EACCES: "check its permissions"}.get(error.errno, "check the disk")
    return StorageError(f"cannot write {path}: {why}; {hint}{kept}")


def atomic_write(path: str | Path, writer: Callable, what: str = "", durable: bool = True) -> Path:
    """Write `path` crash-safely; `writer(f)` writes the content to a binary file object.
    durable=False skips the fsyncs, for caches whose loss costs only their recomputation
    (the rename still means no reader sees half a file)."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        write_point(what or f"writing {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            writer(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise storage_error(path, e, "; the earlier version, if any, is unchanged") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes, what: str = "") -> Path:
    return atomic_write(path, lambda f: f.write(data), what)


def append_line(path: str | Path, line: str) -> None:
    """Append one line to a log that is only ever appended to (fsync'd by sync_log)."""
    path = Path(path)
    try:
        write_point(f"appending to {path.name}")
        with open(path, "a") as f:
            f.write(line + "\n")
    except OSError as e:
        raise storage_error(path, e, "; the lines before it are kept") from None


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# ---------------------------------------------------------------- after a kill
def is_leftover(name: str) -> bool:
    return name.startswith(".") and TMP_MARK in name


def remove_leftovers(folder: str | Path) -> list[Path]:
    """Remove the temporary files and folders (`.NAME.tmp-...`) a killed process left in
    `folder`; returns what was removed."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for entry in folder.iterdir():
            if is_leftover(entry.name):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed
