import torch

from conftest import make_pairs
from robalign.data.collate import collate
from robalign.data.tokenize import tokenize_pairs
from robalign.logprobs import sequence_logps


def _batch(tok, n=4):
    data, _ = tokenize_pairs(tok, make_pairs(n), max_length=64, max_prompt_length=32)
    return data, collate(data, tok.pad_token_id)


def naive_logps(model, prompt_ids, completion_ids):
    """Independent computation: one unpadded sequence, full-vocabulary log-softmax, explicit loop."""
    ids = torch.tensor([prompt_ids + completion_ids])
    logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    total = 0.0
    for t in range(len(prompt_ids), len(prompt_ids) + len(completion_ids)):
        total += logp[t - 1, ids[0, t]].item()
    return total


def test_concatenated_forward_equals_naive(tiny):
    model, tok = tiny
    data, batch = _batch(tok)
    with torch.no_grad():
        out = sequence_logps(model, batch)
        for i, pair in enumerate(data):
            assert abs(out.chosen[i].item() - naive_logps(model, pair.prompt_ids, pair.chosen_ids)) < 1e-4
            assert abs(out.rejected[i].item() - naive_logps(model, pair.prompt_ids, pair.rejected_ids)) < 1e-4
            assert out.chosen_lengths[i].item() == len(pair.chosen_ids)
            assert out.rejected_lengths[i].item() == len(pair.rejected_ids)


def assert_batch_equals_separate_forwards(model, tok, data, batch):
    """The batch's log-probs equal one forward per pair (and the naive loop), and so do the gradients."""
    model.zero_grad()
    joint = sequence_logps(model, batch)
    (joint.chosen.sum() - 0.5 * joint.rejected.sum()).backward()
    g_joint = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for i, pair in enumerate(data):
        with torch.no_grad():
            assert abs(joint.chosen[i].item() - naive_logps(model, pair.prompt_ids, pair.chosen_ids)) < 1e-4
        one = sequence_logps(model, collate([pair], tok.pad_token_id))
        assert torch.allclose(one.chosen, joint.chosen[i:i + 1].detach(), atol=1e-4)
        assert torch.allclose(one.rejected, joint.rejected[i:i + 1].detach(), atol=1e-4)
        (one.chosen.sum() - 0.5 * one.rejected.sum()).backward()
    for a, p in zip(g_joint, model.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-4)
    model.zero_grad()


def test_concatenated_equals_separate_forwards_with_gradients(tiny):
    model, tok = tiny
    data, batch = _batch(tok)
    assert_batch_equals_separate_forwards(model, tok, data, batch)


def test_shared_prompt_pack_equals_two_row_layout_with_gradients(tiny):
    model, tok = tiny
    data, _ = _batch(tok, n=5)
    grads = []
    outs = []
    for shared in (True, False):
        batch = collate(data, tok.pad_token_id, shared_prompt=shared)
        assert (batch.packed is not None) == shared
        model.zero_grad()
        out = sequence_logps(model, batch)
        (out.chosen.sum() - 0.3 * out.rejected.sum()).backward()
        outs.append(out)
        grads.append([p.grad.clone() for p in model.parameters()])
    a, b = outs
    assert torch.allclose(a.chosen, b.chosen, atol=1e-4) and torch.allclose(a.rejected, b.rejected, atol=1e-4)
    assert torch.equal(a.chosen_lengths, b.chosen_lengths)
    for x, y in zip(*grads):
        assert torch.allclose(x, y, atol=1e-4)
    model.zero_grad()


def test_shared_prompt_pack_hides_chosen_from_rejected():
    from robalign.data.collate import pack_shared_prompt
    from robalign.data.tokenize import TokenizedPair

    pack = pack_shared_prompt([TokenizedPair([1, 2], [3, 4], [5], "a", 0)], pad_id=0)
    assert pack.input_ids.tolist() == [[1, 2, 3, 4, 5]]
    assert pack.position_ids.tolist() == [[0, 1, 2, 3, 2]]
    assert pack.attention[0, 0, 4].tolist() == [True, True, False, False, True]
    assert pack.source_pos.tolist() == [1, 2, 1] and pack.seq_row.tolist() == [0, 0, 1]


def test_padding_does_not_change_logps(tiny):
    model, tok = tiny
    data, _ = _batch(tok)
    batch = collate(data, tok.pad_token_id, shared_prompt=False)
    wider = collate(data, tok.pad_token_id, shared_prompt=False)
    pad = torch.full((wider.input_ids.shape[0], 7), tok.pad_token_id)
    wider.input_ids = torch.cat([wider.input_ids, pad], 1)
    wider.attention_mask = torch.cat([wider.attention_mask, torch.zeros_like(pad)], 1)
    wider.completion_mask = torch.cat([wider.completion_mask, torch.zeros_like(pad, dtype=torch.bool)], 1)
    with torch.no_grad():
        a, b = sequence_logps(model, batch), sequence_logps(model, wider)
    assert torch.allclose(a.chosen, b.chosen, atol=1e-5) and torch.allclose(a.rejected, b.rejected, atol=1e-5)


def test_pairs_sharing_a_row_equal_separate_forwards_with_gradients(tiny):
    """Pairs of very different lengths get packed side by side; log-probs and gradients must not change."""
    model, tok = tiny
    from robalign.data.tokenize import TokenizedPair

    full, _ = _batch(tok, n=4)
    # One long pair and three cut short: the short ones must share rows.
    data = [full[0]] + [TokenizedPair(p.prompt_ids[:3 + i], p.chosen_ids[:2 + i], p.rejected_ids[:4 - i], p.id, p.index)
                        for i, p in enumerate(full[1:])]
    batch = collate(data, tok.pad_token_id)
    assert batch.packed.input_ids.shape[0] < len(data)
    assert_batch_equals_separate_forwards(model, tok, data, batch)
