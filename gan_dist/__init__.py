"""gan-dist: distributed GAN training on Ray, PyTorch DDP (through Accelerate) and WebDataset.

The public API (see gan_dist.api and docs/api.md): `load_config`, `train`, `load_generator`,
and the `RunResult` that `train` returns. They load torch (and Ray) on first use, so that
`gan-dist --help` stays quick. A plug-in (a model or loss of your own) also relies on
`gan_dist.models.DataShape`, the `gan_dist.config.ModelConfig` its builder receives, and
`gan_dist.losses.AdversarialLoss`. Everything else in the package is internal and may
change between versions.
"""

__version__ = "0.1.0"

__all__ = ["RunResult", "load_config", "load_generator", "train"]


def __getattr__(name: str):
    # PEP 562: the API's modules import torch; import them when first asked for.
    if name in ("load_config", "train", "load_generator"):
        from gan_dist import api

        return getattr(api, name)
    if name == "RunResult":
        from gan_dist.results import RunResult

        return RunResult
    raise AttributeError(f"module 'gan_dist' has no attribute {name!r}")
