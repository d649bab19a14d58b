"""The metric catalog, declared once, and the run's one Prometheus target.

Ranks never serve metrics themselves (their ports would collide and vanish on
restart): rank 0 reports each log interval's reduced row to the run's hub,
which lives on the driver's node for the whole run, and the hub's `RunMetrics`
turns rows and events into these series and serves them. Names follow
Prometheus conventions: `gan_` prefix, base units, `_total` counters, few labels.
"""

from __future__ import annotations

import errno
import json
import socket
import warnings
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, push_to_gateway, start_http_server
from prometheus_client.exposition import basic_auth_handler, default_handler

from gan_dist.config import ConfigError
from gan_dist.monitor.detectors import KINDS

# name -> (type, help, labels). The one place metric names are declared (DESIGN.md, "Metrics").
CATALOG: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "gan_train_step": ("gauge", "Training steps completed (one step: n_critic D updates and one G update).", ()),
    "gan_loss": ("gauge", "Mean loss over the last log interval, averaged over ranks.", ("net",)),
    "gan_d_accuracy": ("gauge", "Fraction of real (fake) samples D classifies as real (fake).", ("on",)),
    "gan_d_output_gap": ("gauge", "Mean D output on reals minus on fakes.", ()),
    "gan_grad_norm": ("gauge", "Mean gradient norm per update over the last log interval.", ("net",)),
    "gan_diversity_ratio": ("gauge", "Mean pairwise distance of G's probe samples over that of a real batch.", ()),
    "gan_duplicate_rate": ("gauge", "Fraction of G's probe samples with a near-duplicate among them.", ()),
    "gan_mode_coverage_ratio": ("gauge", "Fraction of the data's modes or classes (when known) that get at least a tenth of their fair share of G's samples.", ()),
    "gan_collapse_score": ("gauge", "Mode-collapse score in [0, 1] from coverage, duplicates and diversity.", ()),
    "gan_alert_active": ("gauge", "1 while the run's detector of this kind is firing.", ("kind",)),
    "gan_instability_events_total": ("counter", "Detector events.", ("kind",)),
    "gan_nonfinite_steps_total": ("counter", "Updates skipped on every rank because a loss or gradient was "
                                  "not finite.", ()),
    "gan_rollbacks_total": ("counter", "Rollbacks to an earlier checkpoint made by a detector policy.", ()),
    "gan_worker_restarts_total": ("counter", "Worker-group restarts (each resumes from the last checkpoint).", ()),
    "gan_world_size": ("gauge", "Ranks in the worker group now training (an elastic run's size changes).", ()),
    "gan_resizes_total": ("counter", "Restarts of an elastic run at a new world size (a node lost or added).", ()),
    "gan_checkpoint_seconds": ("gauge", "Last checkpoint: step loop blocked (phase=blocked), background "
                               "serialization and writing (phase=write).", ("phase",)),
    "gan_samples_per_second": ("gauge", "Real samples consumed per second over the last log interval, all ranks.", ()),
    "gan_data_wait_seconds": ("gauge", "Mean time a step waited for its data, over the last log interval.", ()),
    "gan_data_corrupt_samples_total": ("counter", "Corrupt or unreadable samples skipped by the data streams.", ()),
    "gan_fid": ("gauge", "FID (Inception) of G_ema against the data at the last periodic eval "
                "(eval.every_steps), with eval.every_n samples on each side.", ()),
    "gan_kid": ("gauge", "KID (Inception) of G_ema against the data at the last periodic eval.", ()),
    "gan_eval_seconds": ("gauge", "Wall time of the last periodic eval.", ()),
    # gan-dist tune's own (TUNE_ONLY), on its one target beside every member's series above.
    "gan_tune_score": ("gauge", "gan-dist tune: the metric the population is ranked by, at the member's last "
                       "perturbation interval.", ()),
    "gan_tune_exploits_total": ("counter", "gan-dist tune: members replaced by a copy of a better one, at a "
                                "perturbation interval or at once after a collapse.", ("reason",)),
}

# Series only a gan-dist tune target has.
TUNE_ONLY = ("gan_tune_score", "gan_tune_exploits_total")
# The label a gan-dist tune target adds to every series: the population's members share it, so
# one scrape target serves them all (a handful of values: the population is small).
MEMBER_LABEL = "member"
EXPLOIT_REASONS = ("interval", "collapse")

