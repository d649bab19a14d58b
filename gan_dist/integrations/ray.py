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

import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import ray
import ray.train
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from gan_dist.checkpoint import step_dir_name, write_rank_files
from gan_dist.config import Config
from gan_dist.monitor.hub import RunHub
from gan_dist.trainer.loop import train_worker


class RaySink:
    """Checkpoints through Ray Train's report/get_checkpoint."""

    @contextmanager
    def latest(self) -> Iterator[Path | None]:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as folder:
            yield Path(folder)

    def save(self, rt, step: int, files: dict[str, bytes], metrics: dict) -> None:
        with tempfile.TemporaryDirectory(prefix="gan-dist-ckpt-") as tmp:
            write_rank_files(Path(tmp), rt.rank, rt.world_size, step, files)
            # A barrier: every rank reports at the same steps.
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=step_dir_name(step))


class ActorReporter:
    """Forwards progress to the hub actor without waiting for it."""

    def __init__(self, hub):
        self.hub = hub

    def started(self, world_size: int, step: int) -> None:
        ray.get(self.hub.started.remote(world_size, step))

    def progress(self, row: dict) -> None:
        self.hub.progress.remote(row)

    def finished(self, result: dict) -> None:
        ray.get(self.hub.finished.remote(result))


def _train_fn(config: dict) -> None:
    # Ray Train logs every report at INFO on the worker console; progress is ours to show.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    cfg = Config.from_dict(config["config"])
    train_worker(cfg, Path(config["run_dir"]), RaySink(), ActorReporter(config["hub"]))


class RaySession:
    """A connection to Ray (a local one started here, or a cluster at `address`)."""

    def __init__(self, address: str, local_resources: dict[str, float]):
        self.address = address
        kwargs = dict(logging_level=logging.WARNING, log_to_driver=True)
        if address:
            ray.init(address=address, **kwargs)
        else:
            # Keep Ray's own chatter down and its temp files bounded for local runs.
            os.environ.setdefault("RAY_DEDUP_LOGS", "1")
            # address="local": a new Ray here, even if `ray start` left a cluster on this machine
            # (ray.init() with no address would join it, and then reject num_cpus).
            ray.init(address="local", num_cpus=int(local_resources["CPU"]), num_gpus=int(local_resources["GPU"]),
                     **kwargs)

    def resources(self) -> dict[str, float]:
        return {k: float(v) for k, v in ray.cluster_resources().items()}

    def start_hub(self, max_steps: int):
        here = ray.get_runtime_context().get_node_id()
        actor = ray.remote(RunHub).options(
            num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False))
        return actor.remote(max_steps)

    @staticmethod
    def snapshot(hub, since: int) -> dict:
        return ray.get(hub.snapshot.remote(since), timeout=30)

    def fit(self, cfg: Config, run_dir: Path, placement, hub) -> dict:
        trainer = TorchTrainer(
            _train_fn,
            train_loop_config={"config": cfg.to_dict(), "run_dir": str(run_dir), "hub": hub},
            scaling_config=ScalingConfig(
                num_workers=placement.workers,
                use_gpu=placement.use_gpu,
                resources_per_worker={"CPU": placement.cpus_per_worker,
                                      **({"GPU": placement.gpus_per_worker} if placement.use_gpu else {})},
            ),
            run_config=RunConfig(
                name=cfg.run.name,
                storage_path=str(run_dir.parent),
                failure_config=FailureConfig(max_failures=cfg.run.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
                # Ray Train's per-report INFO lines would drown the run's own progress.
                logging_config=LoggingConfig(log_level="WARNING"),
            ),
        )
        result = trainer.fit()
        if result.error is not None:
            raise result.error
        return self.snapshot(hub, 0)["result"] or {}

    def close(self) -> None:
        ray.shutdown()
