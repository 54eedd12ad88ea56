"""JSON Lines: one JSON object per line, for whole files written at once and for logs appended step by step.

A log (metrics.jsonl, pairs.jsonl, an online method's generations.jsonl) gives every row a `step`, the
optimiser step it was logged at. A resumed run restarts from a checkpoint, possibly older than the last
logged rows; `open_log(path, resume_step=step)` cuts the log back to the rows of steps ≤ `step` before
appending, so the resumed run's rows follow on without duplicates. A log kept open for the whole run:

    fh = open_log(out / "metrics.jsonl", resume_step=step if resumed else None)
    append(fh, [{"step": 1, "loss": 0.69}])   # one line per row, flushed: a crash loses no logged step
    fh.close()

A writer that opens the log for each append (e.g. per micro-step) calls `open_log(...).close()` once at the
start, then `with open(path, "a") as fh: append(fh, rows)`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from robalign import atomic


def line(row: dict) -> str:
    """One row as a line of a JSONL file."""
    return json.dumps(row) + "\n"


def read_rows(path: str | os.PathLike, *, encoding: str | None = None) -> list[dict]:
    """The rows of a JSONL file (blank lines skipped)."""
    with open(path, encoding=encoding) as fh:
        return [json.loads(text) for text in fh if text.strip()]


def write_rows(path: str | os.PathLike, rows: Iterable[dict], *, encoding: str | None = None) -> Path:
    """Writes a whole JSONL file atomically (see robalign.atomic); returns `path`."""
    with atomic.open_file(path, encoding=encoding) as fh:
        fh.writelines(line(row) for row in rows)
    return Path(path)


def keep_through_step(path: str | os.PathLike, step: int) -> None:
    """Cuts the log at `path` back to its rows of steps ≤ `step` (a row without `step` counts as step 0).

    The first line that does not parse (cut short by a kill) ends the usable log: it and every line after it
    are dropped. A missing file stays missing. The file is rewritten atomically, so a kill during the cut
    leaves the log as it was.
    """
    path = Path(path)
    if not path.is_file():
        return
    kept = []
    for text in path.read_text().splitlines():
        try:
            if json.loads(text).get("step", 0) <= step:
                kept.append(text)
        except json.JSONDecodeError:
            break
    atomic.write_text(path, "".join(k + "\n" for k in kept))


def open_log(path: str | os.PathLike, *, resume_step: int | None = None) -> IO[str]:
    """A log opened for appending rows: emptied (or created) when `resume_step` is None, else cut back to
    the rows of steps ≤ `resume_step` (`keep_through_step`) and appended to. Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if resume_step is None:
        return open(path, "w")
    keep_through_step(path, resume_step)
    return open(path, "a")


def append(fh: IO[str], rows: Iterable[dict]) -> None:
    """Appends `rows`, one line each, and flushes once, so what a step logged is on disk when it returns."""
    fh.write("".join(line(row) for row in rows))
    fh.flush()
