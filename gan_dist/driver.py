"""The driver's side of a run: `gan-dist train` (and `gan_dist.train`) after the config is
resolved. It decides where the workers run (Ray, or this process), prints the plan,
prepares the run directory, shows progress from the run's hub, and writes
`summary.json` whatever happens; a failure's traceback goes to `<run>/error.log`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from gan_dist import checkpoint as ckpt
from gan_dist.config import Config, ConfigError
from gan_dist.data.inspect import check_dataset
from gan_dist.data.sources import resolve_source
from gan_dist.monitor.hub import Hub, RunHub
from gan_dist.monitor.metrics import TARGETS_FILE, check_bindable
from gan_dist.monitor.tensorboard import TB_DIR
from gan_dist.plan import PlanError, check_elastic, make_plan
from gan_dist.results import HubSnapshot, RunResult, RunSummary, WorkerResult, describe, failure_line
from gan_dist.rundir import (CONFIG_FILE, SUMMARY_FILE, check_resume, check_writable, run_directory, write_atomic,
                             write_error_log, write_summary)
from gan_dist.trainer import preempt
from gan_dist.trainer.loop import train_worker


@dataclass
class Placement:
    """How many workers and what each gets."""

    workers: int  # a fixed group's size; an elastic group's MAX
    cpus_per_worker: float
    gpus_per_worker: float
    min_workers: int = 0  # an elastic group's MIN (run.workers MIN:MAX); 0 for a fixed group

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0

    @property
    def elastic(self) -> bool:
        return self.min_workers > 0

    def describe(self) -> str:
        gpu = f" + {self.gpus_per_worker:g} GPU" if self.use_gpu else ""
        count = f"elastic, {self.min_workers} to {self.workers}" if self.elastic else f"{self.workers}"
        return f"{count} worker(s), {self.cpus_per_worker:g} CPU{gpu} each"


def place(run_cfg, resources: dict[str, float], ceiling: dict[str, float] | None = None) -> Placement:
    """Resolve run.workers=auto and check the request against what the cluster has. An elastic
    group (run.workers MIN:MAX) waits for MIN to fit and grows as nodes join, so only its MAX is
    checked, against `ceiling`: the most the cluster can ever hold (a local Ray's own
    resources; a cluster's autoscaler limits), when known."""
    if run_cfg.elastic is not None:
        return place_elastic(run_cfg, ceiling)
    gpus = resources.get("GPU", 0)
    gpus_per_worker = run_cfg.gpus_per_worker
    workers = run_cfg.worker_count
    if workers is None:
        if gpus >= 1 and run_cfg.use_ray:
            workers, gpus_per_worker = int(gpus // (gpus_per_worker or 1)), gpus_per_worker or 1.0
        else:
            workers = 2 if run_cfg.use_ray else 1
    placement = Placement(workers, run_cfg.cpus_per_worker, gpus_per_worker)
    cpus = resources.get("CPU", 0)
    if workers * placement.cpus_per_worker > cpus:
        raise PlanError(f"{workers} workers x {placement.cpus_per_worker:g} CPU need "
                        f"{workers * placement.cpus_per_worker:g} CPUs, but the cluster has {cpus:g}")
    if workers * gpus_per_worker > gpus:
        raise PlanError(f"{workers} workers x {gpus_per_worker:g} GPU need {workers * gpus_per_worker:g} GPUs, "
                        f"but the cluster has {gpus:g}")
    return placement


def place_elastic(run_cfg, ceiling: dict[str, float] | None) -> Placement:
    low, high = run_cfg.elastic
    placement = Placement(high, run_cfg.cpus_per_worker, run_cfg.gpus_per_worker, min_workers=low)
    if ceiling is None:
        return placement
    for resource, per_worker in (("CPU", placement.cpus_per_worker), ("GPU", placement.gpus_per_worker)):
        if high * per_worker > ceiling.get(resource, 0):
            raise PlanError(f"run.workers {low}:{high}: {high} workers x {per_worker:g} {resource} need "
                            f"{high * per_worker:g} {resource}s, more than the cluster can ever hold "
                            f"({ceiling.get(resource, 0):g})")
    return placement


def local_resources() -> dict[str, float]:
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {"CPU": float(cpus), "GPU": float(torch.cuda.device_count())}


def _ray_session(address: str, resources: dict, dashboard: bool):
    # Deferred on purpose: Ray loads only for runs that use it (--no-ray runs, e.g. on a GPU
    # box without Ray, must not need it).
    from gan_dist.integrations.ray import RaySession

    return RaySession(address, resources, dashboard)


# A run, from resolved config to summary -------------------------------------------

def train(cfg: Config, dry_run: bool = False, verbose: bool = False) -> RunResult | None:
    """Validate, plan and (unless `dry_run`) train `cfg`, printing the config, the plan and
    progress. Bad input raises a ValueError (ConfigError, DataError, PlanError) before anything
    is written; a failure at run time is recorded in summary.json and error.log and returned."""
    cfg.run.name = cfg.run_name()
    check_no_exploit(cfg)
    # Inside a Ray Job (or with RAY_ADDRESS exported) the run joins that cluster.
    cfg.run.address = cfg.run.address or os.environ.get("RAY_ADDRESS", "")
    index = resolve_source(cfg.data.source, cfg.data.cache_dir)
    check_dataset(index)  # every shard there and a tar, big enough for its records: a read of 512 bytes each
    session = None
    try:
        if cfg.run.use_ray and cfg.run.address:
            session = _ray_session(cfg.run.address, {}, dashboard=False)
            resources, ceiling = session.resources(), session.resource_ceiling()
        else:
            resources = ceiling = local_resources()  # a local Ray never grows
        placement = place(cfg.run, resources, ceiling)
        if not placement.elastic:
            cfg.run.workers = str(placement.workers)
        cfg.run.gpus_per_worker = placement.gpus_per_worker
        on_gpu = placement.gpus_per_worker > 0 if cfg.run.use_ray else resources.get("GPU", 0) >= 1
        if cfg.train.mixed_precision == "fp16" and not on_gpu:
            raise PlanError("train.mixed_precision=fp16 needs GPU workers (its gradient scaler is a GPU feature; "
                            "Accelerate would train in fp32): use bf16 or no on CPU")
        plan = (check_elastic(cfg, index, placement.min_workers, placement.workers) if placement.elastic
                else make_plan(cfg, index, placement.workers))
        push_auth = pushgateway_auth(cfg.metrics) if cfg.metrics.pushgateway else None
        if cfg.metrics.enabled:
            check_bindable(metrics_host(cfg), cfg.metrics.port)  # the hub serves on this, the driver's, node
        run_dir = run_directory(cfg)
        check_writable(run_dir, f"run.storage {cfg.run.storage}")
        resume_step = check_resume(cfg, run_dir)

        print(cfg.to_yaml(), end="")
        print(f"--- plan: {placement.describe()}" + (" on Ray" if cfg.run.use_ray else " in this process"))
        lines = plan.lines()
        if placement.elastic:
            lines[0] += f" (elastic: {placement.min_workers} to {placement.workers}, the global batch kept at each size)"
        print("\n".join(lines))
        where = f"resuming {run_dir} at step {resume_step}" if resume_step is not None else f"new run {run_dir}"
        print(f"run directory     {where}", flush=True)
        if dry_run:
            print("dry run: config and data are valid; nothing was trained")
            return None

        if cfg.run.use_ray and session is None:
            session = _ray_session("", resources, dashboard=cfg.run.ray_dashboard)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(run_dir / CONFIG_FILE, cfg.to_yaml().encode())
        except OSError as exc:  # checked above (check_writable): the storage changed since
            raise ConfigError(f"run.storage {cfg.run.storage}: cannot write {run_dir} "
                              f"({exc.strerror or exc})") from None
        return run(cfg, run_dir, placement, session, verbose, push_auth)
    finally:
        if session is not None:
            session.close()


def run(cfg: Config, run_dir: Path, placement: Placement, session, verbose: bool = False,
        push_auth: tuple[str, str] | None = None) -> RunResult:
    """Train, show progress, and write summary.json whatever happens."""
    t0 = time.perf_counter()
    hub: Hub = session.start_hub(cfg.train.max_steps, cfg.metrics.enabled) if session is not None \
        else RunHub(cfg.train.max_steps, cfg.metrics.enabled)
    target = hub.serve_metrics(metrics_host(cfg), cfg.metrics.port, str(run_dir),
                               {"run": cfg.run.name, "recipe": cfg.recipe})
    if target:
        print(f"metrics           http://{target}/metrics (Prometheus file-SD: {run_dir / TARGETS_FILE})", flush=True)
    if cfg.metrics.tensorboard:
        hub.start_tensorboard(str(run_dir / TB_DIR), cfg.to_dict())
        print(f"tensorboard       tensorboard --logdir {run_dir / TB_DIR}", flush=True)
    status, result, error, error_log = "failed", None, None, None
    try:
        with ProgressDisplay(hub.snapshot, cfg.train.max_steps):
            if session is not None:
                with preempt.sigterm_passed_on(hub.request_stop):
                    result = session.fit(cfg, run_dir, placement, hub)
            else:
                with preempt.sigterm_requests_stop():
                    result = train_worker(cfg, run_dir, ckpt.LocalSink(run_dir, cfg.checkpoint), hub)
        status, error = outcome(cfg, result)
    except KeyboardInterrupt as exc:
        status, error = "stopped", str(exc) or "interrupted by the user"
    except preempt.Interrupted:
        latest = ckpt.find_latest(run_dir)
        start = f"{latest.name}" if latest is not None else "the start (no checkpoint yet)"
        status, error = "stopped", (f"SIGTERM while waiting for data: stopped without saving the step in progress; "
                                    f"run again with --name {cfg.run.name} to resume from {start}")
    except Exception as exc:  # a failure at run time: recorded, reported, exit 1
        error = failure_line(exc)
        error_log = write_error_log(run_dir, exc)
        if verbose:
            traceback.print_exception(exc, file=sys.stderr)
    finally:
        try:
            snap = hub.snapshot(0)
        except Exception:  # the hub may be gone with a failed run
            snap = None
        summary = RunSummary.build(status, result, snap, placement.workers, time.perf_counter() - t0, error)
        if error_log is not None:
            summary.error_log = str(error_log)
        summary_path = write_summary(run_dir, summary.to_dict())
        try:
            push_error = hub.close(cfg.metrics.pushgateway, cfg.run.name, push_auth)
        except Exception as exc:
            push_error = f"metrics hub: {exc}"
    print(f"{status}: {summary.steps} steps in {summary.wall_seconds:.1f} s, "
          f"{summary.images_per_second:,.0f} samples/s, world size {summary.world_size}, "
          f"restarts {summary.restarts}, alerts {len(summary.alerts)}, rollbacks {summary.rollbacks}")
    if summary.eval:
        print("eval: " + describe(summary.eval))
    if push_error:
        print(f"gan-dist: warning: {push_error}", file=sys.stderr)
    if error:
        where = [f"traceback in {error_log}"] if error_log else []
        if summary_path.name != SUMMARY_FILE:
            where.append(f"summary in {summary_path.name}: the completed run's {SUMMARY_FILE} is kept")
        print(f"gan-dist: run {status}: {error}" + (f" ({'; '.join(where)})" if where else ""), file=sys.stderr)
    print(f"run directory: {run_dir}")
    return RunResult(run_dir, summary)


def check_no_exploit(cfg: Config) -> None:
    """The exploit policy needs a population to copy a healthy member from: gan-dist tune."""
    for key in ("collapse", "d_overpower", "gradients", "divergence", "nonfinite"):
        if getattr(cfg.monitor, key) == "exploit":
            raise ConfigError(f"monitor.{key}=exploit replaces a member of a population (gan-dist tune) by a "
                              f"healthy one; a single run cannot: use rollback or stop")


def outcome(cfg: Config, result: WorkerResult | None) -> tuple[str, str | None]:
    """The status of a run that returned, and why it ended early if it did."""
    if result is None:
        return "failed", "the workers ended without a result"
    if result.preempted:
        return "stopped", (f"preempted (SIGTERM): saved at step {result.steps}; "
                           f"run again with --name {cfg.run.name} to resume")
    if result.stopped_by:
        event = result.stopped_by
        note = f" ({event['note']})" if event.get("note") else ""
        return "stopped", (f"stopped by the {event['kind']} detector at step {event['step']} (since step "
                           f"{event['onset_step']}){note}; saved at step {result.steps}")
    if result.steps < cfg.train.max_steps:
        return "stopped", (f"run.stop_at_step {cfg.run.stop_at_step}: saved at step {result.steps}; run again "
                           f"with --name {cfg.run.name} (and a later or no stop) to go on")
    return "completed", None


def metrics_host(cfg: Config) -> str:
    """Where the metrics endpoint listens: as configured, else loopback, unless the run joins a
    Ray cluster (Prometheus scrapes it from elsewhere). A --no-ray run with RAY_ADDRESS set stays
    on loopback."""
    return cfg.metrics.host or ("0.0.0.0" if cfg.run.use_ray and cfg.run.address else "127.0.0.1")


PUSHGATEWAY_AUTH_ENV = "GAN_DIST_PUSHGATEWAY_AUTH"


def pushgateway_auth(metrics_cfg) -> tuple[str, str] | None:
    """The Pushgateway's (user, password): from metrics.pushgateway_auth_file, else the
    environment; None without either. Read here, on the driver, and never printed."""
    if metrics_cfg.pushgateway_auth_file:
        path = Path(metrics_cfg.pushgateway_auth_file).expanduser()
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"metrics.pushgateway_auth_file {path}: {exc.strerror or exc}") from None
    else:
        text = os.environ.get(PUSHGATEWAY_AUTH_ENV, "").strip()
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise ConfigError("the Pushgateway credentials must read user:password "
                          f"(metrics.pushgateway_auth_file or ${PUSHGATEWAY_AUTH_ENV})")
    return user, password


# Progress ------------------------------------------------------------------------

class ProgressDisplay:
    """Polls the hub and shows progress: a bar on a terminal, else a line per log interval."""

    def __init__(self, snapshot: Callable[[int], HubSnapshot], max_steps: int, interactive: bool | None = None):
        self.snapshot, self.max_steps = snapshot, max_steps
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self._seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gan-dist-progress", daemon=True)
        self._bar = None

    def __enter__(self) -> "ProgressDisplay":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.poll()
        except Exception:  # the hub may be gone with a failed run
            pass
        if self._bar is not None:
            self._bar.close()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.poll()
            except Exception:  # the hub may be gone while the run shuts down
                pass

    def poll(self) -> None:
        snap = self.snapshot(self._seen)
        for row in snap.rows:
            self._show(row, snap.start_step)
        self._seen += len(snap.rows)

    def _show(self, row: dict, start_step: int) -> None:
        step = row["step"]
        loss_g = f"G {row.get('loss_g', float('nan')):.4f}"
        # No D step in the interval (SRGAN's SRResNet phase trains G on its content loss alone).
        trains_d = "loss_d" in row
        losses = f"loss D {row['loss_d']:.4f} {loss_g}" if trains_d else f"loss {loss_g} (no D step)"
        rate = f"{row['samples_per_second']:,.0f} samples/s"
        if self.interactive:
            if self._bar is None:
                self._bar = tqdm(total=self.max_steps, initial=start_step, unit="step", dynamic_ncols=True)
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix_str(f"{losses}, {rate}")
        else:
            accuracy = f"  D acc real {row.get('d_acc_real', 0):.2f} fake {row.get('d_acc_fake', 0):.2f}" if trains_d else ""
            print(f"step {step}/{self.max_steps}  {losses}{accuracy}  {rate}", flush=True)
