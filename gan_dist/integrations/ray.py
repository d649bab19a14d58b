"""The one module that knows Ray.

The driver starts (or joins) Ray, creates the run's hub as an actor on its own
node (so it survives worker-group restarts), and runs a Ray Train
TorchTrainer whose workers call the same `train_worker` as a run without Ray.
The torch backend sets RANK/WORLD_SIZE/LOCAL_RANK and the process group; each
worker creates its own Accelerator. Checkpoints go through `ray.train.report`:
each rank hands in its own folder and Ray merges and commits them under
`<storage>/<name>/step-NNNNNN/`; after a restart `ray.train.get_checkpoint()`
gives the latest committed one back.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
import socket
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import ray
import ray.train
import psutil
import requests
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
from ray.train.v2._internal.execution.callback import ControllerCallback
from ray.train.v2._internal.execution.controller.state import ReschedulingState, ResizingState, RestartingState
from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME as RAY_CHECKPOINT_RECORD
from ray.train.v2._internal.constants import ENABLE_PREEMPTION_WATCHER_ENV_VAR
from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy
from ray.train.v2._internal.execution.scaling_policy.elastic import ElasticScalingPolicy
from ray.train.v2._internal.execution.scaling_policy.scaling_policy import NoopDecision
from ray.train.v2._internal.logging import patch_print
from ray.train.v2.api.exceptions import WorkerGroupError
from ray.train.v2.api.report_config import CheckpointUploadMode
from ray._private.state import state as ray_state
from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import get_or_create_autoscaling_coordinator
from ray.exceptions import AuthenticationError
from ray.job_submission import JobSubmissionClient
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from gan_dist.checkpoint import (CheckpointError, checkpoint_step, find_latest, newest_valid, prune, step_dir_name,
                                 step_dirs, verify)
from gan_dist.config import Config
from gan_dist.jobspec import JobSpec, SubmitError, first_line
from gan_dist.monitor.hub import RunHub
from gan_dist.results import HubSnapshot, WorkerResult, failure_line
from gan_dist.trainer import preempt
from gan_dist.trainer.loop import train_worker


class RaySink:
    """Checkpoints through Ray Train's report/get_checkpoint.

    Ray commits a checkpoint once every rank's folder is uploaded; we still
    verify it on load, and when the newest is damaged (a truncated upload, a
    bad disk) fall back to the newest good one in the run directory.
    """

    # ray.train.report synchronises through Ray's own actor, so the writer thread may call it
    # while the training thread goes on with its collectives.
    commits_in_background = True

    def __init__(self, run_dir: Path, checkpoint_cfg):
        self.run_dir, self.policy = run_dir, checkpoint_cfg
        self.fallbacks = 0

    @contextmanager
    def latest(self) -> Iterator[Path | None]:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None or not Path(checkpoint.path).exists() or self._newer_in_run_dir(Path(checkpoint.path)):
            # A new command on the run (Ray's record starts empty: see RaySession.fit), Ray's
            # latest set aside by a rollback, or checkpoints uploaded that Ray's controller had
            # not taken in when it restarted the group (it takes reports in at its next poll of
            # the workers, and a resize or a failure may come first: hundreds of steps on a
            # fast run): the run directory's newest valid checkpoint.
            found, skipped = newest_valid(self.run_dir)
            self.fallbacks += skipped
            yield found
            return
        with checkpoint.as_directory() as folder:
            try:
                verify(Path(folder))
                yield Path(folder)
                return
            except CheckpointError as exc:
                warnings.warn(f"newest checkpoint is damaged, using an older one: {exc}", stacklevel=2)
                self.fallbacks += 1
                older = find_latest(self.run_dir, exclude=Path(checkpoint.path))
        yield older

    def _newer_in_run_dir(self, ray_latest: Path) -> bool:
        step = checkpoint_step(ray_latest)
        return step is not None and any((found := checkpoint_step(folder)) is not None and found > step
                                        for folder in step_dirs(self.run_dir))

    def stage(self, rt, step: int) -> Path:
        """A local folder for this rank's files; Ray uploads and then deletes it."""
        return Path(tempfile.mkdtemp(prefix="gan-dist-ckpt-"))

    def commit(self, rt, step: int, folder: Path, metrics: dict) -> None:
        mode = CheckpointUploadMode.ASYNC if self.policy.async_upload else CheckpointUploadMode.SYNC
        # A barrier: every rank reports at the same steps. With ASYNC the upload
        # runs in Ray's background thread.
        ray.train.report(metrics if rt.is_main_process else {}, checkpoint=Checkpoint.from_directory(str(folder)),
                         checkpoint_dir_name=step_dir_name(step), checkpoint_upload_mode=mode,
                         delete_local_checkpoint_after_upload=True)
        if rt.is_main_process:
            policy = self.policy
            # An asynchronous upload of the newest may be in flight: always keep two.
            prune(self.run_dir, max(policy.keep, 2), policy.keep_best_metric, policy.keep_best_mode)


