"""An epochs budget: the schedule follows from it, the held-out set is evaluated every epoch, and the run
records how much of its (partly flipped) training labels the model fits."""

import json
import math

import torch

from conftest import make_pairs
from robalign.config import build_config
from robalign.data.collate import collate
from robalign.data.tokenize import tokenize_pairs
from robalign.models import byte_tokenizer
from robalign.trainer import Trainer


def _trainer(tmp_path, **train):
    cfg = build_config({"model": {"name": "tiny-llama", "lora_r": 0}, "method": {"name": "dpo"},
                        "data": {"max_length": 64},
                        "train": {"output_dir": str(tmp_path / "run"), "batch_size": 2, "lr": 1e-2,
                                  "progress": False, **train}})
    pairs = make_pairs(12)  # every third pair carries is_flipped
    return Trainer(cfg, train_pairs=pairs, eval_pairs=pairs[:4])


def test_epochs_set_the_budget_and_evaluate_at_every_epoch(tmp_path):
    trainer = _trainer(tmp_path, epochs=2.5, grad_accum=2, eval_at_start=True)
    assert trainer.per_epoch == 6  # 12 pairs / batch 2
    assert trainer.cfg.train.max_steps == math.ceil(2.5 * 6 / 2)
    summary = trainer.train()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/accuracy_M" in r]
    assert [r["epoch"] for r in evals] == [0.0, 1.0, 2.0, 2.6667]  # start, epoch ends, the end
    assert [r["step"] for r in evals] == [0, 3, 6, 8]
    assert all("train/fit_flipped" in r and "train/fit_clean" in r for r in evals[1:])
    assert summary["curve"] == evals
    assert (tmp_path / "run" / "learning_curves.png").stat().st_size > 0
    assert [r["epoch"] for r in rows if "loss" in r][:3] == [round(2 / 6, 4), round(4 / 6, 4), 1.0]


def test_eval_per_epoch_zero_evaluates_only_at_the_end(tmp_path):
    _trainer(tmp_path, epochs=2, eval_per_epoch=0, eval_at_start=False).train()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval/accuracy_M" in r] == [12]


def test_fractional_eval_per_epoch_evaluates_every_second_epoch(tmp_path):
    _trainer(tmp_path, epochs=5, eval_per_epoch=0.5, eval_at_start=True).train()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if "eval/accuracy_M" in r] == [0.0, 2.0, 4.0, 5.0]  # start, every 2, the end


def test_eval_per_epoch_counts_in_the_decimal_written():
    """0.29 evaluations per epoch of 29 micro-batches = one every 100 micro-batches. In binary floats
    100 · 0.29 = 28.999…, so a float count would evaluate at 101 and miss 200 (57.999… at 200)."""
    from types import SimpleNamespace

    fake = SimpleNamespace(cfg=SimpleNamespace(train=SimpleNamespace(eval_every=0, eval_per_epoch=0.29)),
                           step_num=1, per_epoch=29)
    due = []
    for position in range(1, 201):
        fake.position = position
        if Trainer._evaluation_due(fake, position - 1):
            due.append(position)
    assert due == [100, 200]


def test_fit_shares_are_the_observed_label_preferences_of_the_pairs_met(tmp_path):
    """Checked against a brute-force count: each pair's DPO margin at the moment its batch trained."""
    trainer = _trainer(tmp_path, max_steps=6, eval_per_epoch=0)
    seen = []
    step = trainer.method.step

    def recording(policy, reference, batch):
        result = step(policy, reference, batch)
        seen.extend(zip(result.per_pair["margin"].tolist(), batch.is_flipped.tolist()))
        return result

    trainer.method.step = recording
    for _ in range(6):
        trainer.step()
    fit = trainer._fit_metrics()
    flipped = [m for m, f in seen if f == 1]
    clean = [m for m, f in seen if f == 0]
    share = lambda ms: sum((m > 0) + 0.5 * (m == 0) for m in ms) / len(ms)  # noqa: E731
    assert flipped and clean
    assert fit["train/fit_flipped"] == share(flipped)
    assert fit["train/fit_clean"] == share(clean)
    assert trainer._fit_metrics() == {}  # counted afresh after each evaluation


def test_margin_per_pair_is_the_implicit_reward_margin(tmp_path):
    trainer = _trainer(tmp_path, max_steps=1)
    tok = byte_tokenizer()
    pairs, _ = tokenize_pairs(tok, make_pairs(3), max_length=64, max_prompt_length=32)
    batch = collate(pairs, tok.pad_token_id)
    result = trainer.method.step(trainer.policy, trainer.reference, batch)
    # At step 0 the policy is the reference: every DPO margin is exactly 0.
    assert torch.equal(result.per_pair["margin"], torch.zeros(3))


def test_each_evaluation_keeps_its_per_pair_held_out_margins_across_a_resume(tmp_path):
    from safetensors.torch import load_file

    trainer = _trainer(tmp_path, epochs=2, stop_after=6, eval_at_start=True)
    trainer.train()
    trainer = _trainer(tmp_path, epochs=2, eval_at_start=True)
    summary = trainer.train(resume=True)
    table = load_file(str(tmp_path / "run" / "heldout_margins.safetensors"))
    assert table["step"].tolist() == [0, 6, 12] and table["epoch"].tolist() == [0.0, 1.0, 2.0]
    assert table["h"].shape == table["M"].shape == (3, 4)
    assert torch.equal(table["h"][0], torch.zeros(4))  # the policy is the reference at step 0
    # The last row is the final evaluation: its accuracy is the summary's.
    h = table["h"][-1]
    assert ((h > 0).float() + 0.5 * (h == 0).float()).mean().item() == summary["final"]["eval/accuracy_h"]
