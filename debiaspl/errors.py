"""The one exception type for mistakes a user can fix (a bad config value, a missing data folder).

The CLI prints its message as a single line and exits with status 2; everything else is a bug
and keeps its traceback.
"""


class UserError(Exception):
    """A problem in the user's input, with a message that names the key, file or value to fix."""


def first_line(exc: BaseException, limit: int | None = 200) -> str:
    """The first line of an exception's message (its type's name when it has none), for a UserError
    that wraps it in one line; cut at `limit` characters."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:limit] if limit is not None else line
