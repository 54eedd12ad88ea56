import pytest

from conftest import make_pairs
from robalign.data.tokenize import tokenize_pairs
from robalign.evaluate import PreferenceEvaluator
from robalign.reference import FrozenCopyReference


class CountingReference:
    """A frozen copy of the tiny model that counts the batches it scores."""

    def __init__(self, model):
        self.inner, self.calls = FrozenCopyReference(model), 0

    def logps(self, batch):
        self.calls += 1
        return self.inner.logps(batch)


def _policy(tiny):
    """The tiny model moved away from the reference, so h is not identically 0."""
    import copy

    import torch

    model = copy.deepcopy(tiny[0])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return model


def test_a_shared_reference_cache_scores_each_split_once_and_changes_nothing(tiny):
    model, tok = tiny
    data, _ = tokenize_pairs(tok, make_pairs(10), max_length=64, max_prompt_length=32)
    other, _ = tokenize_pairs(tok, make_pairs(10, seed=1), max_length=64, max_prompt_length=32)
    policy = _policy(tiny)
    alone = PreferenceEvaluator(data, tok.pad_token_id, reference=CountingReference(model), batch_size=4)
    expected = alone.evaluate(policy)
    assert alone.reference.calls == 3  # 10 pairs in batches of 4

    cache = {}
    first = PreferenceEvaluator(data, tok.pad_token_id, reference=CountingReference(model), batch_size=4,
                                reference_cache=cache)
    second = PreferenceEvaluator(data, tok.pad_token_id, reference=CountingReference(model), batch_size=4,
                                 reference_cache=cache)
    assert first.evaluate(policy) == expected and first.reference.calls == 3
    assert second.evaluate(policy) == expected and second.reference.calls == 0  # read from the cache
    assert expected["eval/margin_h"] != 0
    # Another split, or the same pairs batched differently, is scored afresh.
    third = PreferenceEvaluator(other, tok.pad_token_id, reference=CountingReference(model), batch_size=4,
                                reference_cache=cache)
    third.evaluate(policy)
    rebatched = PreferenceEvaluator(data, tok.pad_token_id, reference=CountingReference(model), batch_size=5,
                                    reference_cache=cache)
    assert rebatched.evaluate(policy)["eval/margin_h"] == pytest.approx(expected["eval/margin_h"], abs=1e-5)
    assert third.reference.calls == 3 and rebatched.reference.calls == 2 and len(cache) == 3


def test_without_a_reference_only_the_reference_free_margin_is_reported(tiny):
    model, tok = tiny
    data, _ = tokenize_pairs(tok, make_pairs(6), max_length=64, max_prompt_length=32)
    got = PreferenceEvaluator(data, tok.pad_token_id, reference_cache={}).evaluate(_policy(tiny))
    assert set(got) == {"eval/pairs", "eval/accuracy_M", "eval/margin_M"} and got["eval/pairs"] == 6


def test_batches_go_to_the_device_of_the_model(tiny, monkeypatch):
    """The held-out batches are kept on the CPU and each is moved to the model's device when it is scored
    (a CUDA model given CPU tensors fails; 'meta' stands in for the GPU here)."""
    import torch

    import robalign.evaluate as ev
    from robalign.pair_logps import PairLogps

    _, tok = tiny
    data, _ = tokenize_pairs(tok, make_pairs(4), max_length=64, max_prompt_length=32)
    seen = []

    def spy(model, batch):
        seen.append(batch.input_ids.device.type)
        n = batch.num_pairs
        return PairLogps(-torch.ones(n), -2 * torch.ones(n), torch.ones(n), torch.ones(n))

    monkeypatch.setattr(ev, "sequence_logps", spy)
    out = PreferenceEvaluator(data, tok.pad_token_id, batch_size=2).evaluate(torch.nn.Linear(2, 2, device="meta"))
    assert seen == ["meta", "meta"] and out["eval/accuracy_M"] == 1.0
