"""Two CPU processes (gloo, launched by torchrun) give the run of one process at the same global batch."""

import glob
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_pairs

pytestmark = pytest.mark.integration  # subprocesses, torchrun or real runs: the integration tier

ONLINE = {"oracle_robust": ["--max-new-tokens", "4"],
          "sail": ["--max-new-tokens", "4", "--sail.r", "0.25", "--sail.p", "0.25", "--sail.g", "0.25"]}


def _train(tmp_path, name, nproc, batch_size, method="dpo", lora_r="0", extra=()):
    data = tmp_path / "pairs.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps(p.to_row()) + "\n" for p in make_pairs(16)))
    args = ["train", "--model", "tiny-llama", "--data", str(data), "--eval-fraction", "0", "--lora-r", lora_r,
            "--max-steps", "3", "--lr", "1e-3", "--progress", "false", "--max-length", "64", "--method", method,
            "--batch-size", str(batch_size), "--output-dir", str(tmp_path / name), *ONLINE.get(method, []), *extra]
    if nproc == 1:
        cmd = [sys.executable, "-m", "robalign.cli", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(29500 + os.getpid() % 1000), "-m", "robalign.cli", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    losses = [x["loss"] for x in map(json.loads, (tmp_path / name / "metrics.jsonl").read_text().splitlines())
              if "loss" in x]
    weights = load_file(glob.glob(str(tmp_path / name / "checkpoints" / "*" / "weights.safetensors"))[0])
    return losses, weights


@pytest.mark.parametrize("method,lora_r", [("dpo", "0"), ("simpo", "4"), ("gapo", "0"), ("oracle_robust", "0"),
                                           ("sail", "0")])
def test_two_processes_match_one(tmp_path, method, lora_r):
    one_loss, one_w = _train(tmp_path, "one", 1, 4, method, lora_r)
    two_loss, two_w = _train(tmp_path, "two", 2, 2, method, lora_r)
    assert one_loss == pytest.approx(two_loss, abs=1e-5)
    assert one_w.keys() == two_w.keys()
    for k in one_w:
        assert (one_w[k] - two_w[k]).abs().max().item() < 1e-5, k
    if method not in ONLINE:  # each pair's margin per epoch, gathered from both processes
        one_m, two_m = (load_file(str(tmp_path / n / "train_margins.safetensors"))["margin"] for n in ("one", "two"))
        assert one_m.shape == (1, 16) and one_m.isnan().sum().item() == 4  # 3 steps x 4 pairs: 12 met, 4 not yet
        assert torch.equal(one_m.isnan(), two_m.isnan())
        assert (one_m.nan_to_num() - two_m.nan_to_num()).abs().max().item() < 1e-5


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_two_processes_on_the_cached_trunk_match_one_process_on_the_whole_model(tmp_path, cache):
    last_k = ["--train-last-k", "1", "--trunk-cache-dir", str(tmp_path / "trunk")]
    one_loss, one_w = _train(tmp_path, "one", 1, 4, extra=last_k)
    two_loss, two_w = _train(tmp_path, "two", 2, 2, extra=[*last_k, "--trunk-cache", cache])
    assert one_loss == pytest.approx(two_loss, abs=1e-5)
    assert one_w.keys() == two_w.keys() and all(".layers.1." in k for k in one_w)
    for k in one_w:
        assert (one_w[k] - two_w[k]).abs().max().item() < 1e-5, k


def _generations(out):
    rows = []
    for path in sorted(out.glob("generations*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines()]
    return sorted((r["step"], r["id"], r["route"], r["y1"], r["y2"], r["y1_preferred"]) for r in rows)


@pytest.mark.parametrize("method", ["oracle_robust", "sail"])
def test_two_processes_sample_and_label_what_one_process_does(tmp_path, method):
    # Per-pair seeds and uniforms: the two ranks' generation records together are the one-process record.
    _train(tmp_path, "one", 1, 4, method)
    _train(tmp_path, "two", 2, 2, method)
    one, two = _generations(tmp_path / "one"), _generations(tmp_path / "two")
    assert (tmp_path / "two" / "generations-rank1.jsonl").is_file()
    assert len(one) > 0 and one == two


def test_accelerate_launch_cpu_runs_the_requested_processes(tmp_path):
    # accelerate's --cpu launcher starts one process; robalign fans out to the N asked for, and the run
    # equals the one-process run at the same global batch.
    one_loss, one_w = _train(tmp_path, "one", 1, 4)
    data, out = tmp_path / "pairs.jsonl", tmp_path / "acc"
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    cmd = [accelerate, "launch", "--num_processes", "2", "--cpu", "--main_process_port",
           str(30500 + os.getpid() % 1000), "-m", "robalign.cli", "train", "--model", "tiny-llama", "--data",
           str(data), "--eval-fraction", "0", "--lora-r", "0", "--max-steps", "3", "--lr", "1e-3", "--progress",
           "false", "--max-length", "64", "--batch-size", "2", "--output-dir", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "processes: 2" in r.stdout
    losses = [x["loss"] for x in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in x]
    assert one_loss == pytest.approx(losses, abs=1e-5)
    weights = load_file(glob.glob(str(out / "checkpoints" / "*" / "weights.safetensors"))[0])
    for k in one_w:
        assert (one_w[k] - weights[k]).abs().max().item() < 1e-5, k


@pytest.mark.parametrize("fails", [False, True])
def test_train_destroys_the_process_group_when_it_ends(tmp_path, monkeypatch, fails):
    # A rank that exits with a live gloo group can abort in its thread teardown after a finished run.
    import torch.distributed as dist

    from robalign.cli import main
    from robalign.trainer import Trainer

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p.to_row()) + "\n" for p in make_pairs(8)))
    if fails:
        def broken(self, resume=False, overwrite=False):
            raise RuntimeError("step failed")
        monkeypatch.setattr(Trainer, "train", broken)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        args = ["train", "--model", "tiny-llama", "--data", str(data), "--eval-fraction", "0", "--max-steps", "1",
                "--progress", "false", "--max-length", "64", "--batch-size", "2", "--output-dir", str(tmp_path / "o")]
        if fails:
            with pytest.raises(RuntimeError, match="step failed"):
                main(args)
        else:
            assert main(args) == 0
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_a_rank_of_a_launch_leaves_through_os_exit_after_its_run(monkeypatch, capsys):
    # The interpreter's teardown can abort a rank whose run had finished; a rank skips it, with its exit code.
    import robalign.cli as cli
    import robalign.launch as launch

    class Left(Exception):
        pass

    codes, ran = [], []

    def leave(code):
        codes.append(code)
        raise Left

    def train(args):
        ran.append(args.command)
        print("summary")
        return 0

    monkeypatch.setattr(sys, "argv", ["robalign", "train", "--max-steps", "1"])
    monkeypatch.setattr(launch, "relaunch_if_needed", lambda argv: None)
    monkeypatch.setattr(cli, "cmd_train", train)
    monkeypatch.setattr(os, "_exit", leave)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(Left):
        cli.main()
    assert codes == [0] and ran == ["train"]
    assert "summary" in capsys.readouterr().out
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: an ordinary return
    assert cli.main() == 0 and codes == [0] and ran == ["train", "train"]