class RemoteHub:
    """The run's hub (a RunHub actor on the driver's node), with RunHub's methods: the driver's
    calls wait for their answer; rank 0's progress reports do not wait for the hub."""

    TIMEOUT_SECONDS = 30

    def __init__(self, actor):
        self.actor = actor

    def _get(self, ref):
        return ray.get(ref, timeout=self.TIMEOUT_SECONDS)

    # The driver's side (monitor.hub.Hub).
    def serve_metrics(self, host: str, port: int, run_dir: str, labels: dict[str, str]) -> str | None:
        return self._get(self.actor.serve_metrics.remote(host, port, run_dir, labels))

    def start_tensorboard(self, log_dir: str, config: dict) -> None:
        self._get(self.actor.start_tensorboard.remote(log_dir, config))

    def snapshot(self, since: int = 0) -> HubSnapshot:
        return self._get(self.actor.snapshot.remote(since))

    def close(self, pushgateway: str = "", run: str = "", auth: tuple[str, str] | None = None) -> str | None:
        return self._get(self.actor.close.remote(pushgateway, run, auth))

    def request_stop(self) -> None:
        self._get(self.actor.request_stop.remote())

    # Ray Train's controller's side (_RestartCauses).
    def note_restart(self, why: str) -> None:
        self.actor.note_restart.remote(why)

    # Rank 0's side (trainer.worker.Reporter).
    def started(self, world_size: int, step: int) -> None:
        self._get(self.actor.started.remote(world_size, step))

    def progress(self, row: dict) -> None:
        self.actor.progress.remote(row)

    def alert(self, event: dict) -> None:
        self.actor.alert.remote(event)

    def first_step(self) -> None:
        self.actor.first_step.remote()

    def samples(self, step: int, png: bytes) -> None:
        self.actor.samples.remote(step, png)

    def finished(self, result: WorkerResult) -> None:
        self._get(self.actor.finished.remote(result))

    def stop_requested(self) -> bool:
        return self._get(self.actor.stop_requested.remote())


class _RestartCauses(ControllerCallback):
    """Tells the run's hub why Ray Train's controller restarts the worker group: a failure (a
    worker or its node lost; an elastic group then restarts at the size that still fits), a
    group that did not start (its workers could not all be placed in time), or a resize to
    the resources it sees now (nodes added or gone). The hub pairs it with the next
    group's start, and records a resize when the world size changed (summary.json "resizes").
    Runs in the controller's process."""

    def __init__(self, hub: "RemoteHub"):
        self.hub = hub

    def after_controller_state_update(self, previous_state, current_state) -> None:
        if current_state is previous_state:
            return  # the controller waited in a state (told so by the scaling policy): nothing new
        try:
            self._note(current_state)
        except Exception as exc:  # Ray fails the run on a callback's error: a record is not worth that
            logging.getLogger("gan_dist").warning("could not tell the run's hub why it restarts: %s", first_line(exc))

    def _note(self, current_state) -> None:
        if isinstance(current_state, RestartingState):
            self.hub.note_restart(f"worker group failed: {_failure_reason(current_state.training_failed_error)}")
        elif isinstance(current_state, ReschedulingState):
            self.hub.note_restart(f"worker group did not start: {_failure_reason(current_state.training_failed_error)}")
        elif isinstance(current_state, ResizingState):
            self.hub.note_restart(f"resources changed: Ray Train resizes the group to "
                                  f"{current_state.scaling_decision.num_workers} workers")


def _failure_reason(error: Exception) -> str:
    """One line on why a worker group failed: a lost node when Ray says so, else the lowest
    failing rank's own error (its peers fail after it, in their collectives)."""
    failures = getattr(error, "worker_failures", None) or {}
    texts = [str(failures[rank]) for rank in sorted(failures)] or [str(error)]
    if any("node has died" in text or "node was terminated" in text for text in texts):
        return "a node was lost"
    return failure_line(error)[:200]


