"""`gan-dist submit`: send a training run to a Ray cluster as a Ray Job.

The job runs `gan-dist train` with the user's train arguments plus two things
a cluster run needs and a local one does not: a stable run name (made here
when the user gave none, so a resubmitted job finds its checkpoints and
resumes) and storage that every node sees (an absolute path). Inside the job
RAY_ADDRESS is set, so `gan-dist train` joins the cluster instead of starting
a Ray of its own.

This module builds the job and talks to the user; the Ray calls are in the
"Job submission" section of `gan_dist.integrations.ray`.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shlex
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

from gan_dist import __version__, env, plugins
from gan_dist.config import Config, resolve
from gan_dist.jobspec import JobSpec, SubmitError, first_line
from gan_dist.train_args import add_train_arguments, train_overrides

# Hosts for which a relative --storage can be made absolute here and still be right on the cluster.
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", socket.gethostname())
# Job metadata keys (strings only); they tie a Ray job to the run it trains.
RUN_KEY, STORAGE_KEY = "gan_dist_run", "gan_dist_storage"


def register(subparsers) -> None:
    """Add `submit`: train's own arguments (train_args, so they cannot drift) plus submission options."""
    # conflict_handler="resolve": submit's --address (the dashboard URL) replaces train's (a Ray
    # address; the job finds its own in RAY_ADDRESS), and its --dry-run and --no-ray differ too.
    parser = subparsers.add_parser(
        "submit", conflict_handler="resolve",
        help="submit a training run to a Ray cluster as a Ray Job",
        description="Submit `gan-dist train [ARGS]` to a Ray cluster through its Job Submission API, "
                    "follow its logs, and exit with its outcome.")
    add_train_arguments(parser)
    parser.add_argument("--dry-run", action="store_true", help="validate the config, print the job, submit nothing")
    parser.add_argument("--no-ray", action="store_true", help=argparse.SUPPRESS)  # always Ray on a cluster
    parser.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS", ""),
                        help="the head's dashboard URL, http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS)")
    parser.add_argument("--token-file", help="Ray auth token file (default: $RAY_AUTH_TOKEN, "
                                             "$RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token)")
    parser.add_argument("--no-wait", action="store_true", help="print the job id and return")
    code = parser.add_mutually_exclusive_group()
    code.add_argument("--working-dir", help="upload this folder as the job's code (default: this source "
                                            "checkout, when gan-dist runs from one)")
    code.add_argument("--pip", metavar="REQUIREMENT", help="install gan-dist on the cluster with pip, "
                                                           "e.g. gan-dist==0.1.0 or a wheel URL")
    code.add_argument("--installed", action="store_true", help="use the gan-dist installed on the cluster "
                                                               "(e.g. in its container image)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment variable for the job (repeatable), e.g. GAN_DIST_CACHE=/mnt/cache")
    parser.add_argument("--entrypoint-cpus", type=float, default=0.0,
                        help="CPUs reserved for the driver (default 0: it may run on a head with num-cpus 0)")
    parser.add_argument("--entrypoint-gpus", type=float, default=0.0, help="GPUs reserved for the driver")
    parser.add_argument("--entrypoint-resource", action="append", default=[], metavar="NAME=AMOUNT",
                        help="custom resource reserved for the driver (repeatable)")
    parser.set_defaults(func=cmd_submit)


