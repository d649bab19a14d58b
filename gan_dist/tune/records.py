"""What a tune leaves in its directory besides the members' runs.

- `results.jsonl`: one line per interval a member reported (its step, the ranking metric,
  its hyper-parameters, whether it collapsed);
- `exploits.jsonl`: one line per replacement: who copied whom, at which steps, why
  (`interval`: PBT's worst quantile at a perturbation interval; `collapse`: a detector's
  alarm), and the hyper-parameters before and after;
- `tune-summary.json` and `tune-summary.png`, built from both: each member's metric over
  its steps, every exploit, the winning member's hyper-parameter schedule (its lineage:
  after each copy, the schedule of the member it copied up to that step) and its final eval.

Both logs are appended to as things happen, so a resumed tune keeps its past.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

from gan_dist.results import describe
from gan_dist.rundir import SUMMARY_FILE, write_atomic
from gan_dist.tune.spec import TuneSpec, member_name

RESULTS_FILE, EXPLOITS_FILE = "results.jsonl", "exploits.jsonl"
SUMMARY_JSON, SUMMARY_PNG = "tune-summary.json", "tune-summary.png"


def append(path: Path, record: dict) -> None:
    with open(path, "a") as out:
        out.write(json.dumps(record, default=float) + "\n")


def read(path: Path) -> list[dict]:
    """A log's records; a line cut short by a crash is skipped."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


@dataclass(frozen=True)
class Segment:
    """Steps [start, end) of the winning lineage, trained by `member` with `hyperparams`."""

    start: int
    end: int
    member: str
    hyperparams: dict


def lineage(member: str, results: list[dict], exploits: list[dict], until: float = math.inf) -> list[Segment]:
    """The hyper-parameter schedule that produced `member`'s state as of time `until`: its own
    intervals since it last copied another member, preceded by that member's schedule up to
    the copied step (and so on back)."""
    copies = [e for e in exploits if e["member"] == member and e["time"] <= until]
    since = copies[-1]["time"] if copies else -math.inf
    own = [Segment(r["start_step"], r["step"], member, r["hyperparams"]) for r in results
           if r["member"] == member and since < r["time"] <= until and not r.get("collapsed")]
    if not copies:
        return own
    last = copies[-1]
    before = [s for s in lineage(last["source"], results, exploits, last["time"]) if s.start < last["source_step"]]
    before = [Segment(s.start, min(s.end, last["source_step"]), s.member, s.hyperparams) for s in before]
    return before + own


def metric_history(results: list[dict]) -> dict[str, list[dict]]:
    history: dict[str, list[dict]] = {}
    for r in sorted(results, key=lambda r: r["time"]):
        history.setdefault(r["member"], []).append({"step": r["step"], "metric": r["metric"], "time": r["time"],
                                                    "collapsed": bool(r.get("collapsed"))})
    return history


def latest_by_member(results: list[dict]) -> dict[str, dict]:
    latest: dict[str, dict] = {}
    for r in sorted(results, key=lambda r: r["time"]):
        latest[r["member"]] = r
    return latest


