"""One worker's run: build, restore, step with interval hooks, finish.

The same function runs inside a Ray Train worker and in-process without Ray;
what differs is handed in: where checkpoints are committed (`sink`) and
where progress goes (`reporter`).
"""

from __future__ import annotations

import io
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from gan_dist import checkpoint as ckpt
from gan_dist.config import Config
from gan_dist.data.builtin import Mixture2D
from gan_dist.data.sources import resolve_source
from gan_dist.data.stream import RankStream
from gan_dist.evaluate import evaluate_generator, generate
from gan_dist.losses import d_interval_stats
from gan_dist.monitor.monitor import Action, build_monitor
from gan_dist.plan import data_shape, make_plan
from gan_dist.runtime import Runtime, init_runtime, rng_state, set_rng_state
from gan_dist.trainer import preempt
from gan_dist.trainer.prefetch import DevicePrefetcher, to_device
from gan_dist.trainer.state import TrainState, build_state, fingerprint, noise_seed
from gan_dist.trainer.step import build_step_context, downsample, train_step
from gan_dist.visualize import image_grid_png, scatter_png


class Sink(Protocol):
    def latest(self): ...
    fallbacks: int  # newer checkpoints found invalid and skipped on restore

    # True when commit() needs no collective of ours and may run in the writer thread.
    commits_in_background: bool

    def stage(self, rt: Runtime, step: int) -> Path: ...
    def commit(self, rt: Runtime, step: int, folder: Path, metrics: dict) -> None: ...


class Reporter(Protocol):
    def started(self, world_size: int, step: int) -> None: ...
    def progress(self, row: dict) -> None: ...
    def alert(self, event: dict) -> None: ...
    def first_step(self) -> None: ...
    def finished(self, result: dict) -> None: ...


FOLD_EVERY = 64  # steps whose statistics the Meter holds before summing them


@dataclass
class Meter:
    """Sums per-step statistics on the device; read once per interval.

    A step only hands over its scalars; every `FOLD_EVERY` steps, and at the
    flush, each statistic's scalars are stacked and summed: a few kernels per
    64 steps instead of a stack and an add every step (on a CPU each costs
    about as much as a small layer). A statistic's mean is over the steps that
    had it (R1 runs on some steps only)."""

    pending: list[dict[str, torch.Tensor]] = field(default_factory=list)
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    count: int = 0  # steps
    since: float = field(default_factory=time.perf_counter)

    def add(self, stats: dict[str, torch.Tensor]) -> None:
        self.pending.append(stats)
        self.count += 1
        if len(self.pending) >= FOLD_EVERY:
            self.fold()

    def fold(self) -> None:
        names = dict.fromkeys(name for stats in self.pending for name in stats)
        for name in names:
            values = [stats[name] for stats in self.pending if name in stats]
            total = torch.stack(values).sum(0)
            self.sums[name] = self.sums[name] + total if name in self.sums else total
            self.counts[name] = self.counts.get(name, 0) + len(values)
        self.pending = []

    def flush(self) -> tuple[dict[str, torch.Tensor], float]:
        self.fold()
        means = {name: total / self.counts[name] for name, total in self.sums.items()}
        seconds = time.perf_counter() - self.since
        self.sums, self.counts, self.count, self.since = {}, {}, 0, time.perf_counter()
        return means, seconds


class PendingRow:
    """A log interval's reduced statistics on their way to the host. On a GPU the copy goes to
    pinned memory without blocking and an event marks its end; reading waits for that event
    only, by which time the GPU is already running the next step."""

    def __init__(self, names: list[str], values: torch.Tensor, host: dict):
        self.names, self.host = names, host
        self.ready = None
        if values.device.type == "cuda":
            self.values = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            self.values.copy_(values, non_blocking=True)
            self.ready = torch.cuda.Event()
            self.ready.record()
        else:
            self.values = values

    def read(self) -> list[float]:
        if self.ready is not None:
            self.ready.synchronize()
        return self.values.tolist()


def reads_stats_late(cfg: Config, device: torch.device) -> bool:
    """Whether a log interval's row is read one step later (`train.async_stats`, on GPUs)."""
    return cfg.train.async_stats and device.type == "cuda"


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)


