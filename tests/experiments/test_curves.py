"""The long-training report's paired cost of noise, against a hand count."""

import torch
from safetensors.torch import save_file

from robalign.experiments.curves import _cost_of_noise


def test_cost_of_noise_is_clean_minus_noisy_correctness_on_the_same_pairs(tmp_path):
    clean = torch.tensor([[0.0] * 4, [1.0, 1.0, 1.0, -1.0]])  # last epoch: 3 of 4 right
    noisy = torch.tensor([[0.0] * 4, [1.0, -1.0, 0.0, -1.0]])  # last epoch: 1 right, 1 tie (half)
    for name, h in (("clean", clean), ("noisy", noisy)):
        (tmp_path / name).mkdir()
        save_file({"h": h, "epoch": torch.tensor([0.0, 1.0], dtype=torch.float64)},
                  str(tmp_path / name / "heldout_margins.safetensors"))
    results = [{"method": "dpo", "kind": "flip", "rate": 0.0, "seed": 0},
               {"method": "dpo", "kind": "flip", "rate": 0.4, "seed": 0}]
    lines = _cost_of_noise(results, lambda r: tmp_path / ("clean" if r["rate"] == 0 else "noisy"), lambda r: "h")
    row = next(line for line in lines if line.startswith("| dpo | flip 0.4 |"))
    assert "+0.375" in row  # 0.75 − (1 + 0 + 0.5 + 0) / 4


def _three_seeds(tmp_path, methods=("dpo", "hinge")) -> list[dict]:
    """Seed s: DPO right on all 4 pairs, any other method on s + 1 of them (differences −0.75, −0.5, −0.25)."""
    results = []
    for seed in (2, 0, 1):  # out of order on purpose
        for method in methods:
            right = 4 if method == "dpo" else seed + 1
            h = torch.tensor([[0.0] * 4, [1.0] * right + [-1.0] * (4 - right)])
            cell = tmp_path / f"{method}-{seed}"
            cell.mkdir()
            save_file({"h": h, "epoch": torch.tensor([0.0, 1.0], dtype=torch.float64)},
                      str(cell / "heldout_margins.safetensors"))
            results.append({"method": method, "kind": "flip", "rate": 0.4, "seed": seed})
    return results


