"""Everything the adversarial game carries from step to step."""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from gan_dist.models import DataShape, build_models
from gan_dist.runtime import Runtime, convert_sync_batchnorm, seed_everything
from gan_dist.schedule import lazy_regularization


@dataclass
class TrainState:
    G: nn.Module  # unwrapped: used where no all-reduce is wanted, and for saving
    D: nn.Module
    G_ddp: nn.Module  # wrapped by Accelerate (DDP when world_size > 1)
    D_ddp: nn.Module
    G_ema: nn.Module
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    noise: torch.Generator  # this rank's z stream, checkpointed with the rank
    # Updates skipped because a loss or gradient was not finite: counted on the device, so
    # the step never waits for it; read when logged or saved.
    nonfinite: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.int64))
    step: int = 0
    lr_scale: float = 1.0  # both learning rates' factor, lowered by each rollback
    history: list[dict] = field(default_factory=list)

    @property
    def nonfinite_steps(self) -> int:
        return int(self.nonfinite.item())  # host sync

    def shared_state_dict(self) -> dict:
        """What every rank holds identically: saved once, by rank 0."""
        return {
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "step": self.step,
            "nonfinite_steps": self.nonfinite_steps,
            "lr_scale": self.lr_scale,
            "history": self.history,
        }

    def load_shared_state_dict(self, state: dict) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.G_ema.load_state_dict(state["G_ema"])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        self.step = int(state["step"])
        self.nonfinite.fill_(int(state.get("nonfinite_steps", 0)))
        self.lr_scale = float(state.get("lr_scale", 1.0))
        self.history = list(state["history"])


def build_state(cfg, shape: DataShape, rt: Runtime) -> TrainState:
    # The same seed on every rank: identical initial weights before DDP's broadcast.
    seed_everything(cfg.seed)
    G, D = build_models(cfg.model, shape)
    if cfg.model.sync_batchnorm:
        G, D = convert_sync_batchnorm(G, rt.device), convert_sync_batchnorm(D, rt.device)
    G, D = G.to(rt.device), D.to(rt.device)
    if cfg.perf.channels_last and is_conv_net(G, D):
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    fused = cfg.perf.fused_adam
    opt_G = torch.optim.Adam(G.parameters(), lr=cfg.optim.lr_g, betas=(cfg.optim.beta1, cfg.optim.beta2), fused=fused)
    c = d_lazy_ratio(cfg)
    opt_D = torch.optim.Adam(D.parameters(), lr=cfg.optim.lr_d * c, betas=(cfg.optim.beta1 ** c, cfg.optim.beta2 ** c),
                             fused=fused)
    if cfg.perf.compile:
        # In place: the modules keep their names (and state-dict keys); DDP wraps the compiled ones.
        G.compile()
        D.compile()
    G_ddp, D_ddp, opt_G, opt_D = rt.prepare(G, D, opt_G, opt_D)
    # From here on, randomness differs by rank (seeds offset by rank).
    seed_everything(cfg.seed + rt.rank)
    noise = torch.Generator(device=rt.device)
    noise.manual_seed(noise_seed(cfg.seed, rt.rank))
    return TrainState(G=G, D=D, G_ddp=G_ddp, D_ddp=D_ddp, G_ema=G_ema, opt_G=opt_G, opt_D=opt_D, noise=noise,
                      nonfinite=torch.zeros((), dtype=torch.int64, device=rt.device))


def is_conv_net(*modules: nn.Module) -> bool:
    return any(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for module in modules for m in module.modules())


def noise_seed(seed: int, rank: int, draw: int = 0) -> int:
    """The seed of a rank's z stream; `draw` > 0 gives a fresh stream (after a rollback)."""
    return seed * 1_000_003 + rank + 7919 * draw


def resize_seed(seed: int, rank: int, step: int) -> int:
    """The seed of the random streams of a rank that a resize added at `step` (a checkpoint of a
    smaller world size has none for it): the run's own, apart from every rank's first streams
    and from the draws after rollbacks."""
    return int(np.random.SeedSequence([seed, rank, step, RESIZE_STREAM]).generate_state(1)[0])


# Tells the streams of ranks added by a resize apart from any other seed derived from (seed, rank).
RESIZE_STREAM = 0x5E512E


def d_lazy_ratio(cfg) -> float:
    """D's lr/beta exponent under lazy R1/R2 (see schedule.lazy_regularization)."""
    return lazy_regularization(cfg.loss.r1_interval) if cfg.loss.penalized else 1.0


def fingerprint(*modules: nn.Module) -> str:
    """sha256 of the modules' state dicts (names and exact bytes), to compare runs and ranks."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()
                          if tensor.numel() else b"")
    return digest.hexdigest()
