"""`robalign bench robustness`: methods x noise kinds x rates x seeds, each cell cached, with a report.

A cell trains one method on noisy training pairs and evaluates on clean held-out pairs; on the built-in
task (which has a gold reward) it also decodes held-out prompts with the trained policy and the reference
(greedy and sampled) for gold reward, gold win rate and KL(π‖π_ref). Its result is written to
`<out>/cells/<method>-<kind>-<rate>-s<seed>/result.json` when it finishes, so an interrupted
sweep resumes where it stopped and re-running one cell with its seed gives the same numbers.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import itertools
import json
import math
import os
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from robalign.errors import UserError

# The sweep's overrides of the methods' own defaults (their `Params`, robalign.methods.METHODS).
METHOD_DEFAULTS = {"cdpo": {"epsilon": 0.2}, "rdpo": {"epsilon": 0.2}, "oracle_robust_offline": {"rho": 0.2}}


TRUE_RATE = "rate"  # `--param cdpo.epsilon=rate`: each cell tells the method its own noise rate


def method_settings(method: str, params: dict | None = None, rate: float | None = None) -> dict:
    """The settings a cell of `method` trains with: the sweep's defaults, then the user's `--param`s; a value
    `rate` becomes the cell's noise rate (the method is told the true rate), when `rate` is given."""
    merged = {**METHOD_DEFAULTS.get(method, {}), **(params or {}).get(method, {})}
    if rate is None:
        return merged
    return {k: (rate if v == TRUE_RATE else v) for k, v in merged.items()}


def parse_params(texts: list[str], methods: list[str]) -> dict[str, dict]:
    """`--param METHOD.KEY=VALUE` (repeatable) -> {method: {key: value}}; values are read as YAML scalars, so
    numbers, booleans and words arrive typed. The keys are checked when each cell's config is built."""
    import yaml

    out: dict[str, dict] = {}
    for text in texts:
        name, sep, value = text.partition("=")
        method, dot, key = name.partition(".")
        if not sep or not dot or not key:
            raise UserError(f"bench: --param {text!r}: expected METHOD.KEY=VALUE, e.g. --param cdpo.epsilon=0.4")
        if method not in methods:
            raise UserError(f"bench: --param {text!r}: {method!r} is not one of --methods ({', '.join(methods)})")
        out.setdefault(method, {})[key] = yaml.safe_load(value)
    return out
# Online methods label their own generations: the cell's noise goes into their oracle as well (on top of
# the noisy pairs, which SAIL's data route still reads), through the oracle wrapper of the same name whose
# parameter is the rate: `flip` flips each label with probability rate, `length` mixes a length judge in
# with weight rate. `margin`'s threshold is in reward units, not a rate: online x margin is skipped.
ONLINE_GOLD = "bt:verifiable:0.1"
ONLINE_NOISE = ("flip", "length")
# Rate 0 is one clean run whatever the noise kind; it is stored under this kind's name (the first kind of
# every sweep before this rule), so a later sweep of another kind reuses it rather than training it again.
CLEAN_KIND = "flip"


def is_online(method: str) -> bool:
    from robalign.methods import build_method

    return build_method(method, {}).online


def online_oracle(kind: str, rate: float) -> str:
    return ONLINE_GOLD if rate == 0 else f"{ONLINE_GOLD}+{kind}:{rate:g}"


@dataclass
class SweepSpec:
    data: str  # a preference file, "verifiable" or "verifiable-sampled" (the built-in task)
    methods: list[str]
    kinds: list[str]
    rates: list[float]
    seeds: list[int]
    model: str
    steps: int
    batch_size: int
    lr: float
    train_pairs: int
    eval_pairs: int
    max_length: int
    lora_r: int
    out: Path
    gen_prompts: int = 0  # held-out prompts decoded per cell for gold reward / win rate / KL (built-in task)
    gen_max_new_tokens: int = 32
    # The long-training regime: an epochs budget (instead of `steps`), only the last k blocks trained, and
    # their frozen trunk computed once for every cell over the same texts (robalign.trunk).
    epochs: float = 0.0
    train_last_k: int = 0
    trunk_cache: str = "off"
    eval_per_epoch: int = 1
    keep_fraction: float = 1.0  # data.keep_fraction: train on the pairs the base model agrees with most
    params: dict = field(default_factory=dict)  # {method: {key: value}} from --param, over METHOD_DEFAULTS

    def cells(self):
        online = {m for m in self.methods if is_online(m)}
        seen = set()
        for kind, rate, seed, method in itertools.product(self.kinds, self.rates, self.seeds, self.methods):
            if method in online and kind not in ONLINE_NOISE:
                continue
            cell = (method, CLEAN_KIND if rate == 0 else kind, rate, seed)
            if cell not in seen:
                seen.add(cell)
                yield cell