def cmd_submit(args) -> int:
    address = dashboard_url(args.address)
    cfg, train_argv = job_config(args, address)
    spec = job_spec(args, cfg, train_argv)
    if args.dry_run:
        print(describe(spec, address))
        return 0
    token, token_source = find_token(args.token_file)
    timeout, retries = dashboard_limits()
    check_reachable(address, timeout)

    # Deferred on purpose: `gan-dist submit --dry-run` and --help need no Ray.
    from gan_dist.integrations import ray as ray_jobs

    client = ray_jobs.job_client(address, token, token_source, timeout, retries)
    running = ray_jobs.active_jobs(client, spec.metadata, keys=(RUN_KEY, STORAGE_KEY))
    if running:
        raise SubmitError(f"run {cfg.run.name} is already running as job {running[0]}; two jobs must not write "
                          f"one run directory (stop it: ray job stop {running[0]} --address {address})")
    job_id = ray_jobs.submit_job(client, spec)
    if args.no_wait:
        print(job_id)
        return 0
    print(f"submitted job {job_id}: run {cfg.run.name} in {cfg.run.storage}, to {address}", flush=True)
    return follow(ray_jobs, client, job_id, address)


def follow(ray_jobs, client, job_id: str, address: str) -> int:
    """Stream the job's logs until it ends; exit 0 if it succeeded, else 1."""
    try:
        outcome = ray_jobs.follow_job(client, job_id)
    except KeyboardInterrupt:
        print(f"\ngan-dist: stopped following job {job_id}; it keeps running "
              f"(stop it: ray job stop {job_id} --address {address})", file=sys.stderr)
        return 130
    except Exception as exc:  # the cluster went away mid-run: a run-time failure
        print(f"gan-dist: error: lost contact with {address} while following job {job_id}: "
              f"{first_line(exc)}", file=sys.stderr)
        return 1
    if outcome["status"] == "SUCCEEDED":
        print(f"job {job_id} succeeded")
        return 0
    reason = first_line(outcome.get("message") or "").split(", last available logs")[0]
    print(f"gan-dist: error: job {job_id} {outcome['status'].lower()}: {reason or 'no reason given'}",
          file=sys.stderr)
    return 1


# Building the job -----------------------------------------------------------------

def dashboard_url(address: str) -> str:
    """http(s)://HOST:PORT of the head's dashboard; a bare HOST:PORT gets http://."""
    address = address.strip().rstrip("/")
    if not address:
        raise SubmitError("submit needs --address http://HEAD:8265 (the head's dashboard) "
                          "or RAY_API_SERVER_ADDRESS")
    if "://" not in address:
        address = f"http://{address}"
    url = urlparse(address)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise SubmitError(f"--address {address}: expected http://HEAD:8265, the head's dashboard URL")
    return address


def job_config(args, address: str) -> tuple[Config, list[str]]:
    """Resolve the run's config here (bad config fails before anything is sent) and the train argv."""
    if args.no_ray:
        raise SubmitError("--no-ray: a submitted run always trains on the cluster's Ray")
    # Submit's --address is the dashboard; the job joins its cluster through RAY_ADDRESS.
    overrides = train_overrides(argparse.Namespace(**{**vars(args), "address": None}))
    cfg = resolve(args.recipe, overrides)
    cfg.run.name = cfg.run_name()
    cfg.run.storage = cluster_storage(cfg.run.storage, address)
    # The job gets the generated name and the absolute storage in place of the user's.
    kept = [o for o in overrides if not o.replace(" ", "").startswith(("run.name=", "run.storage="))]
    pinned = [f"run.name={cfg.run.name}", f"run.storage={cfg.run.storage}"]
    recipe = [args.recipe] if args.recipe else []
    return cfg, recipe + [arg for o in kept + pinned for arg in ("--set", o)]


def cluster_storage(storage: str, address: str) -> str:
    """Storage as every node sees it: absolute; a relative path only makes sense on this machine.
    (A URI is refused before this: run directories are paths, config.RunConfig.validate.)"""
    if Path(storage).is_absolute():
        return storage
    if urlparse(address).hostname not in LOCAL_HOSTS:
        raise SubmitError(f"run.storage {storage!r} is relative: give --storage a path that every node "
                          f"of the cluster at {address} sees (shared storage), e.g. /mnt/shared/runs")
    return str(Path(storage).expanduser().absolute())


