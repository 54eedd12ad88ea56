"""`robalign bench robustness`: methods x noise kinds x rates x seeds, each cell cached, with a report."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

from robalign.errors import UserError
from robalign.experiments.cells import cell_config
from robalign.experiments.report import write_outputs
from robalign.experiments.spec import (
    GOLD_TASKS,
    METHOD_DEFAULTS,
    ONLINE_NOISE,
    SweepSpec,
    cell_dir,
    is_online,
    parse_params,
)
from robalign.experiments.sweep import cached_results, run_sweep


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
    p.add_argument("--eval-per-epoch", type=float, default=1.0, help="held-out evaluations per epoch with "
                   "--epochs (0.5: every second epoch)")
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
