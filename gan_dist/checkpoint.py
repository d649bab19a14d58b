"""Full-state checkpoints: `step-NNNNNN/` folders that count only when verified.

A checkpoint folder holds
- `state.pt` (rank 0): G, D, G_ema, both optimizers, step, history, detector state;
- `config.yaml` (rank 0): the resolved config;
- `rank-RRRRR.pt` (every rank): that rank's RNG states, noise generator and
  data cursor;
- `manifest-RRRRR.json` (every rank): sha256 of that rank's files, the step
  and the world size.
It is valid when rank 0's manifest exists, every rank's manifest exists, and
every file matches its checksum. Loading uses `torch.load(weights_only=True)`
on CPU first: a checkpoint never executes code.

Saving is two-phase: each rank writes its files into the folder the sink
stages (in the background, from a snapshot), then the sink commits it at a
later step boundary: `LocalSink` renames the finished temporary folder into
the run directory; the Ray sink hands each rank's folder to
`ray.train.report`, which merges, uploads and commits them.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import re
import shutil
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from gan_dist import __version__

STEP_DIR = re.compile(r"^step-(\d{6,})$")


class CheckpointError(ValueError):
    """A checkpoint that is incomplete, corrupt, or unsafe to load."""


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def versions() -> dict:
    return {"gan_dist": __version__, "torch": torch.__version__, "python": platform.python_version()}


def write_rank_files(folder: Path, rank: int, world_size: int, step: int, files: dict[str, bytes],
                     metrics: dict | None = None) -> None:
    """Write this rank's files and, last, its manifest (its commit marker)."""
    folder.mkdir(parents=True, exist_ok=True)
    sums = {}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        sums[name] = hashlib.sha256(data).hexdigest()
    manifest = {"rank": rank, "world_size": world_size, "step": step, "files": sums, "versions": versions(),
                "metrics": metrics or {}}
    (folder / f"manifest-{rank:05d}.json").write_text(json.dumps(manifest, indent=1))


def to_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def from_bytes(data: bytes, what: str):
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses pickled code with an UnpicklingError
        raise CheckpointError(f"{what}: refused to load ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None


def verify(folder: Path) -> dict:
    """Rank 0's manifest if every rank's files are present and match; else CheckpointError."""
    head = _read_manifest(folder, 0)
    for rank in range(head["world_size"]):
        manifest = head if rank == 0 else _read_manifest(folder, rank)
        for name, digest in manifest["files"].items():
            path = folder / name
            if not path.is_file():
                raise CheckpointError(f"{folder}: {name} is missing")
            if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
                raise CheckpointError(f"{folder}: {name} does not match its checksum")
    return head


def _read_manifest(folder: Path, rank: int) -> dict:
    path = folder / f"manifest-{rank:05d}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: no manifest for rank {rank} (incomplete checkpoint)") from None
    except ValueError:
        raise CheckpointError(f"{folder}: manifest for rank {rank} is not valid JSON") from None


def load_shared(folder: Path) -> dict:
    return from_bytes((folder / "state.pt").read_bytes(), f"{folder}/state.pt")


def load_rank(folder: Path, rank: int) -> dict:
    return from_bytes((folder / f"rank-{rank:05d}.pt").read_bytes(), f"{folder}/rank-{rank:05d}.pt")


def step_dirs(run_dir: Path) -> list[Path]:
    """Checkpoint folders of a run, newest first."""
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)), reverse=True)


def find_latest(run_dir: Path, exclude: Path | None = None, before: int | None = None) -> Path | None:
    """The newest valid checkpoint of a run (from before step `before`, if given: a rollback
    target); invalid newer ones are skipped with a warning."""
    for folder in step_dirs(run_dir):
        if exclude is not None and folder.resolve() == exclude.resolve():
            continue
        if before is not None and int(STEP_DIR.match(folder.name).group(1)) >= before:
            continue
        try:
            verify(folder)
            return folder
        except CheckpointError as exc:
            warnings.warn(f"skipping checkpoint: {exc}", stacklevel=2)
    return None