# `ray job stop` sends the job's driver a SIGTERM, which has every rank save at its next step
# (driver.run), and a SIGKILL after RAY_JOB_STOP_WAIT_TIME_S (Ray's default: 3 s, often too
# short for a step and a save). The job supervisor reads it from the job's environment; --env
# sets another value.
STOP_WAIT_ENV, JOB_STOP_WAIT_SECONDS = "RAY_JOB_STOP_WAIT_TIME_S", 60


def job_spec(args, cfg: Config, train_argv: list[str]) -> JobSpec:
    runtime_env, train_argv = code_env(args, train_argv)
    modules = plugin_modules(cfg)
    if modules:
        runtime_env["py_modules"] = [str(path) for path in modules]
    env_vars = {"PYTHONUNBUFFERED": "1", STOP_WAIT_ENV: str(JOB_STOP_WAIT_SECONDS), **parse_pairs(args.env, "--env", str)}
    runtime_env["env_vars"] = env_vars
    return JobSpec(
        # Job ids are unique per cluster; the run name is what stays stable across submissions.
        submission_id=f"gan-dist-{cfg.run.name}-{secrets.token_hex(3)}",
        entrypoint=shlex.join(["python", "-m", "gan_dist", "train", *train_argv]),
        runtime_env=runtime_env,
        metadata={RUN_KEY: cfg.run.name, STORAGE_KEY: cfg.run.storage, "gan_dist_version": __version__},
        entrypoint_num_cpus=args.entrypoint_cpus,
        entrypoint_num_gpus=args.entrypoint_gpus,
        entrypoint_resources=parse_pairs(args.entrypoint_resource, "--entrypoint-resource", float),
    )


def code_env(args, train_argv: list[str]) -> tuple[dict, list[str]]:
    """Where the job's gan-dist comes from: an uploaded folder, a pip requirement, or the cluster's image."""
    if args.pip:
        return {"pip": [args.pip]}, _recipe_file_needs_upload(args, train_argv)
    if args.installed:
        return {}, _recipe_file_needs_upload(args, train_argv)
    folder = Path(args.working_dir) if args.working_dir else source_checkout()
    if folder is None:  # an installed release: the cluster must have gan-dist too
        return {}, _recipe_file_needs_upload(args, train_argv)
    if not folder.is_dir():
        raise SubmitError(f"--working-dir {folder}: no such folder")
    folder = folder.resolve()
    if args.recipe and _is_file(args.recipe):
        recipe = Path(args.recipe).resolve()
        if not recipe.is_relative_to(folder):
            raise SubmitError(f"recipe file {args.recipe} is outside the uploaded folder {folder}; "
                              f"the job only sees that folder")
        train_argv = [recipe.relative_to(folder).as_posix(), *train_argv[1:]]
    # Ray leaves out .git and whatever .gitignore names (.venv, runs/).
    return {"working_dir": str(folder)}, train_argv


def plugin_modules(cfg: Config) -> list[Path]:
    """The code of the config's plug-ins (a model.arch or loss.kind of the user's own), shipped
    with the job as Ray `py_modules`: each plug-in's top-level package and, for an entry point,
    its .dist-info folder, so that the name resolves on the cluster as it does here. Ray puts
    them on the job's and every worker's path, before the image's own packages."""
    # Deferred on purpose, as config validation does: the registries import torch.
    from gan_dist.losses import ADVERSARIAL_LOSSES
    from gan_dist.models import ARCHITECTURES

    found: list[Path] = []
    for key, name, group, builtins in (("model.arch", cfg.model.arch, plugins.MODEL_GROUP, ARCHITECTURES),
                                       ("loss.kind", cfg.loss.kind, plugins.LOSS_GROUP, ADVERSARIAL_LOSSES)):
        if name not in builtins:
            found += [path for path in plugins.code_paths(key, name, group) if path not in found]
    return found


