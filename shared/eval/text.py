"""Speech and text metrics: word and character error rates, unit error rate (edit
distances by rapidfuzz), corpus BLEU (sacrebleu), and collapsing a CTC path."""
from __future__ import annotations

import numpy as np
from rapidfuzz.distance import Levenshtein


def edit_distance(reference, hypothesis) -> int:
    """Levenshtein distance between two sequences (unit costs): rapidfuzz's C++
    implementation. Strings are compared by character; other sequences (word lists,
    unit-id lists) element by element, which rapidfuzz does through each element's hash:
    exact for strings (barring a 64-bit hash collision) and for non-negative ints below
    2**61 - 1, whose Python hash is the value itself (unit ids are small ints)."""
    if not isinstance(reference, str):
        reference = list(reference)
    if not isinstance(hypothesis, str):
        hypothesis = list(hypothesis)
    return Levenshtein.distance(reference, hypothesis)


def _as_list(texts) -> list:
    return [texts] if isinstance(texts, str) else list(texts)


def _error_rate(pairs) -> float:
    """Corpus-level rate: total edits / total reference length (nan for empty references)."""
    edits = length = 0
    for ref, hyp in pairs:
        edits += edit_distance(ref, hyp)
        length += len(ref)
    return edits / length if length else float("nan")


def word_error_rate(references, hypotheses) -> float:
    """Corpus WER of hypothesis strings against reference strings (or one pair)."""
    refs, hyps = _as_list(references), _as_list(hypotheses)
    _check_pairs(refs, hyps)
    return _error_rate((r.split(), h.split()) for r, h in zip(refs, hyps))


def char_error_rate(references, hypotheses) -> float:
    """Corpus CER; whitespace is normalised to single spaces and stripped at the ends."""
    refs, hyps = _as_list(references), _as_list(hypotheses)
    _check_pairs(refs, hyps)
    return _error_rate((" ".join(r.split()), " ".join(h.split())) for r, h in zip(refs, hyps))


def unit_error_rate(references, hypotheses) -> float:
    """Corpus error rate over discrete unit sequences (lists of ints, one per utterance)."""
    refs, hyps = [list(r) for r in references], [list(h) for h in hypotheses]
    _check_pairs(refs, hyps)
    return _error_rate(zip(refs, hyps))


def corpus_bleu(hypotheses, references) -> float:
    """sacrebleu corpus BLEU (0..100) of hypothesis strings against one reference each."""
    import sacrebleu

    hyps, refs = _as_list(hypotheses), _as_list(references)
    _check_pairs(refs, hyps)
    return float(sacrebleu.corpus_bleu(hyps, [refs]).score)


def ctc_collapse(ids, length: int | None = None, blank: int = 0) -> list[int]:
    """Greedy CTC output: the first `length` frame labels with repeats merged, then
    blanks removed ([a, a, 0, a, b, b] -> [a, a, b])."""
    frames = np.asarray(ids).reshape(-1)
    if length is not None:
        frames = frames[:int(length)]
    out, last = [], None
    for label in frames.tolist():
        if label != last and label != blank:
            out.append(int(label))
        last = label
    return out


def _check_pairs(references: list, hypotheses: list) -> None:
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
