"""End-to-end: the `robalign` command as a user runs it (in a subprocess, so exit codes are real)."""

import json
import subprocess
import sys

import pytest


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
    (["--no-such-flag", "1"], "unrecognized arguments"),
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
