"""robalign.atomic: a destination holds its old content or its new one, never a mix, and no temporary is left."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from robalign import atomic


class Killed(Exception):
    """Stands for a writer dying half-way."""


def _fail_rename(monkeypatch):
    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", refuse)


def test_write_text_replaces_the_file_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "sub" / "notes.txt"  # the parent is created
    atomic.write_text(path, "old")
    atomic.write_text(path, "new\n")
    assert path.read_bytes() == b"new\n"
    assert os.listdir(path.parent) == ["notes.txt"]


def test_a_writer_killed_mid_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "result.json"
    path.write_text("old")
    with pytest.raises(Killed), atomic.open_file(path) as fh:
        fh.write("half of the new")
        fh.flush()
        assert atomic.temporary_name(path).read_text() == "half of the new"  # written beside, not over
        raise Killed
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["result.json"]


@pytest.mark.parametrize("write", [
    lambda p: atomic.write_text(p, "new"),
    lambda p: atomic.write_json(p, {"new": 1}),
    lambda p: atomic.write_tensors({"x": torch.ones(2)}, p),
], ids=["text", "json", "tensors"])
def test_a_failed_rename_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, write):
    path = tmp_path / "file"
    path.write_bytes(b"old")
    _fail_rename(monkeypatch)
    with pytest.raises(OSError, match="No space"):
        write(path)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["file"]


def test_temporary_names_differ_by_process(tmp_path, monkeypatch):
    """Two processes writing one destination each write their own temporary file; the last rename wins whole."""
    path = tmp_path / "cache.jsonl"
    monkeypatch.setattr(atomic.os, "getpid", lambda: 101)
    first = atomic.open_file(path)
    fh_a = first.__enter__()
    fh_a.write("from 101\n")
    monkeypatch.setattr(atomic.os, "getpid", lambda: 202)
    atomic.write_text(path, "from 202\n")  # starts and ends while 101 is still writing
    assert path.read_text() == "from 202\n" and (tmp_path / ".cache.jsonl.101.tmp").is_file()
    first.__exit__(None, None, None)
    assert path.read_text() == "from 101\n"
    assert os.listdir(tmp_path) == ["cache.jsonl"]


def test_write_json_writes_the_bytes_of_json_dumps(tmp_path):
    obj = {"method": "dpo", "rate": 0.25, "curve": [1, 2]}
    path = atomic.write_json(tmp_path / "result.json", obj, indent=2)
    assert path.read_text() == json.dumps(obj, indent=2)  # no newline added: the bytes callers wrote before


def test_write_tensors_round_trips_with_metadata(tmp_path):
    path = atomic.write_tensors({"a": torch.arange(6).view(2, 3).t()}, tmp_path / "t.safetensors",
                                metadata={"k": "v"})  # a non-contiguous tensor is made contiguous
    assert torch.equal(load_file(str(path))["a"], torch.arange(6).view(2, 3).t())
    assert os.listdir(tmp_path) == ["t.safetensors"]


def _folder(path, text):
    path.mkdir(parents=True)
    (path / "a.txt").write_text(text)


def test_directory_replaces_an_old_folder_whole(tmp_path):
    final = tmp_path / "final"
    _folder(final, "old")
    (final / "only-in-old.txt").write_text("x")
    with atomic.directory(final) as tmp:
        assert tmp.parent == tmp_path and tmp.is_dir() and not any(tmp.iterdir())
        (tmp / "a.txt").write_text("new")
    assert sorted(os.listdir(final)) == ["a.txt"] and (final / "a.txt").read_text() == "new"
    assert os.listdir(tmp_path) == ["final"]


def test_directory_killed_while_deleting_the_old_folder_leaves_the_new_one_whole(tmp_path, monkeypatch):
    final = tmp_path / "final"
    _folder(final, "old")
    real = atomic.shutil.rmtree

    def killed_on_the_old(path, **kw):
        if str(path).endswith(".old") and Path(path).exists():
            (Path(path) / "a.txt").unlink()  # half deleted, then the kill
            raise Killed
        return real(path, **kw)

    monkeypatch.setattr(atomic.shutil, "rmtree", killed_on_the_old)
    with pytest.raises(Killed), atomic.directory(final) as tmp:
        (tmp / "a.txt").write_text("new")
    assert sorted(os.listdir(final)) == ["a.txt"] and (final / "a.txt").read_text() == "new"


def test_directory_failed_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    final = tmp_path / "final"
    _folder(final, "old")
    real = atomic.os.replace

    def refuse_the_new(src, dst):
        if ".tmp" in str(src):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", refuse_the_new)
    with pytest.raises(OSError, match="No space"), atomic.directory(final) as tmp:
        (tmp / "a.txt").write_text("new")
    assert (final / "a.txt").read_text() == "old"
    assert os.listdir(tmp_path) == ["final"]


def test_directory_killed_mid_write_leaves_the_old_folder_and_no_temporary(tmp_path):
    final = tmp_path / "final"
    _folder(final, "old")
    with pytest.raises(Killed), atomic.directory(final, tmp=tmp_path / ".tmp-final") as tmp:
        (tmp / "a.txt").write_text("half")
        raise Killed
    assert (final / "a.txt").read_text() == "old"
    assert os.listdir(tmp_path) == ["final"]


def test_directory_failed_rename_leaves_no_temporary(tmp_path, monkeypatch):
    _fail_rename(monkeypatch)
    with pytest.raises(OSError, match="No space"), atomic.directory(tmp_path / "final") as tmp:
        (tmp / "a.txt").write_text("new")
    assert os.listdir(tmp_path) == []


def test_directory_deletes_a_leftover_of_its_named_temporary_first(tmp_path):
    _folder(tmp_path / ".tmp-step-00000004", "killed writer's")
    with atomic.directory(tmp_path / "step-00000004", tmp=tmp_path / ".tmp-step-00000004") as tmp:
        assert not any(tmp.iterdir())
        (tmp / "a.txt").write_text("new")
    assert os.listdir(tmp_path) == ["step-00000004"]


def test_directory_without_replace_keeps_a_folder_another_process_finished(tmp_path):
    target = tmp_path / "model"
    _folder(target, "the other process's")
    with pytest.raises(OSError), atomic.directory(target, replace=False) as tmp:
        (tmp / "a.txt").write_text("ours")
    assert (target / "a.txt").read_text() == "the other process's"
    assert os.listdir(tmp_path) == ["model"]


def test_durable_directory_syncs_the_parent_after_the_rename(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(atomic, "fsync_dir", lambda p: synced.append((p, (tmp_path / "step").is_dir())))
    with atomic.directory(tmp_path / "step", durable=True) as tmp:
        (tmp / "a.txt").write_text("x")
    assert synced == [(tmp_path, True)]


def test_remove_directory_leaves_neither_name(tmp_path):
    _folder(tmp_path / "step-1", "old")
    atomic.remove_directory(tmp_path / "step-1", tmp_path / ".tmp-del-step-1")
    assert os.listdir(tmp_path) == []
