"""A small synthetic speech-to-unit translation corpus that a model can actually learn,
in fairseq's S2UT manifest format (read by shared/data/s2ut.py).

    python -m shared.data.synth_s2ut OUT_DIR [--train 400] [--dev 40] [--min-seconds 1]
        [--max-seconds 4] [--n-units 100] [--seed 0]

writes OUT_DIR/wav/{train,dev}_NNNNNN.wav (16 kHz mono 16-bit PCM), OUT_DIR/train.tsv,
OUT_DIR/dev.tsv and OUT_DIR/lexicon.tsv (the dictionary, for people).

The source language has 32 words built from CV syllables over 9 consonants and 5
vowels, in four classes (nouns, adjectives, verbs, function words). A sentence is one or
two clauses `NP verb [NP]`, a noun phrase `[function word] [adjective] noun`.

    speech     every phone is a distinct sound: vowels are harmonic tones with the
               formants of real vowels (F1/F2/F3 of a, e, i, o, u), voiceless stops a
               closure then a noise burst in a stop-specific band, voiced stops the same
               with a low voicing murmur, nasals a low murmur with a nasal-specific second
               resonance, /s/ high hiss. Per utterance a speaker draws a pitch (90-240 Hz),
               a vocal-tract scale (formants x0.9-1.12), a speaking rate (x0.8-1.25), pause
               lengths, a loudness and a noise level (15-35 dB SNR), so the mapping is not
               a lookup of exact waveforms.
    translation word by word through the dictionary, then one reordering rule: an
               adjective directly before a noun follows it in the target
               ("ko bako" -> "lumi ril"). Deterministic: `translate(source_text)`.
    units      derived from the target text only, like deduplicated HuBERT units of
               synthesized target speech: each target character is a fixed run of two unit
               ids, a space one (`text_to_units`). Stored 0-based in tgt_audio.

Everything is a function of (seed, split, utterance number): the same arguments write the
same files.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000

# source word -> (target word, class). Source words use consonants b d g k m n p s t;
# target words are spelled with other letters, so the two vocabularies share no word.
LEXICON = {
    # nouns
    "bako": ("lumi", "noun"), "tesu": ("rava", "noun"), "mina": ("holo", "noun"),
    "gepi": ("weza", "noun"), "kudo": ("fira", "noun"), "sato": ("yelo", "noun"),
    "nibu": ("zoha", "noun"), "pome": ("vilu", "noun"), "dagi": ("rewo", "noun"),
    "tuka": ("hame", "noun"), "memo": ("lazi", "noun"), "sibe": ("wofu", "noun"),
    # adjectives
    "ko": ("ril", "adj"), "bu": ("hav", "adj"), "tami": ("fezo", "adj"),
    "nesa": ("luwa", "adj"), "pigo": ("yari", "adj"), "deku": ("zemi", "adj"),
    "gana": ("volu", "adj"), "suto": ("hiro", "adj"),
    # verbs
    "mapu": ("relo", "verb"), "kine": ("zafa", "verb"), "dosi": ("wuli", "verb"),
    "bedo": ("horu", "verb"), "tigu": ("fala", "verb"), "ponu": ("yeva", "verb"),
    "sake": ("lori", "verb"), "nomi": ("waze", "verb"),
    # function words
    "a": ("el", "func"), "de": ("ru", "func"), "ki": ("vo", "func"), "mo": ("ha", "func"),
}
WORDS_BY_CLASS = {c: [w for w, (_, k) in LEXICON.items() if k == c]
                  for c in ("noun", "adj", "verb", "func")}
# Target characters that get units; index 0 is the space.
TARGET_ALPHABET = " " + "".join(sorted({ch for t, _ in LEXICON.values() for ch in t}))
UNITS_PER_CHAR = 2

# Vowel formants F1, F2, F3 in Hz (adult averages, Peterson & Barney style).
VOWEL_FORMANTS = {"a": (730, 1090, 2440), "e": (530, 1840, 2480), "i": (270, 2290, 3010),
                  "o": (570, 840, 2410), "u": (300, 870, 2240)}
# Stop bursts: noise band in Hz; voiced stops share the band of their voiceless partner.
STOP_BANDS = {"p": (400, 1500), "b": (400, 1500), "t": (3000, 6000), "d": (3000, 6000),
              "k": (1500, 3000), "g": (1500, 3000)}
NASAL_FORMANTS = {"m": (250, 1100, 2300), "n": (250, 1700, 2600)}


# ------------------------------------------------------------------ language
def translate(source_text: str) -> str:
    """The target sentence: word-by-word dictionary, then adjective-noun -> noun-adjective."""
    words = source_text.split()
    for w in words:
        if w not in LEXICON:
            raise ValueError(f"{w!r} is not a word of the synthetic source language")
    out, i = [], 0
    while i < len(words):
        if (i + 1 < len(words) and LEXICON[words[i]][1] == "adj"
                and LEXICON[words[i + 1]][1] == "noun"):
            out += [LEXICON[words[i + 1]][0], LEXICON[words[i]][0]]
            i += 2
        else:
            out.append(LEXICON[words[i]][0])
            i += 1
    return " ".join(out)


def unit_table(n_units: int) -> dict[str, tuple[int, ...]]:
    """Target character -> its unit ids (0-based): two per letter, one for the space,
    from a fixed permutation of 0..n_units-1 (ids are reused when n_units is small)."""
    if n_units < 2:
        raise ValueError(f"n_units must be at least 2, got {n_units}")
    perm = np.random.default_rng(20240607).permutation(n_units)
    table, k = {}, 0
    for ch in TARGET_ALPHABET:
        size = 1 if ch == " " else UNITS_PER_CHAR
        table[ch] = tuple(int(perm[(k + j) % n_units]) for j in range(size))
        k += size
    return table


def text_to_units(target_text: str, n_units: int) -> list[int]:
    """The unit sequence of a target sentence (0-based ids)."""
    table = unit_table(n_units)
    return [u for ch in " ".join(target_text.split()) for u in table[ch]]


def random_sentence(rng: np.random.Generator) -> str:
    def noun_phrase():
        words = []
        if rng.random() < 0.3:
            words.append(rng.choice(WORDS_BY_CLASS["func"]))
        if rng.random() < 0.5:
            words.append(rng.choice(WORDS_BY_CLASS["adj"]))
        return words + [rng.choice(WORDS_BY_CLASS["noun"])]

    words = []
    for _ in range(int(rng.integers(1, 3))):           # one or two clauses
        words += noun_phrase() + [rng.choice(WORDS_BY_CLASS["verb"])]
        if rng.random() < 0.6:
            words += noun_phrase()
    return " ".join(str(w) for w in words)


# ------------------------------------------------------------------ speech
def phones(word: str) -> list[str]:
    """Phones of a word: every letter is one phone (the spelling is phonemic)."""
    return list(word)


def _harmonic(n: int, f0: float, formants, bandwidth: float, sr: int,
              rng: np.random.Generator) -> np.ndarray:
    """A voiced sound: harmonics of f0 (with slight jitter), each weighted by its distance
    to the nearest formants, falling 6 dB per octave like a glottal source."""
    t = np.arange(n) / sr
    f0_track = f0 * (1 + 0.01 * np.sin(2 * np.pi * rng.uniform(3, 6) * t + rng.uniform(0, 6)))
    phase = 2 * np.pi * np.cumsum(f0_track) / sr
    out = np.zeros(n)
    for k in range(1, int(5500 / f0) + 1):
        f = k * f0
        gain = sum(np.exp(-0.5 * ((f - F) / bandwidth) ** 2) / (i + 1)
                   for i, F in enumerate(formants))
        if gain > 1e-3:
            out += gain / np.sqrt(k) * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    return out


def _band_noise(n: int, low: float, high: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sr)
    out = np.fft.irfft(spec * ((freqs >= low) & (freqs <= high)), n=n)
    return out / (np.sqrt(np.mean(out ** 2)) + 1e-12)


def _envelope(n: int, sr: int, ramp: float = 0.006) -> np.ndarray:
    t = np.arange(n) / sr
    return np.clip(np.minimum(t, n / sr - t) / ramp, 0.0, 1.0)


def phone_audio(phone: str, speaker: dict, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One phone as float64 samples at roughly unit loudness."""
    rate, f0, scale = speaker["rate"], speaker["f0"], speaker["formant_scale"]

    def samples(seconds):
        return max(1, int(seconds / rate * sr))

    if phone in VOWEL_FORMANTS:
        n = samples(rng.uniform(0.10, 0.13))
        voiced = _harmonic(n, f0, [F * scale for F in VOWEL_FORMANTS[phone]], 90 * scale, sr, rng)
        return voiced / (np.sqrt(np.mean(voiced ** 2)) + 1e-12) * _envelope(n, sr)
    if phone in NASAL_FORMANTS:
        n = samples(0.06)
        murmur = _harmonic(n, f0, [F * scale for F in NASAL_FORMANTS[phone]], 70 * scale, sr, rng)
        return 0.5 * murmur / (np.sqrt(np.mean(murmur ** 2)) + 1e-12) * _envelope(n, sr)
    if phone in STOP_BANDS:
        closure, burst = samples(0.025), samples(0.03 if phone in "ptk" else 0.02)
        low, high = STOP_BANDS[phone]
        out = np.concatenate([np.zeros(closure),
                              0.7 * _band_noise(burst, low * scale, high * scale, sr, rng)
                              * np.exp(-np.arange(burst) / (0.4 * burst))])
        if phone in "bdg":  # voicing murmur through the closure and the burst
            out += 0.25 * _harmonic(out.size, f0, [250 * scale], 80, sr, rng) * _envelope(out.size, sr)
        return out
    if phone == "s":
        n = samples(0.08)
        return 0.5 * _band_noise(n, 4000, 7500, sr, rng) * _envelope(n, sr, 0.015)
    raise ValueError(f"no sound for phone {phone!r}")


