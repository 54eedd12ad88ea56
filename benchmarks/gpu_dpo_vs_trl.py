"""robalign vs TRL side by side: bf16 DPO on one GPU, pairs/s and peak GPU memory, LoRA and full fine-tuning.

    python benchmarks/gpu_dpo_vs_trl.py --out benchmarks/results/gpu-dpo-vs-trl.json        # on a GPU
    python benchmarks/gpu_dpo_vs_trl.py --dry-run --out /tmp/gpu-dry.json                    # CPU smoke path

Models: SmolLM2-135M-Instruct (the built-in default, converted from its GGUF) and `llama-1b`, a random-
initialised Llama of ~1.0B parameters (hidden 2048, 18 blocks, GQA 32/8 heads, SmolLM2's 49k vocabulary,
untied head), built in code, so nothing is downloaded. Both frameworks get the same weights (same seed),
the same pairs, batch size, max length, learning rate and bf16 setting: weights loaded in bf16 and bf16
autocast (robalign: model.dtype bf16 + train.mixed_precision bf16; TRL: the bf16 model + `bf16=True`);
LoRA adapters are fp32 in both (PEFT upcasts them). Full fine-tuning uses a frozen reference copy in both,
LoRA the adapter-disabled model.

Each run is its own process (`--child`), so peak memory (`torch.cuda.max_memory_allocated`, weights,
optimiser state and activations) is that run's own and accelerate's per-process state starts clean.
A step is timed from before the batch's forward to after the optimiser step, with CUDA synchronised at
both ends; pairs/s = batch size x measured steps / their summed time. The pair order differs (robalign
buckets by length, TRL's sampler is sequential over the same pairs), so per-step times are compared as
medians over the run. The dry run does the same on tiny-llama on the CPU, in bf16, for one step.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
LLAMA_1B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=18, num_attention_heads=32,
                num_key_value_heads=8, max_position_embeddings=4096, tie_word_embeddings=False)
LORA = dict(r=16, alpha=32.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj"])
WORDS = ("the a model answer question because which helpful harmless kind people should would could never "
         "always data train policy reward value good bad true false light river stone music table window "
         "garden letter number simple careful").split()


# ------------------------------------------------------------------------------------ inputs


def synthetic_pairs(n: int, seed: int, prompt_words: int, answer_words: int) -> list[dict]:
    """Seeded prompt/chosen/rejected text pairs with lengths spread around the given word counts."""
    rng = random.Random(seed)

    def text(k):
        return " ".join(rng.choice(WORDS) for _ in range(max(1, k)))

    return [{"prompt": f"Question: {text(rng.randint(prompt_words // 2, prompt_words))}\nAnswer:",
             "chosen": " " + text(rng.randint(answer_words // 3, answer_words)),
             "rejected": " " + text(rng.randint(answer_words // 3, answer_words))} for _ in range(n)]


def build_model(spec: dict):
    """(model, tokenizer) in the spec's dtype on its device; the 1B model is random (seeded) with SmolLM2's
    tokenizer, the others come from robalign's loader."""
    from robalign.models import load_model_and_tokenizer

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[spec["dtype"]]
    if spec["model"] != "llama-1b":
        model, tok = load_model_and_tokenizer(spec["model"], seed=0, dtype=spec["dtype"])
        return model.to(spec["device"]), tok
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tok = load_model_and_tokenizer("smollm2-135m-instruct")  # the tokenizer only
    config = LlamaConfig(vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         bos_token_id=None, attention_dropout=0.0, **LLAMA_1B)
    torch.manual_seed(0)
    with torch.device(spec["device"]):  # initialised where it runs: a CPU init of 1B weights takes minutes
        model = LlamaForCausalLM(config).to(dtype)
    model.name_or_path = "llama-1b-random"
    return model, tok


# ------------------------------------------------------------------------------------ one run (child)


def _sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


def _peak_mib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None


