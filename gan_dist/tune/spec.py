"""What a `gan-dist tune` runs, resolved and checked before anything starts: the population,
the hyper-parameters it mutates and their ranges, the metric that ranks the members, the
perturbation interval, and each member's config.

Every bad input is a ConfigError naming it (the CLI prints one line, exit 2), raised before
Ray starts or a file is written.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from gan_dist.config import Config, ConfigError, check_run_name, flatten, resolve
from gan_dist.data.sources import resolve_source
from gan_dist.models import model_task

# The hyper-parameters a member may change when it copies another's checkpoint: each is read
# when a run (re)starts, so the copy trains on with the new value from the step it was made
# (learning rates are set at every step; the penalties, n_critic and the EMA half-life are part
# of the step's context). Sizes, losses and optimizer betas are not: they are in the state.
MUTABLE: dict[str, str] = {
    "optim.lr": "both learning rates, lr_g = lr_d (a key of gan-dist tune's own)",
    "optim.lr_g": "G's learning rate",
    "optim.lr_d": "D's learning rate",
    "loss.gp_weight": "WGAN-GP's lambda",
    "loss.r1_gamma": "R1's gamma (LOW > 0: lazy R1's optimizer correction is set when the optimizers are built)",
    "loss.class_weight": "the auxiliary class loss's weight (conditional models)",
    "loss.adversarial_weight": "the adversarial term's weight in G's loss",
    "loss.content_weight": "the content loss's weight (super-resolution)",
    "schedule.n_critic": "D steps per G step (an integer: perturbed one up or down)",
    "schedule.ema_halflife_steps": "G_ema's half-life in G steps",
}
# The integer keys among them: LOW..HIGH are the values, a perturbation moves one step.
INTEGER_KEYS = ("schedule.n_critic",)

# What a tune sets in every member before the user's --set: the detectors that mean a member
# is lost hand it to the population, which replaces it at once.
TUNE_SETTINGS = ("monitor.collapse=exploit", "monitor.divergence=exploit", "monitor.nonfinite=exploit")

# The population ranks its members by these (a member's summary.json: `eval` of G_ema at the end
# of each interval, `final` its last history row). `needs`: the data (and evals) they exist for.
POINTS, LABELLED, INCEPTION, SUPER_RESOLUTION = "2-D mixtures", "labelled images", "periodic Inception evals", \
    "super-resolution"


@dataclass(frozen=True)
class RankingMetric:
    name: str
    mode: str  # max | min: which way is better
    needs: str
    doc: str


RANKING = {m.name: m for m in (
    RankingMetric("hq_coverage", "max", POINTS, "the eval's high_quality_fraction (G_ema) times the last history "
                  "row's mode_coverage_ratio (modes with a tenth of their fair share)"),
    RankingMetric("high_quality_fraction", "max", POINTS, "the eval's fraction of samples within 3 std of a mode"),
    RankingMetric("modes_covered", "max", POINTS, "the eval's modes with a high-quality sample"),
    RankingMetric("mode_kl", "min", POINTS, "the eval's KL of the mode histogram against uniform"),
    RankingMetric("mode_coverage_ratio", "max", f"{POINTS} or {LABELLED}", "the last history row's coverage"),
    RankingMetric("fid", "min", INCEPTION, "Inception FID of the periodic eval at the interval's last step"),
    RankingMetric("kid", "min", INCEPTION, "Inception KID of the periodic eval"),
    RankingMetric("precision", "max", INCEPTION, "Inception precision of the periodic eval"),
    RankingMetric("recall", "max", INCEPTION, "Inception recall of the periodic eval"),
    RankingMetric("fid_domain", "min", LABELLED, "the eval's FID on the domain classifier's features"),
    RankingMetric("kid_domain", "min", LABELLED, "the eval's KID on the domain classifier's features"),
    RankingMetric("class_coverage", "max", LABELLED, "the eval's class coverage"),
    RankingMetric("class_kl", "min", LABELLED, "the eval's KL of the class histogram against the data's"),
    RankingMetric("psnr", "max", SUPER_RESOLUTION, "the eval's PSNR in dB"),
    RankingMetric("ssim", "max", SUPER_RESOLUTION, "the eval's SSIM"),
)}
# The periodic eval's metric group (eval.metrics) of each Inception metric.
INCEPTION_GROUP = {"fid": "fid", "kid": "kid", "precision": "pr", "recall": "pr"}

# Members run one interval per ray-tune trial report; a tune directory holds:
# PBT's defaults (Ray's, and Jaderberg et al.'s factors): explore by x0.8 or x1.2, or a fresh draw
# with probability 0.25; exploit: the worst quarter copies the best quarter.
PERTURB_FACTORS = (0.8, 1.2)
RESAMPLE_PROBABILITY = 0.25
QUANTILE = 0.25

SPEC_FILE = "tune.yaml"  # the resolved tune, compared on a resume
TUNE_EXPERIMENT = "ray-tune"  # Ray Tune's experiment folder (its trials, their checkpoints, its state)


@dataclass(frozen=True)
class Mutation:
    """`--mutate KEY=LOW:HIGH[:log]`: a hyper-parameter drawn from, and kept within, [LOW, HIGH]."""

    key: str
    low: float
    high: float
    log: bool = False

    @property
    def integer(self) -> bool:
        return self.key in INTEGER_KEYS

    @property
    def text(self) -> str:
        return f"{self.key}={self.low:g}:{self.high:g}" + (":log" if self.log else "")

    @property
    def values(self) -> list[int]:
        """An integer key's values, LOW..HIGH."""
        return list(range(int(self.low), int(self.high) + 1))

    def draw(self, rng: random.Random) -> float | int:
        if self.integer:
            return rng.randint(int(self.low), int(self.high))
        if self.log:
            return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        return rng.uniform(self.low, self.high)

    def clip(self, value: float) -> float | int:
        """A perturbed value (PBT multiplies by a perturbation factor) kept within the range."""
        value = min(max(value, self.low), self.high)
        return int(round(value)) if self.integer else float(value)


