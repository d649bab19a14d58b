"""The driver's side of a run: run directory, placement, progress, summary.

`gan-dist train` comes here after the config is resolved. The driver decides
where the workers run (Ray, or this process), prepares the run directory,
shows progress from the run's hub, and writes `summary.json` whatever happens.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from gan_dist import checkpoint as ckpt
from gan_dist.config import Config, ConfigError, load_yaml_config
from gan_dist.plan import PlanError
from gan_dist.trainer.loop import last_logged, write_atomic

# Keys that may change when a run is resumed: where and how big it runs, and for how long.
RESUMABLE_CHANGES = ("run.", "train.max_steps", "metrics.")


@dataclass
class Placement:
    """How many workers and what each gets."""

    workers: int
    cpus_per_worker: float
    gpus_per_worker: float

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0

    def describe(self) -> str:
        gpu = f" + {self.gpus_per_worker:g} GPU" if self.use_gpu else ""
        return f"{self.workers} worker(s), {self.cpus_per_worker:g} CPU{gpu} each"


def place(run_cfg, resources: dict[str, float]) -> Placement:
    """Resolve run.workers=0 (auto) and check the request against what the cluster has."""
    gpus = resources.get("GPU", 0)
    gpus_per_worker = run_cfg.gpus_per_worker
    workers = run_cfg.workers
    if workers == 0:
        if gpus >= 1 and run_cfg.use_ray:
            workers, gpus_per_worker = int(gpus // (gpus_per_worker or 1)), gpus_per_worker or 1.0
        else:
            workers = 2 if run_cfg.use_ray else 1
    placement = Placement(workers, run_cfg.cpus_per_worker, gpus_per_worker)
    cpus = resources.get("CPU", 0)
    if workers * placement.cpus_per_worker > cpus:
        raise PlanError(f"{workers} workers x {placement.cpus_per_worker:g} CPU need "
                        f"{workers * placement.cpus_per_worker:g} CPUs, but the cluster has {cpus:g}")
    if workers * gpus_per_worker > gpus:
        raise PlanError(f"{workers} workers x {gpus_per_worker:g} GPU need {workers * gpus_per_worker:g} GPUs, "
                        f"but the cluster has {gpus:g}")
    return placement


def local_resources() -> dict[str, float]:
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {"CPU": float(cpus), "GPU": float(torch.cuda.device_count())}


# Run directory -------------------------------------------------------------------

def run_name(cfg: Config) -> str:
    return cfg.run.name or f"{cfg.recipe}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"


def run_directory(cfg: Config) -> Path:
    return Path(cfg.run.storage).expanduser().absolute() / cfg.run.name


def check_resume(cfg: Config, run_dir: Path) -> int | None:
    """The step a resumed run starts from (None for a new run); a changed config is an error."""
    saved = run_dir / "config.yaml"
    if not saved.exists():
        return None
    # Through the config classes: keys added since the run started take their defaults.
    old = _flatten(load_yaml_config(saved.read_text()).to_dict())
    new = _flatten(cfg.to_dict())
    for key in sorted(set(old) | set(new)):
        if key.startswith(RESUMABLE_CHANGES) or old.get(key) == new.get(key):
            continue
        raise ConfigError(f"run {cfg.run.name} was started with {key}={old.get(key)!r}, not {new.get(key)!r}; "
                          f"use another --name for a new run")
    latest = ckpt.find_latest(run_dir)
    return int(ckpt.verify(latest)["step"]) if latest else 0


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def write_summary(run_dir: Path, summary: dict) -> None:
    write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2, default=float).encode())


def build_summary(status: str, result: dict, hub_snapshot: dict, placement: Placement, wall_seconds: float,
                  error: str | None = None) -> dict[str, Any]:
    rows = hub_snapshot.get("rows") or []
    final = result.get("final") or last_logged(rows)
    summary = {
        "status": status,
        "steps": result.get("steps", rows[-1]["step"] if rows else hub_snapshot.get("start_step", 0)),
        "world_size": result.get("world_size", hub_snapshot.get("world_size") or placement.workers),
        "restarts": max(hub_snapshot.get("starts", 1) - 1, 0),
        "images_per_second": result.get("images_per_second", 0.0),
        "wall_seconds": wall_seconds,
        "final": final,
        "eval": result.get("eval", {}),
        # The hub's record survives worker restarts (and counts a replayed event once).
        "alerts": hub_snapshot.get("alerts") or result.get("alerts", []),
        "rollbacks": result.get("rollbacks", (rows[-1].get("rollbacks", 0) if rows else 0)),
        "data": result.get("data", {"samples_seen": 0, "corrupt_samples": 0}),
        "fingerprint": result.get("fingerprint"),
        "rank_fingerprints": result.get("rank_fingerprints", []),
        "checkpoints": result.get("checkpoints", {}),
        "sessions": hub_snapshot.get("sessions", []),
    }
    if error:
        summary["error" if status == "failed" else "reason"] = error
    return summary


# Progress ------------------------------------------------------------------------

class ProgressDisplay:
    """Polls the hub and shows progress: a bar on a terminal, else a line per log interval."""

    def __init__(self, snapshot: Callable[[int], dict], max_steps: int, interactive: bool | None = None):
        self.snapshot, self.max_steps = snapshot, max_steps
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self._seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gan-dist-progress", daemon=True)
        self._bar = None

    def __enter__(self) -> "ProgressDisplay":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.poll()
        if self._bar is not None:
            self._bar.close()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.poll()
            except Exception:  # the hub may be gone while the run shuts down
                pass

    def poll(self) -> None:
        snap = self.snapshot(self._seen)
        for row in snap["rows"]:
            self._show(row, snap["start_step"])
        self._seen += len(snap["rows"])

    def _show(self, row: dict, start_step: int) -> None:
        step = row["step"]
        losses = f"loss D {row.get('loss_d', float('nan')):.4f} G {row.get('loss_g', float('nan')):.4f}"
        rate = f"{row['samples_per_second']:,.0f} samples/s"
        if self.interactive:
            from tqdm import tqdm

            if self._bar is None:
                self._bar = tqdm(total=self.max_steps, initial=start_step, unit="step", dynamic_ncols=True)
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix_str(f"{losses}, {rate}")
        else:
            print(f"step {step}/{self.max_steps}  {losses}  D acc real {row.get('d_acc_real', 0):.2f} "
                  f"fake {row.get('d_acc_fake', 0):.2f}  {rate}", flush=True)
