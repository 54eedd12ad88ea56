"""robalign.jsonl: whole files written atomically; logs appended, and cut back to a step on resume."""

import json
import os

import pytest

from robalign import atomic, jsonl

# A log as a kill leaves it: a row without a step (counts as step 0), steps out of order (an evaluation row
# logged after a later step's row), then a line cut mid-write and a row after it.
LOG = ('{"note": "start"}\n'
       '{"step": 1, "loss": 0.7}\n'
       '{"step": 2, "loss": 0.6}\n'
       '{"step":3,"loss":0.5}\n'
       '{"step": 2, "eval/accuracy_h": 0.5}\n'
       '{"step": 3, "lo\n'
       '{"step": 1, "after": "the cut"}\n')


@pytest.mark.parametrize("step, kept", [
    (0, [0]),
    (2, [0, 1, 2, 4]),
    (3, [0, 1, 2, 3, 4]),  # the cut line and everything after it are gone whatever the step
])
def test_keep_through_step_keeps_exactly_the_rows_up_to_the_step(tmp_path, step, kept):
    path = tmp_path / "metrics.jsonl"
    path.write_text(LOG)
    jsonl.keep_through_step(path, step)
    lines = LOG.splitlines(keepends=True)
    assert path.read_text() == "".join(lines[i] for i in kept)  # the kept lines' bytes, unchanged


def test_keep_through_step_leaves_a_missing_log_missing(tmp_path):
    jsonl.keep_through_step(tmp_path / "pairs.jsonl", 3)
    assert os.listdir(tmp_path) == []


def test_a_kill_during_the_cut_leaves_the_log_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    path.write_text(LOG)

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", refuse)
    with pytest.raises(OSError):
        jsonl.keep_through_step(path, 1)
    assert path.read_text() == LOG
    assert os.listdir(tmp_path) == ["metrics.jsonl"]


def test_open_log_fresh_empties_an_old_log(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"  # the parent is created
    path.parent.mkdir()
    path.write_text(LOG)
    with jsonl.open_log(path) as fh:
        jsonl.append(fh, [{"step": 1}])
    assert path.read_text() == '{"step": 1}\n'


def test_open_log_resumed_appends_after_the_rows_up_to_the_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(LOG)
    with jsonl.open_log(path, resume_step=1) as fh:
        jsonl.append(fh, [{"step": 2, "loss": 0.61}, {"step": 2, "id": "b"}])
    assert jsonl.read_rows(path) == [{"note": "start"}, {"step": 1, "loss": 0.7}, {"step": 2, "loss": 0.61},
                                     {"step": 2, "id": "b"}]


def test_open_log_resumed_creates_a_missing_log(tmp_path):
    """As an online method's generations.jsonl needs: a resumed run whose log was never written gets one."""
    jsonl.open_log(tmp_path / "generations.jsonl", resume_step=4).close()
    assert (tmp_path / "generations.jsonl").read_text() == ""


def test_append_is_on_disk_before_the_log_is_closed(tmp_path):
    path = tmp_path / "pairs.jsonl"
    fh = jsonl.open_log(path)
    jsonl.append(fh, [{"step": 1, "id": "a", "weight": 0.5}, {"step": 1, "id": "b", "weight": 1.0}])
    assert path.read_text() == '{"step": 1, "id": "a", "weight": 0.5}\n{"step": 1, "id": "b", "weight": 1.0}\n'
    fh.close()


def test_write_rows_writes_one_json_dumps_line_per_row_atomically(tmp_path):
    rows = [{"id": "x", "gap": 0.25}, {"id": "é", "weight": 1}]
    path = jsonl.write_rows(tmp_path / "scores.jsonl", iter(rows))
    assert path.read_text() == "".join(json.dumps(r) + "\n" for r in rows)
    assert os.listdir(tmp_path) == ["scores.jsonl"]


def test_read_rows_skips_blank_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n\n{"step": 2}\n')
    assert jsonl.read_rows(path) == [{"step": 1}, {"step": 2}]