def parse_mutation(text: str) -> Mutation:
    key, sep, bounds = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--mutate expects KEY=LOW:HIGH or KEY=LOW:HIGH:log, got {text!r}")
    if key not in MUTABLE:
        known = set(flatten(Config().to_dict()))
        why = ("not a hyper-parameter a copied checkpoint takes" if key in known else "not a config key")
        raise ConfigError(f"--mutate {key}: unknown key ({why}); gan-dist tune mutates {', '.join(MUTABLE)}")
    parts = bounds.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
        raise ConfigError(f"--mutate {key}={bounds}: expected LOW:HIGH or LOW:HIGH:log")
    try:
        low, high = float(parts[0]), float(parts[1])
    except ValueError:
        raise ConfigError(f"--mutate {key}={bounds}: LOW and HIGH must be numbers") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigError(f"--mutate {key}={bounds}: LOW and HIGH must be finite")
    if low >= high:
        raise ConfigError(f"--mutate {key}={bounds}: LOW must be below HIGH, got {low:g} >= {high:g}")
    mutation = Mutation(key, low, high, log=len(parts) == 3)
    if mutation.integer and (low != int(low) or high != int(high) or mutation.log):
        raise ConfigError(f"--mutate {key}={bounds}: {key} is an integer: LOW:HIGH are whole numbers, without :log")
    if mutation.log and low <= 0:
        raise ConfigError(f"--mutate {key}={bounds}: a log range needs LOW > 0, got {low:g}")
    if key == "loss.r1_gamma" and low <= 0:
        raise ConfigError(f"--mutate {key}={bounds}: LOW must be > 0 (lazy R1 sets D's optimizer up when the "
                          f"run starts; a member cannot switch R1 off or on)")
    return mutation


def set_key(cfg: Config, key: str, value: float | int) -> None:
    """Put a mutated value into a member's config (optim.lr: both learning rates)."""
    targets = ("optim.lr_g", "optim.lr_d") if key == "optim.lr" else (key,)
    for target in targets:
        section, name = target.split(".")
        setattr(getattr(cfg, section), name, int(value) if key in INTEGER_KEYS else float(value))


def default_mutations(cfg: Config) -> list[Mutation]:
    """Without --mutate: the learning rates, log-uniformly over a tenth to ten times the recipe's."""
    lr_g, lr_d = cfg.optim.lr_g, cfg.optim.lr_d
    if lr_g == lr_d:
        return [Mutation("optim.lr", lr_g / 10, lr_g * 10, log=True)]
    return [Mutation("optim.lr_g", lr_g / 10, lr_g * 10, log=True), Mutation("optim.lr_d", lr_d / 10, lr_d * 10, log=True)]


