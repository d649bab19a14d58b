"""Ray Tune's side of `gan-dist tune` (gan_dist/tune): the members as Tune trials, the
population-based scheduler, and the command's run.

The project keeps Ray in one module, gan_dist/integrations/ray.py; this second one holds
what only `gan-dist tune` needs, Ray Tune, so that the training workers and every other
command go on importing Ray Train alone (`ray.tune` brings its own schedulers, searchers
and loggers). It builds on that module: each interval of a member is a gan-dist run
started through `RaySession.fit` (Ray Train V2), reporting to a hub proxied as
`RemoteHub` is.

How a member runs (`member_trial`, in its Tune trial): it trains one perturbation interval
at a time (`run.stop_at_step`), each a normal gan-dist run in the member's run directory,
and reports the ranking metric with a copy of the interval's last checkpoint (the bridge,
gan_dist.tune.bridge). When PBT replaces it, Tune restarts the trial with the better
member's checkpoint and perturbed hyper-parameters; the trial adopts that checkpoint and
trains on. A member whose detectors stop it (policy `exploit`) reports `collapsed`, and
`PopulationScheduler` replaces it at once instead of at the next interval.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import ray
from ray import tune
from ray.tune import Checkpoint
from ray.tune.experiment import Trial
from ray.tune.logger import JsonLoggerCallback
from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from gan_dist import checkpoint as ckpt
from gan_dist.config import ConfigError
from gan_dist.driver import Placement, local_resources, metrics_host, run as run_interval
from gan_dist.integrations.ray import RaySession, RemoteHub
from gan_dist.rundir import CONFIG_FILE, write_atomic
from gan_dist.tune import records
from gan_dist.tune.bridge import ORIGIN_FILE, adopt, adopted_already, read_origin, stage
from gan_dist.tune.hub import TuneHub
from gan_dist.tune.spec import (TUNE_EXPERIMENT, TuneSpec, collapse_alarm, member_name, metric_value, quantile_size,
                                score_of)

# Tune restarts a member's trial that failed (beyond the restarts Ray Train makes of its workers
# within an interval) this many times, from its last reported checkpoint.
TRIAL_RETRIES = 2
# A member's trial (the driver of its Ray Train runs) does no training itself: a sliver of a CPU
# (Ray refuses a trial that asks for nothing), counted in the local Ray's CPUs beside the workers'.
TRIAL_CPUS = 0.01
# How often a collapsed member asks whether another can be copied yet, and a member of a synchronous
# tune whether its generation has been compared.
SOURCE_POLL_SECONDS = 0.5
MEMBER_LOG = "tune-member.log"  # a member's own console output (the tune's console shows one line an interval)


# A member, inside its Tune trial ------------------------------------------------------

class MemberHub(RemoteHub):
    """A member's run hub: its part of the population's TuneHub actor, with RunHub's methods."""

    def __init__(self, actor, member: str):
        super().__init__(actor)
        self.member = member

    def serve_metrics(self, host: str, port: int, run_dir: str, labels: dict[str, str]) -> str | None:
        return None  # the population's one target serves every member

    def snapshot(self, since: int = 0):
        return self._get(self.actor.snapshot.remote(self.member, since))

    def start_tensorboard(self, log_dir: str, config: dict) -> None:
        self._get(self.actor.start_tensorboard.remote(self.member, log_dir, config))

    def close(self, pushgateway: str = "", run: str = "", auth: tuple[str, str] | None = None) -> str | None:
        self._get(self.actor.end.remote(self.member))  # the interval's end; the population's target stays
        return None

    def note_restart(self, why: str) -> None:
        self.actor.note_restart.remote(self.member, why)

    def started(self, world_size: int, step: int) -> None:
        self._get(self.actor.started.remote(self.member, world_size, step))

    def progress(self, row: dict) -> None:
        self.actor.progress.remote(self.member, row)

    def alert(self, event: dict) -> None:
        self.actor.alert.remote(self.member, event)

    def first_step(self) -> None:
        self.actor.first_step.remote(self.member)

    def samples(self, step: int, png: bytes) -> None:
        self.actor.samples.remote(self.member, step, png)

    def finished(self, result) -> None:
        self._get(self.actor.finished.remote(self.member, result))

    # A member runs in a Tune trial's thread, where no SIGTERM reaches its driver code: Tune
    # stops the population's members itself.
    def request_stop(self) -> None: ...

    def stop_requested(self) -> bool:
        return False


