"""The one exception type for mistakes a user can fix (a bad config value, a missing data folder).

The CLI prints its message as a single line and exits with status 2; everything else is a bug
and keeps its traceback.
"""


class UserError(Exception):
    """A problem in the user's input, with a message that names the key, file or value to fix."""
