"""The one exception type for bad user input.

Entry points (train.py, sweep.py, data.prepare) catch it, print its message as one line
and exit nonzero. Raise it with a message naming the problem and the fix.
"""


class UserError(Exception):
    """Bad input from the user: config, paths, data. Never a bug of ours."""
