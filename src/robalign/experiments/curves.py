"""The long-training part of a sweep report: learning curves, best vs last epoch, and paired intervals.

Cells of one seed share their held-out pairs (and, offline, their training pairs and noise), and each keeps
the per-pair margins of every evaluation (`heldout_margins.safetensors`, written by the trainer), so two
methods are compared pair by pair and seeds are combined by a hierarchical bootstrap (`robalign.stats`).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from robalign.stats import correctness, hierarchical_bootstrap, seed_t_interval

BASELINE = "dpo"


def _margins(cell: Path, key: str) -> dict | None:
    from safetensors.torch import load_file

    path = cell / "heldout_margins.safetensors"
    if not path.is_file():
        return None
    table = load_file(str(path))
    if key not in table:
        return None
    return {"epoch": table["epoch"].tolist(), "values": table[key]}


def _key(results: list[dict]) -> str:
    return "h" if all(r.get("accuracy_h") is not None for r in results) else "M"


def _row_label(method, kind, rate) -> str:
    return f"| {method} | {kind} {rate:g} |"


def sections(results: list[dict], cell_of, dest: Path) -> list[str]:
    """Report lines for the cells of `results` that have a learning curve; `cell_of(r)` is a cell's folder."""
    curved = [r for r in results if r.get("curve")]
    if not curved:
        return []
    key = _key(curved)
    acc = f"accuracy_{key}"
    lines = [f"\n## Long training: held-out {acc} at the last and at the best epoch\n",
             "Best epoch = the evaluation with the highest clean held-out accuracy (an oracle choice: it "
             "shows what stopping at the right time would keep). fit_flipped = share of flipped training "
             "labels the model preferred in its last epoch (how much noise it memorised). Mean ± std over seeds.\n",
             "| method | noise | last | best | best epoch | last − best | fit_flipped | fit_clean | seeds |",
             "|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in curved:
        groups.setdefault((r["method"], r["kind"], r["rate"]), []).append(r)
    for (method, kind, rate), rows in sorted(groups.items(), key=lambda g: (g[0][2], g[0][1], g[0][0])):
        last = [r["curve"][-1].get(acc) for r in rows]
        best = [max(c.get(acc, -1.0) for c in r["curve"]) for r in rows]
        fit_f = [r["curve"][-1].get("fit_flipped") for r in rows]
        fit_c = [r["curve"][-1].get("fit_clean") for r in rows]
        lines.append(f"{_row_label(method, kind, rate)} {_ms(last)} | {_ms(best)} | "
                     f"{_ms([r['best_epoch'] for r in rows], 1)} | {_ms([a - b for a, b in zip(last, best)])} | "
                     f"{_ms(fit_f)} | {_ms(fit_c)} | {len(rows)} |")
    lines += _versus_baseline(curved, cell_of, key)
    if plot_versus_baseline(curved, cell_of, key, dest / f"versus_{BASELINE}_{acc}.png"):
        lines.append(f"\n![versus {BASELINE}](versus_{BASELINE}_{acc}.png)\n")
    lines += _cost_of_noise(curved, cell_of, key)
    lines += _early_stopping(curved, cell_of, key)
    plot_curves(curved, dest / f"learning_curves_{acc}.png", acc)
    lines.append(f"\n![learning curves](learning_curves_{acc}.png)\n")
    return lines


def _versus_baseline(results: list[dict], cell_of, key: str) -> list[str]:
    """Last-epoch accuracy of each method − DPO's on the same seed's held-out pairs, 95 % interval."""
    base = {(r["kind"], r["rate"], r["seed"]): r for r in results if r["method"] == BASELINE}
    pairs = [(r, r, base.get((r["kind"], r["rate"], r["seed"]))) for r in results if r["method"] != BASELINE]
    return _paired_last_epoch(pairs, cell_of, key,
                              f"last-epoch accuracy_{key} − {BASELINE}'s, paired (95 % interval: bootstrap over "
                              "seeds and held-out pairs)", "difference")


def _cost_of_noise(results: list[dict], cell_of, key: str) -> list[str]:
    """Last-epoch accuracy of each noisy cell − the same method's clean cell of the same seed, on the same
    held-out pairs, 95 % interval (positive = the noise costs that much)."""
    clean = {(r["method"], r["seed"]): r for r in results if r["rate"] == 0}
    pairs = [(r, clean.get((r["method"], r["seed"])), r) for r in results if r["rate"] != 0]
    return _paired_last_epoch(pairs, cell_of, key,
                              f"cost of noise, last-epoch accuracy_{key} at 0 − at the rate, same method and "
                              "seed, paired (95 % interval)", "cost")


def _paired_last_epoch(pairs: list[tuple], cell_of, key: str, title: str, column: str) -> list[str]:
    """One table row per (method, kind, rate) of the first cell of each (cell, a, b): last-epoch correctness
    of a − of b, pair by pair, seeds combined by a hierarchical bootstrap (`_paired_groups`)."""
    groups = _paired_groups(pairs, cell_of, key)
    if not groups:
        return []
    lines = [f"\n## Long training: {title}\n",
             "Per seed: each seed's own paired difference, so one can see whether the seeds agree. The t-interval "
             "over seeds (2 or more) treats the seeds as the sample; with few seeds it is the wider, safer one.\n",
             f"| method | noise | {column} | 95 % interval | per seed | t-interval over seeds | seeds | pairs |",
             "|---|---|---|---|---|---|---|---|"]
    for (method, kind, rate), diffs in groups:
        ci, t = hierarchical_bootstrap(diffs), seed_t_interval(diffs)
        per_seed = ", ".join(f"{d.mean().item():+.3f}" for d in diffs)
        t_text = "-" if t is None else f"[{t['low']:+.3f}, {t['high']:+.3f}]"
        lines.append(f"{_row_label(method, kind, rate)} {ci['mean']:+.3f} | [{ci['low']:+.3f}, {ci['high']:+.3f}] | "
                     f"{per_seed} | {t_text} | {ci['seeds']} | {ci['pairs']} |")
    return lines


def _paired_groups(pairs: list[tuple], cell_of, key: str) -> list[tuple[tuple, list[torch.Tensor]]]:
    """[((method, kind, rate), [per-pair last-epoch correctness of a − of b, one tensor per seed in seed
    order])], sorted by noise then method; couples missing a cell or their per-pair margins, or scored on
    other held-out pairs, are left out."""
    groups: dict[tuple, list] = {}
    for r, a, b in pairs:
        if a is None or b is None:
            continue
        first, second = _margins(cell_of(a), key), _margins(cell_of(b), key)
        if first is None or second is None or first["values"].shape[1] != second["values"].shape[1]:
            continue
        groups.setdefault((r["method"], r["kind"], r["rate"]), []).append(
            (r["seed"], correctness(first["values"][-1]) - correctness(second["values"][-1])))
    return [(group, [d for _, d in sorted(by_seed, key=lambda sd: sd[0])])
            for group, by_seed in sorted(groups.items(), key=lambda g: (g[0][2], g[0][1], g[0][0]))]


def plot_versus_baseline(results: list[dict], cell_of, key: str, path: Path) -> Path | None:
    """Each method's last-epoch accuracy − DPO's on the same pairs, one row per (method, noise), with its 95 %
    bootstrap interval (and the t-interval over seeds, thinner, when there are 2 or more): the study's answer
    in one picture. Nothing is written (None) when no method has a DPO cell to pair with."""
    from robalign.plots import pyplot

    base = {(r["kind"], r["rate"], r["seed"]): r for r in results if r["method"] == BASELINE}
    groups = _paired_groups([(r, r, base.get((r["kind"], r["rate"], r["seed"]))) for r in results
                             if r["method"] != BASELINE], cell_of, key)
    if not groups:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.32 * len(groups)))
    for y, (_, diffs) in enumerate(reversed(groups)):
        ci, t = hierarchical_bootstrap(diffs), seed_t_interval(diffs)
        if t is not None:
            ax.plot([t["low"], t["high"]], [y, y], color="tab:grey", lw=1)
        ax.plot([ci["low"], ci["high"]], [y, y], color="tab:blue", lw=3.5, solid_capstyle="butt")
        ax.plot([ci["mean"]], [y], marker="o", color="black", markersize=4)
    ax.set_yticks(range(len(groups)), [f"{m}, {k} {r:g} ({len(d)} seed{'s' if len(d) > 1 else ''})"
                                       for (m, k, r), d in reversed(groups)], fontsize=8)
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_xlabel(f"last-epoch clean held-out accuracy_{key} − {BASELINE}'s, same pairs "
                  "(95 %: bootstrap thick, t over seeds thin)", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _early_stopping(results: list[dict], cell_of, key: str) -> list[str]:
    """What stopping at the best evaluation on a noisy validation half keeps (robalign.experiments.selection), paired."""
    from robalign.experiments.selection import last_correctness, stopped_correctness

    cells: dict[tuple, dict] = {}
    for r in results:
        if r["kind"] != "flip" and r["rate"] != 0:  # only random flips can be simulated on the validation half
            continue
        margins = _margins(cell_of(r), key)
        if margins is None or margins["values"].shape[0] < 2:
            continue
        stopped, row = stopped_correctness(margins["values"], r["seed"], r["rate"])
        cells[(r["method"], r["kind"], r["rate"], r["seed"])] = {
            "stopped": stopped, "last": last_correctness(margins["values"], r["seed"]),
            "epoch": margins["epoch"][row]}
    if not cells:
        return []
    groups: dict[tuple, list[dict]] = {}
    for (method, kind, rate, seed), cell in cells.items():
        groups.setdefault((method, kind, rate), []).append({**cell, "seed": seed})
    order = sorted(groups, key=lambda g: (g[2], g[1], g[0]))
    lines = [f"\n## Long training: stopped at the best evaluation on a noisy validation half (accuracy_{key})\n",
             "The held-out pairs of each seed are split in two: a validation half whose labels are flipped at the "
             "cell's own rate (as a split of your noisy data would be) picks the evaluation to keep "
             "(`train.load_best_model_at_end`), and the clean test half scores it. 95 % intervals: bootstrap over "
             "seeds and test pairs, paired.\n",
             "| method | noise | last | stopped | stopped − last | 95 % interval | stopped at epoch | seeds |",
             "|---|---|---|---|---|---|---|---|"]
    for g in order:
        rows = groups[g]
        gain = hierarchical_bootstrap([r["stopped"] - r["last"] for r in rows])
        lines.append(f"{_row_label(*g)} {_ms([r['last'].mean().item() for r in rows])} | "
                     f"{_ms([r['stopped'].mean().item() for r in rows])} | {gain['mean']:+.3f} | "
                     f"[{gain['low']:+.3f}, {gain['high']:+.3f}] | {_ms([r['epoch'] for r in rows], 1)} | "
                     f"{len(rows)} |")
    versus = []
    for method, kind, rate in order:
        if method == BASELINE:
            continue
        diffs = [cell["stopped"] - cells[(BASELINE, kind, rate, cell["seed"])]["stopped"]
                 for cell in groups[(method, kind, rate)] if (BASELINE, kind, rate, cell["seed"]) in cells]
        if diffs:
            ci = hierarchical_bootstrap(diffs)
            versus.append(f"{_row_label(method, kind, rate)} {ci['mean']:+.3f} | [{ci['low']:+.3f}, "
                          f"{ci['high']:+.3f}] | {ci['seeds']} | {ci['pairs']} |")
    if versus:
        lines += [f"\nEach method stopped this way − {BASELINE} stopped this way, on the same test pairs:\n",
                  "| method | noise | difference | 95 % interval | seeds | pairs |", "|---|---|---|---|---|---|",
                  *versus]
    return lines


def _ms(values, digits: int = 3) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    mean = statistics.fmean(vals)
    return f"{mean:.{digits}f}" + (f" ± {statistics.stdev(vals):.{digits}f}" if len(vals) > 1 else "")


def plot_curves(results: list[dict], path: Path, acc: str):
    """Held-out accuracy per epoch, one panel per noise setting, one line per method (mean over seeds)."""
    from robalign.plots import panels, series_colours

    settings = sorted({(r["kind"], r["rate"]) for r in results}, key=lambda s: (s[1], s[0]))
    colour = series_colours(sorted({r["method"] for r in results}))
    with panels([f"{kind} {rate:g}" for kind, rate in settings], path) as axes:
        for (ax, title), (kind, rate) in zip(axes, settings):
            for method in colour:
                curves = [r["curve"] for r in results if (r["kind"], r["rate"], r["method"]) == (kind, rate, method)]
                if not curves:
                    continue
                epochs = [c["epoch"] for c in curves[0]]
                means = [statistics.fmean(c[i][acc] for c in curves if i < len(c) and acc in c[i])
                         for i in range(len(epochs))]
                ax.plot(epochs, means, marker="o", markersize=3, label=method, color=colour[method])
            ax.set_title(f"noise: {title}")
            ax.set_xlabel("epoch")
            ax.set_ylabel(f"clean held-out {acc}")
            ax.axhline(0.5, color="grey", lw=0.8, ls=":")
