"""TensorBoard event files for a run, under `<run>/tb/`, written by the run's hub.

What goes in (`tensorboard --logdir <run>/tb`, or the storage folder for every run):
- every history row's scalars, one tag per field, grouped by concern (`loss/`, `D/`,
  `gradients/`, `collapse/`, `throughput/`, `checkpoint/`, `quality/`, `alerts/`): TensorBoard
  shows a section per group;
- the sample grid of every sample interval (`samples`): the PNG the run wrote, as it is
  (caption band, a conditional G's class of each row), described by its text chunks;
- the detectors' events (`alerts`) and the rollbacks (`rollbacks`) as text at their step;
- the resolved config as hparams, and as YAML (`config`) at step 0.

The hub's calls only put an item on a queue; a thread of this log's own writes the events,
so nothing that trains ever waits for a file (without Ray the hub lives in the training
process; under Ray it is an actor that rank 0 reports to without waiting). The thread also
imports torch.utils.tensorboard (and so torch) first: the hub's actor does not otherwise
load torch, and its calls must answer within seconds. A failure to write is one warning,
and the run goes on without TensorBoard.

Curves continue across sessions without duplicate or backwards steps. Every worker-group
session, and every rollback, starts a new event file whose first event is a SessionLog
START at the step the run continues from plus one (torch's `purge_step`): TensorBoard then
drops what earlier files hold from that step on, i.e. the steps the run is about to redo.
Both of TensorBoard's loaders honour it; the Python one takes the first START of a run for
its beginning, so the first file carries one too.
"""

from __future__ import annotations

import json
import math
import numbers
import queue
import re
import sys
import threading
import time
from collections import defaultdict
from io import BytesIO
from pathlib import Path

import yaml
from PIL import Image
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.util import tensor_util

from gan_dist.config import flatten
from gan_dist.visualize import png_text

TB_DIR = "tb"  # under the run directory

# A history row's fields by group; a field not listed goes by its name (GROUP_RULES: patterns), else to "other".
GROUPS = {
    "loss": ("loss_d", "loss_g", "gradient_penalty", "r1_penalty", "class_loss_d", "class_loss_g", "content_loss",
             "perceptual_loss"),
    "D": ("d_real", "d_fake", "d_acc_real", "d_acc_fake", "d_output_gap"),
    "gradients": ("grad_norm_d", "grad_norm_g", "nonfinite_steps"),
    "collapse": ("collapse_score", "diversity_ratio", "duplicate_rate", "mode_coverage_ratio", "high_quality_fraction"),
    "throughput": ("samples_per_second", "data_wait_fraction", "data_wait_seconds", "samples_seen", "corrupt_samples"),
    "checkpoint": ("checkpoint_blocked_seconds", "checkpoint_write_seconds"),
    "quality": ("fid", "kid", "kid_std", "precision", "recall", "eval_n", "eval_seconds"),
    "alerts": ("rollbacks",),
}
GROUP_RULES = ((r"^alert_", "alerts"), (r"loss", "loss"), (r"penalty", "loss"), (r"^grad_norm", "gradients"),
               (r"^d_", "D"), (r"^lr_|_lr$|^lr$", "schedule"))
TAG_GROUP = {name: group for group, names in GROUPS.items() for name in names}
NOT_SCALARS = ("step", "time")
# The hparams table's metric columns: the last value of these scalar tags.
HPARAM_METRICS = ("loss/loss_d", "loss/loss_g", "D/d_acc_real", "D/d_acc_fake", "collapse/collapse_score",
                  "quality/fid", "quality/kid", "quality/precision", "quality/recall")


def scalar_tag(name: str) -> str:
    """A history field's TensorBoard tag, `group/name`."""
    group = TAG_GROUP.get(name) or next((g for pattern, g in GROUP_RULES if re.search(pattern, name)), "other")
    return f"{group}/{name}"


def hparam_values(config: dict) -> dict[str, int | float | str]:
    """The resolved config as flat hparams: numbers and strings as they are, anything else
    (lists, empty values) as its JSON text."""
    out: dict[str, int | float | str] = {}
    for key, value in flatten(config).items():
        out[key] = value if isinstance(value, (int, float, str)) else json.dumps(value)
    return out


def samples_description(text: dict[str, str]) -> str:
    """TensorBoard's description of the `samples` images, from a grid's text chunks: the
    recipe and, for a conditional G, the class of each row (what stays the same over a run;
    the caption band of each image has its step)."""
    out = "G_ema on fixed noise at each sample interval: the PNG the run wrote to samples/"
    if text.get("recipe"):
        out += f" (recipe {text['recipe']})"
    if text.get("rows"):
        out += f". Rows, one class each, from the top: {text['rows']}"
    return out


