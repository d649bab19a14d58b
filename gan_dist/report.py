"""`gan-dist report RUN`: one self-contained HTML page of a run, to read offline or attach to
a bug or a paper draft: the summary, plots of the history (matplotlib, with axes, units and
step numbers), the sample grids over time, the alerts and the config. Every image is inlined
as a data: URI, so the page loads nothing from anywhere.

It reads the run directory's files only (config.yaml, summary.json, history.parquet, samples/,
error.log), so it works on a run still going (history.parquet is rewritten at every checkpoint;
summary.json comes at the end) and on a failed one (whatever it left). A tune directory's
overview and its members' pages (this page with a link back): gan_dist.tune.report.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from gan_dist import __version__
from gan_dist.config import first_line, load_yaml
from gan_dist.rundir import CONFIG_FILE, ERROR_LOG, HISTORY_FILE, SUMMARY_FILE, write_atomic
from gan_dist.visualize import png_text

REPORT_FILE = "report.html"
SAMPLES_DIR = "samples"
MAX_STRIP = 12  # sample grids in the strip: the first, the last and evenly spaced ones between
ERROR_LOG_LINES = 40  # the end of a failed run's traceback shown on the page


class ReportError(ValueError):
    """Not a run, or a run whose files cannot be read: one line, exit 2."""


# The run's files --------------------------------------------------------------------------

@dataclass
class RunFiles:
    """What a run directory holds, read and checked."""

    path: Path
    config: dict
    summary: dict | None  # None while the run goes on (or if it was killed before writing one)
    rows: list[dict]  # history.parquet; [] before the first checkpoint
    samples: list[tuple[int, Path]]  # (step, grid PNG), by step
    error_log: str = ""


def read_run(path: Path) -> RunFiles:
    """The run at `path`; a ReportError for a folder that is not a run or a file that does not read."""
    if not path.is_dir():
        raise ReportError(f"{path} is not a run directory (no such folder)")
    if not (path / CONFIG_FILE).is_file():
        raise ReportError(f"{path} is not a run directory (it has no {CONFIG_FILE})")
    try:
        config = load_yaml((path / CONFIG_FILE).read_text(), str(path / CONFIG_FILE))
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path / CONFIG_FILE} does not read ({first_line(exc)})") from None
    if not isinstance(config, dict):
        raise ReportError(f"{path / CONFIG_FILE} is not a config (a mapping of sections)")
    error_log = path / ERROR_LOG
    return RunFiles(path, config, read_summary(path / SUMMARY_FILE), read_history(path / HISTORY_FILE),
                    sample_grids(path / SAMPLES_DIR),
                    error_log.read_text(errors="replace") if error_log.is_file() else "")


def read_summary(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ReportError(f"{path} is damaged ({first_line(exc)})") from None
    if not isinstance(summary, dict):
        raise ReportError(f"{path} is damaged (not a JSON object)")
    return summary


def read_history(path: Path) -> list[dict]:
    """history.parquet's rows; [] when the run has not written it yet. An empty or damaged file
    is an error: a run writes it whole (atomically), with a row per log interval."""
    if not path.exists():
        return []
    if path.is_file() and path.stat().st_size == 0:
        raise ReportError(f"{path} is empty (0 bytes)")
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow's errors for a file that is not Parquet, truncated or unreadable
        raise ReportError(f"{path} is damaged ({type(exc).__name__}: {first_line(exc)})") from None
    if not rows:
        raise ReportError(f"{path} is empty (no rows)")
    if not all(isinstance(row.get("step"), int) for row in rows):
        raise ReportError(f"{path} is damaged (rows without a step)")
    return rows


def sample_grids(folder: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in folder.glob("step-*.png") if (m := re.fullmatch(r"step-(\d+)\.png", p.name))]
    return sorted(found)


def strip(grids: list, n: int = MAX_STRIP) -> list:
    """At most n of `grids`, evenly spaced, the first and the last among them."""
    if len(grids) <= n:
        return list(grids)
    return [grids[round(k * (len(grids) - 1) / (n - 1))] for k in range(n)]


# Alerts ----------------------------------------------------------------------------------

def alert_events(run: RunFiles) -> list[dict]:
    """The detectors' events: summary.json's, or while there is none, each rise of a row's
    alert_KIND flag (the step where it fired; its onset is not in the history)."""
    if run.summary is not None:
        return list(run.summary.get("alerts") or [])
    events, raised = [], set()
    for row in run.rows:
        for key, value in row.items():
            if key.startswith("alert_") and value and key not in raised:
                events.append({"step": row["step"], "kind": key[len("alert_"):], "onset_step": None,
                               "action": "(from the history's flags)"})
            (raised.add if value else raised.discard)(key)
    return events


# Plots -----------------------------------------------------------------------------------

@dataclass
class Series:
    field: str
    label: str


@dataclass
class Plot:
    """One chart of the history: fields against the step, on one or two y axes."""

    key: str
    title: str
    ylabel: str
    series: list[Series]
    right_label: str = ""  # a second y axis for `right`
    right: list[Series] = field(default_factory=list)
    log: bool = False  # a log y axis, when every value is positive
    ylim: tuple[float, float] | None = None
    alerts: bool = False  # mark the alerts' onsets
    sample_count: str = ""  # a field with the samples behind each value (a periodic eval's n), for the title


PLOTS = [
    Plot("losses", "Losses", "loss (mean over the log interval)",
         [Series("loss_d", "D"), Series("loss_g", "G"), Series("gradient_penalty", "gradient penalty"),
          Series("r1_penalty", "R1 penalty"), Series("class_loss_d", "class loss D"),
          Series("class_loss_g", "class loss G"), Series("content_loss", "content loss")]),
    Plot("d_accuracy", "D's accuracy on real and fake samples", "fraction classified correctly",
         [Series("d_acc_real", "on real"), Series("d_acc_fake", "on fake")], ylim=(-0.02, 1.02)),
    Plot("gradients", "Gradient norms", "L2 norm (mean per update)",
         [Series("grad_norm_d", "D"), Series("grad_norm_g", "G")], log=True),
    Plot("collapse", "Collapse score and signals (alert onsets marked)", "score or ratio",
         [Series("collapse_score", "collapse score"), Series("mode_coverage_ratio", "mode coverage"),
          Series("diversity_ratio", "diversity ratio"), Series("duplicate_rate", "duplicate rate")], alerts=True),
    Plot("throughput", "Throughput and data wait", "samples/s (all ranks)",
         [Series("samples_per_second", "samples/s")], right_label="data wait (fraction of the step time)",
         right=[Series("data_wait_fraction", "data wait")]),
    Plot("fid", "FID of G_ema (periodic evals)", "FID (lower is better)", [Series("fid", "FID")],
         right_label="KID", right=[Series("kid", "KID")], sample_count="eval_n"),
    Plot("precision_recall", "Precision and recall of G_ema (periodic evals)", "fraction",
         [Series("precision", "precision"), Series("recall", "recall")], ylim=(-0.02, 1.02), sample_count="eval_n"),
]


def points(rows: list[dict], name: str) -> tuple[list[int], list[float]]:
    """(steps, values) of a field, leaving out rows without a finite value (periodic evals
    fill their fields at eval steps only)."""
    pairs = [(row["step"], float(row[name])) for row in rows
             if isinstance(row.get(name), (int, float)) and math.isfinite(row[name])]
    return [s for s, _ in pairs], [v for _, v in pairs]


def _draw(ax, rows: list[dict], series: list[Series], style: str, first_color: int = 0) -> list:
    """Each series with points, in matplotlib's colours from `first_color` on (so that a second
    y axis does not repeat the first one's); dots on short series."""
    lines = []
    for k, s in enumerate(series):
        steps, values = points(rows, s.field)
        if steps:
            lines += ax.plot(steps, values, style, color=f"C{(first_color + k) % 10}",
                             marker="o" if len(steps) <= 30 else None, markersize=3, label=s.label)
    return lines