# Row field -> (metric, labels): the gauges set straight from a log interval's reduced row.
ROW_GAUGES: dict[str, tuple[str, dict]] = {
    "step": ("gan_train_step", {}),
    "loss_d": ("gan_loss", {"net": "D"}),
    "loss_g": ("gan_loss", {"net": "G"}),
    "d_acc_real": ("gan_d_accuracy", {"on": "real"}),
    "d_acc_fake": ("gan_d_accuracy", {"on": "fake"}),
    "d_output_gap": ("gan_d_output_gap", {}),
    "grad_norm_d": ("gan_grad_norm", {"net": "D"}),
    "grad_norm_g": ("gan_grad_norm", {"net": "G"}),
    "diversity_ratio": ("gan_diversity_ratio", {}),
    "duplicate_rate": ("gan_duplicate_rate", {}),
    "mode_coverage_ratio": ("gan_mode_coverage_ratio", {}),
    "collapse_score": ("gan_collapse_score", {}),
    "samples_per_second": ("gan_samples_per_second", {}),
    "data_wait_seconds": ("gan_data_wait_seconds", {}),
    "checkpoint_blocked_seconds": ("gan_checkpoint_seconds", {"phase": "blocked"}),
    "checkpoint_write_seconds": ("gan_checkpoint_seconds", {"phase": "write"}),
    "fid": ("gan_fid", {}),
    "kid": ("gan_kid", {}),
    "eval_seconds": ("gan_eval_seconds", {}),
    **{f"alert_{kind}": ("gan_alert_active", {"kind": kind}) for kind in KINDS},
}

# Row field (a running total) -> counter.
ROW_COUNTERS = {
    "nonfinite_steps": "gan_nonfinite_steps_total",
    "rollbacks": "gan_rollbacks_total",
    "corrupt_samples": "gan_data_corrupt_samples_total",
}

TARGETS_FILE = "prometheus-targets.json"


