"""The one exception type for a user's mistake: the CLI prints its message, no traceback."""


class UserError(Exception):
    """Bad input (config value, file, data): the message says what and how to fix it."""
