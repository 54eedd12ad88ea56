"""SAIL on the tiny model: routing, self-labelling, the DPO limit, sampled rows, prompt-only data."""

import copy
import dataclasses
import json
import math

import pytest
import torch

from conftest import make_pairs
from robalign.config import build_config
from robalign.data.collate import collate
from robalign.data.prompts import prompt_row_to_pair
from robalign.data.tokenize import tokenize_pairs
from robalign.errors import ConfigError, UserError
from robalign.generation import GeneratedPair
from robalign.logprobs import sequence_logps
from robalign.losses.online import DP, PR, draw_routes
from robalign.methods import build_method
from robalign.reference import FrozenCopyReference


@pytest.fixture
def setup(tiny):
    model, tok = tiny
    data, _ = tokenize_pairs(tok, make_pairs(4), max_length=64, max_prompt_length=32)
    policy = copy.deepcopy(model)
    with torch.no_grad():  # policy ≠ reference, so h ≠ 0
        g = torch.Generator().manual_seed(0)
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return policy, FrozenCopyReference(model), collate(data, tok.pad_token_id), tok


def _sail(tok, tmp_path=None, **sail):
    tree = {"online": {"max_new_tokens": 6}, "method": {"name": "sail"}, "sail": sail}
    if tmp_path is not None:
        tree["train"] = {"output_dir": str(tmp_path)}
    cfg = build_config(tree)
    method = build_method("sail", cfg.method.params, cfg)
    method.bind(tok)
    if tmp_path is None:
        method.out_dir = None  # nothing written
    return method


def test_zero_shares_is_plain_dpo_exactly(setup):
    policy, ref, batch, tok = setup
    sail = _sail(tok, r=0.0, p=0.0, g=0.0).step(policy, ref, batch)
    dpo = build_method("dpo", {}).step(policy, ref, batch)
    assert torch.equal(sail.loss, dpo.loss)
    assert dpo.loss.item() != pytest.approx(math.log(2))  # h ≠ 0: the check is not trivial
    for key in ("rewards/chosen", "rewards/margins", "logps/chosen"):
        assert torch.equal(sail.metrics[key], dpo.metrics[key])


def test_routes_come_from_the_global_rng(setup):
    policy, ref, batch, tok = setup
    method = _sail(tok, r=1.0, p=0.0, g=0.0)
    torch.manual_seed(7)
    expected = draw_routes(torch.rand(batch.num_pairs), 1.0, 0.0, 0.0)
    torch.manual_seed(7)
    out = method.step(policy, ref, batch)
    assert torch.equal(out.per_pair["route"].long(), expected)
    assert (expected == DP).all()


def test_dp_relabelling_swaps_with_probability_one_minus_sigmoid(setup, tiny):
    policy, ref, _, tok = setup
    data, _ = tokenize_pairs(tok, make_pairs(4), max_length=64, max_prompt_length=32)
    big = collate(data * 60, tok.pad_token_id)  # 240 pairs with 4 distinct margins
    method = _sail(tok, r=1.0, p=0.0, g=0.0)
    method.beta = 0.05
    torch.manual_seed(0)
    swaps, expected, var = 0.0, 0.0, 0.0
    with torch.no_grad():
        for _ in range(3):
            out = method.step(policy, ref, big)
            h = out.per_pair["h"] * torch.where(out.per_pair["swapped"] > 0, -1.0, 1.0)  # back to h(y1, y2)
            q = 1 - torch.sigmoid(method.beta * h)
            swaps += out.per_pair["swapped"].sum().item()
            expected += q.sum().item()
            var += (q * (1 - q)).sum().item()
    assert 0.15 < expected / (3 * big.num_pairs) < 0.85  # probabilities away from 0 and 1
    assert abs(swaps - expected) < 4 * math.sqrt(var)
    # The extra DP term uses the relabelled margin h_w.
    hw = out.per_pair["h"]
    base = torch.nn.functional.softplus(-method.beta * hw)
    extra = -0.5 * 0.2 * torch.nn.functional.logsigmoid(method.beta * hw) ** 2
    assert torch.allclose(out.per_pair["loss"], base + extra, atol=1e-6)