def newest_valid(run_dir: Path) -> tuple[Path | None, bool]:
    """The run's newest valid checkpoint, and whether a newer, invalid one was skipped."""
    newest = step_dirs(run_dir)[:1]
    found = find_latest(run_dir)
    return found, bool(newest) and found != newest[0]


def set_aside_after(run_dir: Path, step: int, tag: str, settle_seconds: float = 60.0) -> list[Path]:
    """Rename the checkpoints newer than `step` to `abandoned-<tag>-step-NNNNNN`, so neither a
    resume nor pruning takes them for the run's own. The newest may still be uploading (Ray's
    asynchronous upload): it gets `settle_seconds` to become valid first."""
    newer = [f for f in step_dirs(run_dir) if int(STEP_DIR.match(f.name).group(1)) > step]
    deadline = time.monotonic() + settle_seconds
    for folder in newer[:1]:
        while time.monotonic() < deadline:
            try:
                verify(folder)
                break
            except CheckpointError:
                time.sleep(0.5)
    moved = []
    for folder in newer:
        target = folder.with_name(f"abandoned-{tag}-{folder.name}")
        shutil.rmtree(target, ignore_errors=True)
        folder.rename(target)
        moved.append(target)
    return moved


def resolve_checkpoint(path: str) -> Path:
    """A CKPT argument: a checkpoint folder, or a run folder meaning its latest checkpoint."""
    folder = Path(path)
    if STEP_DIR.match(folder.name) and folder.is_dir():
        verify(folder)
        return folder
    latest = find_latest(folder)
    if latest is None:
        raise CheckpointError(f"{path}: no valid checkpoint found")
    return latest


def prune(run_dir: Path, keep_last: int, best_metric: str = "", best_mode: str = "max") -> list[Path]:
    """Delete checkpoints other than the newest `keep_last`, the best by `best_metric`, and the
    newest healthy one (taken while no detector's condition held: what a rollback restores)."""
    folders = step_dirs(run_dir)
    metrics = {}  # rank 0's manifest metrics of each readable folder, newest first
    for folder in folders:
        try:
            metrics[folder] = _read_manifest(folder, 0)["metrics"]
        except CheckpointError:
            continue
    keep = set(folders[:keep_last])
    healthy = next((folder for folder, m in metrics.items() if m.get("healthy", 1)), None)
    if healthy is not None:
        keep.add(healthy)
    if best_metric:
        scored = [(value if best_mode == "max" else -value, folder) for folder, m in metrics.items()
                  if isinstance(value := m.get(best_metric), (int, float))]
        if scored:
            keep.add(max(scored, key=lambda s: s[0])[1])
    removed = [f for f in folders if f not in keep]
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    return removed


class LocalSink:
    """Checkpoints committed by renaming a finished temporary folder into the run directory.

    Used without Ray. Every rank writes into the same temporary folder (shared
    storage), so this also works for several processes on one filesystem.
    """

    # The commit renames after a barrier of the process group: the training thread's job.
    commits_in_background = False

    def __init__(self, run_dir: Path, checkpoint_cfg):
        self.run_dir, self.policy = run_dir, checkpoint_cfg
        self.fallbacks = 0

    @contextmanager
    def latest(self) -> Iterator[Path | None]:
        found, skipped = newest_valid(self.run_dir)
        self.fallbacks += skipped
        yield found

    def stage(self, rt, step: int) -> Path:
        """The folder this rank writes checkpoint `step` into (shared by all ranks). Collective."""
        tmp = self.run_dir / f".tmp-{step_dir_name(step)}"
        if rt.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        rt.barrier()
        return tmp

    def commit(self, rt, step: int, folder: Path, metrics: dict) -> None:
        """Make the staged checkpoint count: every rank has written its files. Collective."""
        rt.barrier()
        if rt.is_main_process:
            final = self.run_dir / step_dir_name(step)
            if final.exists():
                shutil.rmtree(final)
            folder.rename(final)
            policy = self.policy
            prune(self.run_dir, policy.keep, policy.keep_best_metric, policy.keep_best_mode)
        rt.barrier()
