"""The population's meeting point: one run hub per member, and one metrics target for all.

Each interval of a member is a gan-dist run whose rank 0 reports to a hub; here every
member's hub lives in one `TuneHub` (under Ray, an actor on the tune command's node), and
their series go to one `RunMetrics` whose every series carries a `member` label: Prometheus
scrapes the population at one target, whatever the members' restarts and replacements.
"""

from __future__ import annotations

from gan_dist.monitor.hub import RunHub, serve_target
from gan_dist.monitor.metrics import NullMetrics, RunMetrics
from gan_dist.results import HubSnapshot, WorkerResult


class MemberMetrics:
    """A member's hub's metrics: the population's one RunMetrics, under the member's label."""

    def __init__(self, shared: RunMetrics | NullMetrics, member: str):
        self.shared, self.member = shared, member

    def observe(self, row: dict) -> None:
        self.shared.observe(row, self.member)

    def event(self, kind: str) -> None:
        self.shared.event(kind, self.member)

    def restarted(self) -> None:
        self.shared.restarted(self.member)

    def world_size(self, size: int) -> None:
        self.shared.world_size(size, self.member)

    def resized(self) -> None:
        self.shared.resized(self.member)

    def serve(self, host: str, port: int) -> int:
        raise RuntimeError("a member's metrics are served by the population's target (TuneHub.serve_metrics)")

    def push(self, url: str, run: str, auth: tuple[str, str] | None = None) -> None: ...

    def close(self) -> None: ...  # the population's target outlives each interval


class TuneHub:
    """The hubs of the population's members (a fresh RunHub for each interval a member trains)
    and their one metrics target. The methods of a run's hub take the member first."""

    def __init__(self, monitoring: bool = True, members: tuple[str, ...] = ()):
        self.metrics = RunMetrics(members=True) if monitoring else NullMetrics()
        self.hubs: dict[str, RunHub] = {}
        self.target: str | None = None
        self.sources = SourceLedger(members)
        self.released = 0  # a synchronous tune's last generation compared (its interval step)
        self.replaced: dict[int, set[str]] = {}  # by generation: the members given a copy in it

    def serve_metrics(self, host: str, port: int, tune_dir: str, labels: dict[str, str]) -> str | None:
        self.target = serve_target(self.metrics, host, port, tune_dir, labels)
        return self.target

    def begin(self, member: str, max_steps: int) -> None:
        """A member starts an interval: a run of its own, with a hub of its own."""
        self.end(member)
        hub = RunHub(max_steps, monitoring=False)
        hub.metrics = MemberMetrics(self.metrics, member)
        self.hubs[member] = hub

    def end(self, member: str) -> None:
        """A member's interval is over: its TensorBoard file is closed (the population's metrics
        target stays)."""
        hub = self.hubs.get(member)
        if hub is not None and hub.tensorboard is not None:
            hub.tensorboard.close()
            hub.tensorboard = None

    # A member's run hub (gan_dist.monitor.hub.RunHub), by member.
    def start_tensorboard(self, member: str, log_dir: str, config: dict) -> None:
        self.hubs[member].start_tensorboard(log_dir, config)

    def samples(self, member: str, step: int, png: bytes) -> None:
        self.hubs[member].samples(step, png)

    def note_restart(self, member: str, why: str) -> None:
        self.hubs[member].note_restart(why)

    def started(self, member: str, world_size: int, step: int) -> None:
        self.hubs[member].started(world_size, step)

    def progress(self, member: str, row: dict) -> None:
        self.hubs[member].progress(row)

    def alert(self, member: str, event: dict) -> None:
        self.hubs[member].alert(event)

    def first_step(self, member: str) -> None:
        self.hubs[member].first_step()

    def finished(self, member: str, result: WorkerResult) -> None:
        self.hubs[member].finished(result)

    def snapshot(self, member: str, since: int = 0) -> HubSnapshot:
        return self.hubs[member].snapshot(since)

    # The population's own.
    def trial_started(self, member: str) -> None:
        self.sources.started(member)

    def trial_ended(self, member: str) -> None:
        self.sources.ended(member)

    def became_source(self, member: str) -> None:
        self.sources.add(member)

    def await_source(self, member: str, seen: int) -> tuple[str, int]:
        return self.sources.verdict(member, seen)

    def release(self, step: int, replaced: tuple[str, ...] = ()) -> None:
        """A synchronous tune's generation `step` is compared: its members train on, but for
        those `replaced` by a copy, whose trials Tune is stopping (restarted from the copy)."""
        self.released = max(self.released, step)
        self.replaced.setdefault(step, set()).update(replaced)

    def generation_released(self, step: int, member: str = "") -> bool:
        """Whether `member`, waiting after its report of `step`, may train on. Never for a member
        replaced in that generation: its trial would start the next interval's workers while Tune
        stops it, and their CPUs would stay taken from its copy's new trial for minutes."""
        return self.released >= step and member not in self.replaced.get(step, ())

    def scored(self, member: str, score: float) -> None:
        if not isinstance(self.metrics, NullMetrics):
            self.metrics.scored(member, score)

    def exploited(self, member: str, reason: str) -> None:
        if not isinstance(self.metrics, NullMetrics):
            self.metrics.exploited(member, reason)

    def close(self) -> None:
        self.metrics.close()


class SourceLedger:
    """Whether a collapsed member can be copied yet. PBT is asynchronous: a member can collapse
    before any healthy member has handed Tune's scheduler a checkpoint (it collapses at its first
    log interval, the others report at their first perturbation interval). It then waits, and
    reports its collapse again once another member has become a source (a healthy report, with a
    checkpoint, taken in by the scheduler), instead of training on from a state given up. When
    no member can become one (every other member waits too, or has ended), it trains on.

    `generation` counts the sources taken in, so that a waiting member retries once per new one."""

    def __init__(self, members: tuple[str, ...] = ()):
        self.members = set(members)
        self.done: set[str] = set()
        self.waiting: set[str] = set()
        self.healthy: set[str] = set()
        self.generation = 0

    def started(self, member: str) -> None:
        self.members.add(member)
        self.done.discard(member)
        self.waiting.discard(member)

    def ended(self, member: str) -> None:
        self.done.add(member)
        self.waiting.discard(member)
        self.healthy.discard(member)

    def add(self, member: str) -> None:
        self.healthy.add(member)
        self.waiting.discard(member)
        self.generation += 1

    def verdict(self, member: str, seen: int) -> tuple[str, int]:
        """("retry", g) once a source other than `member` came in after generation `seen`;
        ("alone", g) when none can come any more; else ("wait", g)."""
        self.waiting.add(member)
        self.healthy.discard(member)
        if self.generation > seen and self.healthy - {member}:
            return "retry", self.generation
        # A member not started yet (more members than the machine runs at once) can still come.
        coming = self.members - self.done - self.waiting - {member}
        return ("wait" if coming else "alone"), self.generation
