import gc
import json
import math
import warnings

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_pairs
from robalign.checkpoint import list_checkpoints
from robalign.config import build_config
from robalign.data.collate import collate
from robalign.methods import build_method
from robalign.trainer import NonFiniteError, Trainer, read_data


def _cfg(tmp_path, name="run", **train):
    tree = {"model": {"name": "tiny-llama", "lora_r": 0}, "method": {"name": "dpo"},
            "data": {"max_length": 64},
            "train": {"output_dir": str(tmp_path / name), "batch_size": 2, "max_steps": 6, "lr": 1e-2,
                      "progress": False, "optimizer": "adamw", **train}}
    return build_config(tree)


def _final_weights(run_dir):
    return load_file(str(list_checkpoints(run_dir / "checkpoints")[-1] / "weights.safetensors"))


def test_stop_and_resume_equals_uninterrupted(tmp_path):
    pairs = make_pairs(16)
    Trainer(_cfg(tmp_path, "full"), train_pairs=pairs, eval_pairs=pairs[:4]).train()
    Trainer(_cfg(tmp_path, "cut", stop_after=3), train_pairs=pairs, eval_pairs=pairs[:4]).train()
    assert [p.name for p in list_checkpoints(tmp_path / "cut" / "checkpoints")] == ["step-00000003"]
    Trainer(_cfg(tmp_path, "cut"), train_pairs=pairs, eval_pairs=pairs[:4]).train(resume=True)
    a, b = _final_weights(tmp_path / "full"), _final_weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [r["step"] for r in map(json.loads, (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines())
             if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]



def test_resume_from_an_older_checkpoint_logs_each_step_once(tmp_path):
    """Killed after logging steps the last checkpoint lacks (here 3 and 4, over checkpoint 2) and mid-line:
    the resumed run's metrics.jsonl and pairs.jsonl hold each step's rows once, equal to an uninterrupted run's."""
    import shutil

    def cfg(name, **train):  # gapo: a method that writes pairs.jsonl
        return build_config({"model": {"name": "tiny-llama", "lora_r": 0}, "method": {"name": "gapo"},
                             "data": {"max_length": 64},
                             "train": {"output_dir": str(tmp_path / name), "batch_size": 2, "max_steps": 6,
                                       "lr": 1e-2, "progress": False, "save_every": 2, "keep_last": 5,
                                       "eval_every": 2, **train}})

    pairs = make_pairs(16)
    Trainer(cfg("full"), train_pairs=pairs, eval_pairs=pairs[:4]).train()
    cut = tmp_path / "cut"
    Trainer(cfg("cut", stop_after=4), train_pairs=pairs, eval_pairs=pairs[:4]).train()
    shutil.rmtree(cut / "checkpoints" / "step-00000004")  # as if killed before it was written
    for name in ("metrics.jsonl", "pairs.jsonl"):
        with open(cut / name, "a") as fh:
            fh.write('{"step": 5, "lo')  # a row cut by the kill
    Trainer(cfg("cut"), train_pairs=pairs, eval_pairs=pairs[:4]).train(resume=True)

    def logged(run, name, drop=()):
        rows = [json.loads(x) for x in (tmp_path / run / name).read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in drop} for r in rows]

    assert logged("cut", "pairs.jsonl") == logged("full", "pairs.jsonl")
    timing = ("step_time_s", "tokens_per_s", "samples_per_s")
    assert logged("cut", "metrics.jsonl", timing) == logged("full", "metrics.jsonl", timing)

def test_training_reduces_loss_and_final_loads_with_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    pairs = make_pairs(8)
    cfg = _cfg(tmp_path, max_steps=12)
    trainer = Trainer(cfg, train_pairs=pairs, eval_pairs=pairs)
    summary = trainer.train()
    assert summary["final"]["eval/accuracy_h"] > summary["start"]["eval/accuracy_h"]
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in lines if "loss" in r]
    assert abs(losses[0] - math.log(2)) < 1e-6  # reference = policy at step 0
    assert losses[-1] < losses[0]
    for key in ("rewards/chosen", "rewards/margins", "logps/chosen", "learning_rate", "grad_norm", "step_time_s", "tokens"):
        assert key in lines[1]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    assert isinstance(model, torch.nn.Module)


