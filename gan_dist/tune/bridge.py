"""The bridge between a member's gan-dist checkpoints and Ray Tune's population.

Ray Train V2 inside Tune hands Tune only a checkpoint's path (ray/tune/integration/
ray_train.py), so PBT would have nothing to copy. Here, at the end of each interval, the
member's newest checkpoint is copied whole into the folder the member reports to Tune
(`stage`): Tune persists it as the trial's checkpoint, and PBT's exploit hands it to the
member it replaces. That member `adopt`s it: the same bytes for the state (G, D, G_ema,
both optimizers, the step, the history and the detectors), so it resumes bit for bit from
the copied state, with its own config (the perturbed hyper-parameters) and an adoption record
whose draw gives it random streams of its own (gan_dist.trainer.worker.Worker.reseed).

Every folder here stays a normal, verified gan-dist checkpoint: `gan-dist sample` and
`gan-dist eval` work on it, and on the copies Tune keeps.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from gan_dist import checkpoint as ckpt
from gan_dist.checkpoint import ADOPTED_FILE, CheckpointError
from gan_dist.config import Config
from gan_dist.rundir import CONFIG_FILE, write_atomic

# In a checkpoint handed to Tune: which member it is from (not in the manifests: Tune's copy is
# still the member's checkpoint, byte for byte).
ORIGIN_FILE = "tune-origin.json"
# Adoption draws start here, apart from the draws a rollback takes (1, 2, ...; Worker.rollback).
ADOPTION_DRAW_BASE = 1000


def stage(run_dir: Path, member: str, into: Path) -> dict:
    """Copy the member's newest valid checkpoint into the empty folder `into` (what the member
    reports to Tune); its origin: the member and the step. A checkpoint pruned while it is
    copied is caught by verifying the copy."""
    latest = ckpt.find_latest(run_dir)
    if latest is None:
        raise CheckpointError(f"{run_dir}: no valid checkpoint to hand to the population")
    shutil.copytree(latest, into, dirs_exist_ok=True)
    head = ckpt.verify(into)
    origin = {"member": member, "step": int(head["step"]), "folder": latest.name}
    (into / ORIGIN_FILE).write_text(json.dumps(origin))
    return origin


def read_origin(folder: Path) -> dict:
    try:
        origin = json.loads((folder / ORIGIN_FILE).read_text())
    except (OSError, ValueError):
        raise CheckpointError(f"{folder}: not a checkpoint gan-dist tune handed to Ray Tune (no valid "
                              f"{ORIGIN_FILE})") from None
    if not (isinstance(origin, dict) and isinstance(origin.get("member"), str) and isinstance(origin.get("step"), int)):
        raise CheckpointError(f"{folder}/{ORIGIN_FILE} does not name a member and a step")
    return origin


def adopted_already(run_dir: Path, exploit: int) -> bool:
    """Whether this member's run directory holds its adoption number `exploit` (a member restarted
    after the adoption resumes from its own newest checkpoint instead of adopting again)."""
    for folder in ckpt.step_dirs(run_dir):
        try:
            record = ckpt.read_adoption(folder)
        except CheckpointError:
            continue
        if record is not None and record.get("exploit") == exploit:
            return True
    return False


def adopt(source: Path, run_dir: Path, cfg: Config, exploit: int) -> Path:
    """Make `source` (another member's checkpoint, as Tune hands it over) this member's newest
    checkpoint in `run_dir`, with this member's config `cfg` and adoption number `exploit` (1 for
    its first). Its own checkpoints from that step on are set aside (`abandoned-exploit-N-...`):
    neither a resume nor pruning takes them. The folder it makes."""
    head = ckpt.verify(source)
    step = int(head["step"])
    origin = read_origin(source)
    ckpt.set_aside_after(run_dir, step - 1, f"exploit-{exploit}", settle_seconds=0)
    staging = run_dir / f".tmp-adopt-{ckpt.step_dir_name(step)}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    record = {"draw": ADOPTION_DRAW_BASE + exploit, "exploit": exploit, "member": origin["member"],
              "step": step, "source_folder": origin.get("folder", source.name)}
    ckpt.copy_replacing(source, head, staging, {CONFIG_FILE: cfg.to_yaml().encode(),
                                                ADOPTED_FILE: json.dumps(record).encode()})
    final = run_dir / ckpt.step_dir_name(step)
    staging.rename(final)
    write_atomic(run_dir / CONFIG_FILE, cfg.to_yaml().encode())
    return final
