"""What a run will do, worked out before anything starts (and printed by --dry-run)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gan_dist import superres
from gan_dist.batching import BatchSplit, BatchSplitError, split_batch
from gan_dist.config import first_line
from gan_dist.data.index import DatasetIndex
from gan_dist.data.stream import shards_of_rank
from gan_dist.losses import adversarial_loss, loss_label
from gan_dist.models import DataShape, arch_label, build_models, model_task
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


def check_models(cfg, shape: DataShape, batch: int = 2) -> str:
    """Build (G, D) once so that an impossible or oversized architecture is bad input, not a
    crash later; what was built, for the plan. Built on torch's meta device: shapes without
    memory, so counting a model too big to allocate costs nothing. Then G and D run once on a
    batch of `batch` (the per-rank batch) as the trainer calls them: the contract of
    gan_dist.models, checked for built-ins and plug-ins alike."""
    label = arch_label(cfg.model.arch)
    try:
        task = model_task(cfg.model.arch)
        with torch.device("meta"):
            G, D = build_models(cfg.model, shape)
    except ValueError as exc:
        raise PlanError(f"model.arch {label}: {exc}") from None
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    for name, net in (("G", G), ("D", D)):
        if count(net) > MAX_WEIGHTS:
            raise PlanError(f"{name} of model.arch {cfg.model.arch} would have {count(net):,} weights, over the "
                            f"{MAX_WEIGHTS:,} a model may have (check model.hidden, depth, channels, z_dim and the "
                            f"data's image size)")
    try:
        problem = contract_problem(G, D, task, shape, cfg.model, batch, "meta")
    except NoMetaKernel:
        # An op of G or D that the meta device cannot run (or a read of a value): run them on the
        # CPU instead, with real weights (counted above) and a real batch.
        G, D = build_models(cfg.model, shape)
        problem = contract_problem(G, D, task, shape, cfg.model, batch, "cpu")
    if problem:
        raise PlanError(f"model.arch {label}: {problem}")
    layout = getattr(G, "layout", "")
    return f"{cfg.model.arch}, G {count(G):,} / D {count(D):,} weights" + (f"; {layout}" if layout else "")


class NoMetaKernel(Exception):
    """G or D failed on the meta device in a way that says nothing about the model."""


def contract_problem(G, D, task: str, shape: DataShape, model_cfg, batch: int, device: str) -> str:
    """What is wrong with how (G, D) meet the trainer, in a few words; "" if nothing. G's
    inputs follow its task; its output must have the data's shape; D(x, y) (y the labels
    when the data has them, else None) must return one logit per sample, shape [B]."""
    if task == "conditional" and shape.num_classes < 2:
        return f"a conditional model needs labelled data, and the data has {shape.num_classes} classes"
    if task == "super_resolution" and shape.kind != "image":
        return f"a super-resolution model needs image data, the data holds {shape.kind}"
    y = torch.zeros(batch, dtype=torch.long, device=device) if shape.num_classes else None
    if task == "super_resolution":
        channels, height, width = shape.sample_shape
        scale = model_cfg.sr_scale
        inputs, call = (torch.randn(batch, channels, height // scale, width // scale, device=device),), "G(lr_img)"
    else:
        z = torch.randn(batch, model_cfg.z_dim, device=device)
        inputs, call = ((z, y), "G(z, y)") if task == "conditional" else ((z,), "G(z)")
    expected = (batch, *shape.sample_shape)
    fake = _run(G, inputs, device)
    if isinstance(fake, Exception):
        return f"{call} failed ({type(fake).__name__}: {first_line(fake)})" + (
            "; a conditional G takes the labels as its second argument" if task == "conditional" else "")
    if not isinstance(fake, torch.Tensor) or tuple(fake.shape) != expected:
        return f"{call} returned {_shape(fake)} for a batch of {batch}; the data's samples need {list(expected)}"
    logits = _run(D, (fake, y), device)
    if isinstance(logits, Exception):
        return (f"D(x, y) failed ({type(logits).__name__}: {first_line(logits)}); D is called with y the labels "
                f"when the data has them, else None")
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (batch,):
        return (f"D(x, y) returned {_shape(logits)} for a batch of {batch}; it must return one logit per sample, "
                f"shape [{batch}]")
    return ""


def _run(net, inputs: tuple, device: str):
    """net(*inputs), or the exception it raised (NoMetaKernel when the meta device is to blame)."""
    try:
        with torch.no_grad():
            return net(*inputs)
    except Exception as exc:  # anything the network raises here it would raise at the first step
        if device == "meta" and "meta" in str(exc).lower():
            raise NoMetaKernel() from exc
        return exc


def _shape(value) -> str:
    return f"shape {list(value.shape)}" if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"


def check_loss(cfg) -> None:
    """The adversarial loss gives scalar tensors that carry gradients to the logits: tried on a
    few logits (D's loss and G's), so that a plug-in's mistake is bad input now."""
    try:
        loss = adversarial_loss(cfg.loss.kind)
    except ValueError as exc:
        raise PlanError(str(exc)) from None
    real, fake = torch.randn(4, requires_grad=True), torch.randn(4, requires_grad=True)
    for term, call in (("d_loss", lambda: loss.d_loss(real, fake)), ("g_loss", lambda: loss.g_term(fake, real))):
        try:
            value = call()
        except Exception as exc:  # a plug-in's error, named on one line
            raise PlanError(f"loss.kind {loss_label(cfg.loss.kind)}: {term} failed on logits of shape [4] "
                            f"({type(exc).__name__}: {first_line(exc)})") from None
        if not isinstance(value, torch.Tensor) or value.ndim != 0:
            raise PlanError(f"loss.kind {loss_label(cfg.loss.kind)}: {term} returned {_shape(value)} for logits "
                            f"of shape [4], not a scalar (reduce over the batch, e.g. with .mean())")
        if not value.requires_grad:
            raise PlanError(f"loss.kind {loss_label(cfg.loss.kind)}: {term} does not depend on the logits "
                            f"(no gradient would reach the network)")


