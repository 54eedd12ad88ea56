"""Batched two-sample generation: pairing, determinism, EOS handling, the KV cache."""

import copy
import math

import pytest
import torch

from conftest import make_pairs
from robalign.data.tokenize import tokenize_pairs
from robalign.generation import RowSampler, cut_at_stop, generate_pairs, left_pad, split_rows


@pytest.fixture(scope="module")
def prompts(_tiny_original):
    _, tok = _tiny_original  # the tokenizer only
    data, _ = tokenize_pairs(tok, make_pairs(3, seed=3), max_length=64, max_prompt_length=24)
    out = [p.prompt_ids for p in data]
    assert len({len(p) for p in out}) > 1  # different lengths: left padding is exercised
    return out


def _forced_head(model, token: int, logit: float):
    """A copy whose LM head gives `token` the logit `logit` and every other token 0."""
    model = copy.deepcopy(model)
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[token] = logit
    model.lm_head = head
    return model


def test_each_pair_is_the_continuation_of_its_own_prompt(tiny, prompts):
    model, tok = tiny
    batched = generate_pairs(model, tok, prompts, temperature=0.0, max_new_tokens=4)
    solo = [generate_pairs(model, tok, [p], temperature=0.0, max_new_tokens=4)[0] for p in prompts]
    assert len({tuple(s.y1_ids) for s in solo}) > 1  # continuations differ, so a shuffle would show
    for pair, alone, prompt in zip(batched, solo, prompts):
        assert pair.prompt_ids == prompt
        assert pair.y1_ids == pair.y2_ids == alone.y1_ids  # greedy: both samples are the solo continuation


def test_reordered_generate_rows_are_rejected(tiny, prompts, monkeypatch):
    model, tok = tiny
    model = copy.deepcopy(model)
    real = model.generate

    def shuffled(**kw):
        out = real(**kw)
        return out[torch.tensor([2, 3, 0, 1, 4, 5])]  # prompt 0's samples swapped with prompt 1's

    monkeypatch.setattr(model, "generate", shuffled)
    with pytest.raises(ValueError, match="scrambled"):
        generate_pairs(model, tok, prompts, max_new_tokens=4, generator=torch.Generator().manual_seed(0))


def test_split_rows_groups_rows_two_by_two(tiny):
    _, tok = tiny
    prompts = [[5, 6], [7]]
    padded, _ = left_pad(prompts, tok.pad_token_id)
    new = torch.tensor([[10, 11], [12, 13], [20, 21], [22, 23]])
    out = split_rows(torch.cat([padded.repeat_interleave(2, 0), new], 1), padded, 2, {999})
    assert out == [[[10, 11], [12, 13]], [[20, 21], [22, 23]]]


def test_sampling_is_deterministic_under_a_seed_and_leaves_the_global_rng_alone(tiny, prompts):
    model, tok = tiny

    def draw(seed):
        return generate_pairs(model, tok, prompts, temperature=0.9, max_new_tokens=6,
                              generator=torch.Generator().manual_seed(seed))

    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b, c = draw(1), draw(1), draw(2)
    assert torch.equal(torch.get_rng_state(), state)
    assert [p.y1_ids + p.y2_ids for p in a] == [p.y1_ids + p.y2_ids for p in b]
    assert [p.y1_ids + p.y2_ids for p in a] != [p.y1_ids + p.y2_ids for p in c]
    assert any(p.y1_ids != p.y2_ids for p in a)  # the two samples of a prompt are independent draws


def test_cut_at_stop_keeps_exactly_one_eos():
    assert cut_at_stop([4, 9, 7, 9, 0, 0], {9}) == [4, 9]
    assert cut_at_stop([9, 0, 0], {9}) == [9]
    assert cut_at_stop([4, 0, 5], {9}) == [4, 0, 5]  # no EOS: all tokens are real, pad ids included


def test_completions_end_at_eos_or_run_to_max_new_tokens(tiny, prompts):
    model, tok = tiny
    always_eos = _forced_head(model, tok.eos_token_id, 50.0)
    for pair in generate_pairs(always_eos, tok, prompts, max_new_tokens=3, generator=torch.Generator()):
        assert pair.y1_ids == pair.y2_ids == [tok.eos_token_id]
        assert pair.y1_text == pair.y2_text == ""
    never_eos = _forced_head(model, tok.eos_token_id, -50.0)
    for pair in generate_pairs(never_eos, tok, prompts, max_new_tokens=3, generator=torch.Generator()):
        assert len(pair.y1_ids) == len(pair.y2_ids) == 3
        assert tok.eos_token_id not in pair.y1_ids + pair.y2_ids


