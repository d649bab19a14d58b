"""Limits read from the environment (GAN_DIST_IO_TIMEOUT, GAN_DIST_SUBMIT_RETRIES, ...): one
parse and one error wording for every command that takes them. A bad value is a ValueError
that names the variable; each caller turns it into its own one-line error."""

from __future__ import annotations

import math
import os

MOST_RETRIES = 100


def seconds(name: str, default: float) -> float:
    """The environment variable `name` as seconds > 0 (finite), or `default` when it is unset."""
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = -1.0
    if not 0 < value < math.inf:
        raise ValueError(f"{name} must be a number of seconds > 0, got {raw!r}")
    return value


def retries(name: str, default: int) -> int:
    """The environment variable `name` as a count of further tries in 0..MOST_RETRIES, or `default`."""
    raw = os.environ.get(name, "")
    if raw and not (raw.strip().isdigit() and int(raw) <= MOST_RETRIES):
        raise ValueError(f"{name} must be an integer in 0..{MOST_RETRIES}, got {raw!r}")
    return int(raw) if raw else default
