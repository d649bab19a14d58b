"""gan-dist tune without Ray: the spec (mutations, the metric, the members' configs, resume),
the winning schedule from the records, the population's one metrics target, and the dry run."""

from __future__ import annotations

import math
import random

import pytest
from prometheus_client import generate_latest

from gan_dist.cli import main
from gan_dist.config import ConfigError
from gan_dist.monitor.metrics import RunMetrics
from gan_dist.tune import records
from gan_dist.tune.hub import SourceLedger
from gan_dist.tune.spec import Mutation, TuneSpec, build_spec, member_name, metric_value, parse_mutation, score_of

pytestmark = pytest.mark.unit


def ring8_spec(tmp_path, population: int = 4, mutate=("optim.lr=1e-4:1e-2:log", "schedule.n_critic=1:3"),
               **kwargs) -> TuneSpec:
    args = dict(recipe="ring8", overrides=["train.log_every=10"], population=population, mutate=list(mutate),
                metric=None, perturb_every=None, workers_per_member=1, storage=str(tmp_path), name="t",
                address=None, max_steps=100)
    return build_spec(**{**args, **kwargs})


def test_a_spec_draws_each_member_within_its_ranges_the_same_way_every_time(tmp_path, cache_dir):
    spec = ring8_spec(tmp_path)
    assert spec.metric == "hq_coverage" and spec.mode == "max"  # the 2-D mixtures' quality metric
    assert spec.perturb_every == 10  # about a tenth of the run, on a log step
    assert [m.key for m in spec.mutations] == ["optim.lr", "schedule.n_critic"]
    for values in spec.initial:
        assert 1e-4 <= values["optim.lr"] <= 1e-2
        assert values["schedule.n_critic"] in (1, 2, 3)
    assert len({v["optim.lr"] for v in spec.initial}) == 4
    assert ring8_spec(tmp_path).initial == spec.initial  # seeded by the recipe's seed

    cfg = spec.member_config(2, spec.initial[2])
    assert cfg.optim.lr_g == cfg.optim.lr_d == spec.initial[2]["optim.lr"]
    assert cfg.schedule.n_critic == spec.initial[2]["schedule.n_critic"]
    assert cfg.seed == spec.seed + 2 and cfg.run.name == member_name(2) == "member-2"
    assert cfg.run.storage == str(tmp_path / "t")
    # The detectors that mean a member is lost hand it to the population; a checkpoint lands on
    # every perturbation interval (what PBT copies).
    assert (cfg.monitor.collapse, cfg.monitor.divergence, cfg.monitor.nonfinite) == ("exploit",) * 3
    assert spec.perturb_every % cfg.checkpoint.every == 0


def test_without_mutate_a_tune_moves_the_learning_rates_tenfold_either_way(tmp_path, cache_dir):
    spec = ring8_spec(tmp_path, mutate=())
    (lr,) = spec.mutations
    assert (lr.key, lr.low, lr.high, lr.log) == ("optim.lr", pytest.approx(6e-5), pytest.approx(6e-3), True)
    split = ring8_spec(tmp_path, mutate=(), overrides=["train.log_every=10", "optim.lr_d=1e-3"])
    assert [m.key for m in split.mutations] == ["optim.lr_g", "optim.lr_d"]


def test_the_metric_follows_the_recipe(tmp_path, cache_dir):
    assert ring8_spec(tmp_path, metric="mode_kl").mode == "min"
    digits = dict(recipe="dcgan-digits", overrides=["train.log_every=10"], mutate=[])
    assert ring8_spec(tmp_path, **digits).metric == "fid_domain"  # labelled images without periodic evals
    with_evals = ring8_spec(tmp_path, **{**digits, "overrides": ["train.log_every=10", "eval.every_steps=10"]})
    assert with_evals.metric == "fid"
    with pytest.raises(ConfigError, match="--metric fid: recipe dcgan-digits cannot compute it .*eval.every_steps"):
        ring8_spec(tmp_path, **{**digits, "overrides": ["train.log_every=10", "eval.every_steps=30"]}, metric="fid",
                   perturb_every=20)


