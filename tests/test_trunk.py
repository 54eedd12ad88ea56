"""The frozen-trunk cache: training from cached trunk states equals training through the whole model."""

import json

import pytest
import torch

from conftest import make_pairs
from robalign.config import build_config
from robalign.data import inject_noise
from robalign.data.collate import collate
from robalign.data.tokenize import tokenize_pairs
from robalign.errors import ConfigError, UserError
from robalign.logprobs import sequence_logps
from robalign.losses import LOSSES
from robalign.models import byte_tokenizer, tiny_llama
from robalign.trainer import Trainer
from robalign.trunk import TrunkCache, check_split


def _run(tmp_path, name, trunk="off", *, lora=0, method="dpo", k=2, pairs=None, train=None, extra=None,
         resume=False):
    tok = byte_tokenizer()
    model = tiny_llama(tok, seed=0, layers=4)
    tree = {"model": {"name": "tiny-llama", "lora_r": lora, "train_last_k": k, "trunk_cache": trunk,
                      "trunk_cache_dir": str(tmp_path / "trunk")},
            "method": {"name": method}, "data": {"max_length": 64},
            "train": {"output_dir": str(tmp_path / name), "batch_size": 2, "max_steps": 5, "lr": 1e-4,
                      "progress": False, **(train or {})}}
    for section, values in (extra or {}).items():
        tree.setdefault(section, {}).update(values)
    pairs = pairs or make_pairs(12)
    trainer = Trainer(build_config(tree), train_pairs=pairs, eval_pairs=pairs[:4], model=model, tokenizer=tok)
    summary = trainer.train(resume=resume)
    rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return trainer, summary, rows, weights


def _losses(rows):
    return [r["loss"] for r in rows if "loss" in r]


def _assert_same_run(a, b, rel=2e-6, weight_tol=1e-6):
    la, lb = _losses(a[2]), _losses(b[2])
    assert len(la) == len(lb) > 0
    for x, y in zip(la, lb):
        assert abs(x - y) <= rel * abs(x) + 1e-12, (la, lb)
    assert a[3].keys() == b[3].keys()
    for k in a[3]:
        assert (a[3][k] - b[3][k]).abs().max().item() <= weight_tol, k
    ea = [r["eval/accuracy_M"] for r in a[2] if "eval/accuracy_M" in r]
    eb = [r["eval/accuracy_M"] for r in b[2] if "eval/accuracy_M" in r]
    assert ea == eb


# dpo (reference margin) and simpo (length-normalised, reference-free) in the unit tier; every other loss,
# the same two runs each, in the integration tier.
@pytest.mark.parametrize("method", [m if m in ("dpo", "simpo") else pytest.param(m, marks=pytest.mark.integration)
                                    for m in sorted(LOSSES)])
def test_cached_trunk_trains_like_the_whole_model_for_every_offline_loss(tmp_path, method):
    uncached = _run(tmp_path, "off", method=method)
    cached = _run(tmp_path, "on", "memory", method=method)
    # Log-probs agree to float rounding (~1e-7 relative), which moves with the batch arrangement, so the losses
    # of 5 steps drift apart by chance: up to 2.3e-6 relative measured over the losses (DPO 3.5e-7; 2026-12-07).
    # IPO's loss (h − 1/2β)² ≈ 25 multiplies an error in h by 2|h − 1/2β| ≈ 10: 3.3e-6.
    _assert_same_run(uncached, cached, rel=1e-5 if method == "ipo" else 3e-6)
    assert cached[0].trunk is not None and uncached[0].trunk is None


@pytest.mark.parametrize("lora", [0, 4])
def test_cached_trunk_from_disk_trains_like_the_whole_model(tmp_path, lora):
    uncached = _run(tmp_path, "off", lora=lora)
    cached = _run(tmp_path, "on", "disk", lora=lora)
    _assert_same_run(uncached, cached)
    assert list((tmp_path / "trunk").glob("*/shard-*.safetensors"))
    start = cached[1]["start"]  # the policy is the reference before the first step: exactly
    assert start["eval/margin_h"] == 0.0 and start["eval/accuracy_h"] == 0.5
    again = _run(tmp_path, "again", "disk", lora=lora)  # read back from disk: the same run bit for bit
    assert _losses(again[2]) == _losses(cached[2])


def test_gapo_on_the_cached_trunk_equals_gapo_on_the_whole_model(tmp_path):
    gapo = {"gapo": {"scope": "last_k_layers", "last_k": 2}}
    uncached = _run(tmp_path, "off", method="gapo", extra=gapo)
    cached = _run(tmp_path, "on", "memory", method="gapo", extra=gapo)
    _assert_same_run(uncached, cached)


def test_train_last_k_freezes_everything_below(tmp_path):
    full = _run(tmp_path, "full", k=1, train={"max_steps": 1})[0]
    trainable = {n for n, p in full.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("model.layers.3.") for n in trainable)
    lora = _run(tmp_path, "lora", k=1, lora=4, train={"max_steps": 1})[0]
    trainable = {n for n, p in lora.model.named_parameters() if p.requires_grad}
    assert trainable and all(".layers.3." in n and "lora_" in n for n in trainable)


