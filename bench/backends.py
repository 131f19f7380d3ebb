"""The benchmarked frameworks: a Backend base class with the timing loops (training blocks,
generation, separation, streaming) and its MLX and torch subclasses, which build the trainer
and models and set up threads and describe their environment. Each runs in a Worker process."""
from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

import numpy as np

from shared.engine.config import RunConfig

from measure import spread


# ---------------------------------------------------------------------------- backends
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class Backend:
    """One framework, driven from the bench's main process through a Worker. Subclasses
    supply the framework specifics; the timing loops are here, once."""
    name: str

    def start(self, config: RunConfig, warmup: list[list[np.ndarray]], lr: float) -> str:
        """Build the trainer and run the untimed warm-up steps; return the device."""
        self.trainer = self.make_trainer(config)
        for micro in warmup:     # compilation and allocator growth happen here
            self.trainer.train_step(micro, lr)
        self.sync()
        return self.device()

    def block(self, steps: list[list[np.ndarray]], lr: float) -> tuple[float, int]:
        """Seconds per optimizer step over `steps`, and the peak memory meanwhile (0: the
        framework keeps no statistics here: torch on CPU)."""
        self.sync()
        self.reset_peak_memory()
        start = time.perf_counter()
        for micro in steps:
            if self.trainer.train_step(micro, lr)["skipped"]:
                raise RuntimeError("non-finite loss or gradient")
        self.sync()
        return (time.perf_counter() - start) / len(steps), self.trainer.memory()[1]

    def finish(self) -> None:
        self.trainer = None

    def parallel_parts(self) -> int:
        """Parts each micro-batch is split into, computed in parallel (MLX on a CPU)."""
        return 1

    def generate(self, decoder: str, spec, seed: int, prompt: np.ndarray, new: int,
                 repeats: int) -> dict:
        """Prefill `prompt`, then decode `new` tokens greedily through the KV cache, timing
        both, through the decoder's step (as the generate CLI drives it: the pipelined path
        on MLX). Other decoders of the same weights (reference_decoders: mlx-lm's on MLX)
        take turns with ours run by run, and are reported under "references" with the
        per-run ratios of our decode time to theirs. The first of repeats + 1 runs of
        each is the warm-up."""
        decoders = {"ours": getattr(self, decoder)(spec, seed),
                    **self.reference_decoders(decoder, spec, seed, new + 1)}
        prefill = {name: [] for name in decoders}
        decode = {name: [] for name in decoders}
        for rep in range(repeats + 1):
            for name, start_decoder in decoders.items():
                step = start_decoder()   # a fresh cache
                self.sync()
                t0 = time.perf_counter()
                token = step(prompt)
                t1 = time.perf_counter()
                for _ in range(new):
                    token = step(np.array([[token]], np.int32))
                t2 = time.perf_counter()
                self.sync()              # work queued past the last token: not timed
                if rep:
                    prefill[name].append(prompt.shape[1] / (t1 - t0))
                    decode[name].append(new / (t2 - t1))
        result = {"prompt_tokens": prompt.shape[1], "new_tokens": new,
                  "prefill_tokens_per_s": spread(prefill["ours"]),
                  "decode_tokens_per_s": spread(decode["ours"]),
                  "metric": "decode tokens/s", "value": spread(decode["ours"])}
        references = {name: {"prefill_tokens_per_s": spread(prefill[name]),
                             "decode_tokens_per_s": spread(decode[name]),
                             "ours_over_theirs_decode_time": spread(
                                 [theirs / ours for ours, theirs in zip(decode["ours"], decode[name])])}
                      for name in decoders if name != "ours"}
        if references:
            result["references"] = references
        return result

    def reference_decoders(self, decoder: str, spec, seed: int, max_tokens: int) -> dict:
        """{name: start() -> step} of other implementations, behind the same step contract,
        to time against ours (none by default)."""
        return {}

    def separation(self, spec, seed: int, mixture: np.ndarray, chunk: int, sample_rate: int,
                   repeats: int) -> dict:
        """Separate `mixture` (C, T) chunk by chunk with overlap-add, as the separate CLI
        does; seconds of audio per second. The first of repeats + 1 runs is the warm-up."""
        from shared.audio.chunked import chunk_layout, separate
        run_chunks = self.chunk_runner(self.models.build_model(spec, seed))
        speed = []
        for rep in range(repeats + 1):
            self.sync()
            t0 = time.perf_counter()
            separate(mixture, run_chunks, chunk)
            self.sync()
            if rep:
                speed.append(mixture.shape[1] / sample_rate / (time.perf_counter() - t0))
        return {"audio_seconds": mixture.shape[1] / sample_rate, "chunk_seconds": chunk / sample_rate,
                "computed_seconds": chunk_layout(mixture.shape[1], chunk).computed / sample_rate,
                "metric": "x real time", "value": spread(speed)}

    def streaming(self, spec, seed: int, utterance_seconds: list[float], chunk_ms: int,
                  repeats: int, sample_rate: int, policy: str = "wait-k") -> dict:
        """Per-chunk cost of simultaneous translation (as the stream CLI: features, the
        Emformer step, the CTC heads, the policy, KV-cached MT decoding and the units of
        the new MT states) for utterances of each length: it must not grow with the
        utterance. First of repeats + 1 runs: warm-up. Random weights write whatever they
        predict; the tokens and units written are reported with the times."""
        from shared.audio.fbank import CMVN
        from shared.simultaneous import Policy, SimultaneousTranslator
        model = self.models.build_model(spec, seed)
        identity = CMVN(np.zeros(spec.n_mels), np.ones(spec.n_mels))
        rng = np.random.default_rng(seed)
        by_length = {}

        def last_tenth(ms):
            return statistics.mean(ms[-max(1, len(ms) // 10):])   # where prefix recomputation would show
        for seconds in utterance_seconds:
            audio = (0.1 * rng.standard_normal(int(seconds * sample_rate))).astype(np.float32)
            runs = {"chunk_ms": [], "encoder_ms": [], "chunk_ms_last_tenth": [], "encoder_ms_last_tenth": []}
            for rep in range(repeats + 1):
                translator = SimultaneousTranslator(self.stream_session(model), Policy(policy), identity,
                                                    sample_rate, max_target_len=10 ** 6)
                written = translator.run(audio, sample_rate * chunk_ms // 1000)
                if rep:
                    for key in ("chunk_ms", "encoder_ms"):
                        runs[key].append(statistics.mean(getattr(written, key)))
                        runs[key + "_last_tenth"].append(last_tenth(getattr(written, key)))
            by_length[f"{seconds:g}s"] = {"chunks": len(written.chunk_ms), "mt_tokens": len(written.mt_tokens),
                                          "units": len(written.units),
                                          **{key: spread(values) for key, values in runs.items()}}
        longest = by_length[f"{max(utterance_seconds):g}s"]
        return {"chunk_ms_setting": chunk_ms, "policy": policy, "by_utterance_length": by_length,
                "metric": f"ms/chunk ({max(utterance_seconds):g} s utterance)",
                "value": longest["chunk_ms"]}


class MLXBackend(Backend):
    name = "mlx"

    def __init__(self):
        import mlx_models  # noqa: F401  -- loads OpenBLAS before mlx.core (Linux)
        import mlx.core as mx
        from mlx_models import models
        from mlx_models.blas import blas_thread_count
        from mlx_models.trainer import Trainer
        self.mx, self.models, self.Trainer = mx, models, Trainer
        self.blas_threads = blas_thread_count()

    def device(self) -> str:
        if self.mx.default_device() == self.mx.cpu:
            return f"cpu: {cpu_name()}"
        info = getattr(self.mx, "device_info", None) or self.mx.metal.device_info
        return f"gpu: {info().get('device_name', 'Metal')}"

    def make_trainer(self, config: RunConfig):
        return self.Trainer(config.model, config.train)

    def sync(self) -> None:
        # train_step already evaluates; a pipelined decoder leaves a step queued.
        self.mx.synchronize()

    def reset_peak_memory(self) -> None:
        self.mx.reset_peak_memory()

    def set_threads(self, n: int) -> None:
        """MLX's own CPU ops run on one thread per stream; only its BLAS is threaded. (The
        trainer's parallel parts: --threads sets train.cpu_streams too.)"""
        from mlx_models.blas import set_blas_threads
        set_blas_threads(n)
        self.blas_threads = n

    def parallel_parts(self) -> int:
        return self.trainer.parallel_parts

    def finish(self) -> None:
        """The trainer set one BLAS thread per parallel part for the process; inference
        (timed next) gets the bench's own count back."""
        from mlx_models.blas import set_blas_threads
        super().finish()
        set_blas_threads(self.blas_threads)

    def environment(self) -> dict:
        import ctypes
        import mlx_models.blas as blas
        info = {"version": self.mx.__version__, "device": self.device(), "blas": blas.BLAS_IN_USE}
        lib = blas.openblas()
        if lib is not None:
            lib.openblas_get_config.restype = ctypes.c_char_p
            info["blas_config"] = lib.openblas_get_config().decode()
            info["blas_threads"] = lib.openblas_get_num_threads()
        return info

    def lm_decoder(self, spec, seed: int):
        """Fresh-cache greedy decoders over the spec's initial weights (as mlx_models.generate)."""
        from mlx_models.generate import decoder
        model = self.models.build_model(spec, seed)
        model.eval()
        return lambda: decoder(model)

    def reference_decoders(self, decoder: str, spec, seed: int, max_tokens: int) -> dict:
        """mlx-lm's generate_step (greedy), when mlx-lm is installed, on the same weights:
        saved, exported as a Hugging Face Llama directory (in a temporary directory) and
        loaded by mlx-lm. Its step must be fed back the token it returned."""
        if decoder != "lm_decoder":
            return {}
        try:
            from mlx_lm.generate import generate_step
            from mlx_lm.utils import load_model
        except ImportError:
            return {}
        import tempfile
        from shared.interop.export_hf import export
        with tempfile.TemporaryDirectory() as tmp:
            self.models.save_model(self.models.build_model(spec, seed), Path(tmp) / "ckpt")
            export(Path(tmp) / "ckpt", Path(tmp) / "hf")
            model, _ = load_model(Path(tmp) / "hf")
        mx = self.mx

        def start():
            steps = None

            def step(ids: np.ndarray) -> int:
                nonlocal steps
                if steps is None:   # the prompt; later ids are the tokens it yielded
                    steps = generate_step(mx.array(ids[0]), model, max_tokens=max_tokens)
                return next(steps)[0]
            return step
        return {"mlx-lm": start}

    def chunk_runner(self, model):
        from mlx_models.separate import chunk_runner
        return chunk_runner(model)

    def stream_session(self, model):
        from mlx_models.stream import StreamSession
        model.eval()
        return StreamSession(model)


class TorchBackend(Backend):
    name = "torch"

    def __init__(self):
        import torch
        from torch_models import models
        from torch_models.trainer import Trainer, default_device
        self.torch, self.models, self.Trainer = torch, models, Trainer
        self.dev = default_device()

    def device(self) -> str:
        if self.dev.type == "cuda":
            return f"cuda: {self.torch.cuda.get_device_name(self.dev)}"
        return f"cpu: {cpu_name()}"

    def make_trainer(self, config: RunConfig):
        return self.Trainer(config.model, config.train, device=self.dev)

    def sync(self) -> None:
        if self.dev.type == "cuda":
            self.torch.cuda.synchronize(self.dev)

    def reset_peak_memory(self) -> None:
        if self.dev.type == "cuda":
            self.torch.cuda.reset_peak_memory_stats(self.dev)

    def set_threads(self, n: int) -> None:
        self.torch.set_num_threads(n)

    def environment(self) -> dict:
        torch = self.torch
        return {"version": torch.__version__, "cuda": torch.version.cuda, "device": self.device(),
                "num_threads": torch.get_num_threads(),
                "num_interop_threads": torch.get_num_interop_threads(),
                "mkldnn": torch.backends.mkldnn.is_available(),
                "mkl": torch.backends.mkl.is_available(),
                "config": torch.__config__.show(),
                "parallel_info": torch.__config__.parallel_info()}

    def lm_decoder(self, spec, seed: int):
        """Fresh-cache greedy decoders over the spec's initial weights (as torch_models.generate)."""
        from torch_models.generate import decoder
        model = self.models.build_model(spec, seed).to(self.dev).eval()
        return lambda: decoder(model, self.dev)

    def chunk_runner(self, model):
        from torch_models.separate import chunk_runner
        return chunk_runner(model, self.dev)

    def stream_session(self, model):
        from torch_models.stream import StreamSession
        return StreamSession(model.to(self.dev).eval(), self.dev)


BACKENDS = {"mlx": MLXBackend, "torch": TorchBackend}