def test_a_range_whose_end_is_no_valid_config_is_refused_before_the_tune_starts(tmp_path, cache_dir):
    with pytest.raises(ConfigError, match=r"--mutate schedule.n_critic=0:2: at 0, schedule.n_critic"):
        ring8_spec(tmp_path, mutate=["schedule.n_critic=0:2"])


def test_perturbed_values_stay_in_range_and_integers_stay_integers():
    lr = parse_mutation("optim.lr=1e-4:1e-2:log")
    assert lr.clip(1.2e-2) == 1e-2 and lr.clip(1e-5) == 1e-4 and lr.clip(1e-3) == 1e-3
    n_critic = parse_mutation("schedule.n_critic=1:5")
    assert n_critic.integer and n_critic.values == [1, 2, 3, 4, 5]
    assert n_critic.clip(2.4) == 2 and isinstance(n_critic.clip(2.6), int) and n_critic.clip(7.0) == 5
    rng = random.Random(0)
    draws = [lr.draw(rng) for _ in range(2000)]
    # Log-uniform: about half below the geometric middle, 1e-3.
    assert 0.45 < sum(d < 1e-3 for d in draws) / len(draws) < 0.55
    assert Mutation("optim.lr", 1e-4, 1e-2, True).text == "optim.lr=0.0001:0.01:log"


def test_a_tune_resumes_only_as_it_started(tmp_path, cache_dir):
    spec = ring8_spec(tmp_path)
    saved = TuneSpec.from_record(spec.to_record())
    ring8_spec(tmp_path, address="ray://elsewhere:10001").check_resume(saved)  # where it runs may change
    with pytest.raises(ConfigError, match="tune t was started with population=4, not 3"):
        ring8_spec(tmp_path, population=3).check_resume(saved)
    with pytest.raises(ConfigError, match="config.optim.beta1"):
        ring8_spec(tmp_path, overrides=["train.log_every=10", "optim.beta1=0.9"]).check_resume(saved)


def test_the_ranking_metric_is_read_from_a_members_summary_and_a_diverged_member_ranks_last():
    summary = {"eval": {"high_quality_fraction": 0.8, "mode_kl": 0.1}, "final": {"mode_coverage_ratio": 0.5}}
    assert metric_value(summary, "hq_coverage") == pytest.approx(0.4)
    assert metric_value(summary, "mode_kl") == 0.1 and metric_value(summary, "fid") is None
    assert score_of(0.1, "min") > score_of(0.2, "min") and score_of(0.2, "max") > score_of(0.1, "max")
    assert score_of(None, "max") == score_of(math.nan, "min") == -math.inf


def test_the_winning_schedule_follows_the_copies_back():
    """member-1 trains 0-20 at lr 1, copies member-0's step 20 (trained at lr 2) at its step 20 and
    trains on at lr 3; member-0 had copied member-2's step 10 (lr 5) before."""
    results = [
        {"member": "member-2", "start_step": 0, "step": 10, "time": 1, "hyperparams": {"lr": 5}},
        {"member": "member-0", "start_step": 0, "step": 10, "time": 2, "hyperparams": {"lr": 9}},
        {"member": "member-0", "start_step": 10, "step": 20, "time": 4, "hyperparams": {"lr": 2}},
        {"member": "member-1", "start_step": 0, "step": 20, "time": 5, "hyperparams": {"lr": 1}},
        {"member": "member-1", "start_step": 20, "step": 30, "time": 7, "hyperparams": {"lr": 3}},
    ]
    exploits = [{"member": "member-0", "source": "member-2", "source_step": 10, "time": 3},
                {"member": "member-1", "source": "member-0", "source_step": 20, "time": 6}]
    schedule = [(s.start, s.end, s.member, s.hyperparams["lr"]) for s in records.lineage("member-1", results, exploits)]
    assert schedule == [(0, 10, "member-2", 5), (10, 20, "member-0", 2), (20, 30, "member-1", 3)]