# Settings added after the first sweeps: left out of settings.json at their defaults, so that older sweep
# folders keep matching the settings they were run with.
_LATER_SETTINGS = {"epochs": 0.0, "train_last_k": 0, "trunk_cache": "off", "eval_per_epoch": 1, "params": {},
                   "keep_fraction": 1.0}


def cell_dir(spec: SweepSpec, method, kind, rate, seed) -> Path:
    return spec.out / "cells" / f"{method}-{kind}-{rate:g}-s{seed}"


GOLD_TASKS = ("verifiable", "verifiable-sampled")  # built-in data with a gold reward


def _data_split(spec: SweepSpec, seed: int, base=None):
    """(train, eval) pairs of one seed; the eval split is clean and disjoint from training."""
    if spec.data == "verifiable-sampled":  # responses sampled from the (untrained) model, cached
        from robalign.models import load_model_and_tokenizer
        from robalign.tasks.sampled import cache_sampled_pairs

        model, tok = base if base is not None else load_model_and_tokenizer(spec.model)
        folder = spec.out / "data"
        return (cache_sampled_pairs(folder, spec.model, model, tok, spec.train_pairs, seed),
                cache_sampled_pairs(folder, spec.model, model, tok, spec.eval_pairs, 10_000 + seed))
    if spec.data == "verifiable":
        from robalign.tasks.verifiable import make_preference_pairs

        return (make_preference_pairs(spec.train_pairs, seed),
                make_preference_pairs(spec.eval_pairs, 10_000 + seed))
    return split_file(spec.data, seed, train_pairs=spec.train_pairs, eval_pairs=spec.eval_pairs)


def split_file(path, seed: int, *, train_pairs: int, eval_pairs: int):
    """(train, eval) pairs of a preference file for one seed, as every sweep cell of that seed sees them."""
    from robalign.data import load_pairs, train_eval_split

    train, held = train_eval_split(load_pairs(path, skip_invalid=True).pairs, 0.2, seed)
    return train[:train_pairs], held[:eval_pairs]


def _holder_alive(lock: Path) -> bool:
    try:
        os.kill(int(lock.read_text().strip() or "0"), 0)
    except (ValueError, ProcessLookupError, FileNotFoundError):
        return False
    except PermissionError:
        return True  # a live process of another user
    return True


@contextlib.contextmanager
def cell_lock(out: Path):
    """Yields True while this process holds `<cell>/.lock`, False when another live process does.

    Several sweep processes may share an output directory (e.g. one per seed); each cell is then trained
    by exactly one of them. A lock left by a killed process (its PID no longer runs on this machine) is
    taken over.
    """
    out.mkdir(parents=True, exist_ok=True)
    lock = out / ".lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            if _holder_alive(lock):
                yield False
                return
            lock.unlink(missing_ok=True)  # stale
    else:
        yield False
        return
    with os.fdopen(fd, "w") as fh:
        fh.write(str(os.getpid()))
    try:
        yield True
    finally:
        lock.unlink(missing_ok=True)


def run_cell(spec: SweepSpec, method: str, kind: str, rate: float, seed: int, base=None,
             eval_reference_cache: dict | None = None, reference_memo=None) -> dict | None:
    """The cell's result: read from its cache, or trained now; None while another process trains it.

    `base` = (model, tokenizer) already loaded (else the trainer loads them); `eval_reference_cache` keeps
    that base model's log-probs of a held-out split between cells (`PreferenceEvaluator`), so pass one dict
    per loaded base model; `reference_memo` keeps the reference log-probs of every batch a cell has met
    (`Trainer`; `run_sweep` passes the sweep folder's `DiskMemo`), None computes them all.
    """
    out = cell_dir(spec, method, kind, rate, seed)
    done = out / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    with cell_lock(out) as mine:
        if not mine:
            return None
        if done.is_file():  # finished by another process between the check and the lock
            return json.loads(done.read_text())
        # What a killed run left behind needs no cleaning: a fresh (non-resumed) trainer rewrites its logs
        # and checkpoints (tests/test_bench.py kills one mid-way).
        return _train_cell(spec, method, kind, rate, seed, base, out, eval_reference_cache, reference_memo)


