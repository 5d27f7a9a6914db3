"""The one exception type users see: a one-line message naming what is wrong and where."""


class DistillError(Exception):
    """A user-facing error. The CLI prints `error: <message>` and exits with status 2."""