class _TrialSession(RaySession):
    """The Ray the tune command started or joined, from inside a member's trial: nothing to
    start or shut down; each interval's hub is the member's part of the TuneHub. Whether Ray
    Train's placement group cleaner is kept was decided when the command connected."""

    def __init__(self, address: str, keep_pg_cleaner: bool, tune_hub, member: str):
        self.address, self.keep_pg_cleaner = address, keep_pg_cleaner
        self.tune_hub, self.member = tune_hub, member

    def start_hub(self, max_steps: int, monitoring: bool) -> MemberHub:
        ray.get(self.tune_hub.begin.remote(self.member, max_steps), timeout=RemoteHub.TIMEOUT_SECONDS)
        return MemberHub(self.tune_hub, self.member)

    def close(self) -> None: ...


def member_trial(config: dict, spec: TuneSpec, tune_hub, keep_pg_cleaner: bool) -> None:
    """One member of the population, as a Tune trial: adopt the checkpoint Tune hands over if it
    is another member's, then train interval by interval, reporting each to Tune."""
    index, exploit = int(config["member"]), int(config.get("exploit", 0))
    name, values = member_name(index), {m.key: config[m.key] for m in spec.mutations}
    cfg = spec.member_config(index, values)
    run_dir = spec.tune_dir / name
    run_dir.mkdir(parents=True, exist_ok=True)
    given = tune.get_checkpoint()
    if given is not None:
        with given.as_directory() as folder:
            origin = read_origin(Path(folder))
            if origin["member"] != name and not adopted_already(run_dir, exploit):
                adopt(Path(folder), run_dir, cfg, exploit)
                tune_hub.exploited.remote(name, config.get("exploit_reason") or "interval")
    write_atomic(run_dir / CONFIG_FILE, cfg.to_yaml().encode())
    ray.get(tune_hub.trial_started.remote(name), timeout=RemoteHub.TIMEOUT_SECONDS)
    try:
        _train_intervals(spec, tune_hub, keep_pg_cleaner, index, values, cfg, run_dir, exploit)
    finally:
        tune_hub.trial_ended.remote(name)


