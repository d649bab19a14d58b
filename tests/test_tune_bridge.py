"""The bridge between a member's checkpoints and the population, without Ray: a member's
interval ends with a checkpoint and goes on as if never stopped; the checkpoint handed over is
a normal one, copied exactly; the member that adopts it resumes from that state with its own
hyper-parameters and random streams, and two adoptions of the same state train alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from gan_dist import checkpoint as ckpt
from gan_dist.cli import main
from gan_dist.config import Config, resolve
from gan_dist.driver import Placement, run
from gan_dist.rundir import CONFIG_FILE, write_atomic
from gan_dist.tune.bridge import ADOPTION_DRAW_BASE, ORIGIN_FILE, adopt, adopted_already, read_origin, stage
from gan_dist.tune.spec import collapse_alarm

pytestmark = [pytest.mark.unit, pytest.mark.slow]  # nine short in-process runs

SETS = ["model.hidden=32", "data.batch_size=64", "train.log_every=10", "checkpoint.every=20",
        "train.sample_every=1000", "train.max_steps=40", "metrics.port=0", "run.use_ray=false"]


def member_cfg(storage: Path, name: str, *sets: str) -> Config:
    cfg = resolve("ring8", [*SETS, *sets])
    cfg.run.name, cfg.run.storage = name, str(storage)
    return cfg


def train(cfg: Config, stop_at_step: int = 0) -> dict:
    """An interval of a member as gan-dist tune trains it (driver.run in its run directory), here
    in this process; its summary."""
    cfg.run.stop_at_step = stop_at_step
    run_dir = Path(cfg.run.storage) / cfg.run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / CONFIG_FILE, cfg.to_yaml().encode())
    return run(cfg, run_dir, Placement(1, 1.0, 0.0), session=None).summary.to_dict()


@pytest.fixture(scope="module")
def source(tmp_path_factory, cache_dir):
    """Member a stopped at step 20 of 40 and handed to the population, then trained on to 40; a
    straight run of 40 steps beside it."""
    storage = tmp_path_factory.mktemp("tune")
    paused = train(member_cfg(storage, "a"), stop_at_step=20)
    handed = storage / "handed"
    origin = stage(storage / "a", "member-0", handed)
    finished = train(member_cfg(storage, "a"))
    straight = train(member_cfg(storage, "straight"))
    return storage, handed, origin, paused, finished, straight


def test_an_interval_ends_with_a_checkpoint_and_the_run_goes_on_as_if_never_stopped(source):
    _, _, _, paused, finished, straight = source
    assert paused["status"] == "stopped" and paused["steps"] == 20 and "run.stop_at_step 20" in paused["reason"]
    assert finished["status"] == "completed" and finished["steps"] == 40
    assert finished["fingerprint"] == straight["fingerprint"]


def test_the_checkpoint_handed_over_is_a_normal_one_with_its_origin(source):
    storage, handed, origin, *_ = source
    assert origin == {"member": "member-0", "step": 20, "folder": "step-000020"}
    assert read_origin(handed) == origin
    assert ckpt.verify(handed)["step"] == 20
    assert (handed / "state.pt").read_bytes() == (storage / "a" / "step-000020" / "state.pt").read_bytes()


def test_an_adopted_checkpoint_is_exact_and_carries_the_adopters_config(source):
    storage, handed, *_ = source
    cfg = member_cfg(storage, "b", "seed=1", "optim.lr_g=1.2e-3", "optim.lr_d=1.2e-3")
    folder = adopt(handed, storage / "b", cfg, exploit=1)
    assert folder == storage / "b" / "step-000020" and ckpt.verify(folder)["step"] == 20
    assert ckpt.find_latest(storage / "b") == folder
    # The state (G, D, G_ema, the optimizers, the step, the detectors, the data cursor) byte for byte.
    assert (folder / "state.pt").read_bytes() == (handed / "state.pt").read_bytes()
    saved = yaml.safe_load((folder / CONFIG_FILE).read_text())
    assert saved["optim"]["lr_g"] == 1.2e-3 and saved["seed"] == 1 and saved["run"]["name"] == "b"
    record = ckpt.read_adoption(folder)
    assert record["draw"] == ADOPTION_DRAW_BASE + 1 and record["member"] == "member-0" and record["step"] == 20
    assert adopted_already(storage / "b", 1) and not adopted_already(storage / "b", 2)
    # A normal gan-dist checkpoint: `gan-dist sample` draws from it.
    assert main(["sample", str(folder), "--out", str(storage / "b-samples.png")]) == 0
    assert (storage / "b-samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_adoption_sets_aside_the_members_own_newer_checkpoints(tmp_path, source):
    storage, handed, *_ = source
    run_dir = tmp_path / "c"
    train(member_cfg(tmp_path, "c"))  # its own checkpoints at 20 and 40
    adopt(handed, run_dir, member_cfg(tmp_path, "c", "optim.lr_g=3e-4"), exploit=1)
    assert [f.name for f in ckpt.step_dirs(run_dir)] == ["step-000020"]
    assert sorted(p.name for p in run_dir.glob("abandoned-exploit-1-*")) == ["abandoned-exploit-1-step-000020",
                                                                           "abandoned-exploit-1-step-000040"]


def test_a_member_resumes_from_the_copy_with_random_streams_of_its_own(tmp_path, source):
    """Two members adopting the same state with the same config train bit for bit alike; a member
    that adopts its own source's state with the source's config trains apart from the source (its
    random streams are its own: PBT's explore is not a replay)."""
    _, handed, _, _, finished, _ = source
    fingerprints = {}
    for name, sets in (("x", ("optim.lr_g=1.2e-3",)), ("y", ("optim.lr_g=1.2e-3",)), ("z", ())):
        cfg = member_cfg(tmp_path, name, *sets)
        adopt(handed, tmp_path / name, cfg, exploit=1)
        summary = train(cfg)
        assert summary["status"] == "completed" and summary["steps"] == 40
        fingerprints[name] = summary["fingerprint"]
        log = json.loads((tmp_path / name / "summary.json").read_text())
        assert log["steps"] == 40
    assert fingerprints["x"] == fingerprints["y"]
    assert fingerprints["z"] != finished["fingerprint"]
    assert fingerprints["x"] != fingerprints["z"]


def test_a_diverging_member_stops_its_interval_at_once_with_a_checkpoint_and_names_the_alarm(tmp_path, cache_dir):
    """The exploit policy (what a tune sets): the interval ends at the alarm, saved, and the
    member's summary says which detector, so that the population replaces it now."""
    cfg = member_cfg(tmp_path, "bad", "optim.lr_g=3.1", "optim.lr_d=3.1", "monitor.divergence=exploit",
                     "monitor.collapse=warn", "monitor.warmup_steps=0", "monitor.patience=1",
                     "monitor.divergence_loss_limit=10")
    summary = train(cfg, stop_at_step=20)
    alarm = collapse_alarm(summary)
    assert summary["status"] == "stopped" and alarm is not None, summary.get("alerts")
    assert alarm["kind"] == "divergence" and summary["steps"] == alarm["step"] < 20
    assert ckpt.find_latest(tmp_path / "bad").name == ckpt.step_dir_name(alarm["step"])
    assert collapse_alarm(train(member_cfg(tmp_path, "good"), stop_at_step=20)) is None


def test_a_folder_without_an_origin_is_refused(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match=f"no valid {ORIGIN_FILE}"):
        read_origin(tmp_path)
