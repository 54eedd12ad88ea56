"""SIGKILL a real training process at random moments, resume, and compare with an uninterrupted run."""

import glob
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_pairs

pytestmark = pytest.mark.integration  # subprocesses, torchrun or real runs: the integration tier

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


def _done(out) -> int:
    """Steps of the newest complete checkpoint (0 if none)."""
    steps = [int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*")] if out.exists() else []
    return max(steps, default=0)


def _wait_for(proc, out, target: int, mid_write: bool) -> bool:
    """Polls until the kill point is reached (True) or the process ended by itself (False)."""
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if mid_write and list((out / "checkpoints").glob(".tmp-step-*")):
            return True
        if _done(out) >= target:
            return True
        time.sleep(0.005)
    return False


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
    for attempt in range(20):
        log = open(tmp_path / f"attempt{attempt}.log", "w+")  # a file: a full pipe would stall the child
        proc = subprocess.Popen(_cmd(data, out, method, "--resume"), stdout=subprocess.DEVNULL, stderr=log,
                                env=env)
        # Kill by progress, not by wall time: either right after a random checkpoint appears, or while
        # one is being written (its temporary directory exists). The last attempts run to the end.
        mid_write = rng.random() < 0.4
        target = min(STEPS - 1, _done(out) + rng.randint(1, 2))
        if attempt < 8 and _done(out) < STEPS - 1 and _wait_for(proc, out, target, mid_write):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        code = proc.wait(timeout=300)
        log.seek(0)
        assert code == 0, log.read()[-2000:]
        break
    assert kills >= 2
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




def test_resume_skips_a_corrupt_last_checkpoint_and_stays_exact(tmp_path):
    """A truncated newest checkpoint is named and the one before it used: the run still ends exactly as an
    uninterrupted one; when no checkpoint reads, one message."""
    from robalign.cli import main

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p.to_row()) + "\n" for p in make_pairs(8)))
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    args = ["train", "--model", "tiny-llama", "--data", str(data), "--eval-fraction", "0", "--lora-r", "0",
            "--max-steps", "4", "--lr", "1e-2", "--batch-size", "2", "--save-every", "1", "--keep-last", "3",
            "--max-length", "64", "--progress", "false"]
    assert main([*args, "--output-dir", str(whole)]) == 0
    assert main([*args, "--output-dir", str(parts), "--stop-after", "3"]) == 0
    newest = parts / "checkpoints" / "step-00000003" / "weights.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # a copy cut short
    assert main([*args, "--output-dir", str(parts), "--resume"]) == 0
    a = load_file(str(whole / "checkpoints" / "step-00000004" / "weights.safetensors"))
    b = load_file(str(parts / "checkpoints" / "step-00000004" / "weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for step in (2, 3, 4):  # now every checkpoint left is broken
        f = parts / "checkpoints" / f"step-{step:08d}" / "state.json"
        if f.exists():
            f.write_text("{")
    assert main([*args, "--output-dir", str(parts), "--resume", "--max-steps", "4"]) == 2