def _train_intervals(spec: TuneSpec, tune_hub, keep_pg_cleaner: bool, index: int, values: dict, cfg, run_dir: Path,
                     exploit: int) -> None:
    name = member_name(index)
    session = _TrialSession(spec.address, keep_pg_cleaner, tune_hub, name)
    placement = Placement(spec.workers_per_member, cfg.run.cpus_per_worker, cfg.run.gpus_per_worker)
    latest = ckpt.find_latest(run_dir)
    step = ckpt.checkpoint_step(latest) if latest is not None else 0
    while step < spec.max_steps:
        until = min((step // spec.perturb_every + 1) * spec.perturb_every, spec.max_steps)
        interval = spec.member_config(index, values)
        interval.run.stop_at_step = until
        # The end-of-run Inception eval (eval.inception) only at the end: each interval ends a run.
        interval.eval.inception = cfg.eval.inception and until == spec.max_steps
        with open(run_dir / MEMBER_LOG, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            print(f"--- gan-dist tune: {name}, steps {step} to {until}, {json.dumps(values)}", flush=True)
            summary = run_interval(interval, run_dir, placement, session).summary.to_dict()
        alarm = collapse_alarm(summary)
        if summary["status"] == "failed" or (summary["status"] == "stopped" and alarm is None
                                             and summary["steps"] != until):
            raise RuntimeError(f"{name}: the interval to step {until} ended {summary['status']}: "
                               f"{summary.get('error') or summary.get('reason')} (see {run_dir})")
        value = metric_value(summary, spec.metric)
        result = {"step": summary["steps"], "start_step": step, "metric": math.nan if value is None else value,
                  "score": score_of(value, spec.mode), "collapsed": int(alarm is not None),
                  "alarm_kind": alarm["kind"] if alarm else "", "alarm_step": alarm["step"] if alarm else -1,
                  "exploit": exploit, "reported_at": time.time(), "repeat": 0,
                  **{f"hp:{key}": value for key, value in values.items()}}
        tune_hub.scored.remote(name, result["metric"])
        if alarm is not None:
            # Its state is given up: the scheduler replaces it now (Tune ends this trial and starts
            # it again from a copy). A report returns only when no healthy member had a checkpoint
            # there yet: the member waits for one, or trains on from its own state if none can come.
            tune.report(result)
            _await_source(tune_hub, name, result)
        else:
            with tempfile.TemporaryDirectory(prefix="gan-dist-tune-") as tmp:
                folder = Path(tmp) / "checkpoint"
                stage(run_dir, name, folder)
                tune.report(result, checkpoint=Checkpoint.from_directory(str(folder)))
            # A Tune report returns once the scheduler has taken it in: this member can be copied now.
            ray.get(tune_hub.became_source.remote(name), timeout=RemoteHub.TIMEOUT_SECONDS)
            if spec.synchronous and summary["steps"] < spec.max_steps:
                _await_generation(tune_hub, name, summary["steps"])
        step = summary["steps"]


def _await_generation(tune_hub, name: str, step: int) -> None:
    """A synchronous tune: wait until the scheduler has compared generation `step` (every member's
    report of it). A member it replaces waits on until Tune stops it (and restarts it from its
    copy): it must not start another interval's workers meanwhile."""
    while not ray.get(tune_hub.generation_released.remote(step, name), timeout=RemoteHub.TIMEOUT_SECONDS):
        time.sleep(SOURCE_POLL_SECONDS)


def _await_source(tune_hub, name: str, result: dict) -> None:
    """A collapsed member that no healthy member could replace yet: report the collapse again
    each time another member becomes a source (gan_dist.tune.hub.SourceLedger), until the
    scheduler replaces it (and ends this trial), or return when no member can become one."""
    seen = 0
    while True:
        verdict, seen = ray.get(tune_hub.await_source.remote(name, seen), timeout=RemoteHub.TIMEOUT_SECONDS)
        if verdict == "alone":
            print(f"gan-dist tune: {name} collapsed and no other member can be copied: it trains on", flush=True)
            return
        if verdict == "retry":
            tune.report({**result, "repeat": 1, "reported_at": time.time()})
        else:
            time.sleep(SOURCE_POLL_SECONDS)


# The population ----------------------------------------------------------------------

def _trial_name(trial: Trial) -> str:
    return member_name(int(trial.config["member"]))


class PopulationScheduler(PopulationBasedTraining):
    """PBT (Ray's) over the members' reports, and two things of ours:
    - a member that reports `collapsed` is replaced at once by a copy of the healthiest member
      with a checkpoint (its state is given up, not compared at the next interval);
    - every replacement is written to exploits.jsonl and printed, with its reason, and the
      member keeps its identity (its number, its run directory) and counts its adoptions.
    Perturbed values stay within each mutation's range.

    A synchronous tune (spec.synchronous) is compared in generations instead of at each report:
    generation S closes when every member still training holds a checkpoint of step S or later
    in Tune (its own, reported with its result, or the copy it was given), while each waits at
    the hub (`_await_generation`). Its members that reported S are ranked together, the worst
    quantile copies the best, and the hub releases them. The scheduler never asks a member to
    save (each report carries its checkpoint): a member waiting at the hub could not answer."""

    def __init__(self, spec: TuneSpec):
        mutations = {m.key: (m.values if m.integer else tune.loguniform(m.low, m.high) if m.log
                             else tune.uniform(m.low, m.high)) for m in spec.mutations}
        down, up = spec.perturb_factors
        # (UP, DOWN): Ray's order, in which its default (1.2, 0.8) draws; a tune keeps its draws.
        super().__init__(time_attr="step", metric="score", mode="max", perturbation_interval=spec.perturb_every,
                         hyperparam_mutations=mutations, quantile_fraction=spec.quantile,
                         resample_probability=spec.resample_probability, perturbation_factors=(up, down),
                         log_config=False)
        self.spec = spec
        self.latest: dict[Trial, dict] = {}  # each member's last result
        self.reason, self.alarm = "interval", None  # of the exploit being made
        self.compared = 0  # a synchronous tune's last generation compared (its step)
        self._origins: dict[str, dict] = {}  # a held checkpoint's tune-origin.json, by its path (read once)
        self.explored: dict[str, str] = {}  # how the copy being made moved each value (explore_words)

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        # A new member starts from its drawn values (a restored one keeps its own).
        for key, value in self.spec.initial[int(trial.config["member"])].items():
            trial.config.setdefault(key, value)
            trial.evaluated_params[key] = trial.config[key]
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        self.latest[trial] = result
        if result.get("collapsed"):
            return self._replace_now(tune_controller, trial, result)
        if not self.spec.synchronous:
            return super().on_trial_result(tune_controller, trial, result)
        self._close_generations(tune_controller)  # its checkpoint comes after: mostly at a later call
        return TrialScheduler.NOOP if trial.status == Trial.PAUSED else TrialScheduler.CONTINUE

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        # Tune asks at every turn of its loop: a synchronous tune closes its generations here, once
        # the last member's checkpoint is in.
        if self.spec.synchronous:
            self._close_generations(tune_controller)
        return super().choose_trial_to_run(tune_controller)

    # A synchronous tune's generations.
    def _held_origin(self, trial: Trial) -> dict:
        """The member and step of the checkpoint Tune holds for `trial` (its own or its copy); {} if none."""
        checkpoint = trial.checkpoint
        if checkpoint is None:
            return {}
        if checkpoint.path not in self._origins:
            self._origins[checkpoint.path] = _origin(checkpoint)
        return self._origins[checkpoint.path]

    def _close_generations(self, tune_controller) -> None:
        training = [t for t in tune_controller.get_trials() if not t.is_finished()]
        while self.compared < self.spec.max_steps:
            step = min(self.compared + self.spec.perturb_every, self.spec.max_steps)
            if any(int(self._held_origin(t).get("step", 0)) < step for t in training):
                return
            replaced = self._compare(tune_controller, step, training)
            self.compared = step
            # By name: Tune keeps the scheduler as it was built (a resumed tune gets that copy), and
            # the hub is this run's.
            ray.get_actor(hub_name(self.spec)).release.remote(step, tuple(replaced))

    def _compare(self, tune_controller, step: int, training: list[Trial]) -> list[str]:
        """Rank the members that reported generation `step` (healthy, from their own checkpoint)
        and let the worst quantile copy the best, as Ray's PBT ranks (`generation_quantiles`). A
        member given a copy in this generation, or one resumed past it, is left out. The members
        given a copy now."""
        ranked = [t for t in training if self.latest.get(t, {}).get("step") == step
                  and not self.latest[t].get("collapsed")
                  and self._held_origin(t).get("member") == _trial_name(t)]
        for t in ranked:
            self._save_trial_state(self._trial_state[t], step, self.latest[t], t)
            self._trial_state[t].last_perturbation_time = step
            self._trial_state[t].last_checkpoint = t.checkpoint
        lower, upper = generation_quantiles(ranked, lambda t: self._trial_state[t].last_score,
                                            self._quantile_fraction)
        if step >= self.spec.max_steps:
            return []  # every member has spent its budget
        for t in lower:
            with _draws_of(f"{self.spec.seed}:{_trial_name(t)}:{step}:source"):
                source = random.choice(upper)
            self._exploit(tune_controller, t, source)
        return [_trial_name(t) for t in lower]

    def _checkpoint_or_exploit(self, trial: Trial, tune_controller, upper_quantile: list, lower_quantile: list) -> None:
        # Ray's PBT lets a member be copied only if it was in the upper quantile at its own last
        # report (it asks it to save then); a member that reported first, alone, never was. Every
        # member here reports a checkpoint with each interval's result, the one its score is of.
        for source in upper_quantile:
            state = self._trial_state[source]
            if source is not trial and state.last_checkpoint is None and source.checkpoint is not None:
                state.last_checkpoint = source.checkpoint
        # A member at its last step has spent its budget: Ray's PBT would still copy a better
        # member's checkpoint into it, from that member's (often earlier) step, and train it again
        # past the steps every member is given. It ends as it is; it stays a source for others.
        if int(self.latest.get(trial, {}).get("step", 0)) >= self.spec.max_steps:
            lower_quantile = [t for t in lower_quantile if t is not trial]
        super()._checkpoint_or_exploit(trial, tune_controller, upper_quantile, lower_quantile)

    def _replace_now(self, tune_controller, trial: Trial, result: dict) -> str:
        state = self._trial_state[trial]
        state.last_score, state.last_result = -math.inf, result  # never a source until replaced
        source = self._healthiest(trial)
        name, alarm = _trial_name(trial), {"kind": result["alarm_kind"], "step": int(result["alarm_step"])}
        if source is None:
            print(f"gan-dist tune: {name} collapsed ({alarm['kind']} at step {alarm['step']}) and no healthy member "
                  f"has a checkpoint yet: it waits for one", flush=True)
            return TrialScheduler.CONTINUE
        clone = self._trial_state[source]
        if clone.last_score is None:  # a synchronous tune scores a member when its generation closes
            self._save_trial_state(clone, int(self.latest[source]["step"]), self.latest[source], source)
        clone.last_checkpoint, clone.last_result = source.checkpoint, self.latest[source]
        self.reason, self.alarm = "collapse", alarm
        try:
            self._exploit(tune_controller, trial, source)
        finally:
            self.reason, self.alarm = "interval", None
        return TrialScheduler.NOOP

    def _healthiest(self, trial: Trial) -> Trial | None:
        """The best-scoring other member that is still training, healthy, with a checkpoint."""
        candidates = [t for t in self._trial_state if t is not trial and not t.is_finished()
                      and t.checkpoint is not None and t in self.latest
                      and not self.latest[t].get("collapsed") and math.isfinite(self.latest[t]["score"])]
        return max(candidates, key=lambda t: self.latest[t]["score"], default=None)

    def _get_new_config(self, trial: Trial, trial_to_clone: Trial) -> tuple[dict, dict]:
        copy = int(trial.config.get("exploit", 0)) + 1
        with _draws_of(f"{self.spec.seed}:{_trial_name(trial)}:{self.latest.get(trial, {}).get('step', -1)}:{copy}"):
            config, operations = super()._get_new_config(trial, trial_to_clone)
        config["member"] = trial.config["member"]  # the copy is still this member
        config["exploit"] = copy
        config["exploit_reason"] = self.reason
        self.explored = {}
        for m in self.spec.mutations:
            value = config[m.key]
            config[m.key] = m.clip(value)
            self.explored[m.key] = explore_words(operations.get(m.key, ""), clipped=config[m.key] != value)
        return config, operations

    def _exploit(self, tune_controller, trial: Trial, trial_to_clone: Trial) -> None:
        before = {m.key: trial.config[m.key] for m in self.spec.mutations}
        checkpoint = self._trial_state[trial_to_clone].last_checkpoint
        super()._exploit(tune_controller, trial, trial_to_clone)
        origin = _origin(checkpoint)
        record = {"time": time.time(), "member": _trial_name(trial), "source": _trial_name(trial_to_clone),
                  "reason": self.reason, "alarm": self.alarm,
                  "step": int(self.latest.get(trial, {}).get("step", -1)),
                  "source_step": origin.get("step", int(self._trial_state[trial_to_clone].last_result["step"])),
                  "exploit": int(trial.config["exploit"]), "from": before,
                  "to": {m.key: trial.config[m.key] for m in self.spec.mutations}, "explore": self.explored}
        records.append(self.spec.tune_dir / records.EXPLOITS_FILE, record)
        why = "interval" if self.reason == "interval" else \
            f"collapse: {self.alarm['kind']} at step {self.alarm['step']}"
        print(f"exploit ({why}): {record['member']} <- {record['source']}'s step {record['source_step']}; "
              + ", ".join(f"{k} {_fmt(before[k])} -> {_fmt(record['to'][k])} ({self.explored[k]})" for k in before),
              flush=True)


def explore_words(operation: str, clipped: bool = False) -> str:
    """How Ray's PBT moved a copied value (its `_explore` operation), in the records' words:
    "x0.8", "drawn again", "one up", "one down"; ", kept in range" where the range cut it."""
    operation = operation.strip()
    if operation.startswith("*"):
        words = f"x{float(operation[1:]):g}"
    elif operation == "resample":
        words = "drawn again"
    elif operation.startswith("shift"):
        words = ("one down" if "left" in operation else "one up") + (", at the end of its range" if "noop" in operation
                                                                    else "")
    else:
        words = operation or "kept"
    return words + (", kept in range" if clipped else "")


@contextlib.contextmanager
def _draws_of(key: str):
    """Inside, Python's and numpy's global generators (what Ray's PBT perturbs and resamples
    with) are seeded from `key`; after, they are as they were. A copy's values then follow from
    the tune's seed, the member, the step and the copy's number, not from when it was made."""
    python, numpy = random.getstate(), np.random.get_state()
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)


def generation_quantiles(members: list, score, fraction: float) -> tuple[list, list]:
    """(worst, best) of `members` by `score`, each a `fraction` of them (`quantile_size`), as
    Ray's PBT cuts its quantiles; both empty with fewer than 2 members."""
    ranked = sorted(members, key=score)
    n = quantile_size(len(ranked), fraction)
    return (ranked[:n], ranked[-n:]) if n else ([], [])


def _origin(checkpoint) -> dict:
    """The member and step of a checkpoint handed to Tune (its tune-origin.json)."""
    try:
        return json.loads((Path(checkpoint.path) / ORIGIN_FILE).read_text())
    except (AttributeError, OSError, ValueError):
        return {}


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


class ProgressPrinter(tune.Callback):
    """On the command's console, a line per member interval; results.jsonl on disk."""

    def __init__(self, spec: TuneSpec):
        self.spec = spec

    def on_trial_result(self, iteration: int, trials: list, trial: Trial, result: dict, **info) -> None:
        if result.get("repeat"):
            return  # a collapsed member's report, made again once another member could be copied
        values = {m.key: result[f"hp:{m.key}"] for m in self.spec.mutations}
        record = {"time": result["reported_at"], "member": _trial_name(trial), "step": int(result["step"]),
                  "start_step": int(result["start_step"]), "metric": result["metric"], "score": result["score"],
                  "hyperparams": values, "collapsed": bool(result["collapsed"]),
                  "alarm": {"kind": result["alarm_kind"], "step": result["alarm_step"]} if result["collapsed"] else None,
                  "exploit": int(result["exploit"])}
        records.append(self.spec.tune_dir / records.RESULTS_FILE, record)
        note = f"  COLLAPSED ({result['alarm_kind']} at step {result['alarm_step']})" if result["collapsed"] else ""
        print(f"{record['member']}  step {record['step']}/{self.spec.max_steps}  {self.spec.metric} "
              f"{_fmt(float(result['metric']))}  " + " ".join(f"{k} {_fmt(v)}" for k, v in values.items()) + note,
              flush=True)


# The command ---------------------------------------------------------------------------

def run_population(spec: TuneSpec, resumed: bool, on_start=lambda: None) -> tuple[str, list[str]]:
    """Train the population on the Ray the tune runs on (a local one unless spec.address); its
    status (completed, stopped or failed) and the members that failed. `on_start` is called
    once Ray is up and the cluster can run the tune, before anything starts on it (a
    ConfigError before then: the cluster cannot run the tune as asked)."""
    cfg = spec.base()
    if spec.address:
        session = RaySession(spec.address, {})
    else:
        # Every member trains at once: the local Ray counts a CPU per worker of each, even on a
        # machine with fewer cores (they share them), so PBT never has to time-share members.
        resources = local_resources()
        session = RaySession("", {**resources, "CPU": max(resources["CPU"], math.ceil(population_cpus(spec, cfg)))})
    try:
        if spec.synchronous and spec.address:
            _check_room_for_everyone(spec, cfg)
        on_start()
        here = ray.get_runtime_context().get_node_id()
        hub = ray.remote(TuneHub).options(
            name=hub_name(spec), num_cpus=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote(
                True, tuple(member_name(i) for i in range(spec.population)))
        host = metrics_host(cfg) if not spec.address else (cfg.metrics.host or "0.0.0.0")
        target = ray.get(hub.serve_metrics.remote(host, cfg.metrics.port, str(spec.tune_dir),
                                                  {"tune": spec.name, "recipe": spec.recipe}))
        if target:
            print(f"metrics           http://{target}/metrics (every member, label member=...)", flush=True)
        return _fit(spec, hub, session.keep_pg_cleaner, resumed)
    finally:
        session.close()


def hub_name(spec: TuneSpec) -> str:
    """The population's hub actor's name: one per tune directory on a cluster."""
    return "gan-dist-tune-" + hashlib.sha256(str(spec.tune_dir).encode()).hexdigest()[:16]


def population_cpus(spec: TuneSpec, cfg) -> float:
    """The CPUs Ray counts for every member training at once: its workers' and its trial's."""
    return spec.population * (spec.workers_per_member * cfg.run.cpus_per_worker + TRIAL_CPUS)


def _check_room_for_everyone(spec: TuneSpec, cfg) -> None:
    """A synchronous tune's members wait for each other: all must train at once on the cluster."""
    have = ray.cluster_resources()
    need = {"CPU": population_cpus(spec, cfg),
            "GPU": spec.population * spec.workers_per_member * cfg.run.gpus_per_worker}
    for kind, amount in need.items():
        if amount > have.get(kind, 0):
            raise ConfigError(f"--synchronous: every member waits for the others, so all {spec.population} must "
                              f"train at once, which needs {amount:g} {kind}s; the cluster at {spec.address} has "
                              f"{have.get(kind, 0):g}; nothing was started")


def _fit(spec: TuneSpec, hub, keep_pg_cleaner: bool, resumed: bool) -> tuple[str, list[str]]:
    # Our results.jsonl and the members' run directories are the record: Tune's per-trial CSV and
    # TensorBoard loggers would only repeat them. Its JSON one stays: Tune reads it back for the
    # ResultGrid `fit` returns.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    trainable = tune.with_resources(tune.with_parameters(member_trial, spec=spec, tune_hub=hub,
                                                       keep_pg_cleaner=keep_pg_cleaner),
                                   {"cpu": TRIAL_CPUS})
    experiment = spec.tune_dir / TUNE_EXPERIMENT
    if resumed and tune.Tuner.can_restore(str(experiment)):
        tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"member": tune.grid_search(list(range(spec.population))), "exploit": 0,
                         "exploit_reason": ""},
            tune_config=tune.TuneConfig(scheduler=PopulationScheduler(spec), num_samples=1, reuse_actors=False,
                                        trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(name=TUNE_EXPERIMENT, storage_path=str(spec.tune_dir), verbose=0,
                                      callbacks=[ProgressPrinter(spec), JsonLoggerCallback()],
                                      failure_config=tune.FailureConfig(max_failures=TRIAL_RETRIES),
                                      # Tune keeps every copy a member reports (one per interval): with a
                                      # limit, PBT's second save of the same checkpoint makes Ray 2.60
                                      # delete a folder twice and log an error.
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=None)))
    try:
        with _sigterm_stops_tune():
            grid = tuner.fit()
    except KeyboardInterrupt:
        return "stopped", []
    for r in grid:
        if r.error is not None:
            print(f"gan-dist tune: {_trial_name_of(r)} failed: {str(r.error).strip().splitlines()[0]}",
                  file=sys.stderr)
    return population_status(list(grid), spec.max_steps)


