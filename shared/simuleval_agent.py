"""A SimulEval agent for EchoStream checkpoints, so that a model trained here is scored by
SimulEval itself, as StreamSpeech's users score theirs (speech in, MT text out):

    simuleval --agent-class shared.simuleval_agent.EchoStreamAgent \\
        --checkpoint runs/echostream_demo --backend torch --policy ctc \\
        --source wav_list.txt --target references.txt \\
        --source-segment-size 320 --output simuleval_out

(`pip install simuleval`; `--source` lists one WAV per line, `--target` one reference
per line.) SimulEval feeds the audio segment by segment; each segment is one READ of
shared/simultaneous.py, and the words completed by what the policy wrote are returned
(a word is complete once the next word has begun, or at the end). SimulEval then
computes the latency itself from when each word was returned.
"""
from __future__ import annotations

import importlib

import numpy as np
from simuleval.agents import SpeechToTextAgent
from simuleval.agents.actions import ReadAction, WriteAction

from shared.cli.stream import load_checkpoint
from shared.simultaneous import POLICIES, Policy, SimultaneousTranslator, segment_for_chunk


class EchoStreamAgent(SpeechToTextAgent):
    """Simultaneous MT text from speech with an EchoStream checkpoint, either backend."""

    @staticmethod
    def add_args(parser):
        parser.add_argument("--checkpoint", required=True, help="EchoStream checkpoint or run directory")
        parser.add_argument("--backend", choices=("mlx", "torch"), default="torch")
        parser.add_argument("--policy", choices=POLICIES, default="ctc")
        parser.add_argument("--k", type=int, default=0, help="the policy's lag")
        parser.add_argument("--max-target-len", type=int, default=200)

    def __init__(self, args):
        load = importlib.import_module(f"{args.backend}_models.stream").load
        self.loaded = load_checkpoint(args.backend, load, args.checkpoint)
        self.policy_name, self.k, self.max_target_len = args.policy, args.k, args.max_target_len
        # the encoder streams in segments of SimulEval's --source-segment-size (a model
        # trained on several chunk sizes; others keep their own)
        self.segment_length = segment_for_chunk(self.loaded["spec"], int(args.source_segment_size), args.policy)
        super().__init__(args)   # calls reset()

    def reset(self):
        super().reset()
        loaded = self.loaded
        self.translator = SimultaneousTranslator(loaded["new_session"](self.segment_length),
                                                 Policy(self.policy_name, self.k),
                                                 loaded["cmvn"], loaded["sample_rate"], self.max_target_len)
        self.samples_used, self.words_sent = 0, 0

    def policy(self):
        states, rate = self.states, self.loaded["sample_rate"]
        if states.source_sample_rate and states.source_sample_rate != rate:
            raise ValueError(f"the source is {states.source_sample_rate} Hz; this checkpoint takes {rate} Hz "
                             f"(resample the WAVs, e.g. sox IN -r {rate} OUT.wav)")
        new = np.asarray(states.source[self.samples_used:], np.float32)
        self.samples_used = len(states.source)
        if len(new):
            self.translator.read(new)
        if states.source_finished:
            self.translator.end()
        words = self.loaded["tgt"].decode(self.translator.out.mt_tokens).split()
        complete = words if states.source_finished else words[:-1]   # the last may go on
        new_words = complete[self.words_sent:]
        self.words_sent = len(complete)
        if new_words or states.source_finished:
            return WriteAction(" ".join(new_words), finished=states.source_finished)
        return ReadAction()