class RunMetrics:
    """The catalog's series for one run, fed from rows and events, served on one port.

    With `members` (gan-dist tune) every series also carries the `member` label, and the
    methods take the member they are about: one target for the whole population."""

    def __init__(self, members: bool = False):
        self.registry = CollectorRegistry()
        self.members = members
        self.series = {}
        extra = (MEMBER_LABEL,) if members else ()
        for name, (kind, doc, labels) in CATALOG.items():
            if name in TUNE_ONLY and not members:
                continue
            cls = Counter if kind == "counter" else Gauge
            # prometheus_client appends _total to counters itself.
            self.series[name] = cls(name.removesuffix("_total") if kind == "counter" else name, doc,
                                    (*extra, *labels), registry=self.registry)
        self.totals: dict[tuple[str, str], float] = {}  # the largest running total seen per counter
        self.known: set[str] = set()  # the members whose label sets exist
        if not members:
            self.add_member("")
        self.server = None

    def add_member(self, member: str) -> None:
        """Every known label set exists from the start (an alert's 0 is news; `increase` needs a start)."""
        if member in self.known:
            return
        self.known.add(member)
        for name, labels in ROW_GAUGES.values():
            self._get(name, labels, member)
        for kind in KINDS:
            self._get("gan_instability_events_total", {"kind": kind}, member)
        if self.members:
            for reason in EXPLOIT_REASONS:
                self._get("gan_tune_exploits_total", {"reason": reason}, member)

    def _get(self, name: str, labels: dict, member: str = ""):
        series = self.series[name]
        labels = {MEMBER_LABEL: member, **labels} if self.members else labels
        return series.labels(**labels) if labels else series

    def observe(self, row: dict, member: str = "") -> None:
        self.add_member(member)
        for field, (name, labels) in ROW_GAUGES.items():
            if field in row:
                self._get(name, labels, member).set(row[field])
        for field, name in ROW_COUNTERS.items():
            if field in row:
                self.advance(name, row[field], member)

    def advance(self, name: str, total: float, member: str = "") -> None:
        """Move a counter to a running total. A restarted worker group replays steps since its
        checkpoint and reports smaller totals again: those are not counted twice."""
        seen = self.totals.get((name, member), 0.0)
        if total > seen:
            self._get(name, {}, member).inc(total - seen)
            self.totals[(name, member)] = total

    def event(self, kind: str, member: str = "") -> None:
        self._get("gan_instability_events_total", {"kind": kind}, member).inc()

    def restarted(self, member: str = "") -> None:
        self._get("gan_worker_restarts_total", {}, member).inc()

    def world_size(self, size: int, member: str = "") -> None:
        self._get("gan_world_size", {}, member).set(size)

    def resized(self, member: str = "") -> None:
        self._get("gan_resizes_total", {}, member).inc()

    def exploited(self, member: str, reason: str) -> None:
        """gan-dist tune replaced `member` (reason: interval or collapse)."""
        self.add_member(member)
        self._get("gan_tune_exploits_total", {"reason": reason}, member).inc()

    def scored(self, member: str, score: float) -> None:
        self.add_member(member)
        self._get("gan_tune_score", {}, member).set(score)

    # Exporting -------------------------------------------------------------------

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics on host:port (a port that is taken, or that this user may not bind,
        falls back to a free one); the port in use."""
        try:
            self.server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            if port == 0 or exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise
            why = "is taken" if exc.errno == errno.EADDRINUSE else f"may not be bound by this user ({exc.strerror})"
            warnings.warn(f"metrics port {port} on {host} {why}; serving on a free port", stacklevel=2)
            self.server, _ = start_http_server(0, addr=host, registry=self.registry)
        return self.server.server_port

    def push(self, url: str, run: str, auth: tuple[str, str] | None = None) -> None:
        """Push the final values to a Pushgateway, with basic auth when `auth` is (user, password)."""
        def handler(url, method, timeout, headers, data):
            if auth is None:
                return default_handler(url, method, timeout, headers, data)
            return basic_auth_handler(url, method, timeout, headers, data, auth[0], auth[1])

        push_to_gateway(url, job="gan-dist", grouping_key={"run": run}, registry=self.registry, timeout=10,
                        handler=handler)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def check_bindable(host: str, port: int) -> None:
    """That the metrics endpoint can listen on host:port, checked before the run starts: the
    host resolves to an address of this machine, and the port is not one this user may not
    bind (below 1024 without privileges). A taken port is fine: serve falls back to a free one.
    The check binds a socket and closes it at once."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"metrics.host {host!r} does not resolve ({getattr(exc, 'strerror', None) or exc})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise ConfigError(f"metrics.host {host!r} ({address[0]}) is not an address of this machine") from None
            if exc.errno == errno.EACCES:
                raise ConfigError(f"metrics.port {port} on {host}: permission denied (ports below 1024 need "
                                  f"privileges): use a port from 1024 up, or 0 for a free one") from None
            if exc.errno != errno.EADDRINUSE:
                raise ConfigError(f"metrics.host {host!r}, port {port}: cannot listen there ({exc.strerror})") from None


def scrape_host(bind_host: str) -> str:
    """The address Prometheus reaches a target bound to `bind_host` at."""
    if bind_host not in ("0.0.0.0", "::", ""):
        return bind_host
    try:  # the address this node uses to reach others (no packet is sent)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            return s.getsockname()[0]
    except OSError:
        return socket.gethostname()


def write_targets(run_dir: Path, host: str, port: int, labels: dict[str, str]) -> Path:
    """A Prometheus file-SD target list for this run (`file_sd_configs` picks up changes)."""
    path = run_dir / TARGETS_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps([{"targets": [f"{host}:{port}"], "labels": labels}], indent=2) + "\n")
    tmp.replace(path)
    return path


class NullMetrics:
    """Monitoring off (metrics.enabled=false): the same calls, nothing recorded or served."""

    def observe(self, row: dict) -> None: ...
    def event(self, kind: str) -> None: ...
    def restarted(self) -> None: ...
    def world_size(self, size: int, member: str = "") -> None: ...
    def resized(self, member: str = "") -> None: ...
    def serve(self, host: str, port: int) -> int: return 0
    def push(self, url: str, run: str, auth: tuple[str, str] | None = None) -> None: ...
    def close(self) -> None: ...
