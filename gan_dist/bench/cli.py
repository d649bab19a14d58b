"""`gan-dist bench`: the performance figures, each a ratio measured side by side in one
process tree, with their goals, written as JSON and shown as a table.

    gan-dist bench [--out FILE.json] [--quick]
        overhead_ratio, scaling_2w, startup_seconds, data_vs_step_ratio,
        checkpoint_stall_fraction, monitor_overhead, tensorboard_overhead (CPU; a local Ray cluster)
    gan-dist bench --gpu [--set KEY=VALUE]... [--out FILE.json] [--quick]
        the dcgan-64 recipe against a plain PyTorch DCGAN on this machine's GPU (no Ray)

--quick runs every measurement with tiny step counts (a smoke test, a minute
or two); its numbers are not the benchmark's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path


class BenchError(ValueError):
    """Bad arguments for the benchmark (exit 2)."""


# Each figure's goal: (comparison, value).
GOALS = {
    "overhead_ratio": (">=", 0.97),
    "scaling_2w": (">=", 1.8),
    "startup_seconds": ("<=", 20.0),
    "data_vs_step_ratio": (">=", 10.0),
    "checkpoint_stall_fraction": ("<=", 0.1),
    "monitor_overhead": ("<=", 0.02),
    "tensorboard_overhead": ("<=", 0.01),
}
GPU_GOALS = {"gpu_speedup": (">=", 2.5)}


@dataclass(frozen=True)
class Sizes:
    """How long each measurement runs."""

    overhead_blocks: int  # log intervals of each of the four in-process runs
    overhead_log_every: int  # 0: the recipe's (250)
    startup_repeats: int  # start-up runs; the figure is their median
    ray_steps: int  # per Ray run
    ray_every: int  # log and checkpoint interval of the Ray runs
    ray_repeats: int  # pairs of (1 worker, 2 workers) runs
    ray_recipe: tuple[str, ...]  # recipe and overrides of the Ray runs
    ray_batch_per_worker: int
    data_batches: int
    data_repeats: int
    dcgan_steps: int
    gpu_rounds: int
    gpu_segment: int  # 0: the recipe's log interval


# The Ray runs: DCGAN-digits at 64 channels (1.6 M weights), 16 images per worker and step. The
# quick runs take ring8 instead, whose evaluation needs no image classifier trained first.
FULL = Sizes(overhead_blocks=8, overhead_log_every=0, startup_repeats=3, ray_steps=200, ray_every=20, ray_repeats=2,
             ray_recipe=("dcgan-digits", "model.channels=64"), ray_batch_per_worker=16,
             data_batches=100, data_repeats=5, dcgan_steps=5, gpu_rounds=5, gpu_segment=0)
QUICK = Sizes(overhead_blocks=3, overhead_log_every=10, startup_repeats=1, ray_steps=30, ray_every=10, ray_repeats=1,
              ray_recipe=("ring8",), ray_batch_per_worker=256,
              data_batches=5, data_repeats=1, dcgan_steps=1, gpu_rounds=1, gpu_segment=2)


def register(commands) -> None:
    bench = commands.add_parser("bench", help="measure the trainer's costs side by side with plain PyTorch")
    bench.add_argument("--out", help="also write the results to this JSON file")
    bench.add_argument("--quick", action="store_true", help="tiny step counts: a smoke test, not the numbers")
    bench.add_argument("--gpu", action="store_true",
                       help="the dcgan-64 recipe against a plain PyTorch DCGAN on this machine's GPU (no Ray)")
    bench.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="with --gpu: override a key of the dcgan-64 recipe (repeatable)")
    bench.add_argument("--device", help=argparse.SUPPRESS)  # tests: the --gpu path on a CPU-only machine
    bench.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    out = Path(args.out) if args.out else None
    if out is not None and not out.parent.is_dir():
        raise BenchError(f"--out {args.out}: folder {out.parent} does not exist")
    if not args.gpu and (args.set or args.device):
        raise BenchError("--set and --device apply to --gpu only")
    sizes = QUICK if args.quick else FULL
    started, load_at_start = time.time(), os.getloadavg()
    if args.gpu:
        figures, goals, details = gpu_figures(args.set, gpu_device(args.device), sizes)
    else:
        figures, goals, details = cpu_figures(sizes)
    result = {
        **figures,
        "goals": {key: f"{op} {value:g}" for key, (op, value) in goals.items()},
        "pass": {key: meets(figures[key], *goals[key]) for key in goals},
        "mode": "quick" if args.quick else "full",
        "command": command_line(args),
        "seconds": time.time() - started,
        "machine": {**machine_info(gpu=args.gpu), "load_average_at_start": load_at_start},
        "details": details,
    }
    print(table(result, goals))
    if out is not None:
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


def meets(value: float, op: str, goal: float) -> bool:
    return value >= goal if op == ">=" else value <= goal


def command_line(args) -> str:
    parts = ["gan-dist bench", "--gpu" * args.gpu, f"--device {args.device}" if args.device else "",
             "--quick" * args.quick,
             *(f"--set {kv}" for kv in args.set), f"--out {args.out}" if args.out else ""]
    return " ".join(p for p in parts if p)


# CPU figures ------------------------------------------------------------------------

def measure(what: str, run, *args) -> dict:
    """Run one measurement, saying what it is and how long it took."""
    print(f"bench: {what} ...", flush=True)
    t0 = time.time()
    result = run(*args)
    result["seconds"] = time.time() - t0
    print(f"bench: {what}: {result['seconds']:.0f} s", flush=True)
    return result


def cpu_figures(sizes: Sizes) -> tuple[dict, dict, dict]:
    with tempfile.TemporaryDirectory(prefix="gan-dist-bench-") as tmp:
        startup = measure("start-up of gan-dist train, in processes of their own", startup_figure, sizes, Path(tmp))
        ray_part = measure("Ray runs: scaling, checkpoint stall", ray_figures, sizes, Path(tmp))
        over = measure("overhead and monitoring, in this process", overhead_figures, sizes, Path(tmp))
        data = measure("data loader against the step", data_figures, sizes, Path(tmp))
    figures = {
        "overhead_ratio": over["overhead_ratio"],
        "scaling_2w": ray_part["scaling_2w"],
        "startup_seconds": startup["startup_seconds"],
        "data_vs_step_ratio": data["data_vs_step_ratio"],
        "checkpoint_stall_fraction": ray_part["checkpoint_stall"]["checkpoint_stall_fraction"],
        "monitor_overhead": over["monitor_overhead"],
        "tensorboard_overhead": over["tensorboard_overhead"],
    }
    return figures, GOALS, {"startup": startup, "ray": ray_part, "overhead": over, "data": data,
                            "sizes": asdict(sizes)}


# The command a user types first, but for its length: the default recipe and workers on the
# local Ray it starts itself; two steps, a small evaluation.
STARTUP_COMMAND = ("train", "--max-steps", "2", "--set", "train.log_every=1", "--set", "eval.num_samples=256")


def startup_figure(sizes: Sizes, tmp: Path) -> dict:
    """startup_seconds: from the start of a `gan-dist train` process to its first step (the
    first rank's, as its run records it): Python and imports, a local Ray, the worker group.
    The median of `sizes.startup_repeats` runs, one after another: one run on this machine
    varies by seconds."""
    import subprocess

    runs, world_size = [], 0
    for r in range(sizes.startup_repeats):
        name = f"startup-{r}"
        args = [sys.executable, "-m", "gan_dist", *STARTUP_COMMAND, "--storage", str(tmp), "--name", name]
        started = time.time()
        done = subprocess.run(args, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
            raise RuntimeError(f"the start-up run failed (exit {done.returncode})")
        summary = json.loads((tmp / name / "summary.json").read_text())
        runs.append(summary["sessions"][0]["first_step_at"] - started)
        world_size = summary["world_size"]
    return {"startup_seconds": statistics.median(runs), "runs": runs,
            "command": "gan-dist " + " ".join(STARTUP_COMMAND), "world_size": world_size}


def ray_figures(sizes: Sizes, tmp: Path) -> dict:
    """On one local Ray (a 2-CPU head), through `gan-dist train`: runs of 1 and 2 workers
    with asynchronous checkpoints, taking turns, then one of 2 workers with synchronous
    ones. scaling_2w is the median per-pair ratio of samples/s (each run's median over its
    log intervals but the first, which holds the start); the checkpoint stall compares the
    first 2-worker run with the synchronous one."""
    # Deferred on purpose (here and below): `gan-dist --help` registers this command without torch or Ray.
    from gan_dist.bench import fault
    from gan_dist.integrations.ray import local_cluster

    runs: dict[int, list[dict]] = {1: [], 2: []}
    with local_cluster(nodes=0, head_cpus=2) as address:
        for r in range(sizes.ray_repeats):
            for workers in (1, 2) if r % 2 == 0 else (2, 1):
                runs[workers].append(ray_run(address, tmp, f"async-{workers}w-{r}", workers, sizes))
        full = ray_run(address, tmp, "sync-2w", 2, sizes, *fault.SYNC)
    rates = {w: [interval_rate(tmp / run["name"]) for run in group] for w, group in runs.items()}
    return {
        "scaling_2w": statistics.median(two / one for one, two in zip(rates[1], rates[2])),
        "samples_per_second": {f"{w}w": v for w, v in rates.items()},
        "recipe": f"{' '.join(sizes.ray_recipe)}, {sizes.ray_batch_per_worker} samples per worker and step, "
                  f"1 torch thread per worker, checkpoints every {sizes.ray_every} steps",
        "checkpoint_stall": fault.stall_fraction(runs[2][0], full),
    }


def ray_run(address: str, storage: Path, name: str, workers: int, sizes: Sizes, *extra: str) -> dict:
    """A run of the Ray recipe through `gan-dist train` on the cluster; its summary and name."""
    from gan_dist.bench import fault

    recipe, *overrides = sizes.ray_recipe
    sets = [*overrides, f"data.batch_size={sizes.ray_batch_per_worker * workers}",
            "eval.num_samples=256"]  # the evaluation is not measured
    with quiet():
        summary = fault.train(address, storage, name, recipe, sizes.ray_steps, sizes.ray_every, *sets, *extra,
                              workers=workers)
    return {**summary, "name": name}


def interval_rate(run_dir: Path) -> float:
    """Median samples/s over a run's log intervals, the first (the start) left out."""
    import pyarrow.parquet as pq

    rows = pq.ParquetFile(run_dir / "history.parquet").read().to_pylist()
    return statistics.median(row["samples_per_second"] for row in rows[1:])


@contextlib.contextmanager
def quiet():
    """Hold back a run's own output; show it only if the run fails."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    except BaseException:
        sys.stderr.write(buffer.getvalue())
        raise


def overhead_figures(sizes: Sizes, tmp: Path) -> dict:
    from gan_dist.bench import overhead

    return overhead.overhead("ring8", sizes.overhead_blocks, sizes.overhead_log_every, root=tmp)


def data_figures(sizes: Sizes, tmp: Path) -> dict:
    """One loader worker's images per CPU-second (bench.data's PNG shards of builtin:shapes,
    32x32) over what gan-dist's DCGAN-32 step at batch 64 consumes."""
    from gan_dist.bench import data, overhead
    from gan_dist.data.sources import resolve_source

    index = resolve_source("builtin:shapes")
    loader = data.best_rates({"png": data.ours(index, sizes.data_batches)}, sizes.data_batches * data.BATCH,
                             sizes.data_repeats)["png"]
    step = overhead.dcgan32_step_rate(sizes.dcgan_steps, sizes.data_repeats, root=tmp)
    return {"loader_images_per_cpu_second": loader, "dcgan32_step_images_per_cpu_second": step,
            "data_vs_step_ratio": loader / step}