def test_one_target_carries_every_member_under_its_label():
    metrics = RunMetrics(members=True)
    metrics.observe({"step": 40, "loss_d": 1.25}, "member-0")
    metrics.observe({"step": 30, "loss_d": 0.5}, "member-1")
    metrics.exploited("member-1", "collapse")
    metrics.scored("member-0", 0.75)
    text = generate_latest(metrics.registry).decode()
    assert 'gan_train_step{member="member-0"} 40.0' in text
    assert 'gan_train_step{member="member-1"} 30.0' in text
    assert 'gan_tune_exploits_total{member="member-1",reason="collapse"} 1.0' in text
    assert 'gan_tune_exploits_total{member="member-0",reason="interval"} 0.0' in text  # exists from the start
    assert 'gan_tune_score{member="member-0"} 0.75' in text
    assert "gan_tune" not in generate_latest(RunMetrics().registry).decode()  # a plain run's target


def test_the_dry_run_prints_the_plan_and_writes_nothing(tmp_path, cache_dir, capsys):
    argv = ["tune", "ring8", "--population", "3", "--mutate", "optim.lr=1e-4:1e-2:log", "--max-steps", "100",
            "--set", "train.log_every=10", "--perturb-every", "20", "--storage", str(tmp_path), "--name", "t",
            "--dry-run"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"tune directory    new tune {tmp_path / 't'}" in out
    assert "population        3 members of ring8 (2-D mixtures), 1 worker(s) each, 100 steps" in out
    assert "perturbation      every 20 steps" in out and "ranked by         hq_coverage (higher is better)" in out
    assert out.count("member-") >= 3 and "dry run:" in out
    assert list(tmp_path.iterdir()) == []


def test_a_collapsed_member_waits_for_a_source_and_retries_once_per_new_one():
    ledger = SourceLedger(("member-0", "member-1", "member-2"))
    for m in ("member-0", "member-1"):
        ledger.started(m)
    # member-1 collapses before anyone reported a checkpoint; member-0 trains, member-2 is yet to start.
    verdict, seen = ledger.verdict("member-1", 0)
    assert verdict == "wait"
    assert ledger.verdict("member-1", seen) == ("wait", seen)
    ledger.add("member-0")
    verdict, seen = ledger.verdict("member-1", seen)
    assert verdict == "retry"
    # The scheduler did not replace it after all (the source ended meanwhile): no retry until a new one.
    assert ledger.verdict("member-1", seen)[0] == "wait"  # member-2 may still come
    ledger.add("member-0")
    assert ledger.verdict("member-1", seen)[0] == "retry"


def test_a_collapsed_member_trains_on_when_no_member_can_become_a_source():
    ledger = SourceLedger(("member-0", "member-1"))
    ledger.started("member-0")
    ledger.started("member-1")
    assert ledger.verdict("member-1", 0)[0] == "wait"
    assert ledger.verdict("member-0", 0)[0] == "alone"  # both collapsed
    # A source that collapses itself stops being one.
    ledger = SourceLedger(("member-0", "member-1"))
    ledger.started("member-0")
    ledger.started("member-1")
    ledger.add("member-0")
    ledger.verdict("member-0", 0)
    assert ledger.verdict("member-1", 0)[0] == "alone"
    # An ended member is no source to wait for; restarted (replaced), it is again.
    ledger = SourceLedger(("member-0", "member-1"))
    ledger.started("member-1")
    ledger.ended("member-0")
    assert ledger.verdict("member-1", 0)[0] == "alone"
    ledger.started("member-0")
    assert ledger.verdict("member-1", 0)[0] == "wait"


def test_the_pbt_benchmark_measures_each_replacement_from_the_records(tmp_path):
    from gan_dist.bench.pbt import collapse_delays

    records.append(tmp_path / records.RESULTS_FILE, {"time": 100.0, "member": "member-1", "step": 10, "start_step": 0,
                                                      "collapsed": True})
    records.append(tmp_path / records.RESULTS_FILE, {"time": 101.0, "member": "member-0", "step": 20, "start_step": 0,
                                                      "collapsed": False})
    records.append(tmp_path / records.EXPLOITS_FILE, {"time": 101.5, "member": "member-0", "source": "member-1",
                                                       "reason": "interval", "step": 20, "source_step": 20})
    records.append(tmp_path / records.EXPLOITS_FILE, {"time": 102.5, "member": "member-1", "source": "member-0",
                                                       "reason": "collapse", "alarm": {"kind": "divergence", "step": 10},
                                                       "step": 10, "source_step": 20})
    [delay] = collapse_delays(tmp_path)
    assert delay["member"] == "member-1" and delay["steps_after_alarm"] == 0 and delay["source_step"] == 20
    assert delay["waited_seconds"] == pytest.approx(2.5)


def test_the_pbt_benchmark_judges_images_by_the_best_fid_against_the_best_plain_run():
    from gan_dist.bench.pbt import verdict

    def run(fid):
        return {"eval": {"inception_n": 2000, "fid2k": fid, "kid2k": 0.01, "precision2k": 0.5, "recall2k": 0.4}}

    plain = [run(40.0), run(float("nan")), run(25.0)]  # a diverged plain run is no baseline
    met = verdict("dcgan-fashion", run(22.0), plain)
    assert met["metric"] == "fid2k" and met["plain_best"] == 25.0 and met["ratio"] == pytest.approx(0.88)
    assert met["met"]
    assert not verdict("dcgan-fashion", run(23.0), plain)["met"]  # 0.92 of the best plain run
    grid = {"modes_covered": 25, "num_modes": 25, "high_quality_fraction": 0.93, "mode_kl": 0.01}
    points = verdict("grid25", {"eval": grid}, [{"eval": {**grid, "modes_covered": 20}}, {"eval": grid}])
    assert points["met"] and points["plain_passing"] == 1
    assert not verdict("grid25", {"eval": {**grid, "mode_kl": 0.2}}, [])["met"]


def test_a_member_at_its_last_step_is_not_copied_into_and_trained_again(tmp_path, cache_dir, monkeypatch):
    from ray.tune.schedulers.pbt import _PBTTrialState

    from gan_dist.integrations.ray_tune import PopulationScheduler

    class Member:  # what the scheduler reads of a Ray Tune trial
        def __init__(self, name):
            self.experiment_tag, self.checkpoint, self.config = name, f"{name}-checkpoint", {"member": name[-1]}

    spec = ring8_spec(tmp_path)
    scheduler = PopulationScheduler(spec)
    worse, better = Member("member-0"), Member("member-1")
    for member in (worse, better):
        scheduler._trial_state[member] = _PBTTrialState(member)
    copies = []
    monkeypatch.setattr(scheduler, "_exploit", lambda controller, trial, source: copies.append((trial, source)))
    scheduler.latest = {worse: {"step": spec.max_steps - spec.perturb_every}, better: {"step": spec.max_steps}}
    scheduler._checkpoint_or_exploit(worse, None, [better], [worse])
    assert copies == [(worse, better)]  # mid-run, the worse member copies the better one
    scheduler.latest[worse] = {"step": spec.max_steps}
    scheduler._checkpoint_or_exploit(worse, None, [better], [worse])
    assert copies == [(worse, better)]  # at its last step it ends as it is


@pytest.mark.parametrize("size", range(1, 9))
@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_a_generation_is_cut_into_quantiles_as_rays_pbt_cuts_them(size, fraction):
    from ray.tune.schedulers import PopulationBasedTraining
    from ray.tune.schedulers.pbt import _PBTTrialState

    from gan_dist.integrations.ray_tune import generation_quantiles

    class Member:
        def __init__(self, i):
            self.experiment_tag, self.score = f"member-{i}", [3.0, -1.0, 7.0, 0.5, 2.0, 9.0, -4.0, 1.0][i]

        def is_finished(self):
            return False

    members = [Member(i) for i in range(size)]
    ray_pbt = PopulationBasedTraining(time_attr="step", metric="score", mode="max", perturbation_interval=10,
                                      hyperparam_mutations={"x": [1, 2]}, quantile_fraction=fraction)
    for m in members:
        ray_pbt._trial_state[m] = _PBTTrialState(m)
        ray_pbt._trial_state[m].last_score = m.score
    assert generation_quantiles(members, lambda m: m.score, fraction) == ray_pbt._quantiles()


def test_a_synchronous_tune_is_recorded_and_resumes_only_as_one(tmp_path, cache_dir):
    spec = ring8_spec(tmp_path, synchronous=True)
    saved = TuneSpec.from_record(spec.to_record())
    assert saved.synchronous is True
    with pytest.raises(ConfigError, match="tune t was started with synchronous=True, not False"):
        ring8_spec(tmp_path).check_resume(saved)
    record = spec.to_record()
    del record["synchronous"]  # a tune.yaml written before the option: asynchronous
    assert TuneSpec.from_record(record).synchronous is False


@pytest.mark.parametrize("text", ["0.5:2", "0.8:1.2", "0.9:1.05"])
def test_a_copys_values_move_by_the_tunes_own_factors_or_are_drawn_again(tmp_path, cache_dir, text):
    from gan_dist.integrations.ray_tune import PopulationScheduler

    class Member:
        def __init__(self, i):
            self.experiment_tag = f"member-{i}"
            self.config = {"member": i, "exploit": 0, "optim.lr": 1e-3, "schedule.n_critic": 2}

    spec = ring8_spec(tmp_path, perturb_factors=text, resample_probability=0.0)
    down, up = (float(x) for x in text.split(":"))
    scheduler = PopulationScheduler(spec)
    worse, better = Member(0), Member(1)
    moves = set()
    for step in range(0, 400, 10):
        scheduler.latest = {worse: {"step": step}}
        config, _ = scheduler._get_new_config(worse, better)
        moves.add(round(config["optim.lr"] / 1e-3, 6))
        assert config["schedule.n_critic"] in (1, 3)  # an integer key moves one value
        # The record says how: the factor, and one down or up.
        assert scheduler.explored["optim.lr"] == f"x{round(config['optim.lr'] / 1e-3, 6):g}"
        assert scheduler.explored["schedule.n_critic"] == ("one down" if config["schedule.n_critic"] == 1 else "one up")
    assert moves == {down, up}
    # Drawn again every time: anywhere in the range, not one of the two factors.
    scheduler = PopulationScheduler(ring8_spec(tmp_path, perturb_factors=text, resample_probability=1.0))
    drawn = set()
    for step in range(0, 200, 10):
        scheduler.latest = {worse: {"step": step}}
        drawn.add(scheduler._get_new_config(worse, better)[0]["optim.lr"])
    assert len(drawn) == 20 and all(1e-4 <= v <= 1e-2 for v in drawn)
    assert scheduler.explored == {"optim.lr": "drawn again", "schedule.n_critic": "drawn again"}
    assert not {round(v / 1e-3, 6) for v in drawn} & {down, up}


def test_how_a_copy_moved_each_value_is_said_in_words():
    from gan_dist.integrations.ray_tune import explore_words

    assert explore_words("* 0.8") == "x0.8" and explore_words("* 2.0") == "x2"
    assert explore_words("resample") == "drawn again"
    assert explore_words("shift left") == "one down" and explore_words("shift right") == "one up"
    assert explore_words("shift right (noop)") == "one up, at the end of its range"
    assert explore_words("* 1.2", clipped=True) == "x1.2, kept in range"


def test_the_explore_and_exploit_settings_are_recorded_resumed_and_shown_in_the_plan(tmp_path, cache_dir):
    from gan_dist.tune.cli import plan_lines

    spec = ring8_spec(tmp_path, perturb_factors="0.5:2", resample_probability=0.4, quantile=0.5)
    saved = TuneSpec.from_record(spec.to_record())
    assert (saved.perturb_factors, saved.resample_probability, saved.quantile) == ([0.5, 2.0], 0.4, 0.5)
    ring8_spec(tmp_path, perturb_factors="0.5:2.0", resample_probability=0.4, quantile=0.5).check_resume(saved)
    with pytest.raises(ConfigError, match=r"tune t was started with perturb_factors.*"):
        ring8_spec(tmp_path, resample_probability=0.4, quantile=0.5).check_resume(saved)
    with pytest.raises(ConfigError, match="tune t was started with quantile=0.5, not 0.25"):
        ring8_spec(tmp_path, perturb_factors="0.5:2", resample_probability=0.4).check_resume(saved)
    record = ring8_spec(tmp_path).to_record()
    for key in ("perturb_factors", "resample_probability", "quantile"):
        del record[key]  # a tune.yaml written before the options: Ray's defaults
    old = TuneSpec.from_record(record)
    assert (old.perturb_factors, old.resample_probability, old.quantile) == ([0.8, 1.2], 0.25, 0.25)
    ring8_spec(tmp_path).check_resume(old)

    plan = "\n".join(plan_lines(spec, resumed=False))
    assert "the worst 2 copy the best 2 (--quantile 0.5)" in plan  # 4 members
    assert "x0.5 or x2" in plan and "probability 0.4" in plan
    assert "the worst 1 copies the best 1" in "\n".join(plan_lines(ring8_spec(tmp_path), resumed=False))


def test_the_hub_releases_a_generation_and_every_one_before_it():
    from gan_dist.tune.hub import TuneHub

    hub = TuneHub(monitoring=False)
    assert not hub.generation_released(20)
    hub.release(40)
    assert hub.generation_released(20) and hub.generation_released(40) and not hub.generation_released(60)
    hub.release(20)  # a late call never takes a generation back
    assert hub.generation_released(40)
    # A member replaced in a generation waits on: Tune is stopping its trial.
    hub.release(60, replaced=("member-1",))
    assert hub.generation_released(60, "member-0") and not hub.generation_released(60, "member-1")
    assert hub.generation_released(40, "member-1")


def test_a_synchronous_tune_refuses_a_cluster_that_cannot_train_every_member_at_once(tmp_path, cache_dir,
                                                                                   monkeypatch):
    import ray

    from gan_dist.integrations.ray_tune import _check_room_for_everyone

    spec = ring8_spec(tmp_path, synchronous=True, address="ray://head:10001")  # 4 members of 1 worker
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 3.0})
    with pytest.raises(ConfigError, match=r"all 4 must train at once, which needs 4\.04 CPUs; the cluster at "
                                          r"ray://head:10001 has 3"):
        _check_room_for_everyone(spec, spec.base())
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0})
    _check_room_for_everyone(spec, spec.base())


