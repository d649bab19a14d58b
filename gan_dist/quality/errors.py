"""The quality metrics' bad-input error (the CLI maps it to exit 2)."""


class QualityError(ValueError):
    """A metric cannot be computed as asked: unknown name, bad sample count, not image data."""
