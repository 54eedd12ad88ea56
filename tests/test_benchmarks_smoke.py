"""The benchmark harness runs end to end on tiny-llama and writes the JSON its docs describe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # subprocesses, torchrun or real runs: the integration tier

REPO = Path(__file__).resolve().parents[1]
SUMMARY_KEYS = {"measured_steps", "median_step_s", "pairs_per_s", "real_tokens_per_s", "peak_rss_mb",
                "useful_gflops_per_s", "share_of_matmul_ceiling", "measured_time_s"}


def hh_like(path: Path, n: int = 48) -> Path:
    """A small file in HH-RLHF's transcript format, so the harnesses run wherever the clone lives (the shared
    copy sits beside the repository only on the project's machines)."""
    rows = []
    for i in range(n):
        talk = f"\n\nHuman: question {i}: what is {i} plus {i % 7}?"
        rows.append({"chosen": f"{talk}\n\nAssistant: it is {i + i % 7}.",
                     "rejected": f"{talk}\n\nAssistant: I would rather not say, sorry {i}."})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_speed(tmp_path, frameworks: str, timeout: int):
    out = tmp_path / "speed.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "speed.py"), "--configs", "tiny", "--frameworks", frameworks,
           "--warmup", "1", "--steps", "1", "--ceiling-n", "256", "--out", str(out),
           "--data", str(hh_like(tmp_path / "hh.jsonl"))]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def check_run(run: dict, framework: str):
    assert run["framework"] == framework
    assert len(run["step_times_s"]) == 2
    assert SUMMARY_KEYS <= set(run["summary"])
    assert run["summary"]["measured_steps"] == 1
    assert run["inputs"]["mismatched_pairs"] == 0
    assert run["first_step"]["loss"] == pytest.approx(0.6931471805599453, rel=1e-6)  # policy = reference at step 0


def test_speed_harness_robalign_side(tmp_path):
    report, stdout = run_speed(tmp_path, "robalign", timeout=120)
    assert {"machine", "versions", "matmul_ceiling", "dims", "per_step_tokens", "runs", "peers", "markdown"} <= set(report)
    assert report["matmul_ceiling"]["gflops"] > 0
    assert len(report["per_step_tokens"]["tiny-llama"]) == 2
    run = report["runs"]["tiny/robalign"]
    check_run(run, "robalign")
    assert run["inputs"]["batch_order_matches"]
    assert "| tiny | robalign |" in stdout


@pytest.mark.slow
def test_speed_harness_against_trl(tmp_path):
    pytest.importorskip("trl")
    report, stdout = run_speed(tmp_path, "robalign,trl", timeout=300)
    check_run(report["runs"]["tiny/robalign"], "robalign")
    check_run(report["runs"]["tiny/trl"], "trl")
    peer = report["peers"]["tiny"]
    assert peer["first_loss"]["agree"]
    assert {"speedup_total", "speedup_median", "rss_ratio"} <= set(peer)
    assert "first-step loss robalign" in stdout


