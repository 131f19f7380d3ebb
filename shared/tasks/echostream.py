"""EchoStream's task: speech-to-unit translation batches from S2UT manifests
(shared/data/s2ut.py), evaluated by every loss term and by its greedy outputs' WER, CER,
BLEU and unit error rate."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.engine.distributed import shard_map


class EchoStreamTask:
    """Speech-to-unit translation (EchoStream) on fairseq S2UT manifests (a generated demo
    corpus when data.train_manifest is empty), shared/data/s2ut.py. Evaluation on the dev
    manifest (its first data.dev_max_utterances): the loss and its four terms, then the
    model's own greedy outputs scored -- WER/CER of the ASR CTC head, BLEU of the MT
    decoder and of the ST CTC head, unit error rate of the unit CTC head."""
    file_settings = {"src_tokenizer.model": "data.src_tokenizer",
                     "tgt_tokenizer.model": "data.tgt_tokenizer"}

    def __init__(self, config, out_dir: Path, rank: int = 0, world_size: int = 1):
        from shared.audio.fbank import SpecAugment
        from shared.data.s2ut import BucketBatcher, S2UTCorpus, eval_batches

        d, m = config.data, config.model
        self.corpus = S2UTCorpus(d, m.src_vocab_size, m.tgt_vocab_size, m.n_units, out_dir / "data")
        check_receptive_field(self.corpus, m)
        augment = (SpecAugment(freq_mask_width=d.freq_mask_width, num_freq_masks=d.num_freq_masks,
                               time_mask_width=d.time_mask_width, num_time_masks=d.num_time_masks)
                   if d.specaugment else None)
        self.batcher = BucketBatcher(self.corpus.train, self.corpus.cmvn, config.train.seed,
                                     d.max_tokens, augment, d.sort_window_batches, rank, world_size,
                                     config.train.gradient_accumulation_steps)
        self.dev_batches = eval_batches(self.corpus.dev, self.corpus.cmvn, config.train.batch_size,
                                        d.max_tokens, d.dev_max_utterances)
        # greedy MT decoding stops at EOS or at twice the longest dev target (+ slack)
        longest = max(len(self.corpus.dev.tgt_ids[i]) for idx, _ in self.dev_batches for i in idx)
        self.max_target_len = 2 * longest + 10
        self.units_per_sample = float(self.corpus.train.seconds.mean())
        self.segment_lengths, self.seed = m.train_segment_lengths, config.train.seed

    def train_batch(self, position: int, batch_size: int) -> dict[str, np.ndarray]:
        batch = self.batcher.batch(position, batch_size)
        if self.segment_lengths:
            # Multi-chunk training: this batch's encoder segment length, drawn from the seed
            # and the batch's first sample number, so a resumed run draws the same ones, and
            # 2 ranks the ones that 1 process accumulating 2 micro-batches draws.
            first_sample = self.batcher.indices(position, batch_size)[0][0]
            rng = np.random.default_rng([self.seed, first_sample, 2])
            chosen = self.segment_lengths[int(rng.integers(len(self.segment_lengths)))]
            batch["segment_length"] = np.full(len(batch["features"]), chosen, np.int32)
        return batch

    def evaluate(self, trainer) -> dict:
        from shared.eval.text import char_error_rate, corpus_bleu, unit_error_rate, word_error_rate

        dev = self.corpus.dev
        sums, count = {}, 0
        refs = {"src": [], "tgt": [], "units": []}
        hyps = {"asr": [], "mt": [], "st": [], "units": []}
        def run_batch(indexed_batch):
            _, batch = indexed_batch
            return trainer.eval_terms(batch), trainer.decode(batch, max_target_len=self.max_target_len)

        # Several ranks: each evaluates its share of the dev batches (shard_map).
        outputs = shard_map(trainer, run_batch, self.dev_batches)
        for (indices, _), (terms, out) in zip(self.dev_batches, outputs):
            n = len(indices)
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value * n    # utterance-weighted means
            count += n
            for b, i in enumerate(indices):
                utt = dev.utterances[i]
                refs["src"].append(utt.src_text)
                refs["tgt"].append(utt.tgt_text)
                refs["units"].append(list(utt.units))
                for name, hyp in self.hypotheses(out, b).items():
                    hyps[name].append(hyp)
        row = {"val_loss": sums.pop("loss") / count}
        row |= {f"val_{name}": total / count for name, total in sums.items()}
        row |= {"wer": word_error_rate(refs["src"], hyps["asr"]),
                "cer": char_error_rate(refs["src"], hyps["asr"]),
                "bleu": corpus_bleu(hyps["mt"], refs["tgt"]),
                "st_ctc_bleu": corpus_bleu(hyps["st"], refs["tgt"]),
                "unit_error_rate": unit_error_rate(refs["units"], hyps["units"])}
        return row

    def hypotheses(self, out: dict, b: int) -> dict:
        """Row b of trainer.decode's outputs as text and units: "asr" (the ASR CTC head),
        "st" (the ST CTC head), "mt" (the MT decoder), "units" (the unit CTC head)."""
        from shared.data.s2ut import mt_token_ids, unit_sequence
        from shared.eval.text import ctc_collapse

        src_sp, tgt_sp = self.corpus.src_tokenizer, self.corpus.tgt_tokenizer
        enc_len = int(out["encoder_lengths"][b])
        return {"asr": src_sp.decode(ctc_collapse(out["asr_ctc_argmax"][b], enc_len)),
                "st": tgt_sp.decode(ctc_collapse(out["st_ctc_argmax"][b], enc_len)),
                "mt": tgt_sp.decode(mt_token_ids(out["mt_tokens"][b])),
                "units": unit_sequence(out["unit_ctc_argmax"][b], int(out["unit_lengths"][b]))}

    def checkpoint_files(self) -> dict[str, bytes]:
        from shared.data.s2ut import cmvn_to_bytes

        return {"src_tokenizer.model": self.corpus.src_tokenizer_path.read_bytes(),
                "tgt_tokenizer.model": self.corpus.tgt_tokenizer_path.read_bytes(),
                "cmvn.npz": cmvn_to_bytes(self.corpus.cmvn)}


MEDIA_UTTERANCES = 8   # transcripts an evaluation shows in TensorBoard, W&B or trackio


def echostream_media(task: EchoStreamTask, trainer) -> list:
    """What a tracking sink shows after an evaluation (Family.eval_media): the first dev
    utterances' references next to the model's greedy ASR, ST CTC and MT outputs."""
    from shared.engine.tracking import TextTable

    indices, batch = task.dev_batches[0]
    out = trainer.decode(batch, max_target_len=task.max_target_len)
    rows = []
    for b, i in enumerate(indices[:MEDIA_UTTERANCES]):
        utt, hyp = task.corpus.dev.utterances[i], task.hypotheses(out, b)
        rows.append((utt.id, utt.src_text, hyp["asr"], utt.tgt_text, hyp["mt"], hyp["st"]))
    return [TextTable("transcripts", ("id", "source", "ASR (CTC)", "target", "MT", "ST (CTC)"), rows)]


# Text per second of speech, for planning and synthetic batches: ~4 source and ~3 target
# subword tokens, ~25 deduplicated discrete units (HuBERT units are 50 Hz before merging).
SRC_TOKENS_PER_S, TGT_TOKENS_PER_S, UNITS_PER_S = 4.0, 3.0, 25.0


def check_receptive_field(corpus, spec) -> None:
    """Every utterance must give at least one encoder frame: the subsampler's two valid
    convolutions read model.subsample_receptive_field fbank frames for the first one."""
    from shared.errors import DataError

    field = spec.subsample_receptive_field
    for name, split in (("train", corpus.train), ("dev", corpus.dev)):
        short = np.flatnonzero(split.frames < field)
        if short.size:
            u = split.utterances[short[0]]
            raise DataError(f"{u.where}{u.audio} gives {split.frames[short[0]]} fbank frames, fewer "
                            f"than the {field} one encoder frame reads with model.subsample_kernel="
                            f"{spec.subsample_kernel} ({short.size} {name} utterances are that short); "
                            f"lower model.subsample_kernel or remove the short utterances")


def echostream_lengths(spec, seconds: float) -> dict[str, int]:
    """Typical sequence lengths of an utterance of `seconds`, each short enough for its CTC
    head to align: feature frames, source tokens, target tokens, units."""
    from shared.specs.echostream import encoder_length

    frames = int(seconds * 100)                              # 10 ms fbank frames
    encoder = encoder_length(frames, spec)
    src = max(1, min(round(seconds * SRC_TOKENS_PER_S), encoder // 2))
    tgt = max(1, min(round(seconds * TGT_TOKENS_PER_S), encoder // 2))
    units = max(1, min(round(seconds * UNITS_PER_S), (tgt + 1) * spec.unit_upsample // 2))
    return {"frames": frames, "encoder": encoder, "src": src, "tgt": tgt, "units": units}


def longest_utterance_seconds(config, batch_size: int) -> float:
    """The longest utterances a batch can hold: data.max_duration, or less where
    data.max_tokens (padded feature frames per batch) allows less at this batch size."""
    d = config.data
    return min(d.max_duration, d.max_tokens / (100 * batch_size))


def echostream_batch(config, batch_size: int, rng: np.random.Generator,
                     seconds: float | None = None) -> dict[str, np.ndarray]:
    """Utterances of `seconds` (default: the longest the config's batches can hold):
    normalised-looking features, and source, target and unit sequences of typical
    lengths (echostream_lengths)."""
    from shared.specs.echostream import BOS, EOS

    spec, B = config.model, batch_size
    seconds = longest_utterance_seconds(config, B) if seconds is None else seconds
    n = echostream_lengths(spec, seconds)
    full = lambda k: np.full(B, k, np.int32)  # noqa: E731
    tgt = rng.integers(EOS + 1, spec.tgt_vocab_size, (B, n["tgt"])).astype(np.int32)
    return {
        "features": rng.standard_normal((B, n["frames"], spec.n_mels)).astype(np.float32),
        "feature_lengths": full(n["frames"]),
        "src_tokens": rng.integers(EOS + 1, spec.src_vocab_size, (B, n["src"])).astype(np.int32),
        "src_lengths": full(n["src"]), "tgt_tokens": tgt, "tgt_lengths": full(n["tgt"]),
        "prev_output_tokens": np.concatenate([np.full((B, 1), BOS, np.int32), tgt], axis=1),
        "target": np.concatenate([tgt, np.full((B, 1), EOS, np.int32)], axis=1),
        "units": rng.integers(1, spec.n_units + 1, (B, n["units"])).astype(np.int32),
        "unit_lengths": full(n["units"])}


def example_seconds(config) -> float:
    """Seconds of audio in one example of a random batch: the longest the batches hold."""
    return longest_utterance_seconds(config, config.train.batch_size)