def test_ties_count_half_in_training_and_evaluation(tmp_path):
    """At the first step the policy is its reference, so every margin is exactly 0: the step-0 held-out
    accuracy_h, the first step's rewards/accuracies and the training-fit shares all read 0.5 (chance)."""
    pairs = make_pairs(8)
    Trainer(_cfg(tmp_path, max_steps=1, batch_size=8), train_pairs=pairs, eval_pairs=pairs).train()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and rows[0]["eval/accuracy_h"] == 0.5
    first = next(r for r in rows if "loss" in r)
    assert first["rewards/margins"] == 0.0 and first["rewards/accuracies"] == 0.5
    final = rows[-1]
    assert final["train/fit_flipped"] == 0.5 and final["train/fit_clean"] == 0.5


def test_gradient_accumulation_equals_larger_batch(tiny, tmp_path):
    from robalign.data.tokenize import tokenize_pairs
    from robalign.reference import FrozenCopyReference

    model, tok = tiny
    data, _ = tokenize_pairs(tok, make_pairs(4), max_length=64, max_prompt_length=32)
    method = build_method("rdpo", {"epsilon": 0.2})
    ref = FrozenCopyReference(model)
    model.zero_grad()
    method.step(model, ref, collate(data, tok.pad_token_id)).loss.backward()
    big = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for half in (data[:2], data[2:]):
        (method.step(model, ref, collate(half, tok.pad_token_id)).loss / 2).backward()
    for a, p in zip(big, model.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6)
    model.zero_grad()


def test_lora_reference_is_base_model_and_cache_equals_live(tmp_path):
    pairs = make_pairs(8)
    live = Trainer(build_config({"model": {"name": "tiny-llama", "lora_r": 4}, "data": {"max_length": 64},
                                 "train": {"output_dir": str(tmp_path / "a"), "batch_size": 2, "progress": False}}),
                   train_pairs=pairs, eval_pairs=[])
    cached = Trainer(build_config({"model": {"name": "tiny-llama", "lora_r": 4, "reference": "cached"},
                                   "data": {"max_length": 64},
                                   "train": {"output_dir": str(tmp_path / "b"), "batch_size": 2, "progress": False}}),
                     train_pairs=pairs, eval_pairs=[])
    from robalign.models import load_model_and_tokenizer
    from robalign.reference import FrozenCopyReference

    base, _ = load_model_and_tokenizer("tiny-llama")
    frozen = FrozenCopyReference(base)
    batch = collate(live.train_data, live.pad_id)
    a, b, c = live.reference.logps(batch), cached.reference.logps(batch), frozen.logps(batch)
    assert torch.allclose(a.chosen, c.chosen, atol=1e-5) and torch.allclose(a.rejected, c.rejected, atol=1e-5)
    assert torch.allclose(a.chosen, b.chosen, atol=1e-5) and torch.allclose(a.rejected, b.rejected, atol=1e-5)
    assert list((tmp_path / "b" / "ref_cache").glob("*.safetensors"))


