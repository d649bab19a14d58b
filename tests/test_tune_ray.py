"""`gan-dist tune` end to end on a real local Ray: a population of 2 ring8 members as Ray Tune
trials, PBT's copies at the perturbation intervals, a member made to diverge (a seeded bad
learning rate) replaced at once by a copy of the healthy one, the tune directory, and the same
command again resuming the finished tune. One tune for the module: it is the expensive part."""

from __future__ import annotations

import json
import re
from urllib.parse import unquote

import pytest

from conftest import run_cli
from gan_dist import checkpoint as ckpt
from gan_dist.cli import main
from gan_dist.tune import records
from test_report import chromium
from tune_helpers import assert_resumes_without_training, run_tune

# The module's one tune runs in the first test's set-up: on a loaded machine it can pass the suite's 600 s.
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(1500)]

# Seed 1 draws lrs of 5.2e-4 (member-0, healthy) and 3.1 (member-1: its losses pass 10 within
# ten steps) from the range. The divergence detector acts from the first log interval, on one
# interval's evidence; mode collapse only warns (ten steps in, every member is collapsed).
TUNE = ["tune", "ring8", "--population", "2", "--mutate", "optim.lr=1e-4:20:log", "--metric", "mode_kl",
        "--max-steps", "40", "--perturb-every", "20", "--name", "pbt",
        "--set", "seed=1", "--set", "model.hidden=32", "--set", "data.batch_size=64", "--set", "train.log_every=10",
        "--set", "train.sample_every=1000", "--set", "metrics.port=0", "--set", "eval.num_samples=200",
        "--set", "monitor.warmup_steps=0", "--set", "monitor.patience=1", "--set", "monitor.collapse=warn",
        "--set", "monitor.divergence_loss_limit=10",
        # Every checkpoint kept (4 a member): how many a member writes after its copy depends on
        # the order the members report in, and with the tune's 2 kept the copied step can be gone.
        "--set", "checkpoint.keep=10"]


@pytest.fixture(scope="module")
def tune_run(tmp_path_factory, cache_dir):
    return run_tune(TUNE, tmp_path_factory.mktemp("tunes"), cache_dir)


def test_the_plan_names_each_members_draw(tune_run):
    _, result = tune_run
    assert "member-0          optim.lr 0.0005155" in result.stdout
    assert "member-1          optim.lr 3.107" in result.stdout


def test_the_diverging_member_is_replaced_at_once_by_a_copy_of_the_healthy_one(tune_run):
    tune_dir, result = tune_run
    exploits = records.read(tune_dir / records.EXPLOITS_FILE)
    collapses = [e for e in exploits if e["reason"] == "collapse"]
    assert collapses, exploits
    first = collapses[0]
    assert first["member"] == "member-1" and first["source"] == "member-0"
    assert first["alarm"]["kind"] == "divergence"
    # At once: the copy is made at the alarm's report, not at the next perturbation interval.
    assert first["step"] == first["alarm"]["step"]
    assert first["from"]["optim.lr"] == pytest.approx(3.107, rel=1e-3)
    assert 1e-4 <= first["to"]["optim.lr"] <= 20
    assert "exploit (collapse: divergence at step" in result.stdout
    # The collapsed interval is in the results, flagged.
    reported = records.read(tune_dir / records.RESULTS_FILE)
    assert any(r["member"] == "member-1" and r["collapsed"] for r in reported)
    # The member adopted member-0's checkpoint: a normal gan-dist checkpoint, with member-1's config.
    adopted = [f for f in ckpt.step_dirs(tune_dir / "member-1") if ckpt.read_adoption(f) is not None]
    assert adopted
    record = ckpt.read_adoption(adopted[-1])
    assert record["member"] == "member-0"
    ckpt.verify(adopted[-1])
    assert ckpt.read_config(adopted[-1]).run.name == "member-1"


def test_every_copy_is_recorded_whole(tune_run):
    """Which interval copies an asynchronous PBT makes depends on the order the members report
    in; whatever they are, each names its source, the copied step and values within the range."""
    tune_dir, _ = tune_run
    exploits = records.read(tune_dir / records.EXPLOITS_FILE)
    assert exploits
    for e in exploits:
        assert e["source"] != e["member"] and e["source_step"] % 10 == 0 and e["reason"] in ("interval", "collapse")
        assert 1e-4 <= e["to"]["optim.lr"] <= 20 and e["exploit"] >= 1
        # How the value moved, and it agrees with the values (x0.8, x1.2, drawn again; or cut to the range).
        how = e["explore"]["optim.lr"]
        assert how in ("x0.8", "x1.2", "drawn again") or how.endswith(", kept in range"), how