def synth_speech(source_text: str, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """float32 mono speech of a source sentence, with a random speaker and conditions."""
    speaker = {"f0": rng.uniform(90, 240), "formant_scale": rng.uniform(0.9, 1.12),
               "rate": rng.uniform(0.8, 1.25)}
    pieces = [np.zeros(int(rng.uniform(0.05, 0.2) * sr))]
    for i, word in enumerate(source_text.split()):
        if i:
            pieces.append(np.zeros(int(rng.uniform(0.03, 0.12) / speaker["rate"] * sr)))
        pieces += [phone_audio(p, speaker, sr, rng) for p in phones(word)]
    pieces.append(np.zeros(int(rng.uniform(0.05, 0.2) * sr)))
    speech = np.concatenate(pieces)
    speech *= 0.1 / (np.sqrt(np.mean(speech ** 2)) + 1e-12)       # speech at -20 dBFS RMS
    snr_db = rng.uniform(15, 35)
    speech += rng.standard_normal(speech.size) * 0.1 * 10 ** (-snr_db / 20)
    speech *= 10 ** (rng.uniform(-6, 3) / 20) / max(1.0, np.abs(speech).max() / 0.95)
    return speech.astype(np.float32)


def utterance(seed: int, split: str, number: int, min_seconds: float, max_seconds: float,
              sr: int = SAMPLE_RATE) -> tuple[str, np.ndarray]:
    """(source text, speech) of one utterance; sentences are redrawn until the audio
    lasts between min_seconds and max_seconds."""
    rng = np.random.default_rng([seed, {"train": 0, "dev": 1, "test": 2}[split], number])
    for _ in range(100):
        text = random_sentence(rng)
        audio = synth_speech(text, rng, sr)
        if min_seconds <= audio.size / sr <= max_seconds:
            return text, audio
    raise ValueError(f"could not draw a sentence lasting {min_seconds}-{max_seconds} s; "
                     f"widen the range (sentences last about 0.6-5 s)")


# ------------------------------------------------------------------ files
MANIFEST_HEADER = "id\tsrc_audio\tsrc_n_frames\tsrc_text\ttgt_text\ttgt_audio\n"


def write_split(root: Path, split: str, count: int, n_units: int, min_seconds: float,
                max_seconds: float, seed: int) -> Path:
    from shared.audio.fbank import num_frames

    (root / "wav").mkdir(parents=True, exist_ok=True)
    rows = [MANIFEST_HEADER]
    for i in range(count):
        name = f"{split}_{i:06d}"
        text, audio = utterance(seed, split, i, min_seconds, max_seconds)
        sf.write(root / "wav" / f"{name}.wav", audio, SAMPLE_RATE, subtype="PCM_16")
        target = translate(text)
        units = " ".join(str(u) for u in text_to_units(target, n_units))
        # src_n_frames: fbank frames (10 ms) of the audio, as fairseq's S2T manifests count
        rows.append(f"{name}\twav/{name}.wav\t{num_frames(audio.size)}\t{text}\t{target}\t{units}\n")
    path = root / f"{split}.tsv"
    path.write_text("".join(rows), encoding="utf-8")
    return path


def generate(out_dir: str | Path, train: int = 400, dev: int = 40, min_seconds: float = 1.0,
             max_seconds: float = 4.0, n_units: int = 100, seed: int = 0) -> dict[str, Path]:
    """Write the corpus; returns {"train": train.tsv, "dev": dev.tsv}."""
    if train < 1 or dev < 1:
        raise ValueError(f"need at least one train and one dev utterance, got {train}, {dev}")
    if not 0 < min_seconds < max_seconds:
        raise ValueError(f"need 0 < min_seconds < max_seconds, got {min_seconds}, {max_seconds}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / "lexicon.tsv").write_text(
        "source\ttarget\tclass\n" + "".join(f"{s}\t{t}\t{c}\n" for s, (t, c) in LEXICON.items()),
        encoding="utf-8")
    return {split: write_split(root, split, count, n_units, min_seconds, max_seconds, seed)
            for split, count in (("train", train), ("dev", dev))}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m shared.data.synth_s2ut",
                                description="Write a synthetic speech-to-unit translation "
                                            "corpus (16 kHz WAVs + fairseq S2UT TSV manifests).")
    p.add_argument("out_dir")
    p.add_argument("--train", type=int, default=400, help="training utterances (default 400)")
    p.add_argument("--dev", type=int, default=40, help="dev utterances (default 40)")
    p.add_argument("--min-seconds", type=float, default=1.0)
    p.add_argument("--max-seconds", type=float, default=4.0)
    p.add_argument("--n-units", type=int, default=100, help="unit vocabulary size (default 100)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    began = time.perf_counter()
    paths = generate(args.out_dir, args.train, args.dev, args.min_seconds, args.max_seconds,
                     args.n_units, args.seed)
    print(f"wrote {args.train} train and {args.dev} dev utterances to {paths['train'].parent} "
          f"({paths['train'].name}, {paths['dev'].name}) in {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    main()
