"""A sweep's report: mean ± std over seeds, paired differences with bootstrap intervals, results.csv,
report.md and its plots."""

from __future__ import annotations

import csv
from pathlib import Path

from robalign.experiments.plots import plot_accuracy, plot_gapo_weights, plot_gold_vs_kl
from robalign.experiments.spec import TRUE_RATE, SweepSpec, cell_dir, method_settings
from robalign.experiments.summary import aggregate, paired_against, paired_noise_cost, with_clean


def write_outputs(spec: SweepSpec, results: list[dict], dest: Path | None = None) -> Path:
    """results.csv, report.md and the plots of `results`, in `dest` (default: the sweep's own directory)."""
    dest = spec.out if dest is None else dest
    dest.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for r in results for k, v in r.items() if not isinstance(v, (list, dict))})
    with open(dest / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")  # curves are in result.json
        writer.writeheader()
        writer.writerows(results)
    budget = f"{spec.epochs:g} epochs" if spec.epochs else f"{spec.steps} steps"
    trained = f"last {spec.train_last_k} blocks" if spec.train_last_k else "all blocks"
    lines = [f"# Robustness sweep\n\nData `{spec.data}`, model `{spec.model}` (LoRA r={spec.lora_r}, {trained}), "
             f"{budget} x {spec.batch_size} pairs, lr {spec.lr}, {spec.train_pairs} training pairs, "
             f"{spec.eval_pairs} clean held-out pairs, seeds {spec.seeds}.\n", _settings_line(spec), _keep_line(spec)]
    seeds = len(spec.seeds)
    if any(r["n"] < seeds for r in aggregate(results, "accuracy_M")):
        lines.append(f"A value marked (n=k) rests on the k of the {seeds} seeds whose cells are finished.\n")
    for metric in ("accuracy_h", "accuracy_M"):
        rows = aggregate(results, metric)
        if not rows:
            continue
        plot_accuracy(rows, spec.kinds, dest / f"{metric}_vs_noise.png", metric, caption=_caption(spec))
        lines += [f"\n## {metric} (mean ± std over seeds)\n", _table(rows, spec.kinds, seeds),
                  f"\n![{metric}]({metric}_vs_noise.png)\n"]
    gold = {m: aggregate(results, m) for m in ("gold_reward_greedy", "win_rate_greedy", "kl")}
    for metric, rows in gold.items():
        if rows:
            lines += [f"\n## {metric} (mean ± std over seeds; held-out prompts, greedy decoding"
                      f"{'' if metric != 'kl' else ', KL on samples at T = 1'})\n", _table(rows, spec.kinds, seeds)]
    if any(gold.values()):
        plot_gold_vs_kl(results, spec.kinds, dest / "gold_reward_vs_kl.png")
        lines.append("\n![gold reward vs KL](gold_reward_vs_kl.png)\n")
    lines += _paired_sections(results, spec.kinds, seeds)
    flipped, clean = aggregate(results, "gapo_weight_flipped_mean"), aggregate(results, "gapo_weight_clean_mean")
    if flipped:
        plot_gapo_weights(results, spec.kinds, dest / "gapo_weights_flipped_vs_clean.png")
        lines += ["\n## GAPO weights, flipped vs clean pairs (last half of training; mean ± std over seeds)\n",
                  _table(flipped, spec.kinds, seeds).replace("| method |", "| flipped: method |"), "",
                  _table(clean, spec.kinds, seeds).replace("| method |", "| clean: method |"),
                  "\n![GAPO weights](gapo_weights_flipped_vs_clean.png)\n"]
    auroc = aggregate(results, "gapo_flip_auroc")
    if auroc:  # how well the weights alone would flag the flipped pairs, whatever their mean level
        lines += ["\n## GAPO flip AUROC: how well a low weight flags a flipped pair (0.5 = chance, 1 = every "
                  "flipped pair weighted below every clean one; last half of training; mean ± std over seeds)\n",
                  _table(auroc, spec.kinds, seeds)]
    from robalign.experiments import paired_gold
    from robalign.experiments.curves import sections as curve_sections

    cell_of = lambda r: cell_dir(spec, r["method"], r["kind"], r["rate"], r["seed"])  # noqa: E731
    lines += curve_sections(results, cell_of, dest)
    lines += paired_gold.sections(results, cell_of)
    report = dest / "report.md"
    report.write_text("\n".join(lines))
    return report


def _caption(spec: SweepSpec) -> str:
    """What a plot shows, for a reader who sees only the plot: data, model, budget and held-out size."""
    budget = f"{spec.epochs:g} epochs" if spec.epochs else f"{spec.steps} steps"
    return (f"data {spec.data}, {Path(spec.model).name}, {budget} x {spec.batch_size} pairs, "
            f"{spec.train_pairs} training pairs, {spec.eval_pairs} clean held-out pairs, "
            f"{len(spec.seeds)} seed(s): mean ± std")


def _keep_line(spec: SweepSpec) -> str:
    if spec.keep_fraction >= 1:
        return ""
    return (f"Each cell trained only on the {spec.keep_fraction:.0%} of its training pairs the base model agrees "
            "with most (`data.keep_fraction`; columns keep_*: pairs kept, flipped share before and after, flip "
            "AUROC of the base model's margin).\n")


def _settings_line(spec: SweepSpec) -> str:
    """The settings each method trained with beyond its own defaults (e.g. the ε rDPO was told)."""
    told = {m: method_settings(m, spec.params) for m in spec.methods}
    told = [f"{m} " + ", ".join(f"{k}={'the true noise rate' if v == TRUE_RATE else v}" for k, v in kv.items())
            for m, kv in told.items() if kv]
    return ("Method settings (the rest are each method's defaults): " + "; ".join(told) + ".\n") if told else ""


PAIRED_METRICS = ("accuracy_h", "accuracy_M", "gold_reward_greedy", "win_rate_greedy", "kl")  # h: what DPO trains
PAIRED_BASELINE = "dpo"


def _paired_sections(results: list[dict], kinds: list[str], seeds: int) -> list[str]:
    """Differences paired by seed: what noise costs each method, and each method against DPO."""
    lines = []
    for metric in PAIRED_METRICS:
        cost = paired_noise_cost(results, metric)
        if cost:
            lines += [f"\n## {metric}: cost of noise, paired by seed (value at 0 − value at the rate, same "
                      "seed, so positive = noise lowers it; mean ± std over seeds)\n", _table(cost, kinds, seeds)]
        versus = paired_against(results, metric, PAIRED_BASELINE)
        if versus:
            lines += [f"\n## {metric}: each method − {PAIRED_BASELINE}, paired (same seed and noise; mean ± std "
                      "over seeds)\n", _table(versus, kinds, seeds)]
    return lines


def _table(rows: list[dict], kinds: list[str], seeds: int) -> str:
    """Markdown table of mean ± std per (method, kind) and rate; a value over fewer than `seeds` seeds says so."""
    rows = with_clean(rows, kinds)
    rates = sorted({r["rate"] for r in rows})
    head = "| method | kind | " + " | ".join(f"{r:g}" for r in rates) + " |"
    out = [head, "|" + "---|" * (2 + len(rates))]
    for method, kind in sorted({(r["method"], r["kind"]) for r in rows}, key=lambda x: (x[1], x[0])):
        cell = {r["rate"]: r for r in rows if r["method"] == method and r["kind"] == kind}
        vals = [_mean_std(cell[x], seeds) if x in cell else "-" for x in rates]
        out.append(f"| {method} | {kind} | " + " | ".join(vals) + " |")
    return "\n".join(out)


def _mean_std(row: dict, seeds: int) -> str:
    return f"{row['mean']:.3f} ± {row['std']:.3f}" + (f" (n={row['n']})" if row["n"] < seeds else "")