# GPU figures ------------------------------------------------------------------------

def gpu_device(device: str | None):
    import torch

    if device is None:
        if not torch.cuda.is_available():
            raise BenchError(f"--gpu needs a CUDA GPU, and torch {torch.__version__} sees none")
        return torch.device("cuda")
    if device != "cpu" or torch.cuda.is_available():
        raise BenchError("--device takes only cpu, on a machine without a GPU (for tests)")
    return torch.device("cpu")


def gpu_figures(overrides: list[str], device, sizes: Sizes) -> tuple[dict, dict, dict]:
    from gan_dist.bench.gpu import gpu_bench

    with tempfile.TemporaryDirectory(prefix="gan-dist-bench-") as tmp:
        details = gpu_bench(overrides, device, Path(tmp), sizes.gpu_rounds, sizes.gpu_segment)
    keys = ("gpu_speedup", "images_per_second", "images_per_second_per_gpu", "baseline_images_per_second")
    return {key: details[key] for key in keys}, GPU_GOALS, details


# Report -----------------------------------------------------------------------------

def machine_info(gpu: bool) -> dict:
    import torch

    info = {
        "cpu": cpu_model(), "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average_at_end": os.getloadavg(), "python": platform.python_version(), "torch": torch.__version__,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if gpu and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    if not gpu:
        info["ray"] = metadata.version("ray")
    return info


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def table(result: dict, goals: dict) -> str:
    rows = [("figure", "value", "goal", "met")]
    for key in result:
        if isinstance(result[key], (int, float)) and key != "seconds":
            goal = goals.get(key)
            rows.append((key, f"{result[key]:.4g}", f"{goal[0]} {goal[1]:g}" if goal else "",
                         ("yes" if result["pass"][key] else "NO") if goal else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    machine = result["machine"]
    load = ", ".join(f"{machine[k][0]:.1f}" for k in ("load_average_at_start", "load_average_at_end"))
    lines.append(f"{result['mode']} run, {result['seconds']:.0f} s; {machine.get('gpu', machine['cpu'])}, "
                 f"{machine['cores']} cores, torch {machine['torch']}, load average {load} (start, end), "
                 f"{machine['date']}")
    return "\n".join(lines)
