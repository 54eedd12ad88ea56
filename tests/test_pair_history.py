"""Each training pair's margin per epoch: the unit's bookkeeping, and the trainer's table against a brute-force
record of the margins its steps computed, across a resume."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_pairs
from robalign.config import build_config
from robalign.pair_history import PairHistory
from robalign.trainer import Trainer


def test_table_is_the_mean_margin_met_per_epoch_and_nan_where_unmet():
    history = PairHistory(torch.tensor([1.0, 0.0, math.nan]))
    history.record(0, torch.tensor([0, 2]), torch.tensor([0.5, -1.0]))
    history.record(1, torch.tensor([1]), torch.tensor([2.0]))
    history.record(1, torch.tensor([1]), torch.tensor([4.0]))  # met twice in one epoch: the mean
    table = history.table()
    expected = torch.tensor([[0.5, math.nan, -1.0], [math.nan, 3.0, math.nan]])
    assert torch.equal(table.isnan(), expected.isnan())
    assert torch.equal(table.nan_to_num(), expected.nan_to_num())


def test_reduce_sums_processes_and_state_round_trips():
    a, b = PairHistory(torch.zeros(3)), PairHistory(torch.zeros(3))
    a.record(0, torch.tensor([0]), torch.tensor([1.0]))
    b.record(0, torch.tensor([1, 2]), torch.tensor([2.0, 3.0]))
    # a stand-in for an all-reduce over the two processes
    both = lambda t: a.sums[0] + b.sums[0] if t is a.sums[0] or t is b.sums[0] else a.counts[0] + b.counts[0]  # noqa: E731
    assert a.table(both).tolist() == [[1.0, 2.0, 3.0]]
    restored = PairHistory(torch.zeros(3))
    restored.load_state(a.state(both))
    assert restored.table().tolist() == [[1.0, 2.0, 3.0]]
    restored.load_state(None)
    assert restored.table().shape == (0, 3)


def _trainer(tmp_path, name="run", **train):
    cfg = build_config({"model": {"name": "tiny-llama", "lora_r": 0}, "method": {"name": "dpo"},
                        "data": {"max_length": 64},
                        "train": {"output_dir": str(tmp_path / name), "batch_size": 2, "lr": 1e-2,
                                  "progress": False, "epochs": 2, "save_every": 2, **train}})
    return Trainer(cfg, train_pairs=make_pairs(12), eval_pairs=make_pairs(4, seed=1))


def _record_margins(trainer) -> list[tuple[int, int, float]]:
    """(epoch, dataset position, margin) of every pair each step trained on, from the method's own result."""
    seen = []
    step = trainer.method.step

    def recording(policy, reference, batch):
        result = step(policy, reference, batch)
        epoch = (trainer.position - 1) // trainer.per_epoch  # the trainer advanced its position for this batch
        seen.extend((epoch, i, m) for i, m in zip(batch.index.tolist(), result.per_pair["margin"].tolist()))
        return result

    trainer.method.step = recording
    return seen


def test_trainer_writes_each_pairs_margin_per_epoch_with_its_flip_flag(tmp_path):
    trainer = _trainer(tmp_path)
    seen = _record_margins(trainer)
    trainer.train()
    table = load_file(str(tmp_path / "run" / "train_margins.safetensors"))
    assert table["margin"].shape == (2, 12)
    assert table["is_flipped"].tolist() == [float(i % 3 == 0) for i in range(12)]  # make_pairs' flags
    expected = torch.full((2, 12), math.nan)
    for epoch, index, margin in seen:
        expected[epoch, index] = margin  # each pair is met once per epoch
    assert len(seen) == 24
    assert torch.equal(table["margin"], expected)
    # The last epoch's column means agree with the logged share of flipped labels preferred.
    last = table["margin"][1]
    flipped = table["is_flipped"] == 1
    share = ((last[flipped] > 0).float() + 0.5 * (last[flipped] == 0).float()).mean().item()
    logged = [r for r in trainer._eval_rows() if "train/fit_flipped" in r][-1]["train/fit_flipped"]
    assert share == pytest.approx(logged)


