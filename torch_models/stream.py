"""Streaming speech-to-unit translation with PyTorch:
python -m torch_models.stream --checkpoint DIR speech.wav [--chunk-ms 320]"""
import sys

import numpy as np
import torch

from shared.cli.stream import main
from torch_models.models import load_model
from torch_models.trainer import default_device


class StreamSession:
    """One utterance through the streaming Emformer (its state carried between chunks, so
    each chunk costs the same however long the utterance), with the heads that read the
    encoder frames. Both CTC heads run on the new frames only: ASR CTC is per frame, ST
    CTC is causal, with its keys and values cached."""

    def __init__(self, model, device):
        self.model, self.device = model, device
        self.state = model.init_stream()
        self.frames, self.asr, self.st, self.st_cache = [], [], [], []

    @torch.no_grad()
    def push(self, features: np.ndarray) -> int:
        """(n, n_mels) new feature frames -> number of new encoder frames."""
        chunk = torch.from_numpy(np.ascontiguousarray(features[None])).to(self.device)
        frames, self.state = self.model.stream_encode(chunk, self.state)
        return self._append(frames)

    @torch.no_grad()
    def finish(self) -> int:
        frames, self.state = self.model.stream_finish(self.state)
        return self._append(frames)

    def _append(self, frames) -> int:
        if frames.shape[1]:
            self.frames.append(frames)
            self.asr.append(torch.argmax(self.model.asr_ctc(frames)[0], dim=-1).cpu().numpy())
            st_logits = self.model.st_ctc.stream(frames, self.st_cache)
            self.st.append(torch.argmax(st_logits[0], dim=-1).cpu().numpy())
        return frames.shape[1]

    def encoder_out(self):
        return torch.cat(self.frames, dim=1) if self.frames else None

    def asr_argmax(self) -> np.ndarray:
        return np.concatenate(self.asr) if self.asr else np.zeros(0, np.int64)

    def st_argmax(self) -> np.ndarray:
        return np.concatenate(self.st) if self.st else np.zeros(0, np.int64)

    @torch.no_grad()
    def translate(self, max_target_len: int) -> dict:
        """Greedy MT over every encoder frame, then the unit decoder on its states."""
        out = self.encoder_out()
        if out is None:
            return {"mt_tokens": np.zeros(0, np.int64), "unit_ctc_argmax": np.zeros(0, np.int64),
                    "unit_length": 0}
        lengths = torch.tensor([out.shape[1]], dtype=torch.int32, device=self.device)
        d = self.model.decode_encoded(out, lengths, max_target_len)
        return {"mt_tokens": d["mt_tokens"][0].cpu().numpy(),
                "unit_ctc_argmax": d["unit_ctc_argmax"][0].cpu().numpy(),
                "unit_length": int(d["unit_lengths"][0])}


def load(checkpoint):
    model, config = load_model(checkpoint, expect="streaming", what="EchoStream")
    device = default_device()
    model = model.to(device).eval()
    return (lambda: StreamSession(model, device)), config


if __name__ == "__main__":
    sys.exit(main("torch", load))
