"""What a run will do, worked out before anything starts (and printed by --dry-run)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gan_dist.batching import BatchSplit, BatchSplitError, split_batch
from gan_dist.data.index import DatasetIndex
from gan_dist.data.stream import shards_of_rank
from gan_dist.models import TASKS, DataShape, build_models
from gan_dist.quality.inception import check_installed
from gan_dist.quality.metrics import check_count, check_reals, parse_metrics
from gan_dist.schedule import build_cosine, build_schedule, describe, describe_cosine


class PlanError(ValueError):
    """The config, the data and the cluster do not fit together."""


@dataclass
class Plan:
    world_size: int
    global_batch: int
    batch_per_rank: int
    max_steps: int
    n_critic: int
    num_shards: int
    num_records: int
    num_samples: int
    shards_per_rank: list[int]
    first_phases: list[str]
    model: str = ""
    micro_batch: int = 0  # samples per forward/backward on a worker (0: batch_per_rank)
    accumulation: int = 1  # micro-batches per worker per update
    split: str = ""  # BatchSplit.describe()
    schedules: str = ""  # the schedules in images seen, if any

    def lines(self) -> list[str]:
        return [
            f"world size        {self.world_size}",
            f"model             {self.model}",
            f"batch             {self.split or f'{self.global_batch} global, {self.batch_per_rank} per rank'}",
            f"steps             {self.max_steps} G steps, {self.n_critic} D step(s) each",
            f"data              {self.num_samples} samples in {self.num_records} records, {self.num_shards} shards",
            f"shards per rank   {', '.join(map(str, self.shards_per_rank))} (epoch 0)",
            "schedule          " + "; ".join(self.first_phases),
        ] + ([f"schedules         {self.schedules}"] if self.schedules else [])


def data_shape(meta: dict, model_cfg=None) -> DataShape:
    """The data's shape from its index; `model.*` values a recipe pins must agree with it."""
    shape = DataShape(kind=meta["kind"], sample_shape=tuple(meta["sample_shape"]),
                      num_classes=int(meta.get("num_classes", 0)))
    if model_cfg is None:
        return shape
    if model_cfg.num_classes and model_cfg.num_classes != shape.num_classes:
        raise PlanError(f"model.num_classes is {model_cfg.num_classes}, but the data has {shape.num_classes} classes")
    if shape.kind == "image":
        channels, height, width = shape.sample_shape
        if model_cfg.image_size and (height, width) != (model_cfg.image_size,) * 2:
            raise PlanError(f"model.image_size is {model_cfg.image_size}, but the data holds {height}x{width} images")
        if model_cfg.image_channels and channels != model_cfg.image_channels:
            raise PlanError(f"model.image_channels is {model_cfg.image_channels}, but the data has {channels}")
    elif model_cfg.image_size or model_cfg.image_channels:
        raise PlanError(f"model.image_size/image_channels are set, but the data holds {shape.kind}, not images")
    return shape


# The most weights G or D may have: 1e9 fp32 weights are 4 GB, 16 GB with Adam's moments and
# G_ema, beyond any GAN this trainer is for (and what a typo such as model.channels=100000 asks).
MAX_WEIGHTS = 1_000_000_000


def check_models(cfg, shape: DataShape) -> str:
    """Build (G, D) once so that an impossible or oversized architecture is bad input, not a
    crash later; what was built, for the plan. Built on torch's meta device: shapes without
    memory, so counting a model too big to allocate costs nothing."""
    try:
        with torch.device("meta"):
            G, D = build_models(cfg.model, shape)
    except ValueError as exc:
        raise PlanError(f"model.arch {cfg.model.arch}: {exc}") from None
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    for name, net in (("G", G), ("D", D)):
        if count(net) > MAX_WEIGHTS:
            raise PlanError(f"{name} of model.arch {cfg.model.arch} would have {count(net):,} weights, over the "
                            f"{MAX_WEIGHTS:,} a model may have (check model.hidden, depth, channels, z_dim and the "
                            f"data's image size)")
    layout = getattr(G, "layout", "")
    return f"{cfg.model.arch}, G {count(G):,} / D {count(D):,} weights" + (f"; {layout}" if layout else "")


def check_inception_eval(cfg, index: DatasetIndex) -> None:
    """The Inception evals a config asks for can run: images of 1 or 3 channels, enough of them,
    a G that makes images from noise, and the network installed."""
    ev = cfg.eval
    if not ev.uses_inception:
        return
    if TASKS[cfg.model.arch] == "super_resolution":
        raise PlanError("eval.inception and eval.every_steps are for generators of images from noise, "
                        "not super-resolution models")
    metrics = parse_metrics(ev.metrics)
    for key, n in (("eval.inception_n", ev.inception_n if ev.inception else 0),
                   ("eval.every_n", ev.every_n if ev.every_steps else 0)):
        if n:
            check_count(n, metrics, key)
            check_reals(index, n, name=key)
    check_installed()  # a missing network is bad input now, not a failure at the first eval


def batch_split(cfg, world_size: int) -> BatchSplit:
    """How `cfg`'s global batch is shared by `world_size` workers (gan_dist.batching)."""
    try:
        return split_batch(cfg.data.batch_size, world_size, cfg.train.batch_per_worker)
    except BatchSplitError as exc:
        raise PlanError(str(exc)) from None


def make_plan(cfg, index: DatasetIndex, world_size: int) -> Plan:
    batch = cfg.data.batch_size
    split = batch_split(cfg, world_size)
    if index.num_records < world_size:
        raise PlanError(f"the dataset has {index.num_records} records, fewer than the {world_size} workers")
    if cfg.schedule.reuse_fake and split.accumulation > 1:
        # The G step would back-propagate micro-batches whose forwards ran in the D step, out of
        # the order DDP's no_sync needs.
        raise PlanError(f"schedule.reuse_fake needs one micro-batch per worker, but {split.describe()}: "
                        f"raise train.batch_per_worker to {split.share} or turn reuse_fake off")
    model = check_models(cfg, data_shape(index.meta, cfg.model))
    check_inception_eval(cfg, index)
    cosine = build_cosine(cfg.cosine, cfg.optim, cfg.loss, batch)
    return Plan(
        world_size=world_size,
        global_batch=batch,
        batch_per_rank=split.share,
        max_steps=cfg.train.max_steps,
        n_critic=cfg.schedule.n_critic,
        num_shards=len(index.shards),
        num_records=index.num_records,
        num_samples=index.num_samples,
        shards_per_rank=[len(shards_of_rank(index, r, world_size, cfg.seed)) for r in range(world_size)],
        first_phases=describe(build_schedule(cfg.schedule, cfg.loss), steps=2),
        model=model,
        micro_batch=split.micro_batch,
        accumulation=split.accumulation,
        split=split.describe(),
        schedules=describe_cosine(cosine) if cosine else "",
    )
