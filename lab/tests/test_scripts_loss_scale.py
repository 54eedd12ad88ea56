"""lab/scripts/loss_scale.py: logged margins of finished cells, each loss's gradient ratio to DPO, agreement with DPO."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "lab" / "scripts" / "loss_scale.py"
EPS = 0.2  # cdpo's and rdpo's ε in the sweeps (robalign.experiments.spec.METHOD_DEFAULTS)


def write_cell(out: Path, name: str, margins: list[float], acc_h: float | None = 0.5):
    cell = out / "cells" / name
    cell.mkdir(parents=True)
    rows = [{"step": i + 1, "rewards/margins": m} for i, m in enumerate(margins)]
    (cell / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if acc_h is not None:  # None: an unfinished cell
        (cell / "result.json").write_text(json.dumps({"accuracy_h": acc_h, "pairs": 64}))


def run(*args: str):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def rows(stdout: str) -> dict[str, list[str]]:
    lines = [line.strip("|").split("|") for line in stdout.splitlines() if line.startswith("| ")]
    return {c[0].strip(): [x.strip() for x in c[1:]] for c in lines[1:]}


def test_margins_ratios_and_agreement(tmp_path):
    write_cell(tmp_path, "dpo-flip-0-s0", [0.1, -0.3], acc_h=40 / 64)
    write_cell(tmp_path, "dpo-flip-0.4-s0", [0.2, 0.4, -0.5], acc_h=30 / 64)
    write_cell(tmp_path, "dpo-flip-0.2-s0", [9.0], acc_h=None)  # unfinished: ignored
    write_cell(tmp_path, "dpo-length-0.3-s0", [8.0], acc_h=0.5)  # another kind: ignored
    write_cell(tmp_path, "rdpo-flip-0-s0", [0.0], acc_h=40 / 64)  # equal to dpo's
    write_cell(tmp_path, "rdpo-flip-0.4-s0", [0.0], acc_h=33 / 64)  # 3 pairs away
    write_cell(tmp_path, "rdpo-flip-0.1-s0", [0.0], acc_h=0.9)  # no dpo cell to pair with
    proc = run(str(tmp_path), "--methods", "rdpo,hinge,simpo")
    assert proc.returncode == 0, proc.stderr
    assert (
        "over 5 logged steps of dpo" in proc.stdout
        and "median 0.300" in proc.stdout
        and "max 0.500" in proc.stdout
    )
    q90 = float(proc.stdout.split("90th percentile ")[1].split(",")[0])
    table = rows(proc.stdout)
    lo, hi = (float(x) for x in table["rdpo"][0].split("–"))
    assert math.isclose(
        lo, ((1 - EPS) + EPS * math.exp(-q90)) / (1 - 2 * EPS), abs_tol=2e-3
    )  # d/dh by hand ÷ DPO's
    assert math.isclose(hi, ((1 - EPS) + EPS * math.exp(q90)) / (1 - 2 * EPS), abs_tol=2e-3)
    lo, hi = (float(x) for x in table["hinge"][0].split("–"))
    assert math.isclose(lo, 1 + math.exp(-q90), abs_tol=2e-3) and math.isclose(
        hi, 1 + math.exp(q90), abs_tol=2e-3
    )
    assert table["rdpo"][2:] == ["1 of 2", "1.50"]
    assert table["simpo"][:2] == ["–", "–"] and table["simpo"][2] == "0 of 0"


def test_ipo_gradient_turns_once_the_margin_passes_its_target(tmp_path):
    write_cell(tmp_path, "dpo-flip-0-s0", [0.6, 0.7, 0.8])  # β·h past 0.5: h > 1/(2β) = 5
    table = rows(run(str(tmp_path), "--methods", "ipo,cdpo").stdout)
    assert table["ipo"][1] == "sign changes"
    assert float(table["cdpo"][1]) > 1  # cDPO's ratio (1−ε) − ε e^{βh} stays positive below βh = log 4


def test_no_cells_is_a_clear_error(tmp_path):
    proc = run(str(tmp_path))
    assert proc.returncode == 2 and "holds no sweep cells" in proc.stderr
    write_cell(tmp_path, "dpo-flip-0-s0", [0.1], acc_h=None)
    proc = run(str(tmp_path))
    assert proc.returncode == 2 and "no finished dpo cell" in proc.stderr
