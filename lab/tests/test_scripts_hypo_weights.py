"""lab/scripts/hypo_weights.py: HyPO's initial weight ÷ DPO's, checked against autograd through robalign.losses."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "lab" / "scripts"))

from hypo_weights import hypo_weight_ratio, reference_margins  # noqa: E402

from robalign.losses import preference_loss  # noqa: E402


def _grad(name: str, delta_ref: torch.Tensor, beta: float) -> torch.Tensor:
    chosen = delta_ref.clone().requires_grad_(True)  # an untrained policy: Δ_θ = Δ_ref
    zero = torch.zeros_like(delta_ref)
    out = preference_loss(name, chosen_logps=chosen, rejected_logps=zero, ref_chosen_logps=delta_ref,
                          ref_rejected_logps=zero, beta=beta)
    (g,) = torch.autograd.grad(out.loss, chosen)
    return g


def test_ratio_matches_autograd_of_the_losses():
    delta = torch.tensor([-40.0, -5.0, -0.5, 0.0, 0.7, 12.0], dtype=torch.float64)
    expected = _grad("hypo", delta, 0.1) / _grad("dpo", delta, 0.1)
    torch.testing.assert_close(hypo_weight_ratio(delta, 0.1), expected)
    assert hypo_weight_ratio(delta, 0.1)[0] > 1.9 and hypo_weight_ratio(delta, 0.1)[-1] == 1.0


def test_reference_margins_are_chosen_minus_rejected_sums():
    from robalign.data import PreferencePair
    from robalign.data.collate import collate
    from robalign.data.tokenize import tokenize_pairs
    from robalign.logprobs import sequence_logps
    from robalign.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer("tiny-llama")
    pairs = [PreferencePair("q1", "a short one", "a much longer reply here"),
             PreferencePair("q2", "yes", "no"), PreferencePair("q3", "x " * 400, "y")]  # the last is cut
    got = reference_margins(model, tok, pairs, max_length=64, batch_size=2)
    assert not got.isnan().any()
    for i in range(3):
        tp, _ = tokenize_pairs(tok, [pairs[i]], max_length=64, max_prompt_length=32)
        with torch.no_grad():
            lp = sequence_logps(model, collate(tp, tok.pad_token_id))
        torch.testing.assert_close(got[i], (lp.chosen - lp.rejected)[0].float())
