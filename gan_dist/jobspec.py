"""A Ray job as `gan-dist submit` builds it, and the error of a bad submission. A leaf module:
the submit command builds a JobSpec, the Ray integration sends it."""

from __future__ import annotations

from dataclasses import dataclass, field

from gan_dist.config import ConfigError, first_line  # noqa: F401 (first_line: the submit modules' too)


class SubmitError(ConfigError):
    """Bad input for a submission (arguments, address, token): one line, exit 2."""


@dataclass
class JobSpec:
    """Everything the Job Submission SDK is told; printed by --dry-run."""

    submission_id: str
    entrypoint: str
    runtime_env: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    entrypoint_num_cpus: float = 0.0
    entrypoint_num_gpus: float = 0.0
    entrypoint_resources: dict = field(default_factory=dict)
