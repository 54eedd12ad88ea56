"""Precision, devices, attention kernels and QLoRA refusals (docs/precision.md), on tiny-llama and the CPU.

Low-precision runs are tiny (bf16/fp16 matmuls are ~600x slower than fp32 on this CPU). The GPU side of
the same behaviour is in tests/test_cuda.py (marker `cuda`).
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from conftest import make_pairs
from robalign.config import build_config
from robalign.errors import ConfigError, UserError
from robalign.precision import (
    FP32_TAG,
    check_attention,
    check_precision_plan,
    check_quantization,
    check_recorded_precision,
    choose_device,
    precision_tag,
    resolve_mixed_precision,
    uses_packed_layout,
)
from robalign.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
LOG2 = math.log(2.0)


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

def _cfg(out, *, model=None, train=None, method="dpo", extra=None):
    tree = {"model": {"name": "tiny-llama", "lora_r": 0, **(model or {})}, "method": {"name": method},
            "data": {"max_length": 48},
            "train": {"output_dir": str(out), "batch_size": 2, "max_steps": 3, "lr": 1e-2, "progress": False,
                      "eval_at_start": True, **(train or {})}}
    tree.update(extra or {})
    return build_config(tree)


def _run(cfg, pairs=None):
    pairs = pairs or make_pairs(8)
    summary = Trainer(cfg, train_pairs=pairs, eval_pairs=pairs[:4]).train()
    rows = [json.loads(x) for x in (Path(cfg.train.output_dir) / "metrics.jsonl").read_text().splitlines()]
    return summary, [r for r in rows if "loss" in r]


def _final_dtypes(out: Path) -> tuple[str, set]:
    config = json.loads((out / "final" / "config.json").read_text())
    with safe_open(str(out / "final" / "model.safetensors"), framework="pt") as fh:
        dtypes = {fh.get_slice(k).get_dtype() for k in fh.keys()}
    return config.get("dtype", config.get("torch_dtype")), dtypes


# ------------------------------------------------------------------------------------ pure decisions


@pytest.mark.parametrize("configured, launcher, want", [
    ("auto", None, "no"), ("auto", "bf16", "bf16"), ("auto", "FP16", "fp16"), ("no", None, "no"),
    ("bf16", "no", "bf16"),  # the launcher's 'no' is its default, not a request
    ("bf16", "bf16", "bf16"), ("fp16", None, "fp16"),
])
def test_mixed_precision_follows_config_or_launcher(configured, launcher, want):
    assert resolve_mixed_precision(configured, launcher) == want


@pytest.mark.parametrize("configured, launcher", [("no", "bf16"), ("bf16", "fp16"), ("fp16", "bf16")])
def test_config_and_launcher_disagreeing_is_one_error(configured, launcher):
    with pytest.raises(ConfigError, match="train.mixed_precision: the config says .* accelerate launch"):
        resolve_mixed_precision(configured, launcher)


def test_unsupported_launcher_precision_is_refused():
    with pytest.raises(UserError, match="'fp8' .* is not supported by robalign"):
        resolve_mixed_precision("auto", "fp8")


@pytest.mark.parametrize("weights, mixed, lora_r, device, match", [
    ("fp32", "fp16", 0, "cpu", "fp16.* needs a GPU"),
    ("bf16", "fp16", 8, "cuda", "one low precision"),
    ("fp16", "bf16", 8, "cuda", "one low precision"),
    ("fp16", "no", 0, "cuda", "full fine-tuning is refused"),
    ("fp16", "fp16", 0, "cuda", "full fine-tuning is refused"),
])
def test_precision_plan_refusals(weights, mixed, lora_r, device, match):
    with pytest.raises(ConfigError, match=match):
        check_precision_plan(weights, mixed, lora_r=lora_r, device=device)


@pytest.mark.parametrize("weights, mixed, lora_r, device", [
    ("fp32", "no", 0, "cpu"), ("fp32", "bf16", 0, "cpu"), ("bf16", "no", 0, "cpu"), ("bf16", "bf16", 0, "cuda"),
    ("fp16", "no", 8, "cpu"), ("fp16", "fp16", 8, "cuda"), ("fp32", "fp16", 0, "cuda"),
])
def test_precision_plan_allows(weights, mixed, lora_r, device):
    check_precision_plan(weights, mixed, lora_r=lora_r, device=device)


def test_recorded_precision_check():
    check_recorded_precision(None, FP32_TAG, "x")  # caches written before precision was recorded were fp32
    check_recorded_precision(precision_tag("bf16", "no"), precision_tag("bf16", "no"), "x")
    with pytest.raises(UserError, match="the thing was computed with weights=fp32,autocast=no, but this run "
                                        "computes with weights=fp32,autocast=bf16"):
        check_recorded_precision(FP32_TAG, precision_tag("fp32", "bf16"), "the thing")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusals")
def test_device_and_qlora_refusals_without_cuda():
    assert choose_device("auto") == "cpu"
    with pytest.raises(UserError, match="train.device: 'cuda' but torch sees no CUDA GPU"):
        choose_device("cuda")
    with pytest.raises(UserError, match="model.quantization: '4bit' needs a CUDA GPU"):
        check_quantization("4bit", "cpu")
    check_quantization("none", "cpu")


def test_qlora_without_bitsandbytes_is_one_message():
    with pytest.raises(UserError, match="needs the bitsandbytes package"):
        check_quantization("8bit", "cuda", installed=False)


@pytest.mark.parametrize("kw, match", [
    (dict(trunk_cache="memory"), "cannot run the shared-prompt packed layout"),
    (dict(gapo_first_order=True), "no forward-mode derivative"),
    (dict(device="cpu"), "needs a CUDA GPU"),
    (dict(compute="fp32"), "fp16/bf16 only"),
    (dict(installed=False), "needs the flash-attn package"),
])
def test_flash_attention_refusals(kw, match):
    args = dict(device="cuda", compute="bf16", trunk_cache="off", gapo_first_order=False, installed=True) | kw
    with pytest.raises(UserError, match=match):
        check_attention("flash_attention_2", **args)
    check_attention("sdpa", **args)  # SDPA takes every layout, on every device and dtype


# ------------------------------------------------------------------------------------ config keys


@pytest.mark.parametrize("tree, match", [
    ({"model": {"dtype": "fp8"}}, "model.dtype: 'fp8' is not one of"),
    ({"train": {"mixed_precision": "fp64"}}, "train.mixed_precision: 'fp64' is not one of"),
    ({"train": {"device": "tpu"}}, "train.device: 'tpu' is not one of"),
    ({"model": {"attn_implementation": "flash"}}, "model.attn_implementation: 'flash' is not one of"),
    ({"model": {"quantization": "2bit"}}, "model.quantization: '2bit' is not one of"),
    ({"model": {"quantization": "4bit", "lora_r": 0}}, "model.quantization: '4bit' needs LoRA"),
    ({"model": {"quantization": "4bit", "reference": "copy"}}, "model.quantization: .* needs model.reference"),
    ({"model": {"quantization": "4bit"}, "method": {"name": "gapo"}}, "anchor perturbs the frozen base weights"),
    ({"model": {"dtype": "fp16", "lora_r": 0}}, "model.dtype: 'fp16' full fine-tuning is refused"),
    ({"model": {"dtype": "bf16"}, "train": {"mixed_precision": "fp16"}}, "one low precision"),
    ({"model": {"attn_implementation": "flash_attention_2", "train_last_k": 1, "trunk_cache": "memory"}},
     "shared-prompt packed layout"),
])
def test_config_refusals_name_the_key(tree, match):
    with pytest.raises(ConfigError, match=match):
        build_config(tree)


@pytest.mark.integration  # a whole sweep / demo / spawned processes
def test_flash_attention_with_the_packed_trunk_is_exit_2(tmp_path):
    cmd = [sys.executable, "-m", "robalign.cli", "train", "--model", "tiny-llama", "--data", "nonexistent.jsonl",
           "--model.attn_implementation", "flash_attention_2", "--train-last-k", "1", "--trunk-cache", "memory",
           "--output-dir", str(tmp_path / "run")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 2
    assert "flash_attention_2 cannot run the shared-prompt packed layout" in proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------ the engine's layout


def test_flash_attention_runs_the_padded_rows(tiny):
    from robalign.data.collate import collate
    from robalign.data.tokenize import tokenize_pairs
    from robalign.logprobs import layout_for, split_body_and_head
    from robalign.trunk import TrunkStates

    model, tok = tiny
    data, _ = tokenize_pairs(tok, make_pairs(3), max_length=48, max_prompt_length=24)
    batch = collate(data, tok.pad_token_id)
    body, _ = split_body_and_head(model)
    assert uses_packed_layout(body) and layout_for(body, batch) is batch

    class FlashBody:  # only the config is read: no kernel runs on the CPU
        config = type("C", (), {"_attn_implementation": "flash_attention_2"})()

    padded = layout_for(FlashBody(), batch)
    assert padded.packed is None and torch.equal(padded.input_ids, batch.input_ids)
    batch.trunk = TrunkStates(torch.zeros(1, 1, 1), start=1)
    with pytest.raises(UserError, match="cannot run the cached trunk states"):
        layout_for(FlashBody(), batch)


def test_eager_and_sdpa_give_the_same_logps_on_the_packed_layout(tiny):
    import copy

    from robalign.data.collate import collate
    from robalign.data.tokenize import tokenize_pairs
    from robalign.logprobs import sequence_logps

    model, tok = tiny
    data, _ = tokenize_pairs(tok, make_pairs(4), max_length=48, max_prompt_length=24)
    batch = collate(data, tok.pad_token_id)
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        a, b = sequence_logps(model, batch), sequence_logps(eager, batch)
        rows = sequence_logps(model, collate(data, tok.pad_token_id, shared_prompt=False))
    assert torch.allclose(a.chosen, b.chosen, atol=1e-5) and torch.allclose(a.rejected, b.rejected, atol=1e-5)
    assert torch.allclose(a.chosen, rows.chosen, atol=1e-5)  # and both equal the padded 2B rows


# ------------------------------------------------------------------------------------ training runs


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory):
    """The fp32 run every low-precision run is compared with: (summary, step rows)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    return _run(_cfg(tmp_path_factory.mktemp("fp32") / "run"))


