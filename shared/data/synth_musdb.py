"""A small synthetic dataset in exactly the MUSDB18-HQ layout, for demos and tests.

    python -m shared.data.synth_musdb OUT_DIR [--tracks 8] [--test-tracks 2]
        [--valid-tracks 2] [--seconds 12] [--sample-rate 44100] [--seed 0]

writes OUT_DIR/{train,test}/<track>/{mixture,vocals,drums,bass,other}.wav (16-bit PCM
stereo, like MUSDB18-HQ) and OUT_DIR/valid_tracks.txt naming the first `--valid-tracks`
train tracks, which shared.data.musdb then uses as the `valid` split in place of the
official list. Each track is a short tune at a random tempo and key, with four stems
that sound and look different on a spectrogram:

    vocals  a voice-like tone: 6 harmonics, vibrato, melody notes with rests between
    drums   kick (pitch-swept sine), snare (noise + tone) and hi-hat (bright noise) on a grid
    bass    low sines with two overtones following a bass line on the beat
    other   a chord pad plus band-passed noise, slowly swelling, decorrelated in stereo

mixture = sum of the stems (computed in float, so mixture.wav and the sum of the stem
files differ only by 16-bit rounding). Everything is a function of (seed, track number):
the same arguments write the same files.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from shared.data.musdb import STEMS, VALID_LIST_FILE

SCALE = (0, 3, 5, 7, 10)  # minor pentatonic: any two notes sound fine together
STEM_RMS = {"vocals": 0.08, "drums": 0.10, "bass": 0.08, "other": 0.05}


def midi_hz(note):
    return 440.0 * 2.0 ** ((np.asarray(note, dtype=np.float64) - 69) / 12)


def fade(n: int, sr: int, attack: float, release: float) -> np.ndarray:
    """A note envelope of n samples: linear attack and release, flat in between."""
    t = np.arange(n) / sr
    return np.clip(np.minimum(t / attack, (n / sr - t) / release), 0.0, 1.0)


def bandpass_noise(rng, shape, sr: int, low: float, high: float) -> np.ndarray:
    """White noise with everything outside [low, high] Hz removed (in the FFT domain)."""
    spec = np.fft.rfft(rng.standard_normal(shape), axis=-1)
    freqs = np.fft.rfftfreq(shape[-1], 1 / sr)
    return np.fft.irfft(spec * ((freqs >= low) & (freqs <= high)), n=shape[-1], axis=-1)


def place(out: np.ndarray, start: int, sound: np.ndarray) -> None:
    """Add `sound` into `out` at sample `start`, cut at the end of `out`."""
    n = min(sound.shape[-1], out.shape[-1] - start)
    if n > 0:
        out[..., start:start + n] += sound[..., :n]


def synth_track(seconds: float, sample_rate: int, seed: int, number: int) -> dict[str, np.ndarray]:
    """The four stems of track `number`, each (2, T) float64 at its target loudness."""
    rng = np.random.default_rng([seed, number])
    sr, T = sample_rate, int(round(seconds * sample_rate))
    beat = int(sr * 60 / rng.uniform(90, 130))              # samples per beat
    key = int(rng.integers(0, 12))
    n_beats = -(-T // beat)
    t = np.arange(T) / sr
    stems = {name: np.zeros((2, T)) for name in STEMS}

    # vocals: melody notes of 1-2 beats, a quarter of them rests, 0.3-semitone vibrato
    pitch, env, b = np.zeros(T), np.zeros(T), int(rng.integers(0, 3))  # may start late
    while b < n_beats:
        length = int(rng.integers(1, 3))
        start, stop = b * beat, min((b + length) * beat, T)
        if rng.random() > 0.25 and stop > start:
            pitch[start:stop] = 60 + key + SCALE[rng.integers(len(SCALE))] + 12 * rng.integers(0, 2)
            env[start:stop] = fade(stop - start, sr, 0.02, 0.05)
        b += length
    f0 = midi_hz(pitch + 0.3 * np.sin(2 * np.pi * 5.5 * t)) * (pitch > 0)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voice = sum(np.sin(k * phase) / k * (k * f0 < sr / 2) for k in range(1, 7)) * env
    stems["vocals"][:] = voice * np.array([[1.0], [0.9]])

    # drums: kick on every beat, snare on the off beats, hi-hat on every eighth
    hit = np.arange(int(0.3 * sr)) / sr
    kick = np.sin(2 * np.pi * np.cumsum(50 + 90 * np.exp(-hit / 0.03)) / sr) * np.exp(-hit / 0.12)
    snare = (rng.standard_normal(hit.size) + np.sin(2 * np.pi * 180 * hit)) * np.exp(-hit / 0.08)
    hat = np.diff(rng.standard_normal(hit.size + 1)) * np.exp(-hit / 0.02) * 0.3
    for b in range(n_beats):
        place(stems["drums"], b * beat, np.stack([kick, kick]))
        if b % 2:
            place(stems["drums"], b * beat, np.stack([snare, 0.8 * snare]))
        for half in (0, beat // 2):
            place(stems["drums"], b * beat + half, np.stack([0.7 * hat, hat]))

    # bass: one note per beat or two, low octave, decaying
    b = 0
    while b < n_beats:
        length = int(rng.integers(1, 3))
        n = min(length * beat, T - b * beat)
        f0 = midi_hz(36 + key + SCALE[rng.integers(len(SCALE))] - 12 * rng.integers(0, 2))
        u = np.arange(n) / sr
        note = (np.sin(2 * np.pi * f0 * u) + 0.3 * np.sin(4 * np.pi * f0 * u)
                + 0.1 * np.sin(6 * np.pi * f0 * u)) * np.exp(-u / 0.4) * fade(n, sr, 0.01, 0.02)
        place(stems["bass"], b * beat, np.stack([note, note]))
        b += length

    # other: a chord pad changing every 4 beats plus band-passed noise, swelling slowly
    for b in range(0, n_beats, 4):
        n = min(4 * beat, T - b * beat)
        root = 60 + key + SCALE[rng.integers(len(SCALE))]
        u = np.arange(n) / sr
        chord = sum(np.sin(2 * np.pi * midi_hz(root + step) * (1 + detune) * u)
                    for step in (0, 3, 7) for detune in (-0.002, 0.002))
        place(stems["other"], b * beat, np.stack([chord, np.roll(chord, 50)]) * fade(n, sr, 0.2, 0.2))
    swell = 0.6 + 0.4 * np.sin(2 * np.pi * 0.25 * t + rng.uniform(0, 2 * np.pi))
    stems["other"] += 2.0 * bandpass_noise(rng, (2, T), sr, 400, min(4000, sr / 2)) * swell

    for name, audio in stems.items():  # each stem to its loudness, +-3 dB per track
        rms = np.sqrt(np.mean(audio ** 2))
        stems[name] = audio * STEM_RMS[name] * 10 ** (rng.uniform(-3, 3) / 20) / max(rms, 1e-12)
    return stems


def write_track(folder: Path, stems: dict[str, np.ndarray], sample_rate: int) -> None:
    """mixture.wav + one file per stem, scaled together so nothing clips."""
    mixture = sum(stems.values())
    peak = max(np.abs(a).max() for a in (mixture, *stems.values()))
    scale = min(1.0, 0.9 / peak)
    folder.mkdir(parents=True, exist_ok=True)
    for name, audio in {"mixture": mixture, **stems}.items():
        sf.write(folder / f"{name}.wav", (audio * scale).T, sample_rate, subtype="PCM_16")


def generate(out_dir: str | Path, tracks: int = 8, test_tracks: int = 2, valid_tracks: int = 2,
             seconds: float = 12.0, sample_rate: int = 44100, seed: int = 0) -> Path:
    """Write the dataset; returns its root. Track numbers run over train then test, so
    no two tracks share their random draws."""
    if not 0 <= valid_tracks <= tracks:
        raise ValueError(f"valid_tracks={valid_tracks} must be between 0 and tracks={tracks}")
    root = Path(out_dir)
    names = {"train": [f"Synth {seed} - Train Song {i:02d}" for i in range(tracks)],
             "test": [f"Synth {seed} - Test Song {i:02d}" for i in range(test_tracks)]}
    number = 0
    for split, split_names in names.items():
        for name in split_names:
            write_track(root / split / name, synth_track(seconds, sample_rate, seed, number),
                        sample_rate)
            number += 1
    (root / VALID_LIST_FILE).write_text("".join(n + "\n" for n in names["train"][:valid_tracks]),
                                        encoding="utf-8")
    return root


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m shared.data.synth_musdb",
                                description="Write a synthetic dataset in the MUSDB18-HQ layout.")
    p.add_argument("out_dir")
    p.add_argument("--tracks", type=int, default=8, help="tracks in train/ (default 8)")
    p.add_argument("--test-tracks", type=int, default=2, help="tracks in test/ (default 2)")
    p.add_argument("--valid-tracks", type=int, default=2,
                   help=f"train tracks listed in {VALID_LIST_FILE} as the valid split (default 2)")
    p.add_argument("--seconds", type=float, default=12.0, help="track length (default 12)")
    p.add_argument("--sample-rate", type=int, default=44100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.valid_tracks > args.tracks:
        p.error(f"--valid-tracks {args.valid_tracks} is more than --tracks {args.tracks}")
    began = time.perf_counter()
    root = generate(args.out_dir, args.tracks, args.test_tracks, args.valid_tracks,
                    args.seconds, args.sample_rate, args.seed)
    print(f"wrote {args.tracks} train ({args.valid_tracks} of them valid) + {args.test_tracks} "
          f"test tracks of {args.seconds:g} s at {args.sample_rate} Hz to {root} "
          f"in {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    main()
