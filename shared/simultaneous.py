"""Simultaneous speech-to-unit translation: what to write while the speaker speaks.

The audio is read chunk by chunk. After each chunk a *policy* decides how many MT tokens
the translation may have so far; the MT decoder writes up to that many (greedy, with its
keys and values cached, so the written prefix is never recomputed), and the unit decoder
turns the newly written MT states into units. Every written token and unit is stamped
with the audio read so far (its *delay*) and with the compute time spent so far, which is
what shared/eval/latency.py scores (AL, LAAL, ... as SimulEval does).

Policies (StreamSpeech, ACL 2024, section 3.3, and the usual baselines):
- ``ctc``: StreamSpeech's policy. WRITE only when the ASR CTC transcript has grown (new
  source content was recognised), and then up to (ST CTC length - k) MT tokens: the
  streaming ST CTC head estimates how many target tokens the source read so far supports.
- ``wait-k``: after chunk i, up to i - k tokens (one per chunk once k chunks are read).
- ``offline``: nothing until the audio has ended (the whole-utterance reference point).
Before the source has ended, an EOS prediction is never written: the decoder stops and
READs (StreamSpeech does the same); at the end every policy writes to EOS.

The backend session supplies the math and nothing else (mlx_models/stream.py,
torch_models/stream.py, on SessionState's bookkeeping): `push(features)`, `finish()`,
`n_frames`, `asr_argmax()`, `st_argmax()`, `mt_propose() -> token` (greedy next token over
the frames so far, not yet kept), `mt_accept(token)` (keep it: its keys/values and its
state), `n_states`, and `unit_argmax(start, end)` (per-position unit ids of the states
start..end, the unit decoder run over states 0..end).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np

from shared.audio.fbank import CMVN, FbankOptions, StreamingFbank
from shared.specs.echostream import BLANK, BOS, ENCODER_FRAME_MS, EOS, chunk_segment_length

POLICIES = ("ctc", "wait-k", "offline")


@dataclass
class Policy:
    """How many MT tokens may be written after a chunk. `k` is the lag: tokens held back
    from the ST CTC estimate (ctc) or chunks waited before the first token (wait-k)."""

    name: str = "ctc"
    k: int = 0
    _asr_length: int = 0

    def __post_init__(self):
        if self.name not in POLICIES:
            raise ValueError(f"unknown policy {self.name!r}; choose one of {', '.join(POLICIES)}")
        if self.k < 0:
            raise ValueError(f"the policy's k must be >= 0, got {self.k}")

    def allowed_tokens(self, chunks_read: int, asr_length: int, st_length: int, written: int) -> int:
        """The number of MT tokens the translation may have after `chunks_read` chunks."""
        if self.name == "offline":
            return 0
        if self.name == "wait-k":
            return max(chunks_read - self.k, 0)
        if asr_length <= self._asr_length:   # nothing new recognised: READ
            return written
        self._asr_length = asr_length
        return max(st_length - self.k, 0)


def segment_for_chunk(spec, chunk_ms: int, policy: str = "ctc", warn=None) -> int | None:
    """The encoder segment a session should stream with for READ chunks of chunk_ms (0:
    whole utterance): None keeps the model's own. Warns (on stderr by default) when the
    checkpoint was not trained for this chunk size or policy, naming what it was trained for."""
    warn = warn or (lambda text: print(text, file=sys.stderr, flush=True))
    trained = spec.train_segment_lengths
    if not trained:
        if policy != "offline":
            warn("note: this checkpoint was trained on whole utterances (model.train_segment_lengths is "
                 "empty): its MT decoder never saw a partial source, so simultaneous output loses "
                 "quality; train with model.train_segment_lengths for simultaneous use")
        return None
    names = ", ".join("whole" if n == 0 else f"{n * ENCODER_FRAME_MS} ms" for n in trained)
    segment = chunk_segment_length(spec, chunk_ms)
    if segment not in trained:
        what = "whole utterances" if chunk_ms == 0 else f"{chunk_ms} ms chunks"
        warn(f"warning: this checkpoint was trained for chunks of {names}, not {what}; "
             f"expect lower quality (--chunk-ms {' or '.join(str(n * ENCODER_FRAME_MS) for n in trained if n)})")
    if policy == "wait-k":
        warn("note: this checkpoint's MT decoder was trained for the ctc policy's reads; wait-k is a baseline")
    return segment


@dataclass
class Written:
    """Everything written for one utterance, each item with its delay (ms of audio read
    when written) and elapsed time (delay + compute spent so far, ms)."""

    mt_tokens: list[int] = field(default_factory=list)
    mt_delays: list[float] = field(default_factory=list)
    mt_elapsed: list[float] = field(default_factory=list)
    units: list[int] = field(default_factory=list)
    unit_delays: list[float] = field(default_factory=list)
    unit_elapsed: list[float] = field(default_factory=list)
    chunk_ms: list[float] = field(default_factory=list)   # compute per chunk, policy included
    encoder_ms: list[float] = field(default_factory=list)  # of which the encoder step
    finish_ms: float = 0.0
    source_ms: float = 0.0
    finished: bool = False   # EOS written
    compute_ms: float = 0.0  # all compute, when the last item was written


class GrowingCTC:
    """A CTC transcript collapsed as ctc_collapse does, fed its frame labels as they come:
    the collapse carries over from one call to the next, so a stream's per-chunk work does
    not grow with what came before."""

    def __init__(self):
        self.frames_seen, self.length, self.last = 0, 0, None

    def push(self, new_labels) -> list[int]:
        """The labels that new frames add to the collapsed transcript."""
        added = []
        for label in np.asarray(new_labels).reshape(-1).tolist():
            if label != self.last and label != BLANK:
                added.append(int(label))
            self.last = label
        self.frames_seen += int(np.asarray(new_labels).size)
        self.length += len(added)
        return added

    def update(self, labels: np.ndarray) -> int:
        """The collapsed length of all labels so far (`labels`: every frame's, of which
        only those not seen before are read)."""
        self.push(np.asarray(labels).reshape(-1)[self.frames_seen:])
        return self.length


class SessionState:
    """What a backend's StreamSession keeps between chunks, the same on both backends: the
    streaming encoder's state and frames, the CTC heads' per-chunk argmaxes, and the MT and
    unit decoders' caches, written tokens and states. The backends add the math (push,
    finish, mt_propose, unit_argmax) and `id_dtype`, the dtype of an empty transcript."""
    id_dtype = np.int64

    def __init__(self, model, segment_length: int | None = None):
        """segment_length: the encoder's segment (None: the model's; 0: the whole
        utterance), for a model trained on several (model.train_segment_lengths)."""
        self.model = model
        self.state = model.init_stream(segment_length)
        self.frames, self.asr, self.st, self.st_cache = [], [], [], []
        self.frames_seen = 0
        # MT decoder: keys/values of the accepted tokens and of the frames seen so far
        self.mt_cache, self.frames_in_cache = model.mt_decoder.new_cache(), 0
        self.last_token, self.pending, self.mt_states = BOS, None, []
        self.unit_cache = model.unit_decoder.new_cache()

    def asr_argmax(self) -> np.ndarray:
        return np.concatenate(self.asr) if self.asr else np.zeros(0, self.id_dtype)

    def st_argmax(self) -> np.ndarray:
        return np.concatenate(self.st) if self.st else np.zeros(0, self.id_dtype)

    @property
    def n_frames(self) -> int:
        return self.frames_seen

    @property
    def n_states(self) -> int:
        return len(self.mt_states)

    def mt_accept(self, token: int):
        """Keep the proposed token: its input's keys/values and state are final."""
        states, keys_values = self.pending
        self.model.mt_decoder.commit(self.mt_cache, keys_values)
        self.mt_states.append(states)
        self.last_token, self.pending = token, None


