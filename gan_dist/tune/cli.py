"""`gan-dist tune RECIPE --population N [--mutate KEY=LOW:HIGH[:log]]... [--metric NAME]
[--perturb-every STEPS] [--perturb-factors DOWN:UP] [--resample-probability P] [--quantile Q]
[--synchronous] [--workers-per-member W]`: population-based training of a recipe.

Parse, resolve and check the tune (gan_dist.tune.spec), print it, record it (`tune.yaml`),
train the population on Ray Tune (gan_dist.integrations.ray_tune), and write
`tune-summary.json` and its PNG whatever happens. The same command again (the same --name
and --storage) resumes the tune as a whole.
"""

from __future__ import annotations

import argparse
import sys
import time

import yaml

from gan_dist.config import ConfigError, load_yaml, recipe_names
from gan_dist.tune.spec import PERTURB_FACTORS, QUANTILE, RESAMPLE_PROBABILITY
from gan_dist.train_args import positive_int


def population_size(text: str) -> int:
    """An argparse type for --population: an integer >= 2 (a member copies another)."""
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2 (a member copies a better one), got {value}")
    return value


def register(commands) -> None:
    tune = commands.add_parser("tune", help="population-based training of a recipe on Ray Tune")
    tune.add_argument("recipe", help=f"a shipped recipe ({', '.join(recipe_names())}) or a YAML file")
    tune.add_argument("--population", type=population_size, required=True, metavar="N",
                      help="members trained side by side (at least 2)")
    tune.add_argument("--mutate", action="append", default=[], metavar="KEY=LOW:HIGH[:log]",
                      help="a hyper-parameter drawn from [LOW, HIGH] (log-uniformly with :log) and perturbed "
                           "within it, e.g. optim.lr=1e-4:1e-2:log (repeatable; default: the learning rates, "
                           "a tenth to ten times the recipe's)")
    tune.add_argument("--metric", help="what ranks the members (default: the recipe's quality metric, e.g. "
                                       "hq_coverage for 2-D mixtures, fid with periodic evals, else fid_domain)")
    tune.add_argument("--perturb-every", type=positive_int, metavar="STEPS",
                      help="steps between comparisons (a multiple of train.log_every; default about a tenth of "
                           "the run)")
    tune.add_argument("--perturb-factors", metavar="DOWN:UP",
                      help="a copy's continuous values are multiplied by DOWN or UP (0 < DOWN < 1 < UP; default "
                           f"{PERTURB_FACTORS[0]:g}:{PERTURB_FACTORS[1]:g})")
    tune.add_argument("--resample-probability", type=float, default=RESAMPLE_PROBABILITY, metavar="P",
                      help="the probability that a copy draws a value afresh from its range instead (default "
                           f"{RESAMPLE_PROBABILITY:g})")
    tune.add_argument("--quantile", type=float, default=QUANTILE, metavar="Q",
                      help="the worst fraction Q of the members copies the best Q at each interval (rounded up, at "
                           f"most half; default {QUANTILE:g})")
    tune.add_argument("--synchronous", action="store_true",
                      help="compare the members in generations: each waits at every interval until all have "
                           "reported it (default: as Tune's PBT, each is compared when it reports, against the "
                           "others' latest results)")
    tune.add_argument("--workers-per-member", type=positive_int, default=1, metavar="W",
                      help="data-parallel workers of each member (default 1)")
    tune.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config key of every member, e.g. --set train.log_every=100 (repeatable)")
    tune.add_argument("--storage", help="folder holding tune directories (run.storage; default runs)")
    tune.add_argument("--name", help="tune name; the same name and storage resume the tune")
    tune.add_argument("--address", help="Ray cluster address; default: start a local Ray")
    tune.add_argument("--max-steps", type=positive_int, help="G steps of each member (train.max_steps)")
    tune.add_argument("--dry-run", action="store_true", help="check the tune, print the plan, stop")
    tune.set_defaults(func=cmd_tune)


