"""The training loop: setup, step, evaluate, save. No formulas live here; methods compute losses.

Sync points are deliberate: metrics stay tensors during accumulation and are reduced across
micro-batches and processes once per optimiser step; the only per-step host sync is the finiteness
check of the loss and gradient norm, which decides whether the update is applied.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import os
import random
import time
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import yaml

from robalign import atomic, jsonl, progress
from robalign import checkpoint as ckpt
from robalign.best import BestKeeper
from robalign.config import RunConfig, normalized
from robalign.data.collate import BatchStream
from robalign.data.tokenize import tokenize_pairs
from robalign.errors import ConfigError, UserError
from robalign.evaluate import PreferenceEvaluator
from robalign.methods import build_method
from robalign.metrics import MetricsWriter
from robalign.models import apply_lora, cache_dir, disable_dropout, freeze_below, load_model_and_tokenizer
from robalign.pair_history import PairHistory
from robalign.policy import PolicyLM
from robalign.precision import (
    Precision,
    check_attention,
    check_precision_plan,
    check_quantization,
    choose_device,
    drop_accelerate_autocast,
    dtype_name,
    layout_description,
    loss_scaling,
    model_weights_dtype,
    resolve_attention,
    resolve_mixed_precision,
)
from robalign.recompute import enable_activation_checkpointing
from robalign.reference import (
    AdapterDisabledReference,
    FrozenCopyReference,
    InitialPolicyReference,
    MemoizedReference,
    NoReference,
    SharedReference,
    build_cached_reference,
    cache_key,
)
from robalign.rundir import RunLock, check_resume_config, prepare
from robalign.stats import correctness
from robalign.trackers import RunInfo, Trackers, check_installed, requested
from robalign.trunk import StoredReference, TrunkCache, check_split, model_fingerprint, split_index

log = logging.getLogger(__name__)


class NonFiniteError(UserError):
    """A NaN/Inf loss or gradient with `on_nonfinite: stop`."""


def lr_lambda(cfg) -> callable:
    """Multiplier of the peak lr at each step: linear warm-up, then constant / linear / cosine decay."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        if cfg.schedule == "linear":
            return max(0.0, 1.0 - progress)
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor


def _close(*logs) -> None:
    for log_file in logs:
        if log_file:
            log_file.close()


def _report_skipped(result) -> list:
    if result.skipped:
        log.warning("%s", result.skip_summary())
    return result.pairs


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def weights_are_sharded(acc) -> bool:
    """FSDP, or DeepSpeed ZeRO stage 3: no process holds the whole parameters between forwards."""
    from accelerate.utils import DistributedType

    if acc.distributed_type == DistributedType.FSDP:
        return True
    plugin = getattr(acc.state, "deepspeed_plugin", None)
    return acc.distributed_type == DistributedType.DEEPSPEED and getattr(plugin, "zero_stage", 0) == 3


def refuse_sharded_weights(acc, cfg) -> None:
    """Methods that read or write whole weights between steps refuse sharded runs at start-up, not at step 1."""
    if not weights_are_sharded(acc):
        return
    problem = cfg.method.params.whole_weights_problem()
    if problem:
        raise UserError(f"{problem}; FSDP / ZeRO-3 shard them. Use DDP or DeepSpeed ZeRO-2 (docs/scaling.md)")


def _configured_weights(dtype: str) -> str:
    """The weights' dtype as far as the config tells before loading ('auto' is checked after loading)."""
    return dtype if dtype != "auto" else "fp32"


def _accelerator(device: str, mixed: str):
    """The run's Accelerator, told the resolved mixed precision (its DDP/FSDP plugins and fp16 GradScaler
    follow it); one message if this process already runs accelerate in another precision."""
    from accelerate import Accelerator

    try:
        return Accelerator(cpu=device == "cpu", mixed_precision=mixed)
    except ValueError as err:
        raise UserError(f"train.mixed_precision: {mixed!r}: {err}") from None


def read_data(cfg, online: bool, train_pairs=None, eval_pairs=None) -> tuple[list, list]:
    """(train, held-out) pairs: the given lists, or `cfg.data`'s files with the held-out split drawn
    from its own stream; held-out pairs flagged `is_flipped` are scored with their true label."""
    from robalign.data import clean_labels, load_pairs, train_eval_split
    from robalign.data.prompts import is_prompt_only, load_online_data

    dc = cfg.data
    if train_pairs is not None and not _is_pair_list(train_pairs):
        # A `datasets.Dataset` / `DatasetDict`, or rows: read and checked as a file's rows are.
        train_pairs = _report_skipped(load_pairs(train_pairs, skip_invalid=dc.skip_invalid))
        if eval_pairs is None and dc.eval:
            eval_pairs = dc.eval
        elif eval_pairs is None:
            train_pairs, eval_pairs = train_eval_split(train_pairs, dc.eval_fraction, cfg.train.seed,
                                                       stream="eval-split")
    if eval_pairs is not None and not _is_pair_list(eval_pairs):
        eval_pairs = _report_skipped(load_pairs(eval_pairs, skip_invalid=dc.skip_invalid))
    if train_pairs is None:
        if not dc.train:
            raise UserError("data.train: no training data given (use --data PATH)")
        load_train = load_online_data if online else load_pairs  # online: prompt-only rows too
        train_pairs = _report_skipped(load_train(dc.train, skip_invalid=dc.skip_invalid))
        if dc.eval:
            eval_pairs = _report_skipped(load_pairs(dc.eval, skip_invalid=dc.skip_invalid))
        else:
            # Its own stream: data noised with seed s drew the same permutation from Random(s), and the
            # held-out pairs would be exactly the flipped ones.
            train_pairs, eval_pairs = train_eval_split(train_pairs, dc.eval_fraction, cfg.train.seed,
                                                       stream="eval-split")
    if dc.limit:
        train_pairs = train_pairs[:dc.limit]
    eval_pairs = [p for p in (eval_pairs or []) if not is_prompt_only(p)][:dc.eval_limit or None]
    eval_pairs, restored = clean_labels(eval_pairs)
    if restored:
        log.info("evaluation: %d held-out pairs carry is_flipped and are scored with their true label", restored)
    return train_pairs, eval_pairs


