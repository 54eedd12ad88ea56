"""lab/scripts/same_cells.py: cells equal up to timing fields, and a changed number is caught."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "lab" / "scripts"))

from same_cells import main  # noqa: E402


def _cell(root: Path, loss: float, seconds: float):
    cell = root / "cells" / "dpo-flip-0.4-s0"
    cell.mkdir(parents=True)
    (cell / "result.json").write_text(json.dumps({"accuracy": 0.6, "seconds": seconds, "curve": [{"time_s": 1}]}))
    (cell / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": loss, "train/steps_per_second": 2}) + "\n")
    (cell / "heldout_margins.safetensors").write_bytes(b"same")


def test_timing_fields_are_ignored_and_a_changed_loss_is_caught(tmp_path, capsys):
    _cell(tmp_path / "a", 0.5, 10.0)
    _cell(tmp_path / "b", 0.5, 99.0)
    _cell(tmp_path / "c", 0.5 + 1e-12, 10.0)
    assert main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert main([str(tmp_path / "a"), str(tmp_path / "c")]) == 1
    assert "DIFFERS in metrics.jsonl" in capsys.readouterr().out
