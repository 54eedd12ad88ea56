"""Child process of speed.py: times TRL's DPOTrainer (or CPOTrainer for SimPO) on the prepared pairs.

Usage: python benchmarks/_trl_runner.py SPEC.json RESULT.json

The model is loaded with robalign's loader (the same converted checkpoint, so the same initial weights) and
handed to TRL as an instance; TRL gets the prepared prompt/chosen/rejected strings in robalign's step order
with a sequential sampler, so step k of both frameworks trains on the same four pairs. Optimiser steps are
timed by a `TrainerCallback` (on_step_begin → on_step_end: forward, backward, clipping, AdamW, zero_grad;
the batch is fetched and collated before on_step_begin, logging happens after on_step_end).
"""

from __future__ import annotations

import copy
import sys
import tempfile
import time

import common
from transformers import TrainerCallback


class StepTimer(TrainerCallback):
    def __init__(self):
        self.begin, self.end, self.logs = [], [], []

    def on_step_begin(self, args, state, control, **kwargs):
        self.begin.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        self.end.append(time.perf_counter())

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.logs.append(dict(logs))


def training_args(spec: dict, out_dir: str) -> dict:
    """TrainingArguments shared by both TRL trainers: fp32 on CPU, no eval / save / report, constant lr."""
    return dict(
        output_dir=out_dir, per_device_train_batch_size=spec["batch_size"], gradient_accumulation_steps=1,
        max_steps=spec["total_steps"], learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=spec["max_grad_norm"], logging_steps=1, report_to="none",
        save_strategy="no", eval_strategy="no", use_cpu=True, bf16=False, fp16=False,
        gradient_checkpointing=False,  # DPOConfig defaults to True; robalign does not checkpoint
        train_sampling_strategy="sequential", seed=spec["seed"], disable_tqdm=True, dataloader_num_workers=0,
        max_length=spec["max_length"], disable_dropout=True,
    )


def lora_config(spec: dict):
    from peft import LoraConfig

    lo = spec["lora"]
    return LoraConfig(r=lo["r"], lora_alpha=lo["alpha"], lora_dropout=0.0, target_modules=lo["target_modules"],
                      bias="none", task_type="CAUSAL_LM")


def build_dpo(spec, model, tokenizer, dataset, out_dir, timings):
    from trl import DPOConfig, DPOTrainer

    t = spec["trl"]
    precompute = t.get("precompute_ref_log_probs", False)
    args = DPOConfig(**training_args(spec, out_dir), beta=t.get("beta", 0.1), loss_type=["sigmoid"],
                     truncation_mode="keep_start", padding_free=False, precompute_ref_log_probs=precompute,
                     precompute_ref_batch_size=8 if precompute else None)
    ref_model = None
    if not spec["lora"] and not precompute:  # full fine-tuning, live reference: a frozen copy
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    original = DPOTrainer._precompute_ref_logps

    def timed_precompute(self, *a, **k):
        t0 = time.perf_counter()
        out = original(self, *a, **k)
        timings["cache_build_s"] = timings.get("cache_build_s", 0.0) + time.perf_counter() - t0
        return out

    DPOTrainer._precompute_ref_logps = timed_precompute
    return DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=dataset, processing_class=tokenizer,
                      peft_config=lora_config(spec) if spec["lora"] else None)


def build_cpo(spec, model, tokenizer, dataset, out_dir, timings):
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    t = spec["trl"]
    # CPOTrainer prepends tokenizer.bos_token_id to every prompt; SmolLM2's tokenizer (and robalign, and
    # DPOTrainer) add no BOS to raw text, so without this CPO would see one extra token per row.
    tokenizer.bos_token = None
    args = CPOConfig(**training_args(spec, out_dir), loss_type="simpo", cpo_alpha=0.0, beta=t["beta"],
                     simpo_gamma=t["gamma"])
    return CPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                      peft_config=lora_config(spec) if spec["lora"] else None)


def seen_tokens(trainer, kind: str) -> list[dict]:
    """Token ids per pair as the TRL trainer prepared them (before its collator)."""
    out = []
    for row in trainer.train_dataset:
        if kind == "dpo":
            out.append({"prompt": row["prompt_ids"], "chosen": row["chosen_ids"], "rejected": row["rejected_ids"]})
            continue
        n_c = sum(1 for x in row["chosen_labels"] if x == -100)
        n_r = sum(1 for x in row["rejected_labels"] if x == -100)
        out.append({"prompt": row["chosen_input_ids"][:n_c], "chosen": row["chosen_input_ids"][n_c:],
                    "rejected": row["rejected_input_ids"][n_r:],
                    **({"rejected_prompt": row["rejected_input_ids"][:n_r]} if n_r != n_c else {})})
    return out


def main(spec_path: str, result_path: str):
    from datasets import Dataset

    from robalign.models import load_model_and_tokenizer

    spec = common.read_json(spec_path)
    common.set_threads(spec["threads"])
    prepared = spec["prepared"]
    model, tokenizer = load_model_and_tokenizer(spec["model"], seed=spec["model_seed"])
    dataset = Dataset.from_list(common.trl_rows(prepared))
    kind = spec["trl"]["kind"]
    timings: dict = {}
    with tempfile.TemporaryDirectory(prefix="trl-bench-") as out_dir:
        t0 = time.perf_counter()
        build = build_dpo if kind == "dpo" else build_cpo
        trainer = build(spec, model, tokenizer, dataset, out_dir, timings)
        setup_s = time.perf_counter() - t0
        expected = [prepared["tokens"][i] for batch in prepared["batches"] for i in batch]
        inputs = common.compare_tokens(expected, seen_tokens(trainer, kind))
        losses = []
        compute_loss = trainer.compute_loss

        def recording_compute_loss(*args, **kwargs):  # the unrounded training loss of each step
            out = compute_loss(*args, **kwargs)
            losses.append((out[0] if isinstance(out, tuple) else out).detach().clone())
            return out

        trainer.compute_loss = recording_compute_loss
        ceiling = common.matmul_ceiling(spec["threads"], n=spec.get("ceiling_n", 2048))  # same conditions as the steps
        timer = StepTimer()
        trainer.add_callback(timer)
        trainer.train()
        times = [e - b for b, e in zip(timer.begin, timer.end)]
        first_log = timer.logs[0] if timer.logs else {}
        result = {
            "framework": "trl",
            "trainer": type(trainer).__name__,
            "setup_s": setup_s,
            "cache_build_s": timings.get("cache_build_s"),
            "step_times_s": times,
            "loop_interval_s": [b - a for a, b in zip(timer.end, timer.end[1:])],
            "losses": [float(x) for x in losses],
            "first_step": {"loss": float(losses[0]) if losses else None,
                           "rewards/chosen": first_log.get("rewards/chosen"),
                           "rewards/rejected": first_log.get("rewards/rejected"),
                           "grad_norm": first_log.get("grad_norm")},
            "inputs": inputs,
            "optim_arg": str(trainer.args.optim),
            **common.run_fields(trainer.optimizer, ceiling),
        }
    common.write_json(result_path, result)


if __name__ == "__main__":
    main(*sys.argv[1:3])
