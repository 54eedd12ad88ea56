"""The LM head's completion log-probs: the chunked fused path (`robalign.fused_head`) against the plain
`F.linear` + `F.cross_entropy`, side by side in one process, at SmolLM2-135M's head (vocabulary 49,152,
hidden 576) and the completion-token counts of a cached-trunk step (batch 8 of HH pairs: ≈ 300–1,200).

For each N: forward + input gradient (a frozen head, as in partial fine-tuning and LoRA), the same with the
weight gradient too (full fine-tuning), and the no-gradient forward (evaluation, reference); the two paths
alternate on the same inputs, best of --repeats each. Prints a table and appends a JSON line to --out.

    .venv/bin/python benchmarks/fused_head.py --out benchmarks/results/fused_head.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, matmul_ceiling  # noqa: E402


def plain(weight, hidden, targets):
    return -F.cross_entropy(F.linear(hidden, weight), targets, reduction="none")


def _best_of(fns: dict, repeats: int) -> dict:
    """Best time of each function, the functions taking turns (so drifts of the machine hit both alike)."""
    for fn in fns.values():
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def measure(n: int, mode: str, repeats: int, vocab: int, hidden_size: int) -> dict:
    from robalign.fused_head import fused_token_logps

    g = torch.Generator().manual_seed(n)
    weight = (torch.randn(vocab, hidden_size, generator=g) * 0.05).requires_grad_(mode == "weight")
    hidden = torch.randn(n, hidden_size, generator=g).requires_grad_(mode != "nograd")
    targets = torch.randint(0, vocab, (n,), generator=g)
    upstream = torch.randn(n, generator=g)

    def run(fn):
        def once():
            if mode == "nograd":
                with torch.no_grad():
                    fn(weight, hidden, targets)
                return
            (fn(weight, hidden, targets) * upstream).sum().backward()
            hidden.grad = weight.grad = None
        return once

    seconds = _best_of({"plain": run(plain), "fused": run(fused_token_logps)}, repeats)
    matmuls = {"nograd": 1, "input": 2, "weight": 3}[mode]
    flop = 2 * n * hidden_size * vocab * matmuls
    return {"n": n, "mode": mode, **{f"{k}_s": v for k, v in seconds.items()},
            "speedup": seconds["plain"] / seconds["fused"],
            **{f"{k}_gflops": flop / v / 1e9 for k, v in seconds.items()}}


def main():
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", default="300,600,1200", help="completion tokens per call")
    p.add_argument("--modes", default="input,weight,nograd")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/fused_head.jsonl")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = [measure(int(n), mode, args.repeats, args.vocab, args.hidden)
            for mode in args.modes.split(",") for n in args.tokens.split(",")]
    header = {"command": " ".join(sys.argv), "machine": machine(), "ceiling": matmul_ceiling(args.threads),
              "date": time.strftime("%Y-%m-%d %H:%M")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as fh:
        fh.write(json.dumps({"header": header, "rows": rows}) + "\n")
    print(f"matmul ceiling {header['ceiling']['gflops']:.0f} GFLOP/s")
    print("| gradient | N | plain s | fused s | fused / plain speed | plain GFLOP/s | fused GFLOP/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['n']} | {r['plain_s']:.3f} | {r['fused_s']:.3f} | {r['speedup']:.2f}x | "
              f"{r['plain_gflops']:.0f} | {r['fused_gflops']:.0f} |")


if __name__ == "__main__":
    main()