def source_checkout() -> Path | None:
    """The source tree this gan_dist was imported from, if it is one (not an installed wheel)."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "gan_dist").is_dir() else None


def _is_file(recipe: str) -> bool:
    return recipe.endswith((".yaml", ".yml")) or "/" in recipe


def _recipe_file_needs_upload(args, train_argv: list[str]) -> list[str]:
    if args.recipe and _is_file(args.recipe):
        raise SubmitError(f"recipe file {args.recipe} would not exist on the cluster: submit it with "
                          f"--working-dir (a folder holding it) or use a shipped recipe")
    return train_argv


def parse_pairs(items: list[str], flag: str, kind: type) -> dict:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SubmitError(f"{flag} expects NAME=VALUE, got {item!r}")
        try:
            pairs[key.strip()] = kind(value)
        except ValueError:
            raise SubmitError(f"{flag} {item}: {value!r} is not a {kind.__name__}") from None
    return pairs


# Environment variables whose values a dry run does not print.
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|PASSPHRASE|CREDENTIAL|AUTH|KEY|COOKIE|SESSION|PRIVATE|PW\b",
                         re.IGNORECASE)


def masked(runtime_env: dict) -> dict:
    """`runtime_env` with the values of secret-looking environment variables replaced by ***."""
    env = {k: ("***" if SECRET_NAME.search(k) else v) for k, v in runtime_env.get("env_vars", {}).items()}
    return {**runtime_env, "env_vars": env} if "env_vars" in runtime_env else runtime_env


def describe(spec: JobSpec, address: str) -> str:
    lines = [f"dry run: would submit job {spec.submission_id} to {address}",
             f"  entrypoint   {spec.entrypoint}",
             f"  runtime_env  {masked(spec.runtime_env)}",
             f"  resources    {spec.entrypoint_num_cpus:g} CPU, {spec.entrypoint_num_gpus:g} GPU"
             + "".join(f", {v:g} {k}" for k, v in spec.entrypoint_resources.items()),
             f"  metadata     {spec.metadata}"]
    return "\n".join(lines)


# Reaching the cluster -------------------------------------------------------------

def find_token(token_file: str | None) -> tuple[str | None, str | None]:
    """(token, where it came from), in Ray's own order: the flag, RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray."""
    if token_file:
        path = Path(token_file).expanduser()
        if not path.is_file():
            raise SubmitError(f"--token-file {token_file}: no such file")
        return _read_token(path), str(path)
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN"
    for path in (os.environ.get("RAY_AUTH_TOKEN_PATH"), "~/.ray/auth_token"):
        if path and Path(path).expanduser().is_file():
            return _read_token(Path(path).expanduser()), str(Path(path).expanduser())
    return None, None


def _read_token(path: Path) -> str:
    token = path.read_text().strip()
    if not token:
        raise SubmitError(f"token file {path} is empty")
    return token


# Every call to the dashboard has a time limit and bounded retries, so a head that accepts
# connections and never answers ends in an error naming its URL, not in a hang.
TIMEOUT_ENV, RETRIES_ENV = "GAN_DIST_SUBMIT_TIMEOUT", "GAN_DIST_SUBMIT_RETRIES"
DEFAULT_TIMEOUT_SECONDS, DEFAULT_RETRIES = 30.0, 2


def dashboard_limits() -> tuple[float, int]:
    """(seconds a dashboard call may wait for an answer, further tries of a failed read), from
    GAN_DIST_SUBMIT_TIMEOUT and GAN_DIST_SUBMIT_RETRIES."""
    try:
        return env.seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT_SECONDS), env.retries(RETRIES_ENV, DEFAULT_RETRIES)
    except ValueError as exc:
        raise SubmitError(str(exc)) from None


def check_reachable(address: str, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
    """Fail in seconds, not minutes, when nothing answers at the dashboard's host and port."""
    url = urlparse(address)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SubmitError(f"cannot reach the Ray dashboard at {address} ({reason}); is the head up, and is "
                          f"this its dashboard port (8265 by default)?") from None
