"""User-facing errors: one exception type carrying a one-line message (CLI exit status 2)."""


class ImprintError(Exception):
    """An error caused by the user's input or arguments; ``str(err)`` is a one-line message."""

    exit_code = 2