class _ElasticScaling(ElasticScalingPolicy):
    """Ray Train's elastic policy, except that a group (re)started after a failure is sized
    from the cluster as it is at that moment. Ray's policy sizes it from two views that can
    be older than the lost node's death: the autoscaling coordinator's, which it refreshes
    every 20 s (TICK_INTERVAL_S), and its own copy of the coordinator's answer, kept for
    GET_RESERVED_RESOURCES_INTERVAL_S (1 s) and last taken while the old group ran. Either
    one sized the group for the nodes before the loss; it then waited
    RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S (60 s) for a worker that could not be placed, and
    only then restarted at the size that fits. On 2026-12-06 that cost a minute in 7 of the 12
    node losses of six runs of tests/test_elastic.py's shrink test; with this policy, in none
    of 10 in five runs.

    A node that dies without a goodbye (its raylet killed, its machine gone) is still alive to
    Ray's control store (GCS) until its health checks have failed for a while, so even a
    fresh view counts it. Before it sizes a group after a stop, the policy therefore knocks at
    every node's raylet: while a node that GCS calls alive does not answer, it waits (up to
    SETTLE_SECONDS) for GCS to agree, and only then looks at the cluster. A hard-killed node
    of the shrink test cost 76 s to the first step on the nodes left without this; see
    docs/elastic.md for the figure with it."""

    # As long as Ray's own start timeout, which a group sized for a dead node waits out anyway.
    SETTLE_SECONDS = 60.0
    WAIT_SECONDS = 0.5  # between looks at GCS while it still lists a silent node

    def __init__(self, scaling_config: ScalingConfig, hub: "RemoteHub"):
        super().__init__(scaling_config)
        self.hub = hub
        self._stale = False
        self._settle_by: float | None = None  # since the first look after a stop: the wait's end
        self._silent: set[str] = set()  # nodes alive to GCS whose raylet did not answer
        self._silent_at_first = 0

    def after_controller_state_update(self, previous_state, current_state) -> None:
        if isinstance(current_state, (RestartingState, ReschedulingState, ResizingState)):
            self._stale = True  # a group stopped, or failed to start: the next one looks afresh

    def make_decision_for_non_running_worker_group(self):
        if self._stale:
            if self._waiting_for_gcs():
                # Ray's controller asks again at once when told to wait: pace it.
                time.sleep(self.WAIT_SECONDS)
                return NoopDecision()
            self._stale = False
            _refresh_cluster_view()
            self._latest_reserved_resources_query_time = float("-inf")
        return super().make_decision_for_non_running_worker_group()

    def _waiting_for_gcs(self) -> bool:
        """Whether a node that did not answer at the first look after the stop is still alive
        to GCS, within SETTLE_SECONDS of that look. The wait, if any, ends in the hub's record."""
        now = time.monotonic()
        if self._settle_by is None:
            self._settle_by = now + self.SETTLE_SECONDS
            self._silent = _ask_gcs(lambda: silent_nodes(ray.nodes()), set())
            self._silent_at_first = len(self._silent)
            if self._silent:
                logging.getLogger("gan_dist").warning(
                    "%d node(s) do not answer but Ray still counts them: waiting for Ray to mark them dead "
                    "before sizing the group", len(self._silent))
        if self._silent:
            self._silent &= _ask_gcs(lambda: {n["NodeID"] for n in ray.nodes() if n["Alive"]}, set())
            if self._silent and now < self._settle_by:
                return True
        if self._silent_at_first:
            nodes = "1 node" if self._silent_at_first == 1 else f"{self._silent_at_first} nodes"
            waited = f"{now - (self._settle_by - self.SETTLE_SECONDS):.0f} s"
            self.hub.note_restart(f"{nodes} did not answer: Ray still listed them after {waited}" if self._silent
                                  else f"{nodes} did not answer: waited {waited} for Ray to mark them dead")
        self._settle_by, self._silent, self._silent_at_first = None, set(), 0
        return False


def _ask_gcs(question, otherwise):
    """A look at Ray's node table for the policy: best effort, never failing the run."""
    try:
        return question()
    except Exception as exc:  # a Ray internal
        logging.getLogger("gan_dist").warning("could not read Ray's node table: %s", first_line(exc))
        return otherwise


def silent_nodes(nodes: list[dict], timeout: float = 2.0) -> set[str]:
    """The ids of the nodes that Ray lists as alive but whose raylet does not accept a
    connection within `timeout` seconds (refused at once when its process is gone; no answer
    when its machine is), all knocked at in parallel."""
    alive = [n for n in nodes if n.get("Alive")]

    def answers(node: dict) -> bool:
        try:
            with socket.create_connection((node["NodeManagerAddress"], int(node["NodeManagerPort"])), timeout):
                return True
        except (OSError, KeyError, ValueError):
            return False

    if not alive:
        return set()
    with ThreadPoolExecutor(len(alive)) as pool:
        return {n["NodeID"] for n, ok in zip(alive, pool.map(answers, alive)) if not ok}


def _refresh_cluster_view() -> None:
    """Have Ray's autoscaling coordinator look at the cluster's nodes now (`recompute=True`,
    the coordinator's own way to refresh on demand; asked for no requester, it only
    refreshes). Best effort: should it fail, Ray's own timing applies."""
    try:
        coordinator = get_or_create_autoscaling_coordinator()
        ray.get(coordinator.get_reserved_resources.remote("gan-dist-refresh", recompute=True), timeout=10)
    except Exception as exc:  # a Ray internal: never let it fail the run
        logging.getLogger("gan_dist").warning("could not refresh Ray's view of the cluster: %s", first_line(exc))


