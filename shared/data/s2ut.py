"""Speech-to-unit translation data for EchoStream: fairseq S2UT manifests -> numpy batches.

    train.tsv / dev.tsv --read_manifest--> Utterances (checked row by row)
        --SentencePiece--> source / target token ids     (trained into the run dir, or given)
        --fbank (cached per utterance)--> CMVN (global, from the training set, cached)
        --BucketBatcher / eval_batches--> dict batches (below)

A manifest is tab-separated with a header (fairseq's speech_to_speech format):

    id  src_audio  src_n_frames  src_text  tgt_text  tgt_audio

`src_audio` is a mono audio file (data.sample_rate, 16 kHz; a file at another rate is
resampled on reading with soxr, and one line says how many), absolute or relative to the
manifest's folder;
`src_n_frames` is informational (durations come from the audio header); `tgt_audio` is
the target speech as space-separated discrete unit ids 0..n_units-1. Rows that cannot be
used (missing or unreadable audio, another channel count, empty text, no
or out-of-range units, a repeated id) are all reported with their row numbers: the run
stops with one message listing them, or with data.skip_bad_rows=true skips them and says
how many. Utterances longer than data.max_duration are skipped, counted and logged.

A batch (B utterances, zero padded; ids from SentencePiece with pad 0, unk 1, bos 2,
eos 3; id 0 is also the CTC blank):
    features (B, T, 80) float32, CMVN-normalised (SpecAugment in training batches only)
    feature_lengths (B,) int32
    src_tokens (B, S), src_lengths    source ids, no BOS/EOS
    tgt_tokens (B, L), tgt_lengths    target ids, no BOS/EOS
    prev_output_tokens (B, L + 1)     [BOS] + target (decoder input)
    target (B, L + 1)                 target + [EOS] (decoder output)
    units (B, U), unit_lengths        unit ids + 1 (0 is blank/pad)

Training batches are a pure function of (seed, sample position): each epoch is a seeded
shuffle, cut into windows of `sort_window_batches` global batches that are sorted by
length and split into batches (so a batch holds similar lengths) whose order is shuffled
again; resuming at a position reproduces the uninterrupted run.
"""
from __future__ import annotations

import hashlib
import io
import re
import shutil
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

from shared import ranges as R
from shared.audio.files import audio_info, check_samples
from shared.audio.fbank import CMVN, FbankOptions, SpecAugment, fbank, num_frames
from shared.audio.files import resample, resampled_length
from shared.data.lm_text import load_tokenizer
from shared.engine.durable import atomic_write, atomic_write_bytes, remove_leftovers, sha256_file, temp_path
from shared.errors import ConfigError, DataError
from shared.specs.echostream import BLANK, BOS, EOS, PAD, UNK, unit_id  # noqa: F401

# The token contract with the model: SentencePiece pad 0 (= CTC blank), unk 1, bos 2,
# eos 3; discrete unit u is stored as unit_id(u) = u + 1.


