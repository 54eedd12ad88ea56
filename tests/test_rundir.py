"""A run directory describes one run: refused, replaced or resumed on purpose, never mixed or silently changed."""

import json
import subprocess
import sys

import pytest

from conftest import make_pairs
from robalign import cli
from robalign.checkpoint import list_checkpoints
from robalign.config import build_config
from robalign.errors import UserError
from robalign.rundir import RunLock, config_changes
from robalign.trainer import Trainer


def _trainer(out, **train):
    cfg = build_config({"model": {"name": "tiny-llama", "lora_r": 0}, "method": {"name": "dpo"},
                        "data": {"max_length": 64},
                        "train": {"output_dir": str(out), "batch_size": 2, "max_steps": 4, "lr": 1e-3,
                                  "progress": False, **train}})
    pairs = make_pairs(8)
    return Trainer(cfg, train_pairs=pairs, eval_pairs=pairs[:2])


def _metric_steps(out):
    return [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_second_run_into_a_run_directory_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "run"
    _trainer(out, max_steps=6, save_every=2, keep_last=5).train()
    with pytest.raises(UserError, match="already holds a run .*--resume.*--overwrite"):
        _trainer(out, max_steps=3).train()
    assert [p.name for p in list_checkpoints(out / "checkpoints")][-1] == "step-00000006"  # untouched
    _trainer(out, max_steps=3).train(overwrite=True)
    # Nothing of the old run is left to be resumed or deleted by keep_last in place of the new one.
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-00000003"]
    assert max(_metric_steps(out)) == 3


def test_resume_refuses_changed_settings_with_what_changed(tmp_path):
    out = tmp_path / "run"
    _trainer(out, max_steps=6, stop_after=2).train()
    with pytest.raises(UserError, match=r"train.max_steps: 6 -> 9.*train.stop_after"):
        _trainer(out, max_steps=9).train(resume=True)
    with pytest.raises(UserError, match=r"train.lr: 0.001 -> 0.01"):
        _trainer(out, max_steps=6, lr=1e-2).train(resume=True)
    # Settings that only change how the run is watched are accepted.
    summary = _trainer(out, max_steps=6, progress=True, log_every=2).train(resume=True)
    assert summary["steps"] == 6
    assert summary["start"]["eval/accuracy_h"] == 0.5  # the 'before' column, read from the log


def test_resuming_a_finished_run_says_so_and_appends_nothing(tmp_path):
    out = tmp_path / "run"
    first = _trainer(out).train()
    log_before = (out / "metrics.jsonl").read_text()
    again = _trainer(out).train(resume=True)
    assert again["finished_before"] and again["steps"] == 4
    assert again["final"] == first["final"] and again["start"] == first["start"]
    assert (out / "metrics.jsonl").read_text() == log_before


def test_config_changes_ignore_watch_only_settings():
    saved = {"train": {"lr": 1.0, "progress": True, "output_dir": "a"}, "model": {"name": "x"}}
    now = {"train": {"lr": 2.0, "progress": False, "output_dir": "./a"}, "model": {"name": "x"}}
    assert config_changes(saved, now) == ["train.lr: 1.0 -> 2.0"]


def test_a_live_lock_refuses_a_second_run_and_a_stale_one_is_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".run.lock").write_text(str(sleeper.pid))
        with pytest.raises(UserError, match=f"another process \\(pid {sleeper.pid}\\)"):
            _trainer(out).train()
    finally:
        sleeper.kill()
        sleeper.wait()
    # The holder is gone: its lock is stale and the run goes ahead, then releases it.
    _trainer(out).train()
    assert not (out / ".run.lock").exists()
    with RunLock(out):
        assert (out / ".run.lock").read_text().strip().isdigit()


def test_cli_refusals_exit_2_with_one_message_before_anything_loads(tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p.to_row()) + "\n" for p in make_pairs(8)))
    args = ["train", "--model", "tiny-llama", "--data", str(data), "--max-steps", "2", "--batch-size", "2",
            "--progress", "false", "--max-length", "64", "--lora-r", "0"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert cli.main(args + ["--output-dir", str(afile)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert cli.main(args + ["--output-dir", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert cli.main(args + ["--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("robalign: error:") == 1 and "already holds a run" in err
    assert cli.main(args + ["--output-dir", str(tmp_path / "run"), "--resume", "--overwrite"]) == 2
    assert cli.main(args + ["--output-dir", str(tmp_path / "run"), "--overwrite"]) == 0


def test_an_interrupted_run_names_its_last_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _trainer(out, max_steps=4, stop_after=2).train()
    monkeypatch.setattr(cli, "_RUN_DIR", out)
    said = cli._interrupted()
    assert "step-00000002" in said and "--resume" in said
    monkeypatch.setattr(cli, "_RUN_DIR", tmp_path / "never")
    assert "before the first checkpoint" in cli._interrupted()


def test_a_full_disk_at_a_checkpoint_is_one_message_and_the_last_checkpoint_stays(tmp_path, monkeypatch):
    import errno

    from robalign import checkpoint

    out = tmp_path / "run"
    trainer = _trainer(out, max_steps=4, save_every=2)
    real = checkpoint.save_file

    def filling(tensors, path, *a, **kw):
        if "step-00000004" in str(path):  # the first checkpoint fits, the second does not
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, *a, **kw)

    monkeypatch.setattr(checkpoint, "save_file", filling)
    with pytest.raises(UserError, match=r"No space left on device.*step-00000002, is intact.*--resume"):
        trainer.train()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]


def test_final_has_a_model_card_and_the_adapter_names_its_base_by_hub_id(tmp_path):
    from robalign.model_card import base_model_id

    assert base_model_id("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    cfg = build_config({"model": {"name": "tiny-llama", "lora_r": 4}, "method": {"name": "rdpo", "epsilon": 0.3},
                        "data": {"max_length": 64},
                        "train": {"output_dir": str(tmp_path / "run"), "batch_size": 2, "max_steps": 1,
                                  "progress": False}})
    pairs = make_pairs(6)
    summary = Trainer(cfg, train_pairs=pairs, eval_pairs=pairs[:2]).train()
    card = (tmp_path / "run" / "final" / "adapter" / "README.md").read_text()
    assert "rdpo" in card and "arXiv 2403.00409" in card and '"epsilon": 0.3' in card
    assert f"{summary['final']['eval/accuracy_h']:.4f}" in card
    adapter = json.loads((tmp_path / "run" / "final" / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "tiny-llama"
    assert "library_name: transformers" in (tmp_path / "run" / "final" / "README.md").read_text()


def test_resumable_only_with_a_checkpoint_of_the_same_settings(tmp_path):
    from robalign.rundir import resumable

    out = tmp_path / "run"
    assert not resumable(out, _trainer(out).cfg)  # nothing there
    _trainer(out, stop_after=2, save_every=2).train()
    assert resumable(out, _trainer(out).cfg)  # watch-only settings (stop_after, save_every) may differ
    assert not resumable(out, _trainer(out, lr=1e-2).cfg)  # another run's settings: train it again
    for step in (out / "checkpoints").iterdir():
        (step / "state.json").unlink()  # no complete checkpoint left
    assert not resumable(out, _trainer(out).cfg)
