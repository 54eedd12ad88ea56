"""Generation-based evaluation: win rate, KL(π‖π_ref) and gold rewards, checked against brute force."""

import copy
import json

import pytest
import torch

from conftest import make_pairs
from robalign.cli import main
from robalign.data.tokenize import render
from robalign.evaluate_generation import encode_prompts, generation_eval
from robalign.models import apply_lora
from robalign.oracles import LengthReward

PROMPTS = [
    [{"role": "user", "content": "Describe the ocean."}],
    "Q: alpha beta\nA:",
    [{"role": "user", "content": "Tell me about a much longer topic, please, in detail."}],
]
METRICS = ("gen/reward_greedy", "gen/reward_sampled", "gen/ref_reward_greedy", "gen/ref_reward_sampled",
           "gen/win_rate_greedy", "gen/win_rate_sampled", "gen/kl")


def _sharp_other_model(tok):
    """A different random model with a 20x LM head: far from the policy, so KL is clearly positive."""
    from robalign.models import tiny_llama

    other = tiny_llama(tok, seed=1)
    with torch.no_grad():
        other.lm_head.weight.mul_(20.0)
    return other


def _full_vocab_logp(model, prompt_ids, completion_ids) -> float:
    """Σ_t log p(y_t | ·) by brute force: one plain forward, log-softmax over the whole vocabulary."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    n = len(prompt_ids)
    return sum(logp[n - 1 + t, y].item() for t, y in enumerate(completion_ids))


def test_a_model_against_itself_ties_everywhere_and_has_zero_kl(tiny):
    model, tok = tiny
    out = generation_eval(model, copy.deepcopy(model), tok, PROMPTS, LengthReward(unit="chars"), n_samples=2,
                          max_new_tokens=6, temperature=0.9)
    assert out["gen/win_rate_greedy"] == 0.5  # exactly: every greedy comparison is a tie
    assert out["gen/win_rate_sampled"] == 0.5  # common random numbers: the same samples, ties again
    assert out["gen/kl"] == 0.0
    assert all(k == 0.0 for rec in out["generations"] for k in rec["kl"])
    assert out["gen/reward_greedy"] == out["gen/ref_reward_greedy"]


def test_adapter_disabled_reference_equals_a_frozen_copy(tiny):
    model, tok = tiny
    peft = apply_lora(copy.deepcopy(model), r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    with torch.no_grad():  # move the adapters so that π ≠ π_ref
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    kw = dict(n_samples=2, max_new_tokens=5, temperature=1.0, seed=3)
    live = generation_eval(peft, None, tok, PROMPTS, LengthReward(), adapter_disabled=True, **kw)
    frozen = generation_eval(peft, model, tok, PROMPTS, LengthReward(), **kw)
    assert live["gen/kl"] != 0.0
    for key in METRICS:
        assert live[key] == pytest.approx(frozen[key], abs=1e-5), key
    assert [r["reference_samples"] for r in live["generations"]] == [r["reference_samples"] for r in frozen["generations"]]
    with pytest.raises(ValueError, match="exactly one"):
        generation_eval(peft, model, tok, PROMPTS, LengthReward(), adapter_disabled=True)


def test_reference_cache_skips_the_reference_decode_and_changes_nothing(tiny, monkeypatch):
    import robalign.evaluate_generation as eg

    model, tok = tiny
    decoded = []
    real = eg._decode_side
    monkeypatch.setattr(eg, "_decode_side", lambda m, *a, **k: decoded.append(m) or real(m, *a, **k))
    reference, cache = copy.deepcopy(model), {}
    kw = dict(n_samples=2, max_new_tokens=4, temperature=1.0, reference_cache=cache)
    first = generation_eval(model, reference, tok, PROMPTS, LengthReward(), **kw)
    again = generation_eval(model, reference, tok, PROMPTS, LengthReward(), **kw)
    assert decoded == [model, reference, model] and len(cache) == 1
    assert first == again


def test_kl_against_another_model_matches_a_full_vocabulary_computation(tiny):
    model, tok = tiny
    other = _sharp_other_model(tok)
    out = generation_eval(model, other, tok, PROMPTS, LengthReward(), n_samples=2, max_new_tokens=6,
                          temperature=1.0, seed=1)
    assert out["gen/kl"] > 0
    _, prompt_ids = encode_prompts(tok, PROMPTS)
    for i in (0, 2):
        rec = out["generations"][i]
        for ids, kl in zip(rec["kl_sample_ids"], rec["kl"]):
            brute = _full_vocab_logp(model, prompt_ids[i], ids) - _full_vocab_logp(other, prompt_ids[i], ids)
            assert kl == pytest.approx(brute, abs=1e-3, rel=1e-4)
    every = [k for rec in out["generations"] for k in rec["kl"]]
    assert out["gen/kl"] == pytest.approx(sum(every) / len(every))


def test_kl_samples_come_from_the_untempered_policy(tiny):
    model, tok = tiny
    tempered = generation_eval(model, copy.deepcopy(model), tok, PROMPTS[:1], LengthReward(), n_samples=2,
                               max_new_tokens=5, temperature=0.5)
    untempered = generation_eval(model, copy.deepcopy(model), tok, PROMPTS[:1], LengthReward(), n_samples=2,
                                 max_new_tokens=5, temperature=1.0)
    # temperature 1: the sampled completions are the KL samples; otherwise a separate draw at temperature 1
    rec = untempered["generations"][0]
    assert [tok.decode(y, skip_special_tokens=True) for y in rec["kl_sample_ids"]] == rec["policy_samples"]
    assert tempered["generations"][0]["kl_sample_ids"] != untempered["generations"][0]["kl_sample_ids"]


def test_rewards_are_the_reward_function_of_the_decoded_texts(tiny):
    model, tok = tiny
    reward = LengthReward(unit="chars")
    other = _sharp_other_model(tok)
    out = generation_eval(model, other, tok, PROMPTS, reward, n_samples=2, max_new_tokens=6, seed=5)
    recs = out["generations"]
    texts = [render(tok, p, "")[0] for p in PROMPTS]
    assert [r["prompt"] for r in recs] == texts
    for side in ("policy", "reference"):
        greedy = reward(texts, [r[f"{side}_greedy"] for r in recs])
        assert [r[f"reward_{side}_greedy"] for r in recs] == greedy.tolist()
        for k in range(2):
            sampled = reward(texts, [r[f"{side}_samples"][k] for r in recs])
            assert [r[f"reward_{side}_samples"][k] for r in recs] == sampled.tolist()
    assert out["gen/reward_greedy"] == pytest.approx(sum(r["reward_policy_greedy"] for r in recs) / 3)
    wins = [(a > b) + 0.5 * (a == b) for r in recs for a, b in zip(r["reward_policy_samples"],
                                                                     r["reward_reference_samples"])]
    assert out["gen/win_rate_sampled"] == pytest.approx(sum(wins) / len(wins))
    # Greedy texts of the batched, left-padded decode are each prompt's own greedy continuation.
    _, prompt_ids = encode_prompts(tok, PROMPTS)
    for ids, rec in zip(prompt_ids, recs):
        alone = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                               do_sample=False, max_new_tokens=6, pad_token_id=tok.pad_token_id,
                               eos_token_id=tok.eos_token_id)[0, len(ids):].tolist()
        assert rec["policy_greedy"] == tok.decode(alone, skip_special_tokens=True)


def test_cli_eval_gold_adds_generation_metrics(tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p.to_row()) + "\n" for p in make_pairs(6)))
    args = ["eval", "--model", "tiny-llama", "--data", str(data), "--max-length", "64", "--gold", "length",
            "--prompts", "3", "--max-new-tokens", "4"]
    assert main([*args, "--reference", "tiny-llama"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "eval/accuracy_h" in result and result["gen/prompts"] == 3.0
    for key in METRICS:
        assert key in result, key
    assert result["gen/kl"] == 0.0 and result["gen/win_rate_greedy"] == 0.5  # same weights on both sides
    assert main(args) == 2
    assert "--gold needs --reference" in capsys.readouterr().err


def test_empty_inputs_are_rejected(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="at least one prompt"):
        generation_eval(model, model, tok, [], LengthReward())
    with pytest.raises(ValueError, match="temperature"):
        generation_eval(model, model, tok, PROMPTS, LengthReward(), temperature=0.0)