def _train_cell(spec: SweepSpec, method: str, kind: str, rate: float, seed: int, base, out: Path,
                eval_reference_cache: dict | None, reference_memo) -> dict:
    from robalign.data import inject_noise
    from robalign.trainer import Trainer

    done = out / "result.json"
    train, held = _data_split(spec, seed, base)
    noisy = inject_noise(train, kind, rate, seed)
    cfg, oracle = cell_config(spec, method, kind, rate, seed, out, len(noisy))
    t0 = time.perf_counter()
    model, tok = base if base is not None else (None, None)
    trainer = Trainer(cfg, train_pairs=noisy, eval_pairs=held, model=copy.deepcopy(model) if model else None,
                      tokenizer=tok, eval_reference_cache=eval_reference_cache, reference_memo=reference_memo)
    summary = trainer.train(overwrite=True)  # a cell is never resumed: what a killed one left is replaced
    result = {"method": method, "kind": kind, "rate": rate, "seed": seed, "seconds": time.perf_counter() - t0,
              **({"oracle": oracle} if oracle else {}),
              "flipped": sum(bool(p.is_flipped) for p in noisy), **{k.split("/")[-1]: v for k, v in
                                                                      summary["final"].items()}}
    if spec.epochs:
        result.update(curve_summary(summary["curve"]))
    result.update({f"keep_{k}": v for k, v in summary.get("pair_filter", {}).items()})
    if spec.gen_prompts > 0:
        result.update(_gold_generation(spec, trainer, seed, base))
        result["seconds"] = time.perf_counter() - t0
    _keep_only_the_adapter(trainer, out)
    gapo = out / "gapo_summary.json"
    if gapo.is_file():
        result.update({f"gapo_{k}": v for k, v in json.loads(gapo.read_text()).items()
                       if isinstance(v, (int, float))})
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(done)
    return result


