"""Shared pieces of the benchmark harness: data preparation, timing, peak RSS, FLOP counting, matmul ceiling.

Nothing here imports TRL; `_trl_runner.py` is the only file that does (TRL is a peer, never a dependency).
The harness runs each framework in its own process: the parent (`speed.py`) prepares the pairs once,
writes a job spec (JSON) per run, and each child (`_robalign_runner.py`, `_trl_runner.py`) writes a
result (JSON) that the parent summarises.
"""

from __future__ import annotations

import json
import os
import random
import resource
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DATA_PATH = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"


# ------------------------------------------------------------------------------- process + machine

def cores() -> int:
    """CPU cores this process may use (the affinity mask, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_threads(n: int):
    torch.set_num_threads(n)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def memory_mib() -> dict:
    """This process's resident set now (VmRSS) and its peak (VmHWM), MiB, from /proc/self/status ({} off Linux)."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return out


def reset_peak():
    """Restarts VmHWM from the current resident set (Linux), so the next reading is a phase's own peak."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> dict:
    """Peak resident memory of *this* process: getrusage's ru_maxrss (KiB on Linux) and /proc VmHWM."""
    out = {"ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if "VmHWM" in (mem := memory_mib()):
        out["vmhwm_mb"] = mem["VmHWM"]
    return out


def run_fields(optimizer, ceiling: dict) -> dict:
    """What every runner's result ends with: optimiser class, threads, the ceiling it measured, peak RSS."""
    return {"optimizer": type(getattr(optimizer, "optimizer", optimizer)).__name__,
            "threads": torch.get_num_threads(), "matmul_ceiling": ceiling, "peak_rss": peak_rss_mb()}


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        mem_gb = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"cpu": cpu, "cores": cores(), "mem_gb": mem_gb, "loadavg_at_start": load,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def versions() -> dict:
    import accelerate
    import peft
    import transformers

    out = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
           "accelerate": accelerate.__version__}
    try:
        import trl

        out["trl"] = trl.__version__
    except ImportError:
        out["trl"] = None
    return out


def matmul_ceiling(threads: int, n: int = 2048, repeats: int = 7) -> dict:
    """fp32 GFLOP/s of one n×n @ n×n torch.matmul with `threads` threads, best of `repeats` (after a warm-up)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=gen)
        b = torch.randn(n, n, generator=gen)
        out = torch.empty(n, n)
        # Warm-up for a second, not one call: thread pool, page faults, and the clock of this VM's cores, which
        # the first calls after an idle spell measured up to 30 % slow (107 against 158 GFLOP/s, 2026-12-07).
        start = time.perf_counter()
        while time.perf_counter() - start < 1.0:
            torch.matmul(a, b, out=out)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.matmul(a, b, out=out)
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)
    return {"n": n, "threads": threads, "best_s": best, "gflops": 2 * n**3 / best / 1e9}


# ------------------------------------------------------------------------------------------- data

def load_hh(path: Path | str = DATA_PATH):
    from robalign.data import load_pairs

    return load_pairs(str(path), skip_invalid=True).pairs


def speed_batches(tokenizer, n_steps: int, *, seed: int = 0, max_length: int = 256) -> tuple[list, list]:
    """(tokenised pairs, pair positions per step) of `speed.py`'s HH batches: 4 pairs a step, same order."""
    from robalign.data.pairs import PreferencePair
    from robalign.data.tokenize import tokenize_pair

    prep = prepare_pairs(tokenizer, load_hh(), n_pairs=4 * n_steps, seed=seed, max_length=max_length, batch_size=4)
    toks = [tokenize_pair(tokenizer, PreferencePair(p["prompt"], p["chosen"], p["rejected"]), i,
                          max_length=max_length, max_prompt_length=0) for i, p in enumerate(prep["pairs"])]
    return toks, prep["batches"]


def prepare_pairs(tokenizer, pairs, *, n_pairs: int, seed: int, max_length: int, batch_size: int) -> dict:
    """The first `n_pairs` usable pairs after a seeded shuffle, tokenised once with robalign's rules.

    "Usable" = a string prompt, and robalign's tokenisation at `max_length` (prompt budget max_length // 2,
    robalign's default) truncates nothing. Then every framework sees the same strings *and* the same tokens:
    TRL's own truncation (keep the start of prompt+completion) and robalign's (keep the prompt's end)
    never fire, so the strings handed to TRL are exactly the ones robalign tokenised.

    Returns a JSON-serialisable dict: `pairs` (robalign's training order: the order given to `Trainer`),
    `tokens` (ids per pair), `batches` (pair positions per step, in the order robalign's seeded,
    length-bucketed `BatchStream` serves them; TRL gets its rows in this order with a sequential sampler),
    and per-step token counts.
    """
    from robalign.data.collate import BatchStream
    from robalign.data.tokenize import tokenize_pair
    from robalign.errors import DataError

    budget = max_length // 2
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    chosen, tokens, scanned = [], [], 0
    for i in order:
        if len(chosen) == n_pairs:
            break
        scanned += 1
        pair = pairs[i]
        if not (isinstance(pair.prompt, str) and isinstance(pair.chosen, str) and isinstance(pair.rejected, str)):
            continue
        try:
            full = tokenize_pair(tokenizer, pair, len(chosen), max_length=10**9, max_prompt_length=0)
        except DataError:
            continue
        if len(full.prompt_ids) > budget or len(full) > max_length:
            continue  # robalign would truncate it; TRL would truncate differently
        chosen.append(pair)
        tokens.append(full)
    if len(chosen) < n_pairs:
        raise SystemExit(f"only {len(chosen)} usable pairs (need {n_pairs}); lower --steps or raise --max-length")
    stream = BatchStream(tokens, batch_size, seed=seed, pad_id=tokenizer.pad_token_id)
    n_steps = n_pairs // batch_size
    batches, per_step = [], []
    for k in range(n_steps):
        batch = stream.batch(k)
        batches.append(batch.index.tolist())
        rows, width = batch.input_ids.shape
        per_step.append({
            "real_tokens": int(batch.attention_mask.sum()),
            "completion_tokens": int(batch.completion_mask.sum()),
            "padded_tokens": rows * width,
        })
    return {
        "pairs": [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, "id": p.id or f"pair{i}"}
                  for i, p in enumerate(chosen)],
        "tokens": [{"prompt": t.prompt_ids, "chosen": t.chosen_ids, "rejected": t.rejected_ids} for t in tokens],
        "batches": batches,
        "per_step": per_step,
        "scanned": scanned,
    }