@pytest.mark.slow
def test_trl_first_step_agrees_on_tiny_llama():
    pytest.importorskip("trl")
    cmd = [sys.executable, str(REPO / "benchmarks" / "trl_first_step.py"), "--models", "tiny-llama"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "PASS" in proc.stdout


def test_sweep_memo_benchmark_runs_both_ways_and_checks_they_agree(tmp_path):
    out = tmp_path / "memo.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "sweep_memo.py"), "--model", "tiny-llama", "--methods", "dpo,ipo",
           "--steps", "2", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["identical_results"] is True and report["speedup"] > 0
    assert [len(v) for v in report["seconds"].values()] == [2, 2]


def test_long_training_benchmark_runs_every_configuration(tmp_path):
    out = tmp_path / "lt.jsonl"
    cmd = [sys.executable, str(REPO / "benchmarks" / "long_training.py"), "--model", "tiny-llama", "--pairs", "24",
           "--eval-pairs", "8", "--epochs", "1", "--k", "1", "--steps", "1", "--breakdown-steps", "1",
           "--out", str(out), "--data", str(hh_like(tmp_path / "hh.jsonl"))]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    header, *runs = json.loads(out.read_text())["run"]
    assert header["ceiling"]["gflops"] > 0 and [r["kind"] for r in runs] == ["cached", "lora", "full"]
    cached = runs[0]
    assert cached["pair_passes"] == 24 and cached["cache_mib"] > 0 and cached["cache_build_s"] > 0
    assert [r["epoch"] for r in cached["curve"]] == [0.0, 1.0]
    assert set(cached["breakdown"]["seconds"]) == {"blocks", "head", "optimizer"}
    assert "pair-passes/s" in proc.stdout and "of the ceiling" in proc.stdout


def test_fused_head_benchmark_times_both_paths_in_every_mode(tmp_path):
    out = tmp_path / "fh.jsonl"
    cmd = [sys.executable, str(REPO / "benchmarks" / "fused_head.py"), "--tokens", "8,16", "--vocab", "300",
           "--hidden", "16", "--repeats", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["mode"], r["n"]) for r in rows] == [(m, n) for m in ("input", "weight", "nograd") for n in (8, 16)]
    assert all(r["plain_s"] > 0 and r["fused_s"] > 0 for r in rows)
    assert "| weight | 16 |" in proc.stdout


def run_gpu_bench(tmp_path, frameworks: str, tunings: str, timeout: int):
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_dpo_vs_trl.py"), "--dry-run", "--frameworks", frameworks,
           "--tunings", tunings, "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_gpu_benchmark_dry_run_robalign_side(tmp_path):
    report, stdout = run_gpu_bench(tmp_path, "robalign", "full", timeout=180)
    assert report["failed"] == [] and len(report["runs"]) == 1
    run = report["runs"][0]
    assert (run["framework"], run["model"], run["dtype"], run["mixed"]) == ("robalign", "tiny-llama", "bf16", "bf16")
    assert run["first_loss"] == pytest.approx(0.6931471805599453, abs=1e-6)  # policy = reference at step 0, in bf16
    assert run["pairs_per_s"] > 0 and run["peak_gpu_mib"] is None  # no GPU in the dry run
    assert "| tiny-llama | full | robalign |" in stdout


@pytest.mark.slow
def test_gpu_benchmark_dry_run_against_trl(tmp_path):
    pytest.importorskip("trl")
    report, stdout = run_gpu_bench(tmp_path, "robalign,trl", "lora,full", timeout=400)
    assert report["failed"] == [] and len(report["runs"]) == 4
    assert all(r["first_loss"] == pytest.approx(0.6931471805599453, abs=1e-3) for r in report["runs"])
    assert {(c["model"], c["tuning"]) for c in report["comparison"]} == {("tiny-llama", "lora"), ("tiny-llama", "full")}
    assert "robalign / TRL pairs/s" in stdout


def test_online_benchmark_resumes_a_run_killed_after_a_checkpoint_to_the_same_result(tmp_path):
    def run(out: Path) -> dict:
        cmd = [sys.executable, str(REPO / "benchmarks" / "online.py"), "--model", "tiny-llama", "--methods",
               "online_dpo", "--seeds", "0", "--steps", "4", "--batch-size", "2", "--save-every", "2",
               "--eval-prompts", "2", "--lora-r", "4", "--max-new-tokens", "8", "--threads", "1", "--out", str(out)]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return json.loads((out / "runs" / "online_dpo-s0" / "result.json").read_text())

    whole = run(tmp_path / "whole")
    killed = tmp_path / "killed"
    run(killed)
    # As if killed between the checkpoint at step 2 and the end: no result, no later checkpoint.
    folder = killed / "runs" / "online_dpo-s0"
    for name in ("result.json", "eval_generations.jsonl", "checkpoints/step-00000004/state.json"):
        (folder / name).unlink()
    resumed = run(killed)
    for key in ("train/loss", "train/oracle_agreement", "gen/kl", "gen/reward_sampled"):
        assert resumed[key] == whole[key], key
    samples = [(tmp_path / n / "runs" / "online_dpo-s0" / "generations.jsonl").read_text()
               for n in ("whole", "killed")]
    assert samples[0] == samples[1]  # the resumed run drew the same training samples from step 3 on
