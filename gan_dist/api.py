"""The public Python API: what the `gan-dist` command does, as functions.

    cfg = gan_dist.load_config("dcgan-digits", ["optim.lr_g=1e-4", "train.max_steps=500"])
    result = gan_dist.train(cfg)            # a RunResult: result.status, result.run_dir, result.summary
    gen = gan_dist.load_generator(result.run_dir)   # G_ema of the latest checkpoint, for inference

Everything else in the package is internal and may change between versions, except the
contract of a plug-in (a model or loss of your own: docs/api.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from gan_dist import driver, inference
from gan_dist.config import Config, resolve
from gan_dist.results import RunResult


def load_config(recipe_or_path: str | None = None, overrides: list[str] = (),
                warn: Callable[[str], None] | None = None) -> Config:
    """A validated config: a shipped recipe's name or a YAML file (default ring8), with dotted
    `key=value` overrides as `--set` takes them. Bad input raises ConfigError (a ValueError).
    Keys that moved or do nothing are reported through `warn` (default: Python warnings)."""
    return resolve(recipe_or_path, list(overrides), warn=warn)


def train(config: Config, dry_run: bool = False, verbose: bool = False) -> RunResult | None:
    """Train `config` as `gan-dist train` does (a local Ray, a cluster at run.address, or in this
    process with run.use_ray false), printing the plan and progress (`verbose`: a failure's
    full traceback on stderr too); None for a dry run. Bad input raises a ValueError before anything is written; a
    failure at run time is returned as a RunResult with status "failed" (traceback in its run
    directory's error.log)."""
    return driver.train(config, dry_run=dry_run, verbose=verbose)


def load_generator(checkpoint: str | Path) -> inference.Generator:
    """G_ema of a checkpoint folder or of a run directory's latest checkpoint, in eval mode on
    CPU, with its config and data shape (`.G_ema`, `.cfg`, `.meta`, `.step`)."""
    return inference.load_generator(str(checkpoint))
