"""Streaming speech-to-unit translation with MLX:
python -m mlx_models.stream --checkpoint DIR speech.wav [--chunk-ms 320]"""
import sys

import mlx.core as mx
import numpy as np

from mlx_models.models import load_model
from shared.cli.stream import main
from shared.simultaneous import SessionState
from shared.specs.echostream import PAD


class StreamSession(SessionState):
    """One utterance through the streaming Emformer (its state carried between chunks, so
    each chunk costs the same however long the utterance), with the heads that read the
    encoder frames. Both CTC heads run on the new frames only: ASR CTC is per frame, ST
    CTC is causal, with its keys and values cached."""

    id_dtype = np.int32

    def push(self, features: np.ndarray) -> int:
        """(n, n_mels) new feature frames -> number of new encoder frames."""
        frames, self.state = self.model.stream_encode(mx.array(features[None]), self.state)
        return self._append(frames)

    def finish(self) -> int:
        frames, self.state = self.model.stream_finish(self.state)
        return self._append(frames)

    def _append(self, frames) -> int:
        if frames.shape[1]:
            self.frames.append(frames)
            self.frames_seen += frames.shape[1]
            self.asr.append(np.array(mx.argmax(self.model.asr_ctc(frames)[0], axis=-1)))
            st_logits = self.model.st_ctc.stream(frames, self.st_cache)
            self.st.append(np.array(mx.argmax(st_logits[0], axis=-1)))
        return frames.shape[1]

    def encoder_out(self):
        return mx.concatenate(self.frames, axis=1) if self.frames else None

    def mt_propose(self) -> int:
        """Greedy next MT token over every encoder frame so far. Only the last accepted
        token is fed (the others are in the cache); nothing is kept until mt_accept."""
        new_frames = self.frames[self.frames_in_cache:]
        if new_frames:
            self.model.mt_decoder.extend_memory(self.mt_cache, mx.concatenate(new_frames, axis=1))
            self.frames_in_cache = len(self.frames)
        logits, states, keys_values = self.model.mt_decoder.step(
            mx.array([[self.last_token]], mx.int32), self.mt_cache)
        self.pending = (states, keys_values)
        scores = logits[0, -1].astype(mx.float32)
        scores = mx.where(mx.arange(scores.shape[0]) == PAD, -mx.inf, scores)   # PAD never predicted
        return int(mx.argmax(scores).item())

    def unit_argmax(self, start: int, end: int) -> np.ndarray:
        """Unit ids at the positions of MT states start..end-1 (start: the first state
        not asked for before). A block-causal unit decoder (model.unit_causal) runs on the
        new states only, with cached keys and values; otherwise it sees every state, so
        it runs over states 0..end-1 and earlier positions are recomputed."""
        up = self.model.spec.unit_upsample
        if self.model.spec.unit_causal:
            logits = self.model.unit_decoder.step(mx.concatenate(self.mt_states[start:end], axis=1),
                                                  self.unit_cache)[0]
        else:
            logits = self.model.unit_decoder(mx.concatenate(self.mt_states[:end], axis=1),
                                             mx.array([end], mx.int32))[0][0, start * up:end * up]
        return np.array(mx.argmax(logits, axis=-1))


def load(checkpoint):
    model, config = load_model(checkpoint, expect="streaming", what="EchoStream")
    model.eval()
    return (lambda segment_length=None: StreamSession(model, segment_length)), config


if __name__ == "__main__":
    sys.exit(main("mlx", load))
