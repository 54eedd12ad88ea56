"""PairLogps and its margins, worked by hand on two pairs."""

import pytest
import torch

from robalign.pair_logps import PairLogps, dpo_margin, length_normalised_margin


def _two_pairs() -> PairLogps:
    return PairLogps(chosen=torch.tensor([-4.0, -9.0]), rejected=torch.tensor([-6.0, -3.0]),
                     chosen_lengths=torch.tensor([2.0, 3.0]), rejected_lengths=torch.tensor([3.0, 1.0]))


def test_margins_by_hand():
    p = _two_pairs()
    ref = PairLogps(torch.tensor([-5.0, -8.0]), torch.tensor([-5.0, -4.0]))
    # h = (lp(y_w) − ref(y_w)) − (lp(y_l) − ref(y_l)): (1 − (−1), −1 − 1)
    assert torch.equal(dpo_margin(p.with_reference(ref)), torch.tensor([2.0, -2.0]))
    # M = lp(y_w)/len(y_w) − lp(y_l)/len(y_l): (−2 − (−2), −3 − (−3))
    assert torch.equal(length_normalised_margin(p), torch.tensor([0.0, 0.0]))
    assert p.with_reference(None) is p
    with pytest.raises(TypeError):  # no reference: h is undefined, not silently the policy's own margin
        dpo_margin(p)


def test_labelled_swaps_every_field_of_the_pairs_y2_won():
    p = _two_pairs().with_reference(PairLogps(torch.tensor([-5.0, -8.0]), torch.tensor([-5.0, -4.0])))
    won = p.labelled(torch.tensor([True, False]))
    assert torch.equal(won.chosen, torch.tensor([-4.0, -3.0]))
    assert torch.equal(won.rejected, torch.tensor([-6.0, -9.0]))
    assert torch.equal(won.chosen_lengths, torch.tensor([2.0, 1.0]))
    assert torch.equal(won.rejected_lengths, torch.tensor([3.0, 3.0]))
    assert torch.equal(won.ref_chosen, torch.tensor([-5.0, -4.0]))
    assert torch.equal(won.ref_rejected, torch.tensor([-5.0, -8.0]))
    assert torch.equal(dpo_margin(won), torch.tensor([2.0, 2.0]))  # swapping negates h


def test_detach_and_to_keep_the_values():
    chosen = torch.tensor([-1.0, -2.0], requires_grad=True)
    p = PairLogps(chosen, chosen * 2)
    d = p.detach()
    assert not d.chosen.requires_grad and not d.rejected.requires_grad
    assert torch.equal(d.rejected, torch.tensor([-2.0, -4.0])) and d.chosen_lengths is None
    moved = _two_pairs().to("cpu")
    assert torch.equal(moved.chosen_lengths, torch.tensor([2.0, 3.0])) and moved.ref_chosen is None
