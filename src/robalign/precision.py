"""Precision, devices and attention kernels: the decisions, as small pure functions.

Three things set how a run computes, and robalign honours each or refuses it with one message:

- `model.dtype`: the dtype the weights are stored and multiplied in ('auto' keeps the checkpoint's; the
  built-in GGUF model and tiny-llama are fp32).
- `train.mixed_precision`: autocast over fp32 master weights, through accelerate, set in the config or by
  `accelerate launch --mixed_precision` / its config file / `ACCELERATE_MIXED_PRECISION`.
- `model.attn_implementation`: the attention kernel, which decides the batch layout (see
  `uses_packed_layout`).

Whatever they are, log-softmax and losses run in fp32 (`robalign.logprobs.token_logps` upcasts the
logits), and the policy and the reference run in one precision, so margins are exactly 0 at step 0.
"""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass

import torch

from robalign.errors import ConfigError, UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODEL_DTYPES = ("auto", "fp32", "bf16", "fp16")
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")
ATTENTION = ("auto", "sdpa", "eager", "flash_attention_2")
QUANTIZATION = ("none", "4bit", "8bit")

# Kernels that take no custom [R, 1, L, L] attention mask (they see only causality and padding).
_NO_CUSTOM_MASK = ("flash_attention_2", "flash_attention_3")


def dtype_name(dtype: torch.dtype) -> str:
    """'fp32' / 'bf16' / 'fp16' (or torch's name for any other dtype)."""
    return next((k for k, v in DTYPES.items() if v == dtype), str(dtype).replace("torch.", ""))


def resolve_mixed_precision(configured: str, launcher: str | None) -> str:
    """The mixed precision a run uses: 'no', 'bf16' or 'fp16'.

    Args:
        configured: `train.mixed_precision` ('auto' follows the launcher).
        launcher: what `accelerate launch` set (`ACCELERATE_MIXED_PRECISION`, from --mixed_precision or
            accelerate's config file), or None outside it. Its 'no' is also its default, so it is read as
            "not asked for" and never overrides the config; any other value that differs from an explicit
            config value is a conflict, refused rather than one of them silently dropped.
    """
    launched = (launcher or "no").strip().lower()
    if launched not in ("no", "bf16", "fp16"):
        raise UserError(f"accelerate's mixed precision {launched!r} (accelerate launch --mixed_precision / "
                        "ACCELERATE_MIXED_PRECISION) is not supported by robalign; use no, bf16 or fp16")
    if configured == "auto":
        return launched
    if launched != "no" and launched != configured:
        raise ConfigError(f"train.mixed_precision: the config says {configured!r} but accelerate launch "
                          f"(--mixed_precision, its config file or ACCELERATE_MIXED_PRECISION) says {launched!r}; "
                          "make them agree, or set train.mixed_precision: auto to follow the launcher")
    return configured


def check_precision_plan(weights: str, mixed: str, *, lora_r: int, device: str) -> None:
    """Refuses weight dtype / mixed precision combinations that would train wrongly or silently differently.

    Args:
        weights: the weights' dtype name ('fp32', 'bf16', 'fp16').
        mixed: the resolved mixed precision ('no', 'bf16', 'fp16').
        lora_r: 0 = full fine-tuning (the trained weights are the model's own).
        device: 'cpu', 'cuda' or 'mps'.
    """
    if mixed == "fp16" and device == "cpu":
        # accelerate runs neither fp16 autocast nor loss scaling on the CPU: the run would be fp32.
        raise ConfigError("train.mixed_precision: 'fp16' needs a GPU (on the CPU accelerate applies neither fp16 "
                          "autocast nor loss scaling, so the run would silently be fp32); use bf16 on the CPU")
    if mixed != "no" and weights in ("bf16", "fp16") and weights != mixed:
        raise ConfigError(f"model.dtype: {weights} weights under train.mixed_precision {mixed}: one run computes in "
                          "one low precision; make them agree or load fp32 weights (model.dtype: fp32)")
    if weights == "fp16" and lora_r == 0:
        # Updates smaller than half an fp16 ulp of a weight are lost, and GradScaler cannot unscale fp16
        # gradients: full fine-tuning needs fp32 master weights.
        raise ConfigError("model.dtype: 'fp16' full fine-tuning is refused (fp16 weights lose small updates and "
                          "cannot be loss-scaled); use model.dtype: fp32 with train.mixed_precision: fp16 (fp32 "
                          "master weights) on a GPU, bf16, or LoRA (model.lora_r > 0: fp32 adapters on an fp16 base)")


