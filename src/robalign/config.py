"""Typed run configuration: dataclasses loaded from YAML and overridable from the command line.

Every field is documented once, in its `metadata["help"]`; `robalign train --help` prints them.
Unknown keys and invalid values raise `ConfigError` at load time, never at step 500.

Sections: `model:`, `data:`, `train:`, `online:` (generation, shared by the online methods) and `method:`,
which holds `name` and that method's parameters: the fields of its `Params` (robalign.methods.METHODS),
so this module knows no method. A section named after the method (`gapo:`, `sail:`, `oracle_robust:` in
older configs) holds more keys of the same `Params`; one named after another method is checked and unused.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from robalign.errors import ConfigError
from robalign.online.settings import OnlineConfig
from robalign.settings import (
    Params,
    check,
    choice,
    coerce,
    default_of,
    field_types,
    ordered_fields,
    setting,
    valid_values,
)


@dataclass
class ModelConfig:
    name: str = setting("smollm2-135m-instruct", "Model: a local directory, hub id, .gguf file, "
                        "'smollm2-135m-instruct' (built-in GGUF) or 'tiny-llama' (random, for tests).")
    lora_r: int = setting(16, "LoRA rank; 0 means full fine-tuning with a frozen reference copy.")
    lora_alpha: float = setting(32.0, "LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = setting(0.0, "Dropout inside LoRA layers (0 keeps GAPO's passes identical).")
    lora_target_modules: list = setting(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                         "down_proj"], "Module names that receive LoRA adapters.")
    reference: str = setting("auto", "Reference log-probs: 'auto' (adapters disabled under LoRA, frozen copy "
                             "otherwise), 'copy', 'adapters_disabled', or 'cached' (precomputed on disk).")
    trust_remote_code: bool = setting(False, "Allow model code from the hub to run (off unless you trust it).")
    seed: int = setting(0, "Seed of the random weights of 'tiny-llama'.")
    train_last_k: int = setting(0, "Train only the last k transformer blocks (their full weights, or LoRA on them "
                                "only), everything below them frozen ('freeze' tuning); 0 = all blocks.")
    trunk_cache: str = setting("off", "Compute the frozen blocks below train_last_k once per pair and run only the "
                               "last k blocks afterwards: 'off', 'memory', or 'disk' (shared by every run over the same "
                               "texts and base model). Exact; offline methods only.")
    trunk_cache_dir: str = setting("", "Folder of the on-disk trunk cache ('' = $ROBALIGN_CACHE/trunk).")
    dtype: str = setting("auto", "Dtype the weights are loaded, stored and multiplied in: 'auto' (the checkpoint's; "
                         "fp32 for the built-in GGUF model and tiny-llama), 'fp32', 'bf16' or 'fp16' (fp16 only with "
                         "LoRA: fp32 adapters, loss scaling). The saved final/ model keeps it. docs/precision.md")
    attn_implementation: str = setting("auto", "Attention kernel: 'auto' (= sdpa, exact for every batch layout), "
                                       "'sdpa', 'eager', or 'flash_attention_2' (CUDA, fp16/bf16; runs the padded "
                                       "2B-row layout, since it takes no shared-prompt packing mask).")
    quantization: str = setting("none", "QLoRA: 'none', '4bit' (NF4) or '8bit' base weights through bitsandbytes "
                                "(CUDA only), with LoRA on top and the adapter-disabled model as reference.")

    def validate(self):
        check(self.lora_r >= 0, "model.lora_r", "must be >= 0")
        check(self.lora_alpha > 0, "model.lora_alpha", "must be > 0")
        check(0 <= self.lora_dropout < 1, "model.lora_dropout", "must be in [0, 1)")
        choice(self.reference, ("auto", "copy", "adapters_disabled", "cached"), "model.reference")
        if self.reference == "adapters_disabled" and self.lora_r == 0:
            raise ConfigError("model.reference: 'adapters_disabled' needs LoRA (lora_r > 0)")
        check(self.train_last_k >= 0, "model.train_last_k", "must be >= 0 (0 = train all blocks)")
        choice(self.trunk_cache, ("off", "memory", "disk"), "model.trunk_cache")
        if self.trunk_cache != "off" and self.train_last_k == 0:
            raise ConfigError("model.trunk_cache: needs a frozen trunk; set model.train_last_k (e.g. 2) so that "
                              "only the last k blocks train")
        from robalign.precision import ATTENTION, MODEL_DTYPES, QUANTIZATION

        choice(self.dtype, MODEL_DTYPES, "model.dtype")
        choice(self.attn_implementation, ATTENTION, "model.attn_implementation")
        choice(self.quantization, QUANTIZATION, "model.quantization")
        if self.dtype == "fp16" and self.lora_r == 0:
            from robalign.precision import check_precision_plan

            check_precision_plan("fp16", "no", lora_r=0, device="cuda")
        if self.quantization != "none":
            # The quantized base is frozen and cannot be copied exactly: only adapters train, and the
            # reference is the same network with them off.
            check(self.lora_r > 0, "model.quantization", f"{self.quantization!r} needs LoRA (model.lora_r > 0)")
            check(self.reference in ("auto", "adapters_disabled"), "model.quantization",
                   f"{self.quantization!r} needs model.reference: auto or adapters_disabled (not {self.reference!r})")
            check(self.trunk_cache == "off", "model.quantization", "cannot be combined with model.trunk_cache")


@dataclass
class DataConfig:
    train: str = setting("", "Training preference data: .jsonl[.gz] / .json / .parquet path or 'hf:NAME'.")
    eval: str = setting("", "Held-out data (same formats); empty = split `eval_fraction` off the training set.")
    eval_fraction: float = setting(0.1, "Share of the training data held out when `eval` is empty.")
    max_length: int = setting(512, "Maximum tokens of prompt + completion (completion keeps its start).")
    max_prompt_length: int = setting(-1, "Prompt tokens kept (its end is kept), < max_length; -1 = half of "
                                     "max_length; 0 = never truncate (a prompt that fills the budget is an error).")
    skip_invalid: bool = setting(False, "Skip and count invalid rows instead of stopping with an error.")
    limit: int = setting(0, "Use only the first N training pairs (0 = all).")
    eval_limit: int = setting(0, "Use only the first N evaluation pairs (0 = all).")
    keep_fraction: float = setting(1.0, "Train only on this share of the training pairs: those whose given label "
                                   "the base model agrees with most (its length-normalised margin M, computed once "
                                   "before training); the rest are dropped as likely mislabelled. 1 = all. Offline "
                                   "methods. docs/long_training.md")

    @property
    def prompt_budget(self) -> int:
        """Prompt tokens kept; 0 = never truncate."""
        return self.max_length // 2 if self.max_prompt_length == -1 else self.max_prompt_length

    def validate(self):
        check(0 <= self.eval_fraction < 1, "data.eval_fraction", "must be in [0, 1)")
        check(self.max_length >= 8, "data.max_length", "must be >= 8")
        check(-1 <= self.max_prompt_length < self.max_length, "data.max_prompt_length",
               "must be -1, 0 or in [1, max_length)")
        check(self.limit >= 0 and self.eval_limit >= 0, "data.limit", "must be >= 0")
        check(0 < self.keep_fraction <= 1, "data.keep_fraction", "must be in (0, 1]")


METHOD_NAME_HELP = ("Training method: a preference loss (dpo ipo hinge cdpo rdpo simpo hypo sympo drdpo "
                    "oracle_robust_offline), gapo, sail or oracle_robust. TRL's loss_type names: sigmoid = dpo, "
                    "robust = rdpo (label_smoothing = epsilon), hinge = hinge; TRL's ipo = ipo with "
                    "normalize_length: true. Its parameters are the other method.* keys (docs/methods.md).")


@dataclass
class MethodConfig:
    """The `method:` section: the method's name and its parameters, a `Params` of that method.

    `cfg.method.beta` reads `cfg.method.params.beta`.
    """

    name: str = "dpo"
    params: Params | None = None
    given: dict = field(default_factory=dict)  # the parameters the config set (the rest are the defaults)

    def __post_init__(self):
        if self.params is None:
            self.params = _registry().method_params(self.name, self.given)

    def __getattr__(self, key):
        if key.startswith("__") or key in ("name", "params", "given"):
            raise AttributeError(key)
        try:
            return getattr(self.params, key)
        except AttributeError:
            raise AttributeError(f"method {self.name!r} has no parameter {key!r}") from None

    def loss_params(self) -> dict:
        """The method parameters the config set (the others are the method's defaults)."""
        return dict(self.given)

    def validate(self):
        """Checked on construction (`Params`); nothing is left to check."""

    def to_dict(self) -> dict:
        return {"name": self.name, **self.params.to_dict()}


def _registry():
    # The method registry imports no config, so this import closes no cycle; it is lazy only because it
    # loads torch and the methods, which the CLI's argument parsing does not need.
    import robalign.methods

    return robalign.methods


ACTIVATION_CHECKPOINTING = ("none", "selective", "full")
BEST_METRICS = ("auto", "accuracy_h", "accuracy_M", "margin_h", "margin_M")


@dataclass
class TrainConfig:
    output_dir: str = setting("runs/robalign", "Run directory: metrics.jsonl, config.yaml, checkpoints/, final/.")
    seed: int = setting(0, "Seed of data order, dropout and any sampling.")
    batch_size: int = setting(4, "Preference pairs per micro-batch per process.")
    grad_accum: int = setting(1, "Micro-batches accumulated per optimiser step.")
    max_steps: int = setting(100, "Optimiser steps of the whole run (sets the learning-rate schedule).")
    epochs: float = setting(0.0, "Budget in passes over the training pairs instead of max_steps (> 0 sets max_steps "
                            "to ceil(epochs x steps per epoch)); 0 = use max_steps.")
    eval_per_epoch: float = setting(1, "Held-out evaluations per epoch (learning curves; 0 = none at epoch ends; "
                                    "0.5 = every second epoch).")
    stop_after: int = setting(0, "Stop after this many steps with a checkpoint, schedule unchanged, so that "
                              "--resume continues the same run (0 = run to max_steps).")
    optimizer: str = setting("adamw", "'adamw' or 'sgd'.")
    lr: float = setting(5e-5, "Peak learning rate.")
    weight_decay: float = setting(0.0, "Decoupled weight decay (AdamW) / L2 (SGD).")
    warmup_steps: int = setting(0, "Linear warm-up steps.")
    schedule: str = setting("cosine", "Learning-rate schedule after warm-up: 'constant', 'linear' or 'cosine'.")
    max_grad_norm: float = setting(1.0, "Gradient clipping norm (0 = no clipping).")
    eval_every: int = setting(0, "Evaluate every N steps (0 = only at the end).")
    eval_at_start: bool = setting(True, "Also evaluate before the first step (the 'before' column).")
    load_best_model_at_end: bool = setting(False, "End with the weights of the best evaluation (metric_for_best_model): "
                                           "final/ and the final metrics are the best evaluation's; the last weights stay "
                                           "in checkpoints/. Against memorised label noise (docs/long_training.md).")
    metric_for_best_model: str = setting("auto", "Evaluation metric that picks the best evaluation, higher is better: "
                                         "'auto' (accuracy_h when the run has a reference, else accuracy_M), "
                                         "'accuracy_h', 'accuracy_M', 'margin_h' or 'margin_M'.")
    early_stopping_patience: int = setting(0, "Stop after this many evaluations in a row without a new best "
                                           "(metric_for_best_model); 0 = never stop early.")
    save_every: int = setting(0, "Checkpoint every N steps (0 = only at the end).")
    keep_last: int = setting(2, "Checkpoints kept on disk (older ones are deleted).")
    save_final: bool = setting(True, "Write final/ (a plain transformers model, LoRA merged) at the end.")
    push_to_hub: bool = setting(False, "Upload final/ (model, tokenizer, adapter, model card) to the hub at the end; the "
                                "hub and a token are checked before training starts.")
    hub_model_id: str = setting("", "Hub repository for push_to_hub: 'user/name', or 'name' under your account "
                                "('' = the output directory's name).")
    hub_private_repo: bool = setting(False, "Create the hub repository private.")
    log_every: int = setting(1, "Write a metrics line every N steps.")
    report_to: list = setting([], "Trackers that also get the metrics (TRL's report_to): tensorboard (output_dir/tb), "
                              "wandb, trackio, mlflow (output_dir/mlflow.db unless MLFLOW_TRACKING_URI), or none; a list "
                              "or a comma string. Projects: WANDB_PROJECT, TRACKIO_PROJECT, MLFLOW_EXPERIMENT_NAME "
                              "(default robalign).")
    run_name: str = setting("", "The run's name in the trackers ('' = the output directory's name).")
    tensorboard: bool = setting(False, "Same as tensorboard in report_to (kept for older configs).")
    on_nonfinite: str = setting("stop", "A NaN/Inf loss or gradient: 'stop' the run or 'skip' the batch.")
    threads: int = setting(0, "torch CPU threads (0 = leave torch's default).")
    activation_checkpointing: str = setting(
        "none", "Recompute in the backward instead of keeping activations: 'none', 'selective' (keep "
        "matmul and attention outputs, recompute the elementwise work: about half the activation memory "
        "for ~1.1x the step time) or 'full' (keep block inputs only: ~1.2x). Results are bit-identical.")
    progress: bool = setting(True, "Show a progress bar.")
    mixed_precision: str = setting(
        "auto", "Autocast over fp32 master weights through accelerate: 'no', 'bf16', 'fp16' (GPU; with loss "
        "scaling), or 'auto' = what `accelerate launch --mixed_precision` / ACCELERATE_MIXED_PRECISION says, else "
        "'no'. A config value that contradicts the launcher is an error. Losses and log-softmax stay fp32.")
    device: str = setting("auto", "'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'mps' (only when asked).")

    def validate(self):
        for key in ("batch_size", "grad_accum", "max_steps", "keep_last", "log_every"):
            check(getattr(self, key) >= 1, f"train.{key}", "must be >= 1")
        for key in ("warmup_steps", "eval_every", "save_every", "threads", "weight_decay", "max_grad_norm",
                    "stop_after", "eval_per_epoch", "early_stopping_patience"):
            check(getattr(self, key) >= 0, f"train.{key}", "must be >= 0")
        check(self.lr > 0 and math.isfinite(self.lr), "train.lr", "must be a positive number")
        check(0 <= self.epochs < 1e6 and math.isfinite(self.epochs), "train.epochs", "must be >= 0")
        choice(self.optimizer, ("adamw", "sgd"), "train.optimizer")
        choice(self.schedule, ("constant", "linear", "cosine"), "train.schedule")
        choice(self.on_nonfinite, ("stop", "skip"), "train.on_nonfinite")
        choice(self.activation_checkpointing, ACTIVATION_CHECKPOINTING, "train.activation_checkpointing")
        choice(self.metric_for_best_model, BEST_METRICS, "train.metric_for_best_model")
        if (self.load_best_model_at_end or self.early_stopping_patience) and not (self.eval_every or
                                                                                   self.eval_per_epoch):
            raise ConfigError("train.load_best_model_at_end / early_stopping_patience: need evaluations during the "
                              "run; set train.eval_per_epoch (e.g. 1) or train.eval_every")
        _check_report_to(self.report_to)
        if self.push_to_hub and not self.save_final:
            raise ConfigError("train.push_to_hub: needs train.save_final (it uploads final/)")
        from robalign.precision import DEVICES, MIXED_PRECISION

        choice(self.mixed_precision, MIXED_PRECISION, "train.mixed_precision")
        choice(self.device, DEVICES, "train.device")


SECTIONS = {"model": ModelConfig, "data": DataConfig, "method": MethodConfig, "train": TrainConfig,
            "online": OnlineConfig}


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)

    def validate(self) -> RunConfig:
        for section in self.sections().values():
            section.validate()
        self._validate_across_sections()
        return self

    def _validate_across_sections(self):
        """Combinations of keys from several sections (precision, attention, quantization)."""
        from robalign.precision import check_attention, check_precision_plan, resolve_attention

        mc, mixed, method = self.model, self.train.mixed_precision, self.method
        if mc.dtype in ("bf16", "fp16") and mixed in ("bf16", "fp16"):
            check_precision_plan(mc.dtype, mixed, lora_r=mc.lora_r, device="cuda")
        problem = method.params.quantization_problem()
        if mc.quantization != "none" and problem:
            raise ConfigError(f"model.quantization: {mc.quantization!r} with method {method.name}: {problem}; use "
                              "model.quantization: none")
        # Only the device-independent refusals here; the trainer checks the rest where it runs.
        forward_mode = method.params.forward_mode_attention
        if mc.trunk_cache != "off" or forward_mode:
            check_attention(resolve_attention(mc.attn_implementation), device="cuda", compute="bf16",
                            trunk_cache=mc.trunk_cache, gapo_first_order=forward_mode, installed=True)

    def sections(self) -> dict:
        return {name: getattr(self, name) for name in SECTIONS}

    def to_dict(self) -> dict:
        return {name: sec.to_dict() if name == "method" else dataclasses.asdict(sec)
                for name, sec in self.sections().items()}


