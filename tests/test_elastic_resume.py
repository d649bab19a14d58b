"""A checkpoint written at one world size restores at another (issue 22, item 5): a 2-rank
run stopped at step 30 goes on to step 60 on 1 rank and on 3 ranks. Real gloo process groups
running the whole worker (`train_worker`), no Ray: the resize itself (which Ray Train starts)
is in tests/test_elastic.py."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from gan_dist import checkpoint as ckpt
from gan_dist.config import resolve

pytestmark = pytest.mark.gloo

BATCH = 96  # every world size from 1 to 3 divides it
OVERRIDES = ["model.hidden=32", f"data.batch_size={BATCH}", "run.name=resize", "train.log_every=10",
             "checkpoint.every=30", "train.sample_every=1000", "train.max_steps=60", "metrics.enabled=false"]


def _worker(rank: int, world_size: int, run_dir: str, cache: str, stop_at: int) -> None:
    from conftest import join_gloo_group, leave_gloo_group

    os.environ["GAN_DIST_CACHE"] = cache
    join_gloo_group(rank, world_size, f"{run_dir}-store-{world_size}")
    from gan_dist.checkpoint import LocalSink
    from gan_dist.monitor.hub import RunHub
    from gan_dist.trainer.loop import train_worker

    cfg = resolve("ring8", OVERRIDES + [f"run.stop_at_step={stop_at}"])
    result = train_worker(cfg, Path(run_dir), LocalSink(Path(run_dir), cfg.checkpoint), RunHub(60, False))
    if rank == 0:
        Path(f"{run_dir}-result-{world_size}.json").write_text(json.dumps(
            {"steps": result.steps, "world_size": result.world_size, "samples_seen": result.data.samples_seen,
             "rank_fingerprints": result.rank_fingerprints}))
    leave_gloo_group()


def _train(run_dir: Path, world_size: int, cache_dir: Path, stop_at: int = 0) -> dict:
    mp.spawn(_worker, args=(world_size, str(run_dir), str(cache_dir), stop_at), nprocs=world_size, join=True)
    return json.loads(Path(f"{run_dir}-result-{world_size}.json").read_text())


@pytest.fixture(scope="module")
def two_rank_checkpoint(tmp_path_factory, cache_dir) -> Path:
    run_dir = tmp_path_factory.mktemp("resize") / "two"
    result = _train(run_dir, 2, cache_dir, stop_at=30)
    assert result["steps"] == 30 and result["world_size"] == 2
    return run_dir


@pytest.mark.parametrize("world_size", [1, 3])
def test_a_two_rank_checkpoint_resumes_on_another_number_of_ranks(two_rank_checkpoint, cache_dir, tmp_path,
                                                                   world_size):
    run_dir = tmp_path / f"on{world_size}"
    shutil.copytree(two_rank_checkpoint, run_dir)
    result = _train(run_dir, world_size, cache_dir)
    assert result["steps"] == 60 and result["world_size"] == world_size
    # Every rank ends with the same weights: the restored shared state, then DDP.
    assert len(result["rank_fingerprints"]) == world_size and len(set(result["rank_fingerprints"])) == 1
    # The global batch was kept: 30 steps of 96 samples on 2 ranks, 30 more on the new ranks,
    # and the counts the 2 ranks had were shared out, not lost or counted twice.
    assert result["samples_seen"] == 60 * BATCH
    final = run_dir / "step-000060"
    assert ckpt.verify(final)["world_size"] == world_size
    old = [ckpt.load_rank(run_dir / "step-000030", r) for r in range(2)]
    new = [ckpt.load_rank(final, r) for r in range(world_size)]
    assert sum(state["data"]["samples_seen"] for state in new) == 60 * BATCH
    # The pass went on where it was (ring8: 512 records of 256 samples, one pass = 131,072
    # samples), not at a new epoch as a resize did before.
    assert {state["data"]["cursor"]["epoch"] for state in new} == {0}
    # A rank the resize added draws a z stream of its own: no two ranks share one.
    streams = {bytes(torch.Generator().set_state(state["noise"]).get_state().numpy()) for state in new}
    assert len(streams) == world_size
    assert old[0]["data"]["world_size"] == 2 and all(state["data"]["world_size"] == world_size for state in new)
