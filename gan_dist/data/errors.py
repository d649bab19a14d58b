"""The data plane's bad-input error (the CLI maps it to exit 2)."""


class DataError(ValueError):
    """The data cannot be used: missing, unreadable, or not what the config says."""
