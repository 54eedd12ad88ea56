"""GPU checks of precision, attention kernels and QLoRA (marker `cuda`; skipped without CUDA).

Run by scripts/gpu_check.sh (`pytest -m cuda tests/test_cuda.py`). Every run is tiny-llama for a few steps:
these check behaviour (exact step-0 margins, dtypes kept, loss scaling, kernels, fp32 anchors), not speed.
"""

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from conftest import make_pairs
from robalign.config import build_config
from robalign.trainer import Trainer

pytestmark = [pytest.mark.cuda, pytest.mark.usefixtures("fresh_accelerate_state"),
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
LOG2 = math.log(2.0)


def _run(out, *, model=None, train=None, method="dpo", extra=None, steps=3):
    tree = {"model": {"name": "tiny-llama", "lora_r": 0, **(model or {})}, "method": {"name": method},
            "data": {"max_length": 64},
            "train": {"output_dir": str(out), "batch_size": 2, "max_steps": steps, "lr": 1e-2, "progress": False,
                      "device": "cuda", **(train or {})}, **(extra or {})}
    pairs = make_pairs(8)
    summary = Trainer(build_config(tree), train_pairs=pairs, eval_pairs=pairs[:4]).train()
    rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return summary, [r for r in rows if "loss" in r]


def _exact_start(summary, rows):
    assert summary["start"]["eval/margin_h"] == 0.0
    assert rows[0]["rewards/margins"] == 0.0 and rows[0]["rewards/chosen"] == 0.0
    assert rows[0]["loss"] == pytest.approx(LOG2, abs=1e-6)


def _saved_dtype(out) -> str:
    config = json.loads((Path(out) / "final" / "config.json").read_text())
    return config.get("dtype", config.get("torch_dtype"))


def _reset():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)


def test_bf16_weights_full_fine_tuning(tmp_path):
    summary, rows = _run(tmp_path / "bf16", model={"dtype": "bf16"})
    _exact_start(summary, rows)
    assert _saved_dtype(tmp_path / "bf16") == "bfloat16"


@pytest.mark.parametrize("mixed", ["bf16", "fp16"])
def test_mixed_precision_differs_from_fp32_and_keeps_fp32_master_weights(tmp_path, mixed):
    _, fp32 = _run(tmp_path / "fp32")
    _reset()
    summary, rows = _run(tmp_path / mixed, train={"mixed_precision": mixed})
    _exact_start(summary, rows)
    assert rows[0]["logps/chosen"] != fp32[0]["logps/chosen"]  # autocast really ran
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(rows, fp32)) < 0.05
    assert _saved_dtype(tmp_path / mixed) == "float32"
    if mixed == "fp16":
        assert all(r["loss_scale"] > 0 for r in rows)  # accelerate's GradScaler


def test_fp16_lora_under_mixed_fp16(tmp_path):
    summary, rows = _run(tmp_path / "lora", model={"dtype": "fp16", "lora_r": 4}, train={"mixed_precision": "fp16"})
    _exact_start(summary, rows)
    assert "loss_scale" in rows[0] and _saved_dtype(tmp_path / "lora") == "float16"


def test_sdpa_eager_and_padded_rows_agree_in_bf16(tiny):
    from robalign.data.collate import collate
    from robalign.data.tokenize import tokenize_pairs
    from robalign.logprobs import sequence_logps

    model, tok = tiny
    data, _ = tokenize_pairs(tok, make_pairs(4), max_length=64, max_prompt_length=32)
    sdpa = copy.deepcopy(model).cuda().to(torch.bfloat16)
    eager = copy.deepcopy(sdpa)
    eager.set_attn_implementation("eager")
    packed = collate(data, tok.pad_token_id).to("cuda")
    rows = collate(data, tok.pad_token_id, shared_prompt=False).to("cuda")
    with torch.no_grad():
        a, b, c = sequence_logps(sdpa, packed), sequence_logps(eager, packed), sequence_logps(sdpa, rows)
    for other in (b, c):
        assert torch.allclose(a.chosen, other.chosen, rtol=2e-2) and torch.allclose(a.rejected, other.rejected, rtol=2e-2)


def test_flash_attention_runs_the_padded_rows(tmp_path, tiny):
    pytest.importorskip("flash_attn")
    from robalign.data.collate import collate
    from robalign.data.tokenize import tokenize_pairs
    from robalign.logprobs import sequence_logps

    model, tok = tiny
    data, _ = tokenize_pairs(tok, make_pairs(4), max_length=64, max_prompt_length=32)
    sdpa = copy.deepcopy(model).cuda().to(torch.bfloat16)
    flash = copy.deepcopy(sdpa)
    flash.set_attn_implementation("flash_attention_2")
    batch = collate(data, tok.pad_token_id).to("cuda")  # packed: the engine drops the packing for flash
    with torch.no_grad():
        a, b = sequence_logps(sdpa, batch), sequence_logps(flash, batch)
    assert torch.allclose(a.chosen, b.chosen, rtol=2e-2) and torch.allclose(a.rejected, b.rejected, rtol=2e-2)
    summary, rows = _run(tmp_path / "fa2", model={"attn_implementation": "flash_attention_2"},
                         train={"mixed_precision": "bf16"})
    _exact_start(summary, rows)


def test_qlora_4bit(tmp_path, tiny):
    pytest.importorskip("bitsandbytes")
    model, tok = tiny
    base = tmp_path / "base"
    model.save_pretrained(base)
    tok.save_pretrained(base)
    summary, rows = _run(tmp_path / "q", model={"name": str(base), "lora_r": 4, "quantization": "4bit",
                                                "dtype": "bf16"})
    _exact_start(summary, rows)  # the reference is the same quantized network with the adapters off
    assert (tmp_path / "q" / "final" / "adapter" / "adapter_config.json").is_file()


def test_gapo_under_mixed_precision_keeps_an_fp32_anchor(tmp_path):
    _, rows = _run(tmp_path / "g", method="gapo", train={"mixed_precision": "bf16"}, steps=2)
    assert all(r["gapo/changed_fraction"] > 0.9 for r in rows)


def test_one_online_step_in_bf16(tmp_path):
    _, rows = _run(tmp_path / "sail", model={"lora_r": 4}, method="sail", train={"mixed_precision": "bf16"},
                   steps=1, extra={"online": {"max_new_tokens": 4, "oracle": "bt:length"}})
    assert len(rows) == 1 and math.isfinite(rows[0]["loss"])