def _tracks(rows, reference_rows, tol=0.05):
    """Trains like the fp32 run: the same steps, losses within `tol` (low-precision rounding only)."""
    got, want = [r["loss"] for r in rows], [r["loss"] for r in reference_rows]
    assert len(got) == len(want) and max(abs(a - b) for a, b in zip(got, want)) < tol, (got, want)


def _first_step_is_exact(rows):
    """Step 1's metrics come from the forward before the first update: policy = reference."""
    first = rows[0]
    assert first["rewards/margins"] == 0.0 and first["rewards/chosen"] == 0.0 and first["rewards/rejected"] == 0.0
    assert first["loss"] == pytest.approx(LOG2, abs=1e-7)  # softplus(0), computed in fp32


def test_bf16_full_fine_tuning(tmp_path, fp32_run):
    summary, rows = _run(_cfg(tmp_path / "bf16", model={"dtype": "bf16"}))
    assert summary["start"]["eval/margin_h"] == 0.0 and summary["start"]["eval/accuracy_h"] == 0.5
    _first_step_is_exact(rows)
    _tracks(rows, fp32_run[1])
    assert [r["loss"] for r in rows[1:]] != [r["loss"] for r in fp32_run[1][1:]]  # and is not fp32
    assert _final_dtypes(tmp_path / "bf16") == ("bfloat16", {"BF16"})