def plot_title(plot: Plot, rows: list[dict]) -> str:
    """The chart's title; a periodic eval's adds its sample count (FID is biased up at small n)."""
    counts = sorted({int(n) for n in points(rows, plot.sample_count)[1]}) if plot.sample_count else []
    return plot.title + (f", {' / '.join(map(str, counts))} samples a side" if counts else "")


def plot_png(plot: Plot, rows: list[dict], alerts: list[dict]) -> bytes | None:
    """The chart as PNG bytes; None when the history has none of its fields."""
    if not any(points(rows, s.field)[0] for s in plot.series + plot.right):
        return None
    fig = Figure(figsize=(8.0, 3.4), dpi=100, layout="constrained")
    ax = fig.subplots()
    lines = _draw(ax, rows, plot.series, "-")
    if plot.right and any(points(rows, s.field)[0] for s in plot.right):
        twin = ax.twinx()
        lines += _draw(twin, rows, plot.right, "--", first_color=len(plot.series))
        twin.set_ylabel(plot.right_label)
    if plot.log and all(v > 0 for s in plot.series for v in points(rows, s.field)[1]):
        ax.set_yscale("log")
    if plot.ylim:
        ax.set_ylim(*plot.ylim)
    if plot.alerts:
        lines += _mark_alerts(ax, alerts)
    ax.set_title(plot_title(plot, rows))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("training step")
    ax.set_ylabel(plot.ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(handles=lines, fontsize="small", loc="best")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _mark_alerts(ax, alerts: list[dict]) -> list:
    """A dotted line at each alert's onset (where it fired, when the onset is unknown) and a
    dashed one where each rollback took the run back to."""
    handles = []
    for event in alerts:
        at = event.get("onset_step") if event.get("onset_step") is not None else event["step"]
        handles.append(ax.axvline(at, color="tab:red", linestyle=":", linewidth=1.2,
                                  label=f"{event['kind']} from step {at} ({event['action']})"))
        if event.get("to_step") is not None:
            handles.append(ax.axvline(event["to_step"], color="tab:purple", linestyle="--", linewidth=1.2,
                                      label=f"rolled back to step {event['to_step']}"))
    return handles


# The page --------------------------------------------------------------------------------

def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def kv_table(rows: list[tuple[str, object]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(fmt(v))}</td></tr>" for k, v in rows)
    return f"<table class=\"kv\">{cells}</table>"


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def summary_section(run: RunFiles) -> str:
    s = run.summary or {}
    last_step = run.rows[-1]["step"] if run.rows else None
    max_steps = (run.config.get("train") or {}).get("max_steps")
    status = s.get("status") or "running, or ended without a summary (no summary.json yet)"
    facts: list[tuple[str, object]] = [
        ("status", status),
        ("steps", f"{fmt(s.get('steps', last_step if last_step is not None else 0))} of {fmt(max_steps)}"),
        ("world size", s.get("world_size", (run.config.get("run") or {}).get("workers", "?"))),
        ("restarts", s.get("restarts", "?")),
        ("rollbacks", s.get("rollbacks", run.rows[-1].get("rollbacks", 0) if run.rows else 0)),
        ("alerts", len(alert_events(run))),
    ]
    if s:
        facts += [("samples/s", s.get("images_per_second", 0.0)), ("wall time (s)", s.get("wall_seconds", 0.0)),
                  ("samples seen", (s.get("data") or {}).get("samples_seen", 0)),
                  ("corrupt samples", (s.get("data") or {}).get("corrupt_samples", 0))]
    if s.get("error") or s.get("reason"):
        facts.append(("error" if s.get("error") else "reason", s.get("error") or s.get("reason")))
    out = f"<section id=\"summary\"><h2>Summary</h2>{kv_table(facts)}"
    if s.get("eval"):
        out += "<h3>Eval</h3>" + kv_table(sorted(s["eval"].items()))
    if run.error_log:
        tail = "\n".join(run.error_log.rstrip().splitlines()[-ERROR_LOG_LINES:])
        out += f"<h3>{ERROR_LOG} (its last lines)</h3><pre class=\"log\">{html.escape(tail)}</pre>"
    return out + "</section>"


def plots_section(run: RunFiles, alerts: list[dict]) -> str:
    if not run.rows:
        return ("<section id=\"plots\"><h2>Plots</h2><p class=\"note\">No history yet: history.parquet is "
                "written at the run's first checkpoint.</p></section>")
    figures = []
    for plot in PLOTS:
        png = plot_png(plot, run.rows, alerts)
        if png is not None:
            figures.append(f"<figure class=\"plot\" id=\"plot-{plot.key}\"><img src=\"{data_uri(png)}\" "
                           f"alt=\"{html.escape(plot_title(plot, run.rows))}\"></figure>")
    note = (f"<p class=\"note\">{len(run.rows)} log intervals, steps {run.rows[0]['step']} to "
            f"{run.rows[-1]['step']} (history.parquet is rewritten at every checkpoint and at the end).</p>")
    return f"<section id=\"plots\"><h2>Plots</h2>{note}{''.join(figures)}</section>"


def grid_alt(step: int, text: dict[str, str]) -> str:
    """A grid's alt text from its PNG text chunks (visualize.png_text): its caption and, for a
    conditional G, the class of each row."""
    alt = text.get("caption") or f"samples at step {step}"
    return alt + (f"; rows, one class each: {text['rows']}" if text.get("rows") else "")


def samples_section(run: RunFiles) -> str:
    """The strip of grids, inlined as the run wrote them (caption band, a conditional G's row
    labels); under it, the classes of the rows as the grids' text chunks name them."""
    shown = [(step, path.read_bytes()) for step, path in strip(run.samples)]
    if not shown:
        return "<section id=\"samples\"><h2>Samples</h2><p class=\"note\">No sample grids yet.</p></section>"
    texts = [png_text(png) for _, png in shown]
    figures = "".join(f"<figure class=\"sample\"><img src=\"{data_uri(png)}\" "
                      f"alt=\"{html.escape(grid_alt(step, text))}\"><figcaption>step {step:,}</figcaption></figure>"
                      for (step, png), text in zip(shown, texts))
    note = f"<p class=\"note\">G_ema on fixed noise: {len(shown)} of the run's {len(run.samples)} grids.</p>"
    rows = texts[-1].get("rows")
    if rows:
        note += (f"<p class=\"rows\">Rows, one class each, from the top: "
                 f"{html.escape(', '.join(rows.split(' | ')))}.</p>")
    return f"<section id=\"samples\"><h2>Samples over time</h2>{note}<div class=\"strip\">{figures}</div></section>"


def table(head: tuple[str, ...], rows: list[list[str]], css: str) -> str:
    """A table with a header row, of cells already in HTML."""
    cells = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return (f"<table class=\"{css}\"><thead><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr></thead>"
            f"<tbody>{cells}</tbody></table>")


def alerts_section(alerts: list[dict]) -> str:
    if not alerts:
        return "<section id=\"alerts\"><h2>Alerts</h2><p class=\"note\">No detector fired.</p></section>"
    rows = []
    for e in alerts:
        evidence = ", ".join(f"{k} {fmt(v)}" for k, v in (e.get("evidence") or {}).items())
        cells = (e.get("step"), e.get("kind"), e.get("onset_step"), e.get("action"), e.get("to_step"), evidence,
                 e.get("note", ""))
        rows.append([html.escape("" if c is None else fmt(c)) for c in cells])
    head = ("step", "kind", "since step", "action", "rolled back to", "evidence", "note")
    return f"<section id=\"alerts\"><h2>Alerts</h2>{table(head, rows, 'alerts')}</section>"


def config_section(run: RunFiles) -> str:
    text = yaml.safe_dump(run.config, sort_keys=False)
    return (f"<section id=\"config\"><h2>Config</h2><details><summary>the resolved config ({CONFIG_FILE})"
            f"</summary><pre>{html.escape(text)}</pre></details></section>")


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0; } th, td { padding: .2em .8em; border: 1px solid #ddd; }
table.kv th { text-align: left; background: #f5f5f5; font-weight: normal; }
.note { color: #666; } figure { margin: .5em 0; } figure.plot img { max-width: 100%; }
.strip { display: flex; gap: .8em; overflow-x: auto; padding-bottom: .5em; }
.strip figure { flex: none; text-align: center; } .strip img { height: 240px; image-rendering: pixelated; }
nav { background: #eef3f8; padding: .5em .8em; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; } pre.log { max-height: 30em; }
"""

# Once every image has loaded, the body says so (`data-images-loaded="N/M"`, `data-rendered`):
# a headless browser's --dump-dom shows it, which is how the report's test knows the page rendered.
LOAD_CHECK = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (img) { return img.complete && img.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images-loaded", loaded + "/" + images.length);
  document.body.setAttribute("data-rendered", loaded === images.length ? "yes" : "no");
});
"""


def page(title: str, heading: str, where: Path, body: str) -> str:
    """A whole page: `heading` and `body` are HTML; `where` is the folder it reports on."""
    stamp = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>gan-dist report: {html.escape(title)}</title><style>{STYLE}</style><script>{LOAD_CHECK}</script>"
            f"</head><body data-rendered=\"pending\"><h1>{heading}</h1>"
            f"<p class=\"note\">{html.escape(str(where))}: report by gan-dist {__version__}, {stamp}.</p>"
            f"{body}</body></html>\n")


def render(run: RunFiles, nav: str = "") -> str:
    """The page of `run`, whole. `nav` (HTML) goes under the title: a tune member's page links
    back to the tune's overview there (gan_dist.tune.report)."""
    name = html.escape(run.path.name)
    recipe = html.escape(str(run.config.get("recipe", "")))
    alerts = alert_events(run)
    return page(run.path.name, f"Run {name} <span class=\"note\">({recipe})</span>", run.path,
                f"{nav}{summary_section(run)}{plots_section(run, alerts)}{samples_section(run)}"
                f"{alerts_section(alerts)}{config_section(run)}")


def check_out(out: Path) -> None:
    """The page's file: in a folder that exists, and not a folder itself (checked before any work)."""
    if out.is_dir():
        raise ReportError(f"--out {out} is a folder: give a file name (report.html)")
    if not out.parent.is_dir():
        raise ReportError(f"--out {out}: the folder {out.parent} does not exist")


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write the report of `run_dir` to `out` (default <run>/report.html) in one piece, once
    the whole page is made; its path. A bad `out` is refused before anything is read."""
    if out is not None:
        check_out(out)
    page = render(read_run(run_dir))
    out = out if out is not None else run_dir / REPORT_FILE
    write_atomic(out, page.encode())
    return out
