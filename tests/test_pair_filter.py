"""data.keep_fraction: the base model's margin M of every training pair, the pairs kept, what is reported."""


import pytest
import torch

from conftest import make_pairs
from robalign.config import build_config
from robalign.data.collate import collate
from robalign.data.tokenize import tokenize_pairs
from robalign.errors import ConfigError
from robalign.logprobs import sequence_logps
from robalign.pair_filter import base_margins, filter_report, keep_most_agreeing
from robalign.trainer import Trainer


def _one_by_one(model, pairs, pad_id) -> list[float]:
    """M of each pair from its own forward (no batching, no packing shared with other pairs)."""
    out = []
    with torch.no_grad():
        for p in pairs:
            lp = sequence_logps(model.eval(), collate([p], pad_id, shared_prompt=False))
            avg_c, avg_r = lp.mean()
            out.append(float(avg_c - avg_r))
    return out


def test_margins_are_each_pairs_own_length_normalised_margin(tiny):
    model, tok = tiny
    data, _ = tokenize_pairs(tok, make_pairs(7), max_length=64, max_prompt_length=32)
    got = base_margins(model, data, pad_id=tok.pad_token_id, batch_size=3)
    assert got.tolist() == pytest.approx(_one_by_one(model, data, tok.pad_token_id), abs=1e-5)


def test_keeps_the_highest_margins_in_data_order_and_ties_by_position():
    margins = torch.tensor([0.3, -1.0, 0.3, 2.0, -0.5, 0.3], dtype=torch.float64)
    assert keep_most_agreeing(margins, 0.5) == [0, 2, 3]  # 2.0, then the first two of the tied 0.3s
    assert keep_most_agreeing(margins, 0.34) == [0, 2, 3]  # ceil(0.34 * 6) = 3
    assert keep_most_agreeing(margins, 1.0) == list(range(6))
    assert keep_most_agreeing(margins, 1e-9) == [3]  # at least one pair


def test_report_counts_flips_and_the_auroc_by_brute_force():
    margins = torch.tensor([0.5, -0.2, 0.1, -0.9, 0.7, 0.0], dtype=torch.float64)
    flipped = [False, True, False, True, False, False]
    kept = keep_most_agreeing(margins, 0.5)
    report = filter_report(margins, kept, flipped)
    pos = [-m for m, f in zip(margins.tolist(), flipped) if f]
    neg = [-m for m, f in zip(margins.tolist(), flipped) if not f]
    auroc = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))
    assert report == {"pairs": 6, "kept": 3, "dropped": 3, "flipped_before": pytest.approx(2 / 6),
                      "flipped_after": 0.0, "flip_auroc": pytest.approx(auroc)}
    assert "flip_auroc" not in filter_report(margins, kept, [None] * 6)


def _cfg(tmp_path, keep, **model):
    return build_config({"model": {"name": "tiny-llama", "lora_r": 0, **model}, "method": {"name": "dpo"},
                         "data": {"max_length": 64, "keep_fraction": keep},
                         "train": {"output_dir": str(tmp_path / "run"), "batch_size": 2, "lr": 1e-2, "epochs": 1,
                                   "progress": False}})


@pytest.mark.parametrize("model", [{}, {"train_last_k": 1, "trunk_cache": "memory"}], ids=["full", "trunk"])
def test_a_run_trains_on_the_pairs_the_base_model_agrees_with_most(tmp_path, model):
    pairs = make_pairs(12)
    trainer = Trainer(_cfg(tmp_path, 0.5, **model), train_pairs=pairs, eval_pairs=pairs[:4])
    data, _ = tokenize_pairs(trainer.tokenizer, pairs, max_length=64, max_prompt_length=32)
    margins = _one_by_one(trainer.model, data, trainer.pad_id)
    best = sorted(sorted(range(12), key=lambda i: -margins[i])[:6])
    assert [p.id for p in trainer.train_data] == [pairs[i].id for i in best]
    assert trainer.per_epoch == 3  # 6 kept pairs / batch 2: the epochs budget counts the kept pairs
    summary = trainer.train()
    flipped = [bool(p.is_flipped) for p in pairs]
    assert summary["pair_filter"]["kept"] == 6 and summary["steps"] == 3
    assert summary["pair_filter"]["flipped_after"] == pytest.approx(sum(flipped[i] for i in best) / 6)


def test_keep_fraction_is_checked_and_refused_for_online_methods(tmp_path):
    with pytest.raises(ConfigError, match=r"data.keep_fraction: must be in \(0, 1\]"):
        _cfg(tmp_path, 0.0)
    cfg = build_config({"model": {"name": "tiny-llama", "lora_r": 0}, "method": {"name": "sail"},
                        "data": {"keep_fraction": 0.5}, "train": {"output_dir": str(tmp_path / "o")}})
    with pytest.raises(ConfigError, match="online method"):
        Trainer(cfg, train_pairs=make_pairs(4), eval_pairs=make_pairs(2))