def test_fp16_lora_with_loss_scaling(tmp_path):
    out = tmp_path / "fp16"
    summary, rows = _run(_cfg(out, model={"dtype": "fp16", "lora_r": 4}))
    assert summary["start"]["eval/margin_h"] == 0.0
    _first_step_is_exact(rows)
    assert all(r["loss_scale"] == 2.0 ** 16 for r in rows)  # torch's initial scale; no overflow here
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    _, fp32_lora = _run(_cfg(tmp_path / "fp32", model={"lora_r": 4}))
    _tracks(rows, fp32_lora)  # the scale is divided out again: the updates are fp32 LoRA's, up to rounding
    assert _final_dtypes(out) == ("float16", {"F16"})
    state = json.loads((sorted((out / "checkpoints").iterdir())[-1] / "state.json").read_text())
    assert state["loss_scaler"]["scale"] == 2.0 ** 16  # the scaler resumes where it was


def test_mixed_precision_from_the_launcher_env_is_honoured(tmp_path, monkeypatch, fp32_run):
    fp32 = fp32_run[1]
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what `accelerate launch --mixed_precision bf16` sets
    summary, mixed = _run(_cfg(tmp_path / "mixed"))
    assert summary["start"]["eval/margin_h"] == 0.0
    _first_step_is_exact(mixed)
    # The same weights at step 1, different log-probs: bf16 matmuls really ran (before, this was bit-identical).
    assert mixed[0]["logps/chosen"] != fp32[0]["logps/chosen"]
    assert mixed[0]["logps/chosen"] == pytest.approx(fp32[0]["logps/chosen"], rel=2e-2)
    assert [r["loss"] for r in mixed[1:]] != [r["loss"] for r in fp32[1:]]
    _tracks(mixed, fp32)
    assert _final_dtypes(tmp_path / "mixed") == ("float32", {"F32"})  # fp32 master weights


def test_config_contradicting_the_launcher_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with pytest.raises(ConfigError, match="the config says 'no' but accelerate launch"):
        Trainer(_cfg(tmp_path / "x", train={"mixed_precision": "no"}), train_pairs=make_pairs(8))


