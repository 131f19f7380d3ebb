"""What the training loop needs from a model family, framework-neutrally: its training
batches, its evaluation, and the files its checkpoints carry.

    Task.train_batch(position, batch_size)  this rank's share of a global batch (numpy)
    Task.evaluate(trainer)                   {"val_loss", ...}: the loop keeps the best
    Task.unit, Task.units_per_sample         "tokens" or "audio_s", for throughput
    Task.checkpoint_files()                  {name: bytes} saved beside the weights
    Task.file_settings                       {name: config key} for those a setting can name
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from shared.data.lm_text import DataError, LMDataset, WindowSampler, eval_batches


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


class LMTask:
    unit = "tokens"
    # The config setting that can point at each file checkpoint_files() saves.
    file_settings = {"tokenizer.model": "data.tokenizer"}

    def __init__(self, config, out_dir: Path, rank: int = 0, world_size: int = 1):
        tc = config.train
        self.data = LMDataset(config.data, config.model.vocab_size, out_dir / "data")
        self.sampler = WindowSampler(self.data.train, config.seq_length, tc.seed, rank, world_size)
        self.val_batches = eval_batches(self.data.val, config.seq_length, tc.batch_size, tc.eval_batches)
        self.units_per_sample = config.seq_length

    def train_batch(self, position: int, batch_size: int) -> np.ndarray:
        return self.sampler.batch(position, batch_size)

    def evaluate(self, trainer) -> dict:
        val_loss = float(np.mean([trainer.eval_loss(b) for b in self.val_batches]))
        return {"val_loss": val_loss, "val_ppl": float(math.exp(min(val_loss, 50)))}

    def checkpoint_files(self) -> dict[str, bytes]:
        return {"tokenizer.model": self.data.tokenizer_path.read_bytes()}


class SeparationTask:
    """Music source separation on a MUSDB18-HQ-layout root (a generated demo set when
    data.root is empty). Evaluation: loss on fixed validation segments, then uSDR and
    cSDR per stem on whole validation tracks, separated chunk by chunk."""
    unit = "audio_s"
    file_settings: dict[str, str] = {}

    def __init__(self, config, out_dir: Path, rank: int = 0, world_size: int = 1):
        from shared.data.musdb import STEMS, MusdbDataset, RemixSampler

        d = config.data
        if config.model.n_sources != len(STEMS):
            raise DataError(f"model.n_sources={config.model.n_sources}, but the MUSDB18 data give "
                            f"{len(STEMS)} stems ({', '.join(STEMS)}); use model.n_sources={len(STEMS)}")
        root = Path(d.root) if d.root else demo_dataset(out_dir / "data" / "synth_musdb", d)
        self.sample_rate, self.segment = d.sample_rate, d.segment_samples
        train = MusdbDataset(root, "train", d.sample_rate, config.model.audio_channels)
        self.valid = MusdbDataset(root, "valid", d.sample_rate, config.model.audio_channels)
        self.sampler = RemixSampler(train, self.segment, config.train.seed, remix=d.remix,
                                    gain_range=(d.gain_min, d.gain_max), channel_swap=d.channel_swap,
                                    min_rms=d.min_rms, rank=rank, world_size=world_size)
        # Fixed validation segments: unaugmented, the same at every evaluation.
        fixed = RemixSampler(self.valid, self.segment, seed=12345, remix=False, gain_range=(1.0, 1.0),
                             channel_swap=False, min_rms=d.min_rms)
        self.val_batches = [fixed.batch(i, 1) for i in range(d.val_segments)]
        if d.val_tracks > len(self.valid):
            raise DataError(f"data.val_tracks={d.val_tracks}, but {root} has {len(self.valid)} "
                            f"validation tracks; lower it, or 0 to score them all")
        self.val_tracks = d.val_tracks or len(self.valid)
        self.units_per_sample = self.segment / d.sample_rate

    def train_batch(self, position: int, batch_size: int) -> dict[str, np.ndarray]:
        return self.sampler.batch(position, batch_size)

    def evaluate(self, trainer) -> dict:
        from shared.data.musdb import STEMS
        from shared.metrics import csdr, csdr_over_tracks, sdr, usdr_over_tracks
        from shared.separation import separate

        row = {"val_loss": float(np.mean([trainer.eval_loss(b) for b in self.val_batches]))}
        per_stem = {stem: {"usdr": [], "csdr": []} for stem in STEMS}
        for i in range(self.val_tracks):
            track = self.valid.load(i)
            estimate = separate(track["mixture"], trainer.predict, self.segment)
            for s, stem in enumerate(STEMS):
                per_stem[stem]["usdr"].append(sdr(track["sources"][s], estimate[s]))
                per_stem[stem]["csdr"].append(csdr(track["sources"][s], estimate[s], self.sample_rate))
        for stem, scores in per_stem.items():
            row[f"usdr_{stem}"] = usdr_over_tracks(scores["usdr"])
            row[f"csdr_{stem}"] = csdr_over_tracks(scores["csdr"])
        row["usdr_mean"] = float(np.mean([row[f"usdr_{s}"] for s in STEMS]))
        return row

    def checkpoint_files(self) -> dict[str, bytes]:
        return {}


class EchoStreamTask:
    """Speech-to-unit translation (EchoStream) on fairseq S2UT manifests (a generated demo
    corpus when data.train_manifest is empty), shared/data/s2ut.py. Evaluation on the dev
    manifest (its first data.dev_max_utterances): the loss and its four terms, then the
    model's own greedy outputs scored -- WER/CER of the ASR CTC head, BLEU of the MT
    decoder and of the ST CTC head, unit error rate of the unit CTC head."""
    unit = "audio_s"
    file_settings = {"src_tokenizer.model": "data.src_tokenizer",
                     "tgt_tokenizer.model": "data.tgt_tokenizer"}

    def __init__(self, config, out_dir: Path, rank: int = 0, world_size: int = 1):
        from shared.audio.fbank import SpecAugment
        from shared.data.s2ut import BucketBatcher, S2UTCorpus, eval_batches

        d, m = config.data, config.model
        self.corpus = S2UTCorpus(d, m.src_vocab_size, m.tgt_vocab_size, m.n_units, out_dir / "data")
        augment = (SpecAugment(freq_mask_width=d.freq_mask_width, num_freq_masks=d.num_freq_masks,
                               time_mask_width=d.time_mask_width, num_time_masks=d.num_time_masks)
                   if d.specaugment else None)
        self.batcher = BucketBatcher(self.corpus.train, self.corpus.cmvn, config.train.seed,
                                     d.max_tokens, augment, d.sort_window_batches, rank, world_size)
        self.dev_batches = eval_batches(self.corpus.dev, self.corpus.cmvn, config.train.batch_size,
                                        d.max_tokens, d.dev_max_utterances)
        # greedy MT decoding stops at EOS or at twice the longest dev target (+ slack)
        longest = max(len(self.corpus.dev.tgt_ids[i]) for idx, _ in self.dev_batches for i in idx)
        self.max_target_len = 2 * longest + 10
        self.units_per_sample = float(self.corpus.train.seconds.mean())

    def train_batch(self, position: int, batch_size: int) -> dict[str, np.ndarray]:
        return self.batcher.batch(position, batch_size)

    def evaluate(self, trainer) -> dict:
        from shared.data.s2ut import mt_token_ids, unit_sequence
        from shared.metrics import (char_error_rate, corpus_bleu, ctc_collapse,
                                    unit_error_rate, word_error_rate)

        dev, src_sp, tgt_sp = self.corpus.dev, self.corpus.src_tokenizer, self.corpus.tgt_tokenizer
        sums, count = {}, 0
        refs = {"src": [], "tgt": [], "units": []}
        hyps = {"asr": [], "mt": [], "st": [], "units": []}
        for indices, batch in self.dev_batches:
            n = len(indices)
            for name, value in trainer.eval_terms(batch).items():
                sums[name] = sums.get(name, 0.0) + value * n    # utterance-weighted means
            count += n
            out = trainer.decode(batch, max_target_len=self.max_target_len)
            for b, i in enumerate(indices):
                utt = dev.utterances[i]
                refs["src"].append(utt.src_text)
                refs["tgt"].append(utt.tgt_text)
                refs["units"].append(list(utt.units))
                enc_len = int(out["encoder_lengths"][b])
                hyps["asr"].append(src_sp.decode(ctc_collapse(out["asr_ctc_argmax"][b], enc_len)))
                hyps["st"].append(tgt_sp.decode(ctc_collapse(out["st_ctc_argmax"][b], enc_len)))
                hyps["mt"].append(tgt_sp.decode(mt_token_ids(out["mt_tokens"][b])))
                hyps["units"].append(unit_sequence(out["unit_ctc_argmax"][b], int(out["unit_lengths"][b])))
        row = {"val_loss": sums.pop("loss") / count}
        row |= {f"val_{name}": total / count for name, total in sums.items()}
        row |= {"wer": word_error_rate(refs["src"], hyps["asr"]),
                "cer": char_error_rate(refs["src"], hyps["asr"]),
                "bleu": corpus_bleu(hyps["mt"], refs["tgt"]),
                "st_ctc_bleu": corpus_bleu(hyps["st"], refs["tgt"]),
                "unit_error_rate": unit_error_rate(refs["units"], hyps["units"])}
        return row

    def checkpoint_files(self) -> dict[str, bytes]:
        from shared.data.s2ut import cmvn_to_bytes

        return {"src_tokenizer.model": self.corpus.src_tokenizer_path.read_bytes(),
                "tgt_tokenizer.model": self.corpus.tgt_tokenizer_path.read_bytes(),
                "cmvn.npz": cmvn_to_bytes(self.corpus.cmvn)}


def demo_dataset(root: Path, d) -> Path:
    """Generate the synthetic demo set once (deterministic in data.seed)."""
    from shared.data.synth_musdb import generate

    if not (root / "train").is_dir():
        tmp = root.with_name(root.name + ".tmp")
        generate(tmp, tracks=d.synth_tracks, test_tracks=2, valid_tracks=2,
                 seconds=d.synth_seconds, sample_rate=d.sample_rate, seed=d.seed)
        tmp.rename(root)
    return root


TASKS = {"lm": LMTask, "tflocoformer": SeparationTask, "bandsplit": SeparationTask,
         "echostream": EchoStreamTask}


def make_task(config, out_dir: Path, rank: int = 0, world_size: int = 1):
    return TASKS[config.family](config, Path(out_dir), rank, world_size)
