"""Dataset noise injection (SPEC §7) and the seeded train/eval split it must stay away from."""

from __future__ import annotations

import copy
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robalign.data import PreferencePair, inject_noise, inject_noise_with_info, take, train_eval_split
from robalign.errors import ConfigError, DataError


def _pairs(n: int, **fields) -> list[PreferencePair]:
    return [PreferencePair(f"p{i}", f"good {i}", f"bad {i}", id=str(i), **fields) for i in range(n)]


def _flipped_ids(noisy: list[PreferencePair]) -> set[str]:
    return {p.id for p in noisy if p.is_flipped}


# --- flip --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "rate", "expected"),
    [(10, 0.2, 2), (10, 0.25, 2), (10, 0.35, 4), (7, 0.5, 4), (5, 0.0, 0), (5, 1.0, 5)],
)
def test_flip_count_is_exactly_round_rate_n(n, rate, expected):
    noisy = inject_noise(_pairs(n), "flip", rate, seed=0)
    assert len(_flipped_ids(noisy)) == expected == round(rate * n)


def test_flip_swaps_labels_and_sets_flags_without_mutating_input():
    clean = _pairs(20, chosen_score=1.0, rejected_score=0.0)
    before = copy.deepcopy(clean)
    noisy = inject_noise(clean, "flip", 0.3, seed=1)
    assert clean == before
    assert all(p.is_flipped is not None for p in noisy)
    for old, new in zip(clean, noisy):
        assert new.id == old.id and new.prompt == old.prompt
        if new.is_flipped:
            assert (new.chosen, new.rejected, new.chosen_score) == (old.rejected, old.chosen, 0.0)
        else:
            assert new == PreferencePair(**{**old.__dict__, "is_flipped": False})


def test_flipping_already_flipped_rows_toggles_the_flag_back():
    clean = _pairs(10)
    once = inject_noise(clean, "flip", 1.0, seed=0)
    twice = inject_noise(once, "flip", 1.0, seed=0)
    assert all(p.is_flipped for p in once) and not any(p.is_flipped for p in twice)
    assert [(p.chosen, p.rejected) for p in twice] == [(p.chosen, p.rejected) for p in clean]


def test_flip_is_deterministic_and_seed_dependent():
    clean = _pairs(50)
    assert inject_noise(clean, "flip", 0.2, seed=3) == inject_noise(clean, "flip", 0.2, seed=3)
    assert _flipped_ids(inject_noise(clean, "flip", 0.2, seed=3)) != _flipped_ids(
        inject_noise(clean, "flip", 0.2, seed=4)
    )


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 60), seed=st.integers(0, 2**32), rates=st.lists(st.floats(0, 1), min_size=2, max_size=4)
)
def test_property_flip_sets_are_nested_across_rates(n, seed, rates):
    clean = _pairs(n)
    sets = [_flipped_ids(inject_noise(clean, "flip", r, seed)) for r in sorted(rates)]
    for r, s in zip(sorted(rates), sets):
        assert len(s) == round(r * n)
    for smaller, larger in itertools.pairwise(sets):
        assert smaller <= larger


# --- length ------------------------------------------------------------------------------------


def _length_pairs() -> list[PreferencePair]:
    # Even ids: chosen shorter than rejected (candidates); odd ids: chosen longer or equal.
    return [
        PreferencePair(
            "p", "a" * (3 if i % 2 == 0 else 9), "b" * (6 if i % 2 == 0 else 6 + 3 * (i % 3 == 0)), id=str(i)
        )
        for i in range(20)
    ]


def test_length_noise_flips_only_candidates():
    clean = _length_pairs()
    noisy, info = inject_noise_with_info(clean, "length", 0.25, seed=5)
    flipped = _flipped_ids(noisy)
    assert len(flipped) == 5 == info["flipped"] and info["candidates"] == 10 and info["warning"] is None
    assert all(int(i) % 2 == 0 for i in flipped)
    # After flipping, every flipped pair prefers the longer answer.
    assert all(len(p.chosen) > len(p.rejected) for p in noisy if p.is_flipped)
    assert flipped <= _flipped_ids(inject_noise(clean, "length", 0.4, seed=5))  # nested too