# Metrics ---------------------------------------------------------------------------

def data_kind(cfg: Config, meta: dict) -> str:
    if meta.get("kind") == "points" and "mixture" in meta:
        return POINTS
    if meta.get("kind") == "image" and model_task(cfg.model.arch) == "super_resolution":
        return SUPER_RESOLUTION
    if meta.get("kind") == "image" and meta.get("num_classes", 0) >= 2:
        return LABELLED
    return f"{meta.get('kind', 'unknown')} data"


def metric_problem(metric: RankingMetric, cfg: Config, meta: dict, perturb_every: int) -> str | None:
    """Why the recipe cannot compute `metric` at every perturbation interval, or None."""
    kind = data_kind(cfg, meta)
    if metric.needs == INCEPTION:
        if meta.get("kind") != "image":
            return f"it needs images, and recipe {cfg.recipe} trains on {kind}"
        every = cfg.eval.every_steps
        if not every or perturb_every % every:
            return (f"it needs a periodic Inception eval at every perturbation interval: set eval.every_steps to a "
                    f"divisor of --perturb-every {perturb_every} (it is {every})")
        groups = [g.strip() for g in cfg.eval.metrics.split(",")]
        if INCEPTION_GROUP[metric.name] not in groups:
            return f"eval.metrics {cfg.eval.metrics!r} leaves out {INCEPTION_GROUP[metric.name]}"
        return None
    if metric.name == "mode_coverage_ratio" and kind == LABELLED and not cfg.monitor.class_coverage:
        return "it needs monitor.class_coverage for labelled images"
    if kind not in metric.needs:
        return f"it is for {metric.needs}, and recipe {cfg.recipe} trains on {kind}"
    return None


def choose_metric(name: str | None, cfg: Config, meta: dict, perturb_every: int) -> RankingMetric:
    """The metric that ranks the members: `name`, or the recipe's quality metric."""
    usable = [m for m in RANKING.values() if metric_problem(m, cfg, meta, perturb_every) is None]
    if name is not None:
        if name not in RANKING:
            raise ConfigError(f"--metric {name}: unknown (gan-dist tune ranks by {', '.join(RANKING)})")
        problem = metric_problem(RANKING[name], cfg, meta, perturb_every)
        if problem:
            also = f"; it can rank by {', '.join(m.name for m in usable)}" if usable else ""
            raise ConfigError(f"--metric {name}: recipe {cfg.recipe} cannot compute it ({problem}){also}")
        return RANKING[name]
    for preferred in ("hq_coverage", "fid", "fid_domain", "psnr"):
        if any(m.name == preferred for m in usable):
            return RANKING[preferred]
    raise ConfigError(f"recipe {cfg.recipe} ({data_kind(cfg, meta)}) gives gan-dist tune no quality metric to rank "
                      f"members by: set eval.every_steps to a divisor of --perturb-every {perturb_every} for "
                      f"Inception FID")


def metric_value(summary: dict, metric: str) -> float | None:
    """The ranking metric from a member's summary.json (its eval, then its last history row)."""
    ev, final = summary.get("eval") or {}, summary.get("final") or {}
    if metric == "hq_coverage":
        if "high_quality_fraction" not in ev or "mode_coverage_ratio" not in final:
            return None
        return float(ev["high_quality_fraction"]) * float(final["mode_coverage_ratio"])
    value = ev.get(metric, final.get(metric))
    return None if value is None else float(value)


def collapse_alarm(summary: dict) -> dict | None:
    """The detector event whose exploit policy stopped a member's interval (its summary.json), if
    one did: the member is then replaced at once."""
    return next((a for a in reversed(summary.get("alerts", [])) if a.get("action") == "exploit"
                 and a.get("step") == summary.get("steps")), None)


def score_of(value: float | None, mode: str) -> float:
    """Larger is better, whatever the metric's direction; a metric that is missing or not finite
    (a diverged member) ranks last."""
    if value is None or not math.isfinite(value):
        return -math.inf
    return value if mode == "max" else -value


# The tune ----------------------------------------------------------------------------

