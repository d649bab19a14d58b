"""Model registry: an architecture name -> a builder of (G, D).

Models know nothing about distribution: this package imports neither
accelerate, ray nor torch.distributed (a test enforces it). Wrapping happens
from outside, and the unwrapped modules are what EMA and checkpoints use.

`model.arch` is a built-in name (ARCHITECTURES), an entry point of the group
`gan_dist.models`, or a `module:function` path (gan_dist.plugins). A builder is
called as `build(model_cfg, shape)` with the typed ModelConfig (a user's own keys
in `model_cfg.options`) and the data's DataShape, and returns (G, D). Its `task`
attribute says what G takes (TASK_NAMES; without one, "unconditional"):

- unconditional: G(z), z of shape [B, model.z_dim];
- conditional: G(z, y), y the class labels, int64 of shape [B];
- super_resolution: G(lr_img), the real batch downscaled by model.sr_scale.

D is called as D(x, y), y the labels when the data has them, else None, and
returns one logit per sample, shape [B]. gan_dist.plan checks all of this at
start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from gan_dist import plugins
from gan_dist.config import first_line
from gan_dist.models.dcgan import build_cgan, build_dcgan
from gan_dist.models.mlp import ACTIVATIONS, build_mlp_gan
from gan_dist.models.r3gan import build_r3gan, build_r3gan_cond
from gan_dist.models.srgan import build_srgan


@dataclass(frozen=True)
class DataShape:
    """What a model needs to know about the data, read from the dataset's index."""

    kind: str  # "points" (vectors) or "image"
    sample_shape: tuple[int, ...]
    num_classes: int = 0


Builder = Callable[..., tuple[nn.Module, nn.Module]]

ARCHITECTURES: dict[str, Builder] = {
    "mlp": build_mlp_gan,
    "dcgan": build_dcgan,
    "cgan": build_cgan,
    "srgan": build_srgan,
    "r3gan": build_r3gan,
    "r3gan_cond": build_r3gan_cond,
}

# How G is driven: from noise, from noise and a class, or from a low-resolution image.
TASK_NAMES = ("unconditional", "conditional", "super_resolution")
TASKS = {"mlp": "unconditional", "dcgan": "unconditional", "cgan": "conditional", "srgan": "super_resolution",
         "r3gan": "unconditional", "r3gan_cond": "conditional"}


def check_arch(arch: str) -> None:
    """`arch` names a built-in, an installed entry point or a module:function path (imports nothing)."""
    plugins.check_name("model.arch", arch, plugins.MODEL_GROUP, ARCHITECTURES)


def arch_label(arch: str) -> str:
    """`arch` for a message: a plug-in's entry point also names the builder it points to."""
    return arch if arch in ARCHITECTURES else _plugin(arch).label


def model_builder(arch: str) -> Builder:
    return ARCHITECTURES[arch] if arch in ARCHITECTURES else _plugin(arch).obj


def model_task(arch: str) -> str:
    """What G of `arch` takes: one of TASK_NAMES."""
    if arch in TASKS:
        return TASKS[arch]
    task = getattr(_plugin(arch).obj, "task", "unconditional")
    if task not in TASK_NAMES:
        raise plugins.PluginError(f"model.arch {arch_label(arch)}: the builder's task is {task!r}, not one of "
                                  f"{', '.join(TASK_NAMES)}")
    return task


def build_models(model_cfg, shape: DataShape) -> tuple[nn.Module, nn.Module]:
    """(G, D) for `model_cfg.arch` on data of `shape`; a mismatch is a ValueError."""
    if model_cfg.arch in ARCHITECTURES:
        return ARCHITECTURES[model_cfg.arch](model_cfg, shape)
    try:
        built = _plugin(model_cfg.arch).obj(model_cfg, shape)
    except ValueError:
        raise
    except Exception as exc:  # a user's builder: its error is bad input too, named on one line
        raise plugins.PluginError(f"the builder raised {type(exc).__name__}: {first_line(exc)}") from None
    if not (isinstance(built, tuple) and len(built) == 2 and all(isinstance(net, nn.Module) for net in built)):
        raise plugins.PluginError(f"the builder returned {_kind(built)}, not a tuple (G, D) of torch.nn.Modules")
    return built


def _plugin(arch: str) -> plugins.Plugin:
    plugin = plugins.load("model.arch", arch, plugins.MODEL_GROUP)
    if not callable(plugin.obj):
        raise plugins.PluginError(f"model.arch {plugin.label} is a {type(plugin.obj).__name__}, not a builder "
                                  f"function build(model_cfg, shape) -> (G, D)")
    return plugin


def _kind(value) -> str:
    if isinstance(value, tuple):
        return f"a tuple of {len(value)} ({', '.join(type(v).__name__ for v in value[:3])})"
    return f"a {type(value).__name__}"


__all__ = ["ACTIVATIONS", "ARCHITECTURES", "DataShape", "TASKS", "TASK_NAMES", "arch_label", "build_models",
           "check_arch", "model_builder", "model_task"]
