"""Typed configs, one small dataclass per component.

A run's config is YAML in (a shipped recipe or a user file), dotted `--set`
overrides on top, then validated before anything starts. Every error is a
`ConfigError` whose message names the offending key, so the CLI can print it
on one line and exit 2.
"""

from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import typing
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import yaml


LR_DECAYS = ("none", "linear", "cosine")
EMA_BN = ("recompute", "copy")


class ConfigError(ValueError):
    """Bad user input: a config key, a value, a recipe or a file."""


@dataclass
class DataConfig:
    # The dataset: a packed dataset's folder or URL, shards of one by name, glob or brace
    # pattern, several of these separated by commas, or builtin:NAME (docs/data.md).
    source: str = "builtin:ring8"
    # Global batch (all ranks together), in samples per D step.
    batch_size: int = 512
    # Records permuted together in a window of each rank's stream.
    shuffle_window: int = 64
    # Where builtin datasets are packed on first use; "" means $GAN_DIST_CACHE, else ~/.cache/gan-dist.
    cache_dir: str = ""
    # Loader worker processes per rank (decode ahead of the trainer); 0 reads in the trainer.
    num_workers: int = 0
    # Bad samples (corrupt, truncated, missing, wrong checksum) are skipped and counted;
    # past this fraction of the samples read (at least one epoch's slice) the run stops.
    max_corrupt_fraction: float = 0.05
    # Check each shard's sha256 against the index before use (reads a shard whole).
    verify_checksums: bool = True

    def validate(self) -> None:
        _require(bool(self.source.strip()), "data.source", "must not be empty")
        _require(self.batch_size > 0, "data.batch_size", f"must be > 0, got {self.batch_size}")
        _require(self.shuffle_window > 0, "data.shuffle_window", f"must be > 0, got {self.shuffle_window}")
        _require(self.num_workers >= 0, "data.num_workers", f"must be >= 0, got {self.num_workers}")
        _require(0 <= self.max_corrupt_fraction <= 1, "data.max_corrupt_fraction",
                 f"must be in [0, 1], got {self.max_corrupt_fraction}")


# The largest value each size key of ModelConfig accepts.
MODEL_LIMITS = {"z_dim": 1 << 16, "hidden": 1 << 16, "depth": 1000, "channels": 1 << 14, "sr_blocks": 1000,
                "blocks_per_stage": 1000, "cardinality": 1 << 14, "expansion": 64,
                "image_size": 1 << 14, "image_channels": 64, "num_classes": 1 << 20}


@dataclass
class ModelConfig:
    # G and D: mlp, dcgan, cgan (class-conditional DCGAN), srgan (super-resolution), r3gan (the
    # R3GAN ResNets, Huang et al. 2024) or r3gan_cond (R3GAN, class-conditional); or your own: an
    # entry point of the group gan_dist.models, or a module:function path (docs/api.md).
    arch: str = "mlp"
    # Dimensions of G's noise input (srgan's G takes a low-resolution image instead).
    z_dim: int = 256
    # MLP: width of each hidden layer of G and D.
    hidden: int = 128
    # MLP: hidden layers of G and D.
    depth: int = 2
    # MLP: hidden activation, tanh, relu or leaky_relu (slope 0.2).
    activation: str = "tanh"
    # Convolutional models: base width (DCGAN's ngf/ndf, SRGAN's feature width, R3GAN's width
    # of every stage unless model.stage_widths sets them).
    channels: int = 64
    # Spectral normalization of D's layers (SN-GAN); D then has no BatchNorm.
    spectral_norm: bool = False
    # BatchNorm in D (never with spectral norm); off for WGAN-GP, whose per-sample
    # penalty is wrong under batch statistics (Gulrajani et al. 2017, section 4).
    d_batchnorm: bool = True
    # BatchNorm statistics over the global batch (torch's SyncBatchNorm on GPU, an all-reduce on CPU).
    sync_batchnorm: bool = False
    # SRGAN: upscaling factor, 2, 4 or 8.
    sr_scale: int = 4
    # SRGAN: residual blocks in G.
    sr_blocks: int = 8
    # SRGAN: G adds its output to the bicubic upscaling of its input (a global residual, as in
    # VDSR), so it starts at bicubic's quality and learns only the missing detail. Off by default
    # so that runs saved before it was added resume as they were trained.
    sr_bicubic_skip: bool = False
    # Image side the recipe expects; 0 follows the data's index (a mismatch is refused).
    image_size: int = 0
    # Image channels the recipe expects; 0 follows the data's index.
    image_channels: int = 0
    # Classes the recipe expects; 0 follows the data's index.
    num_classes: int = 0
    # R3GAN: residual blocks (1x1, grouped 3x3, 1x1 convolutions) in each stage of G and D.
    blocks_per_stage: int = 2
    # R3GAN: groups of each block's 3x3 convolution (ResNeXt's cardinality); it must divide the
    # block's inner width, model.channels x model.expansion.
    cardinality: int = 32
    # R3GAN: a block's inner width over its stage's width (the 1x1 convolutions widen, then narrow).
    expansion: int = 2
    # R3GAN: the width of each stage from 4x4 up to the image size, a comma list ("768,768,768,768")
    # or a YAML list ([768, 768, 768, 768]); "" is model.channels everywhere. D mirrors G: the same
    # widths from the image size down.
    stage_widths: str = ""
    # Your own model's keys (any YAML mapping), handed to its builder unchanged; built-ins take none.
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        # Deferred on purpose: the registries import torch, which `gan-dist --help` does not need.
        from gan_dist.models import ACTIVATIONS, check_arch
        from gan_dist.plugins import PluginError

        try:
            check_arch(self.arch)
        except PluginError as exc:
            raise ConfigError(str(exc)) from None
        _require(self.activation in ACTIVATIONS, "model.activation",
                 f"unknown activation {self.activation!r} (known: {', '.join(sorted(ACTIVATIONS))})")
        for key in ("z_dim", "hidden", "depth", "channels", "sr_blocks", "blocks_per_stage", "cardinality",
                    "expansion"):
            value = getattr(self, key)
            _require(value > 0, f"model.{key}", f"must be > 0, got {value}")
        for key in ("image_size", "image_channels", "num_classes"):
            value = getattr(self, key)
            _require(value >= 0, f"model.{key}", f"must be >= 0, got {value}")
        # Sanity limits, far above any GAN's, so that a typo cannot ask for terabytes (the plan
        # then counts the weights of what these build: plan.check_models).
        for key, limit in MODEL_LIMITS.items():
            value = getattr(self, key)
            _require(value <= limit, f"model.{key}", f"must be <= {limit:,}, got {value:,}")
        widths = self.stage_widths.split(",") if self.stage_widths.strip() else []
        _require(all(w.strip().isdigit() and 0 < int(w) <= MODEL_LIMITS["channels"] for w in widths),
                 "model.stage_widths", f"must be a comma list of widths from 1 to {MODEL_LIMITS['channels']:,}, "
                                       f"got {shown(self.stage_widths)}")

    @property
    def widths(self) -> tuple[int, ...]:
        """model.stage_widths as numbers (empty: model.channels in every stage)."""
        return tuple(int(w) for w in self.stage_widths.split(",")) if self.stage_widths.strip() else ()


