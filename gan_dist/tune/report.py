"""`gan-dist report TUNE`: the pages of a `gan-dist tune` directory. An overview (the tune, its
best member and that member's schedule of hyper-parameters, the members' metric over their
steps with the exploits marked, the members, the exploits table) links to a page per member,
which is the member's run report (gan_dist.report) with a link back to the overview.

Like a run's report it reads the directory's files only (tune.yaml, results.jsonl,
exploits.jsonl, tune-summary.json, member-N/), so it works on a tune still going: the
overview is rebuilt from the two logs, which the tune appends to as things happen
(records.build_summary, as the tune's own tune-summary.json is); tune-summary.json, written
when a tune session ends, gives only the status and the wall time.

Every page is made before any is written; the overview is written last.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import yaml

from gan_dist import report
from gan_dist.config import first_line, load_yaml
from gan_dist.report import REPORT_FILE, ReportError, RunFiles, check_out, data_uri, read_run
from gan_dist.rundir import write_atomic
from gan_dist.tune import records
from gan_dist.tune.spec import SPEC_FILE, TuneSpec, member_name

# What a line of each log must have (gan_dist/integrations/ray_tune.py writes them).
RESULT_FIELDS = {"time": (int, float), "member": str, "step": int, "start_step": int, "hyperparams": dict}
EXPLOIT_FIELDS = {"time": (int, float), "member": str, "source": str, "reason": str, "step": int,
                  "source_step": int, "from": dict, "to": dict}
NO_SUMMARY = "running, or ended without a summary (no tune-summary.json yet)"


def is_tune(path: Path) -> bool:
    """A tune directory: `gan-dist tune` records the resolved tune there before anything runs."""
    return (path / SPEC_FILE).is_file()


# The tune's files ------------------------------------------------------------------------

@dataclass
class TuneFiles:
    """What a tune directory holds, read and checked."""

    path: Path
    spec: TuneSpec
    summary: dict  # records.build_summary's fields, from the logs as they are now
    members: list[RunFiles | None]  # by member number; None: not started yet (no folder)


def read_spec(path: Path) -> TuneSpec:
    """tune.yaml, placed where the tune is now (a tune directory may have been moved or copied)."""
    file = path / SPEC_FILE
    try:
        spec = TuneSpec.from_record(load_yaml(file.read_text(), str(file)))
    except (ValueError, OSError, TypeError, KeyError, AttributeError) as exc:  # ConfigError is a ValueError
        raise ReportError(f"{file} is not a tune record ({first_line(exc)})") from None
    return dataclasses.replace(spec, storage=str(path.parent), name=path.name)


def read_log(path: Path, fields: dict[str, type | tuple], members: set[str]) -> list[dict]:
    """A tune log's records, each checked: a JSON object with `fields`, naming members of the
    population. A last line cut short (no newline: the tune died while appending it) is left
    out, as records.read leaves it out; any other line that does not read is damage."""
    if not path.exists():
        return []
    try:
        lines = path.read_text().split("\n")  # after a whole last line, the last item is ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path} does not read ({first_line(exc)})") from None
    out = []
    for number, line in enumerate(lines[:-1], start=1):
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise ReportError(f"{path} is damaged (line {number}: {first_line(exc)})") from None
        if not isinstance(record, dict):
            raise ReportError(f"{path} is damaged (line {number} is not a JSON object)")
        for key, kind in fields.items():
            if not isinstance(record.get(key), kind) or isinstance(record.get(key), bool):
                raise ReportError(f"{path} is damaged (line {number} has no valid {key})")
        for key in ("member", "source"):
            if key in fields and record[key] not in members:
                raise ReportError(f"{path} is damaged (line {number} names {record[key]}, not a member of the "
                                  f"population of {len(members)})")
        out.append(record)
    return out


def read_tune(path: Path) -> TuneFiles:
    """The tune at `path`; a ReportError for a damaged record or a member folder that is not a run."""
    spec = read_spec(path)
    names = [member_name(i) for i in range(spec.population)]
    results = read_log(path / records.RESULTS_FILE, RESULT_FIELDS, set(names))
    exploits = read_log(path / records.EXPLOITS_FILE, EXPLOIT_FIELDS, set(names))
    saved = report.read_summary(path / records.SUMMARY_JSON) or {}
    # From the records just checked: a tune still going may have appended lines since.
    summary = records.build_summary(spec, str(saved.get("status") or NO_SUMMARY), saved.get("wall_seconds"),
                                    results, exploits)
    # A member's folder appears when its trial starts: a tune still going may not have them all.
    members = [read_run(path / name) if (path / name).exists() else None for name in names]
    return TuneFiles(path, spec, summary, members)


# The pages -------------------------------------------------------------------------------

def page_paths(tune_dir: Path, out: Path | None, population: int) -> tuple[Path, list[Path]]:
    """Where the overview and each member's page go: by default TUNE/report.html and
    TUNE/member-N/report.html; with --out FILE, FILE and FILE's stem-member-N beside it."""
    if out is None:
        return tune_dir / REPORT_FILE, [tune_dir / member_name(i) / REPORT_FILE for i in range(population)]
    return out, [out.with_name(f"{out.stem}-{member_name(i)}{out.suffix or '.html'}") for i in range(population)]


