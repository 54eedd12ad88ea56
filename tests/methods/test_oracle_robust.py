"""Oracle-robust online alignment (R-SCGD) on the tiny model.

The projection helper is tested in test_oracle_robust_iterates.py, the proximal refinement in
test_oracle_robust_prox.py (which imports the fixture and helpers here).
"""

import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_pairs
from robalign.checkpoint import list_checkpoints
from robalign.config import build_config
from robalign.data.collate import collate
from robalign.data.tokenize import TokenizedPair, tokenize_pairs
from robalign.methods import build_method
from robalign.methods.oracle_robust_iterates import list_iterates, trainable
from robalign.reference import FrozenCopyReference
from robalign.trainer import Trainer


@pytest.fixture
def setup(tiny):
    model, tok = tiny
    data, _ = tokenize_pairs(tok, make_pairs(4), max_length=64, max_prompt_length=32)
    policy = copy.deepcopy(model)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return policy, FrozenCopyReference(model), collate(data, tok.pad_token_id), tok


def _method(tok, tmp_path=None, params=None, **section):
    tree = {"online": {"max_new_tokens": 6}, "method": {"name": "oracle_robust", **(params or {})},
            "oracle_robust": section}
    if tmp_path is not None:
        tree["train"] = {"output_dir": str(tmp_path)}
    cfg = build_config(tree)
    method = build_method("oracle_robust", cfg.method.params, cfg)
    method.bind(tok)
    if tmp_path is None:
        method.out_dir = None
    return method


def _spy_samples(method):
    seen = []
    real = method._sample

    def spy(*a, **k):
        out = real(*a, **k)
        seen.extend(out)
        return out

    method._sample = spy
    return seen


def test_rho_zero_sf_zero_is_online_dpo_on_the_generated_pairs(setup):
    policy, ref, batch, tok = setup
    method = _method(tok, params={"rho": 0.0}, sf_coef=0.0)
    seen = _spy_samples(method)
    torch.manual_seed(4)
    out = method.step(policy, ref, batch)
    won = [r["y1_preferred"] for r in method.last_generations]
    pairs = [TokenizedPair(g.prompt_ids, g.y1_ids if w else g.y2_ids, g.y2_ids if w else g.y1_ids, str(i), i)
             for i, (g, w) in enumerate(zip(seen, won))]
    assert [g.prompt_ids for g in seen] == [
        batch.input_ids[i, :int(batch.completion_mask[i].nonzero()[0])].tolist() for i in range(4)]
    dpo = build_method("dpo", {}).step(policy, ref, collate(pairs, tok.pad_token_id))
    assert torch.allclose(out.loss, dpo.loss, atol=1e-6, rtol=0)
    assert out.metrics["online/abs_h"].item() > 0