@dataclass
class LossConfig:
    # The adversarial loss: minimax, nonsaturating, wasserstein, hinge, least_squares or rpgan
    # (relativistic pairing, R3GAN's; pair it with loss.r1_gamma and loss.r2_gamma); or your own:
    # an entry point of the group gan_dist.losses, or a module:attr path (docs/api.md).
    kind: str = "nonsaturating"
    # WGAN-GP's lambda (10 in the paper); 0 turns the gradient penalty off.
    gp_weight: float = 0.0
    # R1's gamma (Mescheder et al. 2018): gamma/2 x E||grad D(x)||^2 on reals; 0 turns it off.
    r1_gamma: float = 0.0
    # R2's gamma: gamma/2 x E||grad D(G(z))||^2 on G's samples (R3GAN puts R1 and R2 together,
    # with the same gamma); 0 turns it off.
    r2_gamma: float = 0.0
    # R1 and R2 every this many steps: 1 adds them to D's loss at every D step; k > 1 applies them
    # in a D phase of their own every k steps, their weight multiplied by k, and D's lr multiplied
    # and its betas raised to the power k/(k+1) (lazy regularization, StyleGAN2, App. B).
    r1_interval: int = 16
    # DiffAugment policy: a comma list of color, translation, cutout ("" is off).
    diffaugment: str = ""
    # The probability with which each augmentation of loss.diffaugment reaches each image (ADA's p;
    # 1: every image, as DiffAugment does); with cosine.images, its value at the start.
    augment_p: float = 1.0
    # Super-resolution: weight of the pixel (MSE) content loss in G's loss.
    content_weight: float = 1.0
    # Weight of the adversarial term in G's loss (the SRGAN paper: 1e-3; `srgan-photos`: 1e-2).
    adversarial_weight: float = 1.0
    # Super-resolution: weight of the perceptual loss (MSE of VGG19 features; needs perceptual_weights).
    perceptual_weight: float = 0.0
    # A local file with torchvision-layout VGG19 weights for the perceptual loss.
    perceptual_weights: str = ""
    # Conditional models: cross-entropy of D's projection scores over all classes, on real
    # images for D and on G's images (for the class asked) for G; 0 turns it off.
    class_weight: float = 0.0

    def validate(self) -> None:
        # Deferred on purpose: the registries import torch, which `gan-dist --help` does not need.
        from gan_dist.losses import AUGMENTATIONS, check_loss_kind
        from gan_dist.plugins import PluginError

        try:
            check_loss_kind(self.kind)
        except PluginError as exc:
            raise ConfigError(str(exc)) from None
        for key in ("gp_weight", "r1_gamma", "r2_gamma", "content_weight", "adversarial_weight",
                    "perceptual_weight", "class_weight"):
            value = getattr(self, key)
            _require(value >= 0, f"loss.{key}", f"must be >= 0, got {value}")
        _require(self.r1_interval >= 1, "loss.r1_interval", f"must be >= 1, got {self.r1_interval}")
        _require(0 <= self.augment_p <= 1, "loss.augment_p", f"must be in [0, 1], got {self.augment_p}")
        for name in self.augment_policy:
            _require(name in AUGMENTATIONS, "loss.diffaugment",
                     f"unknown augmentation {name!r} (known: {', '.join(sorted(AUGMENTATIONS))})")
        if self.perceptual_weight > 0:
            _require(bool(self.perceptual_weights), "loss.perceptual_weights",
                     "must name a local VGG19 weights file when loss.perceptual_weight > 0")
            _require(Path(self.perceptual_weights).expanduser().is_file(), "loss.perceptual_weights",
                     f"{self.perceptual_weights} does not exist")

    @property
    def augment_policy(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.diffaugment.split(",") if p.strip())

    @property
    def penalized(self) -> bool:
        """Whether R1 or R2 is on."""
        return self.r1_gamma > 0 or self.r2_gamma > 0


@dataclass
class OptimConfig:
    # Adam's learning rate for G.
    lr_g: float = 1e-4
    # Adam's learning rate for D (before the lazy R1/R2 correction, see loss.r1_interval).
    lr_d: float = 1e-4
    # Adam's beta1, both networks.
    beta1: float = 0.5
    # Adam's beta2, both networks.
    beta2: float = 0.999
    # How both lrs fall from their value to 0 at train.max_steps: "none" (constant), "linear"
    # or "cosine".
    lr_decay: str = "none"
    # The fraction of train.max_steps at which the decay starts (0: from the first step).
    lr_decay_start: float = 0.0

    def validate(self) -> None:
        for key in ("lr_g", "lr_d"):
            value = getattr(self, key)
            _require(value > 0, f"optim.{key}", f"must be > 0, got {value}")
        _require(self.lr_decay in LR_DECAYS, "optim.lr_decay",
                 f"must be one of {', '.join(LR_DECAYS)}, got {self.lr_decay!r}")
        _require(0 <= self.lr_decay_start < 1, "optim.lr_decay_start", f"must be in [0, 1), got {self.lr_decay_start}")
        for key in ("beta1", "beta2"):
            value = getattr(self, key)
            _require(0 <= value < 1, f"optim.{key}", f"must be in [0, 1), got {value}")


