"""robalign vs TRL, side by side on this machine: seconds per optimiser step, throughput, peak RSS, FLOP rate.

    python benchmarks/speed.py --configs dpo_live,tiny --warmup 2 --steps 6 --out outputs/bench/speed.json

Each (configuration, framework) runs in its own subprocess, so peak RSS is per framework. Both frameworks
get the same model weights, the same tokenised pairs in the same batches and order, batch 4, max_length
256, AdamW at a constant lr, fp32, `torch.set_num_threads(cores)`. The method, the FLOP model and the
exact commands are described in docs/benchmarks.md. Prints a markdown table; writes all raw numbers to --out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
from pathlib import Path

import common
from configs import CONFIGS, DEFAULT_CONFIGS

HERE = Path(__file__).resolve().parent
RUNNERS = {"robalign": HERE / "_robalign_runner.py", "trl": HERE / "_trl_runner.py"}
LOSS_RTOL = 1e-4


def parse_args(argv=None):
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                    help=f"comma-separated, from: {', '.join(CONFIGS)}")
    ap.add_argument("--frameworks", default="robalign,trl", help="run only these sides (robalign, trl)")
    ap.add_argument("--warmup", type=int, default=2, help="optimiser steps not timed")
    ap.add_argument("--steps", type=int, default=6, help="optimiser steps timed after warm-up")
    ap.add_argument("--batch-size", type=int, default=4, help="pairs per optimiser step")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0, help="seed of the pair sample, the batch order and training")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in every run (0 = number of cores)")
    ap.add_argument("--data", default=str(common.DATA_PATH))
    ap.add_argument("--out", default="outputs/bench/speed.json")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per subprocess")
    ap.add_argument("--ceiling-n", type=int, default=2048, help="size of the square matmul that sets the ceiling")
    ap.add_argument("--set", action="append", default=[], metavar="CONFIG:KEY=VALUE",
                    help="extra robalign config override for one configuration, e.g. sail:online.max_new_tokens=32")
    return ap.parse_args(argv)


def plan(names: list[str], frameworks: set[str]) -> list[tuple[str, str]]:
    """(config, framework) runs in order; robalign-only configs pull in their baseline's robalign run."""
    runs: list[tuple[str, str]] = []
    for name in names:
        if name not in CONFIGS:
            raise SystemExit(f"unknown configuration {name!r} (valid: {', '.join(CONFIGS)})")
        spec = CONFIGS[name]
        base = spec.get("baseline")
        if base and (base, "robalign") not in runs and "robalign" in frameworks:
            runs.append((base, "robalign"))
        for fw in ("robalign", "trl"):
            if fw in frameworks and (fw in spec) and (name, fw) not in runs:
                runs.append((name, fw))
    return runs


def unregistered(method: str) -> str | None:
    from robalign.methods import METHODS

    if method in METHODS:
        return None
    return (f"method {method!r} is not registered in robalign.methods.METHODS yet "
            f"(registered: {', '.join(sorted(METHODS))})")


def run_child(framework: str, spec: dict, log_dir: Path, timeout: int) -> dict:
    """Runs one child; its spec, result and log stay in `log_dir` (rerun one by hand with the spec)."""
    tag = f"{spec['config']}-{framework}"
    spec_path, result_path, log_path = (log_dir / f"{tag}.spec.json", log_dir / f"{tag}.result.json",
                                        log_dir / f"{tag}.log")
    result_path.unlink(missing_ok=True)
    common.write_json(spec_path, spec)
    print(f"[speed] {tag}: running ({spec['warmup']} warm-up + {spec['steps']} timed steps) ...", flush=True)
    with open(log_path, "w") as log:
        try:
            proc = subprocess.run([sys.executable, str(RUNNERS[framework]), str(spec_path), str(result_path)],
                                  stdout=log, stderr=subprocess.STDOUT, timeout=timeout, cwd=common.REPO)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    if rc != 0 or not result_path.is_file():
        tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
        print(f"[speed] {tag}: FAILED (exit {rc}); log {log_path}:\n    " + "\n    ".join(tail), flush=True)
        return {"framework": framework, "error": f"exit {rc}", "log": str(log_path), "log_tail": tail}
    return common.read_json(result_path)


def summarise(name: str, result: dict, prepared: dict, dims: dict, args, ceiling: float) -> dict:
    """Adds throughputs; the FLOP share uses the ceiling the child measured just before its steps."""
    if "step_times_s" not in result:
        return result
    ceiling = result.get("matmul_ceiling", {}).get("gflops", ceiling)
    train, reference = CONFIGS[name]["flops"]
    flops = [common.useful_flops(dims, s["real_tokens"], s["completion_tokens"], train=train, reference=reference)
             for s in prepared["per_step"]]
    summary = common.summarize(result["step_times_s"], prepared["per_step"], warmup=args.warmup,
                               batch_size=args.batch_size, flops_per_step=flops, ceiling_gflops=ceiling)
    rss = result["peak_rss"]
    summary["peak_rss_mb"] = rss.get("vmhwm_mb", rss["ru_maxrss_mb"])
    summary["measured_time_s"] = sum(result["step_times_s"][args.warmup:])
    return {**result, "summary": summary}