def test_penalty_is_rho_beta_mean_abs_h_and_generations_are_recorded(setup, tmp_path):
    policy, ref, batch, tok = setup
    method = _method(tok, tmp_path, params={"rho": 0.3, "beta": 0.2}, sf_coef=0.0)
    torch.manual_seed(5)
    out = method.step(policy, ref, batch)
    m = out.metrics
    assert m["online/penalty"].item() == pytest.approx(0.3 * 0.2 * m["online/abs_h"].item(), rel=1e-6)
    base = torch.nn.functional.softplus(-0.2 * out.per_pair["h"])
    assert torch.allclose(out.loss, (base + 0.06 * out.per_pair["h"].abs()).mean(), atol=1e-6)
    rows = [json.loads(x) for x in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == batch.ids
    assert set(rows[0]) >= {"step", "prompt", "y1", "y2", "y1_preferred", "observed_prob", "gold_prob", "route"}
    agree = sum((r["gold_prob"] > 0.5) == r["y1_preferred"] if r["gold_prob"] != 0.5 else 0.5 for r in rows) / 4
    assert m["online/oracle_agreement"].item() == pytest.approx(agree)
    for key in ("online/sf_term", "online/len_y1", "online/len_y2", "online/projection_active"):
        assert key in m


def test_projection_keeps_the_iterate_in_the_ball(setup):
    policy, ref, batch, tok = setup
    policy = copy.deepcopy(policy)
    radius = 1e-3
    method = _method(tok, projection_radius=radius)
    theta0 = [p.detach().clone() for _, p in trainable(policy)]
    opt = torch.optim.SGD(policy.parameters(), lr=1.0)
    for _ in range(2):
        method.step(policy, ref, batch).loss.backward()
        opt.step()
        opt.zero_grad()
        method.after_optimizer_step(policy)
        dist = math.sqrt(sum(float((p.detach() - c).pow(2).sum()) for (_, p), c in zip(trainable(policy), theta0)))
        assert dist <= radius * (1 + 1e-5)
        assert method.projected.item() == 1.0
    assert method.step(policy, ref, batch).metrics["online/projection_active"].item() == 1.0


def test_random_output_is_a_saved_iterate_and_recorded(setup, tmp_path):
    policy, ref, batch, tok = setup
    policy = copy.deepcopy(policy)
    method = _method(tok, tmp_path, output="random", iterate_every=1)
    opt = torch.optim.SGD(policy.parameters(), lr=0.5)
    for _ in range(3):
        method.step(policy, ref, batch).loss.backward()
        opt.step()
        opt.zero_grad()
    method.finalize(tmp_path)
    saved = list_iterates(tmp_path / "iterates")
    assert [t for t, _ in saved] == [0, 1, 2]
    choice = json.loads((tmp_path / "output_iterate.json").read_text())
    assert choice["output"] == "random" and choice["step"] in (0, 1, 2) and choice["candidates"] == [0, 1, 2]
    chosen = load_file(str(tmp_path / choice["iterate"]))
    from transformers import AutoModelForCausalLM

    out = AutoModelForCausalLM.from_pretrained(tmp_path / "output")
    params = dict(out.named_parameters())
    for name, value in chosen.items():
        assert torch.equal(params[name], value), name
    first, last = load_file(str(saved[0][1])), load_file(str(saved[-1][1]))
    assert any(not torch.equal(first[k], last[k]) for k in first)  # the iterates differ


def _cfg(tmp_path, name, **train):
    tree = {"model": {"name": "tiny-llama", "lora_r": 0}, "method": {"name": "oracle_robust"},
            "online": {"max_new_tokens": 4}, "oracle_robust": {"projection_radius": 0.05},
            "data": {"max_length": 48},
            "train": {"output_dir": str(tmp_path / name), "batch_size": 2, "max_steps": 4, "lr": 0.5,
                      "optimizer": "sgd", "progress": False, **train}}
    return build_config(tree)


def _with_hooks(trainer, resume=False):
    """What the trainer is asked to call: begin() at the start of train(), after_optimizer_step() per step."""
    opt_step, resume = trainer.optimizer.step, trainer._resume

    def step(*a, **k):
        out = opt_step(*a, **k)
        trainer.method.after_optimizer_step(trainer.acc.unwrap_model(trainer.model))
        return out

    def resumed():
        resume()
        trainer.method.begin(trainer.out, trainer.step_num, resumed=True)

    trainer.optimizer.step, trainer._resume = step, resumed
    if not resume:
        trainer.method.begin(trainer.out, 0, resumed=False)
    return trainer


def test_exact_resume(tmp_path):
    pairs = make_pairs(8)
    _with_hooks(Trainer(_cfg(tmp_path, "full"), train_pairs=pairs, eval_pairs=pairs[:2])).train()
    _with_hooks(Trainer(_cfg(tmp_path, "cut", stop_after=2), train_pairs=pairs, eval_pairs=pairs[:2])).train()
    _with_hooks(Trainer(_cfg(tmp_path, "cut"), train_pairs=pairs, eval_pairs=pairs[:2]), resume=True).train(resume=True)
    weights = [load_file(str(list_checkpoints(tmp_path / n / "checkpoints")[-1] / "weights.safetensors"))
               for n in ("full", "cut")]
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k
    full, cut = ((tmp_path / n / "generations.jsonl").read_text() for n in ("full", "cut"))
    assert full == cut and [json.loads(x)["step"] for x in full.splitlines()] == [1, 1, 2, 2, 3, 3, 4, 4]
    metrics = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("online/projection_active") == 1.0 for r in metrics)  # the ball was hit
