"""Text -> SentencePiece tokens -> packed training windows.

    text files --train_tokenizer--> tokenizer.model
    text files --tokenize_corpus--> train.bin / val.bin (uint16 or uint32) + index.json
    token file --WindowSampler----> (B, seq_len + 1) int32 batches

The sampler is a pure function of (seed, sample position, rank, world size): resuming
at a position reproduces the exact batches of an uninterrupted run, and each data-parallel
rank reads a disjoint share of every global batch.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shared import ranges as R
from shared.engine.durable import atomic_write, atomic_write_bytes, sha256_file, temp_path
from shared.errors import ConfigError, DataError


@dataclass(frozen=True)
class DataConfig:
    # Text files to train on. Empty: the built-in corpus that ships with the package.
    train_files: list[str] = field(default_factory=list)
    val_files: list[str] = field(default_factory=list)
    # SentencePiece model; empty: train one from the training text into the run directory.
    tokenizer: str = ""
    tokenizer_type: str = "bpe"         # bpe (Llama-compatible, exports to HF) | unigram
    val_fraction: float = 0.05          # held out from train_files when val_files is empty
    seed: int = 0

    RANGES = {"val_fraction": R.Range(0.0, 0.5, low_open=True, high_open=True), "seed": R.SEED}

    def validate(self):
        if self.tokenizer_type not in ("unigram", "bpe"):
            raise ConfigError(f"data.tokenizer_type must be 'unigram' or 'bpe', got {self.tokenizer_type!r}")
        if not 0.0 < self.val_fraction < 0.5:
            raise ConfigError(f"data.val_fraction must be in (0, 0.5), got {self.val_fraction}")


# ------------------------------------------------------------------ the built-in corpus
def builtin_corpus_files() -> list[Path]:
    """Real Korean text installed with the package's dependencies: the Constitution of
    the Republic of Korea and ten National Assembly bills, shipped as plain files inside
    KoNLPy (read as files; KoNLPy itself and its Java parts are never imported)."""
    spec = importlib.util.find_spec("konlpy")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the built-in corpus comes with the 'konlpy' package, which is not "
                        "installed; run pip install -e . or set data.train_files")
    root = Path(spec.submodule_search_locations[0]) / "data" / "corpus"
    files = sorted(root.glob("kolaw/*.txt")) + sorted(root.glob("kobill/*.txt"))
    if not files:
        raise DataError(f"no corpus files under {root}; reinstall konlpy or set data.train_files")
    return files


def check_files(files: list[str | Path]) -> None:
    for f in files:
        if not Path(f).is_file():
            raise DataError(f"data file {f} not found; fix data.train_files / data.val_files")
        if Path(f).stat().st_size == 0:
            raise DataError(f"data file {f} is empty; fix data.train_files / data.val_files")


def read_paragraphs(files: list[str | Path]) -> list[str]:
    """Non-empty lines of every file, with a clear error for missing or unreadable files."""
    check_files(files)
    paragraphs = []
    for f in files:
        path = Path(f)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise DataError(f"data file {path} is not UTF-8 text") from None
        paragraphs += [line.strip() for line in text.splitlines() if line.strip()]
    return paragraphs


def split_paragraphs(paragraphs: list[str], val_fraction: float, seed: int):
    """A seeded random split by paragraph (not by position, so validation text is spread
    over every document)."""
    order = np.random.default_rng(seed).permutation(len(paragraphs))
    n_val = max(1, int(round(len(paragraphs) * val_fraction)))
    val = set(order[:n_val].tolist())
    return ([p for i, p in enumerate(paragraphs) if i not in val],
            [p for i, p in enumerate(paragraphs) if i in val])


# ------------------------------------------------------------------ tokenizer
def train_tokenizer(paragraphs: list[str], vocab_size: int, model_type: str,
                    out_path: Path) -> Path:
    """Train SentencePiece with byte fallback (no unknown tokens, ever) and no text
    normalisation, as Llama's tokenizer is trained: Hugging Face rebuilds a Llama
    `tokenizer.model` as exactly that, so only such a model exports faithfully."""
    import re

    import sentencepiece as spm

    if sum(len(p) for p in paragraphs) == 0:
        raise DataError("the training corpus is empty; point data.train_files at text files")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_prefix = temp_path(out_path)   # a hidden name the next start removes after a kill
    coverage = character_coverage(paragraphs, vocab_size)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(paragraphs), model_prefix=str(tmp_prefix),
            vocab_size=vocab_size, model_type=model_type, byte_fallback=True,
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            character_coverage=coverage, hard_vocab_limit=False, bos_id=1, eos_id=2, unk_id=0,
            pad_id=-1, num_threads=2, minloglevel=2, max_sentence_length=1 << 16)
    except RuntimeError as e:
        need = re.search(r"required_chars\. (\d+) vs (\d+)", str(e))
        if need is None:
            raise
        raise DataError(f"model.vocab_size={vocab_size} is too small for a tokenizer of this "
                        f"text: its common characters alone need {need.group(2)} pieces; set "
                        f"model.vocab_size to at least {int(need.group(2)) + 64}") from None
    atomic_write_bytes(out_path, Path(f"{tmp_prefix}.model").read_bytes())
    Path(f"{tmp_prefix}.model").unlink(missing_ok=True)
    Path(f"{tmp_prefix}.vocab").unlink(missing_ok=True)
    return out_path


def character_coverage(paragraphs: list[str], vocab_size: int, default: float = 0.9995) -> float:
    """SentencePiece's usual 0.9995 coverage, lowered when the text has so many distinct
    characters (Korean has thousands) that they would not leave half the vocabulary for
    merges. Characters left out are spelled with byte-fallback tokens, never <unk>."""
    from collections import Counter
    counts = sorted(Counter("".join(paragraphs)).values(), reverse=True)
    budget = max(1, vocab_size // 2 - 3 - 256)   # meta pieces and the 256 byte tokens
    if len(counts) <= budget:
        return default
    return max(0.98, min(default, sum(counts[:budget]) / sum(counts)))  # SentencePiece's range


def load_tokenizer(path: str | Path, model_vocab_size: int | None = None,
                   fix: str = "fix data.tokenizer or leave it empty to train one"):
    import sentencepiece as spm

    path = Path(path)
    if not path.is_file():
        raise DataError(f"tokenizer {path} not found; {fix}")
    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as e:
        raise DataError(f"tokenizer {path} is not a SentencePiece model ({e})") from None
    if model_vocab_size is not None and sp.get_piece_size() > model_vocab_size:
        raise DataError(f"tokenizer {path} has {sp.get_piece_size()} pieces but "
                        f"model.vocab_size is {model_vocab_size}; set model.vocab_size="
                        f"{sp.get_piece_size()} or use a smaller tokenizer")
    return sp


# ------------------------------------------------------------------ token files
def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def token_stream(paragraphs: list[str], sp) -> np.ndarray:
    """Paragraphs as one stream of token ids, BOS ... EOS per paragraph: what training
    reads, and what evaluation scores (shared/cli/evaluate.py)."""
    ids = sp.encode(paragraphs)
    return np.fromiter((t for doc in ids for t in (sp.bos_id(), *doc, sp.eos_id())),
                       dtype=token_dtype(sp.get_piece_size()))


def tokenize_corpus(paragraphs: list[str], sp, path: Path) -> np.ndarray:
    """Encode paragraphs as one stream (BOS ... EOS per paragraph) into a flat file."""
    stream = token_stream(paragraphs, sp)
    atomic_write(path, stream.tofile)
    return stream


def open_tokens(path: Path, dtype) -> np.ndarray:
    return np.memmap(path, dtype=dtype, mode="r")


def fingerprint(files: list[str | Path], extra: str = "") -> str:
    """A key of the files' contents (not their paths or times: a copied corpus keeps it)."""
    h = hashlib.sha256(extra.encode())
    for f in files:
        h.update(f"{Path(f).stat().st_size}:{sha256_file(Path(f))}".encode())
    return h.hexdigest()[:16]


