"""Gold reward of generations paired prompt by prompt, against hand counts."""

import json

import torch

from robalign.experiments.paired_gold import gold_rewards, sections
from robalign.stats import seed_t_interval


def _cell(path, policy, reference):
    path.mkdir()
    rows = [{"prompt": f"p{i}", "reward_policy_greedy": a, "reward_reference_greedy": b}
            for i, (a, b) in enumerate(zip(policy, reference))]
    (path / "gold_generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_each_method_is_compared_with_the_base_model_and_with_dpo_prompt_by_prompt(tmp_path):
    reference = [0.0, 0.5, 1.0, 0.0]  # the base model's greedy rewards on the seed's 4 prompts
    results = []
    for seed in (1, 0, 2):  # out of order on purpose
        dpo = [1.0, 1.0, 1.0, 0.0]
        simpo = [1.0, 0.5 - 0.25 * seed, 0.0, 0.0]
        for method, policy in (("dpo", dpo), ("simpo", simpo)):
            _cell(tmp_path / f"{method}-{seed}", policy, reference)
            results.append({"method": method, "kind": "flip", "rate": 0.4, "seed": seed})
    results.append({"method": "hinge", "kind": "flip", "rate": 0.4, "seed": 0})  # no generations: left out
    lines = sections(results, lambda r: tmp_path / f"{r['method']}-{r['seed']}")
    text = "\n".join(lines)
    gain, versus = text.split("the base model's")[1].split("##")[0], text.split("− dpo's")[1]
    # DPO − base: (1 + 0.5 + 0 + 0) / 4 on every seed.
    assert "| dpo | flip 0.4 | +0.375 |" in gain and "+0.375, +0.375, +0.375" in gain
    row = next(line for line in versus.splitlines() if line.startswith("| simpo | flip 0.4 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    per_seed = [(0 + (0.5 - 0.25 * s - 1) - 1 + 0) / 4 for s in (0, 1, 2)]  # −0.375, −0.4375, −0.5
    assert cells[4] == ", ".join(f"{d:+.3f}" for d in per_seed)
    assert cells[2] == f"{sum(per_seed) / 3:+.3f}"
    t = seed_t_interval([torch.tensor([d]) for d in per_seed])
    assert cells[5] == f"[{t['low']:+.3f}, {t['high']:+.3f}]"
    assert cells[6:] == ["3", "12"]
    assert "hinge" not in text


def test_cells_without_generations_give_no_table(tmp_path):
    (tmp_path / "dpo").mkdir()
    assert gold_rewards(tmp_path / "dpo") is None
    assert sections([{"method": "dpo", "kind": "flip", "rate": 0.0, "seed": 0}], lambda r: tmp_path / "dpo") == []
