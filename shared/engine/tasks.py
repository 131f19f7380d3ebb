"""What the training loop needs from a model family (the contract in full:
shared/engine/protocols.py), framework-neutrally: its training
batches, its evaluation, and the files its checkpoints carry.

    Task.train_batch(position, batch_size)  this rank's share of a global batch (numpy)
    Task.evaluate(trainer)                   {"val_loss", ...}: the loop keeps the best
    Task.units_per_sample                    the family's unit (tokens, audio seconds) per example
    Task.checkpoint_files()                  {name: bytes} saved beside the weights
    Task.file_settings                       {name: config key} for those a setting can name
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.registry import get_family


def same_data_file(name: str, a: bytes, b: bytes) -> bool:
    """Whether two versions of a checkpoint's data file mean the same to the model: the same
    SentencePiece pieces in the same order (the serialised model also records where it was
    trained), the same arrays, or else the same bytes."""
    import io

    if name.endswith(".model"):
        import sentencepiece as spm

        pieces = [[sp.id_to_piece(i) for i in range(sp.get_piece_size())]
                  for sp in (spm.SentencePieceProcessor(model_proto=x) for x in (a, b))]
        return pieces[0] == pieces[1]
    if name.endswith(".npz"):
        with np.load(io.BytesIO(a)) as za, np.load(io.BytesIO(b)) as zb:
            return set(za.files) == set(zb.files) and all(np.array_equal(za[k], zb[k]) for k in za.files)
    return a == b


def data_file_problem(name: str, content: bytes) -> str | None:
    """What is wrong with a checkpoint's data file (a tokenizer, CMVN statistics), or None:
    one that cannot be read, or holds non-finite numbers, must be named as damaged, not
    compared (NaN never equals itself) and reported as "different data"."""
    import io
    import zipfile

    if name.endswith(".model"):
        import sentencepiece as spm
        try:
            spm.SentencePieceProcessor(model_proto=content)
        except (RuntimeError, TypeError, ValueError) as e:
            return f"not a SentencePiece model: {str(e).splitlines()[0] if str(e) else e}"
    elif name.endswith(".npz"):
        try:
            with np.load(io.BytesIO(content), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            return f"not a numpy .npz archive: {e}"
        for key, array in arrays.items():
            if array.dtype.kind in "fc" and not np.isfinite(array).all():
                return f"{key} holds non-finite values"
    return None


def make_task(config, out_dir: Path, rank: int = 0, world_size: int = 1):
    """The config's family's Task (shared/registry.py), for this rank's share of the data."""
    return get_family(config.family).task(config, Path(out_dir), rank, world_size)