def _check_report_to(names: list):
    from robalign.trackers import REPORT_TO

    for name in names:
        choice(name, REPORT_TO, "train.report_to")
    if "none" in names and len(names) > 1:
        raise ConfigError(f"train.report_to: 'none' together with {', '.join(n for n in names if n != 'none')}; "
                          "give either none or the trackers")


def _method_keys() -> dict[str, list[str]]:
    """{key: the methods that take it} over every registered method."""
    out: dict[str, list[str]] = {}
    for name, spec in _registry().METHODS.items():
        for key in spec.params.keys():
            out.setdefault(key, []).append(name)
    return out


def _section_fields(section: str) -> dict:
    """{key: annotation} of a section; for `method:` every key some method takes (checked per method later)."""
    if section in _registry().METHODS:
        return field_types(_registry().METHODS[section].params)
    if section != "method":
        return field_types(SECTIONS[section])
    types_ = {"name": str}
    for spec in _registry().METHODS.values():
        types_.update({k: v for k, v in field_types(spec.params).items() if k not in types_})
    return types_


# Keys of the former `method:` section, which an older config.yaml holds for every method, null meaning
# "the method's default"; and sft_weight 0 (with any sft_reduction) there, an inert SFT term.
_FORMER_METHOD_KEYS = ("beta", "epsilon", "rho", "gamma", "beta_prime", "normalize_length", "kind")