@dataclass(frozen=True)
class S2UTDataConfig:
    """Speech-to-unit translation data (EchoStream): fairseq S2UT manifests, see
    shared/data/s2ut.py. Both manifests empty: a synthetic demo corpus is generated into
    the run directory (python -m shared.data.synth_s2ut), so training works from a clone."""
    train_manifest: str = ""
    dev_manifest: str = ""
    # SentencePiece models (pad 0, unk 1, bos 2, eos 3); empty: trained from the training
    # manifest's texts into the run directory, with model.src_vocab_size / tgt_vocab_size.
    src_tokenizer: str = ""
    tgt_tokenizer: str = ""
    sample_rate: int = 16000
    max_duration: float = 10.0         # seconds; longer utterances are skipped (and counted)
    max_tokens: int = 5000             # padded feature frames per batch (B x longest)
    skip_bad_rows: bool = False        # false: unusable manifest rows stop the run, listed
    sort_window_batches: int = 50      # length-sort within windows of this many batches
    specaugment: bool = True           # training batches only
    num_freq_masks: int = 2
    freq_mask_width: int = 27
    num_time_masks: int = 2
    time_mask_width: int = 100
    dev_max_utterances: int = 200      # dev utterances scored at each evaluation (0: all)
    synth_train_utterances: int = 400  # size of the generated demo corpus
    synth_dev_utterances: int = 40
    synth_min_seconds: float = 1.0
    synth_max_seconds: float = 4.0
    seed: int = 0                      # the demo corpus

    RANGES = {  # shared/ranges.py; the rules between keys in validate
        "sample_rate": R.at_least(1000, R.MAX_SAMPLE_RATE), "max_duration": R.positive(86400.0),
        "max_tokens": R.at_least(1, 10 ** 8), "sort_window_batches": R.at_least(1, 1_000_000),
        "num_freq_masks": R.at_least(0, 1000), "freq_mask_width": R.at_least(0, 1024),
        "num_time_masks": R.at_least(0, 1000), "time_mask_width": R.at_least(0, 1_000_000),
        "dev_max_utterances": R.at_least(0, 10 ** 9), "synth_train_utterances": R.at_least(1, 100_000),
        "synth_dev_utterances": R.at_least(1, 100_000), "synth_min_seconds": R.positive(600.0),
        "synth_max_seconds": R.positive(600.0), "seed": R.SEED,
    }

    def validate(self):
        if bool(self.train_manifest) != bool(self.dev_manifest):
            raise ConfigError("set both data.train_manifest and data.dev_manifest, or neither "
                              "(both empty: train on the generated demo corpus)")
        if self.sample_rate <= 0 or not self.max_duration > 0:
            raise ConfigError("data.sample_rate and data.max_duration must be > 0")
        if self.max_tokens <= 0 or self.sort_window_batches <= 0:
            raise ConfigError("data.max_tokens and data.sort_window_batches must be > 0")
        for name in ("num_freq_masks", "freq_mask_width", "num_time_masks", "time_mask_width",
                     "dev_max_utterances"):
            if getattr(self, name) < 0:
                raise ConfigError(f"data.{name} must be >= 0, got {getattr(self, name)}")
        if self.synth_train_utterances < 1 or self.synth_dev_utterances < 1:
            raise ConfigError("data.synth_train_utterances and data.synth_dev_utterances "
                              "must be >= 1")
        if not 0 < self.synth_min_seconds < self.synth_max_seconds:
            raise ConfigError(f"need 0 < data.synth_min_seconds < data.synth_max_seconds, got "
                              f"{self.synth_min_seconds}, {self.synth_max_seconds}")

MANIFEST_COLUMNS = ("id", "src_audio", "src_n_frames", "src_text", "tgt_text", "tgt_audio")
MAX_LISTED = 10  # bad rows spelled out in a message; the rest are counted


def log_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ manifests
@dataclass(frozen=True)
class Utterance:
    row: int                  # data row in its manifest: 1 = the line after the header
    id: str
    audio: Path
    num_samples: int          # at sample_rate
    sample_rate: int          # the rate features are computed at (data.sample_rate)
    src_text: str
    tgt_text: str
    units: tuple[int, ...]    # 0-based, as written in the manifest
    file_rate: int = 0        # the audio file's own rate where it is not sample_rate (resampled)
    manifest: str = ""        # the manifest it came from (named in error messages)

    @property
    def where(self) -> str:
        """How error messages name it: `manifest M row R (id 'x'): `."""
        return f"manifest {self.manifest} row {self.row} (id {self.id!r}): "

    @property
    def seconds(self) -> float:
        return self.num_samples / self.sample_rate


