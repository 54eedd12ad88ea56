"""A corpus of broken data files and configs: each ends with exit code 2 and a message, never a traceback."""

import gzip
import json

import pytest

from robalign.cli import main

GOOD = {"prompt": "Q?", "chosen": "yes", "rejected": "no"}


def _jsonl(rows):
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


DATA_CASES = {
    "broken_json": (_jsonl([GOOD, '{"prompt": "a", "chosen": ']), ":2"),
    "missing_rejected": (_jsonl([GOOD, {"prompt": "a", "chosen": "b"}]), ":2"),
    "empty_chosen": (_jsonl([{"prompt": "a", "chosen": "  ", "rejected": "b"}]), ":1"),
    "list_for_string": (_jsonl([GOOD, GOOD, {"prompt": "a", "chosen": ["x"], "rejected": "b"}]), ":3"),
    "number_for_string": (_jsonl([{"prompt": "a", "chosen": 3, "rejected": "b"}]), ":1"),
    "chosen_equals_rejected": (_jsonl([{"prompt": "a", "chosen": "same", "rejected": "same"}]), ":1"),
    "non_list_messages": (_jsonl([{"prompt": {"role": "user"}, "chosen": "a", "rejected": "b"}]), ":1"),
    "unknown_role": (_jsonl([{"prompt": [{"role": "wizard", "content": "hi"}], "chosen": "a", "rejected": "b"}]),
                     ":1"),
    "row_not_object": (_jsonl([GOOD, "[1, 2, 3]"]), ":2"),
    "empty_file": ("", "hostile"),
}


@pytest.mark.parametrize("name", sorted(DATA_CASES))
def test_broken_data_exits_2(tmp_path, capsys, name):
    content, where = DATA_CASES[name]
    path = tmp_path / f"hostile_{name}.jsonl"
    path.write_text(content)
    code = main(["train", "--model", "tiny-llama", "--data", str(path), "--output-dir", str(tmp_path / "o"),
                 "--max-steps", "1"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert path.name in err and where in err and "Traceback" not in err


def test_invalid_utf8_and_truncated_gzip_and_giant_line(tmp_path, capsys):
    bad_utf8 = tmp_path / "utf8.jsonl"
    bad_utf8.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"prompt": "\xff\xfe", "chosen": "a", "rejected": "b"}\n')
    truncated = tmp_path / "cut.jsonl.gz"
    blob = gzip.compress(_jsonl([GOOD] * 200).encode())
    truncated.write_bytes(blob[: len(blob) // 2])
    giant = tmp_path / "giant.jsonl"
    giant.write_text(json.dumps({"prompt": "a" * 11_000_000, "chosen": "b", "rejected": "c"}) + "\n")
    for path, where in ((bad_utf8, "utf8.jsonl:2"), (truncated, "cut.jsonl.gz"), (giant, "giant.jsonl:1")):
        code = main(["train", "--model", "tiny-llama", "--data", str(path), "--output-dir", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert code == 2 and where in err and "Traceback" not in err, err


CONFIG_CASES = {
    "unknown_key": ("train:\n  max_stepz: 3\n", "max_stepz"),
    "unknown_section": ("trainer:\n  max_steps: 3\n", "trainer"),
    "wrong_type": ("train:\n  max_steps: many\n", "train.max_steps"),
    "epsilon_half": ("method:\n  name: rdpo\n  epsilon: 0.5\n", "epsilon"),
    "negative_beta": ("method:\n  beta: -0.1\n", "beta"),
    "rho_too_big": ("method:\n  name: robust\n  rho: 0.9\n", "rho"),
    "missing_model": ("model:\n  name: /nowhere/model\n", "/nowhere/model"),
    "not_a_mapping": ("- just\n- a list\n", "mapping"),
    "broken_yaml": ("train: [1,\n", "YAML"),
}


@pytest.mark.parametrize("name", sorted(CONFIG_CASES))
def test_broken_config_exits_2(tmp_path, capsys, name):
    content, needle = CONFIG_CASES[name]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(content)
    data = tmp_path / "d.jsonl"
    data.write_text(_jsonl([GOOD] * 4))
    code = main(["train", str(cfg), "--data", str(data), "--output-dir", str(tmp_path / "o"), "--max-steps", "1"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert needle in err and "Traceback" not in err