def read_summary(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return {}


def build_summary(spec: TuneSpec, status: str, wall_seconds: float, results: list[dict] | None = None,
                  exploits: list[dict] | None = None) -> dict:
    """tune-summary.json: the tune, each member, every exploit, the winner and its schedule; from
    the logs' records as given (a caller that has read and checked them), else as on disk."""
    tune_dir = spec.tune_dir
    results = read(tune_dir / RESULTS_FILE) if results is None else results
    exploits = read(tune_dir / EXPLOITS_FILE) if exploits is None else exploits
    latest = latest_by_member(results)
    members = []
    for i in range(spec.population):
        name = member_name(i)
        run = read_summary(tune_dir / name)
        last = latest.get(name, {})
        members.append({"member": name, "initial": spec.initial[i], "hyperparams": last.get("hyperparams"),
                        "metric": last.get("metric"), "score": last.get("score"), "steps": run.get("steps"),
                        "status": run.get("status"), "exploited": sum(e["member"] == name for e in exploits),
                        "copied_by": sum(e["source"] == name for e in exploits), "run_dir": str(tune_dir / name)})
    scored = [m for m in members if m["score"] is not None]
    best = max(scored, key=lambda m: m["score"]) if scored else None
    winner = None
    if best is not None:
        run = read_summary(Path(best["run_dir"]))
        winner = {"member": best["member"], "metric": best["metric"], "steps": run.get("steps"),
                  "eval": run.get("eval", {}), "fingerprint": run.get("fingerprint"), "run_dir": best["run_dir"],
                  "schedule": [s.__dict__ for s in lineage(best["member"], results, exploits)]}
    steps_trained = sum(r["step"] - r["start_step"] for r in results)
    return {
        "tune": spec.name, "status": status, "recipe": spec.recipe, "metric": spec.metric, "mode": spec.mode,
        "population": spec.population, "perturb_every": spec.perturb_every, "max_steps": spec.max_steps,
        "synchronous": spec.synchronous, "workers_per_member": spec.workers_per_member,
        "mutations": [m.text for m in spec.mutations],
        "wall_seconds": wall_seconds, "steps_trained": steps_trained,
        "exploits_by_reason": {reason: sum(e["reason"] == reason for e in exploits) for reason in ("interval", "collapse")},
        "best": winner, "members": members, "exploits": exploits, "history": metric_history(results),
    }


def write_summary(spec: TuneSpec, status: str, wall_seconds: float) -> dict:
    summary = build_summary(spec, status, wall_seconds)
    write_atomic(spec.tune_dir / SUMMARY_JSON, json.dumps(summary, indent=2, default=float).encode())
    write_atomic(spec.tune_dir / SUMMARY_PNG, summary_png(spec, summary))
    return summary


def summary_png(spec: TuneSpec, summary: dict) -> bytes:
    """Each member's metric over its steps (x: replaced after a collapse, o: at an interval), and
    below it the winner's schedule of each mutated hyper-parameter."""
    import matplotlib  # deferred on purpose: only the summary draws, and only here

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    keys = [m.key for m in spec.mutations]
    fig, axes = plt.subplots(1 + len(keys), 1, figsize=(8, 3 + 2 * len(keys)), squeeze=False, sharex=True)
    ax = axes[0][0]
    for member, points in sorted(summary["history"].items()):
        ax.plot([p["step"] for p in points], [p["metric"] for p in points], "-", label=member, alpha=0.8,
                color=_colour(member))
        for e in summary["exploits"]:
            if e["member"] == member:
                ax.plot([e["step"]], [_metric_at(points, e["time"])], "x" if e["reason"] == "collapse" else "o",
                        color=_colour(member), markersize=8, fillstyle="none")
    ax.set_ylabel(spec.metric)
    ax.set_title(f"gan-dist tune {spec.name}: {spec.recipe}, population {spec.population} "
                 f"(x: replaced after a collapse, o: at an interval)", fontsize=9)
    if summary["history"]:
        ax.legend(fontsize=7, loc="best")
    best = summary.get("best")
    for row, key in enumerate(keys, start=1):
        ax = axes[row][0]
        if best is not None:
            for seg in best["schedule"]:
                ax.plot([seg["start"], seg["end"]], [seg["hyperparams"][key]] * 2, "-", linewidth=2,
                        color=_colour(seg["member"]))
            if spec.mutation(key).log:
                ax.set_yscale("log")
        ax.set_ylabel(key, fontsize=8)
    axes[-1][0].set_xlabel("step")
    if best is not None:
        caption = f"winner {best['member']} (its schedule by lineage, coloured by the member that trained it); final eval: "
        caption += describe({k: v for k, v in best["eval"].items() if isinstance(v, (int, float))}) or "none"
        fig.text(0.01, 0.005, caption, fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _metric_at(points: list[dict], when: float) -> float:
    """The member's last reported metric before `when` (where an exploit replaced it)."""
    before = [p for p in points if p["time"] <= when]
    return (before or points)[-1]["metric"] if points else float("nan")


def _colour(member: str) -> str:
    """A member's colour, the same in every panel (matplotlib's cycle, by the member's number)."""
    return f"C{int(member.rsplit('-', 1)[1]) % 10}"
