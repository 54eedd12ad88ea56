"""End-to-end: the `robalign` command as a user runs it (in a subprocess, so exit codes are real)."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration  # subprocesses, torchrun or real runs: the integration tier


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "robalign.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_train_tiny_llama_on_hh(hh_path, tmp_path):
    out = tmp_path / "run"
    r = run("train", "--model", "tiny-llama", "--data", hh_path, "--skip-invalid", "--method", "rdpo",
            "--epsilon", "0.2", "--max-steps", "3", "--batch-size", "2", "--lora-r", "4", "--max-length", "96",
            "--limit", "40", "--eval-limit", "8", "--output-dir", out, "--progress", "false")
    assert r.returncode == 0, r.stderr
    assert "eval/accuracy_h" in r.stdout and "0.5 is chance" in r.stdout  # the summary says what it means
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [1, 2, 3]
    assert (out / "config.yaml").is_file() and (out / "final" / "config.json").is_file()
    assert (out / "final" / "adapter" / "adapter_config.json").is_file()


@pytest.mark.parametrize("content,line,needle", [
    ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b", \n', 2, "JSON"),
    ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n', 2, "rejected"),
    ('{"prompt": "a", "chosen": "", "rejected": "c"}\n', 1, "chosen"),
    ('{"prompt": "a", "chosen": ["b"], "rejected": "c"}\n', 1, "chosen"),
])
def test_malformed_data_exits_2_naming_file_and_line(tmp_path, content, line, needle):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    r = run("train", "--model", "tiny-llama", "--data", path, "--max-steps", "1", "--output-dir", tmp_path / "o")
    assert r.returncode == 2
    assert f"bad.jsonl:{line}" in r.stderr and needle in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args,needle", [
    (["--method", "rdpo", "--epsilon", "0.5"], "epsilon"),
    (["--beta", "-1"], "beta"),
    (["--no-such-flag", "1"], "unrecognized argument --no-such-flag"),
    (["--model", "/does/not/exist"], "cannot load"),
])
def test_config_mistakes_exit_2(tmp_path, args, needle):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n' * 4)
    r = run("train", "--data", data, "--output-dir", tmp_path / "o", "--max-steps", "1", *args)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr


def test_noise_command_writes_flags(hh_path, tmp_path):
    out = tmp_path / "noisy.jsonl"
    r = run("noise", "--data", hh_path, "--skip-invalid", "--out", out, "--kind", "flip", "--rate", "0.2")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert sum(r["is_flipped"] for r in rows) == round(0.2 * len(rows))


def test_a_closed_stdout_ends_quietly_without_a_traceback():
    """`robalign config-keys | head -1`: the reader leaves early, robalign stops with 141 and says nothing."""
    proc = subprocess.Popen([sys.executable, "-m", "robalign.cli", "config-keys"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # nobody reads: the first write fails with EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err


# --- parsing: negative numbers, no abbreviations, suggestions, one error prefix -------------------------------

GOOD_ROW = '{"prompt": "a", "chosen": "b", "rejected": "c"}\n'


def _main(capsys, *args):
    from robalign.cli import main

    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("args,needle", [
    (["--lr", "-1e-5"], "train.lr: must be a positive number"),  # a value, not a missing one
    (["--lr=-1e-5"], "train.lr: must be a positive number"),
    (["--max-grad-norm", "-.5"], "train.max_grad_norm: must be >= 0"),
    (["--max-step", "3"], "unrecognized argument --max-step (did you mean --max-steps?)"),
    (["--max-stepz", "3"], "unrecognized argument --max-stepz (did you mean --max-steps?)"),
    (["--lora", "3"], "did you mean --lora-r or --lora-alpha or --lora-dropout?"),
    (["--train.max_step", "3"], "did you mean --train.max_steps?"),
])
def test_train_flag_mistakes_are_one_message(tmp_path, capsys, args, needle):
    data = tmp_path / "d.jsonl"
    data.write_text(GOOD_ROW * 4)
    code, _, err = _main(capsys, "train", "--data", data, "--output-dir", tmp_path / "o", *args)
    assert code == 2 and needle in err, err
    assert err.count("robalign: error:") == 1 and err.startswith("robalign: error:") and "usage:" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args,needle", [
    (["noise", "--dat", "x", "--out", "y", "--rate", "0.1"], "unrecognized argument --dat (did you mean --data?)"),
    (["noise", "--data", "x", "--out", "y", "--rat", "0.1"], "unrecognized argument --rat (did you mean --rate?)"),
    (["eval", "--model", "m", "--data", "d", "--batch", "3"], "did you mean --batch-size?"),
    (["bench", "robustness", "--method", "dpo"], "did you mean --methods?"),
    (["demo", "--quik"], "did you mean --quick?"),
    (["noise", "--data", "x", "--out", "y"], "the following arguments are required: --rate"),
])
def test_subcommands_take_no_abbreviations_and_suggest(capsys, args, needle):
    code, _, err = _main(capsys, *args)
    assert code == 2 and needle in err, err
    assert err.count("robalign: error:") == 1


def test_noise_skip_invalid_reports_what_it_skipped(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(GOOD_ROW * 3 + "{broken\n" + GOOD_ROW + '{"prompt": "a"}\n' * 4)
    code, out, _ = _main(capsys, "noise", "--data", data, "--out", tmp_path / "n.jsonl", "--rate", "0.5",
                         "--skip-invalid")
    assert code == 0
    assert "skipped 5 invalid rows" in out and f"{data}:4:" in out and f"{data}:6:" in out and f"{data}:7:" in out
    assert f"{data}:8:" not in out  # the first few, not all
    assert "wrote 4 pairs" in out


def test_eval_checks_its_data_before_loading_a_model(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(GOOD_ROW + '{"prompt": "a", "chosen": "b"}\n')
    code, _, err = _main(capsys, "eval", "--model", tmp_path / "no-such-model", "--data", data)
    assert code == 2 and f"{data}:2:" in err and "no-such-model" not in err, err
    code, _, err = _main(capsys, "eval", "--model", tmp_path / "no-such-model", "--data", data, "--gold", "length")
    assert code == 2 and "--gold needs --reference" in err


def test_progress_false_silences_every_bar(tmp_path, tiny):
    """Also transformers' own bars (loading a saved model, writing final/), which only the switch stops."""
    model, tok = tiny
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "Q: alpha", "chosen": " beta", "rejected": " gamma delta"}\n' * 6)
    common = ["train", "--model", tmp_path / "m", "--data", data, "--eval-data", data, "--max-steps", "1",
              "--batch-size", "2", "--lora-r", "0", "--max-length", "32"]
    loud = run(*common, "--output-dir", tmp_path / "loud")
    assert loud.returncode == 0, loud.stderr
    assert "Loading weights" in loud.stderr and "it/s]" in loud.stderr  # what the switch must stop
    quiet = run(*common, "--output-dir", tmp_path / "quiet", "--progress", "false")
    assert quiet.returncode == 0, quiet.stderr
    assert "it/s]" not in quiet.stderr and "Loading weights" not in quiet.stderr and "%|" not in quiet.stderr
    evaluated = run("eval", "--model", tmp_path / "m", "--data", data, "--progress", "false")
    assert evaluated.returncode == 0 and "%|" not in evaluated.stderr, evaluated.stderr
