"""A real 2-worker Ray Train run on CPU, end to end through the CLI."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SHORT = ["--set", "model.hidden=64", "--set", "train.log_every=50", "--set", "checkpoint.every=100",
         "--set", "train.sample_every=100"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, cache_dir):
    """A 2-worker run on the local Ray it starts, and every address its processes listened on."""
    from conftest import run_cli_listening

    storage = tmp_path_factory.mktemp("runs")
    result, listening = run_cli_listening("train", "--storage", str(storage), "--name", "ray2", "--workers", "2",
                                          "--max-steps", "200", *SHORT, cache=cache_dir, timeout=400)
    return storage, result, listening


def test_run_completes(first_run):
    storage, result, _ = first_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "completed: 200 steps" in result.stdout
    assert "step 100/200" in result.stdout  # a progress line per log interval when not on a terminal
    # The local Ray starts no preemption watcher (Ray logs an error line naming it when it does)
    # and no dashboard (Ray's placement group cleaner would log that it cannot reach it).
    output = result.stdout + result.stderr
    assert "PreemptionWatcher" not in output and "PlacementGroupCleaner" not in output


def test_the_metrics_endpoint_of_a_local_run_listens_on_loopback_only(first_run):
    storage, _, listening = first_run
    target = json.loads((storage / "ray2" / "prometheus-targets.json").read_text())[0]["targets"][0]
    port = int(target.rpartition(":")[2])
    assert target.startswith("127.0.0.1:")
    assert {addr for addr, p, _ in listening if p == port} == {"127.0.0.1"}


def test_replicas_identical_on_every_rank(first_run):
    summary = json.loads((first_run[0] / "ray2" / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert len(summary["rank_fingerprints"]) == 2
    assert len(set(summary["rank_fingerprints"])) == 1
    assert summary["fingerprint"] == summary["rank_fingerprints"][0]


def test_run_directory_is_complete(first_run):
    run = first_run[0] / "ray2"
    summary = json.loads((run / "summary.json").read_text())
    for key in ("status", "steps", "world_size", "restarts", "images_per_second", "wall_seconds", "final", "eval",
                "alerts", "data", "fingerprint"):
        assert key in summary, key
    assert summary["status"] == "completed" and summary["steps"] == 200 and summary["restarts"] == 0
    assert summary["images_per_second"] > 0 and summary["wall_seconds"] > 0
    assert {"modes_covered", "num_modes", "high_quality_fraction", "mode_kl"} <= set(summary["eval"])
    assert summary["eval"]["num_modes"] == 8
    assert {"loss_d", "loss_g", "d_acc_real", "d_acc_fake", "grad_norm_d", "grad_norm_g"} <= set(summary["final"])
    assert summary["data"]["samples_seen"] == 200 * 512
    assert (run / "config.yaml").exists()
    assert sorted(p.name for p in run.glob("samples/*.png")) == ["step-000100.png", "step-000200.png"]
    history = pq.read_table(run / "history.parquet").to_pydict()
    assert history["step"] == [50, 100, 150, 200]
    # Ray Train committed each rank's part of the final checkpoint into one folder.
    final = run / "step-000200"
    assert {"state.pt", "config.yaml", "rank-00000.pt", "rank-00001.pt", "manifest-00000.json",
            "manifest-00001.json"} <= {p.name for p in final.iterdir()}


def test_same_name_finds_the_run_and_resumes(first_run, cache_dir):
    from conftest import run_cli

    storage, _, _ = first_run
    result = run_cli("train", "--storage", str(storage), "--name", "ray2", "--workers", "2", "--max-steps", "300",
                     *SHORT, cache=cache_dir, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"resuming {storage / 'ray2'} at step 200" in result.stdout
    summary = json.loads((storage / "ray2" / "summary.json").read_text())
    assert summary["steps"] == 300 and summary["status"] == "completed"
    assert len(set(summary["rank_fingerprints"])) == 1
    history = pq.read_table(storage / "ray2" / "history.parquet").to_pydict()
    assert history["step"] == [50, 100, 150, 200, 250, 300]


def test_the_trainer_starts_no_dataset_manager():
    """Ray Train's datasets callback (a DatasetManager actor importing Ray Data) is left
    out, and the placement group cleaner unless kept (a cluster with a dashboard); every
    other default callback stays. The runs above show the workers need neither."""
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    from gan_dist.integrations.ray import _Trainer, _train_fn

    def names(cls, **keep):
        trainer = cls(_train_fn, train_loop_config={}, scaling_config=ScalingConfig(num_workers=1), **keep)
        return [type(c).__name__ for c in trainer._create_default_callbacks()]

    ray_default = names(TorchTrainer)
    left_out = {"DatasetsCallback", "PlacementGroupCleanerCallback"}
    assert left_out <= set(ray_default)  # what is left out exists in this Ray
    # (no run's hub: only an elastic run's scaling policy, which is not made here, tells it anything)
    assert names(_Trainer, keep_pg_cleaner=True, hub=None) == [n for n in ray_default if n != "DatasetsCallback"]
    assert names(_Trainer, keep_pg_cleaner=False, hub=None) == [n for n in ray_default if n not in left_out]