def test_pr_rows_use_oracle_labels_and_their_own_prompt(setup, tmp_path, monkeypatch):
    """PR with coef_pr = 0 is DPO on the oracle-labelled samples; samples stay with their prompts."""
    policy, ref, batch, tok = setup
    data, _ = tokenize_pairs(tok, make_pairs(4), max_length=64, max_prompt_length=32)
    method = _sail(tok, tmp_path, r=0.0, p=0.0, g=1.0, coef_pr=0.0)
    by_prompt = {tuple(p.prompt_ids): p for p in data}

    def sample(policy, prompts, generator):
        return [GeneratedPair(list(pr), by_prompt[tuple(pr)].chosen_ids, by_prompt[tuple(pr)].rejected_ids,
                              "one two three", "one") for pr in prompts]

    monkeypatch.setattr(method, "_sample", sample)
    torch.manual_seed(2)
    out = method.step(policy, ref, batch)
    # bt:length prefers y1 ("one two three") with P = σ(2); the loss is DPO on the labelled pairs.
    records = [json.loads(x) for x in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == batch.ids and {r["route"] for r in records} == {"pr"}
    assert all(r["observed_prob"] == pytest.approx(1 / (1 + math.exp(-2))) for r in records)
    for rec, i in zip(records, range(batch.num_pairs)):
        start = int(batch.completion_mask[i].nonzero()[0])
        assert rec["prompt"] == tok.decode(batch.input_ids[i, :start].tolist())
        assert rec["step"] == 1
    won = torch.tensor([r["y1_preferred"] for r in records])
    assert not won.all()  # σ(2) ≈ 0.88 per pair: some labels went to y2 (seeded)
    with torch.no_grad():
        pl, rl = sequence_logps(policy, batch), ref.logps(batch)
    h = (pl.chosen - rl.chosen) - (pl.rejected - rl.rejected)
    expected = torch.nn.functional.softplus(-0.1 * torch.where(won, h, -h)).mean()
    assert torch.allclose(out.loss, expected, atol=1e-6)


def test_pp_rows_sample_and_score_the_generated_pair(setup, tmp_path):
    policy, ref, batch, tok = setup
    method = _sail(tok, tmp_path, r=0.0, p=1.0, g=0.0)
    torch.manual_seed(3)
    out = method.step(policy, ref, batch)
    out.loss.backward()
    policy.zero_grad()
    records = [json.loads(x) for x in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert len(records) == batch.num_pairs and {r["route"] for r in records} == {"pp"}
    assert all(r["gold_prob"] is None and 0 < r["observed_prob"] < 1 for r in records)
    assert out.metrics["sail/frac_pp"].item() == 1.0
    assert out.metrics["online/len_y1"].item() <= 6


def test_prompt_only_rows_routed_to_dpo_are_an_error(tiny):
    model, tok = tiny
    pairs = [prompt_row_to_pair({"prompt": f"Q: {w}\nA:"}, path="x.jsonl", line=i + 1, default_id=f"x{i}")
             for i, w in enumerate(["a", "bb"])]
    data, _ = tokenize_pairs(tok, pairs, max_length=64, max_prompt_length=32)
    method = _sail(tok, r=0.0, p=0.0, g=0.0)
    with pytest.raises(UserError, match="prompt-only"):
        method.step(model, FrozenCopyReference(model), collate(data, tok.pad_token_id))


def test_config_checks():
    with pytest.raises(ConfigError, match="must be <= 1"):
        build_config({"sail": {"r": 0.5, "p": 0.4, "g": 0.2}})
    with pytest.raises(ConfigError, match="rho"):
        build_config({"method": {"name": "sail", "rho": 0.1}})
    with pytest.raises(ConfigError, match="cached"):
        build_method("sail", {}, build_config({"model": {"reference": "cached"}}))
    assert PR == 3


def test_a_batch_without_its_source_pairs_is_refused(setup):
    policy, ref, batch, tok = setup
    with pytest.raises(ValueError, match="PreferenceBatch.pairs"):
        _sail(tok).step(policy, ref, dataclasses.replace(batch, pairs=None))
