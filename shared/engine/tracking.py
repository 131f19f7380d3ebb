"""Experiment tracking (train.report_to): the rows of metrics.jsonl, mirrored as they are
written to TensorBoard, Weights & Biases and trackio. metrics.jsonl stays the source of
truth; a sink gets exactly its rows (every number but `step`, null values left out), plus,
after each evaluation, what the family's `eval_media` hook returns (shared/registry.py:
separators an excerpt of each stem, EchoStream its transcripts) where the sink can show it.

Each sink is an optional dependency, imported only when named, and none imports a framework:

    tensorboard  pip install 'workbench[tensorboard]'  RUN/tensorboard/ event files, written
                 with tensorboard's own EventFileWriter and protos (tensorboardX and
                 torch.utils.tensorboard both import torch); `tensorboard --logdir RUN`
    wandb        pip install 'workbench[wandb]'        offline unless WANDB_MODE is set:
                 RUN/wandb/, `wandb sync RUN/wandb/offline-run-*` uploads it
    trackio      pip install 'workbench[trackio]'      local: trackio's database (TRACKIO_DIR,
                 default ~/.cache/huggingface/trackio), `trackio show --project workbench`

A resumed run continues the same runs: RUN/tracking.json keeps the W&B run id and the trackio
run name; TensorBoard is told to drop what it holds after the resumed step (a SessionLog START
event there, as tensorboardX's purge_step writes), since those rows are logged again.
"""
from __future__ import annotations

import importlib
import io
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.errors import ConfigError

# sink -> (the module it needs, the pip extra that installs it)
SINKS = {"tensorboard": ("tensorboard.summary.writer.event_file_writer", "tensorboard"),
         "wandb": ("wandb", "wandb"),
         "trackio": ("trackio", "trackio")}
STATE_FILE = "tracking.json"          # in the run directory
PROJECT = "workbench"                 # W&B and trackio project, unless WANDB_PROJECT / TRACKIO_PROJECT


# ------------------------------------------------------------------ media from an evaluation
@dataclass(frozen=True)
class AudioClip:
    tag: str
    samples: np.ndarray       # (frames, channels) float32 in [-1, 1]
    sample_rate: int


@dataclass(frozen=True)
class TextTable:
    tag: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]

    def markdown(self) -> str:
        def cell(text) -> str:
            return str(text).replace("|", "\\|").replace("\n", " ") or " "
        lines = ["| " + " | ".join(map(cell, self.columns)) + " |",
                 "|" + "---|" * len(self.columns)]
        return "\n".join(lines + ["| " + " | ".join(map(cell, row)) + " |" for row in self.rows])


# ------------------------------------------------------------------ checks and rows
def check_installed(report_to) -> None:
    """Every sink named can be imported; else one ConfigError naming the pip extra. Called
    before a run creates or changes anything in its directory."""
    for name in report_to:
        module, extra = SINKS[name]
        try:
            importlib.import_module(module)
        except ImportError as e:
            others = ",".join(n for n in report_to if n != name)
            raise ConfigError(f"train.report_to names {name}, but it cannot be imported ({e}); "
                              f"install it with pip install 'workbench[{extra}]' (or pip install "
                              f"{extra}), or train without it: train.report_to=[{others}]") from None