def _route_sigterm_to_preempt() -> None:
    """Make a SIGTERM to this worker ask the run to stop at the next step instead of killing it.

    The train function runs in a worker thread, which cannot install signal
    handlers. Ray's worker process handles SIGTERM in its main thread by calling
    `raise_sys_exit_with_custom_error_message`; we wrap that one call so that,
    while training, it records a preemption request; the loop then saves on
    every rank and returns, and Ray tears the workers down as usual.
    """
    import ray._private.worker as ray_worker

    original = ray_worker.raise_sys_exit_with_custom_error_message
    if getattr(original, "_gan_dist", False):
        return

    def on_exit_request(message: str, exit_code: int = 0):
        if "SIGTERM" in message and not preempt.requested():
            preempt.request()
            return
        return original(message, exit_code)

    on_exit_request._gan_dist = True
    ray_worker.raise_sys_exit_with_custom_error_message = on_exit_request


def _quiet_ray_train_logs() -> None:
    """Ray Train logs every report and upload at INFO on the worker console; progress is
    ours to show. Some of its modules name their logger by file path, outside `ray.train`."""
    from ray.train.v2._internal.execution import context, storage

    for logger in (logging.getLogger("ray.train"), context.logger, storage.logger):
        logger.setLevel(logging.WARNING)


def _unpatch_print() -> None:
    """Ray Train 2.60 replaces `print` in its workers by one that writes the line and also
    logs it to the root logger; both reach the driver's console, so every line a rank
    printed (evals, alerts) showed twice. The worker's lines are its own output: plain print."""
    builtins.print = patch_print._original_print


def _train_fn(config: dict) -> None:
    _quiet_ray_train_logs()
    _unpatch_print()
    preempt.reset()
    _route_sigterm_to_preempt()
    cfg = Config.from_dict(config["config"])
    run_dir = Path(config["run_dir"])
    hub = config["hub"]
    with _driver_stops_watched(hub, ray.train.get_context().get_world_rank() == 0):
        train_worker(cfg, run_dir, RaySink(run_dir, cfg.checkpoint), hub)


# How often rank 0 asks the hub whether the driver was told to stop.
STOP_POLL_SECONDS = 0.5


