"""Reading preference data: every format, every row shape, every malformed case."""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import robalign.data.io as data_io
from robalign.data import LoadResult, PreferencePair, load_pairs, write_pairs
from robalign.errors import ConfigError, DataError

GOOD = {"prompt": "2+2?", "chosen": "4", "rejected": "5"}


def _m(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def _write_lines(path: Path, lines: list[str | bytes]) -> Path:
    data = b"".join((x if isinstance(x, bytes) else x.encode("utf-8")) + b"\n" for x in lines)
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def _write_rows(path: Path, rows: list) -> Path:
    return _write_lines(path, [json.dumps(r) for r in rows])


def _error(source, **kwargs) -> DataError:
    with pytest.raises(DataError) as err:
        load_pairs(source, **kwargs)
    return err.value


# --- formats -----------------------------------------------------------------------------------


def test_jsonl_explicit_strings_with_optional_fields(tmp_path):
    rows = [
        dict(GOOD),
        {**GOOD, "id": 17, "is_flipped": True, "chosen_score": 1, "rejected_score": -0.5},
        {**GOOD, "id": "abc", "source": "web", "n": 3, "tags": ["x"], "meta": {"k": 1}},
    ]
    result = load_pairs(_write_rows(tmp_path / "pairs.jsonl", rows))
    assert isinstance(result, LoadResult) and result.skipped == 0
    assert result.source == str(tmp_path / "pairs.jsonl")
    first, second, third = result.pairs
    assert first == PreferencePair("2+2?", "4", "5", id="pairs.jsonl:1")
    assert (second.id, second.is_flipped, second.chosen_score, second.rejected_score) == (
        "17",
        True,
        1.0,
        -0.5,
    )
    assert third.id == "abc" and third.extra == {"source": "web", "n": 3}  # nested columns dropped


@pytest.mark.parametrize("name", ["p.jsonl.gz", "p.json", "p.json.gz", "p.parquet", "p.JSONL"])
def test_every_file_format_reads_the_same_pairs(tmp_path, name):
    rows = [{**GOOD, "id": None}, {**GOOD, "chosen": "four", "id": "b"}]
    path = tmp_path / name
    if name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif ".json." in name or name.endswith(".json"):
        data = json.dumps(rows).encode()
        path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    else:
        _write_rows(path, rows)
    pairs = load_pairs(path).pairs
    assert [(p.prompt, p.chosen, p.rejected, p.id) for p in pairs] == [
        ("2+2?", "4", "5", f"{name}:1"),
        ("2+2?", "four", "5", "b"),
    ]


def test_json_with_data_key_and_json_lines_named_json(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps({"data": [GOOD]}))
    assert load_pairs(tmp_path / "d.json").pairs[0].chosen == "4"
    _write_rows(tmp_path / "l.json", [GOOD, GOOD])  # JSON Lines saved as .json
    assert len(load_pairs(tmp_path / "l.json").pairs) == 2


def test_in_memory_dataset_and_dataset_dict():
    ds = datasets.Dataset.from_list([GOOD, {**GOOD, "chosen": "four"}])
    result = load_pairs(ds)
    assert [p.chosen for p in result.pairs] == ["4", "four"]
    assert result.pairs[1].id == "dataset:2"
    dd = datasets.DatasetDict({"train": ds, "test": ds.select([0])})
    assert len(load_pairs(dd, split="test").pairs) == 1
    assert "split 'dev' not found" in str(_error(dd, split="dev"))


def test_dataset_row_errors_name_the_row():
    ds = datasets.Dataset.from_list([GOOD, {**GOOD, "rejected": "4"}])
    err = _error(ds)
    assert (err.line, str(err).split(":")[0]) == (2, "dataset")


def test_explicit_message_lists_bare_and_full_conversations(tmp_path):
    prompt = [_m("system", "be brief"), _m("user", "2+2?")]
    rows = [
        {"prompt": prompt, "chosen": [_m("assistant", "4")], "rejected": [_m("assistant", "5")]},
        {
            "prompt": prompt,
            "chosen": prompt + [_m("assistant", "4")],
            "rejected": prompt + [_m("assistant", "5")],
        },
    ]
    for pair in load_pairs(_write_rows(tmp_path / "m.jsonl", rows)).pairs:
        assert pair.prompt == prompt
        assert (pair.chosen, pair.rejected) == ([_m("assistant", "4")], [_m("assistant", "5")])


def test_implicit_rows_strings_and_messages(tmp_path):
    conv = [_m("user", "2+2?")]
    rows = [
        {
            "chosen": "\n\nHuman: 2+2?\n\nAssistant: 4",
            "rejected": "\n\nHuman: 2+2?\n\nAssistant: 5",
            "prompt": None,
        },
        {"chosen": conv + [_m("assistant", "4")], "rejected": conv + [_m("assistant", "5")]},
    ]
    text, chat = load_pairs(_write_rows(tmp_path / "i.jsonl", rows)).pairs
    assert (text.prompt, text.chosen, text.rejected) == ("\n\nHuman: 2+2?\n\nAssistant:", " 4", " 5")
    assert (chat.prompt, chat.chosen, chat.rejected) == (conv, [_m("assistant", "4")], [_m("assistant", "5")])


def test_blank_lines_keep_line_numbers_and_limit_stops_early(tmp_path):
    path = _write_lines(tmp_path / "b.jsonl", [json.dumps(GOOD), "", "  ", json.dumps(GOOD), "{bad"])
    assert [p.id for p in load_pairs(path, limit=2).pairs] == ["b.jsonl:1", "b.jsonl:4"]
    assert _error(path).line == 5
    with pytest.raises(ConfigError):
        load_pairs(path, limit=0)


@pytest.mark.parametrize("name", ["w.jsonl", "w.jsonl.gz"])
def test_write_pairs_round_trips(tmp_path, name):
    pairs = [
        PreferencePair(
            "p", "a", "b", id="x", is_flipped=True, chosen_score=0.5, rejected_score=1.0, extra={"k": "v"}
        ),
        PreferencePair([_m("user", "é?")], [_m("assistant", "ü")], [_m("assistant", "no")], id="y"),
    ]
    path = tmp_path / "sub" / name
    assert write_pairs(pairs, path) == 2
    assert load_pairs(path).pairs == pairs
    assert [p.name for p in path.parent.iterdir()] == [name]  # no temporary file left behind


def test_write_pairs_gzip_header_names_no_file(tmp_path):
    """The header's FNAME flag stays off: it would otherwise carry the temporary file's name (and pid)."""
    path = tmp_path / "w.jsonl.gz"
    write_pairs([PreferencePair("p", "a", "b")], path)
    header = path.read_bytes()[:10]
    assert header[:3] == b"\x1f\x8b\x08" and header[3] == 0  # no FNAME, FEXTRA, FCOMMENT


def test_write_pairs_interrupted_keeps_the_old_file(tmp_path):
    path = tmp_path / "w.jsonl"
    write_pairs([PreferencePair("p", "a", "b", id="old")], path)

    def pairs():
        yield PreferencePair("p", "a", "b", id="new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_pairs(pairs(), path)
    assert [p.id for p in load_pairs(path).pairs] == ["old"]
    assert [p.name for p in tmp_path.iterdir()] == ["w.jsonl"]


# --- malformed rows ----------------------------------------------------------------------------

BAD_ROWS = [
    ('{"prompt": "p", "chosen": "a",', "invalid JSON at column 31: Expecting property name"),
    ('{"chosen": "same", "rejected": "same"}', "identical"),
    (
        '{"prompt": [], "chosen": [{"role": "assistant", "content": "x"}], "rejected": [{"role": "assistant", "content": "x"}]}',
        "identical",
    ),
    ("[1, 2]", "row is a list, not an object"),
    ('"just text"', "not an object"),
    ('{"prompt": "p", "rejected": "b"}', "missing field 'chosen'"),
    ('{"prompt": "p"}', "missing field 'chosen' and 'rejected'"),
    ('{"prompt": "p", "chosen": 3, "rejected": "b"}', "'chosen' is a number"),
    ('{"prompt": "p", "chosen": ["a"], "rejected": "b"}', "different types"),
    ('{"prompt": ["p"], "chosen": "a", "rejected": "b"}', "'prompt' is a list but 'chosen' is a string"),
    ('{"prompt": "p", "chosen": "   ", "rejected": "b"}', "'chosen' is empty or whitespace-only"),
    ('{"prompt": "p", "chosen": "a", "rejected": ""}', "'rejected' is empty"),
    ('{"prompt": "p", "chosen": "same", "rejected": "same"}', "identical"),
    ('{"chosen": "cats", "rejected": "dogs"}', "share no prompt"),
    (
        '{"prompt": [], "chosen": ["a"], "rejected": ["b"]}',
        "'chosen' message 1 is a string, not a {role, content}",
    ),
    (
        '{"prompt": [], "chosen": [{"role": "assistant", "content": 5}], "rejected": []}',
        "content that is a number",
    ),
    ('{"prompt": [], "chosen": [{"role": "bot", "content": "a"}], "rejected": []}', "role 'bot'"),
    ('{"prompt": [], "chosen": [{"content": "a"}], "rejected": []}', "role None"),
    (
        '{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "user", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}',
        "not assistant turn(s)",
    ),
    (
        '{"prompt": [{"role": "user", "content": "q"}], "chosen": [], "rejected": [{"role": "assistant", "content": "b"}]}',
        "no messages after the prompt",
    ),
    ('{"prompt": "p", "chosen": "a", "rejected": "b", "id": 1.5}', "'id' is a number"),
    ('{"prompt": "p", "chosen": "a", "rejected": "b", "is_flipped": "yes"}', "'is_flipped' is a string"),
    ('{"prompt": "p", "chosen": "a", "rejected": "b", "chosen_score": "high"}', "'chosen_score' is 'high'"),
    ('{"prompt": "p", "chosen": "a", "rejected": "b", "rejected_score": NaN}', "'rejected_score' is nan"),
    ('{"prompt": "p", "chosen": "a\\ud800", "rejected": "b"}', "unpaired surrogate"),
    ("[" * 100_000, "invalid JSON"),
]


@pytest.mark.parametrize(("line", "problem"), BAD_ROWS)
def test_bad_row_names_file_and_line(tmp_path, line, problem):
    path = _write_lines(tmp_path / "bad.jsonl", [json.dumps(GOOD), json.dumps(GOOD), line])
    err = _error(path)
    assert err.line == 3 and problem in err.problem
    assert str(err).startswith(f"{path}:3: ") and err.fix
    result = load_pairs(path, skip_invalid=True)
    assert (len(result.pairs), result.skipped) == (2, 1)
    assert result.skip_reasons == [str(err)]


def test_row_numbers_in_json_and_parquet(tmp_path):
    bad = {**GOOD, "rejected": "4"}
    (tmp_path / "r.json").write_text(json.dumps([GOOD, GOOD, bad]))
    pq.write_table(pa.Table.from_pylist([GOOD, bad]), tmp_path / "r.parquet")
    assert _error(tmp_path / "r.json").line == 3
    assert str(_error(tmp_path / "r.parquet")).startswith(f"{tmp_path / 'r.parquet'}:2: ")


def test_invalid_utf8_names_the_line(tmp_path):
    path = _write_lines(
        tmp_path / "u.jsonl", [json.dumps(GOOD), b'{"prompt": "p", "chosen": "\xff", "rejected": "b"}']
    )
    err = _error(path)
    assert err.line == 2 and "invalid UTF-8" in err.problem


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n")
    assert len(load_pairs(path).pairs) == 1


def test_skip_invalid_counts_and_keeps_first_reasons(tmp_path):
    lines = [json.dumps(GOOD), "{", json.dumps(GOOD)] + ['{"chosen": 1, "rejected": 2}'] * 8
    result = load_pairs(_write_lines(tmp_path / "s.jsonl", lines), skip_invalid=True)
    assert (len(result.pairs), result.skipped, len(result.skip_reasons)) == (2, 9, 5)
    assert result.skip_reasons[0].startswith(f"{tmp_path / 's.jsonl'}:2: invalid JSON")
    assert "--skip-invalid" in result.skip_reasons[0]
    summary = result.skip_summary().splitlines()
    assert "skipped 9 invalid rows" in summary[0] and len(summary) == 4
    assert summary[1].strip().startswith(f"{tmp_path / 's.jsonl'}:2:") and ":4:" in summary[2]
    assert load_pairs(tmp_path / "s.jsonl", skip_invalid=True, limit=1).skip_summary() == ""


def test_gigantic_line_is_not_parsed(tmp_path):
    huge = json.dumps({"prompt": "p", "chosen": "x" * (data_io.MAX_LINE_BYTES + 10), "rejected": "b"})
    path = _write_lines(tmp_path / "g.jsonl", [json.dumps(GOOD), huge, json.dumps({**GOOD, "id": "after"})])
    err = _error(path)
    assert err.line == 2 and "longer than 10 MB" in err.problem
    result = load_pairs(path, skip_invalid=True)
    assert [p.id for p in result.pairs] == ["g.jsonl:1", "after"] and result.skipped == 1


def test_line_of_exactly_the_limit_is_read(tmp_path, monkeypatch):
    line = json.dumps(GOOD)
    monkeypatch.setattr(data_io, "MAX_LINE_BYTES", len(line))
    path = tmp_path / "crlf.jsonl"
    path.write_bytes((line + "\r\n" + line + " \n").encode())
    result = load_pairs(path, skip_invalid=True)
    assert (len(result.pairs), result.skipped) == (1, 1)


# --- file-level problems -----------------------------------------------------------------------


def _truncated_gzip(path: Path, n_rows: int) -> Path:
    data = gzip.compress(b"".join(json.dumps({**GOOD, "id": i}).encode() + b"\n" for i in range(n_rows)))
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def test_truncated_gzip_raises_with_last_good_line(tmp_path):
    path = _truncated_gzip(tmp_path / "t.jsonl.gz", 3000)
    err = _error(path)
    assert "truncated or corrupt" in err.problem and err.line is not None and err.line > 100
    assert str(err).startswith(f"{path}:{err.line}: ") and "--skip-invalid" in err.fix
    result = load_pairs(path, skip_invalid=True)
    assert (len(result.pairs), result.skipped) == (err.line, 1)
    assert "the rest of the file was skipped" in result.skip_reasons[0]


def test_gzip_unreadable_from_the_start_always_raises(tmp_path):
    path = tmp_path / "n.jsonl.gz"
    path.write_bytes(b"this is not gzip\n")
    err = _error(path, skip_invalid=True)
    assert err.line is None and "gzip" in err.problem
    path2 = tmp_path / "n.json.gz"
    path2.write_bytes(gzip.compress(json.dumps([GOOD] * 50).encode())[:30])
    assert "truncated" in _error(path2).problem


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("e.jsonl", b"", "no preference pairs found"),
        ("e.jsonl", b"\n\n", "no preference pairs found"),
        ("e.json", b"[]", "no preference pairs found"),
        ("e.json", b"42", "top-level JSON value is a number"),
        ("e.json", b'[{"a": 1},\n oops]', "invalid JSON at line 2 column 2"),
        ("e.json", b'[{"chosen": "\xff"}]', "invalid UTF-8 on text line 1"),
        ("e.parquet", b"not parquet", "not a readable Parquet file"),
        ("e.csv", b"a,b", "unsupported file type"),
    ],
)
def test_file_level_errors(tmp_path, name, content, problem):
    (tmp_path / name).write_bytes(content)
    err = _error(tmp_path / name)
    assert problem in err.problem and str(err).startswith(str(tmp_path / name))


def test_missing_file_and_all_rows_invalid(tmp_path):
    assert "file not found" in _error(tmp_path / "nope.jsonl").problem
    path = _write_lines(tmp_path / "all_bad.jsonl", ["{", "{"])
    err = _error(path, skip_invalid=True)
    assert "all 2 rows were invalid" in err.problem and err.line is None


# --- robustness property -----------------------------------------------------------------------

_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "bot"]), "content": st.text(max_size=5)}
)
_field = _json | st.text(max_size=12) | st.lists(_message, max_size=3)
_row = st.dictionaries(
    st.sampled_from(
        ["prompt", "chosen", "rejected", "id", "is_flipped", "chosen_score", "rejected_score", "x"]
    ),
    _field,
    max_size=7,
)
_line = (
    _row.map(lambda r: json.dumps(r).encode())
    | _json.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=30)
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(_line, max_size=6), skip=st.booleans())
def test_property_random_rows_only_raise_data_error(lines, skip):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.jsonl"
        path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines))
        try:
            result = load_pairs(path, skip_invalid=skip)
        except DataError as err:
            assert str(err).startswith(str(path))
            return
        assert result.pairs and all(isinstance(p, PreferencePair) for p in result.pairs)
