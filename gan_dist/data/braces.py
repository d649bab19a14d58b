"""Brace patterns (`shard-{000000..000099}.tar`, `{train,extra}`), counted before expanded.

The bash syntax that WebDataset users write: `{a,b,c}` alternatives (nested
freely), `{N..M}` and `{N..M..STEP}` integer ranges (zero-padded when an end
is written with a leading zero: `{08..10}` -> 08 09 10), `{a..e}` letter
ranges; a backslash escapes a brace or comma; braces holding neither a comma
nor a range are literal text, as in bash.

Why not the `braceexpand` package: it builds each range as a list, so a
pattern such as `{000000000..999999999}` takes gigabytes before the first
name. Here a pattern is parsed into a tree whose size (`count`) is known
without expanding it, and `expand` yields names one at a time.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterator, Union

_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?|([A-Za-z])\.\.([A-Za-z])(?:\.\.(-?\d+))?")


class BraceError(ValueError):
    """A pattern whose braces do not balance."""


@dataclass(frozen=True)
class Range:
    """An integer or letter range, as bash expands it (either direction, any step)."""
    start: int
    stop: int
    step: int
    width: int  # zero-padded width (0: no padding)
    letters: bool

    def __len__(self) -> int:
        return abs(self.stop - self.start) // self.step + 1

    def __iter__(self) -> Iterator[str]:
        sign = 1 if self.stop >= self.start else -1
        for i in range(len(self)):
            value = self.start + sign * i * self.step
            yield chr(value) if self.letters else (f"{value:0{self.width}d}" if self.width else str(value))


@dataclass(frozen=True)
class Alt:
    options: tuple["Seq", ...]


@dataclass(frozen=True)
class Seq:
    parts: tuple[Union[str, Range, Alt], ...]


def parse(pattern: str) -> Seq:
    """The pattern's tree; BraceError if a brace is left open or closed twice."""
    seq, end = _parse_seq(pattern, 0, top=True)
    return seq


def _parse_seq(text: str, i: int, top: bool) -> tuple[Seq, int]:
    """Parts from i up to an unescaped ',' or '}' that ends a brace (or the end, at the top)."""
    parts: list = []
    literal: list[str] = []
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            literal.append(text[i + 1])
            i += 2
            continue
        if c == "{":
            node, i = _parse_brace(text, i)
            if isinstance(node, str):
                literal.append(node)
            else:
                if literal:
                    parts.append("".join(literal))
                    literal = []
                parts.append(node)
            continue
        if not top and c in ",}":
            break
        if top and c == "}":
            raise BraceError(f"unbalanced braces in {text!r}: a '}}' at character {i + 1} closes nothing")
        literal.append(c)
        i += 1
    if literal:
        parts.append("".join(literal))
    return Seq(tuple(parts)), i


def _parse_brace(text: str, i: int) -> tuple[Union[str, Range, Alt], int]:
    """The brace opening at text[i]: an Alt, a Range, or (no comma, no range) its literal text."""
    close = _matching(text, i)
    inner = text[i + 1:close]
    match = _RANGE.fullmatch(inner)
    if match:
        return _range(match), close + 1
    options, j = [], i + 1
    while True:
        seq, j = _parse_seq(text, j, top=False)
        options.append(seq)
        if text[j] == "}":
            break
        j += 1  # past the comma
    if len(options) == 1:  # `{x}`: literal braces around an expanded inside
        return Alt((Seq(("{",) + options[0].parts + ("}",)),)), close + 1
    return Alt(tuple(options)), close + 1


def _matching(text: str, i: int) -> int:
    depth = 0
    j = i
    while j < len(text):
        c = text[j]
        if c == "\\":
            j += 2
            continue
        depth += (c == "{") - (c == "}")
        if depth == 0:
            return j
        j += 1
    raise BraceError(f"unbalanced braces in {text!r}: the '{{' at character {i + 1} is never closed")


def _range(match: re.Match) -> Range:
    if match.group(1) is not None:
        a, b, step = match.group(1), match.group(2), match.group(3)
        padded = any(len(s.lstrip("-")) > 1 and s.lstrip("-").startswith("0") for s in (a, b))
        width = max(len(a), len(b)) if padded else 0
        return Range(int(a), int(b), max(1, abs(int(step or 1))), width, letters=False)
    a, b, step = match.group(4), match.group(5), match.group(6)
    return Range(ord(a), ord(b), max(1, abs(int(step or 1))), 0, letters=True)


def count(node) -> int:
    """How many strings `expand` yields, without expanding."""
    if isinstance(node, str):
        return 1
    if isinstance(node, Range):
        return len(node)
    if isinstance(node, Alt):
        return sum(count(option) for option in node.options)
    return math.prod(count(part) for part in node.parts)


def expand(node) -> Iterator[str]:
    """The strings, in bash's order, one at a time (memory: the tree's depth)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, Range):
        yield from node
    elif isinstance(node, Alt):
        for option in node.options:
            yield from expand(option)
    else:
        yield from _expand_parts(node.parts)


def _expand_parts(parts: tuple) -> Iterator[str]:
    if not parts:
        yield ""
        return
    for head in expand(parts[0]):
        for tail in _expand_parts(parts[1:]):
            yield head + tail


def has_braces(node: Seq) -> bool:
    return any(not isinstance(part, str) for part in node.parts)


def split_top(text: str, sep: str) -> list[str]:
    """`text` cut at each `sep` that is outside braces (and not escaped)."""
    out, depth, start, i = [], 0, 0, 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        depth += (c == "{") - (c == "}" and depth > 0)
        if c == sep and depth == 0:
            out.append(text[start:i])
            start = i + 1
        i += 1
    out.append(text[start:])
    return out
