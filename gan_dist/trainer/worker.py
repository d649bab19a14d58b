"""One worker's run state and its interval hooks: data, restore, logging, saving,
rollback and the end of the run. The loop (`trainer.loop`) calls these hooks; the step
itself is `trainer.step.train_step`.

The same Worker runs inside a Ray Train worker and in-process without Ray; what
differs is handed in: where checkpoints are committed (`sink`) and where progress
goes (`reporter`: the run's hub, or a forwarder to it).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

import torch

from gan_dist import checkpoint as ckpt
from gan_dist.config import Config, first_line
from gan_dist.data.sources import resolve_source
from gan_dist.data.stream import RankStream
from gan_dist.evaluate import evaluate_generator
from gan_dist.losses import d_interval_stats
from gan_dist.monitor.monitor import Action, build_monitor
from gan_dist.plan import data_shape, make_plan
from gan_dist.quality.features import Ranks
from gan_dist.quality.metrics import inception_metrics, n_label
from gan_dist.results import DataCounts, WorkerResult, describe
from gan_dist.rundir import HISTORY_FILE, history_bytes, last_logged, write_atomic
from gan_dist.runtime import init_runtime, rng_state, seed_everything, set_rng_state
from gan_dist.trainer import preempt
from gan_dist.trainer.checkpointing import Checkpointer, Sink, Snapshot, cpu_copy
from gan_dist.trainer.ema import sampling_generator
from gan_dist.trainer.meter import Meter, PendingRow
from gan_dist.trainer.prefetch import DevicePrefetcher, to_device
from gan_dist.trainer.probes import Probes
from gan_dist.trainer.state import TrainState, build_state, fingerprint, noise_seed, resize_seed
from gan_dist.trainer.step import build_step_context


# A periodic eval's keys in a history row (the Inception metrics at eval.every_n samples).
INCEPTION_ROW_KEYS = ("fid", "kid", "kid_std", "precision", "recall")


class Reporter(Protocol):
    """Where rank 0 sends progress: the run's hub (gan_dist.monitor.hub.RunHub) or its proxy."""

    def started(self, world_size: int, step: int) -> None: ...
    def progress(self, row: dict) -> None: ...
    def alert(self, event: dict) -> None: ...
    def first_step(self) -> None: ...
    def samples(self, step: int, png: bytes) -> None: ...
    def finished(self, result: WorkerResult) -> None: ...