@dataclass
class ScheduleConfig:
    # D steps (each on a fresh real batch) per G step; one training step is one G step.
    n_critic: int = 1
    # The G step reuses the D step's fakes (one G forward a step, as the classic DCGAN loop
    # does) instead of drawing new noise; n_critic 1 only.
    reuse_fake: bool = False
    # G_ema half-life in G steps (0: G_ema is G's copy).
    ema_halflife_steps: float = 500.0
    # Ramp-up: at step s the half-life is at most (s + 1) x this, so early G_ema tracks G (0: off).
    ema_rampup: float = 0.05
    # G_ema's BatchNorm statistics wherever it is sampled or evaluated: "recompute" (for its own
    # weights, over 8,192 noise inputs, as SWA does for averaged weights) or "copy" (G's, which
    # training copies into G_ema every step). Training itself is the same either way.
    ema_bn: str = "recompute"
    # Super-resolution: the first this many steps are the SRResNet phase (Ledig et al. 2017): G
    # on the content loss alone, D untouched; the SRGAN phase (content + adversarial) follows
    # from G's weights at that step, in the same run. The checkpoint at that step is always
    # saved and kept (bench.superres scores it).
    srresnet_steps: int = 0

    def validate(self) -> None:
        _require(self.n_critic >= 1, "schedule.n_critic", f"must be >= 1, got {self.n_critic}")
        _require(self.srresnet_steps >= 0, "schedule.srresnet_steps", f"must be >= 0, got {self.srresnet_steps}")
        _require(not self.reuse_fake or self.n_critic == 1, "schedule.reuse_fake",
                 f"needs schedule.n_critic 1, got {self.n_critic}")
        _require(self.ema_halflife_steps >= 0, "schedule.ema_halflife_steps",
                 f"must be >= 0, got {self.ema_halflife_steps}")
        _require(self.ema_rampup >= 0, "schedule.ema_rampup", f"must be >= 0, got {self.ema_rampup}")
        _require(self.ema_bn in EMA_BN, "schedule.ema_bn", f"must be one of {', '.join(EMA_BN)}, got {self.ema_bn!r}")


@dataclass
class TrainConfig:
    # Training steps (G updates) of the run.
    max_steps: int = 25000
    # Steps per log interval: statistics reduced across ranks, a history row, the detectors.
    log_every: int = 250
    # Steps between sample grids (samples/step-NNNNNN.png); also at the last step.
    sample_every: int = 5000
    # "no", "bf16" (CPU and GPU), "fp16" (GPU, with a gradient scaler), or "auto": bf16 on
    # GPUs that have it, else no.
    mixed_precision: str = "no"
    # Skip an update whose loss or gradients are not finite (on every rank alike) and count it.
    skip_nonfinite: bool = True
    # The most samples a worker puts through G and D at once. Each step's global batch
    # (data.batch_size) is shared by the workers, and each worker's share is split into the
    # fewest equal micro-batches of at most this size, their gradients accumulated before one
    # all-reduce and one update: the same math on any number of workers (docs/models-and-losses.md).
    # 0: no limit (one micro-batch, the whole share).
    batch_per_worker: int = 0

    def validate(self) -> None:
        _require(self.max_steps > 0, "train.max_steps", f"must be > 0, got {self.max_steps}")
        for key in ("log_every", "sample_every"):
            value = getattr(self, key)
            _require(value > 0, f"train.{key}", f"must be > 0, got {value}")
        _require(self.mixed_precision in ("no", "bf16", "fp16", "auto"), "train.mixed_precision",
                 f"must be no, bf16, fp16 or auto, got {self.mixed_precision!r}")
        _require(self.batch_per_worker >= 0, "train.batch_per_worker", f"must be >= 0, got {self.batch_per_worker}")


@dataclass
class CosineConfig:
    """Schedules measured in images seen (R3GAN, Huang et al. 2024, App. B): each value moves from
    its start to its end along a half cosine over cosine.images, then stays. Images seen after
    step s are s x data.batch_size (the global batch), so every schedule is a pure function of
    the step and the global batch, the same on any number of workers."""

    # The images over which the schedules run (e.g. 2e7); 0 turns them off (step-based
    # schedules: optim.lr_decay, schedule.ema_*).
    images: float = 0.0
    # Both learning rates at the end, as a fraction of their start (optim.lr_g, optim.lr_d).
    lr_end_factor: float = 1.0
    # Adam's beta2 at the end (it starts at optim.beta2); -1 keeps optim.beta2.
    beta2_end: float = -1.0
    # The penalties' gammas at the end, as a fraction of their start (loss.r1_gamma, loss.r2_gamma).
    gamma_end_factor: float = 1.0
    # G_ema's half-life in images at the end; it starts at 0 (G_ema follows G at first: the
    # ramp-up). 0 keeps the step-based half-life (schedule.ema_halflife_steps, ema_rampup).
    ema_halflife_images: float = 0.0
    # The augmentation probability at the end (it starts at loss.augment_p); -1 keeps loss.augment_p.
    augment_p_end: float = -1.0

    def validate(self) -> None:
        _require(self.images >= 0, "cosine.images", f"must be >= 0, got {self.images}")
        _require(self.lr_end_factor > 0, "cosine.lr_end_factor", f"must be > 0, got {self.lr_end_factor}")
        _require(self.beta2_end == -1 or 0 <= self.beta2_end < 1, "cosine.beta2_end",
                 f"must be in [0, 1) or -1, got {self.beta2_end}")
        _require(self.gamma_end_factor >= 0, "cosine.gamma_end_factor", f"must be >= 0, got {self.gamma_end_factor}")
        _require(self.ema_halflife_images >= 0, "cosine.ema_halflife_images",
                 f"must be >= 0, got {self.ema_halflife_images}")
        _require(self.augment_p_end == -1 or 0 <= self.augment_p_end <= 1, "cosine.augment_p_end",
                 f"must be in [0, 1] or -1, got {self.augment_p_end}")


@dataclass
class CheckpointConfig:
    # Steps between checkpoints; also at the last step, on SIGTERM and when a detector stops the run.
    every: int = 5000
    # Also save when this many minutes passed since the last save (0: off); checked at log intervals.
    every_minutes: float = 0.0
    # The newest checkpoints kept (under Ray at least 2: the newest may still be uploading);
    # pruning also keeps the best (keep_best_metric), the newest healthy one (a rollback target)
    # and the SRResNet phase's last (schedule.srresnet_steps, always saved).
    keep: int = 2
    # Besides the last `keep`, keep the best checkpoint by this metric (a key of the checkpoint
    # metrics: eval metrics such as high_quality_fraction, or logged values such as loss_g);
    # "" keeps only the last ones.
    keep_best_metric: str = ""
    # "max" or "min": whether a larger or a smaller keep_best_metric is better.
    keep_best_mode: str = "max"
    # Under Ray: upload checkpoints in Ray's background thread instead of waiting for the upload
    # in our writer thread. Either way the step loop waits only for the in-memory snapshot.
    async_upload: bool = True

    def validate(self) -> None:
        for key in ("every", "keep"):
            value = getattr(self, key)
            _require(value > 0, f"checkpoint.{key}", f"must be > 0, got {value}")
        _require(self.every_minutes >= 0, "checkpoint.every_minutes", f"must be >= 0, got {self.every_minutes}")
        _require(self.keep_best_mode in ("min", "max"), "checkpoint.keep_best_mode",
                 f"must be min or max, got {self.keep_best_mode!r}")