def _drop_unset(method: str, values: dict) -> dict:
    """`values` without what an older config.yaml wrote for "not set": null former method keys, and an inert
    SFT term for a method without one."""
    keys = _registry().METHODS[method].params.keys()
    out = {k: v for k, v in values.items() if not (v is None and (k in _FORMER_METHOD_KEYS or k not in keys))}
    if "sft_weight" not in keys and out.get("sft_weight", 0) == 0:
        out.pop("sft_weight", None)
        out.pop("sft_reduction", None)
    return out


def _merged(places: list[tuple[str, dict]], origin: str, sections: tuple) -> dict:
    """The keys that `places` (section, body) set in `sections`; one key in two of them is an error."""
    out, seen = {}, {}
    for section, body in places:
        if section not in sections:
            continue
        for key, value in body.items():
            if key == "name":
                continue
            if key in seen and seen[key] != section:
                raise ValueError(f"{origin}: {key} is set both as {seen[key]}.{key} and as {section}.{key}; "
                                 f"keep one (method.{key})")
            seen[key], out[key] = section, value
    return out


def _method_config(places: list[tuple[str, dict]], overrides: list[tuple[str, dict]], source: str) -> MethodConfig:
    """The `method:` section from the places that hold method keys: `method:` and sections named after a method,
    in the file (`places`) and on the command line (`overrides`, which win)."""
    registry = _registry()
    name = "dpo"
    for section, body in places + overrides:
        if section == "method" and "name" in body:
            name = body["name"]
    try:
        early = {**_merged(places, source, ("method",)), **_merged(overrides, "command line", ("method",))}
        canonical = registry.canonical_name(name, early)
        if canonical not in registry.METHODS:
            raise ValueError(f"unknown method {canonical!r} (valid: {', '.join(sorted(registry.METHODS))})")
        own = ("method", canonical)
        given = {**_merged(places, source, own), **_merged(overrides, "command line", own)}
        given = _drop_unset(canonical, given)
        # Sections of other methods (an older config.yaml holds gapo:, sail: and oracle_robust:): checked, unused.
        for section, body in places + overrides:
            if section in registry.METHODS and section != canonical:
                registry.method_params(section, _drop_unset(section, body))
        return MethodConfig(canonical, registry.method_params(canonical, given), given)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"method: {err}") from None