@contextmanager
def _driver_stops_watched(hub: "RemoteHub", rank0: bool) -> Iterator[None]:
    """On rank 0, a thread asks the hub every STOP_POLL_SECONDS whether the driver got a
    SIGTERM (driver.run passes it on) and, once it did, makes it this rank's preemption
    request: the loop's per-step vote then has every rank save at the same step and stop, as
    after a SIGTERM to a worker."""
    if not rank0:
        yield
        return
    done = threading.Event()

    def watch() -> None:
        while not done.wait(STOP_POLL_SECONDS):
            try:
                if hub.stop_requested():
                    preempt.request("SIGTERM to the driver")
                    return
            except Exception:  # the hub gone: the driver is ending the run
                return

    thread = threading.Thread(target=watch, name="gan-dist-stop-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()


@contextmanager
def local_cluster(nodes: int, cpus_per_node: int = 1, head_cpus: int = 0) -> Iterator[str]:
    """A Ray cluster on this machine (a head with `head_cpus` CPUs, by default none, and
    `nodes` more raylets), for rehearsals and benchmarks; yields its address and shuts it
    down afterwards."""
    cluster = RehearsalCluster(nodes, cpus_per_node, head_cpus)
    try:
        yield cluster.address
    finally:
        cluster.shutdown()


def train_workers(cluster) -> dict[int, list[psutil.Process]]:
    """The Ray Train worker processes that the raylets of `cluster` (a
    `ray.cluster_utils.Cluster`) started, by the pid of the raylet that started each: only
    those, since other Ray clusters (a test, a benchmark) may share the machine."""
    raylets = {info.process.pid for node in cluster.list_all_nodes()
               for info in node.all_processes.get("raylet", [])}
    found: dict[int, list[psutil.Process]] = {}
    for proc in psutil.process_iter(["cmdline"]):
        if not " ".join(proc.info["cmdline"] or []).startswith("ray::RayTrainWorker"):
            continue
        try:
            raylet = next((p.pid for p in proc.parents() if p.pid in raylets), None)
        except psutil.NoSuchProcess:
            continue  # ended while we looked
        if raylet is not None:
            found.setdefault(raylet, []).append(proc)
    return found


# How often Ray Train's controller looks at the workers (RaySession).
TRAIN_POLL_ENV, TRAIN_POLL_SECONDS = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5"


class RehearsalCluster:
    """A Ray cluster on this machine (a head with `head_cpus` CPUs, by default none, and
    `nodes` raylets) whose nodes a rehearsal removes for good and adds, as a cloud takes spot
    instances and gives new ones: for the fault and elastic benchmarks and tests. Create it,
    and add nodes, from the main thread (Ray installs a signal handler for each node); the run
    it serves goes in another thread."""

    def __init__(self, nodes: int, cpus_per_node: int = 1, head_cpus: int = 0):
        from ray.cluster_utils import Cluster

        # No dashboard: a dozen processes fewer starting with the head, which on a busy machine
        # is the difference between a cluster that starts and one that times out.
        self.cluster = Cluster(initialize_head=True,
                               head_node_args={"num_cpus": head_cpus, "include_dashboard": False})
        self.cpus_per_node = cpus_per_node
        self.nodes = [self.cluster.add_node(num_cpus=cpus_per_node) for _ in range(nodes)]
        self.cluster.wait_for_nodes()

    @property
    def address(self) -> str:
        return self.cluster.address

    def train_workers(self) -> dict[int, list[psutil.Process]]:
        """This cluster's Ray Train worker processes, by the pid of the raylet that started each."""
        return train_workers(self.cluster)

    def remove_a_worker_node(self, graceful: bool = True) -> float:
        """Remove, for good, a node that hosts a Ray Train worker; the time it went. Not
        `graceful`: its processes are SIGKILLed, so the node says no goodbye to Ray's control
        store, which learns of the loss only when its health checks fail (a crashed machine)."""
        hosting = self.train_workers()
        victim = next(n for n in self.nodes if n.all_processes["raylet"][0].process.pid in hosting)
        self.nodes.remove(victim)
        self.cluster.remove_node(victim, allow_graceful=graceful)
        return time.time()

    def add_node(self) -> float:
        """Add a node; the time it joined."""
        self.nodes.append(self.cluster.add_node(num_cpus=self.cpus_per_node))
        return time.time()

    def shutdown(self) -> None:
        self.cluster.shutdown()


class RaySession:
    """A connection to Ray (a local one started here, or a cluster at `address`)."""

    def __init__(self, address: str, local_resources: dict[str, float], dashboard: bool = False):
        """Join the cluster at `address`, or start a local Ray with `local_resources` (and
        Ray's dashboard if `dashboard`)."""
        self.address = address
        kwargs = dict(logging_level=logging.WARNING, log_to_driver=True)
        # Ray Train's controller looks at its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s
        # by default) and takes its steps between looks: a 30-step 2-worker ring8 run on a 2-core
        # CPU took 32-36 s with 2 s and 24-26 s with 0.2-0.5 s (2026-12-06). Ray Train passes the
        # driver's value on to the controller when the run starts; a user's own value stands.
        os.environ.setdefault(TRAIN_POLL_ENV, TRAIN_POLL_SECONDS)
        if address:
            # Ray Train's placement group cleaner asks the dashboard's state API: kept on a
            # cluster that runs one (see _Trainer).
            self.keep_pg_cleaner = bool(ray.init(address=address, **kwargs).dashboard_url)
        else:
            # Keep Ray's own chatter down and its temp files bounded for local runs.
            os.environ.setdefault("RAY_DEDUP_LOGS", "1")
            # address="local": a new Ray here, even if `ray start` left a cluster on this machine
            # (ray.init() with no address would join it, and then reject num_cpus).
            # On loopback: the local Ray's agents listen on 127.0.0.1, not on this machine's
            # address. (Its GCS and raylet gRPC servers listen on every interface whatever the
            # node address, Ray 2.60 having no setting for it; they take Ray's auth token.)
            ray.init(address="local", num_cpus=int(local_resources["CPU"]), num_gpus=int(local_resources["GPU"]),
                     include_dashboard=dashboard, _node_ip_address="127.0.0.1", **kwargs)
            self.keep_pg_cleaner = False  # this Ray ends with the command

    def resources(self) -> dict[str, float]:
        return {k: float(v) for k, v in ray.cluster_resources().items()}

    def resource_ceiling(self) -> dict[str, float] | None:
        """The most the cluster can ever hold: its autoscaler's limits (Ray Train checks a worker
        group against the same numbers), or None for a cluster without an autoscaler, whose
        nodes someone may still add by hand."""
        limits = ray_state.get_max_resources_from_cluster_config()
        return {k: float(v) for k, v in limits.items()} if limits else None

    def start_hub(self, max_steps: int, monitoring: bool) -> RemoteHub:
        """The run's hub (and metrics endpoint) as an actor on this, the driver's, node."""
        here = ray.get_runtime_context().get_node_id()
        actor = ray.remote(RunHub).options(
            num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False))
        return RemoteHub(actor.remote(max_steps, monitoring))

    def fit(self, cfg: Config, run_dir: Path, placement, hub: RemoteHub) -> WorkerResult | None:
        # Ray Train records the checkpoints reported to it and, on the next command with this
        # name, refuses to start once one of them is gone. Retention is ours (checkpoint.prune;
        # rollbacks set checkpoints aside), so that record goes stale in any run longer than
        # `keep_checkpoints` saves. The run directory is the record: forget Ray's, and the
        # workers resume from the newest valid checkpoint there (RaySink.latest).
        (run_dir / RAY_CHECKPOINT_RECORD).unlink(missing_ok=True)
        trainer = _Trainer(
            _train_fn,
            keep_pg_cleaner=self.keep_pg_cleaner,
            hub=hub,
            train_loop_config={"config": cfg.to_dict(), "run_dir": str(run_dir), "hub": hub},
            scaling_config=ScalingConfig(
                # Elastic: (MIN, MAX); Ray Train starts once MIN fit and restarts the whole group
                # at a new size when resources change (scaling_policy/elastic.py).
                num_workers=(placement.min_workers, placement.workers) if placement.elastic else placement.workers,
                elastic_resize_monitor_interval_s=cfg.run.resize_check_seconds,
                use_gpu=placement.use_gpu,
                resources_per_worker={"CPU": placement.cpus_per_worker,
                                      **({"GPU": placement.gpus_per_worker} if placement.use_gpu else {})},
            ),
            run_config=RunConfig(
                name=cfg.run.name,
                storage_path=str(run_dir.parent),
                failure_config=FailureConfig(max_failures=cfg.run.max_failures),
                callbacks=[_RestartCauses(hub)],
                # Retention (last k plus best) is ours: see checkpoint.prune.
                checkpoint_config=CheckpointConfig(num_to_keep=None),
                # Ray Train's per-report INFO lines would drown the run's own progress.
                logging_config=LoggingConfig(log_level="WARNING"),
            ),
        )
        with _preemption_watcher(enabled=bool(self.address)):
            result = trainer.fit()
        if result.error is not None:
            raise result.error
        return hub.snapshot(0).result

    def close(self) -> None:
        ray.shutdown()