@dataclass
class PerfConfig:
    """Performance switches: none changes what is computed, only how fast (the defaults are
    right on CPU and GPU)."""

    # Threads per worker for torch on CPU; 0 leaves torch's default.
    torch_threads: int = 1
    # Adam's fused kernel: one kernel for all weights, and a non-finite update is skipped on
    # the device (no host sync in the step); false: torch's default Adam.
    fused_adam: bool = True
    # Conv nets in channels_last (NHWC) memory format: cuDNN's Tensor Core kernels want it,
    # and oneDNN on CPU is faster with it too.
    channels_last: bool = True
    # torch.compile G and D: faster steps after a slower start; not with gradient penalties
    # (loss.gp_weight, loss.r1_gamma, loss.r2_gamma), whose double backward compiled graphs do not support.
    compile: bool = False
    # On GPUs, read the next batch during the step and copy it from pinned memory without waiting.
    prefetch: bool = True
    # On GPUs, read each log interval's statistics one step later, so the host never waits
    # for the GPU; the detectors then act one step after the interval they judge.
    async_stats: bool = True
    # DDP: gradient bucket size in MiB.
    ddp_bucket_cap_mb: float = 25.0
    # DDP: gradients kept as views into the buckets (no copy, less memory).
    gradient_as_bucket_view: bool = True

    def validate(self) -> None:
        _require(self.torch_threads >= 0, "perf.torch_threads", f"must be >= 0, got {self.torch_threads}")
        _require(self.ddp_bucket_cap_mb > 0, "perf.ddp_bucket_cap_mb", f"must be > 0, got {self.ddp_bucket_cap_mb}")


@dataclass
class RunConfig:
    # Empty: "<recipe>-<UTC timestamp>". The same name and storage resume a run.
    name: str = ""
    # The folder holding run directories; on a cluster, a path every node sees. A path, never a
    # URI: mount object storage (s3fs, gcsfuse) to keep runs there.
    storage: str = "runs"
    # Data-parallel workers: a count, or "auto" (one per GPU when the cluster has GPUs, else 2;
    # without Ray: 1), or an elastic range MIN:MAX (in YAML also [MIN, MAX]): start once MIN
    # fit, grow toward MAX as resources appear, shrink when a node is lost; every size keeps
    # the global batch (docs/elastic.md).
    workers: str = "auto"
    # CPUs Ray reserves for each worker.
    cpus_per_worker: float = 1.0
    # GPUs Ray reserves for each worker (with run.workers auto on a GPU cluster, 0 means 1).
    gpus_per_worker: float = 0.0
    # Empty: $RAY_ADDRESS if set, else start a local Ray; otherwise a Ray address ("auto",
    # "ray://...", "HOST:PORT").
    address: str = ""
    # False runs the trainer in this process, one worker, without Ray.
    use_ray: bool = True
    # Worker-group restarts Ray Train may make before the run fails (-1: no limit). In an elastic
    # run each lost worker or node counts as one; a resize to new resources does not.
    max_failures: int = 3
    # Elastic runs (run.workers MIN:MAX): seconds between Ray Train's checks for resources that
    # would change the group's size while it trains (ScalingConfig.elastic_resize_monitor_interval_s).
    resize_check_seconds: float = 60.0
    # With a local Ray (no address): also start Ray's dashboard, http://127.0.0.1:8265 (a dozen
    # more processes starting beside the workers).
    ray_dashboard: bool = False
    # Stop at this step with a checkpoint (status stopped), leaving the schedule as for
    # train.max_steps, so the next command goes on as if never stopped; gan-dist tune trains its
    # members this way, one perturbation interval at a time. 0: train to train.max_steps.
    stop_at_step: int = 0

    def validate(self) -> None:
        if self.name:
            check_run_name(self.name, "run.name")
        _require(bool(self.storage.strip()), "run.storage", "must not be empty")
        _require(not URI_SCHEME.match(self.storage), "run.storage",
                 f"must be a folder path, got the URI {redact_url(self.storage)!r}: run directories are local "
                 f"paths (a shared filesystem on a cluster); mount object storage (s3fs, gcsfuse, a CSI driver) "
                 f"and give its mount point")
        _require(self.workers == "auto" or (self.workers.isdigit() and int(self.workers) >= 1)
                 or ELASTIC_WORKERS.fullmatch(self.workers) is not None, "run.workers",
                 f"must be a count >= 1, auto, or an elastic range MIN:MAX, got {self.workers!r}")
        if self.elastic is not None:
            low, high = self.elastic
            _require(low >= 1, "run.workers", f"{self.workers}: MIN must be >= 1, got {low}")
            _require(low <= high, "run.workers", f"{self.workers}: MIN {low} is larger than MAX {high}")
        _require(self.resize_check_seconds > 0, "run.resize_check_seconds",
                 f"must be > 0, got {self.resize_check_seconds}")
        _require(self.cpus_per_worker > 0, "run.cpus_per_worker", f"must be > 0, got {self.cpus_per_worker}")
        _require(self.gpus_per_worker >= 0, "run.gpus_per_worker", f"must be >= 0, got {self.gpus_per_worker}")
        _require(self.max_failures >= -1, "run.max_failures", f"must be >= -1, got {self.max_failures}")
        _require(self.stop_at_step >= 0, "run.stop_at_step", f"must be >= 0, got {self.stop_at_step}")
        _require(self.use_ray or (self.elastic is None and self.worker_count in (None, 1)), "run.workers",
                 f"without Ray a run has one worker, got {self.workers}")

    @property
    def worker_count(self) -> int | None:
        """The fixed number of workers asked for; None for auto or an elastic range."""
        return None if self.workers == "auto" or self.elastic is not None else int(self.workers)

    @property
    def elastic(self) -> tuple[int, int] | None:
        """(MIN, MAX) of an elastic run; None for a fixed count or auto."""
        match = ELASTIC_WORKERS.fullmatch(self.workers)
        return (int(match[1]), int(match[2])) if match else None