def alerts_markdown(events: list[dict]) -> str:
    """A table of detector events, one row each."""
    lines = ["| step | kind | since step | action | evidence | note |", "| --- | --- | --- | --- | --- | --- |"]
    for e in events:
        evidence = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                             for k, v in e.get("evidence", {}).items())
        lines.append(f"| {e['step']} | {e['kind']} | {e['onset_step']} | {e['action']} | {evidence} | "
                     f"{e.get('note', '')} |")
    return "\n".join(lines)


def rollback_markdown(event: dict, abandoned: list[dict]) -> str:
    """One rollback: what fired, where the run went back to, and the events of the steps it left."""
    text = (f"**Rollback {event.get('rollbacks', 0) + 1}** at step {event['step']}: {event['kind']} since step "
            f"{event['onset_step']}; restored the checkpoint of step {event['to_step']}, with lower learning "
            f"rates and fresh noise.")
    if abandoned:
        text += "\n\nEvents of the abandoned steps:\n\n" + alerts_markdown(abandoned)
    return text


class TensorBoardLog:
    """A run's TensorBoard log. Its methods only queue an item (they never wait for a file);
    `close` waits for what is queued to be written."""

    def __init__(self, log_dir: Path, config: dict, flush_seconds: float = 10.0):
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.cpu_seconds = 0.0  # the writer thread's CPU time: what the log costs the process
        self.error: str | None = None
        self.log_dir = Path(log_dir)
        self._thread = threading.Thread(target=self._run, args=(config, flush_seconds), name="gan-dist-tensorboard",
                                        daemon=True)
        self._thread.start()

    def session(self, start_step: int) -> None:
        """A worker-group session begins, restored at `start_step`."""
        self.queue.put(("session", start_step))

    def row(self, row: dict) -> None:
        self.queue.put(("row", row))

    def samples(self, step: int, png: bytes) -> None:
        self.queue.put(("samples", (step, png)))

    def alert(self, event: dict) -> None:
        self.queue.put(("alert", event))

    def close(self, timeout: float = 20.0) -> None:
        self.queue.put(None)
        self._thread.join(timeout)

    def _run(self, config: dict, flush_seconds: float) -> None:
        events = None
        try:
            events = _EventWriter(self.log_dir, config, flush_seconds)  # the thread's alone
        except Exception as exc:  # torch.utils.tensorboard does not import: the run goes on
            self._failed(exc)
        while (item := self.queue.get()) is not None:
            t0 = time.thread_time()
            if self.error is None:
                try:
                    events.handle(*item)
                    if self.queue.empty():
                        events.flush()
                except Exception as exc:  # whatever the disk or TensorBoard raise: the run goes on
                    self._failed(exc)
            self.cpu_seconds += time.thread_time() - t0
        t0 = time.thread_time()
        try:
            if events is not None:
                events.close()
        except Exception:  # already reported, or nothing left to lose
            pass
        self.cpu_seconds += time.thread_time() - t0

    def _failed(self, exc: Exception) -> None:
        self.error = f"{type(exc).__name__}: {exc}"
        print(f"gan-dist: warning: the TensorBoard log under {self.log_dir} stopped ({self.error})",
              file=sys.stderr, flush=True)


