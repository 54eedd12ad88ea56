"""Training only on the pairs the base model agrees with most (`data.keep_fraction`).

Under symmetric label noise at rate ε the signal a pair carries about the true preference shrinks by
(1 − 2ε), so its information by (1 − 2ε)²: at ε = 0.4 a pair is worth 4 % of a clean one, and no loss
correction can recover information the labels do not hold. A signal that is independent of the labels
can: the base model's own preference. Before training, each training pair gets the base model's
length-normalised margin on its given label,

    M_i = log π_0(y_w | x) / |y_w| − log π_0(y_l | x) / |y_l|,

and only the `keep_fraction` of pairs with the highest M_i are trained on; the rest (the pairs whose
given label the base model disputes most, where flipped labels concentrate) are dropped. It pays when
the base model's preference is better than chance on the task (flip AUROC of −M above 0.5; the run
reports it whenever the data carries `is_flipped`), and biases training toward what the base model
already prefers; `robalign score` measures the same signal (and GAPO's anchor weight) on a dataset
before training.

Cost: one forward pass over the training pairs (with `model.trunk_cache`, over the last k blocks only).
The choice is deterministic (ties keep the data order), so every process and every resume keeps the same
pairs.
"""

from __future__ import annotations

import math

import torch

from robalign.data.tokenize import TokenizedPair
from robalign.evaluate import PreferenceEvaluator


def base_margins(model, pairs: list[TokenizedPair], *, pad_id: int, trunk=None, batch_size: int = 8) -> torch.Tensor:
    """M_i of every pair under `model` (its current weights), [n] in the order of `pairs`."""
    evaluator = PreferenceEvaluator(pairs, pad_id, batch_size=batch_size, trunk=trunk)
    evaluator.evaluate(model)
    margins = torch.empty(len(pairs), dtype=torch.float64)
    margins[torch.tensor(evaluator.order)] = evaluator.last_margins["M"].double().cpu()
    return margins


def keep_most_agreeing(margins: torch.Tensor, fraction: float) -> list[int]:
    """Indices of the ceil(fraction · n) pairs with the highest margin, in their original order."""
    n_keep = max(1, math.ceil(fraction * len(margins)))
    # A stable sort on −margin: equal margins keep the data order, so the choice is reproducible.
    order = sorted(range(len(margins)), key=lambda i: (-float(margins[i]), i))
    return sorted(order[:n_keep])


def filter_report(margins: torch.Tensor, kept: list[int], flipped: list[bool | None]) -> dict:
    """What the filter did: pairs kept and dropped, and where labels are known to be flipped, the flipped share
    before and after and the flip AUROC of −M (0.5 = the signal knows nothing, 1 = it finds every flip)."""
    from robalign.losses.gapo import flip_auroc_ranked

    out = {"pairs": len(margins), "kept": len(kept), "dropped": len(margins) - len(kept)}
    if flipped and all(f is not None for f in flipped):
        flags = torch.tensor([float(f) for f in flipped], dtype=torch.float64)
        out["flipped_before"] = float(flags.mean())
        out["flipped_after"] = float(flags[torch.tensor(kept)].mean())
        auroc = float(flip_auroc_ranked(-margins, flags))
        if not math.isnan(auroc):
            out["flip_auroc"] = auroc
    return out