def history_bytes(rows: list[dict]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


def last_logged(rows: list[dict]) -> dict:
    """The values of the last log interval, without its step and timestamp (summary.json `final`)."""
    return {k: v for k, v in (rows[-1] if rows else {}).items() if k not in ("step", "time")}


def cpu_copy(obj):
    """A copy of a nested state whose tensors are cloned to CPU: the in-memory snapshot."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return obj


class PendingSave:
    """A checkpoint being serialized and written by a background thread."""

    def __init__(self, step: int, folder: Path, metrics: dict, write, blocked: float):
        self.step, self.folder, self.metrics, self.blocked = step, folder, metrics, blocked
        self.error: BaseException | None = None
        self.write_seconds = 0.0  # serializing and writing, off the step loop
        self.thread = threading.Thread(target=self._run, args=(write,), name=f"checkpoint-{step}", daemon=True)
        self.thread.start()

    def _run(self, write) -> None:
        t0 = time.perf_counter()
        try:
            write()
        except BaseException as exc:  # re-raised in the training thread by wait()
            self.error = exc
        self.write_seconds = time.perf_counter() - t0

    @property
    def busy(self) -> bool:
        return self.thread.is_alive()

    def wait(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error


class Worker:
    """The state of one worker's run and its interval hooks."""

    def __init__(self, cfg: Config, run_dir: Path, sink: Sink, reporter: Reporter):
        self.cfg, self.run_dir, self.sink, self.reporter = cfg, run_dir, sink, reporter
        self.rt = init_runtime(cfg.train.torch_threads, cfg.train.mixed_precision, cfg.train.ddp_bucket_cap_mb,
                               cfg.train.gradient_as_bucket_view)
        self.index = resolve_source(cfg.data.source, cfg.data.cache_dir)
        self.plan = make_plan(cfg, self.index, self.rt.world_size)
        self.stream = RankStream(self.index, self.rt.rank, self.rt.world_size, self.plan.batch_per_rank,
                                 cfg.seed, cfg.data.shuffle_window, num_workers=cfg.data.num_workers,
                                 max_corrupt_fraction=cfg.data.max_corrupt_fraction,
                                 verify=cfg.data.verify_checksums)
        self.prefetch = (DevicePrefetcher(self.stream, self.rt.device)
                         if cfg.train.prefetch and self.rt.device.type == "cuda" else None)
        self.shape = data_shape(self.index.meta, cfg.model)
        self.st: TrainState = build_state(cfg, self.shape, self.rt)
        self.ctx = build_step_context(cfg, self.plan.batch_per_rank, self.rt.device)
        self.last_real: torch.Tensor | None = None
        self.last_save = time.time()
        self.checkpoint_seconds: list[float] = []  # time the step loop was blocked per save
        self.checkpoint_write_seconds: list[float] = []  # background serialization and writing per save
        self.pending: PendingSave | None = None
        self.config_yaml = cfg.to_yaml().encode()  # stored in every checkpoint
        self.monitor = build_monitor(cfg, self.index, self.rt)
        # A fixed noise set, the same on every rank, for the collapse signals and sample grids.
        self.z_probe = torch.randn(max(self.monitor.probe_size, 64), cfg.model.z_dim,
                                   generator=torch.Generator().manual_seed(cfg.seed)).to(self.rt.device)

    # Data -----------------------------------------------------------------------

    def next_real(self) -> dict[str, torch.Tensor]:
        if self.prefetch is not None:
            batch = self.prefetch.next_batch()
        else:
            batch = to_device(self.stream.next_batch(), self.rt.device)
        self.last_real = batch["x"]
        return {"x": self.last_real, "y": batch.get("y") if self.shape.num_classes else None}

    def data_state(self) -> dict:
        """The data cursor and counts as of the batches trained on (a prefetched one is not)."""
        return self.prefetch.state_dict() if self.prefetch is not None else self.stream.state_dict()

    # Restore --------------------------------------------------------------------

    def restore(self, folder: Path) -> None:
        head = ckpt.verify(folder)
        shared = ckpt.load_shared(folder)
        self.st.load_shared_state_dict(shared)
        self.monitor.load_state_dict(shared.get("monitor", {}))
        self.rt.load_scaler_state(shared.get("scaler", {}))
        if head["world_size"] == self.rt.world_size:
            rank_state = ckpt.load_rank(folder, self.rt.rank)
            set_rng_state(rank_state["rng"])
            self.st.noise.set_state(rank_state["noise"])
            self.stream.load_state_dict(rank_state["data"])
        else:
            self.rt.print0(f"warning: checkpoint from world size {head['world_size']}, now "
                           f"{self.rt.world_size}: data streams restart at a new epoch")
            epoch = ckpt.load_rank(folder, 0)["data"]["cursor"]["epoch"] + 1
            self.stream.cursor.epoch = epoch
        if self.prefetch is not None:
            self.prefetch.reset()
        self.rt.print0(f"resumed from {folder.name} at step {self.st.step}")

    # Hooks ----------------------------------------------------------------------

    def log(self, meter: Meter) -> tuple[Action | None, list]:
        """Reduce this interval's statistics across ranks, record one history row and run the
        detectors on it; the action they call for (the same on every rank) and their events."""
        return self.finish_log(self.start_log(meter))

    def start_log(self, meter: Meter) -> PendingRow:
        """Start reducing this interval's statistics across ranks (collective) and copying them
        to the host; on a GPU neither waits for the stream, so the step loop can run on and
        read the row one step later (`finish_log`)."""
        steps = meter.count
        means, seconds = meter.flush()
        means.update(d_interval_stats(means))
        means.update(self.monitor.signals(self.probe(self.monitor.probe_size), self.last_real))
        names = sorted(means)
        device = self.rt.device
        local = torch.stack([means[n].float() for n in names] + [
            torch.tensor(self.stream.wait_seconds / max(seconds, 1e-9), device=device),
            torch.tensor(self.stream.wait_seconds / max(steps, 1), device=device),
            torch.tensor(float(self.stream.corrupt_samples) * self.rt.world_size, device=device),
            self.st.nonfinite.float()])  # the same on every rank: decided after the all-reduce
        self.stream.wait_seconds = 0.0
        host = {
            "step": self.st.step,
            "samples_per_second": self.plan.global_batch * self.plan.n_critic * steps / max(seconds, 1e-9),
            "checkpoint_blocked_seconds": self.checkpoint_seconds[-1] if self.checkpoint_seconds else 0.0,
            "checkpoint_write_seconds": self.checkpoint_write_seconds[-1] if self.checkpoint_write_seconds else 0.0,
        }
        return PendingRow(names, self.rt.reduce_mean(local), host)

    def finish_log(self, pending: PendingRow) -> tuple[Action | None, list]:
        """The row of `start_log`: waits for its values, records it and runs the detectors."""
        values = pending.read()
        row = {"step": pending.host["step"], **dict(zip(pending.names, values))}
        row["data_wait_fraction"], row["data_wait_seconds"], row["corrupt_samples"] = values[-4:-1]
        row["samples_per_second"] = pending.host["samples_per_second"]
        row["nonfinite_steps"] = int(values[-1])
        row["checkpoint_blocked_seconds"] = pending.host["checkpoint_blocked_seconds"]
        row["checkpoint_write_seconds"] = pending.host["checkpoint_write_seconds"]
        action, events = self.monitor.judge(row)
        # Collective: the detectors saw the same row on every rank; agree on the action anyway.
        action = Action(code) if (code := self.rt.reduce_max_int(int(action or 0))) else None
        row["time"] = time.time()
        self.st.history.append(row)
        if self.rt.is_main_process:
            self.reporter.progress(row)
        return action, events

    def report(self, events: list) -> None:
        """Record the detectors' events once the run has acted on them."""
        self.monitor.record(events)
        if not self.rt.is_main_process:
            return
        for event in events:
            note = f"; {event.note}" if event.note else ""
            print(f"alert at step {event.step}: {event.kind} since step {event.onset_step}, action {event.action} "
                  f"({describe(event.evidence)}){note}", flush=True)
            self.reporter.alert(event.to_dict())

    @torch.no_grad()
    def probe(self, n: int) -> torch.Tensor | None:
        """G's samples on the fixed probe inputs. G runs in training mode, as it trains; its
        BatchNorm running statistics are put back, so monitoring does not change the run."""
        if n == 0 or self.last_real is None:
            return None
        G = self.st.G
        buffers = [b.clone() for b in G.buffers()]
        fake = G(*self.probe_inputs(G, n))
        for b, saved in zip(G.buffers(), buffers):
            b.copy_(saved)
        return fake

    def probe_inputs(self, G, n: int = 256) -> tuple:
        """G's inputs on the fixed probe noise (with labels cycling through the classes,
        or the last real batch downsampled for super-resolution)."""
        if self.ctx.task == "super_resolution":
            return (downsample(self.last_real[:n], self.ctx.sr_scale),)
        z = self.z_probe[:n]
        if self.ctx.task == "conditional":
            return z, torch.arange(len(z), device=z.device) % self.shape.num_classes
        return (z,)

    def checkpoint_overdue(self) -> bool:
        """Whether the minutes since the last save call for one (collective: the same answer on all ranks)."""
        minutes = self.cfg.train.checkpoint_every_minutes
        if minutes <= 0:
            return False
        return self.rt.broadcast_flag(time.time() - self.last_save >= minutes * 60)

    def write_samples(self) -> None:
        if not self.rt.is_main_process:
            return
        path = self.run_dir / "samples" / f"{ckpt.step_dir_name(self.st.step)}.png"
        if self.index.meta["kind"] == "points":
            mixture = Mixture2D.from_meta(self.index.meta["name"], self.index.meta["mixture"])
            real, _ = mixture.sample(1000, np.random.default_rng(self.cfg.seed))
            fake = generate(self.st.G_ema, 1000, self.cfg.model.z_dim, self.cfg.seed, self.rt.device)
            write_atomic(path, scatter_png(real, fake))
            return
        with torch.no_grad():
            inputs = self.probe_inputs(self.st.G_ema, n=64)
            fake = self.st.G_ema(*inputs).float().cpu()
        if self.ctx.task == "super_resolution":
            # Rows of (low resolution, generated, real) triplets.
            lr_up = F.interpolate(inputs[0].float().cpu(), size=fake.shape[-2:], mode="nearest")
            fake = torch.stack([lr_up, fake, self.last_real[:len(fake)].float().cpu()], 1).flatten(0, 1)[:48]
        write_atomic(path, image_grid_png(fake.numpy(), columns=6 if self.ctx.task == "super_resolution" else 8))

    def save_checkpoint(self) -> None:
        """Snapshot the whole state in memory and write it in the background (all ranks).

        The step loop stalls only for the snapshot. The writer thread serializes
        and writes this rank's files and, where the sink allows (Ray's report is
        its own barrier, not one of our process group's), commits them too; the
        loop finishes the checkpoint at a later step boundary, once every rank's
        writer is done.
        """
        self.commit_pending()  # a previous save still in flight is finished first
        t0 = time.perf_counter()
        st, rt, main = self.st, self.rt, self.rt.is_main_process
        rt.sync_buffers(st.G, st.G_ema, st.D)  # collective
        rank_state = cpu_copy({"rng": rng_state(), "noise": st.noise.get_state(), "data": self.data_state()})
        shared = cpu_copy({**st.shared_state_dict(), "data_meta": self.index.meta,
                           "monitor": self.monitor.state_dict(), "scaler": rt.scaler_state()}) if main else None
        # healthy: no detector's condition held when it was taken (a rollback target; kept by pruning).
        metrics: dict[str, Any] = {"step": st.step, "healthy": int(not self.monitor.raised())}
        if main:
            metrics.update({k: v for k, v in (st.history[-1] if st.history else {}).items() if k != "time"})
            best = self.cfg.train.keep_best_metric
            if best and best not in metrics:
                metrics.update(self.evaluate())  # asked for: the one part that is not a snapshot
        folder = self.sink.stage(rt, st.step)
        step, rank, world, config = st.step, rt.rank, rt.world_size, self.config_yaml

        def write() -> None:
            files = {f"rank-{rank:05d}.pt": ckpt.to_bytes(rank_state)}
            if main:
                files["state.pt"] = ckpt.to_bytes(shared)
                files["config.yaml"] = config
                write_atomic(self.run_dir / "history.parquet", history_bytes(shared["history"]))
            ckpt.write_rank_files(folder, rank, world, step, files, metrics)
            if self.sink.commits_in_background:
                self.sink.commit(rt, step, folder, metrics)

        self.pending = PendingSave(step, folder, metrics, write, blocked=time.perf_counter() - t0)
        self.last_save = time.time()

    def commit_pending(self) -> None:
        """Wait for this rank's writer, then commit the pending checkpoint. Collective: every
        rank calls it at the same step (the loop decides from a reduced flag)."""
        if self.pending is None:
            return
        t0 = time.perf_counter()
        pending, self.pending = self.pending, None
        pending.wait()
        if not self.sink.commits_in_background:
            self.sink.commit(self.rt, pending.step, pending.folder, pending.metrics)
        self.checkpoint_seconds.append(pending.blocked + time.perf_counter() - t0)
        self.checkpoint_write_seconds.append(pending.write_seconds)

    # Policies -------------------------------------------------------------------

    def rollback(self, event) -> bool:
        """Restore the newest checkpoint from before `event`'s onset, lower the learning rates and
        draw fresh noise (collective: every rank calls it at the same step). False when there is
        no such checkpoint."""
        self.commit_pending()
        rt, st = self.rt, self.st
        target = ckpt.find_latest(self.run_dir, before=event.onset_step) if rt.is_main_process else None
        target = rt.all_gather_object(target)[0]  # collective: rank 0's choice for all
        if target is None:
            return False
        kept, lr_scale = self.monitor.state_dict(), st.lr_scale
        self.restore(Path(target))
        self.monitor.rolled_back(kept)
        st.lr_scale = lr_scale * self.cfg.monitor.rollback_lr_factor
        st.noise.manual_seed(noise_seed(self.cfg.seed, rt.rank, draw=self.monitor.rollbacks))
        if rt.is_main_process:
            # The abandoned branch's checkpoints must not be resumed from after a crash.
            ckpt.set_aside_after(self.run_dir, st.step, f"rollback-{self.monitor.rollbacks}")
        rt.barrier()
        return True

    # Finish ---------------------------------------------------------------------

    def finish(self, session_start_step: int, session_samples_start: int, train_seconds: float) -> dict[str, Any]:
        st, rt = self.st, self.rt
        rt.sync_buffers(st.G, st.G_ema, st.D)  # collective
        # Collective: every rank's fingerprint and sample counts, so rank 0 can check
        # that the replicas agree and count the data.
        data = self.data_state()
        gathered = rt.all_gather_object((fingerprint(st.G, st.D, st.G_ema), data["samples_seen"],
                                         session_samples_start, data["corrupt_samples"]))
        if not rt.is_main_process:
            return {}
        result: dict[str, Any] = {
            "steps": st.step,
            "world_size": rt.world_size,
            "images_per_second": sum(g[1] - g[2] for g in gathered) / max(train_seconds, 1e-9),
            "train_seconds": train_seconds,
            "session_steps": st.step - session_start_step,
            "final": last_logged(st.history),
            "eval": self.evaluate(),
            "data": {"samples_seen": sum(g[1] for g in gathered), "corrupt_samples": sum(g[3] for g in gathered)},
            "nonfinite_steps": st.nonfinite_steps,
            "alerts": self.monitor.events,
            "rollbacks": self.monitor.rollbacks,
            "fingerprint": gathered[0][0],
            "rank_fingerprints": [g[0] for g in gathered],
            "checkpoints": {"saved": len(self.checkpoint_seconds),
                            "blocked_seconds": self.checkpoint_seconds,
                            "write_seconds": self.checkpoint_write_seconds,
                            "fallbacks": self.sink.fallbacks},
        }
        write_atomic(self.run_dir / "history.parquet", history_bytes(st.history))
        return result

    def evaluate(self) -> dict:
        return evaluate_generator(self.st.G_ema, self.cfg, self.index, self.rt.device)


def train_worker(cfg: Config, run_dir: Path, sink: Sink, reporter: Reporter) -> dict[str, Any]:
    """Train until cfg.train.max_steps, resuming from the sink's latest checkpoint."""
    w = Worker(cfg, run_dir, sink, reporter)
    with sink.latest() as folder:
        if folder is not None:
            w.restore(Path(folder))
    st = w.st
    if w.rt.is_main_process:
        reporter.started(w.rt.world_size, st.step)
    start_step, samples_start = st.step, w.data_state()["samples_seen"]
    t0 = time.perf_counter()
    preempted, stopped_by = train_steps(w, cfg.train.max_steps)
    w.commit_pending()
    train_seconds = time.perf_counter() - t0
    result = w.finish(start_step, samples_start, train_seconds)
    if result:
        result["preempted"] = preempted
        result["stopped_by"] = stopped_by
    if w.rt.is_main_process:
        reporter.finished(result)
    w.stream.close()
    return result


def train_steps(w: Worker, until: int) -> tuple[bool, dict | None]:
    """Step to `until` with the interval hooks; whether a preemption stopped it (after a save),
    and the event of a detector that stopped it (after a save), if one did. Collective: every
    rank calls it with the same `until`. Benchmarks drive it in segments."""
    st, train, reporter = w.st, w.cfg.train, w.reporter
    start_step = st.step
    meter = Meter()
    late = reads_stats_late(w.cfg, w.rt.device)
    row: PendingRow | None = None  # the last interval's row, read one step later
    preempted, stopped_by = False, None
    while st.step < until:
        # Collective, overlapping the step: did any rank get a SIGTERM, is any rank
        # still writing the pending checkpoint?
        vote = w.rt.any_async(preempt.requested(), w.pending is not None and w.pending.busy)
        meter.add(train_step(st, w.rt, w.ctx, w.next_real))
        preempted, writing = vote()
        if w.pending is not None and not writing:
            w.commit_pending()
        if st.step == start_step + 1 and w.rt.is_main_process:
            reporter.first_step()
        last = st.step == train.max_steps
        logged = st.step % train.log_every == 0 or last or preempted
        save = (st.step % train.checkpoint_every == 0 or last or preempted
                or (logged and w.checkpoint_overdue()))
        action, events = w.finish_log(row) if row is not None else (None, [])
        row = None
        if logged:
            row = w.start_log(meter)
            # Read now when acting or saving (a checkpoint holds the history up to its step),
            # at the end of this call, or when not reading late at all.
            if not late or save or action or st.step + 1 >= until:
                now_action, now_events = w.finish_log(row)
                row, events = None, events + now_events
                action = max(action or 0, now_action or 0) or None
                action = Action(action) if action else None
        if action == Action.ROLLBACK:
            event = next(e for e in events if e.action == "rollback")
            if w.rollback(event):
                w.report(events)
                w.rt.print0(f"rolled back to step {st.step} (lr x{st.lr_scale:g}, fresh noise)")
                meter, row = Meter(), None
                continue
            event.action, action = "stop", Action.STOP
            event.note = f"no checkpoint from before step {event.onset_step} to roll back to"
        w.report(events)
        if action == Action.STOP:
            stopped_by = next(e for e in events if e.action == "stop").to_dict()
        if st.step % train.sample_every == 0 or last:
            w.write_samples()
        if save or stopped_by:
            w.save_checkpoint()
        if preempted:
            w.rt.print0(f"preempted: saved at step {st.step}, stopping")
            break
        if stopped_by:
            w.rt.print0(f"stopped by the {stopped_by['kind']} detector: saved at step {st.step}")
            break
    return preempted, stopped_by


def describe(values: dict) -> str:
    """`name value, ...` with floats to 4 significant digits: alert evidence, the eval line."""
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
