"""The two kinds of failure a user is told about in one line (see plumbing.cli.run_main)."""


class DataError(Exception):
    """Bad or missing input data: exit 1 with this one-line message."""


class UsageError(Exception):
    """A bad flag or argument: exit 2 with this one-line message."""
