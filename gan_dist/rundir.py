"""A run directory, `<storage>/<name>/`: where it is, whether it resumes, and its files.

Every file is written atomically (a temporary name renamed into place), so a reader
(the driver, `gan-dist sample`, `eval`, Prometheus' file discovery) never sees half a
file. The checkpoints inside are `gan_dist.checkpoint`'s business.
"""

from __future__ import annotations

import io
import json
import os
import traceback
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from gan_dist import checkpoint as ckpt
from gan_dist.config import Config, ConfigError, flatten, load_yaml_config

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


def check_resume(cfg: Config, run_dir: Path) -> int | None:
    """The step a resumed run starts from (None for a new run); a changed config is an error."""
    saved = run_dir / CONFIG_FILE
    if not saved.exists():
        return None
    # Through the config classes: keys added since the run started take their defaults.
    old = flatten(load_yaml_config(saved.read_text()).to_dict())
    new = flatten(cfg.to_dict())
    for key in sorted(set(old) | set(new)):
        if key.startswith(RESUMABLE_CHANGES) or old.get(key) == new.get(key):
            continue
        raise ConfigError(f"run {cfg.run.name} was started with {key}={old.get(key)!r}, not {new.get(key)!r}; "
                          f"use another --name for a new run")
    latest = ckpt.find_latest(run_dir)
    return int(ckpt.verify(latest)["step"]) if latest else 0


def write_summary(run_dir: Path, summary: dict) -> None:
    write_atomic(run_dir / SUMMARY_FILE, json.dumps(summary, indent=2, default=float).encode())


def write_error_log(run_dir: Path, exc: BaseException) -> Path:
    """The full traceback of a run-time failure, kept in the run directory (the console shows
    one line that names this file)."""
    path = run_dir / ERROR_LOG
    text = "".join(traceback.format_exception(exc))
    stamp = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC"
    write_atomic(path, f"gan-dist run failed at {stamp}\n\n{text}".encode())
    return path
