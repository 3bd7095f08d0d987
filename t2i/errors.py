"""The one exception type that the CLI turns into a one-line error and exit code 2."""


class UsageError(Exception):
    """Bad input from the user: a config key, a path, a flag value.

    The message is printed as `t2i: error: <message>` with no traceback, so it must
    name the offending thing on its own (the key, the path, the value).
    """