def href(target: Path, page: Path) -> str:
    """A link from `page` to `target`, relative, so that the pages move together."""
    return quote(os.path.relpath(target, page.parent))


def _fmt(value) -> str:
    return "" if value is None else report.fmt(value)


def _values(values: dict | None, how: dict | None = None) -> str:
    """`key value` pairs, each with how a copy moved it where the record says (x0.8, drawn again)."""
    how = how or {}
    return ", ".join(f"{k} {_fmt(v)}" + (f" ({how[k]})" if k in how else "") for k, v in (values or {}).items())


def _member_link(name: str, pages: dict[str, str]) -> str:
    return f"<a href=\"{pages[name]}\">{html.escape(name)}</a>" if name in pages else html.escape(name)


def summary_section(tune: TuneFiles, pages: dict[str, str]) -> str:
    spec, s = tune.spec, tune.summary
    by_reason = s["exploits_by_reason"]
    facts: list[tuple[str, object]] = [
        ("status", s["status"]),
        ("recipe", spec.recipe),
        ("population", f"{spec.population} members, {spec.workers_per_member} worker(s) each"),
        ("ranked by", f"{spec.metric} ({'higher' if spec.mode == 'max' else 'lower'} is better)"),
        ("perturbation interval", f"{spec.perturb_every:,} steps"),
        ("steps per member", f"{spec.max_steps:,}"),
        ("mutating", ", ".join(m.text for m in spec.mutations)),
        ("steps trained (all members)", s["steps_trained"]),
        ("exploits", f"{by_reason['interval']} at intervals, {by_reason['collapse']} after collapses"),
    ]
    if s.get("wall_seconds") is not None:
        facts.append(("wall time (s)", float(s["wall_seconds"])))
    out = f"<section id=\"summary\"><h2>Summary</h2>{report.kv_table(facts)}"
    best = s["best"]
    if best is None:
        out += "<p class=\"note\">No member has reported a metric yet.</p>"
    else:
        keys = [m.key for m in spec.mutations]
        out += (f"<h3 id=\"best\">Best member: {_member_link(best['member'], pages)}, {html.escape(spec.metric)} "
                f"{html.escape(_fmt(best['metric']))}</h3>")
        if best["eval"]:
            out += report.kv_table(sorted((k, v) for k, v in best["eval"].items()))
        out += ("<p class=\"note\">Its schedule of hyper-parameters: the steps it trained itself since its last "
                "copy, and before them, back through each copy, the member it copied up to the copied step.</p>")
        rows = [[f"{seg['start']:,}&ndash;{seg['end']:,}", _member_link(seg["member"], pages),
                 *(html.escape(_fmt(seg["hyperparams"].get(k))) for k in keys)] for seg in best["schedule"]]
        out += report.table(("steps", "trained by", *map(html.escape, keys)), rows, "schedule")
    return out + "</section>"


def plot_section(tune: TuneFiles) -> str:
    png = records.summary_png(tune.spec, tune.summary)
    alt = (f"{tune.spec.metric} of each member against the step (x: replaced after a collapse, o: at an "
           f"interval); the best member's schedule of each mutated key")
    return (f"<section id=\"plots\"><h2>Metric over steps</h2><figure class=\"plot\" id=\"plot-tune\">"
            f"<img src=\"{data_uri(png)}\" alt=\"{html.escape(alt)}\"></figure></section>")


