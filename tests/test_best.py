"""Keeping the best evaluation: the best is the first maximum of the logged metric, its weights end the run,
early stopping stops at the first evaluation that exhausts the patience, and resume keeps all of it."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_pairs
from robalign.best import BestKeeper
from robalign.config import build_config
from robalign.errors import ConfigError
from robalign.trainer import Trainer

METRIC = "eval/accuracy_h"


def _trainer(tmp_path, name="run", **train):
    cfg = build_config({"model": {"name": "tiny-llama", "lora_r": 0}, "method": {"name": "dpo"},
                        "data": {"max_length": 64},
                        "train": {"output_dir": str(tmp_path / name), "batch_size": 2, "lr": 3e-2,
                                  "max_steps": 10, "eval_every": 1, "save_every": 1, "progress": False, "keep_last": 20,
                                  "schedule": "constant", **train}})
    pairs = make_pairs(12)
    return Trainer(cfg, train_pairs=pairs, eval_pairs=make_pairs(8)[4:])


def _evals(run):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if METRIC in r]


def _first_max(evals, metric=METRIC):
    best = max(r[metric] for r in evals)
    return next(r for r in evals if r[metric] == best)


def test_keeper_keeps_the_first_maximum_and_counts_patience(tmp_path):
    keeper = BestKeeper(tmp_path, "auto", patience=2, keep_weights=False)
    assert keeper.update({"eval/accuracy_M": 0.5, "eval/accuracy_h": 0.5}, 0, 0.0, None)
    assert keeper.metric == "accuracy_h"  # auto: the reference log-ratio when there is one
    assert keeper.update({METRIC: 0.7}, 1, 1.0, None)
    assert not keeper.update({METRIC: 0.7}, 2, 2.0, None)  # a tie keeps the earlier (shorter) run
    assert not keeper.exhausted
    assert not keeper.update({METRIC: float("nan")}, 3, 3.0, None)
    assert keeper.exhausted and keeper.describe() == {"metric": "accuracy_h", "value": 0.7, "step": 1, "epoch": 1.0}
    other = BestKeeper(tmp_path, "auto", patience=2, keep_weights=False)
    other.load_state(json.loads(json.dumps(keeper.state())))
    assert other.state() == keeper.state()
    assert BestKeeper(tmp_path, "auto", 0, False).update({"eval/accuracy_M": 0.1}, 0, 0.0, None)
    with pytest.raises(ConfigError, match="margin_h"):
        BestKeeper(tmp_path, "margin_h", 0, False).update({"eval/accuracy_M": 0.1}, 0, 0.0, None)


def test_load_best_model_at_end_ends_with_the_best_evaluations_weights(tmp_path):
    plain = _trainer(tmp_path, "plain").train()
    evals = _evals(tmp_path / "plain")
    best = _first_max(evals)
    assert best["step"] != evals[-1]["step"], "the test needs a run whose last evaluation is not its best"
    summary = _trainer(tmp_path, "best", load_best_model_at_end=True).train()
    assert _evals(tmp_path / "best") == evals  # keeping the best changes nothing on the way
    assert summary["best"] == {"metric": "accuracy_h", "value": best[METRIC], "step": best["step"],
                               "epoch": best["epoch"]}
    assert summary["final"] == {k: v for k, v in best.items() if k.startswith("eval/")}
    assert plain["final"] != summary["final"]
    # The weights that end the run are the checkpoint of the best step (an independent copy of them).
    at_best = load_file(str(tmp_path / "plain" / "checkpoints" / f"step-{best['step']:08d}" / "weights.safetensors"))
    final = load_file(str(tmp_path / "best" / "final" / "model.safetensors"))
    for name, value in at_best.items():
        assert torch.equal(final[name], value), name
    # ... while checkpoints/ keeps the last weights, for an exact --resume.
    last = load_file(str(tmp_path / "best" / "checkpoints" / "step-00000010" / "weights.safetensors"))
    assert any(not torch.equal(last[n], v) for n, v in at_best.items())


def test_early_stopping_stops_at_the_first_evaluation_that_exhausts_the_patience(tmp_path):
    _trainer(tmp_path, "plain").train()
    evals = _evals(tmp_path / "plain")
    value, since, stop = -math.inf, 0, None
    for r in evals:  # an independent count over the full run's log
        since = 0 if r[METRIC] > value else since + 1
        value = max(value, r[METRIC])
        if since >= 2:
            stop = r["step"]
            break
    assert stop is not None and stop < 10, "the test needs a run that stalls for 2 evaluations"
    summary = _trainer(tmp_path, "stop", early_stopping_patience=2).train()
    assert summary["steps"] == stop and summary["stopped_early"]
    assert _evals(tmp_path / "stop") == [r for r in evals if r["step"] <= stop]  # no extra final evaluation
    assert summary["final"] == {k: v for k, v in evals[[r["step"] for r in evals].index(stop)].items()
                                if k.startswith("eval/")}


def test_resume_keeps_the_best_and_the_patience(tmp_path):
    whole = _trainer(tmp_path, "whole", early_stopping_patience=2, load_best_model_at_end=True).train()
    _trainer(tmp_path, "parts", early_stopping_patience=2, load_best_model_at_end=True, stop_after=2).train()
    parts = _trainer(tmp_path, "parts", early_stopping_patience=2, load_best_model_at_end=True).train(resume=True)
    assert (parts["steps"], parts["best"], parts["final"]) == (whole["steps"], whole["best"], whole["final"])
    again = _trainer(tmp_path, "parts", early_stopping_patience=2, load_best_model_at_end=True).train(resume=True)
    assert again["finished_before"] and again["final"] == whole["final"] and again["best"] == whole["best"]


def test_best_needs_evaluations_and_a_known_metric():
    with pytest.raises(ConfigError, match="eval_per_epoch"):
        build_config({"train": {"load_best_model_at_end": True, "eval_per_epoch": 0}})
    with pytest.raises(ConfigError, match="metric_for_best_model"):
        build_config({"train": {"metric_for_best_model": "loss"}})


def test_auto_picks_the_margin_a_reference_free_method_trains(tmp_path):
    """SimPO is evaluated against a reference here too (the evaluator reports h), but it trains M."""
    cfg = build_config({"model": {"name": "tiny-llama", "lora_r": 0}, "method": {"name": "simpo"},
                        "data": {"max_length": 64},
                        "train": {"output_dir": str(tmp_path / "run"), "batch_size": 2, "max_steps": 2, "eval_every": 1,
                                  "progress": False, "load_best_model_at_end": True}})
    both = {"eval/accuracy_h": 0.9, "eval/accuracy_M": 0.6}
    for trainer, scored in ((Trainer(cfg, train_pairs=make_pairs(8), eval_pairs=make_pairs(8)[4:]), "accuracy_M"),
                            (_trainer(tmp_path, "dpo", load_best_model_at_end=True), "accuracy_h")):
        trainer.best.update(both, 1, 0.5, trainer.model)
        assert trainer.best.metric == scored and trainer.best.value == both[f"eval/{scored}"]
