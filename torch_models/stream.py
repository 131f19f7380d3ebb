"""Streaming speech-to-unit translation with PyTorch:
python -m torch_models.stream --checkpoint DIR speech.wav [--chunk-ms 320]"""
import sys

import numpy as np
import torch

from shared.cli.stream import main
from shared.simultaneous import SessionState
from shared.specs.echostream import PAD
from torch_models.models import load_model
from torch_models.trainer import default_device


class StreamSession(SessionState):
    """One utterance through the streaming Emformer (its state carried between chunks, so
    each chunk costs the same however long the utterance), with the heads that read the
    encoder frames. Both CTC heads run on the new frames only: ASR CTC is per frame, ST
    CTC is causal, with its keys and values cached."""

    def __init__(self, model, device, segment_length: int | None = None):
        self.device = device
        super().__init__(model, segment_length)

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
            self.frames_seen += frames.shape[1]
            self.asr.append(torch.argmax(self.model.asr_ctc(frames)[0], dim=-1).cpu().numpy())
            st_logits = self.model.st_ctc.stream(frames, self.st_cache)
            self.st.append(torch.argmax(st_logits[0], dim=-1).cpu().numpy())
        return frames.shape[1]

    def encoder_out(self):
        return torch.cat(self.frames, dim=1) if self.frames else None

    @torch.no_grad()
    def mt_propose(self) -> int:
        """Greedy next MT token over every encoder frame so far. Only the last accepted
        token is fed (the others are in the cache); nothing is kept until mt_accept."""
        new_frames = self.frames[self.frames_in_cache:]
        if new_frames:
            self.model.mt_decoder.extend_memory(self.mt_cache, torch.cat(new_frames, dim=1))
            self.frames_in_cache = len(self.frames)
        token = torch.tensor([[self.last_token]], dtype=torch.int32, device=self.device)
        logits, states, keys_values = self.model.mt_decoder.step(token, self.mt_cache)
        self.pending = (states, keys_values)
        scores = logits[0, -1].float()
        scores[PAD] = -torch.inf   # PAD is never predicted
        return int(torch.argmax(scores))

    @torch.no_grad()
    def unit_argmax(self, start: int, end: int) -> np.ndarray:
        """Unit ids at the positions of MT states start..end-1 (start: the first state
        not asked for before). A block-causal unit decoder (model.unit_causal) runs on the
        new states only, with cached keys and values; otherwise it sees every state, so
        it runs over states 0..end-1 and earlier positions are recomputed."""
        up = self.model.spec.unit_upsample
        if self.model.spec.unit_causal:
            logits = self.model.unit_decoder.step(torch.cat(self.mt_states[start:end], dim=1),
                                                  self.unit_cache)[0]
        else:
            lengths = torch.tensor([end], dtype=torch.int32, device=self.device)
            logits = self.model.unit_decoder(torch.cat(self.mt_states[:end], dim=1),
                                             lengths)[0][0, start * up:end * up]
        return torch.argmax(logits, dim=-1).cpu().numpy()


def load(checkpoint):
    model, config = load_model(checkpoint, expect="streaming", what="EchoStream")
    device = default_device()
    model = model.to(device).eval()
    return (lambda segment_length=None: StreamSession(model, device, segment_length)), config


if __name__ == "__main__":
    sys.exit(main("torch", load))
