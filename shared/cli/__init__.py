"""How the command-line tools report bad input: `error: <message>` on stderr and exit
status 2, no traceback. A traceback is kept for everything else, because that is a bug."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from shared.errors import CheckpointError, SpecError

# Errors that mean "the input is wrong", not "the program is wrong".
# (CheckpointError and SpecError are ValueErrors; listed to say what is expected.)
USER_ERRORS = (CheckpointError, SpecError, ValueError, FileNotFoundError, FileExistsError)


def run_cli(main_fn: Callable[[], object], errors: tuple = USER_ERRORS) -> int:
    """Run `main_fn()`; return 0, or 2 after printing one of `errors` as `error: ...`."""
    try:
        main_fn()
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:   # a second Ctrl+C while training, or Ctrl+C anywhere else
        print("aborted (Ctrl+C)", file=sys.stderr)
        return 130
    return 0


def check_output_dir(path: Path, force: bool, source: Path) -> None:
    """Refuse to replace anything that is already there unless told to (--force), and never
    a directory that holds the `source` being converted (a run, with its checkpoints)."""
    out, src = path.resolve(), source.resolve()
    if out == src or out in src.parents or src in out.parents:
        raise ValueError(f"output directory {path} overlaps the input {source} (replacing it "
                         f"would delete the input); choose a directory outside it")
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise FileExistsError(f"output directory {path} is not empty; pass --force to "
                              f"replace it")
