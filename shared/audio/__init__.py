"""Audio front ends in numpy, identical for both backends: Kaldi-compatible log-mel
filterbanks (whole-signal and streaming), global CMVN and SpecAugment."""
from shared.audio.fbank import (CMVN, FbankOptions, SpecAugment, StreamingFbank, fbank,
                                mel_banks, num_frames, povey_window)

__all__ = ["CMVN", "FbankOptions", "SpecAugment", "StreamingFbank", "fbank", "mel_banks",
           "num_frames", "povey_window"]