# run.workers as an elastic range: MIN:MAX (the YAML list [MIN, MAX] is read as this).
ELASTIC_WORKERS = re.compile(r"(\d{1,6}):(\d{1,6})")


@dataclass
class MetricsConfig:
    # Monitoring: per-interval signals, detectors and the Prometheus target (false: none of it).
    enabled: bool = True
    # The run's one scrape target; 0 picks a free port. A taken port falls back to a free one
    # (the run directory's prometheus-targets.json names the one in use).
    port: int = 9464
    # Empty: loopback, unless the run joins a Ray cluster (run.address with Ray): then all
    # interfaces, so that the cluster's Prometheus can scrape it.
    host: str = ""
    # A Pushgateway URL ("http://HOST:9091"): the final values are pushed there when the run ends.
    pushgateway: str = ""
    # A file holding the Pushgateway's basic-auth credentials as "user:password" (the environment
    # variable GAN_DIST_PUSHGATEWAY_AUTH works too); never in the URL, which is printed and stored.
    pushgateway_auth_file: str = ""
    # TensorBoard event files under <run>/tb/, written by the run's hub off the step: every history
    # row's scalars, the sample grids, alerts and rollbacks as text, the resolved config as hparams
    # (independent of `enabled`: without monitoring the losses, D and throughput remain).
    tensorboard: bool = True

    def validate(self) -> None:
        _require(0 <= self.port <= 65535, "metrics.port", f"must be in [0, 65535], got {self.port}")
        url = urlparse(self.pushgateway)
        _require(self.pushgateway == "" or (url.scheme in ("http", "https") and bool(url.hostname)),
                 "metrics.pushgateway", f"must be an http(s):// URL, got {redact_url(self.pushgateway)!r}")
        _require(url.username is None and url.password is None, "metrics.pushgateway",
                 "must not hold credentials (they would be printed and stored): put user:password in "
                 "metrics.pushgateway_auth_file or $GAN_DIST_PUSHGATEWAY_AUTH")


# exploit: only for the members of `gan-dist tune` (gan_dist/tune), which replace the member at once
# by a copy of a healthy one with perturbed hyper-parameters; `gan-dist train` refuses it.
POLICIES = ("off", "warn", "rollback", "stop", "exploit")


@dataclass
class MonitorConfig:
    """Detectors over the reduced per-interval statistics, and what each one does when it fires.

    A policy is off, warn (record the event and raise the alert), rollback (restore the
    last checkpoint taken before the problem began, lower the learning rates, draw fresh
    noise, go on), stop (save and end the run with status `stopped`) or, for the members of
    `gan-dist tune` only, exploit (save and stop at once, and the population replaces the
    member by a copy of a healthy one with perturbed hyper-parameters).
    """

    # Policy of the mode_collapse detector.
    collapse: str = "warn"
    # Policy of the d_overpowering detector.
    d_overpower: str = "warn"
    # Policy of the exploding_gradients and vanishing_gradients detectors.
    gradients: str = "warn"
    # Policy of the divergence detector.
    divergence: str = "warn"
    # Policy of the nonfinite detector.
    nonfinite: str = "warn"
    # Labelled images: class coverage under the eval's classifier of the real data (trained at
    # the start, once per data set, and cached) joins the collapse score.
    class_coverage: bool = True
    # No detector but nonfinite counts a log interval before this step (the game is still
    # settling: a grid25 run with a strong D covered under half the modes until step 2000, then
    # all 25).
    warmup_steps: int = 2500
    # Consecutive log intervals a condition must hold before it fires (non-finite: at once).
    patience: int = 3
    # Log intervals in the moving windows (gradient norm reference, loss variance).
    window: int = 8
    # mode collapse: gan_collapse_score above this
    collapse_threshold: float = 0.5
    # D overpowering: D's accuracy on fakes above this (and over 0.8 on reals) while G's loss climbs
    d_overpower_accuracy: float = 0.95
    # exploding / vanishing gradients: a norm this many times above / below its moving median
    grad_factor: float = 100.0
    # divergence: a loss's moving variance this many times its usual one
    divergence_factor: float = 50.0
    # divergence: a loss larger than this in absolute value
    divergence_loss_limit: float = 1e4
    # rollback: at most this many per run; the next one stops the run instead
    max_rollbacks: int = 2
    # rollback: each one multiplies both lrs by this
    rollback_lr_factor: float = 0.5

    def validate(self) -> None:
        for key in ("collapse", "d_overpower", "gradients", "divergence", "nonfinite"):
            value = getattr(self, key)
            _require(value in POLICIES, f"monitor.{key}", f"must be one of {', '.join(POLICIES)}, got {value!r}")
        for key in ("warmup_steps", "max_rollbacks"):
            _require(getattr(self, key) >= 0, f"monitor.{key}", f"must be >= 0, got {getattr(self, key)}")
        for key in ("patience", "window"):
            _require(getattr(self, key) >= 1, f"monitor.{key}", f"must be >= 1, got {getattr(self, key)}")
        _require(0 < self.collapse_threshold <= 1, "monitor.collapse_threshold",
                 f"must be in (0, 1], got {self.collapse_threshold}")
        _require(0 < self.d_overpower_accuracy <= 1, "monitor.d_overpower_accuracy",
                 f"must be in (0, 1], got {self.d_overpower_accuracy}")
        for key in ("grad_factor", "divergence_factor"):
            _require(getattr(self, key) > 1, f"monitor.{key}", f"must be > 1, got {getattr(self, key)}")
        _require(self.divergence_loss_limit > 0, "monitor.divergence_loss_limit",
                 f"must be > 0, got {self.divergence_loss_limit}")
        _require(0 < self.rollback_lr_factor <= 1, "monitor.rollback_lr_factor",
                 f"must be in (0, 1], got {self.rollback_lr_factor}")


