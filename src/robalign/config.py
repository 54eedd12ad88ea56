"""Typed run configuration: dataclasses loaded from YAML and overridable from the command line.

Every field is documented once, in its `metadata["help"]`; `robalign train --help` prints them.
Unknown keys and invalid values raise `ConfigError` at load time, never at step 500.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from robalign.errors import ConfigError


def _f(default, help: str, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelConfig:
    name: str = _f("smollm2-135m-instruct", "Model: a local directory, hub id, .gguf file, "
                   "'smollm2-135m-instruct' (built-in GGUF) or 'tiny-llama' (random, for tests).")
    lora_r: int = _f(16, "LoRA rank; 0 means full fine-tuning with a frozen reference copy.")
    lora_alpha: float = _f(32.0, "LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = _f(0.0, "Dropout inside LoRA layers (0 keeps GAPO's passes identical).")
    lora_target_modules: list = _f(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                    "down_proj"], "Module names that receive LoRA adapters.")
    reference: str = _f("auto", "Reference log-probs: 'auto' (adapters disabled under LoRA, frozen copy "
                        "otherwise), 'copy', 'adapters_disabled', or 'cached' (precomputed on disk).")
    trust_remote_code: bool = _f(False, "Allow model code from the hub to run (off unless you trust it).")
    seed: int = _f(0, "Seed of the random weights of 'tiny-llama'.")
    train_last_k: int = _f(0, "Train only the last k transformer blocks (their full weights, or LoRA on them "
                           "only), everything below them frozen ('freeze' tuning); 0 = all blocks.")
    trunk_cache: str = _f("off", "Compute the frozen blocks below train_last_k once per pair and run only the "
                          "last k blocks afterwards: 'off', 'memory', or 'disk' (shared by every run over the same "
                          "texts and base model). Exact; offline methods only.")
    trunk_cache_dir: str = _f("", "Folder of the on-disk trunk cache ('' = $ROBALIGN_CACHE/trunk).")
    dtype: str = _f("auto", "Dtype the weights are loaded, stored and multiplied in: 'auto' (the checkpoint's; "
                    "fp32 for the built-in GGUF model and tiny-llama), 'fp32', 'bf16' or 'fp16' (fp16 only with "
                    "LoRA: fp32 adapters, loss scaling). The saved final/ model keeps it. docs/precision.md")
    attn_implementation: str = _f("auto", "Attention kernel: 'auto' (= sdpa, exact for every batch layout), "
                                  "'sdpa', 'eager', or 'flash_attention_2' (CUDA, fp16/bf16; runs the padded "
                                  "2B-row layout, since it takes no shared-prompt packing mask).")
    quantization: str = _f("none", "QLoRA: 'none', '4bit' (NF4) or '8bit' base weights through bitsandbytes "
                           "(CUDA only), with LoRA on top and the adapter-disabled model as reference.")

    def validate(self):
        _check(self.lora_r >= 0, "model.lora_r", "must be >= 0")
        _check(self.lora_alpha > 0, "model.lora_alpha", "must be > 0")
        _check(0 <= self.lora_dropout < 1, "model.lora_dropout", "must be in [0, 1)")
        _choice(self.reference, ("auto", "copy", "adapters_disabled", "cached"), "model.reference")
        if self.reference == "adapters_disabled" and self.lora_r == 0:
            raise ConfigError("model.reference: 'adapters_disabled' needs LoRA (lora_r > 0)")
        _check(self.train_last_k >= 0, "model.train_last_k", "must be >= 0 (0 = train all blocks)")
        _choice(self.trunk_cache, ("off", "memory", "disk"), "model.trunk_cache")
        if self.trunk_cache != "off" and self.train_last_k == 0:
            raise ConfigError("model.trunk_cache: needs a frozen trunk; set model.train_last_k (e.g. 2) so that "
                              "only the last k blocks train")
        from robalign.precision import ATTENTION, MODEL_DTYPES, QUANTIZATION

        _choice(self.dtype, MODEL_DTYPES, "model.dtype")
        _choice(self.attn_implementation, ATTENTION, "model.attn_implementation")
        _choice(self.quantization, QUANTIZATION, "model.quantization")
        if self.dtype == "fp16" and self.lora_r == 0:
            from robalign.precision import check_precision_plan

            check_precision_plan("fp16", "no", lora_r=0, device="cuda")
        if self.quantization != "none":
            # The quantized base is frozen and cannot be copied exactly: only adapters train, and the
            # reference is the same network with them off.
            _check(self.lora_r > 0, "model.quantization", f"{self.quantization!r} needs LoRA (model.lora_r > 0)")
            _check(self.reference in ("auto", "adapters_disabled"), "model.quantization",
                   f"{self.quantization!r} needs model.reference: auto or adapters_disabled (not {self.reference!r})")
            _check(self.trunk_cache == "off", "model.quantization", "cannot be combined with model.trunk_cache")


@dataclass
class DataConfig:
    train: str = _f("", "Training preference data: .jsonl[.gz] / .json / .parquet path or 'hf:NAME'.")
    eval: str = _f("", "Held-out data (same formats); empty = split `eval_fraction` off the training set.")
    eval_fraction: float = _f(0.1, "Share of the training data held out when `eval` is empty.")
    max_length: int = _f(512, "Maximum tokens of prompt + completion (completion keeps its start).")
    max_prompt_length: int = _f(-1, "Prompt tokens kept (its end is kept), < max_length; -1 = half of "
                                "max_length; 0 = never truncate (a prompt that fills the budget is an error).")
    skip_invalid: bool = _f(False, "Skip and count invalid rows instead of stopping with an error.")
    limit: int = _f(0, "Use only the first N training pairs (0 = all).")
    eval_limit: int = _f(0, "Use only the first N evaluation pairs (0 = all).")
    keep_fraction: float = _f(1.0, "Train only on this share of the training pairs: those whose given label the "
                              "base model agrees with most (its length-normalised margin M, computed once before "
                              "training); the rest are dropped as likely mislabelled. 1 = all. Offline methods. "
                              "docs/long_training.md")

    @property
    def prompt_budget(self) -> int:
        """Prompt tokens kept; 0 = never truncate."""
        return self.max_length // 2 if self.max_prompt_length == -1 else self.max_prompt_length

    def validate(self):
        _check(0 <= self.eval_fraction < 1, "data.eval_fraction", "must be in [0, 1)")
        _check(self.max_length >= 8, "data.max_length", "must be >= 8")
        _check(-1 <= self.max_prompt_length < self.max_length, "data.max_prompt_length",
               "must be -1, 0 or in [1, max_length)")
        _check(self.limit >= 0 and self.eval_limit >= 0, "data.limit", "must be >= 0")
        _check(0 < self.keep_fraction <= 1, "data.keep_fraction", "must be in (0, 1]")


@dataclass
class MethodConfig:
    name: str = _f("dpo", "Training method: a loss of SPEC §2 (dpo ipo hinge cdpo rdpo simpo hypo sympo "
                   "drdpo oracle_robust_offline), gapo, sail or oracle_robust. TRL's loss_type names: sigmoid "
                   "= dpo, robust = rdpo (label_smoothing = epsilon), hinge = hinge; TRL's ipo = ipo with "
                   "normalize_length: true.")
    beta: float | None = _f(None, "Inverse temperature β of the implicit reward (None = method default).")
    epsilon: float | None = _f(None, "Assumed flip rate ε of cdpo / rdpo, in [0, 0.5).")
    rho: float | None = _f(None, "Robustness radius ρ of oracle_robust_offline / oracle_robust, in [0, 0.5).")
    gamma: float | None = _f(None, "Target margin γ of simpo / gapo.")
    beta_prime: float | None = _f(None, "Dr.DPO temperature β′ of the batch-level log-mean-exp.")
    normalize_length: bool | None = _f(None, "IPO on length-averaged log-ratios instead of sums.")
    kind: str | None = _f(None, "SymPO loss shape: 'ramp' or 'sigmoid'.")
    sft_weight: float = _f(0.0, "Weight of the SFT (RPO) term NLL(chosen) added to the loss.")
    sft_reduction: str = _f("mean", "SFT NLL over tokens: 'mean' or 'sum' (Liu et al.'s RPO).")

    def loss_params(self) -> dict:
        """The loss parameters the user set (None = leave the method default)."""
        keys = ("beta", "epsilon", "rho", "gamma", "beta_prime", "normalize_length", "kind")
        params = {k: getattr(self, k) for k in keys if getattr(self, k) is not None}
        if self.sft_weight:
            params.update(sft_weight=self.sft_weight, sft_reduction=self.sft_reduction)
        return params

    def validate(self):
        from robalign.methods import canonical_name, validate_method

        _check(self.sft_weight >= 0, "method.sft_weight", "must be >= 0")
        _choice(self.sft_reduction, ("mean", "sum"), "method.sft_reduction")
        try:
            self.name = canonical_name(self.name, self.loss_params())  # TRL's loss names -> ours
            validate_method(self.name, self.loss_params())
        except (ValueError, TypeError) as err:
            raise ConfigError(f"method: {err}") from None


ACTIVATION_CHECKPOINTING = ("none", "selective", "full")
BEST_METRICS = ("auto", "accuracy_h", "accuracy_M", "margin_h", "margin_M")


@dataclass
class TrainConfig:
    output_dir: str = _f("runs/robalign", "Run directory: metrics.jsonl, config.yaml, checkpoints/, final/.")
    seed: int = _f(0, "Seed of data order, dropout and any sampling.")
    batch_size: int = _f(4, "Preference pairs per micro-batch per process.")
    grad_accum: int = _f(1, "Micro-batches accumulated per optimiser step.")
    max_steps: int = _f(100, "Optimiser steps of the whole run (sets the learning-rate schedule).")
    epochs: float = _f(0.0, "Budget in passes over the training pairs instead of max_steps (> 0 sets max_steps "
                       "to ceil(epochs x steps per epoch)); 0 = use max_steps.")
    eval_per_epoch: int = _f(1, "Held-out evaluations per epoch (learning curves; 0 = none at epoch ends).")
    stop_after: int = _f(0, "Stop after this many steps with a checkpoint, schedule unchanged, so that "
                         "--resume continues the same run (0 = run to max_steps).")
    optimizer: str = _f("adamw", "'adamw' or 'sgd'.")
    lr: float = _f(5e-5, "Peak learning rate.")
    weight_decay: float = _f(0.0, "Decoupled weight decay (AdamW) / L2 (SGD).")
    warmup_steps: int = _f(0, "Linear warm-up steps.")
    schedule: str = _f("cosine", "Learning-rate schedule after warm-up: 'constant', 'linear' or 'cosine'.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 = no clipping).")
    eval_every: int = _f(0, "Evaluate every N steps (0 = only at the end).")
    eval_at_start: bool = _f(True, "Also evaluate before the first step (the 'before' column).")
    load_best_model_at_end: bool = _f(False, "End with the weights of the best evaluation (metric_for_best_model): "
                                      "final/ and the final metrics are the best evaluation's; the last weights stay "
                                      "in checkpoints/. Against memorised label noise (docs/long_training.md).")
    metric_for_best_model: str = _f("auto", "Evaluation metric that picks the best evaluation, higher is better: "
                                    "'auto' (accuracy_h when the run has a reference, else accuracy_M), "
                                    "'accuracy_h', 'accuracy_M', 'margin_h' or 'margin_M'.")
    early_stopping_patience: int = _f(0, "Stop after this many evaluations in a row without a new best "
                                      "(metric_for_best_model); 0 = never stop early.")
    save_every: int = _f(0, "Checkpoint every N steps (0 = only at the end).")
    keep_last: int = _f(2, "Checkpoints kept on disk (older ones are deleted).")
    save_final: bool = _f(True, "Write final/ (a plain transformers model, LoRA merged) at the end.")
    push_to_hub: bool = _f(False, "Upload final/ (model, tokenizer, adapter, model card) to the hub at the end; the "
                           "hub and a token are checked before training starts.")
    hub_model_id: str = _f("", "Hub repository for push_to_hub: 'user/name', or 'name' under your account "
                           "('' = the output directory's name).")
    hub_private_repo: bool = _f(False, "Create the hub repository private.")
    log_every: int = _f(1, "Write a metrics line every N steps.")
    report_to: list = _f([], "Trackers that also get the metrics (TRL's report_to): tensorboard (output_dir/tb), "
                         "wandb, trackio, mlflow (output_dir/mlflow.db unless MLFLOW_TRACKING_URI), or none; a list "
                         "or a comma string. Projects: WANDB_PROJECT, TRACKIO_PROJECT, MLFLOW_EXPERIMENT_NAME "
                         "(default robalign).")
    run_name: str = _f("", "The run's name in the trackers ('' = the output directory's name).")
    tensorboard: bool = _f(False, "Same as tensorboard in report_to (kept for older configs).")
    on_nonfinite: str = _f("stop", "A NaN/Inf loss or gradient: 'stop' the run or 'skip' the batch.")
    threads: int = _f(0, "torch CPU threads (0 = leave torch's default).")
    activation_checkpointing: str = _f(
        "none", "Recompute in the backward instead of keeping activations: 'none', 'selective' (keep "
        "matmul and attention outputs, recompute the elementwise work: about half the activation memory "
        "for ~1.1x the step time) or 'full' (keep block inputs only: ~1.2x). Results are bit-identical.")
    progress: bool = _f(True, "Show a progress bar.")
    mixed_precision: str = _f(
        "auto", "Autocast over fp32 master weights through accelerate: 'no', 'bf16', 'fp16' (GPU; with loss "
        "scaling), or 'auto' = what `accelerate launch --mixed_precision` / ACCELERATE_MIXED_PRECISION says, else "
        "'no'. A config value that contradicts the launcher is an error. Losses and log-softmax stay fp32.")
    device: str = _f("auto", "'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'mps' (only when asked).")

    def validate(self):
        for key in ("batch_size", "grad_accum", "max_steps", "keep_last", "log_every"):
            _check(getattr(self, key) >= 1, f"train.{key}", "must be >= 1")
        for key in ("warmup_steps", "eval_every", "save_every", "threads", "weight_decay", "max_grad_norm",
                    "stop_after", "eval_per_epoch", "early_stopping_patience"):
            _check(getattr(self, key) >= 0, f"train.{key}", "must be >= 0")
        _check(self.lr > 0 and math.isfinite(self.lr), "train.lr", "must be a positive number")
        _check(0 <= self.epochs < 1e6 and math.isfinite(self.epochs), "train.epochs", "must be >= 0")
        _choice(self.optimizer, ("adamw", "sgd"), "train.optimizer")
        _choice(self.schedule, ("constant", "linear", "cosine"), "train.schedule")
        _choice(self.on_nonfinite, ("stop", "skip"), "train.on_nonfinite")
        _choice(self.activation_checkpointing, ACTIVATION_CHECKPOINTING, "train.activation_checkpointing")
        _choice(self.metric_for_best_model, BEST_METRICS, "train.metric_for_best_model")
        if (self.load_best_model_at_end or self.early_stopping_patience) and not (self.eval_every or
                                                                                   self.eval_per_epoch):
            raise ConfigError("train.load_best_model_at_end / early_stopping_patience: need evaluations during the "
                              "run; set train.eval_per_epoch (e.g. 1) or train.eval_every")
        _check_report_to(self.report_to)
        if self.push_to_hub and not self.save_final:
            raise ConfigError("train.push_to_hub: needs train.save_final (it uploads final/)")
        from robalign.precision import DEVICES, MIXED_PRECISION

        _choice(self.mixed_precision, MIXED_PRECISION, "train.mixed_precision")
        _choice(self.device, DEVICES, "train.device")


SECTIONS = {"model": ModelConfig, "data": DataConfig, "method": MethodConfig, "train": TrainConfig}


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # Method-specific sections (gapo, online) register themselves here via `register_section`.
    extra: dict = field(default_factory=dict)

    def validate(self) -> RunConfig:
        for section in self.sections().values():
            section.validate()
        self._validate_across_sections()
        return self

    def _validate_across_sections(self):
        """Combinations of keys from several sections (precision, attention, quantization)."""
        from robalign.precision import check_attention, check_precision_plan, resolve_attention

        mc, mixed = self.model, self.train.mixed_precision
        if mc.dtype in ("bf16", "fp16") and mixed in ("bf16", "fp16"):
            check_precision_plan(mc.dtype, mixed, lora_r=mc.lora_r, device="cuda")
        gapo = self.extra.get("gapo")
        first_order = self.method.name == "gapo" and gapo is not None and gapo.anchor == "first_order"
        if mc.quantization != "none" and self.method.name == "gapo":
            raise ConfigError(f"model.quantization: {mc.quantization!r} with method gapo: the anchor perturbs the "
                              "frozen base weights, which are quantized; use model.quantization: none")
        # Only the device-independent refusals here; the trainer checks the rest where it runs.
        impl = resolve_attention(mc.attn_implementation)
        if mc.trunk_cache != "off" or first_order:
            check_attention(impl, device="cuda", compute="bf16", trunk_cache=mc.trunk_cache,
                            gapo_first_order=first_order, installed=True)

    def sections(self) -> dict:
        out = {name: getattr(self, name) for name in SECTIONS}
        out.update(self.extra)
        return out

    def to_dict(self) -> dict:
        return {name: dataclasses.asdict(sec) for name, sec in self.sections().items()}


_EXTRA_SECTIONS: dict[str, type] = {}


def register_section(name: str):
    """Class decorator: adds a method-specific config section (e.g. `gapo:`) to every RunConfig."""

    def wrap(cls):
        _EXTRA_SECTIONS[name] = cls
        return cls

    return wrap


def section_types() -> dict[str, type]:
    # Importing robalign.methods registers the method-specific sections.
    import robalign.methods  # noqa: F401

    return {**SECTIONS, **_EXTRA_SECTIONS}


def _check_report_to(names: list):
    from robalign.trackers import REPORT_TO

    for name in names:
        _choice(name, REPORT_TO, "train.report_to")
    if "none" in names and len(names) > 1:
        raise ConfigError(f"train.report_to: 'none' together with {', '.join(n for n in names if n != 'none')}; "
                          "give either none or the trackers")


def _check(ok: bool, key: str, problem: str):
    if not ok:
        raise ConfigError(f"{key}: {problem}")


def _choice(value, choices, key: str):
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")


def _coerce(value, annotation, key: str):
    """Converts a YAML or command-line value to the field's declared type, or raises ConfigError."""
    tp = annotation
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        tp = args[0]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
    elif tp in (int, float):
        # An int field takes ints (never 1.5); a float field takes either; text is parsed; bools never.
        if isinstance(value, (int, float)) and not isinstance(value, bool) and (tp is float or isinstance(value, int)):
            return tp(value)
        if isinstance(value, str):
            try:
                return tp(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif tp is list or typing.get_origin(tp) is list:
        if isinstance(value, list):
            # Only plain values: a nested (or, through a YAML alias, self-containing) list is never a setting.
            if all(isinstance(v, (str, int, float, bool)) for v in value):
                return value
            raise ConfigError(f"{key}: expected a list of plain values, got a list holding "
                              f"{type(next(v for v in value if not isinstance(v, (str, int, float, bool)))).__name__}")
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
    elif tp is dict:
        if isinstance(value, dict):
            return value
    raise ConfigError(f"{key}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _section_fields(cls) -> dict:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def build_config(tree: dict | None = None, overrides: dict | None = None, source: str = "config") -> RunConfig:
    """Builds and validates a RunConfig from a nested dict plus flat or dotted overrides.

    Args:
        tree: `{section: {key: value}}`, e.g. parsed YAML.
        overrides: `{"key": value}` or `{"section.key": value}`; a bare key must name exactly one field.
        source: where `tree` came from, for error messages.
    """
    types_ = section_types()
    values: dict[str, dict] = {name: {} for name in types_}
    tree = tree or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections ({', '.join(types_)})")
    for section, body in tree.items():
        if section not in types_:
            raise ConfigError(f"{source}: unknown section {section!r} (valid: {', '.join(types_)})")
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: section {section!r} must be a mapping")
        for key, value in body.items():
            _set(values, types_, section, key, value, source)
    for key, value in (overrides or {}).items():
        section, name = _resolve_key(key, types_)
        _set(values, types_, section, name, value, "command line")
    sections = {name: types_[name](**vals) for name, vals in values.items()}
    cfg = RunConfig(**{k: sections.pop(k) for k in SECTIONS}, extra=sections)
    return cfg.validate()


def _set(values, types_, section, key, value, source):
    fields_ = _section_fields(types_[section])
    if key not in fields_:
        raise ConfigError(f"{source}: unknown key {section}.{key} (valid: {', '.join(fields_)})")
    values[section][key] = _coerce(value, fields_[key], f"{section}.{key}")


def _resolve_key(key: str, types_) -> tuple[str, str]:
    key = key.replace("-", "_")
    if "." in key:
        section, name = key.split(".", 1)
        if section not in types_:
            raise ConfigError(f"unknown config section {section!r} in --{key}")
        return section, name
    owners = [s for s, cls in types_.items() if key in _section_fields(cls)]
    if not owners:
        raise ConfigError(f"unknown option --{key.replace('_', '-')} (see `robalign train --help`)")
    if len(owners) > 1:
        raise ConfigError(f"--{key} is ambiguous; write it as one of " + ", ".join(f"--{s}.{key}" for s in owners))
    return owners[0], key


class _ConfigLoader(yaml.SafeLoader):
    """Safe YAML with two more refusals: a key given twice in one mapping (the second would silently win),
    and more than `MAX_ALIASES` aliases (a config needs a few; thousands are an expansion bomb)."""

    MAX_ALIASES = 100

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases = getattr(self, "_aliases", 0) + 1
            if self._aliases > self.MAX_ALIASES:
                raise yaml.YAMLError(f"more than {self.MAX_ALIASES} aliases (*name); write the values out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (first on line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path):
    """A YAML file's content, or one ConfigError naming the file and what is wrong with it."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}); save the file as UTF-8") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read it: {err.strerror or err}") from None
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None


# Keys holding paths that a YAML file states relative to its own folder (a config and its data travel together).
# model.name only where it is a path: built-in names and hub ids stay as they are.
PATH_KEYS = {("data", "train"), ("data", "eval"), ("train", "output_dir"), ("model", "trunk_cache_dir")}


def _is_model_path(name: str, base: Path) -> bool:
    from robalign.models import DEFAULT_MODEL, TINY_MODEL

    if name in (DEFAULT_MODEL, TINY_MODEL):
        return False
    return name.startswith(("./", "../", "~")) or name.endswith(".gguf") or (base / name).exists()


def resolve_paths(tree, base: Path):
    """`tree` with its relative paths (`PATH_KEYS`, and model.name when it is a path) made absolute against
    `base`, the config file's folder; 'hf:' sources, empty values and anything not a string stay as they are."""
    if not isinstance(tree, dict):
        return tree
    out = {s: dict(body) if isinstance(body, dict) else body for s, body in tree.items()}
    for (section, key) in [*PATH_KEYS, ("model", "name")]:
        value = out.get(section, {}).get(key) if isinstance(out.get(section), dict) else None
        if not isinstance(value, str) or not value or value.startswith("hf:"):
            continue
        if key == "name" and not _is_model_path(value, base):
            continue
        out[section][key] = os.path.abspath(base / os.path.expanduser(value))
    return out


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> RunConfig:
    """Loads a YAML config file (optional) and applies command-line overrides.

    Relative paths in the file are read from the file's folder (`resolve_paths`); those given as overrides
    (the command line) from the working directory.
    """
    tree = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        tree = resolve_paths(read_yaml(path) or {}, path.parent)
    return build_config(tree, overrides, source=str(path or "config"))


def describe_fields() -> list[tuple[str, str, object]]:
    """(dotted key, help, default) for every field, for --help output and docs."""
    rows = []
    for section, cls in section_types().items():
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((f"{section}.{f.name}", f.metadata.get("help", ""), default))
    return rows