def build_config(tree: dict | None = None, overrides: dict | None = None, source: str = "config") -> RunConfig:
    """Builds and validates a RunConfig from a nested dict plus flat or dotted overrides.

    Args:
        tree: `{section: {key: value}}`, e.g. parsed YAML.
        overrides: `{"key": value}` or `{"section.key": value}`; a bare key must name exactly one field.
        source: where `tree` came from, for error messages.
    """
    valid = [*SECTIONS, *_registry().METHODS]
    tree = tree or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections ({', '.join(SECTIONS)})")
    places, cli = [], []
    for section, body in tree.items():
        if section not in valid:
            raise ConfigError(f"{source}: unknown section {section!r} (valid: {', '.join(SECTIONS)}, or a method's "
                              "name holding more of its parameters)")
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: section {section!r} must be a mapping")
        places.append((section, {k: _coerced(section, k, v, source) for k, v in body.items()}))
    for key, value in (overrides or {}).items():
        section, name = _resolve_key(key, valid)
        cli.append((section, {name: _coerced(section, name, value, "command line")}))
    plain = [s for s in SECTIONS if s != "method"]
    method = _method_config([p for p in places if p[0] not in plain], [c for c in cli if c[0] not in plain], source)
    values: dict[str, dict] = {name: {} for name in plain}
    for section, body in places + cli:
        if section in values:
            values[section].update(body)
    sections = {name: SECTIONS[name](**vals) for name, vals in values.items()}
    return RunConfig(method=method, **sections).validate()


