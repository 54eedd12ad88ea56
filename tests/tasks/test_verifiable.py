"""The verifiable-instructions task: checkers, parsing, responses, pairs and the cache."""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict

import pytest
import torch

from robalign.tasks import (
    KINDS,
    VerifiableReward,
    cache_file,
    cache_pairs,
    compliant_response,
    make_preference_pairs,
    make_prompts,
    noncompliant_response,
    parse_prompt,
    score,
)
from robalign.tasks import verifiable as v

PROMPTS = make_prompts(100 * len(KINDS), seed=0) + make_prompts(10 * len(KINDS), seed=1)


def scored_responses():
    """kind -> list of (compliant score, non-compliant score, compliant, non-compliant)."""
    out = defaultdict(list)
    for i, prompt in enumerate(PROMPTS):
        rng = random.Random(i)
        good, bad = compliant_response(prompt, rng), noncompliant_response(prompt, rng)
        out[prompt.kind].append((score(prompt, good), score(prompt, bad), good, bad))
    return out


SCORED = scored_responses()


def test_at_least_eight_kinds_and_thirty_topics():
    assert len(KINDS) >= 8 and len(v.TOPICS) >= 30
    assert {p.kind for p in PROMPTS} == set(KINDS)


@pytest.mark.parametrize("kind", list(KINDS))
def test_compliant_beats_noncompliant(kind):
    rows = SCORED[kind]
    assert len(rows) >= 100
    for good, bad, good_text, bad_text in rows:
        assert 0.0 <= bad < good <= 1.0, (good_text, bad_text)
        assert good >= 0.9, good_text


@pytest.mark.parametrize("kind", list(KINDS))
def test_scores_are_graded(kind):
    # Non-compliance varies in degree: intermediate scores occur, and not just one value.
    bad = {round(row[1], 6) for row in SCORED[kind]}
    assert any(0.0 < s < 1.0 for s in bad) and len(bad) >= 2


@pytest.mark.parametrize("kind", list(KINDS))
def test_parse_round_trip(kind):
    for prompt in [p for p in PROMPTS if p.kind == kind][:20]:
        chat = f"<|im_start|>user\n{prompt.text}<|im_end|>\n<|im_start|>assistant\n"
        for text in (prompt.text, chat):
            parsed = parse_prompt(text)
            assert (parsed.kind, parsed.params, parsed.topic) == (prompt.kind, prompt.params, prompt.topic)


def test_parse_rejects_other_prompts():
    with pytest.raises(ValueError, match="no verifiable instruction"):
        parse_prompt("Tell me a joke.")


def test_keywords_never_occur_by_accident():
    filler = " ".join(v._FILLER + v.TOPICS + tuple(t.split(" ")[0] for t in v.VERBS)).lower()
    for word in v.KEYWORDS:
        assert v._count_word(filler, word) == 0


@pytest.mark.parametrize(
    "kind, params, response, expected",
    [
        ("exact_words", {"n": 3}, "one two three four", math.exp(-0.5)),
        ("max_words", {"n": 4}, "", 0.0),
        ("max_words", {"n": 4}, "a b c d e f g h", 0.5),
        ("min_words", {"n": 4}, "a b c", 0.75),
        ("no_commas", {}, "a, b, c", 1 / 3),
        ("start_with", {"word": "ember"}, "Ember! is first", 1.0),
        ("start_with", {"word": "ember"}, "so the ember is", 0.6),
        ("end_with", {"word": "ember"}, "ends with ember.", 1.0),
        ("end_with", {"word": "ember"}, "ember a b c d e f", 0.3),
        ("lowercase", {}, "abC", 2 / 3),
        ("uppercase", {}, "123", 0.0),
        ("json_key", {"key": "title"}, '```json\n{"title": "x"}\n```', 1.0),
        ("json_key", {"key": "title"}, '["title"]', 0.5),
        ("json_key", {"key": "title"}, "{title: x}", 0.25),
        ("json_key", {"key": "title"}, "title", 0.0),
        ("include_word", {"word": "ember", "n": 3}, "Ember, embers and ember.", 2 / 3),
        ("sentences", {"n": 2}, "One. Two! Three? and a fragment", 0.25),
    ],
)
def test_checkers_by_hand(kind, params, response, expected):
    prompt = v.VerifiablePrompt("", "", kind, params, "x")
    assert score(prompt, response) == pytest.approx(expected)


def test_prompts_are_deterministic_and_prefix_stable():
    a, b = make_prompts(40, seed=7), make_prompts(40, seed=7)
    assert a == b and make_prompts(15, seed=7) == a[:15]
    assert [p.text for p in make_prompts(40, seed=8)] != [p.text for p in a]
    assert a[3].id == "verif-7-3" and a[0].text.endswith(KINDS[a[0].kind].template.format(**a[0].params))


def test_pairs_structure_and_determinism():
    pairs = make_preference_pairs(60, seed=5)
    assert [p.to_row() for p in pairs] == [p.to_row() for p in make_preference_pairs(60, seed=5)]
    assert [p.to_row() for p in make_preference_pairs(20, seed=5)] == [p.to_row() for p in pairs[:20]]
    for i, pair in enumerate(pairs):
        assert pair.id == f"verif-5-{i}" and pair.is_flipped is False
        assert pair.prompt[0]["role"] == "user" and len(pair.prompt) == 1
        text = pair.prompt[0]["content"]
        assert (
            pair.chosen_score == score(text, pair.chosen) > pair.rejected_score == score(text, pair.rejected)
        )


def test_length_is_not_a_proxy_for_compliance():
    pairs = make_preference_pairs(1000, seed=0)
    shorter = sum(len(p.chosen) < len(p.rejected) for p in pairs) / len(pairs)
    assert 0.25 <= shorter <= 0.75


def test_verifiable_reward_agrees_with_score():
    pairs = make_preference_pairs(50, seed=2)
    prompts = [p.prompt[0]["content"] for p in pairs] * 2
    responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    got = VerifiableReward()(prompts, responses)
    assert got.dtype == torch.float32
    want = torch.tensor([score(x, y) for x, y in zip(prompts, responses)])
    assert torch.equal(got, want)
    chat = [f"<|user|>\n{x}\n<|assistant|>\n" for x in prompts]
    assert torch.equal(VerifiableReward()(chat, responses), want)


def test_cache_writes_once_then_rereads(tmp_path, monkeypatch):
    pairs = cache_pairs(tmp_path, 30, seed=4)
    path = cache_file(tmp_path, 30, 4)
    assert path.exists() and "seed4" in path.name and "n30" in path.name
    assert len(path.read_text().splitlines()) == 30
    assert json.loads(path.read_text().splitlines()[0])["kind"] == pairs[0].extra["kind"]

    def regenerate(*args, **kwargs):
        raise AssertionError("cache was not re-read")

    monkeypatch.setattr(v, "make_preference_pairs", regenerate)
    again = cache_pairs(tmp_path, 30, seed=4)
    assert [p.to_row() for p in again] == [p.to_row() for p in pairs]