def test_qlora_on_cpu_is_refused_before_the_model_loads(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU refusal")
    cfg = _cfg(tmp_path / "q", model={"name": "no/such-model", "lora_r": 4, "quantization": "4bit"})
    with pytest.raises(UserError, match="model.quantization: '4bit' needs a CUDA GPU"):
        Trainer(cfg, train_pairs=make_pairs(8))  # not "cannot load 'no/such-model'": nothing loaded


def test_cached_reference_of_another_precision_is_refused(tmp_path):
    cfg = _cfg(tmp_path / "run", model={"reference": "cached"})
    Trainer(cfg, train_pairs=make_pairs(8), eval_pairs=make_pairs(4))
    cache = next((tmp_path / "run" / "ref_cache").glob("*.safetensors"))
    with safe_open(str(cache), framework="pt") as fh:
        assert fh.metadata()["precision"] == FP32_TAG
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    mixed = _cfg(tmp_path / "run", model={"reference": "cached"}, train={"mixed_precision": "bf16"})
    with pytest.raises(UserError, match=r"cached reference log-probs .* computed with weights=fp32,autocast=no, "
                                        r"but this run computes with weights=fp32,autocast=bf16"):
        Trainer(mixed, train_pairs=make_pairs(8), eval_pairs=make_pairs(4))


def test_evaluator_reference_cache_of_another_precision_is_refused(tiny):
    from robalign.data.tokenize import tokenize_pairs
    from robalign.evaluate import PreferenceEvaluator
    from robalign.reference import FrozenCopyReference

    model, tok = tiny
    data, _ = tokenize_pairs(tok, make_pairs(4), max_length=48, max_prompt_length=24)
    shared = {}
    ref = FrozenCopyReference(model)
    PreferenceEvaluator(data, tok.pad_token_id, reference=ref, reference_cache=shared).evaluate(model)
    other = PreferenceEvaluator(data, tok.pad_token_id, reference=ref, reference_cache=shared,
                                precision=precision_tag("fp32", "bf16"))
    with pytest.raises(UserError, match="evaluator's shared reference cache"):
        other.evaluate(model)


def test_trunk_shards_of_another_precision_are_refused(tiny, tmp_path):
    from robalign.data.tokenize import tokenize_pairs
    from robalign.trunk import TrunkCache

    model, tok = tiny
    data, _ = tokenize_pairs(tok, make_pairs(3), max_length=48, max_prompt_length=24)
    trunk = TrunkCache(1, tmp_path / "trunk")
    trunk.fill_states(model, data, pad_id=tok.pad_token_id)
    trunk.save()
    assert len(TrunkCache(1, tmp_path / "trunk").states) == len(trunk.states)
    with pytest.raises(UserError, match="trunk cache shard .* computed with weights=fp32,autocast=no"):
        TrunkCache(1, tmp_path / "trunk", precision=precision_tag("bf16", "no"))


def test_gapo_refuses_bf16_weights_without_opt_in(tmp_path):
    cfg = _cfg(tmp_path / "g", model={"dtype": "bf16"}, method="gapo")
    with pytest.raises(ConfigError, match="model.dtype: bf16 with method gapo: the anchor needs fp32 weights.*"
                                          "gapo.allow_low_precision_anchor: true"):
        Trainer(cfg, train_pairs=make_pairs(8))  # at start-up, not at step 1


def test_gapo_under_mixed_precision_keeps_an_fp32_anchor(tmp_path):
    cfg = _cfg(tmp_path / "g", method="gapo", train={"mixed_precision": "bf16", "max_steps": 2},
               extra={"gapo": {"scope": "last_k_layers", "last_k": 1}})
    summary, rows = _run(cfg)
    # In fp32 nearly every weight δ moves changes; under bf16 autocast almost none would (SPEC §3).
    assert all(r["gapo/changed_fraction"] > 0.9 for r in rows)
    assert all(r["gapo/delta_norm"] > 0 for r in rows) and rows[-1]["loss"] < rows[0]["loss"] + 1e-3
    assert summary["start"]["eval/margin_M"] != 0.0  # evaluation ran (under bf16 autocast)
    assert _final_dtypes(tmp_path / "g") == ("float32", {"F32"})


@pytest.mark.slow
def test_accelerate_launch_mixed_precision_bf16(tmp_path):
    """The real launcher: `accelerate launch --mixed_precision bf16` trains in bf16 autocast, and its losses
    differ from the fp32 run's (they were bit-identical before robalign applied autocast itself)."""
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
                            for p in make_pairs(12)))
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("ACCELERATE_MIXED_PRECISION", None)
    losses = {}
    for name, launcher in (("fp32", []), ("bf16", ["--mixed_precision", "bf16"])):
        train = ["-m", "robalign.cli", "train", "--model", "tiny-llama", "--data", str(data), "--lora-r", "0",
                 "--max-steps", "3", "--batch-size", "2", "--lr", "1e-2", "--max-length", "48",
                 "--progress", "false", "--output-dir", str(tmp_path / name)]
        cmd = ([sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", *launcher,
                *train] if launcher else [sys.executable, *train])
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in rows if "loss" in r]
    assert losses["bf16"][0] == pytest.approx(LOG2, abs=1e-7) == losses["fp32"][0]
    assert losses["bf16"][1:] != losses["fp32"][1:]
