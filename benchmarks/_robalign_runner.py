"""Child process of speed.py: times robalign's `Trainer.step()` on the prepared pairs.

Usage: python benchmarks/_robalign_runner.py SPEC.json RESULT.json
"""

from __future__ import annotations

import sys
import tempfile
import time

import common


def build_trainer(spec: dict, out_dir: str):
    from robalign.config import build_config
    from robalign.data.pairs import PreferencePair
    from robalign.models import load_model_and_tokenizer
    from robalign.trainer import Trainer

    r = spec["robalign"]
    model, tokenizer = load_model_and_tokenizer(spec["model"], seed=spec["model_seed"])
    overrides = {
        "model.name": spec["model"],
        "model.seed": spec["model_seed"],
        "model.lora_r": spec["lora"]["r"] if spec["lora"] else 0,
        "model.reference": r.get("reference", "auto"),
        "method.name": r["method"],
        "data.max_length": spec["max_length"],
        "train.output_dir": out_dir,
        "train.seed": spec["seed"],
        "train.batch_size": spec["batch_size"],
        "train.grad_accum": 1,
        "train.max_steps": spec["total_steps"],
        "train.optimizer": "adamw",
        "train.lr": spec["lr"],
        "train.weight_decay": 0.0,
        "train.schedule": "constant",
        "train.warmup_steps": 0,
        "train.max_grad_norm": spec["max_grad_norm"],
        "train.threads": spec["threads"],
        "train.progress": False,
    }
    if spec["lora"]:
        overrides.update({"model.lora_alpha": spec["lora"]["alpha"], "model.lora_dropout": 0.0,
                          "model.lora_target_modules": spec["lora"]["target_modules"]})
    overrides.update(r.get("params", {}))
    overrides.update(r.get("overrides", {}))
    cfg = build_config(overrides=overrides)
    pairs = [PreferencePair(p["prompt"], p["chosen"], p["rejected"], id=p["id"]) for p in spec["prepared"]["pairs"]]
    t0 = time.perf_counter()
    trainer = Trainer(cfg, train_pairs=pairs, eval_pairs=[], model=model, tokenizer=tokenizer)
    return trainer, time.perf_counter() - t0


def check_inputs(trainer, prepared: dict) -> dict:
    """The tokens and batch order robalign's Trainer uses must be the prepared ones."""
    seen = [{"prompt": t.prompt_ids, "chosen": t.chosen_ids, "rejected": t.rejected_ids} for t in trainer.train_data]
    tokens = common.compare_tokens(prepared["tokens"], seen)
    order = [trainer.stream.batch(k).index.tolist() for k in range(len(prepared["batches"]))]
    tokens["batch_order_matches"] = order == prepared["batches"]
    return tokens


def main(spec_path: str, result_path: str):
    spec = common.read_json(spec_path)
    common.set_threads(spec["threads"])
    with tempfile.TemporaryDirectory(prefix="robalign-bench-") as out_dir:
        trainer, setup_s = build_trainer(spec, out_dir)
        inputs = check_inputs(trainer, spec["prepared"])
        ceiling = common.matmul_ceiling(spec["threads"], n=spec.get("ceiling_n", 2048))  # same conditions as the steps
        times, records = [], []
        for _ in range(spec["total_steps"]):
            t0 = time.perf_counter()
            metrics = trainer.step()
            times.append(time.perf_counter() - t0)
            records.append({k: float(v) for k, v in metrics.items()})  # host sync after the clock stopped
        result = {
            "framework": "robalign",
            "setup_s": setup_s,
            "cache_build_s": getattr(trainer, "cache_build_s", None),
            "step_times_s": times,
            "losses": [r["loss"] for r in records],
            "first_step": {k: records[0].get(k) for k in ("loss", "rewards/chosen", "rewards/rejected", "grad_norm")},
            "inputs": inputs,
            **common.run_fields(trainer.optimizer, ceiling),
        }
    common.write_json(result_path, result)


if __name__ == "__main__":
    main(*sys.argv[1:3])