def _check_row(fields: list[str], col: dict[str, int], folder: Path, sample_rate: int,
               n_units: int | None, seen: dict[str, int], row: int, manifest: str = ""):
    """An Utterance, or the reason the row cannot be used."""
    if len(fields) != len(col):
        return f"has {len(fields)} tab-separated fields, the header has {len(col)}"
    get = {name: fields[i].strip() for name, i in col.items()}
    if not get["id"]:
        return "empty id"
    if get["id"] in seen:
        return f"id {get['id']!r} repeats row {seen[get['id']]}"
    if not get["src_text"]:
        return "empty src_text"
    if not get["tgt_text"]:
        return "empty tgt_text"
    if not get["tgt_audio"]:
        return "empty tgt_audio (no target units)"
    try:
        units = tuple(int(u) for u in get["tgt_audio"].split())
    except ValueError:
        return f"tgt_audio must be space-separated unit integers, got {get['tgt_audio'][:40]!r}"
    bad_units = [u for u in units if u < 0 or (n_units is not None and u >= n_units)]
    if bad_units:
        limit = f"0..{n_units - 1} (the model's n_units={n_units})" if n_units else ">= 0"
        return f"unit {bad_units[0]} outside {limit}"
    if not get["src_audio"]:
        return "empty src_audio"
    audio = Path(get["src_audio"])
    audio = audio if audio.is_absolute() else folder / audio
    if not audio.is_file():
        return f"audio file {audio} not found"
    try:
        info = audio_info(audio)
    except DataError as e:
        return str(e)
    if info.channels != 1:
        return (f"{audio} has {info.channels} channels, expected mono; mix it down, e.g. "
                f"`sox IN -c 1 OUT.wav` or `ffmpeg -i IN -ac 1 OUT.wav`")
    samples = resampled_length(int(info.frames), info.samplerate, sample_rate)
    if num_frames(samples, FbankOptions(sample_rate=sample_rate)) == 0:
        return f"{audio} is shorter than one 25 ms fbank frame"
    seen[get["id"]] = row
    return Utterance(row, get["id"], audio, samples, sample_rate, get["src_text"], get["tgt_text"], units,
                     0 if info.samplerate == sample_rate else info.samplerate, manifest)