def compare_peers(rob: dict, trl: dict) -> dict:
    out = {}
    if "summary" in rob and "summary" in trl:
        r, t = rob["summary"], trl["summary"]
        out["speedup_median"] = t["median_step_s"] / r["median_step_s"]
        out["speedup_total"] = t["measured_time_s"] / r["measured_time_s"]
        out["rss_ratio"] = r["peak_rss_mb"] / t["peak_rss_mb"]
        a, b = rob["first_step"]["loss"], trl["first_step"]["loss"]
        out["first_loss"] = {"robalign": a, "trl": b, "rel_diff": common.rel_diff(a, b),
                             "agree": common.rel_diff(a, b) < LOSS_RTOL}
        # Same batches, same optimiser settings: later losses should track too (AdamW implementations differ).
        out["loss_trajectory_max_rel_diff"] = max(common.rel_diff(x, y) for x, y in zip(rob["losses"], trl["losses"]))
        ra, rb = rob["first_step"].get("rewards/chosen"), trl["first_step"].get("rewards/chosen")
        if ra is not None and rb is not None:
            out["first_rewards_chosen"] = {"robalign": ra, "trl": rb, "abs_diff": abs(ra - rb)}
        out["tokens"] = {"robalign": rob["inputs"], "trl": trl["inputs"]}
    return out


