"""Streaming speech-to-unit translation with MLX:
python -m mlx_models.stream --checkpoint DIR speech.wav [--chunk-ms 320]"""
import sys

import mlx.core as mx
import numpy as np

from mlx_models.models import load_model
from shared.cli.stream import main


class StreamSession:
    """One utterance through the streaming Emformer (its state carried between chunks, so
    each chunk costs the same however long the utterance), with the heads that read the
    encoder frames. Both CTC heads run on the new frames only: ASR CTC is per frame, ST
    CTC is causal, with its keys and values cached."""

    def __init__(self, model):
        self.model = model
        self.state = model.init_stream()
        self.frames, self.asr, self.st, self.st_cache = [], [], [], []

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
            self.asr.append(np.array(mx.argmax(self.model.asr_ctc(frames)[0], axis=-1)))
            st_logits = self.model.st_ctc.stream(frames, self.st_cache)
            self.st.append(np.array(mx.argmax(st_logits[0], axis=-1)))
        return frames.shape[1]

    def encoder_out(self):
        return mx.concatenate(self.frames, axis=1) if self.frames else None

    def asr_argmax(self) -> np.ndarray:
        return np.concatenate(self.asr) if self.asr else np.zeros(0, np.int32)

    def st_argmax(self) -> np.ndarray:
        return np.concatenate(self.st) if self.st else np.zeros(0, np.int32)

    def translate(self, max_target_len: int) -> dict:
        """Greedy MT over every encoder frame, then the unit decoder on its states."""
        out = self.encoder_out()
        if out is None:
            return {"mt_tokens": np.zeros(0, np.int32), "unit_ctc_argmax": np.zeros(0, np.int32),
                    "unit_length": 0}
        d = self.model.decode_encoded(out, mx.array([out.shape[1]], mx.int32), max_target_len)
        return {"mt_tokens": np.array(d["mt_tokens"][0]),
                "unit_ctc_argmax": np.array(d["unit_ctc_argmax"][0]),
                "unit_length": int(d["unit_lengths"][0].item())}


def load(checkpoint):
    model, config = load_model(checkpoint, expect="streaming", what="EchoStream")
    model.eval()
    return (lambda: StreamSession(model)), config


if __name__ == "__main__":
    sys.exit(main("mlx", load))
