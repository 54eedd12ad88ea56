"""Numbers of a sweep's finished cells: mean ± std over seeds, and paired differences (the cost of noise,
a method against a baseline) with their intervals."""

from __future__ import annotations

import statistics


def aggregate(results: list[dict], metric: str, against=None) -> list[dict]:
    """Mean and spread (sample std) over seeds for each (method, kind, rate).

    Args:
        against: optional r -> the value to subtract from r's metric (a paired baseline), or None to leave
            r out; without it the raw values are summarised.
    """
    groups: dict[tuple, list[float]] = {}
    for r in results:
        base = 0.0 if against is None else against(r)
        if r.get(metric) is not None and base is not None:
            groups.setdefault((r["method"], r["kind"], r["rate"]), []).append(r[metric] - base)
    return [{"method": method, "kind": kind, "rate": rate, "mean": statistics.fmean(vals),
             "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}
            for (method, kind, rate), vals in sorted(groups.items())]


def paired_noise_cost(results: list[dict], metric: str) -> list[dict]:
    """Per (method, kind, rate > 0): mean ± std over seeds of metric(0, seed) − metric(rate, seed): what the
    noise costs, positive when it lowers the metric (for KL: positive when the noisy run moved less).

    Pairing by seed removes what a seed's data and initial model contribute to both cells, so the cost of
    noise is read against its own spread rather than against the seed-to-seed spread of the raw values.
    """
    clean = {(r["method"], r["seed"]): r[metric] for r in results if r["rate"] == 0 and r.get(metric) is not None}
    rows = aggregate(results, metric, lambda r: clean.get((r["method"], r["seed"])) if r["rate"] > 0 else None)
    return [{**row, "mean": -row["mean"]} for row in rows]  # clean − noisy: the std is the same


def paired_against(results: list[dict], metric: str, baseline: str) -> list[dict]:
    """Per (method ≠ baseline, kind, rate): mean ± std over seeds of metric − the baseline's metric in the
    cell with the same kind, rate and seed: the same held-out data and noise, and for offline methods the
    same training pairs (online methods label their own generations)."""
    base = {(r["kind"], r["rate"], r["seed"]): r[metric] for r in results
            if r["method"] == baseline and r.get(metric) is not None}
    return aggregate(results, metric,
                     lambda r: base.get((r["kind"], r["rate"], r["seed"])) if r["method"] != baseline else None)


def with_clean(rows: list[dict], kinds: list[str]) -> list[dict]:
    """Copies rate-0 rows to every noise kind of the sweep, so each panel starts from the clean run (stored
    under CLEAN_KIND, which need not be one of the sweep's kinds)."""
    out = [r for r in rows if r["rate"] != 0]
    for r in rows:
        if r["rate"] == 0:
            out += [{**r, "kind": k} for k in kinds]
    return out