def test_versus_baseline_lists_each_seed_in_seed_order_and_a_t_interval(tmp_path):
    from robalign.experiments.curves import _versus_baseline
    from robalign.stats import seed_t_interval

    results = _three_seeds(tmp_path)
    lines = _versus_baseline(results, lambda r: tmp_path / f"{r['method']}-{r['seed']}", lambda r: "h")
    row = next(line for line in lines if line.startswith("| hinge | flip 0.4 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "-0.500"
    assert cells[4] == "-0.750, -0.500, -0.250"
    t = seed_t_interval([torch.tensor([d]) for d in (-0.75, -0.5, -0.25)])
    assert cells[5] == f"[{t['low']:+.3f}, {t['high']:+.3f}]"
    assert cells[6] == "3"


def test_versus_baseline_plot_is_drawn_only_when_a_method_has_dpo_to_pair_with(tmp_path):
    from robalign.experiments.curves import plot_versus_baseline

    results = _three_seeds(tmp_path)
    cell_of = lambda r: tmp_path / f"{r['method']}-{r['seed']}"  # noqa: E731
    path = plot_versus_baseline(results, cell_of, lambda r: "h", tmp_path / "versus.png")
    assert path is not None and path.stat().st_size > 0
    alone = [r for r in results if r["method"] == "hinge"]  # no DPO cell: nothing to pair
    assert plot_versus_baseline(alone, cell_of, lambda r: "h", tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def _cell_with_last_margins(cell, table: dict) -> None:
    """A cell folder whose held-out margins are 0 at epoch 0 and `table` (reward -> margins) at epoch 1."""
    cell.mkdir()
    save_file({k: torch.tensor([[0.0] * len(v), v]) for k, v in table.items()} |
              {"epoch": torch.tensor([0.0, 1.0], dtype=torch.float64)}, str(cell / "heldout_margins.safetensors"))


def test_a_reference_free_method_is_scored_on_M_against_dpo_on_h(tmp_path):
    """SimPO never looks at a reference: its h is a by-product, its M is what it trains. Cells written before
    `reward` was recorded are read from their config.yaml."""
    import yaml

    from robalign.experiments.cells import implicit_reward
    from robalign.experiments.curves import _reward_keys, _versus_baseline

    cells = {"dpo": {"h": [1.0, 1.0, -1.0, -1.0], "M": [1.0, 1.0, 1.0, 1.0]},  # h right on 2 of 4
             "simpo": {"h": [-1.0, -1.0, -1.0, -1.0], "M": [1.0, 1.0, 1.0, -1.0]}}  # M right on 3 of 4
    results = []
    for method, table in cells.items():
        cell = tmp_path / method
        _cell_with_last_margins(cell, table)
        (cell / "config.yaml").write_text(yaml.safe_dump({"method": {"name": method}}))
        results.append({"method": method, "kind": "flip", "rate": 0.4, "seed": 0, "accuracy_h": 0.5})
    cell_of = lambda r: tmp_path / r["method"]  # noqa: E731
    assert [implicit_reward(r, cell_of(r)) for r in results] == ["h", "M"]
    assert implicit_reward({"reward": "h"}, tmp_path / "simpo") == "h"  # a recorded reward wins
    assert implicit_reward({"accuracy_h": None, "accuracy_M": 0.6}, tmp_path / "dpo") == "M"  # no reference scored
    assert implicit_reward({}, tmp_path / "nowhere") == "h"  # no result, no config: the reference margin
    row = next(line for line in _versus_baseline(results, cell_of, _reward_keys(results, cell_of))
               if line.startswith("| simpo (M) | flip 0.4 |"))
    assert "+0.250" in row  # 3/4 on M − 2/4 on h


def test_the_long_training_table_shows_where_each_reward_started_and_how_far_it_moved(tmp_path):
    from robalign.experiments.curves import sections

    # SimPO is scored on M, which starts at the base model's own preference; DPO on h, which starts at 0.5.
    curves = {"dpo": [{"epoch": 0.0, "accuracy_h": 0.5, "accuracy_M": 0.62},
                      {"epoch": 1.0, "accuracy_h": 0.58, "accuracy_M": 0.63}],
              "simpo": [{"epoch": 0.0, "accuracy_h": 0.5, "accuracy_M": 0.62},
                        {"epoch": 1.0, "accuracy_h": 0.46, "accuracy_M": 0.61}]}
    results = []
    for method, curve in curves.items():
        cell = tmp_path / method
        cell.mkdir()
        margins = {"M": torch.tensor([[0.1, -0.1], [0.2, -0.2]]), "epoch": torch.tensor([0.0, 1.0], dtype=torch.float64)}
        margins["h"] = torch.tensor([[0.0, 0.0], [0.3, -0.1]])
        save_file(margins, str(cell / "heldout_margins.safetensors"))
        results.append({"method": method, "kind": "flip", "rate": 0.4, "seed": 0, "curve": curve,
                        "accuracy_h": curve[-1]["accuracy_h"], "reward": "M" if method == "simpo" else "h"})
    lines = sections(results, lambda r: tmp_path / r["method"], tmp_path)
    table = "\n".join(lines).split("at the last and at the best epoch")[1]
    dpo = next(line for line in table.splitlines() if line.startswith("| dpo | flip 0.4 |"))
    simpo = next(line for line in table.splitlines() if line.startswith("| simpo (M) | flip 0.4 |"))
    assert dpo.split(" | ")[2:5] == ["0.500", "0.580", "0.080"]  # start, last, last − start
    assert simpo.split(" | ")[2:5] == ["0.620", "0.610", "-0.010"]


def test_methods_scored_on_different_rewards_are_also_compared_on_M(tmp_path):
    """SimPO's own M against DPO's h credits SimPO with the base model's prior; the report adds the comparison
    on M, which both policies have."""
    from robalign.experiments.curves import sections

    tables = {"dpo": {"h": [1.0, 1.0, -1.0, -1.0], "M": [1.0, 1.0, 1.0, -1.0]},  # h: 2/4, M: 3/4
              "simpo": {"h": [-1.0] * 4, "M": [1.0, -1.0, -1.0, -1.0]}}  # M: 1/4
    results = []
    for method, table in tables.items():
        _cell_with_last_margins(tmp_path / method, table)
        results.append({"method": method, "kind": "flip", "rate": 0.4, "seed": 0, "accuracy_h": 0.5,
                        "reward": "M" if method == "simpo" else "h",
                        "curve": [{"epoch": e, "accuracy_h": 0.5, "accuracy_M": 0.5} for e in (0.0, 1.0)]})
    text = "\n".join(sections(results, lambda r: tmp_path / r["method"], tmp_path))
    own, on_m = text.split("each on its own implicit reward")[1], text.split("both on M")[1]
    assert "| simpo (M) | flip 0.4 | -0.250 |" in own.split("##")[0]  # 1/4 on M − 2/4 on h
    assert "| simpo (M) | flip 0.4 | -0.500 |" in on_m.split("##")[0]  # 1/4 − 3/4, both on M
    alone = [dict(r, reward="h") for r in results]  # one reward for all: no second table
    assert "both on M" not in "\n".join(sections(alone, lambda r: tmp_path / r["method"], tmp_path))


def test_early_stopping_table_picks_on_a_noisy_and_on_a_clean_validation_half(tmp_path):
    """Brute force: score every evaluation on the validation half (labels flipped at the cell's rate, or
    clean), keep the first best, and report its clean test-half accuracy minus the last evaluation's."""
    from robalign.experiments.curves import _early_stopping
    from robalign.experiments.selection import halves

    gen = torch.Generator().manual_seed(3)
    h = torch.randn(4, 40, generator=gen)  # 4 evaluations of 40 held-out pairs
    cell = tmp_path / "dpo"
    cell.mkdir()
    save_file({"h": h, "epoch": torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)},
              str(cell / "heldout_margins.safetensors"))
    result = {"method": "dpo", "kind": "flip", "rate": 0.4, "seed": 5}

    def brute(rate):
        val, test, flipped = halves(40, 5, rate)
        scores = []
        for row in h:
            right = [(1.0 if m > 0 else 0.0) for m in row[val].tolist()]
            scores.append(sum(1 - r if f else r for r, f in zip(right, flipped.tolist())) / len(right))
        best = scores.index(max(scores))
        acc = lambda row: sum(1.0 if m > 0 else 0.0 for m in row[test].tolist()) / len(test)  # noqa: E731
        return acc(h[best]) - acc(h[-1]), float(best)

    row = next(line for line in _early_stopping([result], lambda r: cell, lambda r: "h")
               if line.startswith("| dpo | flip 0.4 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    (noisy_gain, noisy_epoch), (clean_gain, clean_epoch) = brute(0.4), brute(0.0)
    assert cells[4] == f"{noisy_gain:+.3f}" and cells[6] == f"{noisy_gain:+.3f}" and cells[7] == f"{noisy_epoch:.1f}"
    assert (noisy_epoch, noisy_gain) != (clean_epoch, clean_gain)  # the two halves pick differently here
    assert cells[8] == f"{clean_gain:+.3f}" and cells[10] == f"{clean_gain:+.3f}" and cells[11] == f"{clean_epoch:.1f}"