@dataclass
class TuneSpec:
    """A resolved tune: what `tune.yaml` records and a resume must match."""

    name: str
    storage: str
    population: int
    mutations: list[Mutation]
    metric: str
    mode: str
    perturb_every: int
    workers_per_member: int
    initial: list[dict[str, float | int]]  # each member's starting values of the mutated keys
    config: dict[str, Any]  # the resolved base config every member starts from
    address: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # informational (the data kind)
    # Compared in generations: each member waits at every interval until all have reported it
    # (and Tune has their checkpoints), then the worst quantile copies the best. Else (Tune's
    # PBT) each member is compared when it reports, against the others' latest results.
    synchronous: bool = False
    # Explore (Ray's PBT): a copied member's continuous value times DOWN or UP, an integer one value
    # down or up, or with `resample_probability` a fresh draw from the range. Exploit: the worst
    # `quantile` of the members copies the best (each rounded up, at most half the population).
    perturb_factors: list[float] = field(default_factory=lambda: list(PERTURB_FACTORS))
    resample_probability: float = RESAMPLE_PROBABILITY
    quantile: float = QUANTILE

    @property
    def tune_dir(self) -> Path:
        return Path(self.storage).expanduser().absolute() / self.name

    @property
    def recipe(self) -> str:
        return self.config["recipe"]

    @property
    def max_steps(self) -> int:
        return int(self.config["train"]["max_steps"])

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    @property
    def copies_per_interval(self) -> int:
        """Members replaced at an interval of the whole population (the worst quantile)."""
        return quantile_size(self.population, self.quantile)

    def base(self) -> Config:
        return Config.from_dict(copy.deepcopy(self.config))

    def member_config(self, index: int, values: dict[str, float | int]) -> Config:
        """Member `index`'s config with hyper-parameters `values`: its own seed (weights, noise and
        data order of its own) and run directory under the tune directory."""
        cfg = self.base()
        cfg.seed = (self.seed + index) % 2**32
        cfg.run.name, cfg.run.storage = member_name(index), str(self.tune_dir)
        cfg.run.workers, cfg.run.address = str(self.workers_per_member), self.address
        for key, value in values.items():
            set_key(cfg, key, value)
        cfg.validate()
        return cfg

    def mutation(self, key: str) -> Mutation:
        return next(m for m in self.mutations if m.key == key)

    def to_record(self) -> dict:
        record = asdict(self)
        record["mutations"] = [m.text for m in self.mutations]
        return record

    @classmethod
    def from_record(cls, record: dict) -> "TuneSpec":
        record = dict(record)
        record["mutations"] = [parse_mutation(text) for text in record["mutations"]]
        return cls(**record)

    def check_resume(self, saved: "TuneSpec") -> None:
        """A tune resumes only as it started (where it runs may change: address, storage)."""
        mine, theirs = _comparable(self), _comparable(saved)
        for key in sorted(set(mine) | set(theirs)):
            if mine.get(key) != theirs.get(key):
                raise ConfigError(f"tune {self.name} was started with {key}={theirs.get(key)!r}, not "
                                  f"{mine.get(key)!r}; use another --name for a new tune")


def _comparable(spec: TuneSpec) -> dict:
    record = spec.to_record()
    # `initial` follows from the seed, the population and the mutations, compared themselves
    # (and named in the error, which a list of draws would not say).
    for key in ("name", "storage", "address", "extra", "initial"):
        record.pop(key)
    flat = flatten({k: v for k, v in record.items() if k != "config"})
    flat.update({f"config.{k}": v for k, v in flatten(record["config"]).items()
                 if not k.startswith(("run.", "metrics."))})
    return flat