def _file_record(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _cache_problem(cache: Path, index: dict) -> str | None:
    """Why the cache's files are not the ones its index.json recorded, or None."""
    files = index.get("files")
    if not isinstance(files, dict) or not files:
        return "index.json records no file hashes (an older cache)"
    for name, record in files.items():
        path = cache / name
        if not path.is_file():
            return f"{path} is missing"
        if not isinstance(record, dict) or path.stat().st_size != record.get("bytes"):
            return f"{path} is not the size it was written with (cut short or changed)"
        if sha256_file(path) != record.get("sha256"):
            return f"{path} differs from the file written (damaged or changed)"
    return None


class LMDataset:
    """Tokenizer plus train/val token streams for a run, built once into `cache_dir`
    and reused while the sources and settings are unchanged.

    cache_dir/index.json records the key of the sources (their contents and the settings)
    and the size and sha256 of every file built; a cache whose sources changed, or whose
    files no longer match (a kill, a truncated or zeroed train.bin), is rebuilt. It holds
    no absolute path: a moved or copied run directory reads its own cache, never the
    original's."""

    def __init__(self, data_cfg, vocab_size: int, cache_dir: str | Path):
        cache = Path(cache_dir)
        train_files = list(data_cfg.train_files) or builtin_corpus_files()
        val_files = list(data_cfg.val_files)
        check_files(train_files + val_files)
        given_tokenizer = [data_cfg.tokenizer] if data_cfg.tokenizer else []
        key = fingerprint(train_files + val_files + given_tokenizer,
                          f"{len(train_files)}|{vocab_size}|{data_cfg.tokenizer}|"
                          f"{data_cfg.tokenizer_type}|{data_cfg.val_fraction}|{data_cfg.seed}")
        index_path = cache / "index.json"
        try:
            index = json.loads(index_path.read_text()) if index_path.is_file() else {}
        except (ValueError, UnicodeDecodeError):
            index = {}      # damaged: rebuilt below
        if not isinstance(index, dict):
            index = {}
        tok_path = Path(data_cfg.tokenizer) if data_cfg.tokenizer else cache / "tokenizer.model"
        problem = _cache_problem(cache, index) if index.get("key") == key else None
        if problem:
            print(f"data: rebuilding the token cache in {cache}: {problem}", file=sys.stderr)
        if index.get("key") != key or problem:
            train_text = read_paragraphs(train_files)
            if val_files:
                val_text = read_paragraphs(val_files)
            else:
                if len(train_text) == 1:   # it would go to validation, leaving no training text
                    raise DataError(
                        f"{', '.join(map(str, train_files))} hold(s) one paragraph (non-empty "
                        f"line); with data.val_files empty at least one paragraph is held out "
                        f"for validation (data.val_fraction) and one more is needed to train "
                        f"on: add text (one paragraph per line) or set data.val_files")
                train_text, val_text = split_paragraphs(train_text, data_cfg.val_fraction, data_cfg.seed)
            if not train_text:
                raise DataError(f"no text in {', '.join(map(str, train_files))}; the corpus is empty")
            if not data_cfg.tokenizer:
                train_tokenizer(train_text, vocab_size, data_cfg.tokenizer_type, tok_path)
            sp = load_tokenizer(tok_path, vocab_size)
            train = tokenize_corpus(train_text, sp, cache / "train.bin")
            val = tokenize_corpus(val_text, sp, cache / "val.bin")
            built = ["train.bin", "val.bin"] + ([] if data_cfg.tokenizer else ["tokenizer.model"])
            index = {"key": key, "dtype": np.dtype(train.dtype).name,
                     "vocab_size": sp.get_piece_size(), "train_tokens": int(train.size),
                     "val_tokens": int(val.size), "train_files": [str(f) for f in train_files],
                     "val_files": [str(f) for f in val_files],
                     "files": {name: _file_record(cache / name) for name in built}}
            # Written last: it vouches for the files above.
            atomic_write_bytes(index_path, json.dumps(index, indent=1, ensure_ascii=False).encode())
        self.tokenizer_path = tok_path
        self.tokenizer = load_tokenizer(self.tokenizer_path, vocab_size)
        self.train = open_tokens(cache / "train.bin", index["dtype"])
        self.val = open_tokens(cache / "val.bin", index["dtype"])
        self.index = index


# ------------------------------------------------------------------ sampling
class WindowSampler:
    """Random packed windows of `seq_len + 1` tokens, epoch by epoch without replacement.

    Sample g of the global stream comes from epoch g // n and slot g % n of that epoch's
    seeded permutation; each epoch also shifts the window grid by a seeded offset so the
    model does not always see the same boundaries."""

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        if tokens.size < seq_len + 2:
            raise DataError(f"the token stream has {tokens.size} tokens, fewer than one window "
                            f"of seq_length + 1 = {seq_len + 1}; use more text or a shorter "
                            f"train.seq_length")
        self.tokens, self.seq_len, self.seed = tokens, seq_len, seed
        self.rank, self.world_size = rank, world_size
        self.windows_per_epoch = (tokens.size - 1) // seq_len - 1
        self._epoch, self._perm, self._offset = None, None, 0

    def _window(self, g: int) -> np.ndarray:
        epoch, slot = divmod(g, self.windows_per_epoch)
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = rng.permutation(self.windows_per_epoch)
            self._offset = int(rng.integers(0, self.seq_len))
            self._epoch = epoch
        start = self._offset + int(self._perm[slot]) * self.seq_len
        return np.asarray(self.tokens[start:start + self.seq_len + 1], dtype=np.int32)

    def batch(self, position: int, batch_size: int) -> np.ndarray:
        """This rank's share of the global batch that starts at sample `position`
        (a global batch is batch_size * world_size samples)."""
        first = position + self.rank * batch_size
        return np.stack([self._window(first + i) for i in range(batch_size)])


def eval_batches(tokens: np.ndarray, seq_len: int, batch_size: int, max_batches: int):
    """Fixed, contiguous validation windows: the same every evaluation."""
    n = min((tokens.size - 1) // seq_len, batch_size * max_batches)
    if n == 0:
        raise DataError(f"the validation split has {tokens.size} tokens, fewer than one window "
                        f"of {seq_len + 1}; raise data.val_fraction or shorten train.seq_length")
    windows = [np.asarray(tokens[i * seq_len:i * seq_len + seq_len + 1], dtype=np.int32)
               for i in range(n)]
    return [np.stack(windows[i:i + batch_size]) for i in range(0, n, batch_size)]