def test_nonfinite_loss_stops_with_step_and_pair_ids(tmp_path, monkeypatch):
    pairs = make_pairs(8)
    trainer = Trainer(_cfg(tmp_path), train_pairs=pairs, eval_pairs=[])
    real = trainer.method.step

    def poisoned(*a, **k):
        out = real(*a, **k)
        out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(trainer.method, "step", poisoned)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)  # what an unclosed log says when collected
        with pytest.raises(NonFiniteError, match=r"step 1, pairs \['p"):
            trainer.train()
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], "a log was left open on a NaN"
    skip = Trainer(_cfg(tmp_path, "skip", on_nonfinite="skip", max_steps=2), train_pairs=pairs, eval_pairs=[])
    monkeypatch.setattr(skip.method, "step", poisoned)
    before = [p.clone() for p in skip.model.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "lr_scheduler.step() before optimizer.step()"
        assert skip.train()["skipped_batches"] == 2
    assert all(torch.equal(a, b) for a, b in zip(before, skip.model.parameters()))


def test_clipping_matches_torch_and_skips_when_below_limit(tmp_path):
    trainer = Trainer(_cfg(tmp_path, max_grad_norm=0.5), train_pairs=make_pairs(8), eval_pairs=[])
    gen = torch.Generator().manual_seed(0)
    for p in trainer.trainable:
        p.grad = torch.randn(p.shape, generator=gen)
    copies = [torch.nn.Parameter(p.detach().clone()) for p in trainer.trainable]
    for c, p in zip(copies, trainer.trainable):
        c.grad = p.grad.clone()
    ref_norm = torch.nn.utils.clip_grad_norm_(copies, 0.5)
    norm = trainer._grad_norm()
    assert torch.allclose(norm, ref_norm, rtol=1e-5)
    trainer._clip(norm)
    for c, p in zip(copies, trainer.trainable):
        assert torch.allclose(c.grad, p.grad, rtol=1e-5, atol=1e-8)
    before = [p.grad.clone() for p in trainer.trainable]
    trainer.cfg.train.max_grad_norm = 1e9
    trainer._clip(trainer._grad_norm())
    assert all(torch.equal(a, p.grad) for a, p in zip(before, trainer.trainable))


def test_cached_reference_frees_the_copy_and_evaluates_like_live(tmp_path):
    pairs = make_pairs(8)
    live = Trainer(_cfg(tmp_path, "live"), train_pairs=pairs, eval_pairs=pairs[:4])
    cfg = _cfg(tmp_path, "cached")
    cfg.model.reference = "cached"
    cached = Trainer(cfg, train_pairs=pairs, eval_pairs=pairs[:4])
    assert cached.frozen_reference is None and cached.evaluator.reference is None
    for t in (live, cached):
        t.step()
    a, b = live.evaluate(), cached.evaluate()
    assert a["eval/margin_h"] == pytest.approx(b["eval/margin_h"], abs=1e-4)


def test_sharded_runs_refuse_whole_weight_methods_at_start_up():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from robalign.errors import UserError
    from robalign.trainer import refuse_sharded_weights

    fsdp = SimpleNamespace(distributed_type=DistributedType.FSDP, state=SimpleNamespace())
    zero = lambda stage: SimpleNamespace(distributed_type=DistributedType.DEEPSPEED,  # noqa: E731
                                         state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=stage)))
    gapo = build_config({"method": {"name": "gapo"}})
    for acc in (fsdp, zero(3)):
        with pytest.raises(UserError, match="ZeRO-2"):
            refuse_sharded_weights(acc, gapo)
    refuse_sharded_weights(zero(2), gapo)  # ZeRO-2 keeps whole weights: allowed
    refuse_sharded_weights(fsdp, build_config({"method": {"name": "dpo"}}))
    projected = build_config({"method": {"name": "oracle_robust"}, "oracle_robust": {"projection_radius": 1.0}})
    with pytest.raises(UserError, match="projection_radius"):
        refuse_sharded_weights(fsdp, projected)


def test_held_out_split_of_noised_data_is_independent_of_the_flips_and_scored_clean(tmp_path):
    """`robalign noise --seed 0` then `train --train.seed 0`: both draw from seed 0, and a split drawn from
    Random(0) held out exactly the flipped pairs (training got half the noise, evaluation only flips)."""
    from robalign.data import inject_noise, write_pairs

    clean = make_pairs(400)
    for p in clean:
        p.is_flipped = None
    noisy = inject_noise(clean, "flip", 0.2, seed=0)
    path = tmp_path / "noisy.jsonl"
    write_pairs(noisy, path)
    cfg = build_config({"model": {"name": "tiny-llama", "lora_r": 0}, "method": {"name": "dpo"},
                        "data": {"train": str(path), "eval_fraction": 0.25, "max_length": 64},
                        "train": {"output_dir": str(tmp_path / "run"), "seed": 0, "progress": False}})
    train, held = read_data(cfg, online=False)
    share = sum(bool(p.is_flipped) for p in train) / len(train)
    assert abs(share - 0.2) < 0.04, share  # the split drawn from Random(0) itself gave 0.07
    assert len(held) == 100 and not any(p.is_flipped for p in held)
    truth = {p.id: p.chosen for p in clean}
    assert all(p.chosen == truth[p.id] for p in held)  # restored flips are scored with the true label