def run_robalign(spec: dict, model, tok, pairs: list[dict]) -> dict:
    from robalign.config import build_config
    from robalign.data.pairs import PreferencePair
    from robalign.trainer import Trainer

    lora = spec["tuning"] == "lora"
    with tempfile.TemporaryDirectory(prefix="robalign-gpu-bench-") as out:
        cfg = build_config({
            "model": {"name": spec["model"], "lora_r": LORA["r"] if lora else 0, "lora_alpha": LORA["alpha"],
                      "lora_target_modules": LORA["target_modules"], "dtype": spec["dtype"],
                      "reference": "adapters_disabled" if lora else "copy"},
            "method": {"name": "dpo", "beta": 0.1}, "data": {"max_length": spec["max_length"]},
            "train": {"output_dir": out, "batch_size": spec["batch_size"], "max_steps": spec["steps"],
                      "lr": spec["lr"], "schedule": "constant", "eval_at_start": False, "progress": False,
                      "mixed_precision": spec["mixed"], "device": spec["device"], "save_final": False}})
        train = [PreferencePair(p["prompt"], p["chosen"], p["rejected"], id=f"p{i}") for i, p in enumerate(pairs)]
        trainer = Trainer(cfg, train_pairs=train, eval_pairs=[], model=model, tokenizer=tok)
        times, losses = [], []
        for _ in range(spec["steps"]):
            _sync(spec["device"])
            t0 = time.perf_counter()
            metrics = trainer.step()
            _sync(spec["device"])
            times.append(time.perf_counter() - t0)
            losses.append(float(metrics["loss"]))
        return {"step_times_s": times, "losses": losses}


def run_trl(spec: dict, model, tok, pairs: list[dict]) -> dict:
    import copy

    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    device = spec["device"]

    class Timer(TrainerCallback):
        def __init__(self):
            self.begin, self.end = [], []

        def on_step_begin(self, args, state, control, **kwargs):
            _sync(device)
            self.begin.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            _sync(device)
            self.end.append(time.perf_counter())

    lora = spec["tuning"] == "lora"
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0, bias="none",
                                 target_modules=LORA["target_modules"], task_type="CAUSAL_LM")
    with tempfile.TemporaryDirectory(prefix="trl-gpu-bench-") as out:
        args = DPOConfig(output_dir=out, per_device_train_batch_size=spec["batch_size"], max_steps=spec["steps"],
                         learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0, logging_steps=1,
                         report_to="none", save_strategy="no", eval_strategy="no", use_cpu=device == "cpu",
                         bf16=spec["mixed"] == "bf16", fp16=False, gradient_checkpointing=False,
                         max_length=spec["max_length"], disable_dropout=True, beta=0.1, loss_type=["sigmoid"],
                         disable_tqdm=True, seed=0, dataloader_num_workers=0, train_sampling_strategy="sequential")
        ref = None if lora else copy.deepcopy(model).eval().requires_grad_(False)
        trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=Dataset.from_list(pairs),
                             processing_class=tok, peft_config=peft_config)
        timer = Timer()
        trainer.add_callback(timer)
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        return {"step_times_s": [e - b for b, e in zip(timer.begin, timer.end)], "losses": losses}