def markdown(report: dict) -> str:
    lines = ["| config | framework | s/step (median) | pairs/s | real tok/s | peak RSS (MB) | useful GFLOP/s "
             "| % of matmul ceiling | first-step loss |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key, res in report["runs"].items():
        name, fw = key.split("/")
        if "summary" not in res:
            why = res.get("skipped") or res.get("error", "?")
            lines.append(f"| {name} | {fw} | — | — | — | — | — | — | {why[:60]} |")
            continue
        s = res["summary"]
        lines.append(f"| {name} | {fw} | {s['median_step_s']:.2f} | {s['pairs_per_s']:.2f} | "
                     f"{s['real_tokens_per_s']:.0f} | {s['peak_rss_mb']:.0f} | {s['useful_gflops_per_s']:.1f} | "
                     f"{100 * s['share_of_matmul_ceiling']:.1f} | {res['first_step']['loss']:.6f} |")
    lines += ["", "| config | TRL / robalign time (total) | TRL / robalign (median) | RSS robalign / TRL | "
              "first-step loss rel. diff | cache build s (robalign / TRL) |", "|---|---:|---:|---:|---:|---:|"]
    for name, cmp in report["peers"].items():
        if "speedup_total" not in cmp:
            lines.append(f"| {name} | — | — | — | — | — |")
            continue
        rob, trl = report["runs"][f"{name}/robalign"], report["runs"][f"{name}/trl"]
        cache = "—"
        if rob.get("cache_build_s") is not None or trl.get("cache_build_s") is not None:
            cache = f"{rob.get('cache_build_s') or 0:.1f} / {trl.get('cache_build_s') or 0:.1f}"
        ok = "ok" if cmp["first_loss"]["agree"] else "MISMATCH"
        lines.append(f"| {name} | {cmp['speedup_total']:.2f}× | {cmp['speedup_median']:.2f}× | "
                     f"{cmp['rss_ratio']:.2f} | {cmp['first_loss']['rel_diff']:.1e} ({ok}) | {cache} |")
    if report["robalign_only"]:
        lines += ["", "| robalign config | baseline | time ratio (total, same batches) | median ratio |",
                  "|---|---|---:|---:|"]
        for name, r in report["robalign_only"].items():
            if "time_ratio" in r:
                lines.append(f"| {name} | {r['baseline']} | {r['time_ratio']:.2f} | {r['median_ratio']:.2f} |")
            else:
                lines.append(f"| {name} | {r['baseline']} | — ({r['why'][:70]}) | — |")
    return "\n".join(lines)


def parse_overrides(items: list[str]) -> dict[str, dict]:
    """`CONFIG:KEY=VALUE` strings -> {config: {key: value}}."""
    extra: dict[str, dict] = {}
    for item in items:
        name, _, kv = item.partition(":")
        key, _, value = kv.partition("=")
        if not (name and key and value):
            raise SystemExit(f"--set {item!r}: expected CONFIG:KEY=VALUE")
        extra.setdefault(name, {})[key] = value
    return extra


def prepare_models(runs, args, pairs) -> tuple[dict, dict]:
    """Per model: parameter dimensions and the prepared pairs, tokenised once with robalign's rules."""
    from robalign.models import load_model_and_tokenizer

    prepared, dims = {}, {}
    n_pairs = (args.warmup + args.steps) * args.batch_size
    for model_name in sorted({CONFIGS[c]["model"] for c, _ in runs}):
        model, tokenizer = load_model_and_tokenizer(model_name, seed=0)
        dims[model_name] = common.model_dims(model)
        prepared[model_name] = common.prepare_pairs(tokenizer, pairs, n_pairs=n_pairs, seed=args.seed,
                                                    max_length=args.max_length, batch_size=args.batch_size)
    return prepared, dims


def job_spec(name: str, args, threads: int, prepared: dict, extra: dict) -> dict:
    cfg = CONFIGS[name]
    robalign = {**cfg["robalign"], "overrides": {**cfg["robalign"].get("overrides", {}), **extra.get(name, {})}}
    return {"config": name, "model": cfg["model"], "model_seed": 0, "lora": cfg["lora"], "robalign": robalign,
            "trl": cfg.get("trl"), "seed": args.seed, "batch_size": args.batch_size, "max_length": args.max_length,
            "lr": args.lr, "max_grad_norm": args.max_grad_norm, "threads": threads, "ceiling_n": args.ceiling_n,
            "warmup": args.warmup, "steps": args.steps, "total_steps": args.warmup + args.steps,
            "prepared": prepared[cfg["model"]]}


def compare_all(report: dict, runs) -> int:
    """Fills report['peers'] and report['robalign_only']; returns the number of failed peer checks."""
    bad = 0
    for name, fw in runs:
        cfg, key = CONFIGS[name], f"{name}/{fw}"
        if fw == "trl" and f"{name}/robalign" in report["runs"]:
            cmp = compare_peers(report["runs"][f"{name}/robalign"], report["runs"][key])
            report["peers"][name] = cmp
            if "first_loss" not in cmp:
                bad += 1
                continue
            fl = cmp["first_loss"]
            print(f"[speed] {name}: first-step loss robalign {fl['robalign']:.8f}  TRL {fl['trl']:.8f}  "
                  f"rel diff {fl['rel_diff']:.2e} -> {'agree' if fl['agree'] else 'DISAGREE'} (tol {LOSS_RTOL})")
            bad += not fl["agree"]
        if fw == "robalign" and cfg.get("baseline"):
            base, me = report["runs"].get(f"{cfg['baseline']}/robalign", {}), report["runs"][key]
            entry = {"baseline": cfg["baseline"]}
            if "summary" in me and "summary" in base:
                entry["time_ratio"] = me["summary"]["measured_time_s"] / base["summary"]["measured_time_s"]
                entry["median_ratio"] = me["summary"]["median_step_s"] / base["summary"]["median_step_s"]
            else:
                entry["why"] = me.get("skipped") or me.get("error") or base.get("skipped") or base.get("error", "?")
            report["robalign_only"][name] = entry
    return bad


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = args.threads or common.cores()
    common.set_threads(threads)
    frameworks = {f.strip() for f in args.frameworks.split(",") if f.strip()}
    runs = plan([c.strip() for c in args.configs.split(",") if c.strip()], frameworks)
    extra = parse_overrides(args.set)
    ceiling = common.matmul_ceiling(threads, n=args.ceiling_n)
    print(f"[speed] fp32 matmul ceiling ({threads} threads, {args.ceiling_n}^3): {ceiling['gflops']:.1f} GFLOP/s",
          flush=True)
    prepared, dims = prepare_models(runs, args, common.load_hh(args.data))
    out = Path(args.out)
    log_dir = out.parent / f"{out.stem}-logs"
    report = {"date": dt.datetime.now().isoformat(timespec="seconds"), "argv": sys.argv, "args": vars(args),
              "machine": common.machine(), "versions": common.versions(), "matmul_ceiling": ceiling,
              "dims": dims, "per_step_tokens": {m: p["per_step"] for m, p in prepared.items()},
              "runs": {}, "peers": {}, "robalign_only": {}}
    for name, fw in runs:
        model = CONFIGS[name]["model"]
        why = unregistered(CONFIGS[name]["robalign"]["method"]) if fw == "robalign" else None
        if why:
            print(f"[speed] {name}/{fw}: SKIPPED: {why}", flush=True)
            report["runs"][f"{name}/{fw}"] = {"framework": fw, "skipped": why}
            continue
        result = run_child(fw, job_spec(name, args, threads, prepared, extra), log_dir, args.timeout)
        report["runs"][f"{name}/{fw}"] = summarise(name, result, prepared[model], dims[model], args, ceiling["gflops"])
        common.write_json(out, report)  # partial results survive a crash of a later run
    bad = compare_all(report, runs)
    report["markdown"] = markdown(report)
    common.write_json(out, report)
    print("\n" + report["markdown"] + "\n")
    print(f"[speed] wrote {out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