def test_the_table_is_the_same_after_a_resume(tmp_path):
    whole = _trainer(tmp_path, "whole")
    whole.train()
    part = _trainer(tmp_path, "part", stop_after=7)  # stops mid-epoch 2, after a checkpoint at step 6
    part.train()
    _trainer(tmp_path, "part").train(resume=True)
    a = load_file(str(tmp_path / "whole" / "train_margins.safetensors"))["margin"]
    b = load_file(str(tmp_path / "part" / "train_margins.safetensors"))["margin"]
    assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


def test_the_checkpoint_keeps_the_table_as_tensors_not_json(tmp_path):
    part = _trainer(tmp_path, "part", stop_after=7)
    part.train()
    step = tmp_path / "part" / "checkpoints" / "step-00000006"
    assert "pair_history" not in json.loads((step / "state.json").read_text())
    saved = load_file(str(step / "state.safetensors"))
    assert sorted(saved) == ["pair_history/counts/0", "pair_history/sums/0"]  # steps 1-6 are epoch 0
    assert saved["pair_history/counts/0"].tolist() == [1.0] * 12  # which met each of the 12 pairs once


def test_older_checkpoints_json_lists_still_load():
    history = PairHistory(torch.zeros(2))
    history.load_state({"0": [[1.0, 4.0], [1.0, 2.0]]})  # {epoch: [sums, counts]}, as state.json held it
    assert history.table().tolist() == [[1.0, 2.0]]


def test_online_methods_keep_no_history(tmp_path):
    cfg = build_config({"model": {"name": "tiny-llama", "lora_r": 0}, "method": {"name": "sail"},
                        "data": {"max_length": 64},
                        "train": {"output_dir": str(tmp_path / "run"), "batch_size": 2, "progress": False,
                                  "max_steps": 1}})
    assert Trainer(cfg, train_pairs=make_pairs(4), eval_pairs=make_pairs(2)).history is None


def test_flip_aurocs_of_epoch_1_margin_and_area_under_the_margin_by_hand():
    from robalign.pair_history import flip_aurocs

    # pairs 0, 1 flipped, 2, 3 clean, 4 never trained. Epoch 1 ranks the flips first; over both epochs the
    # areas are 0.75, -1.0 (flipped) and -1.0, -2.0 (clean) once negated: 3.5 of 4 couples, a tie counting half
    margin = torch.tensor([[-2.0, -1.0, 1.0, 2.0, math.nan], [0.5, 3.0, 1.0, 2.0, math.nan]])
    result = flip_aurocs(margin, torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0]))
    assert result == {"-margin, epoch 1": 1.0, "-AUM": 0.875}
    assert math.isnan(flip_aurocs(margin, torch.zeros(5))["-AUM"])  # no flipped pair: undefined


def test_the_sweep_report_gives_the_margin_signals_of_noisy_cells(tmp_path):
    from safetensors.torch import save_file

    from robalign.experiments.curves import _margin_signals

    for name in ("noisy", "clean"):
        (tmp_path / name).mkdir()
        save_file({"margin": torch.tensor([[-2.0, -1.0, 1.0, 2.0]]), "is_flipped": torch.tensor([1.0, 1.0, 0.0, 0.0])},
                  str(tmp_path / name / "train_margins.safetensors"))
    results = [{"method": "dpo", "kind": "flip", "rate": 0.4, "seed": 0},
               {"method": "dpo", "kind": "flip", "rate": 0.0, "seed": 0}]
    lines = _margin_signals(results, lambda r: tmp_path / ("clean" if r["rate"] == 0 else "noisy"))
    rows = [line for line in lines if line.startswith("| dpo |")]
    assert rows == ["| dpo | flip 0.4 | 1.000 | 1.000 | 1 |"]  # the clean cell has nothing to flag
