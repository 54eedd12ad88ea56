"""Clean held-out preference evaluation of the implicit reward.

Reports both implicit rewards: the reference log-ratio margin h (when a reference exists) and the
reference-free length-normalised margin M, so reference-based and reference-free methods compare.
"""

from __future__ import annotations

import torch

from robalign.blocks import device_of
from robalign.data.collate import collate
from robalign.data.tokenize import TokenizedPair
from robalign.logprobs import sequence_logps
from robalign.pair_logps import PairLogps, dpo_margin, length_normalised_margin
from robalign.precision import FP32_TAG, check_recorded_precision
from robalign.stats import correctness

# What the two held-out accuracies mean: printed by `robalign train --help`, `robalign eval --help` and under
# the summary at the end of a run, and said again in the README's "Metrics" section.
ACCURACY_EXPLAINED = (
    "accuracy_h: share of held-out pairs whose log-ratio margin h = [log π(chosen) − log π_ref(chosen)] − "
    "[log π(rejected) − log π_ref(rejected)] is positive, i.e. that the implicit reward of DPO-family losses "
    "ranks as labelled (needs a reference; 0.5 at step 0, where the policy is its reference). accuracy_M: the "
    "same for the reference-free margin M = mean token log-prob of chosen − that of rejected (what SimPO and "
    "GAPO train; the model's own length-normalised preference). A tie counts half, in evaluation and in the "
    "training-time rewards/accuracies alike, so 0.5 is chance. Held-out labels are the clean ones.")


class PreferenceEvaluator:
    """Evaluates a policy on fixed tokenised pairs; reference log-probs are computed once and kept.

    Args:
        reference: a reference provider (`robalign.reference`), or None (then only M is reported).
        reference_cache: a dict owned by the caller that keeps the reference log-probs between evaluators
            of the same pairs (e.g. every cell of a sweep that shares a held-out split and a base model).
            Only valid while every evaluator given it has a reference with the same weights.
        trunk: a `robalign.trunk.TrunkCache` holding these pairs; forwards then run only the top blocks.
        precision: how the reference computes (`robalign.precision.precision_tag`), recorded with what it
            puts in `reference_cache`; an entry recorded in another precision is refused.
    """

    def __init__(self, pairs: list[TokenizedPair], pad_id: int, reference=None, batch_size: int = 8,
                 reference_cache: dict | None = None, trunk=None, precision: str = FP32_TAG):
        self.pairs, self.pad_id, self.reference, self.batch_size = pairs, pad_id, reference, batch_size
        self.reference_cache, self.precision = reference_cache, precision
        order = self.order = sorted(range(len(pairs)), key=lambda i: len(pairs[i]))
        # Collated once: every evaluation (and the one reference pass) reuses the same tensors.
        groups = [[pairs[i] for i in order[s:s + batch_size]] for s in range(0, len(order), batch_size)]
        self.batches = [collate(g, pad_id) for g in groups]
        if trunk is not None:  # a `robalign.trunk.TrunkCache` holding these pairs: run only the top blocks
            self.batches = [trunk.attach(b, g) for b, g in zip(self.batches, groups)]
        self._ref: list[PairLogps] | None = None

    @torch.no_grad()
    def _reference_logps(self) -> list[PairLogps] | None:
        if self._ref is None and self.reference is None:
            return None
        if self._ref is None:
            cache = self.reference_cache if self.reference_cache is not None else {}
            key = (self.pad_id, self.batch_size,
                   tuple((tuple(p.prompt_ids), tuple(p.chosen_ids), tuple(p.rejected_ids)) for p in self.pairs))
            if key not in cache:
                device = device_of(getattr(self.reference, "model", None))
                refs = [self.reference.logps(b.to(device)) for b in self.batches]
                cache[key] = (self.precision, [] if refs and refs[0] is None else refs)
            recorded, self._ref = cache[key]
            check_recorded_precision(recorded, self.precision, "the evaluator's shared reference cache (held-out "
                                     "reference log-probs)")
        return self._ref or None

    def detach_reference(self):
        """Computes the reference log-probs now and drops the reference (e.g. a frozen copy)."""
        self._reference_logps()
        self.reference = None

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        if not self.pairs:
            return {}
        was_training = model.training
        model.eval()
        refs = self._reference_logps()
        device = device_of(model)
        h, m = [], []
        for k, batch in enumerate(self.batches):  # kept on the CPU, moved one at a time (GPU memory)
            lp = sequence_logps(model, batch.to(device))
            m.append(length_normalised_margin(lp))
            if refs is not None:
                h.append(dpo_margin(lp.with_reference(refs[k].to(device))))
        model.train(was_training)
        # Per pair, in `self.order` (for paired comparisons between runs on the same held-out pairs).
        self.last_margins = {"h": torch.cat(h) if h else None, "M": torch.cat(m)}
        return summarize(self.last_margins["h"], self.last_margins["M"])


def accuracy(margin: torch.Tensor) -> float:
    """Share of pairs whose margin prefers the chosen answer; a tie counts half (h = 0 at step 0)."""
    return correctness(margin, torch.float32).mean().item()


def summarize(h: torch.Tensor | None, m: torch.Tensor) -> dict[str, float]:
    out = {"eval/pairs": float(len(m)), "eval/accuracy_M": accuracy(m), "eval/margin_M": m.mean().item()}
    if h is not None:
        out["eval/accuracy_h"] = accuracy(h)
        out["eval/margin_h"] = h.mean().item()
    return out
