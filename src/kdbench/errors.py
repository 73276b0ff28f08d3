"""The one exception type that reaches the user as a message instead of a traceback."""


class KDBenchError(Exception):
    """A problem the user can fix: the message says what was wrong, where, and what to do."""
