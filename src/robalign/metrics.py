"""Run logging: one JSON object per line in metrics.jsonl, optionally mirrored to TensorBoard."""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsWriter:
    def __init__(self, path: Path, *, tensorboard_dir: Path | None = None, append: bool = False):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(path, "a" if append else "w")
        self.tb = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                from robalign.errors import UserError

                raise UserError("train.tensorboard needs the tensorboard package "
                                "(pip install 'robalign[tensorboard]')") from None
            self.tb = SummaryWriter(str(tensorboard_dir))

    def write(self, record: dict):
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self.fh.write(json.dumps(clean) + "\n")
        self.fh.flush()
        if self.tb is not None and "step" in record:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tb.add_scalar(key, value, record["step"])

    def close(self):
        self.fh.close()
        if self.tb is not None:
            self.tb.close()


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]