def scalars(row: dict) -> dict[str, float]:
    """The numbers of a metrics row, `step` aside: what every sink plots."""
    return {k: float(v) for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def wav_bytes(clip: AudioClip) -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.clip(clip.samples, -1, 1), clip.sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


# ------------------------------------------------------------------ sinks
class TensorBoardSink:
    """Event files in RUN/tensorboard, read by TensorBoard (scalars, audio and text)."""
    shows_media = True

    def __init__(self, run_dir: Path, config: dict, state: dict, start_step: int):
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.event_pb2, self.summary_pb2 = event_pb2, summary_pb2
        self.writer = EventFileWriter(str(run_dir / "tensorboard"), flush_secs=10)
        # Rows after the resumed step are logged again: TensorBoard drops what earlier event
        # files hold from this step on (a fresh run: everything they hold).
        purge_from = start_step + 1 if start_step else 0
        self.writer.add_event(event_pb2.Event(
            wall_time=time.time(), step=purge_from,
            session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

    def _write(self, step: int, values: list) -> None:
        self.writer.add_event(self.event_pb2.Event(
            wall_time=time.time(), step=step, summary=self.summary_pb2.Summary(value=values)))

    def log(self, step: int, values: dict[str, float]) -> None:
        self._write(step, [self.summary_pb2.Summary.Value(tag=k, simple_value=v)
                           for k, v in values.items()])

    def log_media(self, step: int, items: list) -> None:
        from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2, types_pb2
        from tensorboard.plugins.text import metadata as text_metadata

        Summary = self.summary_pb2.Summary
        values = []
        for item in items:
            if isinstance(item, AudioClip):
                values.append(Summary.Value(tag=item.tag, audio=Summary.Audio(
                    sample_rate=float(item.sample_rate), num_channels=item.samples.shape[1],
                    length_frames=item.samples.shape[0], encoded_audio_string=wav_bytes(item),
                    content_type="audio/wav")))
            elif isinstance(item, TextTable):
                values.append(Summary.Value(
                    tag=item.tag, metadata=text_metadata.create_summary_metadata(item.tag, ""),
                    tensor=tensor_pb2.TensorProto(
                        dtype=types_pb2.DT_STRING, string_val=[item.markdown().encode()],
                        tensor_shape=tensor_shape_pb2.TensorShapeProto())))
        self._write(step, values)

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """A W&B run in RUN/wandb: offline unless the environment sets WANDB_MODE."""
    shows_media = True

    def __init__(self, run_dir: Path, config: dict, state: dict, start_step: int):
        import wandb

        self.wandb = wandb
        state.setdefault("wandb_id", secrets.token_hex(6))
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or PROJECT,
                              name=run_dir.name, id=state["wandb_id"], resume="allow",
                              dir=str(run_dir), config=config,
                              mode=None if os.environ.get("WANDB_MODE") else "offline")

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def log_media(self, step: int, items: list) -> None:
        media = {}
        for item in items:
            if isinstance(item, AudioClip):
                media[item.tag] = self.wandb.Audio(item.samples, sample_rate=item.sample_rate,
                                                   caption=item.tag)
            elif isinstance(item, TextTable):
                media[item.tag] = self.wandb.Table(columns=list(item.columns),
                                                   data=[list(r) for r in item.rows])
        self.run.log(media, step=step)

    def close(self) -> None:
        self.run.finish()


class TrackioSink:
    """A local trackio run (a Hugging Face Space only where TRACKIO_SPACE_ID says so)."""
    shows_media = True

    def __init__(self, run_dir: Path, config: dict, state: dict, start_step: int):
        import trackio

        self.trackio = trackio
        state.setdefault("trackio_run", f"{run_dir.name}-{secrets.token_hex(3)}")
        self.run = trackio.init(project=os.environ.get("TRACKIO_PROJECT") or PROJECT,
                                name=state["trackio_run"], config=config, resume="allow",
                                embed=False, auto_log_gpu=False, auto_log_cpu=False)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def log_media(self, step: int, items: list) -> None:
        media = {}
        for item in items:
            if isinstance(item, AudioClip):
                pcm = np.round(np.clip(item.samples, -1, 1) * 32767).astype(np.int16)  # what it stores
                media[item.tag] = self.trackio.Audio(pcm, caption=item.tag, sample_rate=item.sample_rate)
            elif isinstance(item, TextTable):
                media[item.tag] = self.trackio.Markdown(item.markdown())
        self.run.log(media, step=step)

    def close(self) -> None:
        self.run.finish()


SINK_CLASSES = {"tensorboard": TensorBoardSink, "wandb": WandbSink, "trackio": TrackioSink}


class Tracker:
    """The open sinks of a run (none: every call does nothing)."""

    def __init__(self, sinks=()):
        self.sinks = list(sinks)

    @classmethod
    def open(cls, report_to, run_dir: str | Path, config: dict, start_step: int) -> "Tracker":
        """Open the sinks of train.report_to for a run at `start_step` (0, or the resumed
        step), with RUN/tracking.json's run ids (written when a sink adds one)."""
        run_dir = Path(run_dir)
        path = run_dir / STATE_FILE
        state = json.loads(path.read_text()) if path.is_file() else {}
        before = dict(state)
        sinks = []
        try:
            for name in report_to:
                sinks.append(SINK_CLASSES[name](run_dir, config, state, start_step))
        except BaseException:
            cls(sinks).close()
            raise
        if state != before:
            run_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{STATE_FILE}.tmp")
            tmp.write_text(json.dumps(state, indent=1) + "\n")
            tmp.replace(path)
        return cls(sinks)

    @property
    def shows_media(self) -> bool:
        return any(sink.shows_media for sink in self.sinks)

    def log_row(self, row: dict) -> None:
        """One row of metrics.jsonl, as written."""
        values = scalars(row)
        if values:
            for sink in self.sinks:
                sink.log(int(row["step"]), values)

    def log_media(self, step: int, items: list) -> None:
        for sink in self.sinks:
            if sink.shows_media and items:
                sink.log_media(step, items)

    def close(self) -> None:
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            sink.close()
