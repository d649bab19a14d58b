"""A run directory, `<storage>/<name>/`: where it is, whether it resumes, and its files.

Every file is written atomically (a temporary name renamed into place), so a reader
(the driver, `gan-dist sample`, `eval`, Prometheus' file discovery) never sees half a
file. The checkpoints inside are `gan_dist.checkpoint`'s business.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from gan_dist import checkpoint as ckpt
from gan_dist.config import Config, ConfigError, first_line, flatten, load_yaml_config

CONFIG_FILE, SUMMARY_FILE, HISTORY_FILE, ERROR_LOG = "config.yaml", "summary.json", "history.parquet", "error.log"

# Keys that may change when a run is resumed: where and how big it runs, and for how long.
RESUMABLE_CHANGES = ("run.", "train.max_steps", "metrics.")


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)


def history_bytes(rows: list[dict]) -> bytes:
    """history.parquet's bytes: a column per key of any row (periodic evals add theirs to some
    rows only; from_pylist would keep just the first row's keys), null where a row lacks it."""
    keys = list(dict.fromkeys(key for row in rows for key in row))
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pydict({key: [row.get(key) for row in rows] for key in keys}), buf)
    return buf.getvalue()


def last_logged(rows: list[dict]) -> dict:
    """The values of the last log interval, without its step and timestamp (summary.json `final`)."""
    return {k: v for k, v in (rows[-1] if rows else {}).items() if k not in ("step", "time")}


def run_directory(cfg: Config) -> Path:
    return Path(cfg.run.storage).expanduser().absolute() / cfg.run.name


def check_writable(path: Path, what: str) -> None:
    """That folder `path` can be created or written into, checked before anything is written
    (errors start with `what`, which names the setting): the deepest part of it that exists
    is a folder, not a file, and this process may create folders in it. Checked twice:
    os.access(W_OK | X_OK) explains the usual refusals (mode bits and ACLs, a read-only
    mount), then an empty folder is made there and removed again, which also catches what
    access() does not see (root passes any mode bits, but not a read-only mount or sysfs;
    NFS with root_squash). Nothing is left behind."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{what}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
        raise ConfigError(f"{what}: {existing} is " + ("on a read-only filesystem" if read_only
                                                        else "not writable by this user"))
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".gan-dist-probe-", dir=existing))
    except OSError as exc:
        raise ConfigError(f"{what}: cannot create folders in {existing} ({exc.strerror or exc})") from None


def check_resume(cfg: Config, run_dir: Path) -> int | None:
    """The step a resumed run starts from (None for a new run); a changed config is an error.

    The config is compared with the run's config.yaml and with the config stored in the
    checkpoint the run would resume from, so that deleting one of them does not turn the
    resume of an old run under new settings into a "new run"."""
    saved = run_dir / CONFIG_FILE
    latest, stored = newest_usable(run_dir)
    if not saved.exists() and latest is None:
        return None
    if saved.exists():
        try:
            # Through the config classes: keys added since the run started take their defaults.
            started = load_yaml_config(saved.read_text())
        except (ConfigError, OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"run {cfg.run.name}: {saved} is not a valid config ({first_line(exc)}); repair or "
                              f"remove it, or use another --name for a new run") from None
        _refuse_changes(cfg, started, f"run {cfg.run.name} was started with")
    if latest is None:
        return 0
    _refuse_changes(cfg, stored, f"run {cfg.run.name}'s checkpoint {latest.name} was written with")
    return int(ckpt.verify(latest)["step"])


def newest_usable(run_dir: Path) -> tuple[Path | None, Config | None]:
    """The newest checkpoint that verifies and whose stored config loads (what a resume starts
    from unless its state does not load), and that config; damaged ones are skipped with a warning."""
    for folder in ckpt.step_dirs(run_dir):
        try:
            ckpt.verify(folder)
            return folder, ckpt.read_config(folder)
        except ckpt.CheckpointError as exc:
            warnings.warn(f"skipping checkpoint: {exc}", stacklevel=2)
    return None, None


def _refuse_changes(cfg: Config, old: Config, context: str) -> None:
    old_values, new_values = flatten(old.to_dict()), flatten(cfg.to_dict())
    for key in sorted(set(old_values) | set(new_values)):
        if key.startswith(RESUMABLE_CHANGES) or old_values.get(key) == new_values.get(key):
            continue
        raise ConfigError(f"{context} {key}={old_values.get(key)!r}, not {new_values.get(key)!r}; "
                          f"use another --name for a new run")


def write_summary(run_dir: Path, summary: dict) -> Path:
    """Write summary.json; where it went. A failed attempt never replaces the summary of a
    completed run (a resume that failed at once would leave "failed, 0 steps" over a finished
    run): it goes beside it, as summary-failed-<UTC time>.json."""
    path = run_dir / SUMMARY_FILE
    if summary.get("status") == "failed" and _status(path) == "completed":
        path = run_dir / f"summary-failed-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}.json"
    write_atomic(path, json.dumps(summary, indent=2, default=float).encode())
    return path


def _status(summary_path: Path) -> str | None:
    try:
        return json.loads(summary_path.read_text()).get("status")
    except (OSError, ValueError, AttributeError):  # none yet, or not a summary
        return None


def write_error_log(run_dir: Path, exc: BaseException) -> Path:
    """The full traceback of a run-time failure, kept in the run directory (the console shows
    one line that names this file)."""
    path = run_dir / ERROR_LOG
    text = "".join(traceback.format_exception(exc))
    stamp = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC"
    write_atomic(path, f"gan-dist run failed at {stamp}\n\n{text}".encode())
    return path