@dataclass
class EvalConfig:
    """The end-of-run eval (summary.json `eval`) and the periodic one during training."""

    # G_ema samples the end-of-run eval draws (super-resolution: at most 1000 images).
    num_samples: int = 2500
    # Images: also the Inception metrics (FID, KID, precision/recall) at the end of the run.
    inception: bool = False
    # Samples of G_ema (and of the data) for the end-of-run Inception metrics; 10000 as papers use.
    inception_n: int = 10000
    # The Inception metrics to compute: a comma list of fid, kid, pr (precision and recall).
    metrics: str = "fid,kid,pr"
    # Steps between Inception evals of G_ema during training (0: none), on every rank together;
    # each adds FID/KID to that step's history row and to Prometheus (gan_fid, gan_kid).
    every_steps: int = 0
    # Samples of each periodic eval (fewer than inception_n: FID is biased up at small n, so
    # compare periodic values with each other, and the end-of-run value with papers).
    every_n: int = 2000
    # Super-resolution: evaluate on these whole photographs instead of the training data's
    # patches: builtin:photos-eval (the held-out photos of builtin:photos), a folder of images
    # or one image file. Each is cut to a multiple of the scale, downscaled (bicubic) and
    # upscaled by G_ema; PSNR/SSIM on the Y channel, bicubic beside. With eval.inception also
    # the Inception metrics of SR against HR crops.
    sr_photos: str = ""
    # Super-resolution eval: G_ema upscales a photo in tiles of this many low-resolution pixels a
    # side, overlapping by 16 (memory stays bounded whatever the photo's size; 0: whole).
    sr_tile: int = 128

    def validate(self) -> None:
        _require(self.num_samples > 0, "eval.num_samples", f"must be > 0, got {self.num_samples}")
        _require(self.every_steps >= 0, "eval.every_steps", f"must be >= 0, got {self.every_steps}")
        _require(self.sr_tile == 0 or self.sr_tile >= 16, "eval.sr_tile", f"must be 0 or >= 16, got {self.sr_tile}")
        for key in ("inception_n", "every_n"):
            _require(getattr(self, key) >= 4, f"eval.{key}", f"must be >= 4, got {getattr(self, key)}")
        names = [m.strip() for m in self.metrics.split(",") if m.strip()]
        _require(bool(names) and all(m in ("fid", "kid", "pr") for m in names), "eval.metrics",
                 f"must be a comma list of fid, kid, pr, got {self.metrics!r}")

    @property
    def uses_inception(self) -> bool:
        return self.inception or self.every_steps > 0


