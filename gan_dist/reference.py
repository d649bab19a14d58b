"""The reference pages that must not drift, generated from their one declaration.

    python -m gan_dist.reference          # rewrite the generated blocks in docs/
    python -m gan_dist.reference --check  # exit 1 naming each page that is out of date

- Every config key, from the dataclasses of `gan_dist.config`, walked from `Config`: a field
  whose type is a dataclass is a section (at any depth), any other field is a key. Each key's
  description is the comment written above its field in the source, or at the end of its
  line. A key without one is an error (`UndocumentedKey`): a new key is documented where it
  is declared, or the docs do not build.
- The Prometheus metric catalog, from `gan_dist.monitor.metrics.CATALOG`, with the label
  values and the history-row fields that `ROW_GAUGES` and `ROW_COUNTERS` map onto it.

Each is written between `<!-- generated: NAME -->` and `<!-- end generated -->` in its page;
the rest of the page is prose written by hand.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import json
import sys
import textwrap
import tokenize
import typing
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Callable

from gan_dist.config import Config
from gan_dist.monitor.metrics import CATALOG, ROW_COUNTERS, ROW_GAUGES

ROOT = Path(__file__).resolve().parents[1]
END_MARKER = "<!-- end generated -->"


class UndocumentedKey(Exception):
    """A config field without a comment: the generated reference would have a hole."""


@dataclass(frozen=True)
class Key:
    name: str  # dotted, as `--set` takes it
    type: str
    default: Any
    doc: str


@dataclass(frozen=True)
class Section:
    name: str  # dotted; "" for the keys of `Config` itself
    doc: str  # the section class's docstring, if it has one
    keys: tuple[Key, ...]


# Config keys ---------------------------------------------------------------------------

@cache
def _class_source(cls: type) -> tuple[str, ast.ClassDef]:
    source = textwrap.dedent(inspect.getsource(cls))
    return source, ast.parse(source).body[0]


@cache
def _class_comments(cls: type) -> dict[str, str]:
    """Field name -> its comment in `cls`'s own source: the comment lines right above the
    field (no blank line between) followed by a comment at the end of the field's line."""
    source, node = _class_source(cls)
    lines = source.splitlines()
    comments: dict[int, str] = {}  # line number -> comment text
    whole_line: set[int] = set()  # lines that hold nothing but a comment
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            row, col = tok.start
            comments[row] = tok.string.lstrip("#").strip()
            if not lines[row - 1][:col].strip():
                whole_line.add(row)
    found = {}
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        above = []
        row = stmt.lineno - 1
        while row in whole_line:
            above.insert(0, comments[row])
            row -= 1
        trailing = [comments[r] for r in range(stmt.lineno, stmt.end_lineno + 1)
                    if r in comments and r not in whole_line]
        found[stmt.target.id] = " ".join(part for part in above + trailing if part)
    return found


def _field_doc(cls: type, f: dataclasses.Field, key: str) -> str:
    owner = next(k for k in cls.__mro__ if f.name in k.__dict__.get("__annotations__", {}))
    doc = _class_comments(owner).get(f.name, "")
    if not doc:
        file, line = inspect.getsourcefile(owner), inspect.getsourcelines(owner)[1]
        raise UndocumentedKey(f"config key {key} has no comment: write one above `{f.name}` in "
                              f"{owner.__name__} ({file}, class at line {line})")
    return doc


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _type_name(kind: Any) -> str:
    return kind.__name__ if isinstance(kind, type) else str(kind).replace("typing.", "")


def config_sections(cls: type = Config, prefix: str = "") -> list[Section]:
    """The keys of dataclass `cls` and, after them, each nested section's, depth first."""
    hints = typing.get_type_hints(cls)
    keys, nested = [], []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            nested += config_sections(kind, f"{prefix}{f.name}.")
        else:
            key = f"{prefix}{f.name}"
            keys.append(Key(key, _type_name(kind), _default(f), _field_doc(cls, f, key)))
    # From the source: a dataclass without a docstring gets its signature as __doc__.
    doc = (ast.get_docstring(_class_source(cls)[1]) or "") if prefix else ""
    here = [Section(prefix.rstrip("."), doc, tuple(keys))] if keys else []
    return here + nested


