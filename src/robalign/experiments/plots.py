"""The sweep report's figures: held-out accuracy against the noise rate, gold reward against KL, GAPO's
weights on flipped and clean pairs."""

from __future__ import annotations

import statistics
from pathlib import Path

from robalign.experiments.summary import aggregate, with_clean

MARKERS = "osD^vP*Xh<>p"


def plot_accuracy(rows: list[dict], kinds: list[str], path: Path, metric: str, caption: str = ""):
    from robalign.plots import panels, series_colours

    rows = with_clean(rows, kinds)
    colour = series_colours(sorted({r["method"] for r in rows}))
    rates = sorted({r["rate"] for r in rows})
    # Methods often coincide: each gets its own marker and a small sideways offset, so none hides another.
    step = 0.012 * ((rates[-1] - rates[0]) or 1.0)
    with panels(kinds, path) as axes:
        for ax, kind in axes:
            for k, method in enumerate(colour):
                pts = sorted((r["rate"], r["mean"], r["std"]) for r in rows
                             if r["kind"] == kind and r["method"] == method)
                if pts:
                    x, y, e = zip(*pts)
                    x = [xi + (k - (len(colour) - 1) / 2) * step for xi in x]
                    ax.errorbar(x, y, yerr=e, marker=MARKERS[k % len(MARKERS)], capsize=3, label=method,
                                color=colour[method], alpha=0.85)
            ax.set_title(f"noise: {kind}")
            ax.set_xlabel("noise rate")
            ax.set_ylabel(f"clean held-out {metric}")
            ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        if caption:
            axes[0][0].figure.suptitle(caption, fontsize=9)


def plot_gold_vs_kl(results: list[dict], kinds: list[str], path: Path):
    """Gold reward (greedy) against KL(π‖π_ref), one point per (method, rate) averaged over seeds."""
    from robalign.plots import panels, series_colours

    kl_at = {(r["method"], r["kind"], r["rate"]): r["mean"] for r in with_clean(aggregate(results, "kl"), kinds)}
    rows = with_clean(aggregate(results, "gold_reward_greedy"), kinds)
    refs = [r["ref_gold_reward_greedy"] for r in results if r.get("ref_gold_reward_greedy") is not None]
    colour = series_colours(sorted({r["method"] for r in rows}))
    with panels(kinds, path) as axes:
        for ax, kind in axes:
            for method in colour:
                pts = sorted((r["rate"], kl_at[(method, kind, r["rate"])], r["mean"]) for r in rows
                             if r["kind"] == kind and r["method"] == method and (method, kind, r["rate"]) in kl_at)
                if pts:  # joined in order of noise rate
                    ax.plot([p[1] for p in pts], [p[2] for p in pts], marker="o", label=method, color=colour[method])
                    for rate, x, y in pts:
                        ax.annotate(f"{rate:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
            if refs:
                ax.axhline(statistics.fmean(refs), color="grey", lw=0.8, ls=":", label="reference")
            ax.set_title(f"noise: {kind} (labels: rate)")
            ax.set_xlabel("KL(π‖π_ref) on samples")
            ax.set_ylabel("gold reward, greedy")


def plot_gapo_weights(results: list[dict], kinds: list[str], path: Path):
    """GAPO's mean weight on flipped and on clean pairs against the noise rate."""
    from robalign.plots import panels, series_colours

    colour = series_colours(["flipped", "clean"])
    with panels(kinds, path) as axes:
        for ax, kind in axes:
            for metric, label in (("gapo_weight_flipped_mean", "flipped"), ("gapo_weight_clean_mean", "clean")):
                pts = sorted((r["rate"], r["mean"], r["std"]) for r in aggregate(results, metric)
                             if r["kind"] == kind)
                if pts:
                    x, y, e = zip(*pts)
                    ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=label, color=colour[label])
            ax.set_title(f"GAPO weights, noise: {kind}")
            ax.set_xlabel("noise rate")
            ax.set_ylabel("mean weight σ(γ − βΓ)")
