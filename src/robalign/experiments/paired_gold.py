"""Gold reward of generations compared prompt by prompt: each method against the base model and against DPO.

A cell on the built-in task decodes the same held-out prompts for every method of a seed and keeps each
prompt's gold reward (`gold_generations.jsonl`, written by `robalign.experiments.cells`), so two cells, or a
cell and the base model it started from, are compared prompt by prompt and seeds are combined by the same
hierarchical bootstrap as held-out accuracy. A cell mean of 64 prompts alone cannot say whether a 3-point
difference is real; the paired interval can.
"""

from __future__ import annotations

from pathlib import Path

import torch

from robalign import jsonl
from robalign.experiments.cells import GOLD_GENERATIONS
from robalign.experiments.curves import BASELINE, paired_table, seed_ordered


def gold_rewards(cell: Path) -> dict[str, torch.Tensor] | None:
    """{"policy", "reference"}: the gold reward of each prompt's greedy completion by the trained policy and
    by the base model, in prompt order; None when the cell kept no generations."""
    path = Path(cell) / GOLD_GENERATIONS
    if not path.is_file():
        return None
    rows = jsonl.read_rows(path, encoding="utf-8")
    return {"policy": torch.tensor([r["reward_policy_greedy"] for r in rows], dtype=torch.float64),
            "reference": torch.tensor([r["reward_reference_greedy"] for r in rows], dtype=torch.float64)}


def _groups(couples: list[tuple[dict, dict, str]], cell_of) -> list[tuple[tuple, list[torch.Tensor]]]:
    """couples: (cell a, cell b, side of b: "policy" or "reference") → [((method, kind, rate, "gold"),
    [per-prompt gold reward of a's policy − of b's side, one tensor per seed in seed order])]; couples missing
    generations, or decoded on other prompts, are left out."""
    groups: dict[tuple, list] = {}
    for a, b, side in couples:
        first, second = gold_rewards(cell_of(a)), gold_rewards(cell_of(b))
        if first is None or second is None or len(first["policy"]) != len(second[side]):
            continue
        groups.setdefault((a["method"], a["kind"], a["rate"], "gold"), []).append(
            (a["seed"], first["policy"] - second[side]))
    return seed_ordered(groups)


def sections(results: list[dict], cell_of) -> list[str]:
    """Report lines: gold reward of each cell's greedy generations − the base model's on the same prompts,
    and − DPO's of the same seed and noise; empty when no cell kept its generations."""
    base = {(r["kind"], r["rate"], r["seed"]): r for r in results if r["method"] == BASELINE}
    versus_dpo = [(r, base[(r["kind"], r["rate"], r["seed"])], "policy") for r in results
                  if r["method"] != BASELINE and (r["kind"], r["rate"], r["seed"]) in base]
    versus_base = [(r, r, "reference") for r in results]
    return (paired_table(_groups(versus_base, cell_of), "Gold reward of greedy generations − the base model's, "
                         "paired over held-out prompts (what training bought; 95 % interval: bootstrap over "
                         "seeds and prompts)", "gain", unit="prompts")
            + paired_table(_groups(versus_dpo, cell_of), f"Gold reward of greedy generations − {BASELINE}'s, "
                           "paired over held-out prompts (same seed and noise; 95 % interval: bootstrap over "
                           "seeds and prompts)", "difference", unit="prompts"))
