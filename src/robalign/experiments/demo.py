"""`robalign demo`: the main job. What flipped preference labels do to a long DPO run, and what keeps it.

On the built-in verifiable-instructions task (gold labels from a programmatic checker) the default model
trains its last blocks for several epochs on the same pairs, once with clean labels and once with a share
of them flipped (and once per extra method asked for). Every epoch is evaluated on clean held-out pairs, and
the run records how many of its flipped training labels it has come to prefer (memorised). A noisy run is
also scored as `train.load_best_model_at_end` would leave it when the best evaluation is picked on a
validation split as noisy as the training labels (`robalign.experiments.selection`). Intervals are 95 % bootstraps over
the held-out pairs, paired where two runs are compared on the same pairs.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from robalign.errors import UserError


@dataclass(frozen=True)
class DemoPreset:
    """The budget of every run of the demo (all runs share it, and the data)."""

    train_pairs: int
    eval_pairs: int
    epochs: float
    batch_size: int
    lr: float
    train_last_k: int  # the last k blocks train (full weights); the frozen trunk below is computed once
    max_length: int = 256


# full: enough held-out pairs (320) that the cost of 40 % flips (about 8 points here, 15 at 256 pairs x 10 epochs)
# is resolved by its paired interval, in under 6 minutes on 2 cores
PRESETS = {"full": DemoPreset(train_pairs=192, eval_pairs=320, epochs=3, batch_size=8, lr=1e-4, train_last_k=2),
           "quick": DemoPreset(train_pairs=32, eval_pairs=48, epochs=2, batch_size=8, lr=1e-4, train_last_k=2)}
# Settings a method is told in the demo: the methods that assume a flip rate are told the true one.
TOLD_THE_RATE = ("cdpo", "rdpo")


@dataclass(frozen=True)
class DemoRun:
    label: str
    method: str
    noisy: bool

    @property
    def folder(self) -> str:
        return f"{self.method}-{'noisy' if self.noisy else 'clean'}"


def demo_runs(methods: list[str]) -> list[DemoRun]:
    """DPO on clean labels (what noise costs is measured against it), then each method on the noisy labels."""
    return [DemoRun("DPO, clean labels", "dpo", False)] + [DemoRun(f"{m}, flipped labels", m, True) for m in methods]


def run_tree(run: DemoRun, *, model: str, noise_rate: float, preset: DemoPreset, last_k: int, out: Path,
             seed: int, progress: bool) -> dict:
    """The config tree of one demo run: the last k blocks trained on the cached trunk, every epoch evaluated."""
    from robalign.methods import METHODS

    method = {"name": run.method, **({"epsilon": noise_rate} if run.method in TOLD_THE_RATE else {}),
              **METHODS[run.method].params.trunk_cache_settings(last_k)}  # e.g. GAPO's anchor on the last k only
    return {
        "model": {"name": model, "lora_r": 0, "train_last_k": last_k, "trunk_cache": "disk",
                  "trunk_cache_dir": str(out / "trunk")},
        "method": method, "data": {"max_length": preset.max_length},
        "train": {"output_dir": str(out / run.folder), "batch_size": preset.batch_size, "epochs": preset.epochs,
                  "lr": preset.lr, "warmup_steps": 2, "seed": seed, "eval_per_epoch": 1, "save_final": False,
                  "progress": progress}}


def run_demo(*, model: str, methods: list[str], noise_rate: float, preset: DemoPreset, out: Path,
             seed: int = 0, progress: bool = True) -> list[dict]:
    import copy

    from robalign.config import build_config
    from robalign.data import inject_noise
    from robalign.models import load_model_and_tokenizer
    from robalign.reference import SharedReference
    from robalign.tasks.verifiable import make_preference_pairs
    from robalign.trainer import Trainer

    clean = make_preference_pairs(preset.train_pairs, seed)
    noisy = inject_noise(clean, "flip", noise_rate, seed)
    held_out = make_preference_pairs(preset.eval_pairs, seed + 10_000)  # clean: noise never touches evaluation
    base, tokenizer = load_model_and_tokenizer(model)
    last_k = min(preset.train_last_k, base.config.num_hidden_layers - 1)  # a tiny test model has 2 blocks
    shared = SharedReference()  # the held-out pairs' base-model log-probs: computed by the first run only
    rows = []
    for run in demo_runs(methods):
        t0 = time.perf_counter()
        tree = run_tree(run, model=model, noise_rate=noise_rate, preset=preset, last_k=last_k, out=out,
                        seed=seed, progress=progress)
        method, cfg = tree["method"], build_config(tree)
        trainer = Trainer(cfg, train_pairs=noisy if run.noisy else clean, eval_pairs=held_out,
                          model=copy.deepcopy(base), tokenizer=tokenizer, shared_reference=shared)
        summary = trainer.train(overwrite=True)  # the demo's own folders: a re-run replaces them
        reward = trainer.method.margin_key  # a reference-free method is read on its own M
        rows.append(_row(run, method, summary, out / run.folder, seed, noise_rate, time.perf_counter() - t0, reward))
    _pair_with_clean(rows, out, demo_runs(methods))
    return rows


def _margins(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "heldout_margins.safetensors"))


def _row(run: DemoRun, method: dict, summary: dict, run_dir: Path, seed: int, rate: float, seconds: float,
         reward: str = "h") -> dict:
    from robalign.experiments.selection import last_correctness, stopped_correctness
    from robalign.stats import correctness, hierarchical_bootstrap

    table = _margins(run_dir)
    h = table[reward]  # the run's own implicit reward: h, or M for a reference-free method
    # The 95 % half-width of each evaluation's accuracy, from its per-pair correctness (ties count half, so the
    # step-0 evaluation, where every margin is exactly 0, has none).
    half = [1.96 * correctness(row).std().item() / math.sqrt(h.shape[1]) for row in h]
    curve = [{"epoch": r["epoch"], "accuracy": r[f"eval/accuracy_{reward}"], "half_width": w,
              "fit_flipped": r.get("train/fit_flipped"), "fit_clean": r.get("train/fit_clean")}
             for r, w in zip(summary["curve"], half)]
    peak = max(range(len(curve)), key=lambda i: curve[i]["accuracy"])
    fall = hierarchical_bootstrap([correctness(h[-1]) - correctness(h[peak])])
    row = {"label": run.label + (" (M)" if reward == "M" else ""), "method": run.method, "reward": reward,
           "settings": {k: v for k, v in method.items() if k != "name"},
           "noise": rate if run.noisy else 0.0, "curve": curve, "pairs": h.shape[1],
           "last": curve[-1]["accuracy"], "peak": curve[peak]["accuracy"], "peak_epoch": curve[peak]["epoch"],
           "last_minus_peak": fall, "fit_flipped": curve[-1]["fit_flipped"], "seconds": round(seconds, 1)}
    if run.noisy:  # load_best_model_at_end, with the best picked on a validation half as noisy as training
        stopped, at = stopped_correctness(h, seed, rate)
        row["stopped"] = {"epoch": float(table["epoch"][at]), "test_half": stopped.mean().item(),
                          "last_on_test_half": last_correctness(h, seed).mean().item(),
                          "gain": hierarchical_bootstrap([stopped - last_correctness(h, seed)])}
    return row


def _pair_with_clean(rows: list[dict], out: Path, runs: list[DemoRun]) -> None:
    """Each noisy run's last-epoch accuracy − the clean run's, on the same held-out pairs."""
    from robalign.stats import correctness, hierarchical_bootstrap

    clean = _margins(out / runs[0].folder)[rows[0]["reward"]][-1]
    for row, run in zip(rows[1:], runs[1:]):
        mine = _margins(out / run.folder)[row["reward"]][-1]
        row["minus_clean"] = hierarchical_bootstrap([correctness(mine) - correctness(clean)])


def plot(rows: list[dict], path: Path, *, title: str) -> Path:
    """Clean held-out accuracy per epoch with its 95 % band, and the flipped training labels preferred."""
    from robalign.plots import panels

    palette = ["tab:green", "tab:red", "tab:blue", "tab:purple", "tab:orange", "tab:brown", "tab:cyan"]
    colour = {r["label"]: palette[k % len(palette)] for k, r in enumerate(rows)}
    with panels(["clean held-out accuracy (95 % band)", "flipped training labels the model prefers"], path,
                width=5.2) as axes:
        (acc_ax, _), (fit_ax, _) = axes
        for r in rows:
            x = [c["epoch"] for c in r["curve"]]
            y = [c["accuracy"] for c in r["curve"]]
            half = [c["half_width"] for c in r["curve"]]
            acc_ax.plot(x, y, marker="o", markersize=3, color=colour[r["label"]], label=r["label"])
            acc_ax.fill_between(x, [a - b for a, b in zip(y, half)], [a + b for a, b in zip(y, half)],
                                color=colour[r["label"]], alpha=0.15, lw=0)
            if "stopped" in r:
                at = x.index(r["stopped"]["epoch"]) if r["stopped"]["epoch"] in x else None
                if at is not None:
                    acc_ax.plot([x[at]], [y[at]], marker="*", markersize=12, color=colour[r["label"]], ls="none")
            fit = [(xi, c["fit_flipped"]) for xi, c in zip(x, r["curve"]) if c["fit_flipped"] is not None]
            if fit:
                fit_ax.plot(*zip(*fit), marker="o", markersize=3, color=colour[r["label"]], label=r["label"])
        acc_ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        fit_ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        fit_ax.set_ylim(0, 1)
        for ax, _ in axes:
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        acc_ax.set_title(f"{title}\nclean held-out accuracy (95 % band; ★ kept by early stopping)", fontsize=9)
        fit_ax.set_title("flipped training labels the model prefers\n(memorised noise)", fontsize=9)
    return path


def _ci(ci: dict) -> str:
    return f"{ci['mean']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}]"


def table(rows: list[dict]) -> str:
    out = ["| run | last epoch | peak (epoch) | last − peak [95 %] | − clean run, last [95 %] | flipped labels "
           "preferred | early-stopped on noisy validation: epoch, gain [95 %] | seconds |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fit = "-" if r["fit_flipped"] is None else f"{r['fit_flipped']:.2f}"
        stop = (f"{r['stopped']['epoch']:g}, {_ci(r['stopped']['gain'])}" if "stopped" in r else "-")
        out.append(f"| {r['label']} | {r['last']:.3f} | {r['peak']:.3f} ({r['peak_epoch']:g}) | "
                   f"{_ci(r['last_minus_peak'])} | {_ci(r['minus_clean']) if 'minus_clean' in r else '-'} | "
                   f"{fit} | {stop} | {r['seconds']:.0f} |")
    return "\n".join(out)


def _excludes_zero(ci: dict) -> int:
    """+1 / −1 when the interval lies above / below 0, else 0."""
    return 1 if ci["low"] > 0 else -1 if ci["high"] < 0 else 0


def meaning(rows: list[dict], noise_rate: float) -> str:
    """The short paragraph: what the numbers say, worded by which intervals exclude zero."""
    dpo = next((r for r in rows[1:] if r["method"] == "dpo"), rows[1] if len(rows) > 1 else None)
    if dpo is None:
        return ""
    clean = rows[0]
    pct = f"{noise_rate:.0%}"
    said = [f"With {pct} of its training labels flipped, DPO came to prefer {dpo['fit_flipped']:.0%} of the flipped "
            "labels: given enough epochs it memorises them, as it memorises the right ones."]
    cost = _excludes_zero(dpo["minus_clean"])
    said.append({-1: f"That cost it clean held-out accuracy: {_ci(dpo['minus_clean'])} against the clean-label run.",
                 0: f"Its clean held-out accuracy did not end measurably below the clean-label run's "
                    f"({_ci(dpo['minus_clean'])}; an interval that includes 0).",
                 1: f"Yet it ended above the clean-label run ({_ci(dpo['minus_clean'])})."}[cost])
    fall = _excludes_zero(dpo["last_minus_peak"])
    said.append({-1: f"Its accuracy peaked at epoch {dpo['peak_epoch']:g} and then fell ({_ci(dpo['last_minus_peak'])}).",
                 0: f"Its accuracy did not fall measurably after its peak ({_ci(dpo['last_minus_peak'])}).",
                 1: ""}[fall] if dpo["peak_epoch"] != dpo["curve"][-1]["epoch"] else "Its best evaluation was its "
                  "last: its accuracy never fell.")
    if "last_minus_peak" in clean and _excludes_zero(clean["last_minus_peak"]) < 0:
        said.append(f"Even on clean labels DPO peaked at epoch {clean['peak_epoch']:g} and then fell "
                    f"({_ci(clean['last_minus_peak'])}): with few pairs and many epochs it overfits them.")
    gain = _excludes_zero(dpo["stopped"]["gain"])
    said.append({1: f"Keeping the best evaluation on a validation split as noisy as the training labels "
                    f"(`--load-best-model-at-end true`) kept {_ci(dpo['stopped']['gain'])} of it.",
                 0: f"Keeping the best evaluation on a noisy validation split (`--load-best-model-at-end true`) changed "
                    f"it by {_ci(dpo['stopped']['gain'])}: not measurably.",
                 -1: f"Keeping the best evaluation on a noisy validation split cost {_ci(dpo['stopped']['gain'])}: "
                     "at this noise the split was too noisy to pick well."}[gain])
    for r in rows[1:]:
        if r is dpo or "minus_clean" not in r:
            continue
        said.append(f"{r['label']}: {_ci(r['minus_clean'])} against the clean-label run.")
    said.append("For your data: inject the noise you fear into a copy of it (`robalign noise`) and compare learning "
                "curves with and without it (`--epochs N --eval-per-epoch 1`): that measures what wrong labels cost "
                "you; `train/fit_flipped` shows whether the model memorises them, and `--load-best-model-at-end "
                "true` keeps the best evaluation when a run overfits. Random flips keep each pair's majority label "
                "right (a label is right with probability 1 − ε > ½), so they cost information, not direction: a "
                "loss correction (cDPO, rDPO, …) cannot change which answer a long run ends up preferring on "
                "average, while cleaner or more pairs buy the accuracy back. A biased judge is another kind of "
                "noise, which makes the majority wrong on some pairs; `robalign noise --kind length` simulates one "
                "that prefers longer answers. Intervals this wide come from a few hundred held-out pairs; "
                "docs/results.md measures what each robust method buys at larger scale.")
    return " ".join(s for s in said if s)


def write_report(rows: list[dict], out: Path, *, model: str, noise_rate: float, preset: DemoPreset, seed: int) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"preset": asdict(preset), "noise": noise_rate, "seed": seed,
                                                  "model": model, "runs": rows}, indent=2))
    title = f"{model}, {noise_rate:.0%} flipped training labels"
    plot(rows, out / "demo_learning_curves.png", title=title)
    lines = ["# robalign demo\n",
             f"Model `{model}`, its last {preset.train_last_k} blocks trained (full weights), the frozen trunk below "
             f"computed once; built-in verifiable-instructions task: {preset.train_pairs} training pairs, "
             f"{preset.epochs:g} epochs of batches of {preset.batch_size}, lr {preset.lr:g}, seed {seed}; accuracy on "
             f"{preset.eval_pairs} clean held-out pairs after every epoch (of each run's implicit reward: the reference "
             f"log-ratio h, or for a reference-free method, marked (M), its length-normalised log-prob margin M). "
             f"One run on clean labels, then each method with {noise_rate:.0%} of the same training "
             f"labels flipped. Early stopping: the epoch with the best accuracy on a random half of the held-out pairs "
             f"with {noise_rate:.0%} of its labels flipped, scored on the other, clean half.\n",
             table(rows), "\n![learning curves](demo_learning_curves.png)\n", "## What it means\n",
             meaning(rows, noise_rate), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def cmd_demo(args) -> int:
    from robalign.methods import METHODS

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UserError(f"demo: unknown method(s) {unknown} (valid: {', '.join(sorted(METHODS))})")
    if not 0 < args.noise < 0.5:
        raise UserError("demo: --noise must be in (0, 0.5): the share of flipped training labels")
    if not 0 <= args.seed < 2**32:
        raise UserError(f"demo: --seed must be in [0, 2^32), got {args.seed}")
    if not (args.epochs >= 0 and math.isfinite(args.epochs)):
        raise UserError(f"demo: --epochs must be >= 0 (0 = the preset's), got {args.epochs}")
    preset = PRESETS["quick" if args.quick else "full"]
    if args.epochs:
        preset = DemoPreset(**{**asdict(preset), "epochs": args.epochs})
    out = Path(args.out)
    t0 = time.perf_counter()
    rows = run_demo(model=args.model, methods=methods, noise_rate=args.noise, preset=preset, out=out,
                    seed=args.seed, progress=getattr(args, "progress", True) is not False)
    report = write_report(rows, out, model=args.model, noise_rate=args.noise, preset=preset, seed=args.seed)
    print("\n" + table(rows) + "\n\n" + meaning(rows, args.noise))
    print(f"\naccuracy: clean held-out preference accuracy of each run's implicit reward (the reference log-ratio h; "
          f"M for a reference-free method).\n"
          f"report: {report}, plot: {out / 'demo_learning_curves.png'}  ({time.perf_counter() - t0:.0f} s)")
    return 0


def register_cli(sub):
    from robalign.models import DEFAULT_MODEL

    p = sub.add_parser("demo", help="the main job: a long DPO run on clean vs 40%% flipped labels, learning "
                       "curves with intervals, and what early stopping keeps")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--methods", default="dpo", help="methods trained on the flipped labels, beside DPO on clean "
                   "labels (cdpo / rdpo are told the true flip rate); default: dpo")
    p.add_argument("--noise", type=float, default=0.4, help="share of flipped training labels (default 0.4)")
    p.add_argument("--quick", action="store_true", help="a smaller preset (about 2 minutes on 2 CPU cores)")
    p.add_argument("--epochs", type=float, default=0, help="override the preset's epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="outputs/demo")
    p.set_defaults(func=cmd_demo)
