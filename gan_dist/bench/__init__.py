"""Benchmarks: measured side by side in one process tree, reported as ratios."""


def description(doc: str) -> str:
    """A module docstring's first paragraph on one line, as a sentence: a benchmark's `--help`
    description (a paragraph that leads into a command ends in a colon or a comma)."""
    return " ".join(doc.split("\n\n")[0].split()).rstrip(":,.") + "."