def normalized(tree: dict) -> dict:
    """A saved config (a run's config.yaml) as this version writes it: older versions wrote the same settings in
    another layout (every method's section, null method keys). A tree that does not load is returned as it is."""
    try:
        return build_config(tree, source="config.yaml").to_dict()
    except ConfigError:
        return tree


def _coerced(section: str, key: str, value, source: str):
    """`value` converted to the type of `section.key`; ConfigError for an unknown key."""
    fields_ = _section_fields(section)
    if key not in fields_:
        raise ConfigError(f"{source}: unknown key {section}.{key} (valid: {', '.join(fields_)})")
    if value is None and section == "method":
        return None  # "the method's default" in older config.yaml files (`_drop_unset`)
    return coerce(value, fields_[key], f"{section}.{key}")


def _resolve_key(key: str, valid) -> tuple[str, str]:
    key = key.replace("-", "_")
    if "." in key:
        section, name = key.split(".", 1)
        if section not in valid:
            raise ConfigError(f"unknown config section {section!r} in --{key}")
        return section, name
    owners = [s for s in SECTIONS if key in _section_fields(s)]
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
    """(dotted key, help, default) for every field, for --help output and docs.

    `method.*` lists every key some method takes, with the methods that take it and their defaults.
    """
    rows = []
    for section, cls in SECTIONS.items():
        if section == "method":
            rows.append(("method.name", METHOD_NAME_HELP, "dpo"))
            rows.extend(_method_rows())
            continue
        for f in dataclasses.fields(cls):
            rows.append((f"{section}.{f.name}", f.metadata.get("help", ""), default_of(f)))
    return rows


def _method_rows() -> list[tuple[str, str, object]]:
    methods = _registry().METHODS
    rows = []
    for key, names in _method_keys().items():
        fields_ = {n: {f.name: f for f in ordered_fields(methods[n].params)}[key] for n in names}
        first = fields_[names[0]]
        defaults: dict[str, list[str]] = {}
        for n, f in fields_.items():
            defaults.setdefault(repr(default_of(f)), []).append(n)
        valid = valid_values(first)
        help_ = first.metadata.get("help", "") + (f" Valid: {valid}." if valid else "")
        taken = "every method" if len(names) == len(methods) else ", ".join(names)
        if len(defaults) == 1:
            rows.append((f"method.{key}", f"{help_} ({taken})", default_of(first)))
        else:
            per = "; ".join(f"{', '.join(ns)}: {d}" for d, ns in defaults.items())
            rows.append((f"method.{key}", f"{help_} ({taken})", per))
    return rows


def method_section_keys() -> list[str]:
    """`<method>.<key>` for every method and key: a section named after a method holds more of its parameters
    (older configs' `gapo:`, `sail:`, `oracle_robust:`), so these are command-line keys too."""
    return [f"{name}.{key}" for name, spec in _registry().METHODS.items() for key in spec.params.keys()]