def test_the_tune_directory_holds_every_member_and_the_summary(tune_run):
    tune_dir, result = tune_run
    for name in ("tune.yaml", "results.jsonl", "exploits.jsonl", "tune-summary.json", "tune-summary.png",
                 "prometheus-targets.json", "member-0", "member-1", "ray-tune"):
        assert (tune_dir / name).exists(), name
    summary = json.loads((tune_dir / records.SUMMARY_JSON).read_text())
    assert summary["status"] == "completed" and summary["population"] == 2
    assert summary["exploits_by_reason"]["collapse"] >= 1
    for member in summary["members"]:
        assert member["steps"] == 40 and member["status"] == "completed"
    best = summary["best"]
    assert best["member"] in ("member-0", "member-1") and "mode_kl" in best["eval"]
    assert best["schedule"][0]["start"] == 0 and best["schedule"][-1]["end"] == 40
    assert (tune_dir / records.SUMMARY_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    target = json.loads((tune_dir / "prometheus-targets.json").read_text())[0]
    assert target["labels"] == {"tune": "pbt", "recipe": "ring8"}
    assert f"best: {best['member']}" in result.stdout


def rendered(dom: str) -> tuple[int, int]:
    """(images loaded, images) as the page's own script put them on <body> once it had loaded."""
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-rendered="yes"' in body, body
    loaded, total = map(int, re.search(r'data-images-loaded="(\d+)/(\d+)"', body).groups())
    return loaded, total


def test_the_tunes_report_renders_in_a_real_browser_and_links_each_member(tune_run, tmp_path, capsys):
    """Chromium loads the overview from a file with the network shut off (its screenshot kept in
    the tune directory as report.png): the metric plot loaded, the collapse exploit's row is in
    the table, and each member's link opens that member's page, which links back."""
    tune_dir, _ = tune_run
    assert main(["report", str(tune_dir)]) == 0
    overview = tune_dir / "report.html"
    shot = tune_dir / "report.png"  # CI's evidence of what the overview looked like
    result = chromium(overview.as_uri(), tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,2400")
    assert shot.is_file(), result.stderr[-2000:]
    dom = chromium(overview.as_uri(), tmp_path / "profile-dom", "--dump-dom").stdout
    assert rendered(dom) == (1, 1) and 'id="plot-tune"' in dom

    first = next(e for e in records.read(tune_dir / records.EXPLOITS_FILE) if e["reason"] == "collapse")
    rows = re.findall(r"<tr>(.*?)</tr>", dom.split('<table class="exploits">')[1].split("</table>")[0])
    cells = [[re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td>(.*?)</td>", row)] for row in rows]
    assert [first["member"], str(first["step"]), first["source"], str(first["source_step"]), "collapse",
            f"divergence at step {first['alarm']['step']}"] in [row[1:7] for row in cells], cells

    members = dict((text, target) for target, text in re.findall(r'<a href="([^"]+)">(member-\d)</a>', dom))
    assert set(members) == {"member-0", "member-1"}
    for name, target in members.items():
        page = (overview.parent / unquote(target)).resolve()
        assert page == tune_dir / name / "report.html"
        member_dom = chromium(page.as_uri(), tmp_path / f"profile-{name}", "--dump-dom").stdout
        loaded, total = rendered(member_dom)
        assert loaded == total > 0 and 'id="plot-losses"' in member_dom
        back = re.search(r'<nav id="tune"><a href="([^"]+)">', member_dom).group(1)
        assert (page.parent / unquote(back)).resolve() == overview


def test_the_same_command_again_resumes_the_finished_tune(tune_run, cache_dir):
    tune_dir, _ = tune_run
    assert_resumes_without_training(TUNE, tune_dir, cache_dir)
    changed = run_cli(*TUNE, "--storage", str(tune_dir.parent), "--set", "optim.beta1=0.9", cache=cache_dir)
    assert changed.returncode == 2 and "tune pbt was started with config.optim.beta1=0.5, not 0.9" in changed.stderr


def test_a_tune_ended_before_every_member_reached_its_last_step_is_stopped_not_completed():
    """Tune answers Ctrl-C (and our SIGTERM, through its handler) by ending the trials and
    returning as if done: the members' last reports tell a stopped tune from a completed one."""
    from types import SimpleNamespace

    from gan_dist.integrations.ray_tune import population_status

    def member(i, step=None, error=None):
        return SimpleNamespace(config={"member": i}, metrics={} if step is None else {"step": step}, error=error)

    assert population_status([member(0, 40), member(1, 40)], 40) == ("completed", [])
    assert population_status([member(0, 40), member(1, 20)], 40) == ("stopped", [])
    assert population_status([member(0, 40), member(1)], 40) == ("stopped", [])  # no report at all
    assert population_status([member(0, 20), member(1, 20, RuntimeError("x"))], 40) == ("failed", ["member-1"])


def test_a_sigterm_stops_the_tune_through_tunes_own_handler_and_a_second_one_at_once():
    import os
    import signal

    from gan_dist.integrations.ray_tune import _sigterm_stops_tune

    asked, before = [], signal.getsignal(signal.SIGTERM)
    previous_usr1 = signal.signal(signal.SIGUSR1, lambda signum, frame: asked.append(signum))  # as Tune's fit does
    try:
        with _sigterm_stops_tune():
            os.kill(os.getpid(), signal.SIGTERM)
            assert asked == [signal.SIGUSR1]
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGTERM)
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)  # before Tune's handler is in place: at once
        with pytest.raises(KeyboardInterrupt), _sigterm_stops_tune():
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        signal.signal(signal.SIGUSR1, previous_usr1)
    assert signal.getsignal(signal.SIGTERM) is before
