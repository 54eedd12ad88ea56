"""lab/scripts/paired_cells.py: the paired difference of two cells' last held-out evaluation, by hand."""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "lab" / "scripts"))

import paired_cells  # noqa: E402


def _cell(path: Path, last_h):
    path.mkdir(parents=True)
    h = torch.stack([torch.zeros(len(last_h)), torch.tensor(last_h)])
    save_file({"h": h, "M": h.clone()}, str(path / "heldout_margins.safetensors"))


def test_difference_and_interval_of_per_pair_correctness(tmp_path, capsys):
    _cell(tmp_path / "a", [1.0, 1.0, 0.0, -1.0])  # correct 1, 1, 0.5, 0
    _cell(tmp_path / "b", [1.0, -1.0, -1.0, -1.0])  # correct 1, 0, 0, 0
    assert paired_cells.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "0.625 - 0.250 = +0.375" in out
    mean, lo, hi = paired_cells.paired(torch.tensor([1.0, 1.0, 0.0, -1.0]), torch.tensor([1.0, -1.0, -1.0, -1.0]))
    assert mean == 0.375 and 0 <= lo <= mean <= hi <= 1.0


def test_a_missing_cell_is_one_message(tmp_path, capsys):
    assert paired_cells.main([str(tmp_path / "x"), str(tmp_path / "y")]) == 2
    assert "not found" in capsys.readouterr().err


def _gold_cell(path: Path, policy, reference):
    import json

    path.mkdir(parents=True)
    (path / "gold_generations.jsonl").write_text("".join(
        json.dumps({"reward_policy_greedy": a, "reward_reference_greedy": b}) + "\n" for a, b in zip(policy, reference)))


def test_gold_reward_of_two_cells_and_against_the_base_model(tmp_path, capsys):
    _gold_cell(tmp_path / "a", [1.0, 0.5, 0.0, 1.0], [0.0, 0.0, 0.0, 0.5])
    _gold_cell(tmp_path / "b", [0.0, 0.5, 0.0, 0.5], [0.0, 0.0, 0.0, 0.5])
    assert paired_cells.main([str(tmp_path / "a"), str(tmp_path / "b"), "--metric", "gold"]) == 0
    assert "0.625 - 0.250 = +0.375" in capsys.readouterr().out
    assert paired_cells.main([str(tmp_path / "a"), str(tmp_path / "b"), "--metric", "gold-base"]) == 0
    assert "0.625 - 0.125 = +0.500" in capsys.readouterr().out
    assert paired_cells.main([str(tmp_path / "a"), str(tmp_path / "c"), "--metric", "gold"]) == 2
    assert "not found" in capsys.readouterr().err
