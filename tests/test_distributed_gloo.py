"""Distributed logic on gloo with 2 real processes (no Ray): the same schedule on
every rank, identical replicas, and no all-reduce of D's gradients in the G step."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from gan_dist.config import resolve

pytestmark = pytest.mark.gloo


def _worker(rank: int, world_size: int, out: str, cache: str) -> None:
    from conftest import join_gloo_group, leave_gloo_group

    os.environ["GAN_DIST_CACHE"] = cache
    join_gloo_group(rank, world_size, str(Path(out) / "gloo-store"))
    import torch
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    from gan_dist.checkpoint import LocalSink
    from gan_dist.monitor.hub import RunHub
    from gan_dist.schedule import Phase, Schedule
    from gan_dist.trainer.worker import Worker
    from gan_dist.trainer.state import fingerprint
    from gan_dist.trainer.step import train_step

    cfg = resolve("ring8", ["model.hidden=32", "data.batch_size=64", "run.name=gloo"])
    worker = Worker(cfg, Path(out), LocalSink(Path(out), cfg.checkpoint), RunHub(10))
    st, rt = worker.st, worker.rt
    calls = {"D": 0, "G": 0}

    def counting(net):
        def hook(state, bucket):
            calls[net] += 1
            return allreduce_hook(None, bucket)
        return hook

    st.D_ddp.register_comm_hook(None, counting("D"))
    st.G_ddp.register_comm_hook(None, counting("G"))

    phases = [[p.name for p in worker.ctx.schedule.phases_at(s)] for s in range(50)]
    for _ in range(5):
        train_step(st, rt, worker.ctx, worker.next_real)
    after_full = dict(calls)
    g_only = Schedule((Phase("Gmain", "G"),), n_critic=1, ema_halflife_steps=10, ema_rampup=0)
    ctx_g = type(worker.ctx)(**{**worker.ctx.__dict__, "schedule": g_only})
    for _ in range(3):
        train_step(st, rt, ctx_g, worker.next_real)
    after_g_only = dict(calls)
    # A non-finite batch on rank 1 only: after the all-reduce both ranks see non-finite
    # gradients, and both skip the D update together.
    before = fingerprint(st.D)
    real_next = worker.next_real

    def poisoned():
        batch = real_next()
        if rank == 1:
            batch["x"] = batch["x"] * float("nan")
        return batch

    train_step(st, rt, worker.ctx, poisoned)
    nonfinite = {"skipped": st.nonfinite_steps, "d_unchanged": fingerprint(st.D) == before,
                 "finite": all(bool(torch.isfinite(p).all()) for p in st.D.parameters())}
    result = {
        "nonfinite": nonfinite,
        "world_size": rt.world_size,
        "phases": phases,
        "after_full": after_full,
        "after_g_only": after_g_only,
        "fingerprint": fingerprint(st.G, st.D, st.G_ema),
        "z_first": torch.randn(2, generator=st.noise).tolist(),
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    leave_gloo_group()


@pytest.fixture(scope="module")
def gloo_results(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("gloo")
    mp.spawn(_worker, args=(2, str(out), str(cache_dir)), nprocs=2, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_world_is_two_ranks(gloo_results):
    assert [r["world_size"] for r in gloo_results] == [2, 2]


def test_same_phases_on_every_rank(gloo_results):
    # ring8: one D step, then one G step, at every step (n_critic 1, no lazy R1)
    assert gloo_results[0]["phases"] == gloo_results[1]["phases"] == [["Dmain", "Gmain"]] * 50


def test_replicas_stay_identical(gloo_results):
    assert gloo_results[0]["fingerprint"] == gloo_results[1]["fingerprint"]


def test_noise_differs_by_rank(gloo_results):
    assert gloo_results[0]["z_first"] != gloo_results[1]["z_first"]


def test_g_step_does_not_all_reduce_d(gloo_results):
    for r in gloo_results:
        full, g_only = r["after_full"], r["after_g_only"]
        assert full["D"] > 0 and full["G"] > 0  # both all-reduce in their own phase
        assert g_only["D"] == full["D"]  # G steps added no D all-reduce
        assert g_only["G"] > full["G"]


def test_nonfinite_update_is_skipped_on_every_rank_and_counted(gloo_results):
    for r in gloo_results:
        assert r["nonfinite"] == {"skipped": 1, "d_unchanged": True, "finite": True}


def _rollback_worker(rank: int, world_size: int, out: str, cache: str) -> None:
    """Both ranks run the whole loop on a run that collapses by construction (lr_g 1e-7) with
    the rollback policy: they must roll back together, twice, then stop together."""
    from conftest import join_gloo_group, leave_gloo_group

    os.environ["GAN_DIST_CACHE"] = cache
    join_gloo_group(rank, world_size, str(Path(out) / "gloo-store"))
    import torch

    from gan_dist.checkpoint import LocalSink
    from gan_dist.monitor.hub import RunHub
    from gan_dist.trainer.loop import train_worker

    cfg = resolve("ring8", ["model.hidden=32", "data.batch_size=128", "run.name=rb", "train.log_every=50",
                            "checkpoint.every=100", "optim.lr_g=1e-7", "monitor.warmup_steps=200",
                            "monitor.collapse=rollback", "monitor.d_overpower=off", "train.max_steps=1000"])
    run_dir = Path(out) / "run"
    result = train_worker(cfg, run_dir, LocalSink(run_dir, cfg.checkpoint), RunHub(cfg.train.max_steps, False))
    if rank == 0:
        Path(out, "result.json").write_text(json.dumps(
            {k: getattr(result, k) for k in ("steps", "rollbacks", "stopped_by", "rank_fingerprints", "alerts")}))
    leave_gloo_group()


def test_ranks_roll_back_and_stop_together(tmp_path, cache_dir):
    mp.spawn(_rollback_worker, args=(2, str(tmp_path), str(cache_dir)), nprocs=2, join=True)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["rollbacks"] == 2 and result["stopped_by"]["kind"] == "mode_collapse"
    assert [a["action"] for a in result["alerts"]] == ["rollback", "rollback", "stop"]
    assert len(set(result["rank_fingerprints"])) == 1  # the replicas never diverged
    assert result["steps"] == result["stopped_by"]["step"]
