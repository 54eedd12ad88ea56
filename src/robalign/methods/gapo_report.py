"""GAPO's end-of-run report: the per-pair weights of the last half of training, summarised
(gapo_summary.json) and drawn (gapo_weights.png) from the run's pairs.jsonl."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from robalign import atomic
from robalign.losses.gapo import flip_auroc_ranked


def _json_number(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def summarize_pair_log(rows: list[dict], tail: float = 0.5) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Summary of the logged pairs of the last `tail` share of steps; returns (summary, weights, flags)."""
    steps = sorted({r["step"] for r in rows})
    first = steps[min(len(steps) - 1, int(len(steps) * (1 - tail)))]
    rows = [r for r in rows if r["step"] >= first]
    weights = torch.tensor([r["weight"] for r in rows], dtype=torch.float64)
    gaps = torch.tensor([r.get("gap", math.nan) for r in rows], dtype=torch.float64)
    flags = torch.tensor([float(r["is_flipped"]) if "is_flipped" in r else math.nan for r in rows],
                         dtype=torch.float64)
    flipped, clean = weights[flags == 1], weights[flags == 0]
    summary = {
        "from_step": first, "to_step": steps[-1], "pairs": len(rows),
        "flipped_pairs": int(flipped.numel()), "clean_pairs": int(clean.numel()),
        "weight_mean": _json_number(weights.mean()), "gap_mean": _json_number(gaps.mean()),
        "weight_flipped_mean": _json_number(flipped.mean()) if flipped.numel() else None,
        "weight_clean_mean": _json_number(clean.mean()) if clean.numel() else None,
        "flip_auroc": _json_number(flip_auroc_ranked(-weights, flags)),
    }
    return summary, weights, flags


def write_report(out_dir) -> None:
    """Writes gapo_summary.json and gapo_weights.png from `out_dir`/pairs.jsonl (nothing without it)."""
    from robalign.metrics import read_jsonl

    out_dir = Path(out_dir)
    path = out_dir / "pairs.jsonl"
    rows = [r for r in read_jsonl(path) if "weight" in r] if path.is_file() else []
    if not rows:
        return
    summary, weights, flags = summarize_pair_log(rows)
    atomic.write_text(out_dir / "gapo_summary.json", json.dumps(summary, indent=2) + "\n")
    from robalign.plots import weight_histograms

    weight_histograms(weights, flags, out_dir / "gapo_weights.png",
                      title=f"GAPO weights σ(γ − βΓ), steps {summary['from_step']}–{summary['to_step']}")