@dataclass
class Config:
    # The recipe's name (from the recipe or YAML file name): run names and metric labels use it.
    recipe: str = "custom"
    # Seeds the weights, each rank's noise, the data order and the eval.
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    cosine: CosineConfig = field(default_factory=CosineConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)
    run: RunConfig = field(default_factory=RunConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        _require(0 <= self.seed < 2**32, "seed", f"must be in [0, 2**32), got {self.seed}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                value.validate()
        _require(not (self.perf.compile and (self.loss.gp_weight or self.loss.penalized)), "perf.compile",
                 "cannot be used with gradient penalties (loss.gp_weight, loss.r1_gamma, loss.r2_gamma): compiled "
                 "graphs have no double backward")
        best = self.checkpoint.keep_best_metric
        if best in ("fid", "kid", "precision", "recall"):
            # Periodic evals write these into history rows: a checkpoint scores by its step's row.
            every = self.eval.every_steps
            _require(every > 0 and self.checkpoint.every % every == 0, "checkpoint.keep_best_metric",
                     f"{best} needs eval.every_steps > 0 dividing checkpoint.every ({self.checkpoint.every}), "
                     f"got eval.every_steps {every}")
            mode = "min" if best in ("fid", "kid") else "max"
            _require(self.checkpoint.keep_best_mode == mode, "checkpoint.keep_best_mode",
                     f"must be {mode} for {best}, got {self.checkpoint.keep_best_mode}")
        _require(not self.schedule.srresnet_steps or self.model.arch == "srgan", "schedule.srresnet_steps",
                 f"needs a super-resolution model (model.arch srgan), not {self.model.arch}")
        _require(not self.loss.class_weight or self.model.arch == "cgan", "loss.class_weight",
                 f"needs a conditional model (model.arch cgan), not {self.model.arch}")
        _require(not (self.cosine.images and self.optim.lr_decay != "none"), "optim.lr_decay",
                 f"is {self.optim.lr_decay}, but cosine.images also schedules the learning rates: set one of them")

    def run_name(self) -> str:
        """The run's name: `run.name`, else `<recipe>-<UTC time>`, checked either way (a recipe
        named `../../x` must not place the run outside its storage)."""
        name = self.run.name or f"{self.recipe}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
        check_run_name(name, "run.name" if self.run.name else f"the run name made from recipe {self.recipe!r}")
        return name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Config":
        cfg = _build(cls, raw, prefix="")
        cfg.validate()
        return cfg


# A URI's scheme (s3://, gs://, file://): two letters or more, so a Windows drive is not one.
URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+://")

RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_run_name(name: str, what: str) -> None:
    """A run name is a folder name inside the storage: no separators, no `..`, at most 128
    characters."""
    if not RUN_NAME.fullmatch(name) or ".." in name:
        shown = name if len(name) <= 60 else name[:57] + "..."
        raise ConfigError(f"{what} must be 1-128 letters, digits, '.', '_' or '-' (no '..'), starting with a "
                          f"letter or digit, got {shown!r}")


def redact_url(url: str) -> str:
    """`url` with any user:password@ replaced by ***@, for messages."""
    return re.sub(r"(?<=://)[^/@\s]*@", "***@", url)


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 4, 4, 60, 60


def shown(value: Any, quote: bool = True) -> str:
    """`value` for an error message, at most a line long: a value read from a file may be huge
    (a YAML alias bomb expands to gigabytes)."""
    text = _SHORT.repr(value)
    return text if quote or not isinstance(value, str) else text.strip("'")


def _require(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{key} {problem}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types."""
    where = prefix.rstrip(".") or "config"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    not_names = [key for key in raw if not isinstance(key, str)]
    if not_names:
        raise ConfigError(f"{where} has the key {shown(not_names[0])} ({type(not_names[0]).__name__}): "
                          f"config keys are names")
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{shown(unknown[0], quote=False)} "
                          f"(known in {where}: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in raw.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            kwargs[name] = _build(kind, value, prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, kind, f"{prefix}{name}")
    return cls(**kwargs)


# Text keys that also take a YAML list of two integers, read as "MIN:MAX".
RANGE_KEYS = ("run.workers",)
# Text keys that also take a YAML list of integers, read as the comma list "A,B,C".
LIST_KEYS = ("model.stage_widths",)


def _is_int(value: Any) -> bool:
    """An integer as YAML reads one (bool is an int subclass in Python, not here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _coerce(value: Any, kind: type, key: str) -> Any:
    """Check a leaf value's type; numbers given as strings (YAML's 1e-4) are parsed."""
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if _is_int(value):
            return value
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d{1,4000}", value.strip()):  # int() refuses more digits
            return int(value)
    elif kind is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):
                raise ConfigError(f"{key} must be a finite number, got {shown(value)}")
            return number
    elif typing.get_origin(kind) is dict:  # model.options: a mapping of names, passed on unchanged
        if isinstance(value, dict):
            not_names = [k for k in value if not isinstance(k, str)]
            if not not_names:
                return value
            raise ConfigError(f"{key} has the key {shown(not_names[0])} ({type(not_names[0]).__name__}): "
                              f"option names are strings")
        if value is None:
            return {}
    elif kind is str:
        if isinstance(value, str):
            return value
        if key in RANGE_KEYS and isinstance(value, list):
            if len(value) == 2 and all(map(_is_int, value)):
                return f"{value[0]}:{value[1]}"
            raise ConfigError(f"{key} must be a count, auto, or [MIN, MAX] (two integers), got {shown(value)}")
        if key in LIST_KEYS and isinstance(value, list):
            if all(map(_is_int, value)):
                return ",".join(map(str, value))
            raise ConfigError(f"{key} must be a comma list or a list of integers, got {shown(value)}")
        if isinstance(value, bool):  # YAML 1.1 reads off/on (and no/yes) as booleans
            return "on" if value else "off"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    expected = "a mapping" if typing.get_origin(kind) is dict else kind.__name__
    raise ConfigError(f"{key} must be {expected}, got {shown(value)}")


# Keys that moved ------------------------------------------------------------

# Old key -> new key. Stored configs (run directories, checkpoints) written before a move
# load as if written with the new key; a recipe or --set that uses an old key works with a
# warning naming the new one.
MOVED_KEYS = {
    "train.checkpoint_every": "checkpoint.every",
    "train.checkpoint_every_minutes": "checkpoint.every_minutes",
    "train.keep_checkpoints": "checkpoint.keep",
    "train.keep_best_metric": "checkpoint.keep_best_metric",
    "train.keep_best_mode": "checkpoint.keep_best_mode",
    "train.async_checkpoint": "checkpoint.async_upload",
    **{f"train.{key}": f"perf.{key}" for key in ("torch_threads", "fused_adam", "channels_last", "compile",
                                                 "prefetch", "async_stats", "ddp_bucket_cap_mb",
                                                 "gradient_as_bucket_view")},
}


def migrate(raw: dict[str, Any], warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Move the keys of MOVED_KEYS to their new places in a raw config mapping (in place)."""
    for old, new in MOVED_KEYS.items():
        old_section, old_key = old.split(".")
        section = raw.get(old_section)
        if not isinstance(section, dict) or old_key not in section:
            continue
        value = section.pop(old_key)
        new_section, new_key = new.split(".")
        target = raw.setdefault(new_section, {})
        if isinstance(target, dict):
            target.setdefault(new_key, value)
        if warn is not None:
            warn(f"{old} is now {new}")
    return raw


# Keys that do nothing for some models or losses ------------------------------

# key -> (does it act for this config, what it needs). A non-default value of a key that does
# not act is a warning naming it: the user meant something that will not happen.
INERT_WHEN: dict[str, tuple[Callable[["Config"], bool], str]] = {
    "model.hidden": (lambda c: c.model.arch == "mlp", "model.arch mlp"),
    "model.depth": (lambda c: c.model.arch == "mlp", "model.arch mlp"),
    "model.activation": (lambda c: c.model.arch == "mlp", "model.arch mlp"),
    "model.channels": (lambda c: c.model.arch != "mlp", "a convolutional model.arch"),
    "model.spectral_norm": (lambda c: c.model.arch != "mlp", "a convolutional model.arch"),
    "model.d_batchnorm": (lambda c: c.model.arch != "mlp", "a convolutional model.arch"),
    "model.sync_batchnorm": (lambda c: c.model.arch != "mlp", "a model with BatchNorm"),
    "model.sr_scale": (lambda c: c.model.arch == "srgan", "model.arch srgan"),
    "schedule.ema_bn": (lambda c: c.model.arch in ("dcgan", "cgan") or own_model(c),
                        "a G with BatchNorm from noise (model.arch dcgan, cgan, or your own)"),
    "model.sr_blocks": (lambda c: c.model.arch == "srgan", "model.arch srgan"),
    "model.sr_bicubic_skip": (lambda c: c.model.arch == "srgan", "model.arch srgan"),
    "model.options": (lambda c: own_model(c), "a model.arch of your own"),
    "loss.content_weight": (lambda c: c.model.arch == "srgan", "model.arch srgan"),
    "eval.sr_photos": (lambda c: c.model.arch == "srgan", "model.arch srgan"),
    "eval.sr_tile": (lambda c: c.model.arch == "srgan" and bool(c.eval.sr_photos), "eval.sr_photos"),
    "loss.perceptual_weight": (lambda c: c.model.arch == "srgan", "model.arch srgan"),
    "loss.perceptual_weights": (lambda c: c.model.arch == "srgan", "model.arch srgan"),
    "loss.r1_interval": (lambda c: c.loss.penalized, "loss.r1_gamma > 0 or loss.r2_gamma > 0"),
    "loss.augment_p": (lambda c: bool(c.loss.augment_policy), "loss.diffaugment"),
    **{f"model.{key}": (lambda c: c.model.arch in ("r3gan", "r3gan_cond"), "model.arch r3gan or r3gan_cond")
       for key in ("blocks_per_stage", "cardinality", "expansion", "stage_widths")},
    **{f"cosine.{key}": (lambda c: c.cosine.images > 0, "cosine.images > 0")
       for key in ("lr_end_factor", "beta2_end", "gamma_end_factor", "ema_halflife_images", "augment_p_end")},
    "optim.lr_decay_start": (lambda c: c.optim.lr_decay != "none", "optim.lr_decay linear or cosine"),
    "checkpoint.keep_best_mode": (lambda c: bool(c.checkpoint.keep_best_metric), "checkpoint.keep_best_metric"),
    "eval.inception_n": (lambda c: c.eval.inception, "eval.inception true"),
    "eval.every_n": (lambda c: c.eval.every_steps > 0, "eval.every_steps > 0"),
    "eval.metrics": (lambda c: c.eval.uses_inception, "eval.inception or eval.every_steps"),
}


# A builder of your own gets the whole model config, and super-resolution's content losses apply
# to a super-resolution model of your own: these keys may act for any model.arch but a built-in.
ARCH_KEYS = {key for key in INERT_WHEN if key.startswith("model.")} | {
    "loss.content_weight", "loss.perceptual_weight", "loss.perceptual_weights"}


def own_model(cfg: "Config") -> bool:
    """model.arch is not a built-in: an entry point or a module:function path."""
    # Deferred on purpose, as in ModelConfig.validate: the registry imports torch.
    from gan_dist.models import ARCHITECTURES

    return cfg.model.arch not in ARCHITECTURES


def inert_keys(cfg: "Config") -> list[str]:
    """Warnings for keys set to a non-default value that have no effect in this config."""
    default = Config()
    found = []
    for key, (acts, needs) in INERT_WHEN.items():
        if key in ARCH_KEYS and own_model(cfg):
            continue
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value != getattr(getattr(default, section), name) and not acts(cfg):
            found.append(f"{key}={value!r} has no effect: it needs {needs}")
    return found


# Recipes ---------------------------------------------------------------------

def recipe_names() -> list[str]:
    folder = resources.files("gan_dist") / "recipes"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def read_recipe(ref: str) -> tuple[str, dict[str, Any]]:
    """A shipped recipe name or a YAML file path -> (recipe name, raw mapping)."""
    if ref.endswith((".yaml", ".yml")) or "/" in ref:
        path = Path(ref)
        if not path.is_file():
            raise ConfigError(f"recipe file {ref} does not exist")
        if path.stat().st_size > MAX_YAML_BYTES:
            raise ConfigError(f"recipe file {ref} is {path.stat().st_size:,} bytes, over the {MAX_YAML_BYTES:,} "
                              f"a recipe may have")
        try:
            text, name = path.read_text(encoding="utf-8"), path.stem
        except UnicodeDecodeError:
            raise ConfigError(f"recipe file {ref} is not a text file (not UTF-8): a recipe is YAML") from None
        except OSError as exc:
            raise ConfigError(f"recipe file {ref}: {exc.strerror or exc}") from None
    else:
        if ref not in recipe_names():
            raise ConfigError(f"unknown recipe {ref!r} (shipped: {', '.join(recipe_names())})")
        text, name = (resources.files("gan_dist") / "recipes" / f"{ref}.yaml").read_text(), ref
    raw = load_yaml(text, f"recipe {ref}")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {ref} must be a YAML mapping, got {type(raw).__name__}")
    return name, raw


# Limits of a YAML document (a recipe, a --set value, a stored config.yaml): a config has a
# few hundred nodes a few levels deep; these refuse what only an attack needs.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_DEPTH = 32
MAX_YAML_NODES = 10_000  # counting every alias as a copy of what it names ("billion laughs")


def load_yaml(text: str, what: str) -> Any:
    """`text` parsed as YAML (safe: no tags that run code), within the limits above; a
    ConfigError naming `what` otherwise."""
    try:
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):  # events: no recursion, no expansion
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    raise ConfigError(f"{what} nests deeper than {MAX_YAML_DEPTH} levels")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                _check_expanded_size(node, what)
            return loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{what} is not valid YAML{at}: {getattr(exc, 'problem', None) or first_line(exc)}") from None
    except ValueError as exc:  # a value YAML cannot make (an integer of 5,000 digits), or our own ConfigError
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{what} is not valid YAML: {shown(first_line(exc), quote=False)}") from None


def _check_expanded_size(root: yaml.Node, what: str) -> None:
    """Refuse a document whose aliases expand to more than MAX_YAML_NODES nodes, or that
    contains itself. Each node's expanded size is counted once (memoised), so this takes
    time in the document's size, not in its expansion's."""
    size: dict[int, int] = {}
    visiting: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in size:
            continue
        children = _children(node)
        if children_done:
            visiting.discard(id(node))
            size[id(node)] = 1 + sum(size[id(c)] for c in children)
            if size[id(node)] > MAX_YAML_NODES:
                raise ConfigError(f"{what} expands to over {MAX_YAML_NODES:,} values (its aliases repeat "
                                  f"what they name): refused")
            continue
        if id(node) in visiting:
            raise ConfigError(f"{what} contains itself through an alias: refused")
        visiting.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def first_line(text: Any) -> str:
    lines = str(text).strip().splitlines()
    return lines[0].strip() if lines else ""


def apply_override(raw: dict[str, Any], assignment: str, warn: Callable[[str], None] | None = None) -> None:
    """Apply one `--set a.b.c=value` to a raw config mapping (value parsed as YAML)."""
    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise ConfigError(f"--set expects key=value with a dotted key, got {assignment!r}")
    if key in MOVED_KEYS:
        if warn is not None:
            warn(f"{key} is now {MOVED_KEYS[key]}")
        key = MOVED_KEYS[key]
    if key in RANGE_KEYS and ELASTIC_WORKERS.fullmatch(text.strip()):
        # As written: YAML 1.1 would read 2:4 as the base-60 integer 124.
        text = repr(text.strip())
    try:
        value = load_yaml(text, f"--set {key}") if text.strip() else ""
    except ConfigError as exc:
        if "not valid YAML" not in str(exc):
            raise
        value = text  # not YAML: the text itself (a path with a colon, say)
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def resolve(ref: str | None, overrides: list[str] = (), warn: Callable[[str], None] | None = None) -> Config:
    """Recipe (default ring8) + overrides -> a validated Config. Moved and inert keys are
    reported through `warn` (default: Python warnings)."""
    warn = warn or (lambda message: warnings.warn(message, stacklevel=3))
    name, raw = read_recipe(ref or "ring8")
    raw.setdefault("recipe", name)
    migrate(raw, warn)
    for assignment in overrides:
        apply_override(raw, assignment, warn)
    cfg = Config.from_dict(raw)
    for message in inert_keys(cfg):
        warn(message)
    return cfg


def flatten(tree: dict, prefix: str = "") -> dict:
    """A nested mapping with dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def load_yaml_config(text: str) -> Config:
    """A resolved config as written to a run directory or a checkpoint (keys that moved since
    it was written are moved silently)."""
    raw = load_yaml(text, "the stored config.yaml")
    return Config.from_dict(migrate(raw) if isinstance(raw, dict) else raw)