def cell_config(spec: SweepSpec, method: str, kind: str, rate: float, seed: int, out: Path, n_train: int):
    """(the run config of one cell, its online oracle or None)."""
    from robalign.config import build_config

    steps = spec.steps if not spec.epochs else math.ceil(spec.epochs * (n_train // spec.batch_size))
    tree = {
        "model": {"name": spec.model, "lora_r": spec.lora_r, "train_last_k": spec.train_last_k,
                  "trunk_cache": spec.trunk_cache, "trunk_cache_dir": str(spec.out / "trunk")},
        "method": {"name": method},
        "data": {"max_length": spec.max_length, "keep_fraction": spec.keep_fraction},
        "train": {"output_dir": str(out), "batch_size": spec.batch_size, "max_steps": steps, "lr": spec.lr,
                  "epochs": spec.epochs, "eval_per_epoch": spec.eval_per_epoch,
                  "seed": seed, "progress": False, "warmup_steps": max(1, steps // 10),
                  "save_final": False, "eval_at_start": bool(spec.epochs)}}
    if method == "gapo" and spec.trunk_cache != "off":  # the anchor may perturb only what trains
        tree["method"].update(scope="last_k_layers", last_k=spec.train_last_k)
    oracle = online_oracle(kind, rate) if is_online(method) else None
    if oracle:
        tree["online"] = {"oracle": oracle, "max_new_tokens": spec.gen_max_new_tokens}
    tree["method"].update(method_settings(method, spec.params, rate))
    return build_config(tree, source=f"bench cell {out.name}"), oracle


def curve_summary(curve: list[dict]) -> dict:
    """A cell's learning curve (held-out accuracy, margins, training-label fit per evaluation) and its best
    epoch by held-out accuracy_h (accuracy_M for reference-free runs)."""
    keys = ("epoch", "eval/accuracy_h", "eval/accuracy_M", "eval/margin_h", "eval/margin_M", "train/fit_flipped",
            "train/fit_clean")
    rows = [{k.split("/")[-1]: r[k] for k in keys if r.get(k) is not None} for r in curve]
    if not rows:
        return {}
    score = "accuracy_h" if "accuracy_h" in rows[-1] else "accuracy_M"
    best = max(rows, key=lambda r: r.get(score, -1.0))  # the first of equals: the earliest epoch
    return {"curve": rows, "best_epoch": best["epoch"], f"best_{score}": best[score]}


def _keep_only_the_adapter(trainer, out: Path):
    """A cell is never resumed (a killed one is retrained), so its end-of-run checkpoint, two thirds of it
    optimiser state, would only fill the disk over a full grid; the trained LoRA adapter is kept."""
    if hasattr(trainer.model, "peft_config"):
        trainer.model.save_pretrained(out / "adapter")
    shutil.rmtree(out / "checkpoints", ignore_errors=True)


_REFERENCE_DECODES: dict = {}  # the base model's completions, shared by every cell with the same prompts


def held_out_prompts(n: int, seed: int) -> list:
    """The built-in task's n held-out prompts of a cell with this seed (`VerifiablePrompt`s, from another
    seed range than the training pairs)."""
    from robalign.tasks.verifiable import make_prompts

    return make_prompts(n, seed=20_000 + seed)


def _gold_generation(spec: SweepSpec, trainer, seed: int, base) -> dict:
    """Gold reward, win rate against the reference and KL of the trained policy on held-out prompts."""
    from robalign.evaluate_generation import generation_eval
    from robalign.tasks.verifiable import VerifiableReward

    prompts = [[{"role": "user", "content": p.text}] for p in held_out_prompts(spec.gen_prompts, seed)]
    lora = spec.lora_r > 0
    if not lora and base is None:
        return {}  # full fine-tuning needs the untouched base model as the reference (run_sweep passes it)
    reference = None if lora else base[0]
    cache = _REFERENCE_DECODES.setdefault(spec.model, {})  # the reference's weights never change
    out = generation_eval(trainer.model, reference, trainer.tokenizer, prompts, VerifiableReward(), n_samples=1,
                          max_new_tokens=spec.gen_max_new_tokens, seed=seed, adapter_disabled=lora,
                          reference_cache=cache)
    names = {"gen/reward_greedy": "gold_reward_greedy", "gen/reward_sampled": "gold_reward_sampled",
             "gen/ref_reward_greedy": "ref_gold_reward_greedy", "gen/ref_reward_sampled": "ref_gold_reward_sampled",
             "gen/win_rate_greedy": "win_rate_greedy", "gen/win_rate_sampled": "win_rate_sampled",
             "gen/kl": "kl"}
    return {new: out[old] for old, new in names.items()}


def cached_results(spec: SweepSpec) -> tuple[list[dict], list[tuple]]:
    """The finished cells of the grid and the cells not finished yet; trains nothing."""
    _check_settings(spec, write=False)
    done, missing = [], []
    for cell in spec.cells():
        path = cell_dir(spec, *cell) / "result.json"
        if path.is_file():
            done.append(json.loads(path.read_text()))
        else:
            missing.append(cell)
    return done, missing


def run_sweep(spec: SweepSpec) -> list[dict]:
    from robalign import progress
    from robalign.models import load_model_and_tokenizer
    from robalign.reference import DiskMemo

    _check_settings(spec)
    cells = list(spec.cells())
    base = load_model_and_tokenizer(spec.model)
    results, elsewhere = [], 0
    eval_reference_cache: dict = {}  # computed once per held-out split: the base model never changes
    # The methods of one (kind, rate, seed) train on the same batches, so their reference log-probs are
    # computed once, by whichever process meets a batch first (the sweep directory holds one base model).
    memo = DiskMemo(spec.out / "reference_memo")
    for cell in progress.bar(cells, desc="robustness sweep", unit="cell"):
        result = run_cell(spec, *cell, base=base, eval_reference_cache=eval_reference_cache, reference_memo=memo)
        if result is None:
            elsewhere += 1
        else:
            results.append(result)
    if elsewhere:
        print(f"{elsewhere} cell(s) are being trained by another process; re-run to include them in the report")
    return results


def _check_settings(spec: SweepSpec, write: bool = True):
    """Cells are cached by (method, kind, rate, seed) only, so one output directory holds one setting."""
    skip = ("methods", "kinds", "rates", "seeds", "out") + (("gen_prompts", "gen_max_new_tokens")
                                                             if spec.gen_prompts == 0 else ())
    keep = {k: v for k, v in vars(spec).items()
            if k not in skip and not (k in _LATER_SETTINGS and v == _LATER_SETTINGS[k])}
    path = spec.out / "settings.json"
    if path.is_file() and json.loads(path.read_text()) != keep:
        raise UserError(f"bench: {spec.out} holds cells of other settings ({path}); use another --out")
    if not write:
        if not path.is_file():
            raise UserError(f"bench: {spec.out} holds no sweep ({path} is missing); run it without --report-only")
        return
    spec.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(keep, indent=2))


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


def _with_clean(rows: list[dict], kinds: list[str]) -> list[dict]:
    """Copies rate-0 rows to every noise kind of the sweep, so each panel starts from the clean run (stored
    under CLEAN_KIND, which need not be one of the sweep's kinds)."""
    out = [r for r in rows if r["rate"] != 0]
    for r in rows:
        if r["rate"] == 0:
            out += [{**r, "kind": k} for k in kinds]
    return out


MARKERS = "osD^vP*Xh<>p"


def plot_accuracy(rows: list[dict], kinds: list[str], path: Path, metric: str, caption: str = ""):
    from robalign.plots import panels, series_colours

    rows = _with_clean(rows, kinds)
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

    kl_at = {(r["method"], r["kind"], r["rate"]): r["mean"] for r in _with_clean(aggregate(results, "kl"), kinds)}
    rows = _with_clean(aggregate(results, "gold_reward_greedy"), kinds)
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
    from robalign.curve_report import sections as curve_sections

    lines += curve_sections(results, lambda r: cell_dir(spec, r["method"], r["kind"], r["rate"], r["seed"]), dest)
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
    rows = _with_clean(rows, kinds)
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


def _floats(text: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"bench: expected comma-separated numbers, got {text!r}") from None
    if any(not (0 <= v < 1) or math.isnan(v) for v in vals):
        raise UserError(f"bench: noise rates must be in [0, 1), got {text!r}")
    return vals


def check_numbers(args) -> None:
    """Every numeric flag in range, before anything is written or loaded (one message naming the flag)."""
    least = {"steps": 1, "epochs": 0, "eval_per_epoch": 0, "train_last_k": 0, "batch_size": 1, "eval_pairs": 1,
             "max_length": 8, "lora_r": 0, "gen_prompts": -1, "gen_max_new_tokens": 1, "threads": 0}
    for key, low in least.items():
        value = getattr(args, key)
        if not value >= low or (isinstance(value, float) and not math.isfinite(value)):
            raise UserError(f"bench: --{key.replace('_', '-')} must be >= {low}, got {value}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise UserError(f"bench: --lr must be a positive number, got {args.lr}")
    if not 0 < args.keep_fraction <= 1:
        raise UserError(f"bench: --keep-fraction must be in (0, 1], got {args.keep_fraction}")
    if args.train_pairs < args.batch_size:
        raise UserError(f"bench: --train-pairs ({args.train_pairs}) must be at least --batch-size ({args.batch_size})")
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"bench: --seeds expects comma-separated integers, got {args.seeds!r}") from None
    if not seeds or any(not 0 <= x < 2**32 for x in seeds):
        raise UserError(f"bench: --seeds must be integers in [0, 2^32), got {args.seeds!r}")


def _gen_prompts(args) -> int:
    """--gen-prompts, with -1 = 16 on the built-in task (it has a gold reward) and 0 elsewhere."""
    if args.gen_prompts == -1:
        return 16 if args.data in GOLD_TASKS else 0
    if args.gen_prompts > 0 and args.data not in GOLD_TASKS:
        raise UserError(f"bench: --gen-prompts needs a gold reward, which only --data {'/'.join(GOLD_TASKS)} has")
    if args.gen_prompts < 0 or args.gen_max_new_tokens < 1:
        raise UserError("bench: --gen-prompts must be >= 0 (or -1 = auto) and --gen-max-new-tokens >= 1")
    return args.gen_prompts


def _kinds(args) -> list[str]:
    """--kinds; `margin` ranks pairs by their score gap, so a file without scores fails here, not after
    its flip cells have trained, and the default leaves margin out for it."""
    kinds = [k for k in (args.kinds or "flip,length,margin").split(",") if k]
    if "margin" not in kinds or args.data in GOLD_TASKS or not Path(args.data).exists():
        return kinds
    from robalign.data import load_pairs, unscored

    pairs = load_pairs(args.data, skip_invalid=True).pairs
    missing = len(unscored(pairs))
    if not missing:
        return kinds
    if args.kinds is None:
        print(f"bench: {args.data} has no chosen_score/rejected_score, so the default kinds leave out margin")
        return [k for k in kinds if k != "margin"]
    raise UserError(f"bench: margin noise needs chosen_score and rejected_score on every row of {args.data}, "
                    f"and {missing} of its {len(pairs)} pairs lack them; score the pairs or drop margin from --kinds")


def cmd_bench(args) -> int:
    from robalign.data import NOISE_KINDS
    from robalign.methods import METHODS, canonical_name

    check_numbers(args)
    # TRL's loss names map to ours, so cells are named (and cached) by the loss they train.
    methods = list(dict.fromkeys(canonical_name(m) for m in args.methods.split(",") if m))
    kinds = _kinds(args)
    bad = [m for m in methods if m not in METHODS] + [k for k in kinds if k not in NOISE_KINDS]
    if bad:
        raise UserError(f"bench: unknown method or noise kind {bad}")
    online = [m for m in methods if is_online(m)]
    if online and args.data not in GOLD_TASKS:
        raise UserError(f"bench: online methods {online} label their own generations and need a gold oracle: "
                        "use --data verifiable or verifiable-sampled")
    if online and not set(kinds) & set(ONLINE_NOISE):
        raise UserError(f"bench: online methods {online} take only the noise kinds {sorted(ONLINE_NOISE)}")
    if online and args.keep_fraction < 1:
        raise UserError(f"bench: --keep-fraction filters given training pairs; the online methods {online} train on "
                        "pairs they generate (leave them out, or --keep-fraction 1)")
    skipped = [k for k in kinds if k not in ONLINE_NOISE]
    if online and skipped:
        print(f"bench: online methods {online} take no {skipped} noise (a margin oracle's threshold is in reward "
              "units, not a rate), so those cells are skipped")
    if args.data not in GOLD_TASKS and not Path(args.data).exists():
        raise UserError(f"bench: --data {args.data} not found (a preference file, 'verifiable' or "
                        "'verifiable-sampled')")
    if args.data not in GOLD_TASKS:  # validated as `robalign train` validates it, before any model loads
        from robalign.data import load_pairs

        read = load_pairs(args.data, skip_invalid=args.skip_invalid)
        if read.skipped:
            print(f"bench: {read.skip_summary()}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    spec = SweepSpec(data=args.data, methods=methods, kinds=kinds, rates=_floats(args.rates),
                     seeds=[int(s) for s in args.seeds.split(",")], model=args.model, steps=args.steps,
                     batch_size=args.batch_size, lr=args.lr, train_pairs=args.train_pairs,
                     eval_pairs=args.eval_pairs, max_length=args.max_length, lora_r=args.lora_r, out=Path(args.out),
                     gen_prompts=_gen_prompts(args), gen_max_new_tokens=args.gen_max_new_tokens,
                     epochs=args.epochs, train_last_k=args.train_last_k, trunk_cache=args.trunk_cache,
                     eval_per_epoch=args.eval_per_epoch, keep_fraction=args.keep_fraction,
                     params=parse_params(args.param, methods))
    for method, rate in itertools.product(methods, spec.rates):  # a misspelt --param key stops here,
        cell_config(spec, method, kinds[0], rate, 0, spec.out / "cells" / method, spec.train_pairs)  # early
    if args.report_dir and Path(args.report_dir).exists() and not Path(args.report_dir).is_dir():
        raise UserError(f"bench: --report-dir {args.report_dir} is a file; name a folder for the report")
    if args.report_only:
        results, missing = cached_results(spec)
        names = [cell_dir(spec, *c).name for c in missing]
        more = f" and {len(names) - 12} more" if len(names) > 12 else ""
        print(f"bench: {len(results)} of the grid's {len(results) + len(missing)} cells are finished in {spec.out}"
              + (f"; not finished: {', '.join(names[:12])}{more}" if names else ""))
        if not results:
            raise UserError(f"bench: no cell of this grid is finished in {spec.out}; nothing to report")
    else:
        results = run_sweep(spec)
    report = write_outputs(spec, results, Path(args.report_dir) if args.report_dir else None)
    print(report.read_text())
    return 0


def register_cli(sub):
    import argparse

    from robalign.models import DEFAULT_MODEL

    p = sub.add_parser("bench", help="benchmarks: `robalign bench robustness` sweeps methods under noise",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("which", choices=["robustness"])
    p.add_argument("--data", default="verifiable", help="preference file, 'verifiable' (built-in task, written "
                   "responses) or 'verifiable-sampled' (built-in task, responses sampled from --model, cached)")
    p.add_argument("--methods", default="dpo,cdpo,rdpo,ipo,simpo,hypo,sympo,drdpo,oracle_robust_offline,gapo",
                   help="training methods (TRL's loss names are accepted: sigmoid, robust); the "
                   "online ones (sail, oracle_robust) need the built-in task and also get the noise in their "
                   "oracle (kinds flip and length)")
    p.add_argument("--kinds", default=None, help="noise kinds (default flip,length,margin; margin only on data "
                   "with chosen_score/rejected_score on every pair)")
    p.add_argument("--rates", default="0,0.1,0.2,0.3,0.4", help="noise rates, comma-separated (0 = one clean cell shared by every kind)")
    p.add_argument("--seeds", default="0,1,2", help="seeds, comma-separated (each draws its own pairs, noise and order)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="base model of every cell")
    p.add_argument("--steps", type=int, default=16, help="optimiser steps per cell (unless --epochs)")
    p.add_argument("--epochs", type=float, default=0.0, help="passes over each cell's training pairs instead of "
                   "--steps; cells then evaluate every epoch and record their learning curve")
    p.add_argument("--eval-per-epoch", type=int, default=1, help="held-out evaluations per epoch with --epochs")
    p.add_argument("--keep-fraction", type=float, default=1.0,
                   help="train each cell only on this share of its (noisy) training pairs, those the base model "
                        "agrees with most (data.keep_fraction); offline methods")
    p.add_argument("--train-last-k", type=int, default=0, help="train only the last k blocks (0 = all)")
    p.add_argument("--trunk-cache", choices=["off", "memory", "disk"], default="off",
                   help="compute the frozen blocks once: 'disk' shares them (and the reference log-probs) "
                   "between every cell over the same texts, in <out>/trunk")
    p.add_argument("--batch-size", type=int, default=4, help="pairs per optimiser step")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (cosine schedule, 10%% warm-up)")
    p.add_argument("--train-pairs", type=int, default=256, help="training pairs per cell")
    p.add_argument("--eval-pairs", type=int, default=64, help="clean held-out pairs per seed")
    p.add_argument("--max-length", type=int, default=256, help="tokens of prompt + completion")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank (0 = full weights)")
    p.add_argument("--gen-prompts", type=int, default=-1, help="held-out prompts decoded per cell for gold "
                   "reward, win rate and KL (built-in task only); -1 = 16 there, 0 elsewhere")
    p.add_argument("--gen-max-new-tokens", type=int, default=32, help="tokens generated per held-out prompt")
    p.add_argument("--skip-invalid", action="store_true", help="skip and count invalid rows of --data instead of "
                   "stopping at the first (as robalign train --skip-invalid)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--param", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="a method's setting, repeatable (e.g. --param cdpo.epsilon=0.4 --param sympo.kind=ramp; "
                        "the value 'rate' tells the method each cell's own noise rate); "
                   f"defaults: {', '.join(f'{m}.{k}={v}' for m, kv in METHOD_DEFAULTS.items() for k, v in kv.items())}"
                   ", the rest the method's own (robalign train --help)")
    p.add_argument("--out", default="outputs/robustness", help="sweep folder: cells are cached there and re-running resumes")
    p.add_argument("--report-only", action="store_true", help="train nothing: report over the grid's cells "
                   "already finished in --out and name the ones that are not")
    p.add_argument("--report-dir", default=None, help="where report.md, results.csv and the plots go (default: "
                   "--out), so a report over part of a grid does not replace the one in --out")
    p.set_defaults(func=cmd_bench)
