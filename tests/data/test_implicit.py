"""Implicit-prompt splitting: HH-RLHF transcripts, the generic fallback, message lists."""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robalign.data import load_pairs, split_implicit_messages, split_implicit_text
from robalign.errors import DataError

HH = Path("/work/shared/data/hh-rlhf-harmless-base-test.jsonl.gz")
needs_hh = pytest.mark.skipif(not HH.exists(), reason="shared HH-RLHF sample not present")


def _hh_rows(n: int) -> list[dict]:
    with gzip.open(HH, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in itertools.islice(fh, n)]


# --- HH-RLHF -----------------------------------------------------------------------------------


@needs_hh
def test_hh_rows_split_after_last_shared_assistant_marker():
    for row in _hh_rows(30):
        prompt, chosen, rejected = split_implicit_text(row["chosen"], row["rejected"])
        assert prompt.endswith("\n\nAssistant:")
        assert prompt.startswith("\n\nHuman:")
        assert prompt + chosen == row["chosen"] and prompt + rejected == row["rejected"]
        # Completions keep HH's leading space, and hold no further assistant turn.
        assert chosen.startswith(" ") and rejected.startswith(" ")


@needs_hh
def test_hh_first_row_worked_example():
    row = _hh_rows(1)[0]
    prompt, chosen, rejected = split_implicit_text(row["chosen"], row["rejected"])
    assert prompt.endswith("okay some of these do not have anything to do with pens\n\nAssistant:")
    assert chosen.startswith(" No, sorry!  All of these involve a pen")
    assert rejected.startswith(" There are lots of funny things you can do with pens")


@needs_hh
def test_hh_whole_file_loads_except_four_whitespace_completions():
    # Lines 87, 517, 926 and 1104 have a chosen reply that is a single space.
    result = load_pairs(HH, skip_invalid=True)
    assert (len(result.pairs), result.skipped) == (2308, 4)
    assert all(":87:" in r or ":517:" in r or ":926:" in r or ":1104:" in r for r in result.skip_reasons)
    with pytest.raises(DataError) as err:
        load_pairs(HH)
    assert err.value.line == 87 and "whitespace" in err.value.problem


def test_marker_split_uses_last_shared_turn():
    base = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: name a fruit\n\nAssistant:"
    prompt, chosen, rejected = split_implicit_text(base + " An apple.", base + " A rock.")
    assert (prompt, chosen, rejected) == (base, " An apple.", " A rock.")


def test_marker_split_when_completions_share_a_first_word():
    base = "\n\nHuman: colour?\n\nAssistant:"
    assert split_implicit_text(base + " It is red", base + " It is blue") == (
        base,
        " It is red",
        " It is blue",
    )


# --- generic fallback --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chosen", "rejected", "expected"),
    [
        ("I like cats", "I like cars", ("I like", " cats", " cars")),  # backs off from mid-word "ca"
        ("Q: 2+2? A: 4", "Q: 2+2? A: 5", ("Q: 2+2? A:", " 4", " 5")),  # trailing space moves to completions
        ("Hello, world", "Hello!", ("Hello", ", world", "!")),  # already at a word boundary
        ("User: hi\nBot: yes", "User: hi\nBot: no", ("User: hi\nBot:", " yes", " no")),
    ],
)
def test_generic_prefix_backs_off_to_word_boundary(chosen, rejected, expected):
    assert split_implicit_text(chosen, rejected) == expected


@pytest.mark.parametrize(
    ("chosen", "rejected", "problem"),
    [
        ("cats", "dogs", "share no prompt"),
        ("abc", "abd", "share no prompt"),  # the only shared text is part of a word
        ("Hello there", "Hello", "rejected is contained in the shared prompt"),
        (
            "\n\nHuman: hi\n\nAssistant: ",
            "\n\nHuman: hi\n\nAssistant: Hi!",
            "chosen's completion after the shared prompt is only whitespace",
        ),
        ("\n\nHuman: hi\n\nAssistant:", "\n\nHuman: hi\n\nAssistant: Hi!", "chosen is contained"),
    ],
)
def test_bad_implicit_pairs_raise(chosen, rejected, problem):
    with pytest.raises(DataError) as err:
        split_implicit_text(chosen, rejected, path="x.jsonl", line=7)
    assert problem in err.value.problem
    assert str(err.value).startswith("x.jsonl:7: ")


@settings(max_examples=200, deadline=None)
@given(
    a=st.text(max_size=40),
    b=st.text(alphabet=st.characters(blacklist_characters="\n"), min_size=1, max_size=20),
    c=st.text(alphabet=st.characters(blacklist_characters="\n"), min_size=1, max_size=20),
)
def test_property_hh_transcripts_round_trip(a, b, c):
    # Without "\n" in b and c, the inserted marker is the last shared one, so the split is exact.
    if b == c or not b.strip() or not c.strip():
        return
    chosen, rejected = a + "\n\nAssistant:" + b, a + "\n\nAssistant:" + c
    prompt, chosen_rest, rejected_rest = split_implicit_text(chosen, rejected)
    assert (prompt, chosen_rest, rejected_rest) == (a + "\n\nAssistant:", b, c)
    assert prompt + chosen_rest == chosen and prompt + rejected_rest == rejected


@settings(max_examples=200, deadline=None)
@given(a=st.text(alphabet="ab _.\n", max_size=12), b=st.text(alphabet="ab _.\n", max_size=12))
def test_property_generic_split_round_trips_and_never_cuts_a_word(a, b):
    try:
        prompt, a_rest, b_rest = split_implicit_text(a, b, marker="")
    except DataError:
        return
    assert prompt and prompt + a_rest == a and prompt + b_rest == b
    assert a_rest.strip() and b_rest.strip()
    for rest in (a_rest, b_rest):
        assert not (prompt[-1] in "ab_" and rest[0] in "ab_")


# --- message lists -----------------------------------------------------------------------------


def _m(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def test_messages_split_at_first_difference():
    shared = [_m("system", "be brief"), _m("user", "hi"), _m("assistant", "hello"), _m("user", "2+2?")]
    prompt, chosen, rejected = split_implicit_messages(
        shared + [_m("assistant", "4")], shared + [_m("assistant", "5")]
    )
    assert prompt == shared
    assert chosen == [_m("assistant", "4")] and rejected == [_m("assistant", "5")]


def test_messages_completion_may_include_tool_turns():
    shared = [_m("user", "weather?")]
    chosen = [_m("assistant", "checking"), _m("tool", "sunny"), _m("assistant", "Sunny.")]
    _, chosen_rest, _ = split_implicit_messages(shared + chosen, shared + [_m("assistant", "No idea.")])
    assert chosen_rest == chosen


@pytest.mark.parametrize(
    ("chosen", "rejected", "problem"),
    [
        (
            [_m("user", "a"), _m("assistant", "x")],
            [_m("user", "b"), _m("assistant", "x")],
            "share no leading message",
        ),
        ([_m("user", "a")], [_m("user", "a"), _m("assistant", "x")], "chosen is contained"),
        (
            [_m("user", "a"), _m("assistant", "x"), _m("user", "more")],
            [_m("user", "a"), _m("user", "b")],
            "must be assistant",
        ),
        ([_m("user", "a"), _m("assistant", " ")], [_m("user", "a"), _m("assistant", "x")], "whitespace-only"),
    ],
)
def test_bad_implicit_message_pairs_raise(chosen, rejected, problem):
    with pytest.raises(DataError, match=problem):
        split_implicit_messages(chosen, rejected, path="m.jsonl", line=2)
