"""The `gan-dist` command: parse -> resolve config -> print/save it -> run.

Exit codes: 0 success; 2 bad input (config, data, arguments), reported on one
line without a traceback; 1 a failure at run time (its traceback in the run
directory's error.log).

The command's start-up stays light: `gan-dist --help`, `data inspect` and
`submit --dry-run` import neither torch nor Ray; each command imports what it
needs when it runs (the deferred imports below, each marked).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from gan_dist import __version__, submit
from gan_dist.bench import cli as bench_cli
from gan_dist.config import ConfigError, check_run_name, resolve
from gan_dist.data import cli as data_cli
from gan_dist.dependencies import missing_dependency
from gan_dist.jobspec import SubmitError
from gan_dist.tune import cli as tune_cli
from gan_dist.train_args import add_train_arguments, class_list, count_up_to, positive_int, train_overrides
from gan_dist.quality import DEFAULT_N, METRICS


# The most samples one `gan-dist sample` draws (a grid PNG holds fewer: inference.MAX_GRID_SAMPLES).
MAX_SAMPLES = 1_000_000


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gan-dist", description="Distributed GAN training on Ray, DDP and WebDataset.")
    parser.add_argument("--version", action="version", version=f"gan-dist {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="train a recipe (local Ray by default)")
    add_train_arguments(train)
    train.set_defaults(func=cmd_train)

    sample = commands.add_parser("sample", help="write a PNG of samples from a checkpoint's G_ema")
    sample.add_argument("checkpoint", help="a checkpoint folder, or a run folder (its latest checkpoint)")
    sample.add_argument("--n", type=count_up_to(MAX_SAMPLES), default=64,
                        help=f"number of samples (default 64, at most {MAX_SAMPLES:,})")
    sample.add_argument("--class", dest="classes", type=class_list, metavar="K[,K...]",
                        help="classes to generate (conditional models; default all, one grid row each)")
    sample.add_argument("--per-class", type=count_up_to(MAX_SAMPLES), metavar="N",
                        help="samples of each class (conditional models; default --n over the classes)")
    sample.add_argument("--input", help="low-resolution image to upscale (super-resolution models)")
    sample.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    sample.add_argument("--out", required=True,
                        help="a PNG file (a grid), or a folder: one PNG per sample (a subfolder per class), "
                             "which `gan-dist data pack` packs as a data set")
    sample.set_defaults(func=cmd_sample)

    evaluate = commands.add_parser("eval", help="a checkpoint's quality metrics as JSON, or two data sets compared")
    evaluate.add_argument("checkpoint", nargs="?", help="a checkpoint folder, or a run folder (its latest checkpoint)")
    evaluate.add_argument("--data", help="dataset to compare with (default: the run's data.source); with --against: A")
    evaluate.add_argument("--against", metavar="B", help="Inception metrics of data set --data A against data set B")
    evaluate.add_argument("--metrics", help=f"Inception metrics, from {','.join(METRICS)} "
                                            "(default with --n, --workers or --against: all)")
    evaluate.add_argument("--n", type=int,
                          help=f"samples on each side for Inception metrics (default {DEFAULT_N})")
    evaluate.add_argument("--workers", type=int, metavar="W",
                          help="embed in Ray tasks of one torch thread, W at a time (default: in this process)")
    evaluate.add_argument("--json", action="store_true", help="print --against results as JSON (default: a table)")
    evaluate.set_defaults(func=cmd_eval)

    report = commands.add_parser("report", help="write one self-contained HTML page of a run: summary, plots, "
                                                "samples over time, alerts")
    report.add_argument("run", help="a run folder (it may still be going, or have failed)")
    report.add_argument("--out", help="the HTML file to write (default RUN/report.html)")
    report.set_defaults(func=cmd_report)

    data_cli.register(commands)
    submit.register(commands)
    bench_cli.register(commands)
    tune_cli.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a bad argument (already reported on one line)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return args.func(args)
    except ValueError as exc:  # ConfigError, DataError, PlanError, CheckpointError and argument checks
        print(f"gan-dist: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # a command's deferred imports (torch, Ray) in a Python without them
        print(missing_dependency(exc), file=sys.stderr)
        return 2


def warn(message: str) -> None:
    print(f"gan-dist: warning: {message}", file=sys.stderr, flush=True)


def cmd_train(args) -> int:
    # Deferred on purpose: the public API loads torch (and Ray, for runs that use it), which
    # only commands that train need. The command is the API's load_config, then its train.
    from gan_dist import api

    cfg = api.load_config(args.recipe, train_overrides(args), warn=warn)
    result = api.train(cfg, dry_run=args.dry_run, verbose=args.verbose)
    return 0 if result is None else result.exit_code


def cmd_sample(args) -> int:
    # Deferred on purpose: torch loads only for commands that need it.
    from gan_dist import api
    from gan_dist.inference import check_png_out, sample_folder, sample_png, upscale_png, write_png
    from gan_dist.rundir import check_writable
    from tqdm import tqdm

    folder = not args.input and not args.out.lower().endswith(".png")  # one PNG per sample
    # Before loading anything: a bad --out fails at once.
    if folder:
        check_writable(Path(args.out).absolute().parent, f"--out {args.out}")
    else:
        check_png_out(args.out)
    gen = api.load_generator(args.checkpoint)  # the public API's, as a user's script would
    if folder:
        with tqdm(total=None, unit="image", desc="sampling", file=sys.stderr) as bar:
            count = sample_folder(gen, Path(args.out), args.n, args.classes, args.seed, args.per_class, bar.update)
        print(f"wrote {count} images to {args.out} from {gen.cfg.model.arch} G_ema at step {gen.step}")
        return 0
    data = (upscale_png(gen, args.input) if args.input
            else sample_png(gen, args.n, args.classes, args.seed, args.per_class))
    write_png(args.out, data)
    print(f"wrote {args.out} from {gen.cfg.model.arch} G_ema at step {gen.step}")
    return 0


def cmd_eval(args) -> int:
    # Deferred on purpose: torch loads only for commands that need it.
    from gan_dist import api
    from gan_dist.inference import evaluate_checkpoint, to_json
    from gan_dist.quality import cli as quality_cli

    if quality_cli.wanted(args):
        return quality_cli.run(args)
    if args.checkpoint is None:
        raise ValueError("eval needs a checkpoint or run folder (or --data A --against B for two data sets)")
    print(to_json(evaluate_checkpoint(api.load_generator(args.checkpoint), args.data)))
    return 0


def cmd_report(args) -> int:
    # Deferred on purpose: matplotlib (and pyarrow) load only for the command that draws.
    from gan_dist.report import write_report

    out = write_report(Path(args.run).absolute(), Path(args.out).absolute() if args.out else None)
    print(f"wrote {out}")
    return 0


def job_entrypoint(argv: list[str]) -> int:
    """`gan-dist train ARGV` as a Ray job's entrypoint (launch/ray_job.py, the RayJob in k8s/).

    A job that Ray or Kubernetes may run again must find its checkpoints: it needs a
    stable --name and storage every node sees. `gan-dist submit` supplies both; a job
    submitted some other way is refused here, before any training, if it lacks them.
    """
    args = build_parser().parse_args(["train", *argv])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the run itself reports them
            cfg = resolve(args.recipe, train_overrides(args))
        if not cfg.run.name:
            raise SubmitError("a Ray job needs a stable run name (--name RUN) so that a retry resumes it")
        check_run_name(cfg.run.name, "run.name")
        if not cfg.run.storage.startswith("/"):
            raise SubmitError(f"run.storage {cfg.run.storage!r} is relative: a Ray job needs shared storage "
                              f"that every node sees (--storage /mnt/shared/runs)")
    except ConfigError as exc:
        print(f"gan-dist: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # the config's checks import torch
        print(missing_dependency(exc), file=sys.stderr)
        return 2
    return main(["train", *argv])


if __name__ == "__main__":
    sys.exit(main())
