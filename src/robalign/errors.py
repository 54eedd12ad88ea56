"""User-facing errors.

A `UserError` is a mistake the user can fix (bad data, bad config, missing file). The CLI prints its
message on stderr and exits with code 2 instead of showing a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem in the user's input; `str(err)` says where it is and how to fix it."""


class DataError(UserError):
    """A bad row or file in a preference dataset.

    Args:
        path: the file (or dataset name) the row came from.
        line: 1-based line (JSONL) or row index (other formats); None for whole-file errors.
        problem: what is wrong.
        fix: what the user should do.
    """

    def __init__(self, path: str, line: int | None, problem: str, fix: str = ""):
        self.path, self.line, self.problem, self.fix = path, line, problem, fix
        where = f"{path}:{line}" if line is not None else str(path)
        msg = f"{where}: {problem}"
        if fix:
            msg += f" ({fix})"
        super().__init__(msg)


class ConfigError(UserError):
    """An invalid configuration key or value, detected at load time."""