class _EventWriter:
    """The event files of one run, written in order. `floor` is the step the current branch
    continues from (a session's start, or a rollback's checkpoint): its events are after it."""

    def __init__(self, log_dir: Path, config: dict, flush_seconds: float):
        # Deferred on purpose, into the log's thread: torch.utils.tensorboard imports torch,
        # seconds to tens of seconds on a busy machine (see the module's docstring).
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.summary_writer, self.hparams = SummaryWriter, hparams
        self.log_dir, self.config, self.flush_seconds = log_dir, config, flush_seconds
        # The config goes once, into the run's first file (a resumed run's config is the same).
        self.first = not any(log_dir.glob("events.out.tfevents.*"))
        self.writer = None  # the SummaryWriter of the current file
        self.floor = 0
        self.last: dict[str, int] = {}  # the newest step of each kind of event (row, samples, alerts) on this branch
        self.alerts: dict[int, list[dict]] = defaultdict(list)  # this branch's events by step
        self.pending: list[dict] = []  # events not written yet: a rollback's come with others
        self.rollbacks: list[str] = []

    def handle(self, kind: str, payload) -> None:
        if kind == "alert":
            self.pending.append(payload)
            return
        self.write_alerts()  # the events reported since the last row (all of one step)
        if kind == "session":
            self.continue_from(payload, rewrite=True)
        elif kind == "row":
            self.write_row(payload)
        elif kind == "samples":
            self.write_samples(*payload)

    def open(self, floor: int):
        """A new event file whose START drops whatever earlier files hold after `floor`."""
        if self.writer is not None:
            self.writer.close()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.writer = self.summary_writer(str(self.log_dir), purge_step=floor + 1, flush_secs=self.flush_seconds)
        self.floor, self.last = floor, {}
        if self.first:
            self.first = False
            self.write_config()
        return self.writer

    def continue_from(self, step: int, rewrite: bool) -> None:
        """The run goes on from `step`. A restart (`rewrite`) redoes the same branch: its events
        after `step`, which the new file's START drops, are written again (the hub counts a
        replayed event once, so they do not come back)."""
        again = sorted((s, events) for s, events in self.alerts.items() if s > step) if rewrite else []
        self.open(step)
        for s, events in again:
            self.current(s, "alerts").add_text("alerts", alerts_markdown(events), s)

    def current(self, step: int, kind: str):
        """The writer for an event of `kind` at `step`: opened on first use, and a new file
        should the kind's steps go back without a session or rollback having said so (a
        second text at an alert's step is no reason: it adds to the first)."""
        if self.writer is None:
            self.open(max(step - 1, 0))
        elif step <= self.last.get(kind, self.floor) and not (kind == "alerts" and step == self.last.get(kind)):
            self.open(step - 1)
        self.last[kind] = step
        return self.writer

    def write_row(self, row: dict) -> None:
        step = int(row["step"])
        writer = self.current(step, "row")
        walltime = row.get("time")
        for name, value in row.items():
            if name not in NOT_SCALARS and isinstance(value, numbers.Real):
                writer.add_scalar(scalar_tag(name), float(value), step, walltime=walltime)

    def write_samples(self, step: int, png: bytes) -> None:
        writer = self.current(step, "samples")
        with Image.open(BytesIO(png)) as image:
            width, height = image.width, image.height
        # The image plugin's own format (a tensor of width, height and the encoded image, with
        # the plugin's metadata), not the legacy Summary.Image that torch's add_image writes:
        # TensorBoard's Rust data server drops a legacy image's description.
        metadata = image_metadata.create_summary_metadata("samples", samples_description(png_text(png)))
        tensor = tensor_util.make_tensor_proto([str(width).encode(), str(height).encode(), png])
        writer.file_writer.add_summary(Summary(value=[Summary.Value(tag="samples", metadata=metadata, tensor=tensor)]),
                                       step)

    def write_alerts(self) -> None:
        batch, self.pending = self.pending, []
        if not batch:
            return
        rollback = next((e for e in batch if e.get("action") == "rollback" and e.get("to_step") is not None), None)
        if rollback is not None:
            self.write_rollback(rollback, [e for e in batch if e is not rollback])
            return
        by_step: dict[int, list[dict]] = defaultdict(list)
        for event in batch:
            by_step[int(event["step"])].append(event)
        for step, events in sorted(by_step.items()):
            self.alerts[step].extend(events)
            self.current(step, "alerts").add_text("alerts", alerts_markdown(self.alerts[step]), step)

    def write_rollback(self, event: dict, others: list[dict]) -> None:
        """The run went back to the checkpoint of step `to_step`: a new file from there; the
        rollback's text (with every earlier one, which the new START may drop) at the first
        step of the new branch."""
        to_step = int(event["to_step"])
        abandoned = [e for s in sorted(self.alerts) if s > to_step for e in self.alerts[s]] + others
        for s in [s for s in self.alerts if s > to_step]:
            del self.alerts[s]
        self.rollbacks.append(rollback_markdown(event, abandoned))
        self.continue_from(to_step, rewrite=False)
        self.writer.add_text("rollbacks", "\n\n".join(self.rollbacks), to_step + 1)

    def write_config(self) -> None:
        values = hparam_values(self.config)
        for summary in self.hparams(values, {tag: math.nan for tag in HPARAM_METRICS}):
            self.writer.file_writer.add_summary(summary, 0)
        text = yaml.safe_dump(self.config, sort_keys=False)
        self.writer.add_text("config", "\n".join("    " + line for line in text.splitlines()), 0)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        self.write_alerts()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
