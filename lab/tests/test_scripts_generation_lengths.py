"""lab/scripts/generation_lengths.py: re-decodes a sweep cell's saved adapter and gets the sweep's own gold reward."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "lab" / "scripts"))

from generation_lengths import describe, main, mean_over_seeds, measure  # noqa: E402

from robalign.cli import main as cli  # noqa: E402
from robalign.tasks.verifiable import make_prompts, score  # noqa: E402


def test_describe_counts_words_cuts_and_gold_per_kind():
    prompts = make_prompts(4, seed=3)
    texts = ["one two three", "a, b", "", "x y"]
    got = describe(prompts, texts, [5, 8, 1, 8], max_new_tokens=8)
    assert got["words"] == pytest.approx((3 + 2 + 0 + 2) / 4)
    assert got["cut"] == 0.5
    gold = [score(p, t) for p, t in zip(prompts, texts)]
    assert got["gold"] == pytest.approx(sum(gold) / 4)
    for kind in {p.kind for p in prompts}:
        mine = [g for p, g in zip(prompts, gold) if p.kind == kind]
        assert got["by_kind"][kind] == pytest.approx(sum(mine) / len(mine))


def test_means_over_seeds_average_each_seeds_values_and_kinds_where_present():
    rows = [{"policy": "dpo", "cell": "flip-0", "seed": 0, "words": 10.0, "cut": 0.5, "gold": 0.2,
             "by_kind": {"a": 1.0, "b": 0.0}},
            {"policy": "dpo", "cell": "flip-0", "seed": 1, "words": 20.0, "cut": 1.0, "gold": 0.4, "by_kind": {"a": 0.5}},
            {"policy": "ref", "cell": "-", "seed": 0, "words": 3.0, "cut": 0.0, "gold": 0.9, "by_kind": {"b": 1.0}}]
    got = mean_over_seeds(rows)
    assert list(got) == [("dpo", "flip-0"), ("ref", "-")]
    dpo = got[("dpo", "flip-0")]
    assert (dpo["words"], dpo["cut"], dpo["seeds"]) == (15.0, 0.75, 2) and dpo["gold"] == pytest.approx(0.3)
    assert dpo["by_kind"] == {"a": 0.75, "b": 0.0}  # b only in seed 0
    assert got[("ref", "-")]["by_kind"] == {"b": 1.0}


def test_a_cell_is_decoded_as_the_sweep_decoded_it(tmp_path, capsys):
    args = ["bench", "robustness", "--model", "tiny-llama", "--methods", "dpo", "--kinds", "flip", "--rates", "0.5",
            "--seeds", "0", "--steps", "2", "--train-pairs", "8", "--eval-pairs", "4", "--lora-r", "4", "--lr", "0.05",
            "--gen-prompts", "6", "--gen-max-new-tokens", "6", "--out", str(tmp_path)]
    assert cli(args) == 0
    result = json.loads((tmp_path / "cells" / "dpo-flip-0.5-s0" / "result.json").read_text())
    rows = measure(tmp_path, ["dpo"], ["flip-0.5", "flip-0.1"], [0], max_new_tokens=6, gen_prompts=6,
                   model_name="tiny-llama")
    assert [r["policy"] for r in rows] == ["reference", "dpo"]  # the missing flip-0.1 cell is skipped
    ref, cell = rows
    assert ref["gold"] == pytest.approx(result["ref_gold_reward_greedy"], abs=1e-6)
    assert cell["gold"] == pytest.approx(result["gold_reward_greedy"], abs=1e-6)
    assert cell["swept"] == result["gold_reward_greedy"]
    assert cell["gold"] != ref["gold"]  # the adapter was loaded: this policy writes differently from the base
    capsys.readouterr()
    assert main([str(tmp_path), "--methods", "dpo", "--cells", "flip-0.5", "--seeds", "0", "--max-new-tokens", "6",
                 "--gen-prompts", "6", "--model", "tiny-llama"]) == 0
    out = capsys.readouterr().out
    assert "| dpo | flip-0.5 | 0 |" in out and "| dpo | flip-0.5 | 1 |" in out  # the seed row and the means row


def test_a_missing_sweep_directory_is_a_clear_error(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err
