"""The `gan-dist` command: parse -> resolve config -> print/save it -> run.

Exit codes: 0 success; 2 bad input (config, data, arguments), reported on one
line without a traceback; 1 a failure at run time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from gan_dist import __version__, submit
from gan_dist.checkpoint import CheckpointError, LocalSink
from gan_dist.config import Config, ConfigError, recipe_names, resolve
from gan_dist.bench import cli as bench_cli
from gan_dist.data import cli as data_cli
from gan_dist.data.sources import DataError, resolve_source
from gan_dist.driver import (ProgressDisplay, build_summary, check_resume, local_resources, place, run_directory,
                             run_name, write_summary)
from gan_dist.monitor.hub import RunHub
from gan_dist.monitor.metrics import TARGETS_FILE
from gan_dist.plan import PlanError, make_plan
from gan_dist.quality import cli as quality_cli
from gan_dist.quality import metrics as quality_metrics
from gan_dist.trainer.loop import describe, write_atomic

BAD_INPUT = (ConfigError, DataError, PlanError, CheckpointError)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gan-dist", description="Distributed GAN training on Ray, DDP and WebDataset.")
    parser.add_argument("--version", action="version", version=f"gan-dist {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="train a recipe (local Ray by default)")
    train.add_argument("recipe", nargs="?", default=None,
                       help=f"a shipped recipe ({', '.join(recipe_names())}) or a YAML file; default ring8")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set optim.lr_g=2e-4 (repeatable)")
    train.add_argument("--workers", type=int, help="data-parallel workers (run.workers)")
    train.add_argument("--gpus-per-worker", type=float, help="GPUs per worker (run.gpus_per_worker)")
    train.add_argument("--storage", help="folder holding run directories (run.storage)")
    train.add_argument("--name", help="run name; the same name and storage resume (run.name)")
    train.add_argument("--address", help="Ray cluster address; default: start a local Ray (run.address)")
    train.add_argument("--max-steps", type=int, help="G steps to train (train.max_steps)")
    train.add_argument("--no-ray", action="store_true", help="train in this process, one worker, without Ray")
    train.add_argument("--dry-run", action="store_true", help="validate config and data, print the plan, stop")
    train.set_defaults(func=cmd_train)

    sample = commands.add_parser("sample", help="write a PNG of samples from a checkpoint's G_ema")
    sample.add_argument("checkpoint", help="a checkpoint folder, or a run folder (its latest checkpoint)")
    sample.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    sample.add_argument("--class", dest="class_label", type=int, help="class to generate (conditional models)")
    sample.add_argument("--input", help="low-resolution image to upscale (super-resolution models)")
    sample.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    sample.add_argument("--out", required=True, help="output PNG file")
    sample.set_defaults(func=cmd_sample)

    evaluate = commands.add_parser("eval", help="a checkpoint's quality metrics as JSON, or two data sets compared")
    evaluate.add_argument("checkpoint", nargs="?", help="a checkpoint folder, or a run folder (its latest checkpoint)")
    evaluate.add_argument("--data", help="dataset to compare with (default: the run's data.source); with --against: A")
    evaluate.add_argument("--against", metavar="B", help="Inception metrics of data set --data A against data set B")
    evaluate.add_argument("--metrics", help=f"Inception metrics, from {','.join(quality_metrics.METRICS)} "
                                            "(default with --n, --workers or --against: all)")
    evaluate.add_argument("--n", type=int,
                          help=f"samples on each side for Inception metrics (default {quality_cli.DEFAULT_N})")
    evaluate.add_argument("--workers", type=int, metavar="W",
                          help="embed in Ray tasks of one torch thread, W at a time (default: in this process)")
    evaluate.add_argument("--json", action="store_true", help="print --against results as JSON (default: a table)")
    evaluate.set_defaults(func=cmd_eval)

    data_cli.register(commands)
    submit.register(commands)
    bench_cli.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:  # ConfigError, DataError, PlanError and argument checks
        print(f"gan-dist: error: {exc}", file=sys.stderr)
        return 2
    except BAD_INPUT as exc:
        print(f"gan-dist: error: {exc}", file=sys.stderr)
        return 2


def train_overrides(args) -> list[str]:
    flags = {"run.workers": args.workers, "run.gpus_per_worker": args.gpus_per_worker,
             "run.storage": args.storage, "run.name": args.name, "run.address": args.address,
             "train.max_steps": args.max_steps}
    sugar = [f"{key}={value}" for key, value in flags.items() if value is not None]
    if args.no_ray:
        sugar.append("run.use_ray=false")
    return sugar + list(args.set)


def cmd_train(args) -> int:
    cfg = resolve(args.recipe, train_overrides(args))
    cfg.run.name = run_name(cfg)
    # Inside a Ray Job (or with RAY_ADDRESS exported) the run joins that cluster.
    cfg.run.address = cfg.run.address or os.environ.get("RAY_ADDRESS", "")
    index = resolve_source(cfg.data.source, cfg.data.cache_dir)
    session = None
    try:
        if cfg.run.use_ray and cfg.run.address:
            session = _ray_session(cfg.run.address, {}, dashboard=False)
            resources = session.resources()
        else:
            resources = local_resources()
        placement = place(cfg.run, resources)
        cfg.run.workers, cfg.run.gpus_per_worker = placement.workers, placement.gpus_per_worker
        on_gpu = placement.gpus_per_worker > 0 if cfg.run.use_ray else resources.get("GPU", 0) >= 1
        if cfg.train.mixed_precision == "fp16" and not on_gpu:
            raise PlanError("train.mixed_precision=fp16 needs GPU workers (its gradient scaler is a GPU feature; "
                            "Accelerate would train in fp32): use bf16 or no on CPU")
        plan = make_plan(cfg, index, placement.workers)
        run_dir = run_directory(cfg)
        resume_step = check_resume(cfg, run_dir)

        print(cfg.to_yaml(), end="")
        print(f"--- plan: {placement.describe()}" + (" on Ray" if cfg.run.use_ray else " in this process"))
        print("\n".join(plan.lines()))
        where = f"resuming {run_dir} at step {resume_step}" if resume_step is not None else f"new run {run_dir}"
        print(f"run directory     {where}", flush=True)
        if args.dry_run:
            print("dry run: config and data are valid; nothing was trained")
            return 0

        if cfg.run.use_ray and session is None:
            session = _ray_session("", resources, dashboard=cfg.run.ray_dashboard)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(run_dir / "config.yaml", cfg.to_yaml().encode())
        return run(cfg, run_dir, placement, session)
    finally:
        if session is not None:
            session.close()


def cmd_sample(args) -> int:
    from gan_dist.inference import load_generator, sample_png, upscale_png, write_png

    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    gen = load_generator(args.checkpoint)
    data = upscale_png(gen, args.input) if args.input else sample_png(gen, args.n, args.class_label, args.seed)
    write_png(args.out, data)
    print(f"wrote {args.out} from {gen.cfg.model.arch} G_ema at step {gen.step}")
    return 0


def cmd_eval(args) -> int:
    from gan_dist.inference import evaluate_checkpoint, to_json

    if quality_cli.wanted(args):
        return quality_cli.run(args)
    if args.checkpoint is None:
        raise ValueError("eval needs a checkpoint or run folder (or --data A --against B for two data sets)")
    print(to_json(evaluate_checkpoint(args.checkpoint, args.data)))
    return 0


def _ray_session(address: str, resources: dict, dashboard: bool):
    from gan_dist.integrations.ray import RaySession

    return RaySession(address, resources, dashboard)


def run(cfg: Config, run_dir: Path, placement, session) -> int:
    """Train, show progress, and write summary.json whatever happens."""
    t0 = time.perf_counter()
    if session is not None:
        hub = session.start_hub(cfg.train.max_steps, cfg.metrics.enabled)
        call = lambda method, *args: session.call(hub, method, *args)  # noqa: E731
    else:
        hub = RunHub(cfg.train.max_steps, cfg.metrics.enabled)
        call = lambda method, *args: getattr(hub, method)(*args)  # noqa: E731
    target = call("serve_metrics", metrics_host(cfg), cfg.metrics.port, str(run_dir),
                  {"run": cfg.run.name, "recipe": cfg.recipe})
    if target:
        print(f"metrics           http://{target}/metrics (Prometheus file-SD: {run_dir / TARGETS_FILE})", flush=True)
    status, result, error = "failed", {}, None
    try:
        with ProgressDisplay(lambda since: call("snapshot", since), cfg.train.max_steps):
            if session is not None:
                result = session.fit(cfg, run_dir, placement, hub)
            else:
                from gan_dist.trainer import preempt
                from gan_dist.trainer.loop import train_worker

                with preempt.sigterm_requests_stop():
                    result = train_worker(cfg, run_dir, LocalSink(run_dir, cfg.train), hub)
        status, error = outcome(cfg, result)
    except KeyboardInterrupt:
        status, error = "stopped", "interrupted by the user"
    except Exception as exc:  # a failure at run time: recorded, reported, exit 1
        error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    finally:
        try:
            snap = call("snapshot", 0)
        except Exception:
            snap = {}
        summary = build_summary(status, result, snap, placement, time.perf_counter() - t0, error)
        write_summary(run_dir, summary)
        try:
            push_error = call("close", cfg.metrics.pushgateway, cfg.run.name)
        except Exception as exc:  # the hub may be gone with a failed run
            push_error = f"metrics hub: {exc}"
    print(f"{status}: {summary['steps']} steps in {summary['wall_seconds']:.1f} s, "
          f"{summary['images_per_second']:,.0f} samples/s, world size {summary['world_size']}, "
          f"restarts {summary['restarts']}, alerts {len(summary['alerts'])}, rollbacks {summary['rollbacks']}")
    if summary["eval"]:
        print("eval: " + describe(summary["eval"]))
    if push_error:
        print(f"gan-dist: warning: {push_error}", file=sys.stderr)
    if error:
        print(f"gan-dist: run {status}: {error}", file=sys.stderr)
    print(f"run directory: {run_dir}")
    return 0 if status == "completed" else 1


def outcome(cfg: Config, result: dict) -> tuple[str, str | None]:
    """The status of a run that returned, and why it ended early if it did."""
    if result.get("preempted"):
        return "stopped", (f"preempted (SIGTERM): saved at step {result['steps']}; "
                           f"run again with --name {cfg.run.name} to resume")
    if result.get("stopped_by"):
        event = result["stopped_by"]
        note = f" ({event['note']})" if event.get("note") else ""
        return "stopped", (f"stopped by the {event['kind']} detector at step {event['step']} (since step "
                           f"{event['onset_step']}){note}; saved at step {result['steps']}")
    return "completed", None


def metrics_host(cfg: Config) -> str:
    """Where the metrics endpoint listens: as configured, else loopback for a local run and all
    interfaces when the run joins a cluster (Prometheus scrapes it from elsewhere)."""
    return cfg.metrics.host or ("0.0.0.0" if cfg.run.address else "127.0.0.1")


if __name__ == "__main__":
    sys.exit(main())
