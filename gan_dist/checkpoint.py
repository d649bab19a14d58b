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
from gan_dist.config import Config, ConfigError, first_line, load_yaml_config

STEP_DIR = re.compile(r"^step-(\d{6,})$")
# A file a manifest may name: a plain name inside the checkpoint folder (no path, no "..").
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SHA256 = re.compile(r"[0-9a-f]{64}")
# What rank 0's manifest must list: every reader of a checkpoint needs both.
SHARED_FILES = ("state.pt", "config.yaml")
# What state.pt holds for a training restore (sample and eval need fewer: inference.load_generator).
TRAINING_KEYS = ("G", "D", "G_ema", "opt_G", "opt_D", "step", "history")


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


def copy_replacing(source: Path, head: dict, target: Path, replace: dict[str, bytes]) -> None:
    """Copy the checkpoint `source`, which verified with rank 0's manifest `head`, into the empty
    folder `target` with rank 0's files in `replace` put in or replaced (a new config, a record):
    the other ranks' files as they are, rank 0's manifest written last with the new checksums
    (the copy counts from there), the copy verified."""
    for rank in range(1, head["world_size"]):
        manifest = f"manifest-{rank:05d}.json"
        for name in [*_read_manifest(source, rank)["files"], manifest]:
            shutil.copy2(source / name, target / name)
    files = {name: (source / name).read_bytes() for name in head["files"]}
    files.update(replace)
    write_rank_files(target, 0, head["world_size"], head["step"], files, head.get("metrics", {}))
    verify(target)


def to_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def from_bytes(data: bytes, what: str):
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses pickled code with an UnpicklingError
        reason = first_line(exc) or "no message"  # an empty file's error has none
        raise CheckpointError(f"{what}: refused to load ({type(exc).__name__}: {reason})") from None


def verify(folder: Path) -> dict:
    """Rank 0's manifest if every rank's manifest is sound and agrees with it, rank 0's lists
    state.pt and config.yaml, and every file listed is present and matches its checksum;
    else CheckpointError."""
    head = _read_manifest(folder, 0)
    missing = [name for name in SHARED_FILES if name not in head["files"]]
    if missing:
        raise CheckpointError(f"{folder}: rank 0's manifest does not list {', '.join(missing)}")
    for rank in range(head["world_size"]):
        manifest = head if rank == 0 else _read_manifest(folder, rank)
        if (manifest["world_size"], manifest["step"]) != (head["world_size"], head["step"]):
            raise CheckpointError(f"{folder}: the manifests of ranks 0 and {rank} disagree on the step or world size")
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
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: no manifest for rank {rank} (incomplete checkpoint)") from None
    except (ValueError, OSError):  # UnicodeDecodeError is a ValueError
        raise CheckpointError(f"{folder}: manifest for rank {rank} is not valid JSON") from None
    problem = _manifest_problem(manifest, rank)
    if problem:
        raise CheckpointError(f"{folder}: manifest for rank {rank} {problem}")
    return manifest


def _manifest_problem(manifest, rank: int) -> str | None:
    """What is wrong with a manifest's fields, or None. A world size of 0 would check no rank's
    files at all, so counts are integers >= 1 (booleans and strings are not counts)."""
    if not isinstance(manifest, dict):
        return f"must be a JSON object, got {type(manifest).__name__}"
    count = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    if not (count(manifest.get("world_size")) and 1 <= manifest["world_size"] <= 1 << 16):
        return f"has no valid world_size (an integer >= 1), got {manifest.get('world_size')!r:.40}"
    if not (count(manifest.get("rank")) and manifest["rank"] == rank < manifest["world_size"]):
        return f"names rank {manifest.get('rank')!r:.40}"
    if not (count(manifest.get("step")) and manifest["step"] >= 0):
        return f"has no valid step, got {manifest.get('step')!r:.40}"
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(n, str) and FILE_NAME.fullmatch(n) and ".." not in n
                                              and isinstance(d, str) and SHA256.fullmatch(d)
                                              for n, d in files.items()):
        return "must map plain file names to sha256 digests under files"
    if not isinstance(manifest.get("metrics", {}), dict):
        return "has metrics that are not a mapping"
    return None


def load_shared(folder: Path, need: tuple[str, ...] = TRAINING_KEYS) -> dict:
    """state.pt, checked to hold the keys `need` (and a step that is a count) before anyone
    uses it: a load must never stop half-way through applying it."""
    state = from_bytes((folder / "state.pt").read_bytes(), f"{folder}/state.pt")
    if not isinstance(state, dict):
        raise CheckpointError(f"{folder}/state.pt holds a {type(state).__name__}, not the run's state")
    missing = [key for key in need if key not in state]
    if missing:
        raise CheckpointError(f"{folder}/state.pt lacks {', '.join(missing)}")
    step = state.get("step", 0)
    if not (isinstance(step, int) and not isinstance(step, bool) and step >= 0):
        raise CheckpointError(f"{folder}/state.pt has no valid step, got {step!r:.40}")
    return state


def load_rank(folder: Path, rank: int) -> dict:
    name = f"rank-{rank:05d}.pt"
    if not (folder / name).is_file():
        raise CheckpointError(f"{folder}: {name} is missing")
    return from_bytes((folder / name).read_bytes(), f"{folder}/{name}")


def read_config(folder: Path) -> Config:
    """The resolved config stored in a checkpoint; CheckpointError when it is missing or not valid."""
    try:
        return load_yaml_config((folder / "config.yaml").read_text())
    except OSError as exc:
        raise CheckpointError(f"{folder}/config.yaml: {exc.strerror or exc}") from None
    except (ConfigError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{folder}/config.yaml is not a valid config: {first_line(exc)}") from None


# A checkpoint that `gan-dist tune` copied from another member of its population (its bridge,
# gan_dist/tune/bridge.py, writes it and lists it in rank 0's manifest): where the state came
# from, and `draw`, which gives the member that resumes from it random streams of its own.
ADOPTED_FILE = "adopted.json"


def read_adoption(folder: Path) -> dict | None:
    """The record of a checkpoint copied from another member of a population, or None."""
    path = folder / ADOPTED_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (ValueError, OSError):
        raise CheckpointError(f"{folder}: {ADOPTED_FILE} is not valid JSON") from None
    draw = record.get("draw") if isinstance(record, dict) else None
    if not (isinstance(draw, int) and not isinstance(draw, bool) and draw >= 1):
        raise CheckpointError(f"{folder}: {ADOPTED_FILE} has no valid draw (an integer >= 1), got {draw!r:.40}")
    return record


def checkpoint_step(folder: Path) -> int | None:
    """A checkpoint's step: from its manifest, else from its folder's name; None if neither says."""
    try:
        return int(_read_manifest(folder, 0)["step"])
    except CheckpointError:
        match = STEP_DIR.match(folder.name)
        return int(match.group(1)) if match else None


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
    """Delete checkpoints other than the newest `keep_last`, the best by `best_metric`, the
    newest healthy one (taken while no detector's condition held: what a rollback restores) and
    the one at the end of a phase (metric phase_end: the SRResNet phase's, which is scored)."""
    folders = step_dirs(run_dir)
    metrics = {}  # rank 0's manifest metrics of each readable folder, newest first
    for folder in folders:
        try:
            metrics[folder] = _read_manifest(folder, 0)["metrics"]
        except CheckpointError:
            continue
    keep = set(folders[:keep_last]) | {folder for folder, m in metrics.items() if m.get("phase_end")}
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