def needs_own_loss_scaling(weights: str, mixed: str) -> bool:
    """fp16 compute without accelerate's GradScaler: fp16 weights (LoRA) with mixed precision 'no'.

    fp16's smallest normal number is 6e-5, so small gradients flowing back through fp16 activations
    underflow to 0 without loss scaling; accelerate scales only under `mixed_precision: fp16`.
    """
    return weights == "fp16" and mixed == "no"


def precision_tag(weights: str, autocast: str) -> str:
    """How log-probs were computed, as recorded with cached reference log-probs and trunk states."""
    return f"weights={weights},autocast={autocast}"


FP32_TAG = precision_tag("fp32", "no")  # what caches written before precision was recorded hold


def check_recorded_precision(recorded: str | None, current: str, what: str) -> None:
    """Refuses stored log-probs or states computed in another precision than this run computes in.

    The reference must run at the policy's precision: values from another one differ in the last bits
    (bf16: in the second digit), so margins would not be 0 at step 0.
    """
    recorded = recorded or FP32_TAG
    if recorded != current:
        raise UserError(f"{what} was computed with {recorded}, but this run computes with {current}; the policy "
                        "and its reference must run in one precision. Delete it (it is recomputed) or run in "
                        "the precision it records")


def model_weights_dtype(model) -> torch.dtype:
    """The dtype the network's weights are stored in (the input embeddings', which LoRA never upcasts)."""
    return model.get_input_embeddings().weight.dtype


def choose_device(requested: str) -> str:
    """'cpu', 'cuda' or 'mps' for `train.device`; 'auto' takes CUDA when present, else the CPU.

    MPS is never chosen automatically: robalign's tests do not run there (no fp64, partial bf16), so it is
    used only when asked for.
    """
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: 'cuda' but torch sees no CUDA GPU here (torch "
                        f"{torch.__version__}); use train.device: auto or cpu")
    if requested == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UserError("train.device: 'mps' but torch reports MPS unavailable on this machine")
    return requested


def check_quantization(quantization: str, device: str, *, installed: bool | None = None) -> None:
    """Refuses QLoRA where bitsandbytes cannot run it, before any model loads."""
    if quantization == "none":
        return
    if device != "cuda":
        raise UserError(f"model.quantization: {quantization!r} needs a CUDA GPU (bitsandbytes' kernels); this run "
                        f"is on {device}. Set model.quantization: none (LoRA on unquantized weights)")
    if installed is None:
        installed = importlib.util.find_spec("bitsandbytes") is not None
    if not installed:
        raise UserError(f"model.quantization: {quantization!r} needs the bitsandbytes package "
                        "(pip install bitsandbytes)")


def resolve_attention(requested: str) -> str:
    """The transformers attention implementation for `model.attn_implementation`.

    'auto' is SDPA: exact for both batch layouts (with the packed layout's custom mask torch dispatches
    to its memory-efficient or math kernel, never the mask-less flash one).
    """
    return "sdpa" if requested == "auto" else requested


def check_attention(impl: str, *, device: str, compute: str, trunk_cache: str, gapo_first_order: bool,
                    installed: bool | None = None) -> None:
    """Refuses an attention kernel that would compute something else than asked, before the model loads.

    Args:
        impl: the resolved implementation.
        compute: the dtype matmuls run in ('fp32' or the low precision of weights / autocast).
        trunk_cache: `model.trunk_cache`; its stored states are laid out in the packed layout.
        gapo_first_order: GAPO's first-order anchor, which differentiates attention in forward mode.
    """
    if impl not in _NO_CUSTOM_MASK:
        return
    if trunk_cache != "off":
        raise ConfigError(f"model.attn_implementation: {impl} cannot run the shared-prompt packed layout (its "
                          "attention mask keeps rejected tokens blind to chosen ones; FlashAttention takes no "
                          "such mask), and model.trunk_cache stores that layout's states; use sdpa or set "
                          "model.trunk_cache: off")
    if gapo_first_order:
        raise ConfigError(f"model.attn_implementation: {impl} has no forward-mode derivative, which "
                          "gapo.anchor: first_order needs; use sdpa or gapo.anchor: exact")
    if device != "cuda":
        raise UserError(f"model.attn_implementation: {impl} needs a CUDA GPU; this run is on {device} (use sdpa)")
    if compute == "fp32":
        raise ConfigError(f"model.attn_implementation: {impl} runs in fp16/bf16 only, but this run computes in "
                          "fp32; set train.mixed_precision: bf16 (or model.dtype: bf16), or use sdpa")
    if installed is None:
        installed = importlib.util.find_spec("flash_attn") is not None
    if not installed:
        raise UserError(f"model.attn_implementation: {impl} needs the flash-attn package; use sdpa")


