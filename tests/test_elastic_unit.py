"""Elastic training's pure parts (issue 22): the MIN:MAX setting, the placement and plan checks,
the data position carried over a resize, and the hub's record of resizes with its metrics.
The runs on a real multi-node Ray cluster are in tests/test_elastic.py; the bad-input rows in
tests/test_bad_input.py."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from gan_dist.config import ConfigError, load_yaml_config, resolve
from gan_dist.data.sources import resolve_source
from gan_dist.data.stream import RankStream, rank_slice
from gan_dist.driver import place
from gan_dist.integrations.ray import _RestartCauses
from gan_dist.monitor.hub import RunHub
from gan_dist.plan import PlanError, check_elastic
from gan_dist.results import RunSummary
from gan_dist.trainer.state import noise_seed, resize_seed

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("override", ["run.workers=2:4", "run.workers=[2, 4]", "run.workers='2:4'"])
def test_an_elastic_range_is_read_as_written_and_survives_the_stored_config(override):
    cfg = resolve("ring8", [override])
    # YAML 1.1 would read a bare 2:4 as the base-60 integer 124.
    assert cfg.run.workers == "2:4" and cfg.run.elastic == (2, 4) and cfg.run.worker_count is None
    assert load_yaml_config(cfg.to_yaml()).run.elastic == (2, 4)
    assert resolve("ring8", ["run.workers=3"]).run.elastic is None


@pytest.mark.parametrize("override, problem", [
    ("run.workers=3:2", "MIN 3 is larger than MAX 2"),
    ("run.workers=0:2", "MIN must be >= 1"),
    ("run.workers=[1]", "two integers"),
    ("run.workers=1:x", "must be a count >= 1, auto, or an elastic range"),
])
def test_a_bad_range_names_its_problem(override, problem):
    with pytest.raises(ConfigError, match=problem):
        resolve("ring8", [override])


def test_placement_checks_only_max_and_only_against_a_known_ceiling():
    run = resolve("ring8", ["run.workers=1:3"]).run
    placement = place(run, {"CPU": 1.0}, ceiling=None)  # a cluster without an autoscaler may still grow
    assert (placement.min_workers, placement.workers, placement.elastic) == (1, 3, True)
    assert "elastic, 1 to 3" in placement.describe()
    assert place(run, {"CPU": 1.0}, ceiling={"CPU": 3.0}).workers == 3
    with pytest.raises(PlanError, match="more than the cluster can ever hold"):
        place(run, {"CPU": 8.0}, ceiling={"CPU": 2.0})


def test_every_size_of_the_range_must_split_the_global_batch(cache_dir):
    index = resolve_source("builtin:ring8", str(cache_dir))
    assert check_elastic(resolve("ring8", ["data.batch_size=96"]), index, 1, 4).world_size == 4
    with pytest.raises(PlanError, match="may run 3 workers, but data.batch_size 64 does not divide"):
        check_elastic(resolve("ring8", ["data.batch_size=64"]), index, 2, 4)


def _cursor_state(index, rank: int, world_size: int, epoch: int, record: int, seen: int) -> dict:
    return {"cursor": {"epoch": epoch, "record": record, "row": 0}, "samples_seen": seen, "corrupt_samples": rank,
            "rank": rank, "world_size": world_size, "loader_workers": 1, "window": 64}


@pytest.mark.parametrize("new_world", [1, 3])
def test_a_resize_continues_the_pass_at_its_global_position_and_keeps_the_counts(cache_dir, new_world):
    index = resolve_source("builtin:ring8", str(cache_dir))  # 512 records
    half = rank_slice(index.num_records, 0, 2)[1] // 2  # each of 2 old ranks halfway through its slice
    old = [_cursor_state(index, r, 2, epoch=3, record=half, seen=1000 + r) for r in range(2)]
    states = []
    for rank in range(new_world):
        stream = RankStream(index, rank, new_world, 32, seed=0, window=64, processes=False)
        state = stream.resized_state(old)
        stream.load_state_dict(state)  # what Worker.set_resized_rank_state hands it
        states.append(state)
        assert state["cursor"] == {"epoch": 3, "record": stream.slice_len // 2, "row": 0}
    assert sum(s["samples_seen"] for s in states) == 2001
    assert sum(s["corrupt_samples"] for s in states) == 1


def test_a_rank_added_by_a_resize_gets_streams_of_its_own():
    seeds = {resize_seed(0, rank, step) for rank in range(4) for step in (40, 80)}
    assert len(seeds) == 8 and not seeds & {noise_seed(0, rank, draw) for rank in range(4) for draw in range(4)}
    assert resize_seed(0, 2, 40) == resize_seed(0, 2, 40)


def test_the_hub_records_each_resize_with_its_cause_and_cost():
    hub = RunHub(max_steps=200)
    hub.started(3, 0)
    hub.first_step()
    hub.progress({"step": 50})
    hub.note_restart("worker group failed (a worker or node lost): ActorDiedError")
    hub.started(2, 40)  # back to the checkpoint at 40, at the size that still fits
    hub.first_step()
    hub.started(2, 60)  # a restart at the same size is no resize
    hub.note_restart("resources changed: Ray Train resizes the group to 3 workers")
    noticed = hub.cause[1]
    hub.note_restart("worker group failed: The worker group startup timed out after 60.0 seconds")
    hub.started(3, 80)
    snap = hub.snapshot()
    assert [(r["step"], r["old_world_size"], r["new_world_size"]) for r in snap.resizes] == [(40, 3, 2), (80, 2, 3)]
    first, second = snap.resizes
    assert first["why"].startswith("worker group failed")
    # Both causes told before the group started, timed from the first: a failed start is part of the cost.
    assert second["why"] == ("resources changed: Ray Train resizes the group to 3 workers; then worker group "
                             "failed: The worker group startup timed out after 60.0 seconds")
    assert second["noticed_at"] == noticed
    assert first["steps_redone"] == 10 and first["seconds_to_first_step"] >= 0
    assert second["first_step_at"] is None  # no step yet at the new size
    text = generate_latest(hub.metrics.registry).decode()
    assert "gan_world_size 3.0" in text and "gan_resizes_total 2.0" in text
    assert "gan_worker_restarts_total 3.0" in text
    summary = RunSummary.build("failed", None, snap, 3, 1.0, "x").to_dict()
    assert [r["new_world_size"] for r in summary["resizes"]] == [2, 3]


class _Notes:
    """The run's hub as the controller's callback sees it: here, a list of what it was told."""

    def __init__(self):
        self.notes: list[str] = []

    def note_restart(self, why: str) -> None:
        self.notes.append(why)


def test_the_controller_callback_names_a_lost_node_and_a_resize():
    from ray.train.v2._internal.execution.controller.state import (ReschedulingState, ResizingState, RestartingState,
                                                                   RunningState, SchedulingState)
    from ray.train.v2._internal.execution.scaling_policy import ResizeDecision
    from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError

    hub = _Notes()
    causes = _RestartCauses(hub)
    node_lost = WorkerGroupError("rank 1 died", {1: RuntimeError("The actor died because its node has died.")})
    crashed = WorkerGroupError("rank 0 raised", {0: ValueError("loss exploded\ntraceback...")})
    causes.after_controller_state_update(RunningState(), RestartingState(training_failed_error=node_lost))
    causes.after_controller_state_update(RunningState(), RestartingState(training_failed_error=crashed))
    causes.after_controller_state_update(RunningState(), ResizingState(ResizeDecision(3, {"CPU": 1.0})))
    timed_out = ControllerError(TimeoutError("The worker group startup timed out after 60.0 seconds"))
    causes.after_controller_state_update(SchedulingState(ResizeDecision(3, {"CPU": 1.0})),
                                         ReschedulingState(training_failed_error=timed_out))
    causes.after_controller_state_update(RunningState(), RunningState())
    waiting = RestartingState(training_failed_error=crashed)
    causes.after_controller_state_update(RunningState(), waiting)
    causes.after_controller_state_update(waiting, waiting)  # told to wait: the same state again
    assert hub.notes == ["worker group failed: a node was lost", "worker group failed: rank 0: ValueError: loss exploded",
                         "resources changed: Ray Train resizes the group to 3 workers",
                         "worker group did not start: TimeoutError: The worker group startup timed out after 60.0 seconds",
                         "worker group failed: rank 0: ValueError: loss exploded"]


def test_a_node_whose_raylet_does_not_answer_is_silent_and_one_listed_dead_is_not_asked():
    import socket

    from gan_dist.integrations.ray import silent_nodes

    with socket.socket() as listening, socket.socket() as closed:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        closed.bind(("127.0.0.1", 0))  # bound, not listening: a connection is refused

        def node(node_id: str, sock: socket.socket, alive: bool = True) -> dict:
            return {"NodeID": node_id, "Alive": alive, "NodeManagerAddress": "127.0.0.1",
                    "NodeManagerPort": sock.getsockname()[1]}

        nodes = [node("up", listening), node("crashed", closed), node("gone", closed, alive=False)]
        assert silent_nodes(nodes, timeout=1.0) == {"crashed"}
    assert silent_nodes([]) == set()