def quantile_size(members: int, fraction: float) -> int:
    """Members in each of the worst and the best quantile of `members`, as Ray's PBT cuts them:
    `fraction` of them rounded up, at most half; none with fewer than 2."""
    return 0 if members < 2 else min(math.ceil(members * fraction), members // 2)


def parse_factors(text: str) -> list[float]:
    """--perturb-factors DOWN:UP: 0 < DOWN < 1 < UP."""
    try:
        down, up = map(float, text.split(":"))  # ValueError: not two numbers
    except ValueError:
        down = up = math.nan
    if not (math.isfinite(down) and math.isfinite(up)):
        raise ConfigError(f"--perturb-factors expects DOWN:UP, two numbers such as 0.8:1.2, got {text!r}")
    if not 0 < down < 1 < up:
        raise ConfigError(f"--perturb-factors {text}: expected 0 < DOWN < 1 < UP (a copy's value is multiplied by "
                          f"one of them)")
    return [down, up]


def member_name(index: int) -> str:
    return f"member-{index}"


def build_spec(recipe: str, overrides: list[str], population: int, mutate: list[str], metric: str | None,
               perturb_every: int | None, workers_per_member: int, storage: str | None, name: str | None,
               address: str | None, max_steps: int | None, synchronous: bool = False,
               perturb_factors: str | None = None, resample_probability: float = RESAMPLE_PROBABILITY,
               quantile: float = QUANTILE, warn: Callable[[str], None] | None = None) -> TuneSpec:
    """Resolve and check a tune (the arguments of `gan-dist tune`); ConfigError on bad input."""
    if population < 2:
        raise ConfigError(f"--population must be at least 2 (a member copies a better one), got {population}")
    factors = parse_factors(perturb_factors) if perturb_factors is not None else list(PERTURB_FACTORS)
    if not 0 <= resample_probability <= 1:
        raise ConfigError(f"--resample-probability must be within [0, 1], got {resample_probability:g}")
    if not 0 < quantile <= 0.5:
        raise ConfigError(f"--quantile must be above 0 and at most 0.5 (the worst quantile copies the best), got "
                          f"{quantile:g}")
    sets = [*TUNE_SETTINGS, *overrides]
    if max_steps:
        sets.append(f"train.max_steps={max_steps}")
    cfg = resolve(recipe, sets, warn)
    if not cfg.metrics.enabled:
        raise ConfigError("gan-dist tune needs metrics.enabled: the detectors decide which member to replace at once")
    if not cfg.run.use_ray:
        raise ConfigError("gan-dist tune runs its members on Ray: run.use_ray must be true")
    mutations = [parse_mutation(text) for text in mutate] or default_mutations(cfg)
    keys = [m.key for m in mutations]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ConfigError(f"--mutate {repeated[0]} is given twice")
    if "optim.lr" in keys and ({"optim.lr_g", "optim.lr_d"} & set(keys)):
        raise ConfigError("--mutate optim.lr moves both learning rates: not with optim.lr_g or optim.lr_d")

    log_every, max_steps = cfg.train.log_every, cfg.train.max_steps
    if perturb_every is None:  # about ten intervals, on log steps
        perturb_every = max(log_every, round(max_steps / 10 / log_every) * log_every)
    if perturb_every % log_every:
        raise ConfigError(f"--perturb-every {perturb_every} must be a multiple of train.log_every {log_every} (the "
                          f"members are compared on a logged step)")
    if perturb_every >= max_steps:
        raise ConfigError(f"--perturb-every {perturb_every} must be below train.max_steps {max_steps}, or the "
                          f"members are never compared")
    if cfg.checkpoint.every > perturb_every or perturb_every % cfg.checkpoint.every:
        cfg.checkpoint.every = perturb_every  # a checkpoint at every interval: what Tune copies
    cfg.checkpoint.keep = max(cfg.checkpoint.keep, 2)
    index = resolve_source(cfg.data.source, cfg.data.cache_dir)
    ranking = choose_metric(metric, cfg, index.meta, perturb_every)

    rng = random.Random(cfg.seed)  # the same tune draws the same starting points
    initial = [{m.key: m.draw(rng) for m in mutations} for _ in range(population)]
    name = name or f"tune-{cfg.recipe}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    check_run_name(name, "--name")
    spec = TuneSpec(name=name, storage=storage or cfg.run.storage, population=population, mutations=mutations,
                    metric=ranking.name, mode=ranking.mode, perturb_every=perturb_every,
                    workers_per_member=workers_per_member, initial=initial, config=cfg.to_dict(),
                    address=address or "", extra={"data": data_kind(cfg, index.meta)}, synchronous=synchronous,
                    perturb_factors=factors, resample_probability=resample_probability, quantile=quantile)
    # Every range's ends, and so every value a member may reach mid-tune, must make valid
    # configs (the ends first: the error then names the range); then every member's own.
    for m in mutations:
        for end in (m.low, m.high):
            try:
                spec.member_config(0, {**initial[0], m.key: end})
            except ConfigError as exc:
                raise ConfigError(f"--mutate {m.text}: at {end:g}, {exc}") from None
    for i, values in enumerate(initial):
        spec.member_config(i, values)
    return spec
