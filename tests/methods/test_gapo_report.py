"""Tests for robalign.methods.gapo_report: a GAPO training run writes pairs.jsonl, gapo_weights.png and
gapo_summary.json."""

import json

import pytest

from conftest import make_pairs
from robalign.config import build_config


@pytest.mark.parametrize("lora_r", [0, 4])
def test_trainer_end_to_end_writes_pairs_plot_and_summary(tmp_path, lora_r):
    from robalign.trainer import Trainer

    tree = {"model": {"name": "tiny-llama", "lora_r": lora_r}, "method": {"name": "gapo"},
            "gapo": {"radius": 0.5, "margin": "dpo" if lora_r else "simpo"}, "data": {"max_length": 40},
            "train": {"output_dir": str(tmp_path), "batch_size": 4, "max_steps": 2, "lr": 1e-3, "progress": False}}
    pairs = make_pairs(8)
    Trainer(build_config(tree), train_pairs=pairs, eval_pairs=pairs[:2]).train()
    rows = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {r["step"] for r in rows} == {1, 2}
    assert all({"id", "gap", "weight", "is_flipped"} <= set(r) for r in rows)
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("gapo/changed_fraction" in m and m["gapo/changed_fraction"] > 0.95 for m in metrics)
    assert (tmp_path / "gapo_weights.png").stat().st_size > 1000
    summary = json.loads((tmp_path / "gapo_summary.json").read_text())
    last = [r for r in rows if r["step"] == 2]
    assert summary["pairs"] == len(last) and summary["from_step"] == 2
    flipped = [r["weight"] for r in last if r["is_flipped"]]
    assert summary["weight_flipped_mean"] == pytest.approx(sum(flipped) / len(flipped))