def check_inception_eval(cfg, index: DatasetIndex) -> None:
    """The Inception evals a config asks for can run: images of 1 or 3 channels, enough of them,
    a G that makes images from noise, and the network installed."""
    ev = cfg.eval
    if not ev.uses_inception:
        return
    if model_task(cfg.model.arch) == "super_resolution":
        # Super-resolution: the crop Inception metrics of the eval photos, at the end only.
        if ev.every_steps or not ev.sr_photos:
            raise PlanError("for super-resolution models the Inception metrics are the end-of-run crop FID of "
                            "eval.sr_photos: set eval.sr_photos, and eval.every_steps 0")
        parse_metrics(ev.metrics)
        check_installed()
        return
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


def check_elastic(cfg, index: DatasetIndex, low: int, high: int) -> Plan:
    """An elastic group may run at any size from `low` to `high` (Ray Train picks what fits):
    every one must split the global batch and have records for each rank. The plan at `high`."""
    for world_size in range(low, high + 1):
        try:
            batch_split(cfg, world_size)
            if index.num_records < world_size:
                raise PlanError(f"the dataset has {index.num_records} records, fewer than {world_size}")
        except PlanError as exc:
            raise PlanError(f"run.workers {low}:{high} may run {world_size} workers, but {exc}: choose a "
                            f"global batch that every size from {low} to {high} divides") from None
    make_plan(cfg, index, low)  # the smallest micro-batch meets the models too
    return make_plan(cfg, index, high)


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
    # G and D meet the trainer one micro-batch at a time.
    model = check_models(cfg, data_shape(index.meta, cfg.model), split.micro_batch)
    check_loss(cfg)
    if model_task(cfg.model.arch) == "super_resolution" and cfg.eval.sr_photos:
        superres.photo_paths(cfg.eval.sr_photos)  # a missing eval set is bad input now, not at the end
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
