"""The long-training part of a sweep report: learning curves, best vs last epoch, and paired intervals.

Cells of one seed share their held-out pairs (and, offline, their training pairs and noise), and each keeps
the per-pair margins of every evaluation (`heldout_margins.safetensors`, written by the trainer), so two
methods are compared pair by pair and seeds are combined by a hierarchical bootstrap (`robalign.stats`).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from robalign.experiments.cells import implicit_reward
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


def _reward_keys(results: list[dict], cell_of):
    """r -> "h" or "M": the margin each cell's method trains (its implicit reward), so a reference-free method
    (SimPO, GAPO's SimPO margin) is scored on M, not on a log-ratio to a reference it never looks at. Runs
    without a reference anywhere are all scored on M."""
    if not all(r.get("accuracy_h") is not None for r in results):
        return lambda r: "M"
    keys = {id(r): implicit_reward(r, cell_of(r)) for r in results}
    return lambda r: keys[id(r)]


def _suffix(key_of, results) -> str:
    """File-name part: the one reward all cells share, or 'own' when they differ."""
    keys = {key_of(r) for r in results}
    return keys.pop() if len(keys) == 1 else "own"


def _row_label(method, kind, rate, key: str = "h") -> str:
    return f"| {method}{' (M)' if key == 'M' else ''} | {kind} {rate:g} |"


def report_order(groups: dict) -> list[tuple]:
    """(key, value) of `groups`, whose keys start with (method, kind, rate), in the report's row order: by
    rate, then noise kind, then method."""
    return sorted(groups.items(), key=lambda g: (g[0][2], g[0][1], g[0][0]))


def seed_ordered(groups: dict[tuple, list[tuple[int, torch.Tensor]]]) -> list[tuple[tuple, list[torch.Tensor]]]:
    """{group: [(seed, per-item differences)]} → [(group, [differences, in seed order])], in report order:
    the form `paired_table` takes."""
    return [(group, [d for _, d in sorted(by_seed, key=lambda sd: sd[0])]) for group, by_seed in report_order(groups)]


def sections(results: list[dict], cell_of, dest: Path) -> list[str]:
    """Report lines for the cells of `results` that have a learning curve; `cell_of(r)` is a cell's folder."""
    curved = [r for r in results if r.get("curve")]
    if not curved:
        return []
    key_of = _reward_keys(curved, cell_of)
    suffix = _suffix(key_of, curved)
    lines = ["\n## Long training: held-out accuracy at the last and at the best epoch\n",
             "Accuracy of each method's own implicit reward on the clean held-out pairs: the log-ratio margin h for "
             "methods with a reference, the length-normalised margin M (marked M) for reference-free ones, whose "
             "base model already scores its M prior (M starts above 0.5; h starts at 0.5). "
             "Start = before training (the base model's own preference, for M), so last − start is what "
             "training taught the policy on that measure. "
             "Best epoch = the evaluation with the highest clean held-out accuracy (an oracle choice: it "
             "shows what stopping at the right time would keep). fit_flipped = share of flipped training "
             "labels the model preferred in its last epoch (how much noise it memorised). Mean ± std over seeds.\n",
             "| method | noise | start | last | last − start | best | best epoch | last − best | fit_flipped | "
             "fit_clean | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in curved:
        groups.setdefault((r["method"], r["kind"], r["rate"]), []).append(r)
    for (method, kind, rate), rows in report_order(groups):
        acc = [f"accuracy_{key_of(r)}" for r in rows]
        last = [r["curve"][-1].get(a) for r, a in zip(rows, acc)]
        start = [r["curve"][0].get(a) if r["curve"][0]["epoch"] == 0 else None for r, a in zip(rows, acc)]
        gain = [a - b for a, b in zip(last, start) if b is not None]  # empty without an evaluation at the start
        best = [max(c.get(a, -1.0) for c in r["curve"]) for r, a in zip(rows, acc)]
        best_epoch = [max(r["curve"], key=lambda c: c.get(a, -1.0))["epoch"] for r, a in zip(rows, acc)]
        fit_f = [r["curve"][-1].get("fit_flipped") for r in rows]
        fit_c = [r["curve"][-1].get("fit_clean") for r in rows]
        lines.append(f"{_row_label(method, kind, rate, key_of(rows[0]))} "
                     f"{_ms(start)} | {_ms(last)} | {_ms(gain)} | {_ms(best)} | "
                     f"{_ms(best_epoch, 1)} | {_ms([a - b for a, b in zip(last, best)])} | "
                     f"{_ms(fit_f)} | {_ms(fit_c)} | {len(rows)} |")
    lines += _versus_baseline(curved, cell_of, key_of)
    if suffix == "own":  # a reference-free method's own M starts at the base model's prior, DPO's h at 0.5
        lines += _versus_baseline(curved, cell_of, lambda r: "M", "both on M, the margin every policy has")
    if plot_versus_baseline(curved, cell_of, key_of, dest / f"versus_{BASELINE}_accuracy_{suffix}.png"):
        lines.append(f"\n![versus {BASELINE}](versus_{BASELINE}_accuracy_{suffix}.png)\n")
    lines += _cost_of_noise(curved, cell_of, key_of)
    lines += _early_stopping(curved, cell_of, key_of)
    lines += _margin_signals(curved, cell_of)
    plot_curves(curved, dest / f"learning_curves_accuracy_{suffix}.png", key_of)
    lines.append(f"\n![learning curves](learning_curves_accuracy_{suffix}.png)\n")
    return lines


def _versus_baseline(results: list[dict], cell_of, key_of, on: str = "each on its own implicit reward"
                     ) -> list[str]:
    """Last-epoch accuracy of each method − DPO's on the same seed's held-out pairs, 95 % interval."""
    base = {(r["kind"], r["rate"], r["seed"]): r for r in results if r["method"] == BASELINE}
    pairs = [(r, r, base.get((r["kind"], r["rate"], r["seed"]))) for r in results if r["method"] != BASELINE]
    return _paired_last_epoch(pairs, cell_of, key_of,
                              f"last-epoch accuracy − {BASELINE}'s, {on}, paired (95 % "
                              "interval: bootstrap over seeds and held-out pairs)", "difference")


def _cost_of_noise(results: list[dict], cell_of, key_of) -> list[str]:
    """Last-epoch accuracy of each noisy cell − the same method's clean cell of the same seed, on the same
    held-out pairs, 95 % interval (positive = the noise costs that much)."""
    clean = {(r["method"], r["seed"]): r for r in results if r["rate"] == 0}
    pairs = [(r, clean.get((r["method"], r["seed"])), r) for r in results if r["rate"] != 0]
    return _paired_last_epoch(pairs, cell_of, key_of,
                              "cost of noise, last-epoch accuracy at 0 − at the rate, same method and "
                              "seed, paired (95 % interval)", "cost")


def _paired_last_epoch(pairs: list[tuple], cell_of, key_of, title: str, column: str) -> list[str]:
    """One table row per (method, kind, rate) of the first cell of each (cell, a, b): last-epoch correctness
    of a − of b, pair by pair, seeds combined by a hierarchical bootstrap (`_paired_groups`)."""
    return paired_table(_paired_groups(pairs, cell_of, key_of), f"Long training: {title}", column)


def paired_table(groups: list[tuple[tuple, list[torch.Tensor]]], title: str, column: str,
                 unit: str = "pairs") -> list[str]:
    """Report lines of one paired table: a row per ((method, kind, rate, reward key), [per-item differences,
    one tensor per seed]) with the hierarchical-bootstrap interval, each seed's mean and the t-interval over
    seeds; `unit` names what a seed's items are (held-out pairs, prompts)."""
    if not groups:
        return []
    lines = [f"\n## {title}\n",
             "Per seed: each seed's own paired difference, so one can see whether the seeds agree. The t-interval "
             "over seeds (2 or more) treats the seeds as the sample; with few seeds it is the wider, safer one.\n",
             f"| method | noise | {column} | 95 % interval | per seed | t-interval over seeds | seeds | {unit} |",
             "|---|---|---|---|---|---|---|---|"]
    for (method, kind, rate, key), diffs in groups:
        ci, t = hierarchical_bootstrap(diffs), seed_t_interval(diffs)
        per_seed = ", ".join(f"{d.mean().item():+.3f}" for d in diffs)
        t_text = "-" if t is None else f"[{t['low']:+.3f}, {t['high']:+.3f}]"
        lines.append(f"{_row_label(method, kind, rate, key)} {ci['mean']:+.3f} | [{ci['low']:+.3f}, "
                     f"{ci['high']:+.3f}] | {per_seed} | {t_text} | {ci['seeds']} | {ci['pairs']} |")
    return lines


def _paired_groups(pairs: list[tuple], cell_of, key_of) -> list[tuple[tuple, list[torch.Tensor]]]:
    """[((method, kind, rate, reward key of a), [per-pair last-epoch correctness of a − of b, each on its own
    reward, one tensor per seed in seed order])], sorted by noise then method; couples missing a cell or
    their per-pair margins, or scored on other held-out pairs, are left out."""
    groups: dict[tuple, list] = {}
    for r, a, b in pairs:
        if a is None or b is None:
            continue
        first, second = _margins(cell_of(a), key_of(a)), _margins(cell_of(b), key_of(b))
        if first is None or second is None or first["values"].shape[1] != second["values"].shape[1]:
            continue
        groups.setdefault((r["method"], r["kind"], r["rate"], key_of(a)), []).append(
            (r["seed"], correctness(first["values"][-1]) - correctness(second["values"][-1])))
    return seed_ordered(groups)


def plot_versus_baseline(results: list[dict], cell_of, key_of, path: Path) -> Path | None:
    """Each method's last-epoch accuracy − DPO's on the same pairs, one row per (method, noise), with its 95 %
    bootstrap interval (and the t-interval over seeds, thinner, when there are 2 or more): the study's answer
    in one picture. Nothing is written (None) when no method has a DPO cell to pair with."""
    from robalign.plots import pyplot

    base = {(r["kind"], r["rate"], r["seed"]): r for r in results if r["method"] == BASELINE}
    groups = _paired_groups([(r, r, base.get((r["kind"], r["rate"], r["seed"]))) for r in results
                             if r["method"] != BASELINE], cell_of, key_of)
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
    ax.set_yticks(range(len(groups)), [f"{m}{' (M)' if key == 'M' else ''}, {k} {r:g} "
                                       f"({len(d)} seed{'s' if len(d) > 1 else ''})"
                                       for (m, k, r, key), d in reversed(groups)], fontsize=8)
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_xlabel(f"last-epoch clean held-out accuracy − {BASELINE}'s, each on its own implicit reward "
                  "(M: reference-free), same pairs\n95 %: bootstrap thick, t over seeds thin", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _early_stopping(results: list[dict], cell_of, key_of) -> list[str]:
    """What stopping at the best evaluation on a noisy validation half keeps (robalign.experiments.selection), paired."""
    from robalign.experiments.selection import last_correctness, stopped_correctness

    cells: dict[tuple, dict] = {}
    for r in results:
        if r["kind"] != "flip" and r["rate"] != 0:  # only random flips can be simulated on the validation half
            continue
        margins = _margins(cell_of(r), key_of(r))
        if margins is None or margins["values"].shape[0] < 2:
            continue
        stopped, row = stopped_correctness(margins["values"], r["seed"], r["rate"])
        # The same with a clean validation half: what a small hand-checked split of one's data buys.
        clean_stopped, clean_row = stopped_correctness(margins["values"], r["seed"], 0.0)
        cells[(r["method"], r["kind"], r["rate"], r["seed"])] = {
            "stopped": stopped, "last": last_correctness(margins["values"], r["seed"]),
            "epoch": margins["epoch"][row], "clean_stopped": clean_stopped, "clean_epoch": margins["epoch"][clean_row]}
    if not cells:
        return []
    groups: dict[tuple, list[dict]] = {}
    for (method, kind, rate, seed), cell in cells.items():
        groups.setdefault((method, kind, rate), []).append({**cell, "seed": seed})
    order = [g for g, _ in report_order(groups)]
    lines = ["\n## Long training: stopped at the best evaluation on a noisy validation half (own implicit reward)\n",
             "The held-out pairs of each seed are split in two: a validation half whose labels are flipped at the "
             "cell's own rate (as a split of your noisy data would be) picks the evaluation to keep "
             "(`train.load_best_model_at_end`), and the clean test half scores it; the last columns pick on the "
             "same half with its labels clean (a hand-checked validation split). 95 % intervals: bootstrap over "
             "seeds and test pairs, paired.\n",
             "| method | noise | last | stopped | stopped − last | 95 % interval | per seed | stopped at epoch | "
             "clean-half stop − last | 95 % interval | per seed | at epoch | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for g in order:
        rows = sorted(groups[g], key=lambda r: r["seed"])
        gains = {name: [r[name] - r["last"] for r in rows] for name in ("stopped", "clean_stopped")}
        cis = {name: hierarchical_bootstrap(d) for name, d in gains.items()}
        shown = {name: f"{ci['mean']:+.3f} | [{ci['low']:+.3f}, {ci['high']:+.3f}] | "
                       + ", ".join(f"{d.mean().item():+.3f}" for d in gains[name]) for name, ci in cis.items()}
        lines.append(f"{_row_label(*g)} {_ms([r['last'].mean().item() for r in rows])} | "
                     f"{_ms([r['stopped'].mean().item() for r in rows])} | {shown['stopped']} | "
                     f"{_ms([r['epoch'] for r in rows], 1)} | {shown['clean_stopped']} | "
                     f"{_ms([r['clean_epoch'] for r in rows], 1)} | {len(rows)} |")
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


def _margin_signals(results: list[dict], cell_of) -> list[str]:
    """How well each cell's own training margins flag its flipped pairs (`robalign.pair_history`): flip AUROC
    of the epoch-1 margin and of the area under the margin, mean ± std over seeds."""
    from safetensors.torch import load_file

    from robalign.pair_history import flip_aurocs

    groups: dict[tuple, list[dict]] = {}
    for r in results:
        path = cell_of(r) / "train_margins.safetensors"
        if r["rate"] == 0 or not path.is_file():
            continue
        table = load_file(str(path))
        groups.setdefault((r["method"], r["kind"], r["rate"]), []).append(
            flip_aurocs(table["margin"], table["is_flipped"]))
    if not groups:
        return []
    names = list(next(iter(groups.values()))[0])
    lines = ["\n## Long training: do a pair's own training margins flag its flipped label?\n",
             "Flip AUROC (0.5 = chance) of minus the margin the model gave each training pair when it met it in "
             "epoch 1, and of minus its area under the margin (the mean over all epochs; Pleiss et al. 2020). A "
             "signal that could pick pairs to drop must beat what the base model's own margin gives "
             "(`data.keep_fraction`).\n",
             f"| method | noise | {' | '.join(names)} | seeds |", "|---|---|" + "---|" * len(names) + "---|"]
    for (method, kind, rate), rows in report_order(groups):
        lines.append(f"{_row_label(method, kind, rate)} {' | '.join(_ms([r[n] for r in rows]) for n in names)} | "
                     f"{len(rows)} |")
    return lines


def _ms(values, digits: int = 3) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    mean = statistics.fmean(vals)
    return f"{mean:.{digits}f}" + (f" ± {statistics.stdev(vals):.{digits}f}" if len(vals) > 1 else "")


def plot_curves(results: list[dict], path: Path, key_of):
    """Held-out accuracy of each method's own implicit reward per epoch, one panel per noise setting, one line
    per method (mean over seeds; dashed: a reference-free method's M)."""
    from robalign.plots import panels, series_colours

    settings = sorted({(r["kind"], r["rate"]) for r in results}, key=lambda s: (s[1], s[0]))
    colour = series_colours(sorted({r["method"] for r in results}))
    with panels([f"{kind} {rate:g}" for kind, rate in settings], path) as axes:
        for (ax, title), (kind, rate) in zip(axes, settings):
            for method in colour:
                cells = [r for r in results if (r["kind"], r["rate"], r["method"]) == (kind, rate, method)]
                if not cells:
                    continue
                key = key_of(cells[0])
                acc, curves = f"accuracy_{key}", [r["curve"] for r in cells]
                epochs = [c["epoch"] for c in curves[0]]
                means = [statistics.fmean(c[i][acc] for c in curves if i < len(c) and acc in c[i])
                         for i in range(len(epochs))]
                ax.plot(epochs, means, marker="o", markersize=3, color=colour[method], ls="--" if key == "M" else "-",
                        label=f"{method} (M)" if key == "M" else method)
            ax.set_title(f"noise: {title}")
            ax.set_xlabel("epoch")
            ax.set_ylabel("clean held-out accuracy (own implicit reward)")
            ax.axhline(0.5, color="grey", lw=0.8, ls=":")
