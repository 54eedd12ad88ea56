"""Run logging: one JSON object per line in metrics.jsonl, mirrored to the run's trackers (robalign.trackers)."""

from __future__ import annotations

import math
from pathlib import Path

from robalign import jsonl

# Names metrics.jsonl used before it took TRL's: old runs' logs are read under the new names.
RENAMED = {"lr": "learning_rate"}


class MetricsWriter:
    """metrics.jsonl (flushed per row: a crash loses no logged step), plus a copy of each row for `trackers`
    (a `robalign.trackers.Trackers`, or None)."""

    def __init__(self, path: Path, *, trackers=None, resume_step: int | None = None):
        self.fh = jsonl.open_log(path, resume_step=resume_step)  # resumed: cut back to the checkpoint's step
        self.trackers = trackers

    def write(self, record: dict):
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        jsonl.append(self.fh, [clean])
        if self.trackers is not None:
            self.trackers.log(record)

    def close(self):
        self.fh.close()
        if self.trackers is not None:
            self.trackers.close()


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl, with names an older robalign wrote (`RENAMED`) also under today's."""
    rows = jsonl.read_rows(path)
    for row in rows:
        for old, new in RENAMED.items():
            if old in row and new not in row:
                row[new] = row[old]
    return rows