def _is_pair_list(obj) -> bool:
    from robalign.data.pairs import PreferencePair

    return isinstance(obj, list) and all(isinstance(p, PreferencePair) for p in obj)


class Trainer:
    """Trains `cfg.method` on preference pairs.

    Args:
        cfg: the validated run configuration.
        train_pairs / eval_pairs: already-loaded `PreferencePair` lists (else read from cfg.data).
        model / tokenizer: an already-built policy (else loaded from cfg.model).
        shared_reference: a `robalign.reference.SharedReference` given to every trainer of the same base
            model (sweep cells, demo runs): the reference log-probs of held-out pairs and of batches that one
            of them has already computed are read, not recomputed. Offline methods' training batches and
            every held-out batch use it.
    """

    def __init__(self, cfg: RunConfig, *, train_pairs=None, eval_pairs=None, model=None, tokenizer=None,
                 accelerator=None, shared_reference: SharedReference | None = None):
        self.cfg = cfg
        tc = cfg.train
        check_installed(requested(tc))  # a missing tracker package is said before a model loads or a folder is made
        if tc.threads:
            torch.set_num_threads(tc.threads)
        # Precision and device are settled before anything heavy loads (QLoRA on a CPU: one message, now).
        if accelerator is None:
            device = choose_device(tc.device)
            self.mixed = resolve_mixed_precision(tc.mixed_precision, os.environ.get("ACCELERATE_MIXED_PRECISION"))
            check_quantization(cfg.model.quantization, device)
            check_precision_plan(_configured_weights(cfg.model.dtype), self.mixed, lora_r=cfg.model.lora_r,
                                 device=device)
            self.acc = _accelerator(device, self.mixed)
        else:
            self.acc = accelerator
            self.mixed = resolve_mixed_precision(tc.mixed_precision, accelerator.mixed_precision)
            if self.mixed != accelerator.mixed_precision:  # its GradScaler and plugins follow its own setting
                raise ConfigError(f"train.mixed_precision: {self.mixed!r}, but the Accelerator passed in runs "
                                  f"{accelerator.mixed_precision!r}; build it with mixed_precision={self.mixed!r}")
            check_quantization(cfg.model.quantization, self.acc.device.type)
        seed_everything(tc.seed)
        self.out = Path(tc.output_dir)
        self.method = build_method(cfg.method.name, cfg.method.params, cfg)
        refuse_sharded_weights(self.acc, cfg)
        if cfg.model.trunk_cache != "off":
            problem = self.method.trunk_cache_problem(cfg.model.train_last_k)
            if problem:
                raise ConfigError(f"model.trunk_cache: {cfg.model.trunk_cache!r} with method {self.method.name}: "
                                  f"{problem} (or set model.trunk_cache: off)")
        if cfg.data.keep_fraction < 1 and self.method.online:
            raise ConfigError(f"data.keep_fraction: {cfg.data.keep_fraction} with method {self.method.name}: it "
                              "filters given training pairs, and an online method trains on pairs it generates; "
                              "use data.keep_fraction: 1")
        problem = self.method.activation_checkpointing_problem(tc.activation_checkpointing)
        if problem:
            raise ConfigError(f"train.activation_checkpointing: {tc.activation_checkpointing!r} with method "
                              f"{self.method.name}: {problem}")
        if tc.push_to_hub:  # before hours of training: the upload must be possible
            from robalign import hub

            hub.check_push()
        train_pairs, eval_pairs = read_data(self.cfg, self.method.online, train_pairs, eval_pairs)  # bad data fails before a model loads
        self._setup_model(model, tokenizer)
        self._setup_data(train_pairs, eval_pairs)
        shared = shared_reference
        self._setup_reference(shared.heldout if shared else None, shared.batches if shared else None)
        self._setup_optimizer()
        self.step_num, self.position, self.skipped_batches = 0, 0, 0
        self.fit = torch.zeros(4)  # since the last evaluation: flipped preferred, flipped seen, clean ..., clean ...
        self.best = None  # keeps the best evaluation (train.load_best_model_at_end / early_stopping_patience)
        if tc.load_best_model_at_end or tc.early_stopping_patience:
            self.best = BestKeeper(self.out, tc.metric_for_best_model, tc.early_stopping_patience,
                                   tc.load_best_model_at_end, margin_key=self.method.margin_key)
        self.stopped_early = False

    # ----------------------------------------------------------------------------------- setup
    def _setup_model(self, model, tokenizer):
        mc = self.cfg.model
        device = self.acc.device.type
        attention = resolve_attention(mc.attn_implementation)
        if model is None:
            low = mc.dtype in ("bf16", "fp16") or self.mixed != "no"
            check_attention(attention, device=device, compute="bf16" if low else "fp32", trunk_cache=mc.trunk_cache,
                            gapo_first_order=False)
            model, tokenizer = load_model_and_tokenizer(mc.name, seed=mc.seed, trust_remote_code=mc.trust_remote_code,
                                                        dtype=mc.dtype, attn_implementation=attention,
                                                        quantization=mc.quantization, device=str(self.acc.device))
        elif mc.attn_implementation != "auto":
            model.set_attn_implementation(attention)
        self._setup_precision(model)
        self.tokenizer = tokenizer
        disable_dropout(model)
        self.base_model = model
        self.frozen_reference = None
        self.first_block = split_index(model, mc.train_last_k)
        self.trunk_dir = None
        if mc.trunk_cache == "disk":  # keyed by the base weights, before adapters are added
            root = Path(mc.trunk_cache_dir) if mc.trunk_cache_dir else cache_dir() / "trunk"
            self.trunk_dir = root / model_fingerprint(mc.name, model, self.first_block)
        if mc.lora_r > 0:
            model = apply_lora(model, r=mc.lora_r, alpha=mc.lora_alpha, dropout=mc.lora_dropout,
                               target_modules=mc.lora_target_modules, first_block=self.first_block)
        else:
            if self.first_block:
                freeze_below(model, self.first_block)
            if self.method.needs_reference and mc.reference in ("auto", "copy", "cached") and not (
                    mc.trunk_cache != "off" and mc.reference != "copy"):
                self.frozen_reference = FrozenCopyReference(model)
        # After the reference copy, which only ever runs without gradients.
        enable_activation_checkpointing(model, self.cfg.train.activation_checkpointing)
        # bitsandbytes placed a quantized model when it loaded (and refuses `.to`).
        self.model = model if mc.quantization != "none" else model.to(self.acc.device)
        self.model.train()

    def _setup_precision(self, model):
        """Checks the loaded weights' dtype against the mixed precision and fixes how every pass computes.

        robalign applies autocast itself, around the training step (the reference's passes included), the
        cached reference and trunk, and evaluation (`step_precision` / `eval_precision`): its log-prob engine
        calls the model's body and head, not `model.forward`, which is where accelerate puts its autocast.
        A method whose step must stay fp32 (GAPO's anchor) runs its step without autocast on the fp32
        master weights; evaluation still uses the mixed precision.
        """
        mc, device = self.cfg.model, self.acc.device.type
        self.weights = dtype_name(model_weights_dtype(model))
        check_precision_plan(self.weights, self.mixed, lora_r=mc.lora_r, device=device)
        problem = self.method.precision_problem(self.weights)
        if problem:
            raise ConfigError(f"model.dtype: {self.weights} with method {self.method.name}: {problem}")
        if device == "cpu" and (self.weights != "fp32" or self.mixed != "no"):
            log.warning("precision: %s weights, mixed precision %s on the CPU, where bf16/fp16 matmuls run far "
                        "slower than fp32 (model.dtype: fp32, train.mixed_precision: no is this CPU's fast path)",
                        self.weights, self.mixed)
        autocast = self.mixed if self.mixed != "no" else None
        step_autocast = None if self.method.fp32_step else autocast
        if autocast and self.method.fp32_step:
            log.warning("precision: method %s runs its training passes in fp32 on the fp32 master weights "
                        "(its anchor would collapse in %s); evaluation runs under %s autocast", self.method.name,
                        self.mixed, self.mixed)
        self.step_precision = Precision(device, step_autocast, self.weights)
        self.eval_precision = Precision(device, autocast, self.weights)
        log.info("precision: %s weights, mixed precision %s, loss and log-softmax in fp32; %s", self.weights,
                 self.mixed, layout_description(model.config._attn_implementation))

    def _setup_data(self, train_pairs, eval_pairs):
        dc, tc = self.cfg.data, self.cfg.train
        self.method.bind(self.tokenizer)
        kw = dict(max_length=dc.max_length, max_prompt_length=dc.prompt_budget, skip_invalid=dc.skip_invalid)
        self.train_data, skipped = tokenize_pairs(self.tokenizer, train_pairs, **kw)
        self.eval_data, eval_skipped = tokenize_pairs(self.tokenizer, eval_pairs, **kw)
        if skipped or eval_skipped:
            log.warning("skipped %d training and %d evaluation pairs that do not fit max_length",
                        skipped, eval_skipped)
        self.pad_id = self.tokenizer.pad_token_id
        self.trunk = self._build_trunk() if self.cfg.model.trunk_cache != "off" else None
        self.pair_filter = self._keep_agreeing_pairs() if dc.keep_fraction < 1 else None
        # Columns: positions in the given training data (a pair skipped or filtered out stays NaN); online
        # methods train on pairs they generate, which have no fixed position to follow.
        self.history = None if self.method.online else PairHistory(torch.tensor(
            [math.nan if p.is_flipped is None else float(p.is_flipped) for p in train_pairs]))
        self.stream = BatchStream(self.train_data, tc.batch_size, seed=tc.seed, pad_id=self.pad_id,
                                  world_size=self.acc.num_processes, rank=self.acc.process_index, trunk=self.trunk)
        self.per_epoch = self.stream.micro_batches_per_epoch
        if tc.epochs:  # the budget in passes over the data; the schedule follows from it
            tc.max_steps = max(1, math.ceil(tc.epochs * self.per_epoch / tc.grad_accum))
        if self.trunk is not None:
            check_split(self.model, self.stream.batch(0).to(self.acc.device))

    def _keep_agreeing_pairs(self) -> dict:
        """`data.keep_fraction`: drops the training pairs the base model disagrees with most (robalign.pair_filter)
        before the first step, while the weights are still the base model's; returns what it did."""
        from robalign.pair_filter import base_margins, filter_report, keep_most_agreeing

        with self.eval_precision.autocast():
            margins = base_margins(self.model, self.train_data, pad_id=self.pad_id, trunk=self.trunk)
        kept = keep_most_agreeing(margins, self.cfg.data.keep_fraction)
        report = filter_report(margins, kept, [p.is_flipped for p in self.train_data])
        self.train_data = [self.train_data[i] for i in kept]
        flips = (f"; flipped share {report['flipped_before']:.3f} -> {report['flipped_after']:.3f}, flip AUROC of -M "
                 f"{report.get('flip_auroc', math.nan):.3f}") if "flipped_before" in report else ""
        log.info("data.keep_fraction: training on %d of %d pairs (the base model's margin M)%s", report["kept"],
                 report["pairs"], flips)
        return report

    def _build_trunk(self) -> TrunkCache:
        """The frozen trunk's states (and the reference's log-probs) of every training and held-out pair."""
        trunk = TrunkCache(self.first_block, self.trunk_dir, precision=self.step_precision.tag)
        pairs = self.train_data + self.eval_data
        # On disk, the main process fills what is missing and the others read its shard.
        fills = self.trunk_dir is None or self.acc.is_main_process
        # Training pairs' reference log-probs, for reference-based methods (the evaluator computes the held-out
        # ones on its own batches, `_setup_reference`).
        with_ref = self.method.needs_reference and self.cfg.model.reference in ("auto", "cached")
        todo = len(trunk.missing_states(pairs)) + (len(trunk.missing_ref(self.train_data)) if with_ref else 0)
        if fills and todo:
            t0 = time.perf_counter()
            bar = progress.bar(total=todo, desc="trunk cache", wanted=self.cfg.train.progress and self.acc.is_main_process)
            with self.step_precision.autocast():
                trunk.fill_states(self.model, pairs, pad_id=self.pad_id, progress=bar.update)
                if with_ref:
                    # Before the first update the policy is the base model (LoRA's B is 0; a copy is not needed).
                    reference = (AdapterDisabledReference(self.model) if self.cfg.model.lora_r > 0
                                 else InitialPolicyReference(self.model))
                    trunk.fill_reference(reference, self.train_data, pad_id=self.pad_id, device=self.acc.device,
                                         progress=bar.update)
            bar.close()
            trunk.save()
            self.trunk_build_s = time.perf_counter() - t0
            log.info("trunk cache: %d pairs computed in %.1f s (%.0f MB)", todo, self.trunk_build_s, trunk.num_bytes / 2**20)
        if self.trunk_dir is not None:
            self.acc.wait_for_everyone()
            if not fills:
                trunk = TrunkCache(self.first_block, self.trunk_dir, precision=self.step_precision.tag)
        return trunk

    def _setup_reference(self, eval_reference_cache: dict | None = None, memo=None):
        mc = self.cfg.model
        if self.trunk is not None and mc.reference in ("auto", "cached"):
            # Training reads the reference log-probs stored with the trunk (robalign.trunk). Evaluation computes
            # them on its own batches, now, before any update: the same arrangement as the policy's held-out
            # forward, so every held-out margin is exactly 0 at step 0 (stored values, computed in other
            # batches, differ in the last bits).
            self.reference = StoredReference() if self.method.needs_reference else NoReference()
            initial = AdapterDisabledReference(self.model) if mc.lora_r > 0 else InitialPolicyReference(self.model)
            self.evaluator = PreferenceEvaluator(self.eval_data, self.pad_id, reference=initial,
                                                 reference_cache=eval_reference_cache, trunk=self.trunk,
                                                 precision=self.eval_precision.tag)
            if self.acc.is_main_process:
                with self.eval_precision.autocast():
                    self.evaluator.detach_reference()
            return
        if not self.method.needs_reference:
            self.reference = NoReference()
        elif self.frozen_reference is not None:
            self.reference = self.frozen_reference
        else:
            self.reference = AdapterDisabledReference(self.model)
        # Online methods' batches are fresh generations, which no other run meets.
        if memo is not None and self.method.needs_reference and not self.method.online and mc.reference != "cached":
            self.reference = MemoizedReference(self.reference, memo, self.step_precision.tag)
        if self.method.needs_reference and mc.reference == "cached":
            settings = dataclasses.asdict(self.cfg.data)
            key = cache_key(mc.name, self.base_model, self.train_data, settings)
            path = Path(self.cfg.train.output_dir) / "ref_cache" / f"{key}.safetensors"
            t0 = time.perf_counter()
            with self.step_precision.autocast():
                self.reference = build_cached_reference(self.reference, self.train_data, path=path, pad_id=self.pad_id,
                                                        precision=self.step_precision.tag)
            self.cache_build_s = time.perf_counter() - t0
        live_reference = self.frozen_reference or (
            AdapterDisabledReference(self.model) if self.cfg.model.lora_r > 0 else None)
        if memo is not None and live_reference is not None:
            live_reference = MemoizedReference(live_reference, memo, self.eval_precision.tag)
        self.evaluator = PreferenceEvaluator(self.eval_data, self.pad_id, reference=live_reference,
                                             reference_cache=eval_reference_cache, trunk=self.trunk,
                                             precision=self.eval_precision.tag)
        if mc.reference == "cached" and self.frozen_reference is not None:
            # Training and evaluation now read stored log-probs: free the model-sized frozen copy.
            with self.eval_precision.autocast():
                self.evaluator.detach_reference()
            self.frozen_reference = None

    def _setup_optimizer(self):
        tc = self.cfg.train
        params = self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        if tc.optimizer == "adamw":
            # The fused kernel is ~5x faster than the per-tensor loop on CPU (docs/benchmarks.md).
            opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay, fused=True)
        else:
            opt = torch.optim.SGD(params, lr=tc.lr, weight_decay=tc.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tc))
        # `self.model` stays the plain model; `self.policy` is what methods call (DDP-wrapped when
        # several processes run, through PolicyLM so DDP's forward is the log-prob engine's pass).
        wrapped = PolicyLM(self.model) if self.acc.num_processes > 1 else self.model
        self.policy, self.optimizer = self.acc.prepare(wrapped, opt)
        drop_accelerate_autocast(wrapped)  # robalign applies autocast itself, around every pass
        self.scaling = loss_scaling(self.acc, self.optimizer, weights=self.weights, mixed=self.mixed)

    # ------------------------------------------------------------------------------------ step
    def step(self) -> dict[str, torch.Tensor]:
        """One optimiser step over `grad_accum` micro-batches; returns metrics as tensors."""
        tc = self.cfg.train
        t0 = time.perf_counter()
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, torch.Tensor] = {}
        tokens = raw_loss = torch.zeros(())
        records, met = [], []
        for micro in range(tc.grad_accum):
            batch = self.stream.batch(self.position).to(self.acc.device)
            met.append(self.position // self.per_epoch)  # the epoch this micro-batch belongs to
            self.position += 1
            last = micro == tc.grad_accum - 1
            sync = contextlib.nullcontext() if last else self.acc.no_sync(self.policy)
            with sync:
                with self.step_precision.autocast():  # the policy's and the reference's passes alike
                    result = self.method.step(self.policy, self.reference, batch)
                self.acc.backward(self.scaling.scale(result.loss / tc.grad_accum), **self._backward_kwargs)
            for key, value in {"loss": result.loss.detach(), **result.metrics}.items():
                # NaN-aware: a micro-batch without, e.g., flipped pairs has no value for that metric.
                value = value.detach().float()
                sums[key] = sums.get(key, 0.0) + torch.nan_to_num(value, nan=0.0)
                counts[key] = counts.get(key, 0.0) + (~value.isnan()).float()
            tokens = tokens + batch.num_tokens.float()
            raw_loss = raw_loss + result.loss.detach()  # un-masked: a NaN/Inf loss must stop the step
            records.append((batch, result.per_pair))
        self.scaling.unscale()
        grad_norm = self._grad_norm()
        finite_loss, finite_grad = (bool(x) for x in torch.stack([torch.isfinite(raw_loss),
                                                                   torch.isfinite(grad_norm)]).cpu())  # the one host sync
        if finite_loss and finite_grad:
            self._clip(grad_norm)
            self.scaling.step()
        elif finite_loss and self.scaling.dynamic:
            self.scaling.step()  # fp16 overflow: the scaler skips this update and lowers the scale
        else:
            self.scaling.skip()
            self._nonfinite(records)
        self.method.after_optimizer_step(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            # A skipped step still advances the schedule (it is a step of the budget); torch would
            # warn that the optimizer never stepped when the skipped one is the first.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            self.scheduler.step()
        self.step_num += 1
        totals = {k: self.acc.reduce(sums[k], "sum") / self.acc.reduce(counts[k], "sum") for k in sums}
        totals["grad_norm"] = grad_norm
        if self.scaling.dynamic:
            totals["loss_scale"] = self.scaling.value()
        totals["tokens"] = self.acc.reduce(tokens.to(grad_norm.device), "sum")
        totals["step_time_s"] = torch.tensor(time.perf_counter() - t0)
        self.last_records = records
        self._count_fit(records)
        if self.history is not None:
            for (batch, per_pair), epoch in zip(records, met):
                if per_pair.get("margin") is not None:
                    self.history.record(epoch, batch.index, per_pair["margin"])
        return totals

    def _count_fit(self, records):
        """How many flipped / clean training pairs the model preferred the *observed* label of when it met them
        (from the step's own margins, so measuring memorisation costs no extra pass; a tie counts half)."""
        for batch, per_pair in records:
            margin = per_pair.get("margin")
            if margin is None:
                continue
            prefers = correctness(margin, torch.float32)
            flags = batch.is_flipped.to(prefers.device)
            flipped, clean = (flags == 1).float(), (flags == 0).float()
            counts = torch.stack([(prefers * flipped).sum(), flipped.sum(), (prefers * clean).sum(), clean.sum()])
            self.fit = self.fit.to(counts.device) + counts  # stays on the device: read once per evaluation

    def _reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over the processes (itself under one); every process must call it."""
        if self.acc.num_processes == 1:
            return tensor
        return self.acc.reduce(tensor.to(self.acc.device), "sum")

    def _fit_metrics(self) -> dict:
        """The shares `_count_fit` counted since the last call, over every process (all must call it)."""
        totals = self._reduce(self.fit).cpu()
        self.fit = torch.zeros(4)
        out = {}
        if totals[1] > 0:
            out["train/fit_flipped"] = float(totals[0] / totals[1])
        if totals[3] > 0:
            out["train/fit_clean"] = float(totals[2] / totals[3])
        return out

    @property
    def _backward_kwargs(self) -> dict:
        """Gradients only for trainable tensors: a graph recorded while frozen weights required grad
        (GAPO's probe) would otherwise also compute, then drop, their weight gradients."""
        from accelerate.utils import DistributedType

        return {} if self.acc.distributed_type == DistributedType.DEEPSPEED else {"inputs": self.trainable}

    def _grad_norm(self) -> torch.Tensor:
        grads = [p.grad for p in self.trainable if p.grad is not None]
        if not grads:
            return torch.zeros(())
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))

    def _clip(self, norm: torch.Tensor):
        """Rescales gradients only when the norm exceeds the limit (skips a full pass otherwise)."""
        max_norm = self.cfg.train.max_grad_norm
        if max_norm and float(norm) > max_norm:
            grads = [p.grad for p in self.trainable if p.grad is not None]
            torch._foreach_mul_(grads, max_norm / (float(norm) + 1e-6))  # clip_grad_norm_'s factor

    def _nonfinite(self, records):
        ids = [i for batch, _ in records for i in batch.ids]
        last = ckpt.list_checkpoints(self.out / "checkpoints")
        where = f"step {self.step_num + 1}, pairs {ids[:16]}"
        if self.cfg.train.on_nonfinite == "skip":
            self.skipped_batches += 1
            log.warning("non-finite loss or gradient at %s: batch skipped", where)
            return
        raise NonFiniteError(f"non-finite loss or gradient at {where}; last good checkpoint: "
                             f"{last[-1] if last else 'none'} (set train.on_nonfinite: skip to skip such batches)")

    # ------------------------------------------------------------------------------- the loop
    def train(self, resume: bool = False, overwrite: bool = False) -> dict:
        """Runs to `max_steps`, evaluating, logging and checkpointing; returns the final summary.

        Args:
            resume: continue the run in `train.output_dir` from its last complete checkpoint (with the
                settings in its config.yaml; other settings are refused).
            overwrite: replace a run that `train.output_dir` already holds (else starting there is refused).
        """
        lock = RunLock(self.out)
        if self.acc.is_main_process:
            prepare(self.out, resume=resume, overwrite=overwrite)
            lock.acquire()
        try:
            self.acc.wait_for_everyone()
            return self._train(resume)
        finally:
            lock.release()

    def _train(self, resume: bool) -> dict:
        tc = self.cfg.train
        if resume:
            check_resume_config(self.out, self.cfg.to_dict(), normalize=normalized)
            self._resume()
            if (self.step_num >= tc.max_steps or self.stopped_early) and self._finished_before():
                return self._finished_summary()
        elif self.acc.is_main_process:
            self._write_config()
        resumed = resume and self.step_num > 0
        self.acc.wait_for_everyone()
        self.method.begin(self.out, self.step_num, resumed=resumed)
        # A resumed run's logs are cut back to the checkpoint's step: what was logged after it is logged again.
        resume_step = self.step_num if resumed else None
        writer = self._writer(resume_step)
        logs_pairs = self.method.log_pairs and self.acc.is_main_process
        pair_log = jsonl.open_log(self.out / "pairs.jsonl", resume_step=resume_step) if logs_pairs else None
        bar = self._progress()
        start_eval = {}
        if self.step_num == 0 and tc.eval_at_start:
            start_eval = self.evaluate()
            if start_eval and writer:
                writer.write({"step": 0, "epoch": 0.0, **start_eval})
                self._keep_margins()
            self._note_best(start_eval)
        elif resumed and self.acc.is_main_process:  # the 'before' column of a resumed run: what it logged then
            start_eval = self._logged_eval(self._eval_rows(), 0)
        try:
            end = min(tc.max_steps, tc.stop_after or tc.max_steps)
            last_eval = {}
            while self.step_num < end and not self.stopped_early:
                before = self.position
                metrics = self.step()
                self._log(writer, pair_log, metrics)
                bar.update(1)
                if self._evaluation_due(before) and self.step_num < tc.max_steps:
                    last_eval = self._write_eval(writer)
                    if self._patience_exhausted():
                        self.stopped_early = True
                        break
                if tc.save_every and self.step_num % tc.save_every == 0:
                    self.save_checkpoint()
        except BaseException:
            _close(writer, pair_log)  # e.g. NonFiniteError: the logs so far stay complete on disk
            raise
        finally:
            bar.close()
        if self.step_num < tc.max_steps and not self.stopped_early:  # train.stop_after: checkpoint only
            self.save_checkpoint()
            _close(writer, pair_log)
            self._plot_curves()
            return {"start": start_eval, "final": {}, "steps": self.step_num,
                    "skipped_batches": self.skipped_batches, "processes": self.acc.num_processes}
        # Early stopping ends right after an evaluation of these very weights: it is the last point.
        if not self.stopped_early:
            final_eval = self._write_eval(writer)
        else:  # a resumed run that had stopped early reads that evaluation from its log
            final_eval = last_eval or (self._logged_eval(self._eval_rows(), self.step_num)
                                       if self.acc.is_main_process else {})
        _close(writer, pair_log)
        self.save_checkpoint()  # the last weights, so that --resume stays exact
        if tc.load_best_model_at_end and self.best is not None:
            final_eval = self._restore_best(final_eval)
        if tc.save_final:
            self.save_final(final_eval)
            if tc.push_to_hub and self.acc.is_main_process:
                self._push()
        if self.acc.is_main_process:
            self.method.finalize(self.out)
        curve = self._plot_curves()
        return {"start": start_eval, "final": final_eval, "steps": self.step_num,
                "skipped_batches": self.skipped_batches, "processes": self.acc.num_processes, "curve": curve,
                **self._best_summary(), **({"pair_filter": self.pair_filter} if self.pair_filter else {})}

    def _push(self) -> None:
        from robalign import hub

        tc = self.cfg.train
        repo = hub.push_folder(self.out / "final", tc.hub_model_id or self.out.resolve().name,
                               private=tc.hub_private_repo,
                               message=f"robalign: {self.method.name}, {self.step_num} steps")
        log.info("pushed %s to the hub: %s", self.out / "final", repo)

    def _note_best(self, evaluation: dict) -> None:
        if self.best is not None and evaluation:
            self.best.update(evaluation, self.step_num, round(self.epoch, 4), self.model)

    def _patience_exhausted(self) -> bool:
        """Early stopping, decided on the main process (which evaluates) and shared with the others."""
        if self.best is None or not self.best.patience:
            return False
        flag = torch.tensor([float(self.acc.is_main_process and self.best.exhausted)], device=self.acc.device)
        if self.acc.num_processes > 1:
            from accelerate.utils import broadcast

            flag = broadcast(flag, from_process=0)
        if flag.item():
            log.info("early stopping: %d evaluations without a better %s than %.4f (step %d)", self.best.since,
                     self.best.metric, self.best.value, self.best.step)
        return bool(flag.item())

    def _restore_best(self, last_eval: dict) -> dict:
        """Loads the best evaluation's weights on every process; returns that evaluation as logged."""
        self.acc.wait_for_everyone()
        best = self.best.describe() if self.acc.is_main_process else None
        if best is not None and best["step"] == self.step_num:
            return last_eval  # the last evaluation is the best: the weights are already these
        self.best.restore(self.model)
        return self._logged_eval(self._eval_rows(), self.best.step) if self.acc.is_main_process else {}

    def _best_summary(self) -> dict:
        if self.best is None or not self.acc.is_main_process:
            return {}
        return {"best": self.best.describe(), "stopped_early": self.stopped_early}

    @property
    def epoch(self) -> float:
        """Passes over the training pairs so far (micro-batches seen / micro-batches per epoch)."""
        return self.position / self.per_epoch

    def _evaluation_due(self, before: int) -> bool:
        """After the step that moved the data position from `before`: `eval_every` steps, or an epoch
        fraction (`eval_per_epoch`) crossed."""
        tc = self.cfg.train
        if tc.eval_every and self.step_num % tc.eval_every == 0:
            return True
        # As the decimal the user wrote (0.3 is 3/10, not the float's binary fraction): an epoch boundary
        # is then crossed exactly when it should be.
        n = Fraction(repr(float(tc.eval_per_epoch)))
        return bool(n) and (self.position * n) // self.per_epoch > (before * n) // self.per_epoch

    def _write_eval(self, writer) -> dict:
        """Evaluates on the held-out pairs and logs it with the training-fit shares and the epoch."""
        fit = self._fit_metrics()
        if self.history is not None:  # every process: the table is summed over them
            self.history.save(self.out / "train_margins.safetensors" if self.acc.is_main_process else None,
                              reduce=self._reduce)
        ev = self.evaluate()
        if writer:
            writer.write({"step": self.step_num, "epoch": round(self.epoch, 4), **ev, **fit})
        if ev:
            self._keep_margins()
        self._note_best(ev)
        return ev

    def _keep_margins(self):
        """Appends this evaluation's per-pair held-out margins to heldout_margins.safetensors (rows: evaluations,
        columns: held-out pairs in the evaluator's order, the same for every run on these pairs), so runs can be
        compared pair by pair (paired bootstrap) at any evaluated epoch."""
        from safetensors.torch import load_file

        path = self.out / "heldout_margins.safetensors"
        table = load_file(str(path)) if path.is_file() and self.step_num > 0 else {}
        steps = table.get("step", torch.zeros(0, dtype=torch.long))
        keep = steps < self.step_num  # a resumed run rewrites what it logged after its checkpoint
        new = {"step": torch.tensor([self.step_num]), "epoch": torch.tensor([self.epoch], dtype=torch.float64)}
        for key, value in self.evaluator.last_margins.items():
            if value is not None:
                new[key] = value.detach().float().cpu()[None]
        out = {k: torch.cat([table[k][keep], v]) if k in table else v for k, v in new.items()}
        atomic.write_tensors(out, path)

    def _plot_curves(self) -> list[dict]:
        """The run's evaluation rows (its learning curve), drawn to learning_curves.png."""
        from robalign.plots import learning_curves

        if not self.acc.is_main_process:
            return []
        rows = self._eval_rows()
        learning_curves(rows, self.out / "learning_curves.png", title=f"{self.method.name}, {self.out.name}")
        return rows

    def _finished_before(self) -> bool:
        """The run reached max_steps and wrote its end (final evaluation, final/ when asked) before."""
        return (self.out / "final").is_dir() or not self.cfg.train.save_final

    def _finished_summary(self) -> dict:
        """A resumed run that had already finished: its recorded start and end, nothing trained or appended."""
        log.warning("--resume: the run in %s had already finished at step %d; nothing to do", self.out,
                    self.step_num)
        rows = self._eval_rows()
        at = self.best.step if self.best is not None and self.cfg.train.load_best_model_at_end else self.step_num
        return {"start": self._logged_eval(rows, 0), "final": self._logged_eval(rows, at), **self._best_summary(),
                "steps": self.step_num, "finished_before": True,
                "skipped_batches": self.skipped_batches, "processes": self.acc.num_processes,
                "curve": rows}

    @staticmethod
    def _logged_eval(rows: list[dict], step: int) -> dict:
        """The `eval/` metrics logged at `step` (the last such row), or {}."""
        found = [r for r in rows if r["step"] == step]
        return {k: v for k, v in found[-1].items() if k.startswith("eval/")} if found else {}

    def _eval_rows(self) -> list[dict]:
        from robalign.metrics import read_jsonl

        path = self.out / "metrics.jsonl"
        if not path.is_file():
            return []
        return [r for r in read_jsonl(path) if r.get("eval/accuracy_M") is not None]

    def _progress(self):
        return progress.bar(total=self.cfg.train.max_steps, initial=self.step_num, desc=f"{self.method.name}",
                            wanted=self.cfg.train.progress and self.acc.is_main_process)

    def _writer(self, resume_step: int | None):
        """metrics.jsonl and the trackers, on the main process only (the others log nothing)."""
        if not self.acc.is_main_process:
            return None
        tc = self.cfg.train
        info = RunInfo(self.out, tc.run_name or self.out.resolve().name, self.cfg.to_dict(), resumed_at=resume_step)
        return MetricsWriter(self.out / "metrics.jsonl", trackers=Trackers(requested(tc), info),
                             resume_step=resume_step)

    def _log(self, writer, pair_log, metrics: dict):
        if writer is None or self.step_num % self.cfg.train.log_every:
            return
        record = {"step": self.step_num, "epoch": round(self.epoch, 4), "learning_rate": self.scheduler.get_last_lr()[0]}
        record.update({k: float(v) for k, v in metrics.items()})  # .item() only here, once per step
        writer.write(record)
        if pair_log is not None:
            jsonl.append(pair_log, self._pair_rows())

    def _pair_rows(self) -> list[dict]:
        """pairs.jsonl's rows of this step: each pair's per-pair records (and its flip flag, when known)."""
        rows = []
        for batch, per_pair in self.last_records:
            for i, pid in enumerate(batch.ids):
                row = {"step": self.step_num, "id": pid, **{k: float(v[i]) for k, v in per_pair.items()}}
                flipped = float(batch.is_flipped[i])
                if not math.isnan(flipped):
                    row["is_flipped"] = bool(flipped)
                rows.append(row)
        return rows

    def evaluate(self) -> dict:
        if not self.acc.is_main_process:
            return {}
        with self.eval_precision.autocast():
            return self.evaluator.evaluate(self.model)

    # ------------------------------------------------------------------------------ save / load
    def _write_config(self):
        with open(self.out / "config.yaml", "w") as fh:
            yaml.safe_dump(self.cfg.to_dict(), fh, sort_keys=False)

    def save_checkpoint(self):
        self.acc.wait_for_everyone()
        # Per-process tallies are checkpointed summed over the processes and restored on the main one only,
        # so a resumed run counts every pair once (`_resume`).
        fit = self._reduce(self.fit)
        history = self.history.state(self._reduce) if self.history else None
        if not self.acc.is_main_process:
            return
        ckpt.save_checkpoint(self.out / "checkpoints", self.step_num, model=self.model,
                             optimizer=self.optimizer.optimizer if hasattr(self.optimizer, "optimizer")
                             else self.optimizer, scheduler=self.scheduler,
                             state={"position": self.position, "skipped_batches": self.skipped_batches,
                                    "fit": fit.cpu().tolist(), "stopped_early": self.stopped_early,
                                    **({"best": self.best.state()} if self.best is not None else {}),
                                    **self.scaling.state_dict()},
                             keep_last=self.cfg.train.keep_last,
                             tensors={f"pair_history/{k}": v for k, v in (history or {}).items()})

    def _resume(self):
        ckpt.remove_partial(self.out / "checkpoints")
        opt = self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer
        loaded = ckpt.load_latest(self.out / "checkpoints", model=self.model, optimizer=opt,
                                  scheduler=self.scheduler)
        if loaded is None:  # killed before the first checkpoint: nothing to lose, start over
            log.warning("--resume: no complete checkpoint in %s; starting from step 0", self.out / "checkpoints")
            if self.acc.is_main_process:
                self.out.mkdir(parents=True, exist_ok=True)
                self._write_config()
            return
        path, state = loaded
        self.step_num, self.position = state["step"], state["position"]
        self.skipped_batches = state.get("skipped_batches", 0)
        main = self.acc.is_main_process  # the saved tallies are the sum over processes: one holds them
        self.fit = torch.tensor(state.get("fit", [0.0] * 4)) if main else torch.zeros(4)
        if self.history is not None:
            saved = {k.split("/", 1)[1]: v for k, v in state["tensors"].items() if k.startswith("pair_history/")}
            # before tensors were checkpointed, the table was JSON lists in state.json
            self.history.load_state((saved or state.get("pair_history")) if main else None)
        self.stopped_early = bool(state.get("stopped_early", False))
        if self.best is not None:
            self.best.load_state(state.get("best"))
        self.scaling.load_state_dict(state)
        log.info("resumed from %s at step %d", path, self.step_num)

    def save_final(self, final_eval: dict | None = None):
        """`final/`: a plain transformers model (LoRA merged) plus the adapter in `final/adapter/`, each with a
        model card; an adapter names its base by hub id, so it loads on any machine."""
        from robalign import model_card

        self.acc.wait_for_everyone()
        if not self.acc.is_main_process:
            return
        model = self.model
        base = model_card.base_model_id(self.cfg.model.name)
        # `.tmp-final` (not a per-process name): --overwrite removes it with the run's other files.
        with atomic.directory(self.out / "final", tmp=self.out / ".tmp-final") as tmp:
            if hasattr(model, "merge_and_unload"):
                for adapter_cfg in model.peft_config.values():
                    adapter_cfg.base_model_name_or_path = base
                model.save_pretrained(tmp / "adapter")
                model_card.write(tmp / "adapter", self.cfg, final_eval or {}, base=base, adapter=True)
                merged = copy.deepcopy(model).merge_and_unload()
                merged.save_pretrained(tmp)
            else:
                model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            model_card.write(tmp, self.cfg, final_eval or {}, base=base)
