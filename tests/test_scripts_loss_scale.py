"""scripts/loss_scale.py reads the logged margins of finished cells and prints cDPO's and rDPO's gradient ratios."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "loss_scale.py"


def write_cell(out: Path, name: str, margins: list[float], finished: bool = True):
    cell = out / "cells" / name
    cell.mkdir(parents=True)
    rows = [{"step": i + 1, "rewards/margins": m} for i, m in enumerate(margins)]
    (cell / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if finished:
        (cell / "result.json").write_text("{}")


def run(*args: str):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def table(stdout: str) -> dict[float, tuple[float, float]]:
    rows = [line.strip("|").split("|") for line in stdout.splitlines() if line.startswith("| ") and "β·h |" not in line]
    return {float(r[0]): (float(r[1]), float(r[2])) for r in rows}


def test_ratios_match_the_closed_form_and_only_finished_cells_count(tmp_path):
    write_cell(tmp_path, "dpo-flip-0.4-s0", [0.1, -0.3, 0.2])
    write_cell(tmp_path, "rdpo-flip-0-s1", [0.05, 0.5])
    write_cell(tmp_path, "dpo-flip-0.2-s2", [9.0], finished=False)  # unfinished: ignored
    write_cell(tmp_path, "simpo-flip-0-s0", [7.0])  # another method: ignored
    write_cell(tmp_path, "dpo-length-0.3-s0", [8.0])  # another kind: ignored
    proc = run(str(tmp_path), "--epsilon", "0.25")
    assert proc.returncode == 0, proc.stderr
    assert "over 5 logged steps" in proc.stdout and "max 0.500" in proc.stdout and "median 0.200" in proc.stdout
    rows = table(proc.stdout)
    assert len(rows) == 7 and {0.0, -0.2, 0.2, -0.5, 0.5} <= set(rows)
    eps = 0.25
    for bh, (cdpo, rdpo) in rows.items():  # d/dh of each loss ÷ DPO's, by hand
        assert math.isclose(cdpo, (1 - eps) - eps * math.exp(bh), abs_tol=1e-3)
        assert math.isclose(rdpo, ((1 - eps) + eps * math.exp(bh)) / (1 - 2 * eps), abs_tol=1e-3)


def test_no_cells_is_a_clear_error(tmp_path):
    proc = run(str(tmp_path))
    assert proc.returncode == 2 and "holds no sweep cells" in proc.stderr
    write_cell(tmp_path, "dpo-flip-0-s0", [0.1], finished=False)
    proc = run(str(tmp_path))
    assert proc.returncode == 2 and "no finished cell" in proc.stderr
