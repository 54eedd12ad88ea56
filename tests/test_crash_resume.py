"""SIGKILL a real training process at random moments, resume, and compare with an uninterrupted run."""

import glob
import json
import os
import random
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_pairs

STEPS = 6
# An online method adds generation RNG and its own files (generations.jsonl, iterates/) to what must resume.
METHOD_ARGS = {"dpo": [], "gapo": [], "oracle_robust": ["--max-new-tokens", "4", "--optimizer", "sgd",
                                                          "--iterate-every", "2"]}


def _cmd(data, out, method, *extra):
    return [sys.executable, "-m", "robalign.cli", "train", "--model", "tiny-llama", "--data", str(data),
            "--method", method, *METHOD_ARGS[method],
            "--eval-fraction", "0", "--lora-r", "0", "--max-steps", str(STEPS), "--lr", "1e-2", "--batch-size", "2",
            "--save-every", "1", "--keep-last", "2", "--max-length", "64", "--progress", "false",
            "--output-dir", str(out), *extra]


def _final(out):
    return load_file(glob.glob(str(out / "final" / "model.safetensors"))[0])


@pytest.mark.parametrize("method", sorted(METHOD_ARGS))
def test_sigkill_at_random_points_then_resume_is_bit_identical(tmp_path, method):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p.to_row()) + "\n" for p in make_pairs(16)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = subprocess.run(_cmd(data, tmp_path / "ref", method), capture_output=True, text=True, env=env, timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]
    rng = random.Random(method)
    out = tmp_path / "crashy"
    kills = 0
    for _attempt in range(12):
        proc = subprocess.Popen(_cmd(data, out, method, "--resume"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=env)
        try:
            proc.wait(timeout=rng.uniform(2.0, 7.0))
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        assert proc.returncode == 0, proc.stderr.read()[-2000:]
        break
    else:
        final = subprocess.run(_cmd(data, out, method, "--resume"), capture_output=True, text=True, env=env, timeout=300)
        assert final.returncode == 0, final.stderr[-2000:]
    assert kills >= 1
    a, b = _final(tmp_path / "ref"), _final(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == list(range(1, STEPS + 1))
    assert not list((out / "checkpoints").glob(".tmp-*"))
    assert len(list((out / "checkpoints").glob("step-*"))) == 2


def test_partial_checkpoint_is_never_picked_up(tmp_path):
    from robalign.checkpoint import list_checkpoints, remove_partial

    root = tmp_path / "checkpoints"
    (root / "step-00000003").mkdir(parents=True)
    (root / "step-00000003" / "state.json").write_text("{}")
    (root / ".tmp-step-00000004").mkdir()
    (root / "step-00000005").mkdir()  # no state.json: incomplete
    assert [p.name for p in list_checkpoints(root)] == ["step-00000003"]
    remove_partial(root)
    assert not (root / ".tmp-step-00000004").exists()


