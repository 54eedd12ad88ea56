"""Plotting helpers (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def weight_histograms(weights: torch.Tensor, flipped: torch.Tensor, path: str | Path, *, title: str = "",
                      bins: int = 40) -> Path:
    """Histogram of per-pair weights: flipped vs clean overlaid when any flag is known, else all pairs.

    Args:
        weights: [n] weights in [0, 1].
        flipped: [n] float, 1 flipped / 0 clean / NaN unknown.
        path: the .png to write.
    """
    plt = pyplot()
    w, f = weights.double().cpu(), flipped.double().cpu()
    low, high = float(w.min()), float(w.max())
    edges = [low + (high - low) * i / bins for i in range(bins + 1)] if high > low else bins
    fig, ax = plt.subplots(figsize=(6, 4))
    has_flags = bool((~torch.isnan(f)).any())
    if has_flags:
        for label, mask, color in (("clean", f == 0, "tab:blue"), ("flipped", f == 1, "tab:red")):
            if mask.any():
                ax.hist(w[mask].numpy(), bins=edges, alpha=0.6, color=color, density=True,
                        label=f"{label} (n={int(mask.sum())}, mean {float(w[mask].mean()):.3f})")
        ax.legend()
    else:
        ax.hist(w.numpy(), bins=edges, color="tab:gray", label=f"all (n={len(w)})")
        ax.legend()
    ax.set_xlabel("weight")
    ax.set_ylabel("density" if has_flags else "pairs")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def series_colours(labels) -> dict:
    """A fixed colour per label (20 distinct ones: a sweep over every method has 13 series), so a series has
    the same colour in every panel even where another is missing."""
    plt = pyplot()
    return {label: plt.cm.tab20(k % 20) for k, label in enumerate(labels)}


@contextlib.contextmanager
def panels(titles: list[str], path: str | Path, *, width: float = 4.5, height: float = 3.6):
    """One row of subplots, one per title; yields [(ax, title)], then adds the legend and writes `path`."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(titles), figsize=(width * len(titles), height), squeeze=False)
    yield list(zip(axes[0], titles))
    # One legend for all panels (a series may be missing from some), outside the axes: with 13 methods an
    # inside legend covers points.
    handles = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        axes[0][-1].legend(list(handles.values()), list(handles), fontsize=8, loc="upper left",
                           bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def learning_curves(records: list[dict], path: str | Path, *, title: str = "") -> Path | None:
    """Held-out accuracy and margins per epoch, and how much of the training labels the model fits.

    Args:
        records: evaluation rows of a run's metrics.jsonl (those with `eval/accuracy_M`), each with `epoch`.
        path: the .png to write; nothing is written (None returned) with fewer than two evaluations.
    """
    rows = [r for r in records if r.get("eval/accuracy_M") is not None]
    if len(rows) < 2:
        return None
    x = [r.get("epoch", r["step"]) for r in rows]
    xlabel = "epoch" if all("epoch" in r for r in rows) else "step"
    fit = [r for r in rows if r.get("train/fit_clean") is not None or r.get("train/fit_flipped") is not None]
    titles = ["held-out accuracy", "held-out mean margin"] + (["training labels fitted"] if fit else [])
    with panels(titles, path) as axes:
        for ax, name in axes:
            if name == "held-out accuracy":
                series = (("eval/accuracy_h", "h: reference log-ratio", "tab:blue"),
                          ("eval/accuracy_M", "M: length-normalised", "tab:orange"))
            elif name == "held-out mean margin":
                series = (("eval/margin_h", "h: reference log-ratio", "tab:blue"),
                          ("eval/margin_M", "M: length-normalised", "tab:orange"))
            else:
                series = (("train/fit_clean", "clean training pairs: observed label preferred", "tab:green"),
                          ("train/fit_flipped", "flipped training pairs: flipped label preferred", "tab:red"))
            for key, label, colour in series:
                pts = [(xi, r[key]) for xi, r in zip(x, rows) if r.get(key) is not None]
                if pts:
                    ax.plot(*zip(*pts), marker="o", markersize=3, label=label, color=colour)
            ax.set_xlabel(xlabel)
            ax.set_title(f"{title}\n{name}" if title else name, fontsize=9)
            ax.grid(alpha=0.3)
    return Path(path)