def cmd_tune(args) -> int:
    # Deferred on purpose: torch and Ray (Tune) load only when a tune runs.
    from gan_dist.rundir import check_writable, write_atomic, write_error_log
    from gan_dist.tune import records
    from gan_dist.tune.spec import SPEC_FILE, TuneSpec, build_spec, member_name

    spec = build_spec(args.recipe, args.set, args.population, args.mutate, args.metric, args.perturb_every,
                      args.workers_per_member, args.storage, args.name, args.address, args.max_steps, args.synchronous,
                      args.perturb_factors, args.resample_probability, args.quantile, warn=_warn)
    tune_dir = spec.tune_dir
    check_writable(tune_dir, f"--storage {spec.storage}")
    resumed = (tune_dir / SPEC_FILE).exists()
    if resumed:
        try:
            saved = TuneSpec.from_record(load_yaml((tune_dir / SPEC_FILE).read_text(), f"{tune_dir / SPEC_FILE}"))
        except (ConfigError, OSError, TypeError, KeyError) as exc:
            raise ConfigError(f"tune {spec.name}: {tune_dir / SPEC_FILE} is not a tune record ({exc}); use another "
                              f"--name for a new tune") from None
        spec.check_resume(saved)

    print(yaml.safe_dump(spec.config, sort_keys=False), end="")
    print("--- tune")
    for line in plan_lines(spec, resumed):
        print(line)
    print("\n".join(f"{member_name(i):<17} " + "  ".join(f"{k} {_fmt(v)}" for k, v in values.items())
                    for i, values in enumerate(spec.initial)), flush=True)
    if args.dry_run:
        print("dry run: the tune, its config and data are valid; nothing was trained")
        return 0

    # Deferred on purpose: Ray Tune loads only when a tune runs.
    from gan_dist.integrations.ray_tune import run_population

    started = False

    def start() -> None:
        """The tune's record, written once Ray is up and can run the tune: a tune that never
        started (Ray unreachable, a cluster too small) leaves none, so any command may follow."""
        nonlocal started
        tune_dir.mkdir(parents=True, exist_ok=True)
        if not resumed:
            write_atomic(tune_dir / SPEC_FILE, yaml.safe_dump(spec.to_record(), sort_keys=False).encode())
        started = True

    t0 = time.perf_counter()
    status, error = "failed", None
    try:
        status, _ = run_population(spec, resumed, on_start=start)
    except KeyboardInterrupt:
        status = "stopped"
    except Exception as exc:  # a failure at run time (Ray did not start, the scheduler broke): one line, the traceback kept
        if isinstance(exc, ConfigError) and not started:
            raise  # the cluster cannot run the tune as asked: exit 2, nothing started or written
        tune_dir.mkdir(parents=True, exist_ok=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        error = f"{type(exc).__name__}: {first} (traceback in {write_error_log(tune_dir, exc)})"
    if not started:
        print(f"gan-dist: tune {status} before it started{': ' + error if error else ''}", file=sys.stderr)
        return 1
    summary = records.write_summary(spec, status, time.perf_counter() - t0)
    if error:
        print(f"gan-dist: tune failed: {error}", file=sys.stderr)
    best = summary["best"]
    print(f"{status}: {summary['steps_trained']:,} steps trained by {spec.population} members in "
          f"{summary['wall_seconds']:.0f} s; exploits: {summary['exploits_by_reason']['interval']} at intervals, "
          f"{summary['exploits_by_reason']['collapse']} after collapses")
    if best is not None:
        print(f"best: {best['member']}, {spec.metric} {_fmt(best['metric'])}; eval: "
              + ", ".join(f"{k} {_fmt(v)}" for k, v in best["eval"].items()))
    print(f"tune directory: {tune_dir} ({records.SUMMARY_JSON}, {records.SUMMARY_PNG})")
    return 0 if status == "completed" else 1


def plan_lines(spec, resumed: bool) -> list[str]:
    where = f"resuming {spec.tune_dir}" if resumed else f"new tune {spec.tune_dir}"
    copies, (down, up) = spec.copies_per_interval, spec.perturb_factors
    return [
        f"tune directory    {where}",
        f"population        {spec.population} members of {spec.recipe} ({spec.extra.get('data', '')}), "
        f"{spec.workers_per_member} worker(s) each, {spec.max_steps} steps",
        f"perturbation      every {spec.perturb_every} steps"
        f"{', in generations (every member waits for the others)' if spec.synchronous else ''}: the worst "
        f"{copies} {'copies' if copies == 1 else 'copy'} the best {copies} (--quantile {spec.quantile:g}); a member "
        f"whose detectors raise mode_collapse, divergence or nonfinite is replaced at once",
        f"explore           a copy's values x{down:g} or x{up:g} (an integer one down or up), or drawn afresh "
        f"with probability {spec.resample_probability:g}",
        f"ranked by         {spec.metric} ({'higher' if spec.mode == 'max' else 'lower'} is better)",
        f"mutating          {', '.join(m.text for m in spec.mutations)}",
    ]


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _warn(message: str) -> None:
    print(f"gan-dist: warning: {message}", file=sys.stderr, flush=True)
