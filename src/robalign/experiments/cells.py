"""One cell of a sweep: its data split, its run config, training it under a lock, and its cached result.

A cell trains one method on noisy training pairs and evaluates on clean held-out pairs; on the built-in
task (which has a gold reward) it also decodes held-out prompts with the trained policy and the reference
(greedy and sampled) for gold reward, gold win rate and KL(π‖π_ref). Its result is written to
`<out>/cells/<method>-<kind>-<rate>-s<seed>/result.json` when it finishes, so an interrupted
sweep resumes where it stopped (a cell killed mid-way from its last checkpoint) and re-running one cell
with its seed gives the same numbers.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import time
from pathlib import Path

from robalign import atomic, jsonl
from robalign.errors import UserError
from robalign.experiments.spec import (
    SweepSpec,
    cell_dir,
    is_online,
    method_settings,
    online_oracle,
)
from robalign.rundir import resumable


def _data_split(spec: SweepSpec, seed: int, base=None):
    """(train, eval) pairs of one seed; the eval split is clean and disjoint from training."""
    if spec.data == "verifiable-sampled":  # responses sampled from the (untrained) model, cached
        from robalign.experiments.sampled_pairs import cache_sampled_pairs
        from robalign.models import load_model_and_tokenizer

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
             shared_reference=None) -> dict | None:
    """The cell's result: read from its cache, or trained now; None while another process trains it.

    `base` = (model, tokenizer) already loaded (else the trainer loads them); `shared_reference` (a
    `robalign.reference.SharedReference`, one per loaded base model) keeps that model's reference log-probs
    of held-out splits and of the batches cells have met; None computes them all.
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
        # A killed cell resumes from its last checkpoint when it left one written with the same config;
        # otherwise what it left needs no cleaning: a fresh trainer rewrites its logs and checkpoints.
        return _train_cell(spec, method, kind, rate, seed, base, out, shared_reference)


def _train_cell(spec: SweepSpec, method: str, kind: str, rate: float, seed: int, base, out: Path,
                shared_reference) -> dict:
    from robalign.data import inject_noise
    from robalign.trainer import Trainer

    done = out / "result.json"
    train, held = _data_split(spec, seed, base)
    noisy = inject_noise(train, kind, rate, seed)
    cfg, oracle = cell_config(spec, method, kind, rate, seed, out, len(noisy))
    t0 = time.perf_counter()
    model, tok = base if base is not None else (None, None)
    trainer = Trainer(cfg, train_pairs=noisy, eval_pairs=held, model=copy.deepcopy(model) if model else None,
                      tokenizer=tok, shared_reference=shared_reference)
    resume = resumable(out, cfg)  # a killed cell continues from its last checkpoint (resuming is exact)
    summary = trainer.train(resume=resume, overwrite=not resume)
    result = {"method": method, "kind": kind, "rate": rate, "seed": seed, "seconds": time.perf_counter() - t0,
              **({"oracle": oracle} if oracle else {}),
              **({"resumed": True} if resume else {}),  # then `seconds` counts only the part after the resume
              "flipped": sum(bool(p.is_flipped) for p in noisy), **{k.split("/")[-1]: v for k, v in
                                                                      summary["final"].items()}}
    # The margin the method trains: held-out accuracy is read on it (M for reference-free methods).
    result["reward"] = trainer.method.margin_key if result.get("accuracy_h") is not None else "M"
    if spec.epochs:
        result.update(curve_summary(summary["curve"], result["reward"]))
    result.update({f"keep_{k}": v for k, v in summary.get("pair_filter", {}).items()})
    if spec.gen_prompts > 0:
        result.update(_gold_generation(spec, trainer, seed, base, out))
        result["seconds"] = time.perf_counter() - t0
    _keep_only_the_adapter(trainer, out)
    gapo = out / "gapo_summary.json"
    if gapo.is_file():
        result.update({f"gapo_{k}": v for k, v in json.loads(gapo.read_text()).items()
                       if isinstance(v, (int, float))})
    atomic.write_json(done, result, indent=2)
    return result