def trl_rows(prepared: dict) -> list[dict]:
    """prompt/chosen/rejected strings in step order (batch 0's pairs, then batch 1's, ...)."""
    pairs = prepared["pairs"]
    return [{k: pairs[i][k] for k in ("prompt", "chosen", "rejected")} for batch in prepared["batches"] for i in batch]


def compare_tokens(expected: list[dict], seen: list[dict]) -> dict:
    """How the token ids a framework saw differ from robalign's, pair by pair (both lists in the same order)."""
    mismatched, d_real, d_completion = [], 0, 0
    for i, (e, s) in enumerate(zip(expected, seen, strict=True)):
        if e != s:
            mismatched.append(i)
        for side in ("chosen", "rejected"):
            d_real += (len(s["prompt"]) + len(s[side])) - (len(e["prompt"]) + len(e[side]))
            d_completion += len(s[side]) - len(e[side])
    return {"pairs": len(expected), "mismatched_pairs": len(mismatched), "first_mismatches": mismatched[:5],
            "delta_real_tokens": d_real, "delta_completion_tokens": d_completion}


# ------------------------------------------------------------------------------------------ FLOPs

def model_dims(model) -> dict:
    """Parameter counts for the FLOP model: N excludes the input embedding and the LM head."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    emb = base.get_input_embeddings().weight
    head = base.get_output_embeddings().weight
    seen = {id(emb), id(head)}
    n_total = sum(p.numel() for p in base.parameters())
    n_body = sum(p.numel() for p in base.parameters() if id(p) not in seen)
    return {"n_params": n_total, "n_nonembedding": n_body, "hidden": head.shape[1], "vocab": head.shape[0],
            "tied_head": emb is head}


def useful_flops(dims: dict, real_tokens: int, completion_tokens: int, *, train: str, reference: str) -> float:
    """Useful FLOPs of one optimiser step (see docs/benchmarks.md, "Useful FLOPs").

    Args:
        dims: `model_dims`.
        real_tokens: R, non-pad tokens of the 2B rows (prompt + completion).
        completion_tokens: C, completion tokens scored (= positions whose log-prob the loss uses).
        train: 'full' (weights of body and head trained) or 'lora' (frozen base: activation grads only).
        reference: 'live' (one extra no-grad forward) or 'none' (cached or reference-free).
    """
    n, head = dims["n_nonembedding"], 2 * dims["hidden"] * dims["vocab"]
    if train == "full":
        policy = 6 * n * real_tokens + 3 * head * completion_tokens  # fwd 2N + bwd 4N; head fwd + dX + dW
    elif train == "lora":
        policy = 4 * n * real_tokens + 2 * head * completion_tokens  # fwd 2N + bwd 2N (dX only); head fwd + dX
    else:
        raise ValueError(train)
    ref = (2 * n * real_tokens + head * completion_tokens) if reference == "live" else 0
    return float(policy + ref)


# ------------------------------------------------------------------------------------------ timing

def summarize(step_times: list[float], per_step: list[dict], *, warmup: int, batch_size: int,
              flops_per_step: list[float] | None, ceiling_gflops: float) -> dict:
    """Median s/step after warm-up, and throughputs as totals over the measured steps / their total time."""
    times = step_times[warmup:]
    steps = per_step[warmup:len(step_times)]
    total = sum(times)
    out = {
        "measured_steps": len(times),
        "median_step_s": statistics.median(times),
        "min_step_s": min(times),
        "max_step_s": max(times),
        "pairs_per_s": batch_size * len(times) / total,
        "real_tokens_per_s": sum(s["real_tokens"] for s in steps) / total,
        "padded_tokens_per_s": sum(s["padded_tokens"] for s in steps) / total,
    }
    if flops_per_step is not None:
        rate = sum(flops_per_step[warmup:len(step_times)]) / total / 1e9
        out["useful_gflops_per_s"] = rate
        out["share_of_matmul_ceiling"] = rate / ceiling_gflops
    return out


def rel_diff(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def read_json(path):
    return json.loads(Path(path).read_text())


def write_json(path, obj):
    from robalign import atomic

    atomic.write_json(path, obj, indent=1, default=str)