def members_section(tune: TuneFiles, pages: dict[str, str]) -> str:
    rows = []
    for i, m in enumerate(tune.summary["members"]):
        started = tune.members[i] is not None
        rows.append([_member_link(m["member"], pages), html.escape(_values(m["initial"])),
                     html.escape(_values(m["hyperparams"])), html.escape(_fmt(m["metric"])),
                     html.escape(_fmt(m["steps"])),
                     html.escape(str(m["status"] or ("running, or no summary.json" if started else "not started"))),
                     str(m["exploited"]), str(m["copied_by"])])
    head = ("member", "started with", "last values", html.escape(tune.spec.metric), "steps", "status",
            "replaced (times)", "copied by others (times)")
    return f"<section id=\"members\"><h2>Members</h2>{report.table(head, rows, 'members')}</section>"


def _alarm(e: dict) -> str:
    alarm = e.get("alarm") or {}
    return f"{alarm.get('kind')} at step {alarm.get('step')}" if alarm.get("kind") else ""


def exploits_section(tune: TuneFiles, pages: dict[str, str]) -> str:
    exploits = tune.summary["exploits"]
    if not exploits:
        return "<section id=\"exploits\"><h2>Exploits</h2><p class=\"note\">No member has copied another.</p></section>"
    rows = [[str(n), _member_link(e["member"], pages), f"{e['step']:,}", _member_link(e["source"], pages),
             f"{e['source_step']:,}", html.escape(e["reason"]), html.escape(_alarm(e)),
             html.escape(_values(e["from"])), html.escape(_values(e["to"], e.get("explore")))]
            for n, e in enumerate(exploits, start=1)]
    head = ("#", "member", "at its step", "copied", "its step", "reason", "alarm", "values before", "values after")
    note = ("<p class=\"note\">Each row: a member replaced by a copy of another's checkpoint (interval: PBT's "
            "worst quantile at a perturbation interval; collapse: a detector's alarm, at once), with perturbed "
            "values.</p>")
    return f"<section id=\"exploits\"><h2>Exploits</h2>{note}{report.table(head, rows, 'exploits')}</section>"


def spec_section(tune: TuneFiles) -> str:
    text = yaml.safe_dump(tune.spec.to_record(), sort_keys=False)
    return (f"<section id=\"config\"><h2>Tune</h2><details><summary>the resolved tune ({SPEC_FILE}, with the "
            f"base config of every member)</summary><pre>{html.escape(text)}</pre></details></section>")


def render_overview(tune: TuneFiles, pages: dict[str, str]) -> str:
    """The overview; `pages` maps each started member to its page's link from the overview."""
    name = html.escape(tune.path.name)
    return report.page(tune.path.name, f"Tune {name} <span class=\"note\">({html.escape(tune.spec.recipe)}, "
                                       f"population {tune.spec.population})</span>", tune.path,
                       f"{summary_section(tune, pages)}{plot_section(tune)}{members_section(tune, pages)}"
                       f"{exploits_section(tune, pages)}{spec_section(tune)}")


def member_nav(tune: TuneFiles, member: str, overview: str) -> str:
    """A member page's line back to the overview, and the copies that replaced this member."""
    copies = [f"at step {e['step']:,} by {e['source']}'s step {e['source_step']:,} ({e['reason']}"
              + (f": {_alarm(e)}" if _alarm(e) else "") + ")"
              for e in tune.summary["exploits"] if e["member"] == member]
    said = f"Replaced {len(copies)} time(s): {'; '.join(copies)}." if copies else "Never replaced by a copy."
    return (f"<nav id=\"tune\"><a href=\"{overview}\">&larr; tune {html.escape(tune.path.name)}</a>: "
            f"{html.escape(member)} of {tune.spec.population} members. {html.escape(said)}</nav>")


def write_tune_report(tune_dir: Path, out: Path | None = None) -> tuple[Path, list[Path]]:
    """Write the overview of the tune at `tune_dir` and a page per started member; their paths.
    A bad `out` is refused before anything is read, and every page is made before any is written."""
    if out is not None:
        check_out(out)
    tune = read_tune(tune_dir)
    overview, member_pages = page_paths(tune_dir, out, tune.spec.population)
    started = [(run, path) for run, path in zip(tune.members, member_pages) if run is not None]
    links = {run.path.name: href(path, overview) for run, path in started}
    made = [(path, report.render(run, member_nav(tune, run.path.name, href(overview, path)))) for run, path in started]
    made.append((overview, render_overview(tune, links)))
    for path, text in made:
        write_atomic(path, text.encode())
    return overview, [path for _, path in started]