def cell_config(spec: SweepSpec, method: str, kind: str, rate: float, seed: int, out: Path, n_train: int):
    """(the run config of one cell, its online oracle or None)."""
    from robalign.config import build_config
    from robalign.methods import METHODS, canonical_name

    steps = spec.steps if not spec.epochs else math.ceil(spec.epochs * (n_train // spec.batch_size))
    tree = {
        "model": {"name": spec.model, "lora_r": spec.lora_r, "train_last_k": spec.train_last_k,
                  "trunk_cache": spec.trunk_cache, "trunk_cache_dir": str(spec.out / "trunk")},
        "method": {"name": method},
        "data": {"max_length": spec.max_length, "keep_fraction": spec.keep_fraction},
        "train": {"output_dir": str(out), "batch_size": spec.batch_size, "max_steps": steps, "lr": spec.lr,
                  "epochs": spec.epochs, "eval_per_epoch": spec.eval_per_epoch,
                  # a long-training cell runs for tens of minutes: it shows its trunk cache and steps
                  "seed": seed, "progress": bool(spec.epochs), "warmup_steps": max(1, steps // 10),
                  "save_final": False, "eval_at_start": bool(spec.epochs),
                  # about ten checkpoints a cell, so that a killed one resumes (`rundir.resumable`)
                  "save_every": max(1, steps // 10)}}
    if spec.trunk_cache != "off":  # what the method must be told to train above a cached trunk
        tree["method"].update(METHODS[canonical_name(method)].params.trunk_cache_settings(spec.train_last_k))
    oracle = online_oracle(kind, rate) if is_online(method) else None
    if oracle:
        tree["online"] = {"oracle": oracle, "max_new_tokens": spec.gen_max_new_tokens}
    tree["method"].update(method_settings(method, spec.params, rate))
    return build_config(tree, source=f"bench cell {out.name}"), oracle


def implicit_reward(result: dict, cell: Path) -> str:
    """'h' or 'M': the margin a cell's method trains, from its result (`reward`), or for cells written before
    that was recorded, from its method as configured (config.yaml); 'M' when no reference was evaluated."""
    if result.get("reward") in ("h", "M"):
        return result["reward"]
    if "accuracy_M" in result and result.get("accuracy_h") is None:  # nothing was scored against a reference
        return "M"
    import yaml

    from robalign.methods import build_method

    try:
        method = dict(yaml.safe_load((cell / "config.yaml").read_text())["method"])
        return build_method(method.pop("name"), method).margin_key
    except (OSError, KeyError, TypeError, ValueError, UserError):  # no readable config: the reference margin
        return "h"


def curve_summary(curve: list[dict], reward: str = "h") -> dict:
    """A cell's learning curve (held-out accuracy, margins, training-label fit per evaluation) and its best
    epoch by the held-out accuracy of its method's own implicit reward (`reward`: 'h' or 'M')."""
    keys = ("epoch", "eval/accuracy_h", "eval/accuracy_M", "eval/margin_h", "eval/margin_M", "train/fit_flipped",
            "train/fit_clean")
    rows = [{k.split("/")[-1]: r[k] for k in keys if r.get(k) is not None} for r in curve]
    if not rows:
        return {}
    score = f"accuracy_{reward}" if f"accuracy_{reward}" in rows[-1] else "accuracy_M"
    best = max(rows, key=lambda r: r.get(score, -1.0))  # the first of equals: the earliest epoch
    return {"curve": rows, "best_epoch": best["epoch"], f"best_{score}": best[score]}


def _keep_only_the_adapter(trainer, out: Path):
    """A finished cell's end-of-run checkpoint, two thirds of it optimiser state, would only fill the disk
    over a full grid; the trained LoRA adapter is kept."""
    if hasattr(trainer.model, "peft_config"):
        trainer.model.save_pretrained(out / "adapter")
    shutil.rmtree(out / "checkpoints", ignore_errors=True)


_REFERENCE_DECODES: dict = {}  # the base model's completions, shared by every cell with the same prompts


def held_out_prompts(n: int, seed: int) -> list:
    """The built-in task's n held-out prompts of a cell with this seed (`VerifiablePrompt`s, from another
    seed range than the training pairs)."""
    from robalign.tasks.verifiable import make_prompts

    return make_prompts(n, seed=20_000 + seed)


GOLD_GENERATIONS = "gold_generations.jsonl"


def _gold_generation(spec: SweepSpec, trainer, seed: int, base, out: Path) -> dict:
    """Gold reward, win rate against the reference and KL of the trained policy on held-out prompts; each
    prompt's texts and rewards go to `out`/gold_generations.jsonl, in prompt order, so two cells of one seed
    (same prompts) are compared prompt by prompt (`robalign.experiments.paired_gold`)."""
    from robalign.evaluate_generation import generation_eval
    from robalign.tasks.verifiable import VerifiableReward

    prompts = [[{"role": "user", "content": p.text}] for p in held_out_prompts(spec.gen_prompts, seed)]
    lora = spec.lora_r > 0
    if not lora and base is None:
        return {}  # full fine-tuning needs the untouched base model as the reference (run_sweep passes it)
    reference = None if lora else base[0]
    cache = _REFERENCE_DECODES.setdefault(spec.model, {})  # the reference's weights never change
    generated = generation_eval(trainer.model, reference, trainer.tokenizer, prompts, VerifiableReward(), n_samples=1,
                          max_new_tokens=spec.gen_max_new_tokens, seed=seed, adapter_disabled=lora,
                          reference_cache=cache)
    names = {"gen/reward_greedy": "gold_reward_greedy", "gen/reward_sampled": "gold_reward_sampled",
             "gen/ref_reward_greedy": "ref_gold_reward_greedy", "gen/ref_reward_sampled": "ref_gold_reward_sampled",
             "gen/win_rate_greedy": "win_rate_greedy", "gen/win_rate_sampled": "win_rate_sampled",
             "gen/kl": "kl"}
    # The KL samples' token ids would double the file and only the metrics above use them.
    jsonl.write_rows(out / GOLD_GENERATIONS, ({k: v for k, v in row.items() if k != "kl_sample_ids"}
                                              for row in generated["generations"]), encoding="utf-8")
    return {new: generated[old] for old, new in names.items()}
