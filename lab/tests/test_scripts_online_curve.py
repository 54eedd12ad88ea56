"""lab/scripts/online_curve.py: windows of per-step gold rewards, and reading a run's generations."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "lab" / "scripts"))

from online_curve import main, step_rewards, windows  # noqa: E402

from robalign.tasks.verifiable import make_prompts, score  # noqa: E402


def test_windows_mean_and_interval_by_hand():
    by_step = {1: [0.0, 1.0], 2: [1.0, 1.0], 3: [0.5, 0.5]}
    got = windows(by_step, 2)
    assert [(lo, hi) for lo, hi, _, _ in got] == [(1, 2), (3, 3)]
    mean, half = got[0][2], got[0][3]
    assert mean == pytest.approx(0.75)
    sd = math.sqrt(sum((x - 0.75) ** 2 for x in (0, 1, 1, 1)) / 3)
    assert half == pytest.approx(1.96 * sd / 2)
    assert got[1][2:] == (pytest.approx(0.5), pytest.approx(0.0))


def test_step_rewards_scores_both_samples_with_the_gold_checker(tmp_path, capsys):
    prompts = make_prompts(3, seed=1)
    rows = [{"step": 1 + i // 2, "prompt": p.text, "y1": "yes. " * (i + 1), "y2": "NO"} for i, p in enumerate(prompts)]
    (tmp_path / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = step_rewards(tmp_path)
    want = {1: [], 2: []}
    for i, p in enumerate(prompts):
        want[1 + i // 2] += [score(p, rows[i]["y1"]), score(p, "NO")]
    assert got == {k: pytest.approx(v) for k, v in want.items()}
    assert main([str(tmp_path), "--window", "1"]) == 0
    assert "last − first window" in capsys.readouterr().out