class _Trainer(TorchTrainer):
    """Ray Train's TorchTrainer without the callbacks that start processes we do not need,
    each one more Python process importing Ray while the workers start:
    - the Ray Datasets callback, always: it starts a DatasetManager actor for every worker
      group, datasets or not, and that imports Ray Data (pandas, pyarrow). Each rank
      streams its own shards (gan_dist.data.stream) and passes no datasets;
    - unless `keep_pg_cleaner`, the placement group cleaner: an actor that removes the worker
      group's placement group should the controller die without doing so, asking Ray's state
      API (the dashboard) every second. A local Ray ends with this command, so it needs none;
      on a cluster without a dashboard it could not work and would log a warning every
      second."""

    def __init__(self, *args, keep_pg_cleaner: bool, hub: "RemoteHub", **kwargs):
        super().__init__(*args, **kwargs)
        self.keep_pg_cleaner = keep_pg_cleaner
        self.hub = hub

    def _create_default_callbacks(self):
        unwanted = (DatasetsCallback,) if self.keep_pg_cleaner else (DatasetsCallback, PlacementGroupCleanerCallback)
        return [c for c in super()._create_default_callbacks() if not isinstance(c, unwanted)]

    def _initialize_and_run_controller(self, **controller_init_kwargs):
        controller_init_kwargs["failure_policy"] = _FailurePolicy(self.run_config.failure_config)
        if isinstance(controller_init_kwargs.get("scaling_policy"), ElasticScalingPolicy):
            controller_init_kwargs["scaling_policy"] = _ElasticScaling(self.scaling_config, self.hub)
        return super()._initialize_and_run_controller(**controller_init_kwargs)


# Errors that come back on a restart from the same checkpoint: bad input found by a worker
# (our one-line errors are ValueErrors) and bugs. A damaged checkpoint is not one of them:
# the next attempt falls back to an older one (RaySink.latest).
REPEATING_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, NotImplementedError,
                    AssertionError, ZeroDivisionError)


def repeats_on_restart(error: BaseException) -> bool:
    return isinstance(error, REPEATING_ERRORS) and not isinstance(error, CheckpointError)


class _FailurePolicy(DefaultFailurePolicy):
    """Ray Train's policy (restart the group up to `run.max_failures` times), except for a
    failure that would only happen again: when every failed rank raised an error that a restart
    from the same checkpoint meets again (an end-of-run evaluation refused, a bad sample
    file...), the run fails at once instead of repeating the same steps `max_failures` times.
    A lost worker (an actor death) or a collective torn down with it is still restarted."""

    def _is_retryable_error(self, training_failed_error) -> bool:
        if isinstance(training_failed_error, WorkerGroupError):
            failures = training_failed_error.worker_failures
            if failures and all(repeats_on_restart(e) for e in failures.values()):
                return False
        return super()._is_retryable_error(training_failed_error)