def test_length_noise_with_too_few_candidates_flips_all_and_warns():
    clean = _length_pairs()
    noisy, info = inject_noise_with_info(clean, "length", 0.8, seed=0)
    assert (info["requested"], info["flipped"]) == (16, 10) and "only 10 of 20" in info["warning"]
    assert _flipped_ids(noisy) == {str(i) for i in range(0, 20, 2)}
    with pytest.warns(UserWarning, match="fewer than the 16 requested"):
        inject_noise(clean, "length", 0.8, seed=0)


def test_length_noise_measures_message_content():
    pair = PreferencePair(
        [{"role": "user", "content": "q"}],
        [{"role": "assistant", "content": "ok"}],
        [{"role": "assistant", "content": "a longer answer"}],
        id="m",
    )
    assert inject_noise([pair], "length", 1.0, seed=0)[0].is_flipped


# --- margin ------------------------------------------------------------------------------------


def test_margin_noise_flips_the_smallest_gaps():
    gaps = [3.0, 0.1, 2.0, -0.2, 5.0, 0.05, -1.0, 4.0]  # chosen − rejected
    clean = [
        PreferencePair("p", f"c{i}", f"r{i}", id=str(i), chosen_score=g, rejected_score=0.0)
        for i, g in enumerate(gaps)
    ]
    for k in range(len(gaps) + 1):
        noisy = inject_noise(clean, "margin", k / len(gaps), seed=9)
        expected = sorted(range(len(gaps)), key=lambda i: abs(gaps[i]))[:k]  # brute force: no ties here
        assert _flipped_ids(noisy) == {str(i) for i in expected}


def test_margin_ties_are_broken_by_the_seed():
    clean = _pairs(30, chosen_score=1.0, rejected_score=0.0)  # every gap equal
    margin = _flipped_ids(inject_noise(clean, "margin", 0.2, seed=2))
    assert margin == _flipped_ids(inject_noise(clean, "flip", 0.2, seed=2))
    assert margin != _flipped_ids(inject_noise(clean, "margin", 0.2, seed=3))


def test_margin_noise_needs_scores_on_every_row():
    clean = _pairs(3, chosen_score=1.0, rejected_score=0.0)
    clean[1] = PreferencePair("p", "a", "b", id="no-score", chosen_score=1.0)
    with pytest.raises(DataError, match="'no-score' has no chosen_score/rejected_score") as err:
        inject_noise(clean, "margin", 0.5, seed=0)
    assert err.value.line == 2


@pytest.mark.parametrize(
    ("kind", "rate"), [("flip", -0.1), ("flip", 1.5), ("flip", float("nan")), ("swap", 0.1)]
)
def test_bad_kind_or_rate_is_a_config_error(kind, rate):
    with pytest.raises(ConfigError):
        inject_noise(_pairs(4), kind, rate, seed=0)


def test_empty_list_is_fine():
    assert inject_noise([], "flip", 0.5, seed=0) == []


# --- train/eval split and take -----------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 80), fraction=st.floats(0, 0.99), seed=st.integers(0, 1000))
def test_property_split_is_disjoint_covering_and_deterministic(n, fraction, seed):
    items = list(range(n))
    train, held_out = train_eval_split(items, fraction, seed)
    assert sorted(train + held_out) == items and not set(train) & set(held_out)
    assert train == sorted(train) and held_out == sorted(held_out)  # input order kept
    assert (train, held_out) == train_eval_split(items, fraction, seed)
    if n >= 2 and fraction > 0:
        assert 1 <= len(held_out) <= n - 1


def test_split_worked_examples():
    items = list(range(10))
    assert train_eval_split(items, 0.0, seed=0) == (items, [])
    train, held_out = train_eval_split(items, 0.3, seed=0)
    assert len(held_out) == 3 and len(train) == 7
    assert len(train_eval_split(items, 0.01, seed=0)[1]) == 1  # a requested split never vanishes
    with pytest.raises(ConfigError):
        train_eval_split(items, 1.0, seed=0)


def test_take():
    assert take([1, 2, 3], 2) == [1, 2]
    assert take([1, 2, 3], 10) == [1, 2, 3] and take([1, 2, 3], None) == [1, 2, 3]
    with pytest.raises(ConfigError):
        take([1], -1)