def population_status(results: list, max_steps: int) -> tuple[str, list[str]]:
    """The tune's status from its members' Tune results: failed (with the members whose trial
    failed), stopped (a member's last report is short of `max_steps`, or it made none: Tune
    answers Ctrl-C, and `_sigterm_stops_tune` a SIGTERM, by ending the trials and returning as
    if done), or completed."""
    failed = [_trial_name_of(r) for r in results if r.error is not None]
    if failed:
        return "failed", failed
    if any((r.metrics or {}).get("step", -1) < max_steps for r in results):
        return "stopped", []
    return "completed", []


@contextlib.contextmanager
def _sigterm_stops_tune():
    """While inside, a SIGTERM to the tune's driver (`kill`, a deleted pod, `ray job stop`)
    stops the tune as Ctrl-C does, through Tune's own handler (Tune answers SIGUSR1 as it does
    SIGINT, while it runs): the members keep their last reported checkpoints, and the same
    command resumes the tune. Without it Ray's handler exits at once. A second SIGTERM, or one
    before Tune's handler is in place, interrupts at once. Only in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    asked = threading.Event()

    def on_sigterm(signum, frame) -> None:
        tune_stop = signal.getsignal(signal.SIGUSR1)
        if asked.is_set() or not callable(tune_stop):
            raise KeyboardInterrupt("SIGTERM")
        asked.set()
        print("gan-dist: SIGTERM: the tune stops; its members keep their last checkpoints (the same command "
              "resumes it; another SIGTERM stops at once)", file=sys.stderr, flush=True)
        tune_stop(signal.SIGUSR1, frame)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _trial_name_of(result) -> str:
    return member_name(int(result.config["member"]))
