"""Verifiable pairs with model-sampled responses: ordered by the gold grade, sources recorded, cached."""

import pytest

from robalign.evaluate_generation import encode_prompts, sample_completions
from robalign.experiments.sampled_pairs import (
    cache_sampled_pairs,
    sampled_cache_file,
    sampled_preference_pairs,
)
from robalign.tasks import make_prompts, score


def test_pairs_contrast_a_higher_and_a_lower_graded_response(tiny):
    model, tok = tiny
    pairs = sampled_preference_pairs(model, tok, 6, seed=3, k=3, max_new_tokens=8)
    prompts = make_prompts(6, seed=3)
    assert [p.id for p in pairs] == [p.id for p in prompts]
    for pair, prompt in zip(pairs, prompts):
        assert pair.chosen_score == score(prompt, pair.chosen) and pair.rejected_score == score(prompt, pair.rejected)
        assert pair.chosen_score > pair.rejected_score
        assert pair.chosen.strip() and pair.rejected.strip()
        assert {pair.extra["chosen_source"], pair.extra["rejected_source"]} <= {"model", "template"}
        assert "model" in (pair.extra["chosen_source"], pair.extra["rejected_source"])


def test_model_sides_are_the_models_own_samples(tiny):
    model, tok = tiny
    import torch

    pairs = sampled_preference_pairs(model, tok, 4, seed=5, k=3, max_new_tokens=8)
    messages = [[{"role": "user", "content": p.text}] for p in make_prompts(4, seed=5)]
    _, ids = encode_prompts(tok, messages)
    again = sample_completions(model, tok, ids, n=3, temperature=1.0, max_new_tokens=8,
                               generator=torch.Generator().manual_seed(5))
    for pair, texts in zip(pairs, again.texts):
        for side in ("chosen", "rejected"):
            if pair.extra[f"{side}_source"] == "model":
                assert getattr(pair, side) in texts


def test_cache_is_written_once_and_reread(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    first = cache_sampled_pairs(tmp_path, "tiny-llama", model, tok, 3, seed=1, k=2, max_new_tokens=6)
    path = sampled_cache_file(tmp_path, "tiny-llama", 3, 1, 2, 6)
    assert path.is_file()

    def boom(*_a, **_k):
        raise AssertionError("sampled again instead of reading the cache")

    monkeypatch.setattr("robalign.experiments.sampled_pairs.sampled_preference_pairs", boom)
    again = cache_sampled_pairs(tmp_path, "tiny-llama", model, tok, 3, seed=1, k=2, max_new_tokens=6)
    assert [p.to_row() for p in again] == [p.to_row() for p in first]


def test_k_below_two_is_refused(tiny):
    with pytest.raises(ValueError, match="k must be"):
        sampled_preference_pairs(*tiny, 2, seed=0, k=1)