def test_kv_cache_is_used_and_matches_uncached_greedy_decoding(tiny, prompts, monkeypatch):
    model, tok = tiny
    model = copy.deepcopy(model)
    seen = {}
    real = model.generate

    def spy(**kw):
        seen.update(kw)
        return real(**kw)

    monkeypatch.setattr(model, "generate", spy)
    cached = generate_pairs(model, tok, prompts[:1], temperature=0.0, max_new_tokens=5)
    assert seen["generation_config"].use_cache is True
    ids = torch.tensor([prompts[0]])
    plain = real(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=5,
                 use_cache=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    expected = plain[0, ids.shape[1]:].tolist()
    assert cached[0].y1_ids == cut_at_stop(expected, {tok.eos_token_id})


def test_policy_mode_is_restored(tiny, prompts):
    model, tok = tiny
    model = copy.deepcopy(model).train()
    generate_pairs(model, tok, prompts[:1], max_new_tokens=2, generator=torch.Generator())
    assert model.training
    model.eval()
    generate_pairs(model, tok, prompts[:1], max_new_tokens=2, generator=torch.Generator())
    assert not model.training


def test_a_prompts_samples_depend_only_on_its_seed_not_on_the_batch(tiny, prompts):
    # What makes N processes sample a global batch as one process does: prompt i sampled with seed s_i
    # alone, or in any batch and position, gives the same two completions.
    model, tok = tiny
    seeds = [11, 22, 33]
    together = generate_pairs(model, tok, prompts, temperature=1.0, max_new_tokens=6, seeds=seeds)
    reordered = generate_pairs(model, tok, prompts[::-1], temperature=1.0, max_new_tokens=6, seeds=seeds[::-1])
    for i in range(3):
        alone = generate_pairs(model, tok, [prompts[i]], temperature=1.0, max_new_tokens=6, seeds=[seeds[i]])[0]
        assert (together[i].y1_ids, together[i].y2_ids) == (alone.y1_ids, alone.y2_ids)
        assert (reordered[2 - i].y1_ids, reordered[2 - i].y2_ids) == (alone.y1_ids, alone.y2_ids)
    other = generate_pairs(model, tok, prompts[:1], temperature=1.0, max_new_tokens=6, seeds=[12])[0]
    assert (other.y1_ids, other.y2_ids) != (together[0].y1_ids, together[0].y2_ids)


def test_row_sampler_draws_from_the_tempered_nucleus_distribution():
    # Gumbel-max frequencies against softmax(logits / T) restricted to the top-p nucleus, by brute force.
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    temperature, top_p, n = 0.7, 0.9, 20000
    sampler = RowSampler(list(range(n)), temperature, top_p, rows_per_seed=1)
    picks = sampler(torch.zeros((n, 1), dtype=torch.long), logits.expand(n, -1).clone())
    assert torch.all(torch.isinf(picks).sum(-1) == logits.shape[1] - 1)  # one token per row survives
    counts = torch.bincount(picks.argmax(-1), minlength=6).double() / n
    p = torch.softmax(logits[0].double() / temperature, -1)
    order = torch.argsort(p, descending=True)
    mass_before = torch.cumsum(p[order], 0) - p[order]
    keep = torch.zeros(6, dtype=torch.bool)
    keep[order[mass_before < top_p]] = True  # smallest prefix whose mass reaches top_p
    expected = torch.where(keep, p, torch.zeros_like(p))
    expected /= expected.sum()
    assert counts[~keep].sum() == 0
    assert torch.allclose(counts, expected, atol=4 * math.sqrt(0.25 / n))


def test_greedy_decoding_draws_nothing_from_the_global_rng(tiny, prompts):
    from robalign.evaluate_generation import sample_completions

    model, tok = tiny
    torch.manual_seed(7)
    state = torch.get_rng_state()
    generate_pairs(model, tok, prompts, temperature=0.0, max_new_tokens=3)
    sample_completions(model, tok, prompts, n=1, temperature=0.0, max_new_tokens=3)
    assert torch.equal(torch.get_rng_state(), state)