class SimultaneousTranslator:
    """Drives a backend session through one utterance under a policy."""

    def __init__(self, session, policy: Policy, cmvn: CMVN, sample_rate: int, max_target_len: int = 200):
        self.session, self.policy, self.cmvn = session, policy, cmvn
        self.sample_rate, self.max_target_len = sample_rate, max_target_len
        self.fbank = StreamingFbank(FbankOptions(sample_rate=sample_rate))   # as in training
        self.out = Written()
        self._unit_states = 0        # MT states whose units were written
        self._samples_read, self._chunks_read = 0, 0
        self._asr, self._st, self._units_ctc = GrowingCTC(), GrowingCTC(), GrowingCTC()

    # -- reading ---------------------------------------------------------------------------
    def read(self, samples: np.ndarray) -> tuple[list[int], list[int]]:
        """READ one chunk of audio, then WRITE what the policy allows. Returns the MT
        tokens and units written (the chunk's delay is all audio read so far)."""
        self._samples_read += len(samples)
        self._chunks_read += 1
        read_ms = 1e3 * self._samples_read / self.sample_rate
        t0 = time.perf_counter()
        features = self.cmvn.apply(self.fbank.accept_waveform(samples))
        t1 = time.perf_counter()
        self.session.push(features)
        self.out.encoder_ms.append(1e3 * (time.perf_counter() - t1))
        asr = self._asr.update(self.session.asr_argmax())
        st = self._st.update(self.session.st_argmax())
        allowed = self.policy.allowed_tokens(self._chunks_read, asr, st, len(self.out.mt_tokens))
        written = self._write(min(allowed, self.max_target_len), False, read_ms, t0)
        self.out.chunk_ms.append(1e3 * (time.perf_counter() - t0))
        return written

    def end(self) -> tuple[list[int], list[int]]:
        """The source has ended: write to EOS (or max_target_len)."""
        self.out.source_ms = 1e3 * self._samples_read / self.sample_rate
        t0 = time.perf_counter()
        self.session.finish()
        written = self._write(self.max_target_len, True, self.out.source_ms, t0)
        self.out.finish_ms = 1e3 * (time.perf_counter() - t0)
        return written

    def run(self, audio: np.ndarray, chunk_samples: int, on_write=None) -> Written:
        """Read `audio` chunk by chunk, then end; `on_write(seconds_read, new_tokens,
        new_units)` is called after every step that wrote something (not timed)."""
        for start in range(0, max(len(audio), 1), chunk_samples):
            new_tokens, new_units = self.read(audio[start:start + chunk_samples])
            if on_write is not None and (new_tokens or new_units):
                on_write(self._samples_read / self.sample_rate, new_tokens, new_units)
        new_tokens, new_units = self.end()
        if on_write is not None and (new_tokens or new_units):
            on_write(self._samples_read / self.sample_rate, new_tokens, new_units)
        return self.out

    def _write(self, allowed: int, source_ended: bool, read_ms: float, t0: float):
        """Write MT tokens up to `allowed` (to EOS once the source has ended), then the
        units of the new MT states. Returns the new tokens (no EOS) and units."""
        out, session = self.out, self.session
        new_tokens = []
        while not out.finished and session.n_frames and len(out.mt_tokens) < allowed:
            token = session.mt_propose()
            if token == EOS and not source_ended:
                break   # the decoder wants to stop: wait for more audio instead
            session.mt_accept(token)
            if token == EOS:
                out.finished = True
                break
            new_tokens.append(token)
            out.mt_tokens.append(token)
        new_units = self._units()
        elapsed = out.compute_ms + 1e3 * (time.perf_counter() - t0)
        out.mt_delays += [read_ms] * len(new_tokens)
        out.mt_elapsed += [read_ms + elapsed] * len(new_tokens)
        out.unit_delays += [read_ms] * len(new_units)
        out.unit_elapsed += [read_ms + elapsed] * len(new_units)
        out.compute_ms = elapsed
        return new_tokens, new_units

    def _units(self) -> list[int]:
        """Units of the MT states written since the last call, CTC-collapsed with the
        collapse carried across calls (units already written are never taken back)."""
        end = self.session.n_states
        if end <= self._unit_states:
            return []
        labels = self.session.unit_argmax(self._unit_states, end)
        self._unit_states = end
        units = [label - 1 for label in self._units_ctc.push(labels)]   # unit ids are units + 1
        self.out.units += units
        return units


def word_delays(pieces: list[str], token_times: list[float], end_time: float) -> list[float]:
    """When each output word could be shown as complete: when the piece that begins the
    next word was written (a SentencePiece piece starting with '▁' begins a word), and
    the last word at `end_time` (the end of the source). This is what a streaming display,
    and the SimulEval agent (shared/simuleval_agent.py), can do."""
    starts, begins_word = [], True
    for index, piece in enumerate(pieces):
        if piece.startswith("\u2581"):
            begins_word, piece = True, piece[1:]
        if not piece:   # a lone word-boundary piece: the next piece begins the word
            continue
        if begins_word:
            starts.append(index)
            begins_word = False
    return [token_times[next_start] for next_start in starts[1:]] + ([end_time] if starts else [])
