"""The arguments of `gan-dist train`, shared by `gan-dist submit` (which sends the same run to a
cluster) and the Ray job entrypoint, and their translation into config overrides."""

from __future__ import annotations

import argparse

from gan_dist.config import ELASTIC_WORKERS, recipe_names


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (0 is not "not given")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def count_up_to(limit: int):
    """An argparse type: an integer in 1..limit."""
    def count(text: str) -> int:
        value = positive_int(text)
        if value > limit:
            raise argparse.ArgumentTypeError(f"must be <= {limit:,}, got {value:,}")
        return value
    return count


def workers_count(text: str) -> str:
    """An argparse type for --workers: a count >= 1, auto, or an elastic range MIN:MAX (whose
    bounds run.workers checks, naming the problem)."""
    if text == "auto" or ELASTIC_WORKERS.fullmatch(text):
        return text
    return str(positive_int(text))


def class_list(text: str) -> list[int]:
    """An argparse type: class indices, comma-separated (3 or 3,5,7)."""
    try:
        classes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected class indices like 3 or 3,5, got {text!r}") from None
    if not classes:
        raise argparse.ArgumentTypeError("no class given")
    return classes


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", nargs="?", default=None,
                        help=f"a shipped recipe ({', '.join(recipe_names())}) or a YAML file; default ring8")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optim.lr_g=2e-4 (repeatable)")
    parser.add_argument("--workers", type=workers_count, help="data-parallel workers: a count, auto, or MIN:MAX for an elastic group (run.workers)")
    parser.add_argument("--gpus-per-worker", type=non_negative_float, help="GPUs per worker (run.gpus_per_worker)")
    parser.add_argument("--storage", help="folder holding run directories (run.storage)")
    parser.add_argument("--name", help="run name; the same name and storage resume (run.name)")
    parser.add_argument("--address", help="Ray cluster address; default: start a local Ray (run.address)")
    parser.add_argument("--max-steps", type=positive_int, help="G steps to train (train.max_steps)")
    parser.add_argument("--no-ray", action="store_true", help="train in this process, one worker, without Ray")
    parser.add_argument("--dry-run", action="store_true", help="validate config and data, print the plan, stop")
    parser.add_argument("--verbose", action="store_true", help="print a failure's full traceback to stderr too")


def train_overrides(args) -> list[str]:
    """The config overrides that train's flags stand for, then the --set ones."""
    flags = {"run.workers": args.workers, "run.gpus_per_worker": args.gpus_per_worker,
             "run.storage": args.storage, "run.name": args.name, "run.address": args.address,
             "train.max_steps": args.max_steps}
    sugar = [f"{key}={value}" for key, value in flags.items() if value is not None]
    if args.no_ray:
        sugar.append("run.use_ray=false")
    return sugar + list(args.set)