class Worker:
    """The state of one worker's run and its interval hooks."""

    def __init__(self, cfg: Config, run_dir: Path, sink: Sink, reporter: Reporter):
        self.cfg, self.run_dir, self.sink, self.reporter = cfg, run_dir, sink, reporter
        perf = cfg.perf
        self.rt = init_runtime(perf.torch_threads, cfg.train.mixed_precision, perf.ddp_bucket_cap_mb,
                               perf.gradient_as_bucket_view)
        self.index = resolve_source(cfg.data.source, cfg.data.cache_dir)
        self.plan = make_plan(cfg, self.index, self.rt.world_size)
        # Each read is one micro-batch (the plan's split of the global batch: gan_dist.batching).
        self.stream = RankStream(self.index, self.rt.rank, self.rt.world_size, self.plan.micro_batch,
                                 cfg.seed, cfg.data.shuffle_window, num_workers=cfg.data.num_workers,
                                 max_corrupt_fraction=cfg.data.max_corrupt_fraction,
                                 verify=cfg.data.verify_checksums)
        self.prefetch = (DevicePrefetcher(self.stream, self.rt.device)
                         if perf.prefetch and self.rt.device.type == "cuda" else None)
        self.shape = data_shape(self.index.meta, cfg.model)
        self.st: TrainState = build_state(cfg, self.shape, self.rt)
        self.ctx = build_step_context(cfg, self.plan.micro_batch, self.rt.device, self.plan.accumulation)
        self.last_real: torch.Tensor | None = None
        self._sampled: tuple[int, torch.nn.Module] | None = None  # (step, G_ema as sampled): sampled_G
        self.checkpointer = Checkpointer(sink, run_dir, self.rt, cfg.checkpoint.every_minutes)
        self.config_yaml = cfg.to_yaml().encode()  # stored in every checkpoint
        self.monitor = build_monitor(cfg, self.index, self.rt)
        # A fixed noise set, the same on every rank, for the collapse signals and sample grids.
        self.probes = Probes(self.ctx.task, self.shape.num_classes, cfg.model.z_dim, cfg.model.sr_scale, cfg.seed,
                             self.monitor.probe_size, self.rt.device)

    # Data -----------------------------------------------------------------------

    def next_real(self) -> dict[str, torch.Tensor]:
        with preempt.interruptible():  # a stalled read must not keep a stop request waiting
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

    def resume(self, folder: Path | None) -> None:
        """Restore `folder` (the sink's latest checkpoint) or, should it not load, the newest
        older one that does (collective: every rank tries the same checkpoints, and they
        agree on each outcome). A failed load may have changed part of the state; the next
        attempt overwrites all of it, so the run never goes on from a half-loaded state. If
        none loads, the run fails rather than start afresh over a run that has checkpoints."""
        fresh = self.rank_state()  # what this rank starts with when no rank state is restored
        # Collective: rank 0's choice for every rank. Each rank's sink looked by itself, and a
        # checkpoint may have been committed between their looks.
        folder = self.rt.all_gather_object(folder)[0]
        first_error: str | None = None
        while folder is not None:
            error = self._try_restore(folder, fresh)
            # Collective: did any rank fail? Then every rank tries an older checkpoint.
            if not self.rt.reduce_max_int(int(error is not None)):
                if first_error is not None:
                    self.rt.print0(f"resumed from {folder.name}, an older checkpoint: the newest did not load "
                                   f"({first_error})")
                return
            first_error = first_error or error or "another rank could not load it"
            self.sink.fallbacks += 1
            step = ckpt.checkpoint_step(folder)
            older = ckpt.find_latest(self.run_dir, before=step) if step is not None else None
            folder = self.rt.all_gather_object(older)[0]  # collective: rank 0's choice for all
        if first_error is not None:
            raise ckpt.CheckpointError(f"no checkpoint of {self.run_dir} loads (the newest: {first_error}); "
                                       f"move the damaged ones away to start the run afresh")

    def _try_restore(self, folder: Path, fresh: dict) -> str | None:
        """Restore `folder`; why it failed (after putting back this rank's fresh state), or None."""
        try:
            self.restore(folder)
            return None
        except Exception as exc:  # whatever a damaged checkpoint raises: the caller falls back
            self.set_rank_state(fresh)
            if isinstance(exc, ckpt.CheckpointError):
                return str(exc)
            return f"{folder}: does not load ({type(exc).__name__}: {first_line(exc) or 'no message'})"

    def restore(self, folder: Path) -> None:
        """Load checkpoint `folder` into this worker. Everything is read and checked first
        (manifests, checksums, the stored config, the keys of the state), so a damaged
        checkpoint usually fails before anything changes; a load that still fails half-way
        (weights of the wrong shape) raises, and `resume` then loads another one whole."""
        self._sampled = None  # G_ema changes without a step (a rollback may return to a step seen)
        head = ckpt.verify(folder)
        ckpt.read_config(folder)  # a checkpoint whose config does not load is damaged
        adopted = ckpt.read_adoption(folder)  # copied from another member of a gan-dist tune population
        shared = ckpt.load_shared(folder)
        if int(shared["step"]) != head["step"]:
            raise ckpt.CheckpointError(f"{folder}: state.pt is at step {shared['step']}, its manifest says "
                                       f"{head['step']}")
        same_world = head["world_size"] == self.rt.world_size
        # At another world size (an elastic resize, a resume elsewhere) every old rank's state is
        # read: the data cursors together give the pass's global position.
        rank_states = ([ckpt.load_rank(folder, self.rt.rank)] if same_world
                       else [ckpt.load_rank(folder, r) for r in range(head["world_size"])])
        self.st.load_shared_state_dict(shared)
        self.monitor.load_state_dict(shared.get("monitor", {}))
        self.rt.load_scaler_state(shared.get("scaler", {}))
        if same_world:
            self.set_rank_state(rank_states[0])
        else:
            self.set_resized_rank_state(rank_states, head["world_size"])
        if adopted is not None:
            self.reseed(adopted["draw"])
        if self.prefetch is not None:
            self.prefetch.reset()
        self.rt.print0(f"resumed from {folder.name} at step {self.st.step}")

    def rank_state(self) -> dict:
        """This rank's RNG states, noise generator and data cursor (a checkpoint's rank file)."""
        return {"rng": rng_state(), "noise": self.st.noise.get_state(), "data": self.data_state()}

    def set_rank_state(self, state: dict) -> None:
        set_rng_state(state["rng"])
        self.st.noise.set_state(state["noise"])
        self.stream.load_state_dict(state["data"])

    def set_resized_rank_state(self, old: list[dict], old_world_size: int) -> None:
        """This rank's state from the rank states of a checkpoint written at another world size.
        A rank that existed there keeps its random streams (global RNGs and z's generator); a
        new rank starts streams of its own, drawn from (seed, rank, step) so that a rerun is
        the same. The data stream continues the pass at the old ranks' global position, split
        over the new ranks (RankStream.resized_state). The global batch, the schedules and
        every shared state (weights, optimizers, G_ema, step) are unchanged by a resize."""
        rank, st = self.rt.rank, self.st
        if rank < len(old):
            set_rng_state(old[rank]["rng"])
            st.noise.set_state(old[rank]["noise"])
        else:
            seed = resize_seed(self.cfg.seed, rank, st.step)
            seed_everything(seed + 1)  # the global streams apart from z's
            st.noise.manual_seed(seed)
        self.stream.load_state_dict(self.stream.resized_state([state["data"] for state in old]))
        cursor = self.stream.cursor
        self.rt.print0(f"resized: checkpoint of {old_world_size} rank(s) on {self.rt.world_size}; the data "
                       f"continues in epoch {cursor.epoch} (rank 0 at record {cursor.record} of "
                       f"{self.stream.slice_len})")

    def reseed(self, draw: int) -> None:
        """Random streams of this run's own (its seed, this rank, `draw`) in place of the restored
        ones: a gan-dist tune member that copied another member's state explores from it instead
        of repeating it. The data cursor stays, read in this run's own order (its seed)."""
        seed = noise_seed(self.cfg.seed, self.rt.rank, draw)
        seed_everything(seed + 1)  # the global streams apart from z's
        self.st.noise.manual_seed(seed)

    # Log intervals --------------------------------------------------------------

    def start_log(self, meter: Meter, extra: dict | None = None) -> PendingRow:
        """Start reducing this interval's statistics across ranks (collective) and copying them
        to the host; on a GPU neither waits for the stream, so the step loop can run on and
        read the row one step later (`finish_log`). `extra`: values already the same on every
        rank (a periodic eval's) that join the row as they are."""
        steps = meter.count
        means, seconds = meter.flush()
        means.update(d_interval_stats(means))
        probe = self.probes.probe(self.st.G, self.monitor.probe_size, self.last_real)
        means.update(self.monitor.signals(probe, self.last_real))
        names = sorted(means)
        device = self.rt.device
        local = torch.stack([means[n].float() for n in names] + [
            torch.tensor(self.stream.wait_seconds / max(seconds, 1e-9), device=device),
            torch.tensor(self.stream.wait_seconds / max(steps, 1), device=device),
            # Running totals, summed over ranks (a mean times the world size; exact below 2**24 in
            # float32): the row carries them so that a run that dies still reports its counts.
            torch.tensor(float(self.stream.samples_seen) * self.rt.world_size, device=device),
            torch.tensor(float(self.stream.corrupt_samples) * self.rt.world_size, device=device),
            self.st.nonfinite.float()])  # the same on every rank: decided after the all-reduce
        self.stream.wait_seconds = 0.0
        saves = self.checkpointer
        host = {
            "step": self.st.step,
            "samples_per_second": self.plan.global_batch * self.plan.n_critic * steps / max(seconds, 1e-9),
            "checkpoint_blocked_seconds": saves.blocked_seconds[-1] if saves.blocked_seconds else 0.0,
            "checkpoint_write_seconds": saves.write_seconds[-1] if saves.write_seconds else 0.0,
            "extra": extra or {},
        }
        return PendingRow(names, self.rt.reduce_mean(local), host)

    def finish_log(self, pending: PendingRow) -> tuple[Action | None, list]:
        """The row of `start_log`: waits for its values, records it and runs the detectors;
        the action they call for (the same on every rank) and their events."""
        values = pending.read()
        row = {"step": pending.host["step"], **dict(zip(pending.names, values))}
        row["data_wait_fraction"], row["data_wait_seconds"] = values[-5:-3]
        row["samples_seen"], row["corrupt_samples"] = round(values[-3]), round(values[-2])
        row["samples_per_second"] = pending.host["samples_per_second"]
        row["nonfinite_steps"] = int(values[-1])
        row["checkpoint_blocked_seconds"] = pending.host["checkpoint_blocked_seconds"]
        row["checkpoint_write_seconds"] = pending.host["checkpoint_write_seconds"]
        row.update(pending.host["extra"])
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

    # Evals ----------------------------------------------------------------------

    def sampled_G(self) -> torch.nn.Module:
        """G_ema as it is sampled and evaluated (trainer.ema.sampling_generator): local to this
        rank, the same on every rank; made once per step (the end of a run evaluates, scores the
        classes and draws the grid from the same G_ema)."""
        if self._sampled is None or self._sampled[0] != self.st.step:
            self._sampled = (self.st.step, sampling_generator(self.st.G_ema, self.cfg, self.ctx.task,
                                                              self.shape.num_classes))
        return self._sampled[1]

    def inception_eval(self, n: int) -> dict:
        """The Inception metrics of G_ema against the data's first n images: collective, every
        rank generating and embedding its share; the same dict on every rank. It draws from its
        own seeded generators and reads the data through a stream of its own, so training's RNG
        streams and data cursor are untouched (a run with evals ends as one without)."""
        cfg = self.cfg
        classes = self.shape.num_classes if self.ctx.task == "conditional" else 0
        result = inception_metrics(self.sampled_G(), cfg.model.z_dim, classes, self.index, n, cfg.eval.metrics,
                                   seed=cfg.seed + 3, device=str(self.rt.device), cache_dir=cfg.data.cache_dir,
                                   sharding=Ranks(self.rt.rank, self.rt.world_size, self.rt.all_gather_object))
        return self.rt.all_gather_object(result)[0]  # collective: rank 0's result for every rank

    def periodic_eval(self, meter: Meter) -> dict:
        """`eval.every_steps`: the Inception metrics of G_ema for this step's history row
        (collective), under names without n (fid, kid, ...; `eval_n` says n). Its wall time is
        in the row and left out of the interval's throughput."""
        n = self.cfg.eval.every_n
        t0 = time.perf_counter()
        result = self.inception_eval(n)
        seconds = time.perf_counter() - t0
        meter.since += seconds
        label = n_label(n)
        row = {name: float(result[f"{name}{label}"]) for name in INCEPTION_ROW_KEYS if f"{name}{label}" in result}
        self.rt.print0(f"eval at step {self.st.step}: {describe({f'{k}{label}': v for k, v in row.items()})} "
                       f"({seconds:.0f} s)")
        return {**row, "eval_n": n, "eval_seconds": seconds}

    def write_samples(self) -> None:
        if self.rt.is_main_process:
            png = self.probes.grid_png(self.sampled_G(), self.last_real, self.index.meta, self.st.step, self.cfg.recipe)
            write_atomic(self.run_dir / "samples" / f"{ckpt.step_dir_name(self.st.step)}.png", png)
            self.reporter.samples(self.st.step, png)  # for TensorBoard: the hub does not wait to write it

    # Checkpoints ----------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """Phase 1 of a save (every rank; see trainer.checkpointing): snapshot the whole state in
        memory now, write it in the background; the loop commits it at a later step boundary."""
        self.checkpointer.commit()  # a previous save still in flight is finished first
        t0 = time.perf_counter()
        self.checkpointer.begin(self.snapshot(), blocked_since=t0)

    def at_phase_end(self) -> bool:
        """Whether the step just taken ended the SRResNet phase (schedule.srresnet_steps): its
        checkpoint is always saved and kept, for bench.superres to score."""
        steps = self.cfg.schedule.srresnet_steps
        return bool(steps) and self.st.step == steps

    def snapshot(self) -> Snapshot:
        """The whole adversarial state, copied to CPU (collective: buffers are synced first)."""
        st, rt, main = self.st, self.rt, self.rt.is_main_process
        rt.sync_buffers(st.G, st.G_ema, st.D)  # collective
        rank_state = cpu_copy(self.rank_state())
        shared = cpu_copy({**st.shared_state_dict(), "data_meta": self.index.meta,
                           "monitor": self.monitor.state_dict(), "scaler": rt.scaler_state()}) if main else None
        # healthy: no detector's condition held when it was taken (a rollback target; kept by pruning).
        metrics: dict[str, Any] = {"step": st.step, "healthy": int(not self.monitor.raised())}
        if self.at_phase_end():
            metrics["phase_end"] = 1  # kept by pruning
        if main:
            metrics.update({k: v for k, v in (st.history[-1] if st.history else {}).items() if k != "time"})
            best = self.cfg.checkpoint.keep_best_metric
            if best and best not in metrics and best not in INCEPTION_ROW_KEYS:
                metrics.update(self.evaluate())  # asked for: the one part that is not a snapshot
        return Snapshot(st.step, rank_state, shared, metrics, self.config_yaml)

    # Policies -------------------------------------------------------------------

    def rollback(self, event) -> bool:
        """Restore the newest checkpoint from before `event`'s onset, lower the learning rates and
        draw fresh noise (collective: every rank calls it at the same step). False when there is
        no such checkpoint."""
        self.checkpointer.commit()
        rt, st = self.rt, self.st
        target = ckpt.find_latest(self.run_dir, before=event.onset_step) if rt.is_main_process else None
        target = rt.all_gather_object(target)[0]  # collective: rank 0's choice for all
        if target is None:
            return False
        kept, lr_scale = self.monitor.state_dict(), st.lr_scale
        self.restore(Path(target))
        event.to_step = st.step
        self.monitor.rolled_back(kept)
        st.lr_scale = lr_scale * self.cfg.monitor.rollback_lr_factor
        st.noise.manual_seed(noise_seed(self.cfg.seed, rt.rank, draw=self.monitor.rollbacks))
        if rt.is_main_process:
            # The abandoned branch's checkpoints must not be resumed from after a crash.
            ckpt.set_aside_after(self.run_dir, st.step, f"rollback-{self.monitor.rollbacks}")
        rt.barrier()
        return True

    # End of the run -------------------------------------------------------------

    def finish(self, session_start_step: int, session_samples_start: int, train_seconds: float,
               evaluate: bool = True) -> WorkerResult | None:
        """Check that the replicas agree, count the data, evaluate (unless told not to: the
        same on every rank): rank 0's result (None on the other ranks). Collective."""
        st, rt = self.st, self.rt
        rt.sync_buffers(st.G, st.G_ema, st.D)  # collective
        # A super-resolution model's Inception metrics are the crop FID of eval.sr_photos, which
        # the run's end-of-run eval computes (gan_dist.evaluate); G makes no images from noise.
        generic = evaluate and self.cfg.eval.inception and self.ctx.task != "super_resolution"
        inception = self.inception_eval(self.cfg.eval.inception_n) if generic else {}
        data = self.data_state()
        # Collective: every rank's fingerprint and sample counts.
        gathered = rt.all_gather_object((fingerprint(st.G, st.D, st.G_ema), data["samples_seen"],
                                         session_samples_start, data["corrupt_samples"]))
        if not rt.is_main_process:
            return None
        result = WorkerResult(
            steps=st.step,
            world_size=rt.world_size,
            images_per_second=sum(g[1] - g[2] for g in gathered) / max(train_seconds, 1e-9),
            train_seconds=train_seconds,
            session_steps=st.step - session_start_step,
            final=last_logged(st.history),
            eval={**self.evaluate(), **inception} if evaluate else {},
            data=DataCounts(samples_seen=sum(g[1] for g in gathered), corrupt_samples=sum(g[3] for g in gathered)),
            nonfinite_steps=st.nonfinite_steps,
            alerts=self.monitor.events,
            rollbacks=self.monitor.rollbacks,
            fingerprint=gathered[0][0],
            rank_fingerprints=[g[0] for g in gathered],
            checkpoints=self.checkpointer.stats(),
        )
        write_atomic(self.run_dir / HISTORY_FILE, history_bytes(st.history))
        return result

    def evaluate(self) -> dict:
        return evaluate_generator(self.sampled_G(), self.cfg, self.index, self.rt.device)