def read_manifest(path: str | Path, sample_rate: int = 16000, n_units: int | None = None,
                  skip_bad_rows: bool = False, log: Callable[[str], None] = log_stderr,
                  ) -> list[Utterance]:
    """The usable utterances of an S2UT manifest. Unusable rows stop the run with one
    message listing them (row numbers count data rows; line = row + 1), or are skipped,
    with a count in the log, when skip_bad_rows is true."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest {path} not found; fix data.train_manifest / "
                        f"data.dev_manifest, or leave both empty to train on the demo corpus")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"manifest {path} is not UTF-8 text") from None
    header = [h.strip() for h in lines[0].split("\t")] if lines else []
    missing = [c for c in MANIFEST_COLUMNS if c not in header]
    if missing:
        raise DataError(f"manifest {path}: the header lacks {', '.join(missing)}; the first line "
                        f"must name the tab-separated columns {' '.join(MANIFEST_COLUMNS)}")
    col = {name: header.index(name) for name in header}
    utterances, bad, seen = [], [], {}
    rows = [(row, line) for row, line in enumerate(lines[1:], start=1) if line.strip()]
    for row, line in rows:
        result = _check_row(line.split("\t"), col, path.parent, sample_rate, n_units, seen, row,
                            str(path))
        if isinstance(result, Utterance):
            utterances.append(result)
        else:
            bad.append(f"row {row} (line {row + 1}): {result}")
    if bad:
        listed = "; ".join(bad[:MAX_LISTED]) + (f"; and {len(bad) - MAX_LISTED} more"
                                                if len(bad) > MAX_LISTED else "")
        if not skip_bad_rows:
            raise DataError(f"manifest {path}: {len(bad)} of {len(rows)} rows cannot be used: "
                            f"{listed}. Fix or remove those rows, or set "
                            f"data.skip_bad_rows=true to skip them")
        log(f"data: skipped {len(bad)} of {len(rows)} rows of {path} (data.skip_bad_rows=true): "
            f"{listed}")
    if not utterances:
        raise DataError(f"manifest {path} has no usable rows ({len(rows)} rows, {len(bad)} bad)")
    other_rates = sorted({u.file_rate for u in utterances if u.file_rate})
    if other_rates:     # one line per manifest, not one per file
        count = sum(1 for u in utterances if u.file_rate)
        log(f"note: {count} of {len(utterances)} audio files of {path} are at "
            f"{'/'.join(map(str, other_rates))} Hz; resampled to data.sample_rate={sample_rate} Hz "
            f"on reading (soxr)")
    return utterances


def filter_duration(utterances: list[Utterance], max_duration: float, where: str,
                    log: Callable[[str], None] = log_stderr) -> list[Utterance]:
    """Utterances of at most max_duration seconds; the others are counted in the log."""
    kept = [u for u in utterances if u.seconds <= max_duration]
    if len(kept) < len(utterances):
        longest = max(u.seconds for u in utterances)
        log(f"data: skipped {len(utterances) - len(kept)} of {len(utterances)} utterances of "
            f"{where} longer than data.max_duration={max_duration:g} s (longest {longest:.2f} s)")
    if not kept:
        raise DataError(f"every utterance of {where} is longer than data.max_duration="
                        f"{max_duration:g} s; raise data.max_duration")
    return kept


# ------------------------------------------------------------------ tokenizers
def text_key(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(str(p).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def train_sentencepiece(texts: list[str], vocab_size: int, out_path: Path, vocab_key: str,
                        what: str) -> Path:
    """A unigram SentencePiece model of exactly `vocab_size` pieces with EchoStream's ids
    (pad 0, unk 1, bos 2, eos 3). `vocab_key` (e.g. "model.src_vocab_size") and `what`
    (e.g. "the source text of train.tsv") name things in the error messages."""
    import sentencepiece as spm

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_prefix = temp_path(out_path)   # a hidden name the next start removes after a kill
    # Small alphabets (speech transcripts) keep every character; large ones (CJK) leave
    # the rarest 0.05 % to <unk>, SentencePiece's recommendation.
    coverage = 1.0 if len(set("".join(texts))) <= 1000 else 0.9995
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_prefix=str(tmp_prefix), vocab_size=vocab_size,
            model_type="unigram", character_coverage=coverage, pad_id=PAD, unk_id=UNK,
            bos_id=BOS, eos_id=EOS, num_threads=1, minloglevel=2)
    except RuntimeError as e:
        message = str(e)
        too_high = re.search(r"Vocabulary size too high \((\d+)\).*<= (\d+)", message)
        if too_high:
            raise DataError(f"{vocab_key}={vocab_size} is more pieces than SentencePiece can "
                            f"build from {what} (at most {too_high.group(2)}); set {vocab_key}"
                            f"={too_high.group(2)} or smaller, train on more text, or pass a "
                            f"trained tokenizer") from None
        too_low = re.search(r"required_chars\. (\d+) vs (\d+)", message)
        if too_low:
            raise DataError(f"{vocab_key}={vocab_size} is too small for {what}: its characters "
                            f"and the 4 special pieces alone need {too_low.group(2)}; set "
                            f"{vocab_key} to at least {too_low.group(2)}") from None
        raise
    atomic_write_bytes(out_path, Path(f"{tmp_prefix}.model").read_bytes())
    Path(f"{tmp_prefix}.model").unlink(missing_ok=True)
    Path(f"{tmp_prefix}.vocab").unlink(missing_ok=True)
    return out_path


def check_tokenizer(sp, path: Path, vocab_size: int, vocab_key: str) -> None:
    """The tokenizer must use EchoStream's special ids and fill the model's vocabulary."""
    ids = (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id())
    if ids != (PAD, UNK, BOS, EOS):
        raise DataError(f"tokenizer {path} has pad/unk/bos/eos ids {ids}, EchoStream needs "
                        f"({PAD}, {UNK}, {BOS}, {EOS}); retrain it with --pad_id={PAD} "
                        f"--unk_id={UNK} --bos_id={BOS} --eos_id={EOS}, or leave the "
                        f"tokenizer path empty to train one")
    if sp.get_piece_size() != vocab_size:
        raise DataError(f"tokenizer {path} has {sp.get_piece_size()} pieces but {vocab_key} "
                        f"is {vocab_size}; set {vocab_key}={sp.get_piece_size()}")


def tokenizer_for(given: str, texts: list[str], vocab_size: int, cache_path: Path,
                  vocab_key: str, what: str, setting: str):
    """A SentencePiece processor: the given model file, or one trained from `texts` into
    cache_path (retrained when the texts or the vocabulary size change)."""
    if given:
        path = Path(given)
    else:
        path = Path(cache_path)
        key = text_key(vocab_size, *texts)
        # The key file (written after the model) holds the texts' key and the model's
        # sha256: a model that was cut short or changed is trained again.
        key_file = path.with_suffix(".key")
        recorded = key_file.read_text().split() if key_file.is_file() else []
        if not (path.is_file() and recorded == [key, sha256_file(path)]):
            train_sentencepiece(texts, vocab_size, path, vocab_key, what)
            atomic_write_bytes(key_file, f"{key} {sha256_file(path)}".encode())
    sp = load_tokenizer(path, fix=f"fix {setting} or leave it empty to train one")
    check_tokenizer(sp, path, vocab_size, vocab_key)
    return sp, path


# ------------------------------------------------------------------ features
def load_audio(utt: Utterance) -> np.ndarray:
    """(samples,) float32 in [-1, 1] at utt.sample_rate (resampled from the file's rate);
    non-finite or far-out-of-range samples are a DataError naming the file and the
    manifest row."""
    try:
        audio, rate = sf.read(str(utt.audio), dtype="float32")
    except (RuntimeError, OSError) as e:
        raise DataError(f"{utt.where}cannot read {utt.audio} ({e})") from None
    check_samples(audio, utt.audio, utt.where)
    if rate != (utt.file_rate or utt.sample_rate) or audio.ndim != 1:
        raise DataError(f"{utt.where}{utt.audio} changed since the manifest was checked (now "
                        f"{rate} Hz, shape {audio.shape}); restore it or start the run again")
    return resample(audio, rate, utt.sample_rate)


class FeatureCache:
    """Fbank features per utterance, computed once: as .npy files in `folder` (keyed by
    the audio file's path, size, modification time, its rate and the fbank options, which
    hold the rate features are computed at, so an edited or resampled file is recomputed),
    or in memory when folder is None."""

    def __init__(self, folder: str | Path | None, opts: FbankOptions = FbankOptions()):
        self.folder = Path(folder) if folder is not None else None
        self.opts = opts
        self._memory: dict[str, np.ndarray] = {}
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            remove_leftovers(self.folder)   # temporaries of a killed run

    def key(self, utt: Utterance) -> str:
        stat = utt.audio.stat()
        # the file's own rate only where it is resampled: keys of files at the rate stay as before
        resampled_from = (f"from {utt.file_rate} Hz",) if utt.file_rate else ()
        return text_key(utt.audio.resolve(), stat.st_size, stat.st_mtime_ns, *resampled_from,
                        self.opts)

    def features(self, utt: Utterance, key: str) -> np.ndarray:
        """(frames, num_mel_bins) float32 log-mel features of the utterance."""
        if self.folder is None:
            if key not in self._memory:
                self._memory[key] = fbank(load_audio(utt), utt.sample_rate, self.opts)
            return self._memory[key]
        path = self.folder / f"{key}.npy"
        if path.is_file():
            try:
                feats = np.load(path, allow_pickle=False)
                if feats.ndim == 2 and feats.shape[1] == self.opts.num_mel_bins and np.isfinite(feats).all():
                    return feats
            except (ValueError, OSError, EOFError):
                pass        # damaged (a power loss): computed again below
        feats = fbank(load_audio(utt), utt.sample_rate, self.opts)
        # A per-process-and-thread temporary (the batch thread and evaluation may race),
        # renamed into place; not fsync'd: a cache file lost to a power loss is recomputed.
        atomic_write(path, lambda f: np.save(f, feats), durable=False)
        return feats


# ------------------------------------------------------------------ datasets and batches
class S2UTDataset:
    """One split: utterances with their token ids, unit ids (+1) and cached features."""

    def __init__(self, utterances: list[Utterance], src_sp, tgt_sp, cache: FeatureCache):
        self.utterances, self.cache = list(utterances), cache
        self.keys = [cache.key(u) for u in self.utterances]
        self.frames = np.array([num_frames(u.num_samples, cache.opts) for u in self.utterances])
        self.src_ids = [np.asarray(src_sp.encode(u.src_text), np.int32) for u in self.utterances]
        self.tgt_ids = [np.asarray(tgt_sp.encode(u.tgt_text), np.int32) for u in self.utterances]
        self.units = [unit_id(np.asarray(u.units, np.int32)) for u in self.utterances]

    def __len__(self) -> int:
        return len(self.utterances)

    @property
    def seconds(self) -> np.ndarray:
        return np.array([u.seconds for u in self.utterances])

    def features(self, i: int) -> np.ndarray:
        """Raw (un-normalised) fbank features of utterance i."""
        return self.cache.features(self.utterances[i], self.keys[i])

    def example(self, i: int, cmvn: CMVN, augment: SpecAugment | None = None,
                rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        feats = cmvn.apply(self.features(i))
        if augment is not None:
            feats = augment(feats, rng)
        return {"features": feats, "src": self.src_ids[i], "tgt": self.tgt_ids[i],
                "units": self.units[i]}


def _pad(sequences: list[np.ndarray], dtype, width: int | None = None) -> np.ndarray:
    width = max(len(s) for s in sequences) if width is None else width
    out = np.zeros((len(sequences), width) + sequences[0].shape[1:], dtype=dtype)
    for b, s in enumerate(sequences):
        out[b, :len(s)] = s
    return out


def collate(examples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Zero-padded batch arrays (module docstring) from `example` dicts."""
    def lengths(key):
        return np.array([len(e[key]) for e in examples], np.int32)

    tgt = [e["tgt"] for e in examples]
    return {
        "features": _pad([e["features"] for e in examples], np.float32),
        "feature_lengths": lengths("features"),
        "src_tokens": _pad([e["src"] for e in examples], np.int32),
        "src_lengths": lengths("src"),
        "tgt_tokens": _pad(tgt, np.int32),
        "tgt_lengths": lengths("tgt"),
        "prev_output_tokens": _pad([np.concatenate([[BOS], t]) for t in tgt], np.int32),
        "target": _pad([np.concatenate([t, [EOS]]) for t in tgt], np.int32),
        "units": _pad([e["units"] for e in examples], np.int32),
        "unit_lengths": lengths("units"),
    }


def mt_token_ids(tokens) -> list[int]:
    """A row of greedy MT output (trainer.decode's "mt_tokens") as target token ids: up to
    its first EOS, padding dropped."""
    ids = [int(t) for t in tokens]
    ids = ids[:ids.index(EOS)] if EOS in ids else ids
    return [t for t in ids if t != PAD]


def unit_sequence(unit_argmax, length: int) -> list[int]:
    """A row of the unit decoder's per-frame argmax as units: CTC-collapsed, then ids back
    to units (the inverse of `unit_id`)."""
    from shared.eval.text import ctc_collapse
    return [u - 1 for u in ctc_collapse(unit_argmax, length, blank=BLANK)]


def within_max_tokens(indices: list[int], frames: np.ndarray, max_tokens: int) -> list[int]:
    """The longest prefix of `indices` whose padded size (count x longest) is at most
    max_tokens, never fewer than one utterance."""
    kept, longest = indices[:1], int(frames[indices[0]])
    for i in indices[1:]:
        longest = max(longest, int(frames[i]))
        if (len(kept) + 1) * longest > max_tokens:
            break
        kept.append(i)
    return kept


class BucketBatcher:
    """Training batches as a pure function of (seed, sample position).

    Epoch e is a permutation from rng([seed, e]), trimmed to whole global batches (a
    global batch is batch_size * world_size * accumulation; the few utterances trimmed differ from
    epoch to epoch). It is cut into windows of `sort_window_batches` global batches;
    each window is sorted by length and split into global batches whose order is then
    shuffled, so batches hold similar lengths but do not run short to long. Rank r takes
    its slice of each global batch. A batch is sorted by length and trailing (longest)
    utterances beyond max_tokens padded frames are dropped, never the first."""

    def __init__(self, dataset: S2UTDataset, cmvn: CMVN, seed: int, max_tokens: int,
                 specaugment: SpecAugment | None = None, sort_window_batches: int = 50,
                 rank: int = 0, world_size: int = 1, accumulation: int = 1):
        self.data, self.cmvn, self.seed, self.max_tokens = dataset, cmvn, seed, max_tokens
        self.specaugment, self.window = specaugment, sort_window_batches
        # The epochs are laid out in optimizer steps' batches (batch x accumulation x ranks),
        # so N ranks read what one process accumulating N micro-batches reads.
        self.rank, self.world_size, self.accumulation = rank, world_size, accumulation
        self._orders: dict[tuple[int, int], np.ndarray] = {}

    def epoch_size(self, global_batch: int) -> int:
        """Samples per epoch: whole global batches (at least one)."""
        return max(len(self.data) // global_batch, 1) * global_batch

    def epoch_order(self, epoch: int, global_batch: int) -> np.ndarray:
        """Utterance indices of one epoch, epoch_size(global_batch) long."""
        key = (epoch, global_batch)
        if key not in self._orders:
            rng = np.random.default_rng([self.seed, epoch])
            size = self.epoch_size(global_batch)
            # trimmed to whole global batches (or repeated, for a dataset smaller than one)
            perm = np.resize(rng.permutation(len(self.data)), size)
            order = []
            span = self.window * global_batch
            for start in range(0, size, span):
                window = perm[start:start + span]
                window = window[np.argsort(self.data.frames[window], kind="stable")]
                batches = window.reshape(-1, global_batch)
                order.append(batches[rng.permutation(len(batches))].reshape(-1))
            # keep the two latest epochs (a batch may straddle an epoch boundary)
            self._orders = {k: v for k, v in self._orders.items() if k[0] == epoch - 1}
            self._orders[key] = np.concatenate(order)
        return self._orders[key]

    def indices(self, position: int, batch_size: int) -> list[tuple[int, int]]:
        """This rank's share of the global batch at sample `position`, before the
        max_tokens bound, as (sample number, utterance index) pairs."""
        global_batch = batch_size * self.world_size * self.accumulation
        epoch_size = self.epoch_size(global_batch)
        first = position + self.rank * batch_size
        return [(g, int(self.epoch_order(g // epoch_size, global_batch)[g % epoch_size]))
                for g in range(first, first + batch_size)]

    def batch(self, position: int, batch_size: int) -> dict[str, np.ndarray]:
        picked = sorted(self.indices(position, batch_size),
                        key=lambda p: int(self.data.frames[p[1]]))     # stable: ties by sample
        kept = within_max_tokens([i for _, i in picked], self.data.frames, self.max_tokens)
        examples = []
        for g, i in picked[:len(kept)]:
            # SpecAugment draws from (seed, sample number): identical on resume
            rng = np.random.default_rng([self.seed, g, 1])
            examples.append(self.data.example(i, self.cmvn, self.specaugment, rng))
        return collate(examples)


def eval_batches(dataset: S2UTDataset, cmvn: CMVN, batch_size: int, max_tokens: int,
                 max_utterances: int = 0) -> list[tuple[list[int], dict[str, np.ndarray]]]:
    """Fixed evaluation batches (no augmentation): the first max_utterances (0: all)
    utterances sorted by length, grouped up to batch_size and max_tokens. Returns
    (utterance indices, batch) pairs."""
    count = len(dataset) if max_utterances <= 0 else min(max_utterances, len(dataset))
    order = [int(i) for i in np.argsort(dataset.frames[:count], kind="stable")]
    batches = []
    while order:
        kept = within_max_tokens(order[:batch_size], dataset.frames, max_tokens)
        batches.append((kept, collate([dataset.example(i, cmvn) for i in kept])))
        order = order[len(kept):]
    return batches


# ------------------------------------------------------------------ CMVN
def cmvn_to_bytes(cmvn: CMVN) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, mean=cmvn.mean, std=cmvn.std, count=np.int64(cmvn.count))
    return buffer.getvalue()


def cmvn_from_file(path: str | Path) -> CMVN:
    """CMVN statistics saved by cmvn_to_bytes; a damaged file is a DataError naming it."""
    try:
        with np.load(path, allow_pickle=False) as z:
            cmvn = CMVN(z["mean"], z["std"], int(z["count"]))
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise DataError(f"{path} is not readable CMVN statistics ({e}); use another "
                        f"checkpoint") from None
    if not (np.isfinite(cmvn.mean).all() and np.isfinite(cmvn.std).all()):
        raise DataError(f"{path} holds non-finite CMVN statistics (damaged); use another checkpoint")
    return cmvn


def fit_cmvn(dataset: S2UTDataset, cache_path: Path | None = None) -> CMVN:
    """Global CMVN over every frame of the dataset, reused from cache_path while the
    training utterances (audio files and fbank options) are unchanged."""
    key = text_key(*dataset.keys)
    if cache_path is not None and Path(cache_path).is_file():
        try:
            with np.load(cache_path, allow_pickle=False) as z:
                if "key" in z and str(z["key"]) == key:
                    cached = CMVN(z["mean"], z["std"], int(z["count"]))
                    if np.isfinite(cached.mean).all() and np.isfinite(cached.std).all():
                        return cached
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile):
            pass            # damaged: fitted again below
    cmvn = CMVN.fit(dataset.features(i) for i in range(len(dataset)))
    if cache_path is not None:
        atomic_write(cache_path, lambda f: np.savez(f, mean=cmvn.mean, std=cmvn.std,
                                                    count=np.int64(cmvn.count), key=key))
    return cmvn


# ------------------------------------------------------------------ a whole corpus
def demo_corpus(root: Path, data_cfg, n_units: int) -> tuple[Path, Path]:
    """The synthetic demo corpus (shared/data/synth_s2ut.py), generated once."""
    from shared.data.synth_s2ut import generate

    root = Path(root)
    if not (root / "dev.tsv").is_file():
        tmp = root.with_name(root.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)      # left by a killed run
        try:
            generate(tmp, train=data_cfg.synth_train_utterances, dev=data_cfg.synth_dev_utterances,
                     min_seconds=data_cfg.synth_min_seconds, max_seconds=data_cfg.synth_max_seconds,
                     n_units=n_units, seed=data_cfg.seed)
        except ValueError as e:   # settings the generator cannot serve
            raise ConfigError(f"the demo corpus (data.synth_*, data.train_manifest empty): {e}") from None
        tmp.rename(root)
    return root / "train.tsv", root / "dev.tsv"


class S2UTCorpus:
    """Everything EchoStream trains and evaluates on, built from the data config into
    `data_dir` (demo corpus, tokenizers, fbank cache, CMVN) and reused on later runs."""

    def __init__(self, data_cfg, src_vocab_size: int, tgt_vocab_size: int, n_units: int,
                 data_dir: str | Path, log: Callable[[str], None] = log_stderr):
        d, data_dir = data_cfg, Path(data_dir)
        if d.train_manifest:
            train_path, dev_path = Path(d.train_manifest), Path(d.dev_manifest)
        else:
            train_path, dev_path = demo_corpus(data_dir / "synth_s2ut", d, n_units)
        self.train_manifest, self.dev_manifest = train_path, dev_path
        read = dict(sample_rate=d.sample_rate, n_units=n_units, skip_bad_rows=d.skip_bad_rows,
                    log=log)
        train = filter_duration(read_manifest(train_path, **read), d.max_duration,
                                str(train_path), log)
        dev = filter_duration(read_manifest(dev_path, **read), d.max_duration, str(dev_path), log)
        self.src_tokenizer, self.src_tokenizer_path = tokenizer_for(
            d.src_tokenizer, [u.src_text for u in train], src_vocab_size,
            data_dir / "src_tokenizer.model", "model.src_vocab_size",
            f"the source text of {train_path}", "data.src_tokenizer")
        self.tgt_tokenizer, self.tgt_tokenizer_path = tokenizer_for(
            d.tgt_tokenizer, [u.tgt_text for u in train], tgt_vocab_size,
            data_dir / "tgt_tokenizer.model", "model.tgt_vocab_size",
            f"the target text of {train_path}", "data.tgt_tokenizer")
        cache = FeatureCache(data_dir / "fbank", FbankOptions(sample_rate=d.sample_rate))
        self.train = S2UTDataset(train, self.src_tokenizer, self.tgt_tokenizer, cache)
        self.dev = S2UTDataset(dev, self.src_tokenizer, self.tgt_tokenizer, cache)
        self.cmvn = fit_cmvn(self.train, data_dir / "cmvn.npz")
        too_long = int(np.sum(self.train.frames > d.max_tokens))
        if too_long:
            log(f"data: {too_long} training utterances have more than data.max_tokens="
                f"{d.max_tokens} frames; each of them is a batch of one")
        log(f"data: {len(self.train)} train utterances ({self.train.seconds.sum() / 3600:.2f} h), "
            f"{len(self.dev)} dev; vocab {src_vocab_size} source / {tgt_vocab_size} target "
            f"pieces, {n_units} units")