def test_a_copys_perturbation_follows_from_the_seed_the_member_the_step_and_the_copy(tmp_path, cache_dir):
    import random

    import numpy as np

    from gan_dist.integrations.ray_tune import PopulationScheduler

    class Member:
        def __init__(self, i, lr):
            self.experiment_tag = f"member-{i}"
            self.config = {"member": i, "exploit": 0, "optim.lr": lr, "schedule.n_critic": 2}

    spec = ring8_spec(tmp_path)
    scheduler = PopulationScheduler(spec)
    worse, better = Member(0, 1e-3), Member(1, 5e-3)
    scheduler.latest = {worse: {"step": 20}}
    drawn = set()
    for outside in range(20):  # whatever state the global generators are in
        random.seed(outside)
        np.random.seed(outside)
        before = random.random(), np.random.random()
        random.seed(outside)
        np.random.seed(outside)
        config, _ = scheduler._get_new_config(worse, better)
        drawn.add((config["optim.lr"], config["schedule.n_critic"]))
        assert (random.random(), np.random.random()) == before  # the global streams are left as they were
    assert len(drawn) == 1
    values = set()
    for step in range(0, 400, 20):
        scheduler.latest[worse] = {"step": step}
        config, _ = scheduler._get_new_config(worse, better)
        values.add(config["optim.lr"])
    assert len(values) > 3  # another step, another draw