@contextmanager
def _preemption_watcher(enabled: bool) -> Iterator[None]:
    """Ray Train's preemption watcher (an actor polling the node's drain state) on clusters,
    where nodes are drained, and not on the local Ray a command starts for itself: there it
    is one more process starting beside the workers on a small machine, and a SIGTERM is
    ours to handle (trainer.preempt). The controller takes the setting from the driver's
    environment when `fit` starts it; a value the user set stays."""
    if enabled or ENABLE_PREEMPTION_WATCHER_ENV_VAR in os.environ:
        yield
        return
    os.environ[ENABLE_PREEMPTION_WATCHER_ENV_VAR] = "0"
    try:
        yield
    finally:
        del os.environ[ENABLE_PREEMPTION_WATCHER_ENV_VAR]


# Job submission ------------------------------------------------------------------
# `gan-dist submit` (gan_dist/submit.py) builds the job; these are its calls to the
# head's Job Submission API. Ray's own errors become one-line SubmitErrors (exit 2)
# where the user's input is at fault.

# The SDK lets these override the address it is given; an explicit --address must win.
_ADDRESS_ENV = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")


class DashboardUnanswered(SubmitError):
    """The dashboard did not answer a call within the time limit, after the retries."""


class _DashboardClient(JobSubmissionClient):
    """Ray's job client, each of its HTTP calls with a time limit (`requests` has none by
    default: a head that accepts connections and never answers would hang it forever) and,
    for reads, bounded retries with backoff. Submissions and uploads are not retried: a
    request that timed out may have been carried out."""

    def __init__(self, address: str, headers: dict | None, timeout: float, retries: int):
        self._timeout, self._retries = timeout, retries  # before Ray's constructor makes its first call
        super().__init__(address, headers=headers)

    def _do_request(self, method: str, endpoint: str, **kwargs):
        kwargs.setdefault("timeout", self._timeout)
        attempts = 1 + (self._retries if method in ("GET", "HEAD") else 0)
        for attempt in range(attempts):
            try:
                return super()._do_request(method, endpoint, **kwargs)
            except (requests.Timeout, requests.ConnectionError) as exc:
                if attempt + 1 == attempts:
                    what = "did not answer" if isinstance(exc, requests.Timeout) else "refused or dropped"
                    raise DashboardUnanswered(
                        f"the Ray dashboard at {self._address} {what} {method} {endpoint} (time limit "
                        f"{self._timeout:g} s, {attempts} attempt(s); GAN_DIST_SUBMIT_TIMEOUT, "
                        f"GAN_DIST_SUBMIT_RETRIES)") from None
                time.sleep(min(0.5 * 2 ** attempt, 5.0))


def job_client(address: str, token: str | None, token_source: str | None, timeout: float = 30.0,
               retries: int = 2) -> JobSubmissionClient:
    """A client for the dashboard at `address`; the constructor already makes an authenticated
    call (GET /api/version). Every call has the time limit `timeout` (seconds) and reads
    `retries` further tries."""
    # Our own header: the SDK adds one only when RAY_AUTH_MODE=token is set in this process.
    headers = {"Authorization": f"Bearer {token}"} if token else None
    # The SDK narrates uploads and websocket closes at INFO; the job's own logs are what we show.
    # working_dir also warns, once per run, that .git is no longer uploaded: we never wanted it.
    for name in ("ray", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("ray._private.runtime_env.working_dir").setLevel(logging.ERROR)
    saved = {name: os.environ.pop(name) for name in _ADDRESS_ENV if name in os.environ}
    try:
        return _DashboardClient(address, headers, timeout, retries)
    except AuthenticationError as exc:
        if token is None:
            raise SubmitError(f"the Ray cluster at {address} requires a token and none was found: use "
                              f"--token-file FILE or set RAY_AUTH_TOKEN (`ray get-auth-token` on the head prints it)"
                              ) from None
        status = "401 Unauthorized" if exc.message.startswith("Authentication required") else "403 Forbidden"
        raise SubmitError(f"the Ray cluster at {address} rejected the token from {token_source} ({status}): "
                          f"use this cluster's token (`ray get-auth-token` on the head prints it)") from None
    except (ConnectionError, RuntimeError, ValueError, KeyError, TypeError) as exc:
        # ValueError: a 200 whose body is not JSON (requests' JSONDecodeError); KeyError, TypeError:
        # JSON without a ray_version; RuntimeError: another status. (Our SubmitErrors pass as they are.)
        if isinstance(exc, SubmitError):
            raise
        raise SubmitError(f"{address} is not a working Ray dashboard (GET /api/version: "
                          f"{first_line(exc) or type(exc).__name__}); is this the head's dashboard port, "
                          f"8265 by default?") from None
    finally:
        os.environ.update(saved)


def active_jobs(client: JobSubmissionClient, metadata: dict, keys: tuple[str, ...]) -> list[str]:
    """Ids of the jobs still pending or running whose metadata agrees with `metadata` on `keys`."""
    try:
        jobs = client.list_jobs()
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, SubmitError):
            raise
        raise SubmitError(f"the Ray dashboard at {client._address} gave no job list "
                          f"({first_line(exc) or type(exc).__name__})") from None
    return [job.submission_id for job in jobs
            if not job.status.is_terminal()
            and all((job.metadata or {}).get(key) == metadata[key] for key in keys)]


