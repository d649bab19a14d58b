"""`gan-dist report` on a tune directory, without Ray (tests/tune_helpers.py makes one from the
real spec, a real short run and the logs as the tune appends them): the overview (summary, best
member and its schedule, the metric plot, members, exploits) and a page per member that is
the member's run report with a link back; --out; a tune still going. The overview of a real
tune opened in Chromium is in tests/test_tune_ray.py; the bad input in tests/test_bad_input.py."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from gan_dist.cli import main
from gan_dist.tune import records
from gan_dist.tune.report import NO_SUMMARY
from test_report import inlined_images
from tune_helpers import COPIED_LR_FACTOR, make_tune

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def completed_run(tmp_path_factory, cache_dir) -> Path:
    """A completed 4-step ring8 run without Ray: each member of the made tune is a copy of it."""
    root = tmp_path_factory.mktemp("run")
    assert main(["train", "--no-ray", "--max-steps", "4", "--storage", str(root), "--name", "run",
                 "--set", "checkpoint.every=2", "--set", "train.log_every=2", "--set", "metrics.port=0"]) == 0
    return root / "run"


@pytest.fixture
def tune(tmp_path, completed_run) -> Path:
    return make_tune(tmp_path, completed_run)


def links(page: str, at: Path) -> dict[str, Path]:
    """Each link's text -> the file it resolves to from the page at `at`."""
    return {html.unescape(re.sub(r"<[^>]+>", "", text)): (at.parent / unquote(target)).resolve()
            for target, text in re.findall(r'<a href="([^"]+)">(.*?)</a>', page)}


def table_rows(page: str, css: str) -> list[list[str]]:
    """The text of each body cell of the table of class `css`."""
    body = page.split(f'<table class="{css}">')[1].split("</table>")[0].split("<tbody>")[1]
    return [[html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td>(.*?)</td>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", body)]


def test_a_tune_gets_an_overview_and_a_page_per_member_linked_both_ways(tune, capsys):
    assert main(["report", str(tune)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"wrote {tune / 'report.html'} (the tune's overview)", f"wrote {tune / 'member-0/report.html'}",
                   f"wrote {tune / 'member-1/report.html'}"]
    overview = (tune / "report.html").read_text()
    summary = json.loads((tune / records.SUMMARY_JSON).read_text())
    lr0, lr1 = (m["initial"]["optim.lr"] for m in summary["members"])

    assert "<th>status</th><td>completed</td>" in overview and "<th>wall time (s)</th><td>12.5</td>" in overview
    assert "<th>exploits</th><td>0 at intervals, 1 after collapses</td>" in overview
    assert 'Best member: <a href="member-0/report.html">member-0</a>, hq_coverage 0.7</h3>' in overview
    assert table_rows(overview, "schedule") == [["0\u20132", "member-0", f"{lr0:.4g}"], ["2\u20134", "member-0", f"{lr0:.4g}"]]
    assert table_rows(overview, "exploits") == [
        ["1", "member-1", "2", "member-0", "2", "collapse", "divergence at step 2", f"optim.lr {lr1:.4g}",
         f"optim.lr {lr0 * COPIED_LR_FACTOR:.4g}"]]
    members = table_rows(overview, "members")
    assert [row[0] for row in members] == ["member-0", "member-1"]
    assert [row[3:8] for row in members] == [["0.7", "4", "completed", "0", "1"], ["0.6", "4", "completed", "1", "0"]]
    [plot] = inlined_images(overview)  # the metric plot, drawn as the tune's own tune-summary.png is
    assert plot[:8] == b"\x89PNG\r\n\x1a\n" and 'id="plot-tune"' in overview

    targets = links(overview, tune / "report.html")
    assert targets["member-0"] == tune / "member-0/report.html" and targets["member-1"] == tune / "member-1/report.html"
    for name in ("member-0", "member-1"):
        page = (tune / name / "report.html").read_text()
        assert links(page, tune / name / "report.html")["← tune pbt"] == tune / "report.html"
        # The member's own run report under the link: its summary, plots and samples.
        assert f"<h1>Run {name} " in page and 'id="plot-losses"' in page and 'id="samples"' in page
    member1 = (tune / "member-1/report.html").read_text()
    assert "Replaced 1 time(s): at step 2 by member-0&#x27;s step 2 (collapse: divergence at step 2)." in member1
    assert "Never replaced by a copy." in (tune / "member-0/report.html").read_text()


def test_a_member_folder_alone_still_gets_a_plain_run_report(tune, capsys):
    """A member's folder is a run: `gan-dist report TUNE/member-0` is the single-run report, no tune link."""
    assert main(["report", str(tune / "member-0")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tune / 'member-0/report.html'}"
    page = (tune / "member-0/report.html").read_text()
    assert 'id="plot-losses"' in page and "<nav" not in page
    assert not (tune / "report.html").exists()


def test_out_names_the_overview_and_the_member_pages_go_beside_it(tune, tmp_path, capsys):
    before = sorted(tune.rglob("*"))
    (tmp_path / "pages").mkdir()
    out = tmp_path / "pages" / "pbt-tune.html"
    assert main(["report", str(tune), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["pbt-tune-member-0.html", "pbt-tune-member-1.html",
                                                            "pbt-tune.html"]
    assert sorted(tune.rglob("*")) == before  # nothing written into the tune
    targets = links(out.read_text(), out)
    assert targets["member-1"] == out.parent / "pbt-tune-member-1.html"
    assert links((out.parent / "pbt-tune-member-1.html").read_text(), out)["← tune pbt"] == out


def test_a_tune_still_going_gets_an_overview_from_its_logs(tune, capsys):
    """No tune-summary.json yet, member-1 not started, and a last line of results.jsonl cut short by
    a crash: the overview says so, from the logs as they are."""
    (tune / records.SUMMARY_JSON).unlink()
    for path in sorted((tune / "member-1").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (tune / "member-1").rmdir()
    with open(tune / records.RESULTS_FILE, "a") as log:
        log.write('{"time": 6.0, "member": "member-0", "st')
    assert main(["report", str(tune)]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [f"wrote {tune / 'member-0/report.html'}"]
    overview = (tune / "report.html").read_text()
    assert f"<th>status</th><td>{NO_SUMMARY}</td>" in overview and "wall time" not in overview
    members = table_rows(overview, "members")
    assert members[1][0] == "member-1" and members[1][5] == "not started"
    assert set(links(overview, tune / "report.html")) == {"member-0"}  # no page, no link
    assert not (tune / "member-1").exists()
