"""The user's contract, at the bottom of every package: bad input is one line, and a file is
written whole or not at all.

Entry points (train.py, sweep.py, data.prepare) run their work through `run_cli`, which turns a
UserError into one `error: ...` line on stderr and exit code 2. Raise UserError with a message
naming the problem and the fix. `write_atomic` is the one writer every file of the project goes
through: a kill leaves the old file or the new one, and a failed write (a full disk) is one
UserError naming the file (`write_error`).
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional, Union


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


def os_error_of(exc: BaseException) -> Optional[OSError]:
    """The OSError behind `exc`: itself, or the one it was raised from or while handling
    (torch.save turns a failed write into a RuntimeError raised while handling it)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def write_error(path: Path, exc: OSError) -> UserError:
    """The one line for a file that cannot be written: which file, why, and what to do."""
    why = exc.strerror or str(exc) or type(exc).__name__
    return UserError(f"cannot write {path} ({why}); the version written before, if any, is "
                     "unchanged: free space (or fix permissions) there and run the same command "
                     "again (train.py: with resume=true)")


def write_atomic(path: Path, data: Union[bytes, str, Callable]) -> None:
    """Write `data` (bytes, text, or a function that writes to a binary file) to a temporary
    file beside `path`, fsync it, then rename: a kill leaves the old file or the new one,
    never half of one. A failed write (a full disk) is a UserError naming `path`."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, Exception) and (os_exc := os_error_of(exc)) is not None:
            raise write_error(path, os_exc) from None
        raise
