"""fp32 matmul rate (GFLOP/s, 2 threads) at a square size and at the shapes of a cached-trunk step.

    .venv/bin/python lab/scripts/matmul_shapes.py

Each shape: one second of warm-up, then the best of three one-second measurements. The lab log
(benchmarks-log.md, 2026-12-07) quotes one run; this VM's rate moves by ±20 % between minutes.
"""

from __future__ import annotations

import time

import torch

# (m, k, n) of [m×k]·[k×n]: square; the MLP's up, down and weight-gradient products at 1,600 tokens; q/o and
# k/v projections; one 6,144-column chunk of SmolLM2's LM head.
SHAPES = [(2048, 2048, 2048), (1600, 576, 1536), (1600, 1536, 576), (576, 1600, 1536), (1536, 1600, 576),
          (1600, 576, 576), (1600, 576, 192), (1600, 576, 6144)]


def rate(m: int, k: int, n: int) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    end = time.perf_counter() + 1.0
    while time.perf_counter() < end:
        a @ b
    best = 0.0
    for _ in range(3):
        t0, reps = time.perf_counter(), 0
        while time.perf_counter() - t0 < 1.0:
            a @ b
            reps += 1
        best = max(best, 2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9)
    return best


if __name__ == "__main__":
    torch.set_num_threads(2)
    for shape in SHAPES:
        print(shape, round(rate(*shape), 1))
