"""The training loop: restore, step with interval hooks, finish.

`train_worker` is what every worker runs, inside a Ray Train worker or in this
process without Ray. `train_steps` is the loop itself: one `train_step` at a
time, then the hooks the step count calls for, in this order:
1. the log interval: reduce the statistics across ranks and run the detectors
   (on GPUs the row is read one step late, so the host never waits); at
   `eval.every_steps` an Inception eval of G_ema first, into the same row;
2. the detectors' action: roll back (restore an earlier checkpoint), stop, or (a
   member of gan-dist tune) stop to be replaced by a copy of a healthy member;
3. the sample grid;
4. a checkpoint, in two phases (trainer.checkpointing): the snapshot here, the
   commit at a later step boundary once every rank's writer is done.
Every decision that all ranks must share (stop, save, roll back, commit) is
reduced first, so every rank takes the same branch.
"""

from __future__ import annotations

import time
from pathlib import Path

from gan_dist.config import Config
from gan_dist.monitor.monitor import Action
from gan_dist.results import WorkerResult
from gan_dist.trainer import preempt
from gan_dist.trainer.checkpointing import Sink
from gan_dist.trainer.meter import Meter, PendingRow, reads_stats_late
from gan_dist.trainer.step import train_step
from gan_dist.trainer.worker import Reporter, Worker


def train_worker(cfg: Config, run_dir: Path, sink: Sink, reporter: Reporter) -> WorkerResult | None:
    """Train until cfg.train.max_steps, resuming from the sink's latest checkpoint. Rank 0's
    result (None on the other ranks). A stop request that finds the run waiting for data
    raises preempt.Interrupted, with nothing saved beyond the last checkpoint."""
    with preempt.interruptible():  # reads the data's index (and, for class coverage, its images)
        w = Worker(cfg, run_dir, sink, reporter)
    try:
        with sink.latest() as folder:
            w.resume(Path(folder) if folder is not None else None)
        st = w.st
        if w.rt.is_main_process:
            reporter.started(w.rt.world_size, st.step)
        start_step, samples_start = st.step, w.data_state()["samples_seen"]
        t0 = time.perf_counter()
        preempted, stopped_by = train_steps(w, min(cfg.run.stop_at_step or cfg.train.max_steps,
                                                   cfg.train.max_steps))
    except preempt.Interrupted:
        # The step in progress is abandoned, never saved (a D update may be done and the G one
        # not). A save begun at an earlier step boundary holds a whole step: finish it. Only a
        # run without Ray, one rank, is interrupted, so the commit's barriers wait for no one.
        if w.rt.world_size == 1:
            w.checkpointer.commit()
        w.stream.close()
        raise
    w.checkpointer.commit()  # phase 2 of the last save
    # A preempted run saved and has seconds left (a pod's grace period): no end-of-run eval,
    # which the resumed run does at its end.
    result = w.finish(start_step, samples_start, time.perf_counter() - t0, evaluate=not preempted)
    if result is not None:
        result.preempted, result.stopped_by = preempted, stopped_by
        reporter.finished(result)
    w.stream.close()
    return result


def train_steps(w: Worker, until: int) -> tuple[bool, dict | None]:
    """Step to `until` with the interval hooks; whether a preemption stopped it (after a save),
    and the event of a detector that stopped it (after a save), if one did. Collective: every
    rank calls it with the same `until`. Benchmarks drive it in segments."""
    st, train, every, every_eval = w.st, w.cfg.train, w.cfg.checkpoint.every, w.cfg.eval.every_steps
    start_step = st.step
    meter = Meter()
    late = reads_stats_late(w.cfg.perf, w.rt.device)
    row: PendingRow | None = None  # the last interval's row, read one step later
    preempted, stopped_by = False, None
    while st.step < until:
        # Collective, overlapping the step: did any rank get a SIGTERM, is any rank
        # still writing the pending checkpoint?
        vote = w.rt.any_async(preempt.requested(), w.checkpointer.writing)
        meter.add(train_step(st, w.rt, w.ctx, w.next_real))
        preempted, writing = vote()
        if w.checkpointer.pending is not None and not writing:
            w.checkpointer.commit()  # phase 2 of a save: every rank's writer is done
        if st.step == start_step + 1 and w.rt.is_main_process:
            w.reporter.first_step()
        last = st.step == train.max_steps
        # run.stop_at_step: the end of this command's share of the run (a gan-dist tune interval).
        paused = st.step == w.cfg.run.stop_at_step
        eval_due = bool(every_eval) and st.step % every_eval == 0
        logged = st.step % train.log_every == 0 or last or paused or preempted or eval_due
        save = (st.step % every == 0 or last or paused or preempted or w.at_phase_end()
                or (logged and w.checkpointer.overdue()))

        # 1. The log interval, and the previous one's row if it was read late; a periodic eval
        #    of G_ema (collective) first, whose values join this step's row.
        action, events = w.finish_log(row) if row is not None else (None, [])
        row = None
        if logged:
            row = w.start_log(meter, w.periodic_eval(meter) if eval_due else None)
            # Read now when acting or saving (a checkpoint holds the history up to its step),
            # at an eval, at the end of this call, or when not reading late at all.
            if not late or save or action or eval_due or st.step + 1 >= until:
                now_action, now_events = w.finish_log(row)
                row, events = None, events + now_events
                action = max(action or 0, now_action or 0) or None
                action = Action(action) if action else None

        # 2. The detectors' action.
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
        if action in (Action.STOP, Action.EXPLOIT):
            stopped_by = next(e for e in events if e.action == action.name.lower()).to_dict()

        # 3. The sample grid.
        if st.step % train.sample_every == 0 or last:
            w.write_samples()

        # 4. A checkpoint: phase 1 now (snapshot, background write), phase 2 at a later step.
        if save or stopped_by:
            w.save_checkpoint()
        if preempted:
            w.rt.print0(f"preempted: saved at step {st.step}, stopping")
            break
        if stopped_by:
            w.rt.print0(f"stopped by the {stopped_by['kind']} detector: saved at step {st.step}")
            break
    return preempted, stopped_by