def submit_job(client: JobSubmissionClient, spec: JobSpec) -> str:
    try:
        return client.submit_job(
            entrypoint=spec.entrypoint, submission_id=spec.submission_id, runtime_env=spec.runtime_env,
            metadata=spec.metadata, entrypoint_num_cpus=spec.entrypoint_num_cpus,
            entrypoint_num_gpus=spec.entrypoint_num_gpus, entrypoint_resources=spec.entrypoint_resources or None)
    except DashboardUnanswered:
        raise
    except (RuntimeError, ValueError, OSError) as exc:  # bad runtime_env, working dir too big, ...
        raise SubmitError(f"the cluster refused job {spec.submission_id}: {first_line(exc)}") from None


# Seconds between status polls while following a job's logs.
FOLLOW_POLL_SECONDS = 5.0


def follow_job(client: JobSubmissionClient, job_id: str, out=None, poll_seconds: float = FOLLOW_POLL_SECONDS) -> dict:
    """Copy the job's logs to `out` (stdout) until it ends; its final status, message and driver
    exit code. The log stream has no time limit (a job may print nothing for an hour), so the
    job's status is polled beside it, each poll within the client's limits: a dashboard that
    stops answering ends the follow with DashboardUnanswered instead of a hang."""
    try:
        asyncio.run(_follow(client, job_id, out or sys.stdout, poll_seconds))
    except DashboardUnanswered:
        raise
    except Exception as exc:  # aiohttp, websocket or HTTP errors alike
        # The log stream can drop (head restart, proxy timeout); the job goes on, so poll its status.
        print(f"gan-dist: log stream of job {job_id} ended early ({first_line(exc)}); waiting for the job",
              file=sys.stderr, flush=True)
    return wait_job(client, job_id)


async def _follow(client: JobSubmissionClient, job_id: str, out, poll_seconds: float) -> None:
    tail = asyncio.ensure_future(_copy_logs(client, job_id, out))
    try:
        while not tail.done():
            await asyncio.wait({tail}, timeout=poll_seconds)
            if tail.done():
                break
            info = await asyncio.to_thread(client.get_job_info, job_id)  # within the client's limits
            if info.status.is_terminal():
                await asyncio.wait({tail}, timeout=poll_seconds)  # the last lines, then the stream ends
                break
        if tail.done():
            tail.result()  # the stream's own error, if it had one
    finally:
        if not tail.done():
            tail.cancel()
            await asyncio.gather(tail, return_exceptions=True)


async def _copy_logs(client: JobSubmissionClient, job_id: str, out) -> None:
    async for chunk in client.tail_job_logs(job_id):
        out.write(chunk)
        out.flush()


def wait_job(client: JobSubmissionClient, job_id: str, poll_seconds: float = 2.0) -> dict:
    while True:
        info = client.get_job_info(job_id)
        if info.status.is_terminal():
            return {"status": str(info.status), "message": info.message or "",
                    "exit_code": info.driver_exit_code}
        time.sleep(poll_seconds)


# Inception features in Ray tasks --------------------------------------------------
# `gan-dist eval --workers W`: the shares of an embedding (gan_dist.quality.features)
# run as Ray tasks of one CPU and one torch thread each, and the driver concatenates
# them. A share's features do not depend on how many shares there are, so the work is
# cut into TASKS_PER_WORKER tasks per worker: the progress bar moves as each finishes,
# and a worker that is done early takes the next. Each worker process loads the
# Inception network once and keeps it for its later tasks.

import numpy as np  # noqa: E402
import torch  # noqa: E402

TASKS_PER_WORKER = 4


@ray.remote(num_cpus=1)
def _feature_share(share, rank: int, world_size: int) -> np.ndarray:
    torch.set_num_threads(1)
    return share(rank, world_size, None)


class RayTasks:
    """A quality.features sharding: shares as Ray tasks on the connected Ray."""

    is_main = True

    def __init__(self, workers: int, tasks_per_worker: int = TASKS_PER_WORKER):
        self.num_tasks = workers * tasks_per_worker

    def agree(self, value):
        return value

    def run(self, share, progress=None) -> np.ndarray:
        share_ref = ray.put(share)  # G or the real images: stored once, read by every task
        pending = {_feature_share.remote(share_ref, rank, self.num_tasks): rank for rank in range(self.num_tasks)}
        parts = {}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            parts[pending.pop(done[0])] = part = ray.get(done[0])
            if progress is not None:
                progress(len(part))
        return np.concatenate([parts[rank] for rank in range(self.num_tasks)])
