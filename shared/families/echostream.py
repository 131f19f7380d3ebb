"""EchoStream: streaming speech-to-unit translation (seed 000)."""
from shared.audio.fbank import FbankOptions
from shared.data.s2ut import S2UTDataConfig
from shared.data.synth_s2ut import SAMPLE_RATE as DEMO_RATE
from shared.errors import ConfigError
from shared.planner.echostream import ECHOSTREAM_MEMORY
from shared.registry import Family, register
from shared.specs.echostream import (EchoStreamSpec, echostream_batch_parts, echostream_init_weights,
                                     echostream_manifest, echostream_param_counts)
from shared.tasks.echostream import EchoStreamTask, echostream_batch, echostream_media, example_seconds


def check_config(config) -> None:
    bins = FbankOptions().num_mel_bins   # the features the data pipeline computes
    if config.model.n_mels != bins:
        raise ConfigError(f"model.n_mels={config.model.n_mels}, but the data give {bins}-bin "
                          f"Kaldi fbank features; set model.n_mels={bins}")
    if not config.data.train_manifest and config.data.sample_rate != DEMO_RATE:
        raise ConfigError(f"data.sample_rate={config.data.sample_rate}, but the generated demo corpus "
                          f"(data.train_manifest empty) is {DEMO_RATE} Hz; set data.sample_rate="
                          f"{DEMO_RATE} or give your own manifests")
    if config.model.train_segment_lengths and config.train.compile:
        raise ConfigError("model.train_segment_lengths (multi-chunk training) aligns the ST CTC output "
                          "in numpy each step, outside a compiled graph; set train.compile=false")


ECHOSTREAM = register(Family(
    name="echostream", spec_class=EchoStreamSpec, manifest=echostream_manifest,
    init_weights=echostream_init_weights, param_counts=echostream_param_counts,
    backends={"mlx": "mlx_models.echostream:EchoStream", "torch": "torch_models.echostream:EchoStream"},
    data_config=S2UTDataConfig, task=EchoStreamTask, random_batch=echostream_batch,
    memory=ECHOSTREAM_MEMORY, unit="audio_s", units_per_example=example_seconds,
    inference="streaming", bench_configs=("configs/echostream_demo.yaml",),
    batch_parts=echostream_batch_parts, split_by_default=False, check_config=check_config,
    eval_media=echostream_media))