def uses_packed_layout(model) -> bool:
    """Whether the log-prob engine may run `model` on the shared-prompt packed layout.

    The packing (`robalign.data.collate.SharedPromptPack`) needs a custom attention mask; FlashAttention
    kernels take none, so for them the engine runs the 2B right-padded rows, which they handle exactly.
    """
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) not in _NO_CUSTOM_MASK


def layout_description(impl: str) -> str:
    """One log line: which kernel runs and on which layout."""
    if impl in _NO_CUSTOM_MASK:
        return (f"attention: {impl} on the padded 2B-row layout (FlashAttention takes no custom mask, so the "
                "shared-prompt packing is off)")
    return f"attention: {impl} on the shared-prompt packed layout (custom mask: rejected tokens blind to chosen)"


@dataclass(frozen=True)
class Precision:
    """How a group of passes computes.

    Attributes:
        device: the device type autocast applies to ('cpu', 'cuda', 'mps').
        mixed: the autocast dtype name ('bf16', 'fp16'), or None for no autocast.
        weights: the weights' dtype name.
    """

    device: str
    mixed: str | None
    weights: str

    @property
    def tag(self) -> str:
        return precision_tag(self.weights, self.mixed or "no")

    def autocast(self):
        """The context every pass of the group runs in (the policy's and the reference's alike)."""
        if self.mixed is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device, dtype=DTYPES[self.mixed])


def drop_accelerate_autocast(module) -> None:
    """Undoes the autocast wrapper `accelerator.prepare` puts on `module.forward` under mixed precision.

    robalign's log-prob engine calls the body and the head, not `forward` (so accelerate's wrapper never
    applied: mixed precision was silently fp32), and applies autocast itself around every pass. Under data
    parallelism `PolicyLM.forward` *is* called, and a wrapper there would autocast passes robalign keeps in
    fp32 (GAPO's anchor); removing it leaves one place that decides.
    """
    if "_original_forward" in module.__dict__:
        module.__dict__.pop("_original_forward")
        module.__dict__.pop("forward", None)  # back to the class's forward


class NoLossScaling:
    """bf16 / fp32: gradients need no scaling (bf16 has fp32's exponent range)."""

    dynamic = False

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def unscale(self) -> None:
        pass

    def step(self) -> None:
        self.optimizer.step()

    def skip(self) -> None:
        pass

    def value(self) -> torch.Tensor | None:
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class DynamicLossScaling(NoLossScaling):
    """fp16: a `torch.amp.GradScaler`, accelerate's (mixed fp16: `accelerator.backward` already scales and the
    prepared optimizer steps and updates it) or robalign's own (fp16 weights without mixed precision).

    A step whose gradients overflow is skipped by the scaler, which then lowers the scale: normal in the
    first fp16 steps, so the trainer treats it as the scaler's business, not as a non-finite loss.
    """

    dynamic = True

    def __init__(self, optimizer, scaler, *, accelerate_owned: bool):
        super().__init__(optimizer)
        self.scaler, self.accelerate_owned = scaler, accelerate_owned
        self.inner = getattr(optimizer, "optimizer", optimizer)

    def scale(self, loss):
        return loss if self.accelerate_owned else self.scaler.scale(loss)

    def unscale(self):
        self.scaler.unscale_(self.inner)  # before the gradient norm and clipping, which need true gradients

    def step(self):
        if self.accelerate_owned:
            self.optimizer.step()  # accelerate's optimizer: scaler.step, then scaler.update
        else:
            self.scaler.step(self.inner)
            self.scaler.update()

    def skip(self):
        self.scaler.update()  # after unscale_, a skipped step must still close the scaler's iteration

    def value(self):
        return torch.tensor(self.scaler.get_scale())

    def state_dict(self):
        return {"loss_scaler": self.scaler.state_dict()}

    def load_state_dict(self, state):
        if state.get("loss_scaler"):
            self.scaler.load_state_dict(state["loss_scaler"])


def loss_scaling(accelerator, optimizer, *, weights: str, mixed: str) -> NoLossScaling:
    """The loss scaling of a run: accelerate's GradScaler under mixed fp16, robalign's own for fp16 weights
    without mixed precision, none otherwise (a null object, so the step never branches on precision)."""
    if getattr(accelerator, "scaler", None) is not None:
        return DynamicLossScaling(optimizer, accelerator.scaler, accelerate_owned=True)
    if needs_own_loss_scaling(weights, mixed):
        return DynamicLossScaling(optimizer, torch.amp.GradScaler(accelerator.device.type), accelerate_owned=False)
    return NoLossScaling(optimizer)

