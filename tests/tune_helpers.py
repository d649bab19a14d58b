"""A tune directory made without Ray, for the tests of `gan-dist report` on a tune: tune.yaml from
the real spec, two members that are copies of one short completed run, and the logs as
gan_dist/integrations/ray_tune.py appends them: member-1 diverges in its first interval and is
replaced at once by a copy of member-0's step 2; both train on to step 4; tune-summary.json and
its PNG by records.write_summary, as the tune writes them when it ends."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from gan_dist.rundir import write_atomic
from gan_dist.tune import records
from gan_dist.tune.spec import SPEC_FILE, TuneSpec, build_spec

COPIED_LR_FACTOR = 1.2  # member-1's learning rate after its copy: member-0's, perturbed up


def tune_spec(storage: Path, name: str = "pbt") -> TuneSpec:
    return build_spec("ring8", ["train.log_every=2", "checkpoint.every=2"], population=2,
                      mutate=["optim.lr=1e-4:20:log"], metric=None, perturb_every=2, workers_per_member=1,
                      storage=str(storage), name=name, address=None, max_steps=4)


def make_tune(storage: Path, run: Path, name: str = "pbt") -> Path:
    """storage/name, a completed tune of two members; `run` is a completed 4-step ring8 run."""
    spec = tune_spec(storage, name)
    tune_dir = spec.tune_dir
    tune_dir.mkdir(parents=True)
    write_atomic(tune_dir / SPEC_FILE, yaml.safe_dump(spec.to_record(), sort_keys=False).encode())
    for member in ("member-0", "member-1"):
        shutil.copytree(run, tune_dir / member)
    lr0, lr1 = spec.initial[0]["optim.lr"], spec.initial[1]["optim.lr"]
    copied = lr0 * COPIED_LR_FACTOR
    results = [
        result(1.0, "member-0", 0, 2, 0.5, lr0),
        result(2.0, "member-1", 0, 2, 0.0, lr1, alarm={"kind": "divergence", "step": 2}),
        result(4.0, "member-0", 2, 4, 0.7, lr0),
        result(5.0, "member-1", 2, 4, 0.6, copied, exploit=1),
    ]
    for record in results:
        records.append(tune_dir / records.RESULTS_FILE, record)
    records.append(tune_dir / records.EXPLOITS_FILE, {
        "time": 3.0, "member": "member-1", "source": "member-0", "reason": "collapse",
        "alarm": {"kind": "divergence", "step": 2}, "step": 2, "source_step": 2, "exploit": 1,
        "from": {"optim.lr": lr1}, "to": {"optim.lr": copied}})
    records.write_summary(spec, "completed", 12.5)
    return tune_dir


def result(time: float, member: str, start: int, step: int, metric: float, lr: float, alarm: dict | None = None,
           exploit: int = 0) -> dict:
    """A line of results.jsonl (ray_tune.ProgressPrinter's fields)."""
    return {"time": time, "member": member, "step": step, "start_step": start, "metric": metric,
            "score": float("-inf") if alarm else metric, "hyperparams": {"optim.lr": lr},
            "collapsed": alarm is not None, "alarm": alarm, "exploit": exploit}


def assert_resumes_without_training(argv: list[str], tune_dir: Path, cache_dir: Path) -> None:
    """The tune command `argv` again, on the finished tune at `tune_dir`: it resumes the tune
    (the same --name and --storage) and trains nothing twice."""
    from conftest import run_cli

    before = (tune_dir / records.RESULTS_FILE).read_text()
    again = run_cli(*argv, "--storage", str(tune_dir.parent), cache=cache_dir, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"tune directory    resuming {tune_dir}" in again.stdout
    assert (tune_dir / records.RESULTS_FILE).read_text() == before


def run_tune(argv: list[str], storage: Path, cache_dir: Path):
    """The tune command `argv` (its --name, no --storage) run to the end in `storage`, which
    must succeed: (its tune directory, the CLI result)."""
    from conftest import run_cli

    result = run_cli(*argv, "--storage", str(storage), cache=cache_dir, timeout=1500)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return storage / argv[argv.index("--name") + 1], result