def _show_default(value: Any) -> str:
    if value is dataclasses.MISSING:
        return "(required)"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, (str, list, dict)) or value is None:
        return f"`{json.dumps(value)}`"
    return f"`{value!r}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_config(cls: type = Config) -> str:
    out = ["<!-- Generated by `python -m gan_dist.reference` from gan_dist/config.py: edit the comments "
           "there, not this block. -->"]
    for section in config_sections(cls):
        out += ["", f"### {section.name or 'Top level'}", ""]
        for paragraph in section.doc.split("\n\n") if section.doc else []:
            out += [" ".join(paragraph.split()), ""]
        out += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        out += [f"| `{k.name}` | {k.type} | {_show_default(k.default)} | {_cell(k.doc)} |" for k in section.keys]
    return "\n".join(out)


# Metrics -------------------------------------------------------------------------------

def render_metrics() -> str:
    label_values: dict[str, list[str]] = {}  # label name -> the values the row mapping sets
    fields: dict[str, list[str]] = {name: [] for name in CATALOG}  # metric -> history-row fields
    for row_field, (metric, labels) in ROW_GAUGES.items():
        fields[metric].append(row_field)
        for label, value in labels.items():
            label_values.setdefault(label, [])
            if value not in label_values[label]:
                label_values[label].append(value)
    for row_field, metric in ROW_COUNTERS.items():
        fields[metric].append(row_field)
    out = ["<!-- Generated by `python -m gan_dist.reference` from CATALOG in gan_dist/monitor/metrics.py: "
           "edit it there, not this block. -->", "",
           "| metric | type | labels | from the row's | help |", "| --- | --- | --- | --- | --- |"]
    for name, (kind, doc, labels) in CATALOG.items():
        shown = "; ".join(f"`{label}`: " + ", ".join(label_values.get(label, [])) if label in label_values
                          else f"`{label}`" for label in labels)
        # Many alert fields feed one metric: name the pattern, not each.
        row = dict.fromkeys("alert_KIND" if f.startswith("alert_") else f for f in fields[name])
        out.append(f"| `{name}` | {kind} | {shown} | {', '.join(f'`{f}`' for f in row)} | {_cell(doc)} |")
    return "\n".join(out)


# Pages ---------------------------------------------------------------------------------

# Page (relative to the repository root) -> (block name, renderer).
PAGES: dict[str, tuple[str, Callable[[], str]]] = {
    "docs/configuration.md": ("config", render_config),
    "docs/monitoring.md": ("metrics", render_metrics),
}


def replace_block(text: str, name: str, body: str, page: str) -> str:
    """`text` with the block between `<!-- generated: name -->` and the end marker replaced."""
    start = f"<!-- generated: {name} -->"
    head, found, rest = text.partition(start)
    if not found:
        raise ValueError(f"{page} has no `{start}` line to generate into")
    _, found, tail = rest.partition(END_MARKER)
    if not found:
        raise ValueError(f"{page}: `{start}` has no `{END_MARKER}` after it")
    return f"{head}{start}\n{body}\n{END_MARKER}{tail}"


def generate(root: Path = ROOT) -> dict[str, tuple[str, str]]:
    """Page -> (its text now, its text with the generated blocks up to date)."""
    pages = {}
    for page, (name, render) in PAGES.items():
        text = (root / page).read_text()
        pages[page] = (text, replace_block(text, name, render(), page))
    return pages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gan_dist.reference", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a page is out of date")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository root (default: this checkout)")
    args = parser.parse_args(argv)
    try:
        pages = generate(args.root)
    except (UndocumentedKey, ValueError, OSError) as exc:
        print(f"gan_dist.reference: error: {exc}", file=sys.stderr)
        return 1
    stale = [page for page, (old, new) in pages.items() if old != new]
    if args.check:
        for page in stale:
            print(f"{page} is out of date: run `python -m gan_dist.reference`", file=sys.stderr)
        return 1 if stale else 0
    for page in stale:
        (args.root / page).write_text(pages[page][1])
        print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