def test_noisy_and_clean_copies_share_one_disk_cache(tmp_path):
    clean = make_pairs(12)
    _run(tmp_path, "clean", "disk", pairs=clean, train={"max_steps": 1})
    shards = set((tmp_path / "trunk").glob("*/shard-*"))
    noisy = inject_noise(clean, "flip", 0.4, seed=3)
    assert any(n.chosen != c.chosen for n, c in zip(noisy, clean))
    trainer = _run(tmp_path, "noisy", "disk", pairs=noisy, train={"max_steps": 1})[0]
    assert set((tmp_path / "trunk").glob("*/shard-*")) == shards  # nothing new was computed
    assert not trainer.trunk.missing_states(trainer.train_data) and not trainer.trunk.missing_ref(trainer.train_data)


@pytest.mark.integration  # three whole runs; the resume family (test_crash_resume) is integration too
def test_resume_on_the_cached_trunk_equals_an_uninterrupted_run(tmp_path):
    whole = _run(tmp_path, "whole", "memory", train={"max_steps": 6, "epochs": 0})
    _run(tmp_path, "cut", "memory", train={"max_steps": 6, "stop_after": 3})
    resumed = _run(tmp_path, "cut", "memory", train={"max_steps": 6}, resume=True)
    assert _losses(resumed[2]) == _losses(whole[2])
    for k in whole[3]:
        assert torch.equal(whole[3][k], resumed[3][k]), k


@pytest.mark.parametrize("method,extra,needle", [
    ("sail", {}, "generated anew"),
    ("gapo", {}, "gapo.scope: last_k_layers"),
    ("gapo", {"gapo": {"scope": "last_k_layers", "last_k": 3}}, "gapo.last_k: 2"),
])
def test_methods_that_cannot_use_the_trunk_cache_are_refused_at_start_up(tmp_path, method, extra, needle):
    with pytest.raises(ConfigError, match=needle):
        _run(tmp_path, "x", "memory", method=method, extra=extra)


def test_trunk_cache_needs_a_frozen_trunk():
    with pytest.raises(ConfigError, match="train_last_k"):
        build_config({"model": {"trunk_cache": "memory"}})
    with pytest.raises(ConfigError, match="model.trunk_cache"):
        build_config({"model": {"trunk_cache": "yes", "train_last_k": 2}})


def test_train_last_k_above_the_block_count_is_refused(tmp_path):
    with pytest.raises(UserError, match="more than this model's 4"):
        _run(tmp_path, "x", k=5)


def test_a_model_that_transforms_its_block_inputs_is_refused(tiny):
    model, tok = tiny
    model = tiny_llama(tok, seed=0, layers=4)
    pairs, _ = tokenize_pairs(tok, make_pairs(4), max_length=64, max_prompt_length=32)
    trunk = TrunkCache(2)
    trunk.fill_states(model, pairs, pad_id=tok.pad_token_id)
    batch = trunk.attach(collate(pairs, tok.pad_token_id), pairs)
    check_split(model, batch)  # a Llama replays exactly
    forward = model.model.forward

    def scaled(*args, inputs_embeds=None, **kw):  # as Gemma scales its embeddings by sqrt(hidden)
        return forward(*args, inputs_embeds=None if inputs_embeds is None else inputs_embeds * 8.0, **kw)

    model.model.forward = scaled
    with pytest.raises(UserError, match="trunk_cache: off"):
        check_split(model, batch)


def test_cached_log_probs_equal_the_full_forward_for_any_batch_arrangement(tiny):
    _, tok = tiny
    model = tiny_llama(tok, seed=1, layers=4).eval()
    pairs, _ = tokenize_pairs(tok, make_pairs(10, seed=2), max_length=64, max_prompt_length=32)
    trunk = TrunkCache(1)
    trunk.fill_states(model, pairs, pad_id=tok.pad_token_id, batch_size=3)  # other groups than below
    for group in (pairs[:4], pairs[4:], pairs[::3]):
        batch = collate(group, tok.pad_token_id)
        with torch.no_grad():
            full = sequence_logps(model, batch)
            cached = sequence_logps(model, trunk.attach(collate(group, tok.pad_token_id), group))
        torch.testing.assert_close(cached.chosen, full.chosen, rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(cached.rejected, full.rejected, rtol=1e-6, atol=1e-5)


def test_a_damaged_shard_is_ignored_and_its_sequences_computed_again(tmp_path, tiny):
    _, tok = tiny
    model = tiny_llama(tok, seed=0, layers=4)
    pairs, _ = tokenize_pairs(tok, make_pairs(6), max_length=64, max_prompt_length=32)
    first = TrunkCache(2, tmp_path / "cache")
    first.fill_states(model, pairs, pad_id=tok.pad_token_id)
    shard = first.save()
    assert TrunkCache(2, tmp_path / "cache").missing_states(pairs) == []  # read back whole
    shard.write_bytes(b"\x00" * 16)  # e.g. a truncated copy
    again = TrunkCache(2, tmp_path / "cache")
    assert len(again.missing_states(pairs)) == len(pairs)
    assert again.fill_states(model, pairs, pad_id=tok.pad_token_id) == len(pairs)


def test_an_unwritable_trunk_cache_folder_is_one_message(tmp_path, tiny):
    _, tok = tiny
    model = tiny_llama(tok, seed=0, layers=4)
    pairs, _ = tokenize_pairs(tok, make_pairs(2), max_length=64, max_prompt_length=32)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cache = TrunkCache(2, blocker / "cache")  # a folder under a file cannot be made
    cache.fill_states(model, pairs, pad_id=tok.pad_token_id)
    with pytest.raises(UserError, match="trunk_cache_dir: cannot write"):
        cache.save()
