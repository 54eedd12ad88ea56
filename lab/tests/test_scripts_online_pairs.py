"""lab/scripts/online_pairs.py: gold ties and small gold margins of an online cell's labelled pairs."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "lab" / "scripts"))

from online_pairs import main, pair_stats, train_gap_quantile  # noqa: E402

from robalign.tasks.verifiable import make_preference_pairs  # noqa: E402


def _row(margin: float | None, n1=10, n2=20):
    prob = None if margin is None else 1 / (1 + math.exp(-margin / 0.1))
    return {"gold_prob": prob, "len_y1": n1, "len_y2": n2}


def test_pair_stats_counts_ties_and_small_margins_of_labelled_pairs_only():
    rows = [_row(0.0), _row(0.05), _row(-0.15, 30, 30), _row(0.5), _row(None, 99, 99)]  # the last: unlabelled
    got = pair_stats(rows, below=0.2)
    assert got["pairs"] == 4
    assert got["tied"] == 0.25 and got["small"] == 0.5  # 0.05 and |−0.15| below 0.2; 0.5 not
    assert got["length"] == pytest.approx((15 + 15 + 30 + 15) / 4)
    with pytest.raises(ValueError):
        pair_stats([_row(None)], below=0.2)


def test_train_gap_quantile_is_the_gap_above_the_pairs_margin_noise_flips():
    gaps = sorted(abs(p.chosen_score - p.rejected_score) for p in make_preference_pairs(40, 1))
    assert train_gap_quantile(40, 1, 0.1) == gaps[4]
    assert train_gap_quantile(40, 1, 1.0) == gaps[-1]


def test_main_reads_a_cell_and_skips_missing_ones(tmp_path, capsys):
    cell = tmp_path / "cells" / "sail-flip-0-s0"
    cell.mkdir(parents=True)
    cell.joinpath("generations.jsonl").write_text("\n".join(json.dumps(_row(m)) for m in (0.0, 0.1)) + "\n")
    assert main([str(tmp_path), "--methods", "sail,oracle_robust", "--seeds", "0", "--train-pairs", "20"]) == 0
    out = capsys.readouterr()
    assert "| sail | flip-0 | 0 | 2 | 15.0 | 0.50 | 0.50 |" in out.out
    assert "oracle_robust-flip-0-s0" in out.err
    assert main([str(tmp_path / "nope")]) == 2
