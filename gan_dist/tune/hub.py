"""The population's meeting point: one run hub per member, and one metrics target for all.

Each interval of a member is a gan-dist run whose rank 0 reports to a hub; here every
member's hub lives in one `TuneHub` (under Ray, an actor on the tune command's node), and
their series go to one `RunMetrics` whose every series carries a `member` label: Prometheus
scrapes the population at one target, whatever the members' restarts and replacements.
"""

from __future__ import annotations

from pathlib import Path

from gan_dist.monitor.hub import RunHub
from gan_dist.monitor.metrics import NullMetrics, RunMetrics, scrape_host, write_targets
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

    def serve(self, host: str, port: int) -> int:
        raise RuntimeError("a member's metrics are served by the population's target (TuneHub.serve_metrics)")

    def push(self, url: str, run: str, auth: tuple[str, str] | None = None) -> None: ...

    def close(self) -> None: ...  # the population's target outlives each interval


class TuneHub:
    """The hubs of the population's members (a fresh RunHub for each interval a member trains)
    and their one metrics target. The methods of a run's hub take the member first."""

    def __init__(self, monitoring: bool = True):
        self.metrics = RunMetrics(members=True) if monitoring else NullMetrics()
        self.hubs: dict[str, RunHub] = {}
        self.target: str | None = None

    def serve_metrics(self, host: str, port: int, tune_dir: str, labels: dict[str, str]) -> str | None:
        if isinstance(self.metrics, NullMetrics):
            return None
        port = self.metrics.serve(host, port)
        self.target = f"{scrape_host(host)}:{port}"
        write_targets(Path(tune_dir), scrape_host(host), port, labels)
        return self.target

    def begin(self, member: str, max_steps: int) -> None:
        """A member starts an interval: a run of its own, with a hub of its own."""
        hub = RunHub(max_steps, monitoring=False)
        hub.metrics = MemberMetrics(self.metrics, member)
        self.hubs[member] = hub

    # A member's run hub (gan_dist.monitor.hub.RunHub), by member.
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
    def scored(self, member: str, score: float) -> None:
        if not isinstance(self.metrics, NullMetrics):
            self.metrics.scored(member, score)

    def exploited(self, member: str, reason: str) -> None:
        if not isinstance(self.metrics, NullMetrics):
            self.metrics.exploited(member, reason)

    def close(self) -> None:
        self.metrics.close()