def child(spec_path: str, result_path: str):
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"]) if spec["threads"] else None
    model, tok = build_model(spec)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    params = sum(p.numel() for p in model.parameters())
    if spec["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()
    pairs = synthetic_pairs(spec["batch_size"] * spec["steps"], seed=0, prompt_words=spec["prompt_words"],
                            answer_words=spec["answer_words"])
    run = run_robalign if spec["framework"] == "robalign" else run_trl
    out = run(spec, model, tok, pairs)
    measured = out["step_times_s"][spec["warmup"]:]
    result = {**{k: spec[k] for k in ("framework", "model", "tuning", "dtype", "mixed", "batch_size", "max_length")},
              "parameters": params, "steps": len(out["step_times_s"]), "measured_steps": len(measured),
              "first_loss": out["losses"][0] if out["losses"] else None, "losses": out["losses"],
              "step_times_s": out["step_times_s"],
              "median_step_s": statistics.median(measured) if measured else None,
              "pairs_per_s": spec["batch_size"] * len(measured) / sum(measured) if measured else None,
              "peak_gpu_mib": _peak_mib(spec["device"])}
    Path(result_path).write_text(json.dumps(result, indent=1))


# ------------------------------------------------------------------------------------ parent


def plan(args) -> list[dict]:
    base = dict(batch_size=args.batch_size, max_length=args.max_length, lr=args.lr, threads=args.threads,
                prompt_words=args.prompt_words, answer_words=args.answer_words, warmup=args.warmup,
                steps=args.warmup + args.steps, device=args.device, dtype=args.dtype, mixed=args.mixed)
    return [{**base, "model": m, "tuning": t, "framework": f}
            for m in args.models.split(",") for t in args.tunings.split(",") for f in args.frameworks.split(",")]


def run_all(args) -> dict:
    runs, failed = [], []
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        for k, spec in enumerate(plan(args)):
            spec_path, result_path = Path(tmp) / f"spec-{k}.json", Path(tmp) / f"result-{k}.json"
            spec_path.write_text(json.dumps(spec))
            name = f"{spec['model']}/{spec['tuning']}/{spec['framework']}"
            print(f"running {name} ...", flush=True)
            try:
                proc = subprocess.run([sys.executable, __file__, "--child", str(spec_path), str(result_path)],
                                      capture_output=True, text=True, timeout=args.run_timeout)
                ok = proc.returncode == 0 and result_path.is_file()
                tail = (proc.stdout + proc.stderr)[-2000:]
            except subprocess.TimeoutExpired:
                ok, tail = False, f"timed out after {args.run_timeout} s"
            if ok:
                runs.append(json.loads(result_path.read_text()))
            else:
                failed.append({"run": name, "log_tail": tail})
                print(f"  FAILED: {tail[-500:]}", flush=True)
    return {"machine": machine(), "settings": vars(args), "runs": runs, "failed": failed,
            "comparison": compare(runs)}


def machine() -> dict:
    import transformers

    out = {"torch": torch.__version__, "transformers": transformers.__version__,
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        import trl

        out["trl"] = trl.__version__
    except ImportError:
        out["trl"] = None
    return out


def compare(runs: list[dict]) -> list[dict]:
    """robalign / TRL ratios per (model, tuning) where both ran."""
    by = {(r["model"], r["tuning"], r["framework"]): r for r in runs}
    rows = []
    for (model, tuning, fw), r in by.items():
        peer = by.get((model, tuning, "trl"))
        if fw != "robalign" or peer is None or not r["pairs_per_s"] or not peer["pairs_per_s"]:
            continue
        mem = (r["peak_gpu_mib"] / peer["peak_gpu_mib"]) if r["peak_gpu_mib"] and peer["peak_gpu_mib"] else None
        rows.append({"model": model, "tuning": tuning, "speedup": r["pairs_per_s"] / peer["pairs_per_s"],
                     "memory_ratio": mem})
    return rows


def markdown(report: dict) -> str:
    lines = ["| model | tuning | framework | params | pairs/s | median step s | peak GPU MiB | first loss |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        peak = f"{r['peak_gpu_mib']:.0f}" if r["peak_gpu_mib"] is not None else "-"
        lines.append(f"| {r['model']} | {r['tuning']} | {r['framework']} | {r['parameters'] / 1e6:.1f}M | "
                     f"{r['pairs_per_s']:.2f} | {r['median_step_s']:.3f} | {peak} | {r['first_loss']:.4f} |")
    for c in report["comparison"]:
        mem = f", peak memory x{c['memory_ratio']:.2f}" if c["memory_ratio"] else ""
        lines.append(f"\n{c['model']} {c['tuning']}: robalign / TRL pairs/s x{c['speedup']:.2f}{mem}")
    return "\n".join(lines)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="smollm2-135m-instruct,llama-1b")
    p.add_argument("--tunings", default="lora,full")
    p.add_argument("--frameworks", default="robalign,trl")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--prompt-words", type=int, default=120)
    p.add_argument("--answer-words", type=int, default=150)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=6, help="measured steps after the warm-up")
    p.add_argument("--lr", type=float, default=5e-6)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"))
    p.add_argument("--mixed", default="bf16", choices=("bf16", "no"))
    p.add_argument("--run-timeout", type=int, default=240, help="seconds per run before it is recorded as failed")
    p.add_argument("--dry-run", action="store_true", help="tiny-llama on the CPU, one step: the smoke path")
    p.add_argument("--out", default=str(HERE / "results" / "gpu-dpo-vs-trl.json"))
    args = p.parse_args(argv)
    if args.dry_run:
        args.models, args.device, args.warmup, args.steps = "tiny-llama", "cpu", 0, 1
        args.batch_size, args.max_length, args.prompt_words, args.answer_words = 2, 64, 8, 8
    elif not torch.cuda.is_available():
        p.error("no CUDA GPU here; use --dry-run for the CPU smoke path")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1], argv[2])
        return 0
    args = parse(argv)
    report = run_all(args)
    report["markdown"] = markdown(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    print(report["markdown"])
    print(f"written to {args.out}")
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
