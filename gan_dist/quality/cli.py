"""`gan-dist eval` with Inception metrics (gan_dist/cli.py registers the flags and calls `run`):

    gan-dist eval RUN --metrics fid,kid,pr --n 10000 [--data D] [--workers W]
    gan-dist eval --data A --against B --n N [--metrics ...] [--workers W] [--json]

The first prints a checkpoint's metrics as JSON (n samples of G_ema against the
first n samples of its data, or of D); the second A's first n samples against
B's, as a table or JSON. Features are embedded in this process, or with
--workers W in Ray tasks of one torch thread each on a local Ray of W CPUs.
A progress bar counts the images embedded on stderr. Bad input (an unknown
metric, n < 2 or more than the data holds, data that are not images) stops
before anything is embedded or written.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

from tqdm import tqdm

from gan_dist.api import load_generator
from gan_dist.data.sources import resolve_source
from gan_dist.inference import to_json
from gan_dist.quality.errors import QualityError
from gan_dist.quality.features import Ranks, Sharding, real_cache_path
from gan_dist.quality.metrics import (METRICS, check_count, check_reals, data_metrics, inception_metrics,
                                      parse_metrics)

from gan_dist.quality import DEFAULT_N  # noqa: E402


def wanted(args) -> bool:
    """Whether `gan-dist eval` was asked for Inception metrics (else it prints the run's own eval)."""
    return any(value is not None for value in (args.against, args.metrics, args.n, args.workers))


def run(args) -> int:
    metrics = parse_metrics(args.metrics if args.metrics is not None else ",".join(METRICS))
    n = DEFAULT_N if args.n is None else args.n
    check_count(n, metrics, "--n")
    if args.workers is not None and args.workers < 1:
        raise QualityError(f"--workers must be at least 1, got {args.workers}")
    if args.against is not None:
        return compare_data(args, metrics, n)
    return evaluate_run(args, metrics, n)


def evaluate_run(args, metrics: tuple[str, ...], n: int) -> int:
    if args.checkpoint is None:
        raise QualityError("eval needs a checkpoint or run folder (or --data A --against B)")
    gen = load_generator(args.checkpoint)
    if gen.meta["kind"] != "image" or gen.task == "super_resolution":
        raise QualityError(f"{args.checkpoint}: a {gen.cfg.model.arch} model of {gen.meta['kind']} data; the "
                           f"Inception metrics need a generator of images from noise")
    index = resolve_source(args.data or gen.cfg.data.source, gen.cfg.data.cache_dir)
    check_reals(index, n, f"--data {args.data}" if args.data else "the run's data", "--n")
    classes = gen.meta["num_classes"] if gen.task == "conditional" else 0
    cached = real_cache_path(index, n, gen.cfg.data.cache_dir).exists()
    with _sharding(args.workers) as sharding, _progress(n + (0 if cached else n)) as bar:
        result = inception_metrics(gen.G_ema, gen.cfg.model.z_dim, classes, index, n, metrics,
                                   seed=gen.cfg.seed + 1, sharding=sharding, cache_dir=gen.cfg.data.cache_dir,
                                   progress=bar.update)
    print(to_json({"step": gen.step, **result}))
    return 0


def compare_data(args, metrics: tuple[str, ...], n: int) -> int:
    if args.checkpoint is not None:
        raise QualityError("--against compares two data sets: give --data A --against B and no checkpoint")
    if args.data is None:
        raise QualityError("--against B needs --data A (the data set to compare with B)")
    index_a, index_b = resolve_source(args.data), resolve_source(args.against)
    check_reals(index_a, n, f"--data {args.data}", "--n")
    check_reals(index_b, n, f"--against {args.against}", "--n")
    to_embed = {real_cache_path(ix, n) for ix in (index_a, index_b)}
    total = n * sum(not path.exists() for path in to_embed)
    with _sharding(args.workers) as sharding, _progress(total) as bar:
        result = data_metrics(index_a, index_b, n, metrics, sharding=sharding, progress=bar.update)
    print(to_json(result) if args.json else table(args.data, args.against, result))
    return 0


def table(a: str, b: str, result: dict) -> str:
    rows = [("data A", a), ("against B", b), ("n", str(result["inception_n"]))]
    rows += [(key, f"{value:.6g}") for key, value in result.items() if not key.startswith("inception_")]
    rows += [("network sha256", result["inception_sha256"]), ("seconds", f"{result['inception_seconds']:.1f}")]
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


@contextmanager
def _sharding(workers: int | None) -> Iterator[Sharding]:
    if workers is None:
        yield Ranks()
        return
    # Ray only for --workers: it is heavy to import, and integrations.ray is the one module that knows it.
    from gan_dist.integrations.ray import RaySession, RayTasks

    session = RaySession("", {"CPU": workers, "GPU": 0})
    try:
        yield RayTasks(workers)
    finally:
        session.close()


@contextmanager
def _progress(total: int) -> Iterator[tqdm]:
    with tqdm(total=total, desc="Inception features", unit="img", file=sys.stderr, dynamic_ncols=True) as bar:
        yield bar
