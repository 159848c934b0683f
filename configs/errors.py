"""The one exception type for bad user input, and the one way an entry point reports it.

Entry points (train.py, sweep.py, data.prepare) run their work through `run_cli`, which turns a
UserError into one `error: ...` line on stderr and exit code 2. Raise UserError with a message
naming the problem and the fix.
"""
from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """Bad input from the user: config, paths, data. Never a bug of ours."""


def run_cli(work: Callable[[], object]) -> int:
    """`work()`'s exit code (0 unless it returns an int), or 2 with one `error: ...` line for a
    UserError."""
    try:
        code = work()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return code if isinstance(code, int) else 0
