"""Memoised reference log-probs: read back exactly what the provider computed, and only for the same batch."""

import dataclasses

import torch

from conftest import make_pairs
from robalign.data.collate import collate
from robalign.data.tokenize import tokenize_pairs
from robalign.reference import DiskMemo, FrozenCopyReference, MemoizedReference


class Counting:
    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def logps(self, batch):
        self.calls += 1
        return self.inner.logps(batch)


def _batches(tiny):
    model, tok = tiny
    pairs, _ = tokenize_pairs(tok, make_pairs(8), max_length=64, max_prompt_length=32)
    flipped = [dataclasses.replace(p, chosen_ids=p.rejected_ids, rejected_ids=p.chosen_ids) for p in pairs[:4]]
    return collate(pairs[:4], tok.pad_token_id), collate(pairs[4:], tok.pad_token_id), \
        collate(flipped, tok.pad_token_id)


def _same(a, b):
    return all(torch.equal(getattr(a, k), getattr(b, k))
               for k in ("chosen", "rejected", "chosen_lengths", "rejected_lengths"))


def test_a_memoised_batch_is_computed_once_and_read_back_exactly(tiny):
    first, second, flipped = _batches(tiny)
    live = FrozenCopyReference(tiny[0])
    counting = Counting(live)
    memo = MemoizedReference(counting, {})
    a = memo.logps(first)
    assert _same(memo.logps(first), a) and _same(a, live.logps(first))
    assert counting.calls == 1 and (memo.hits, memo.misses) == (1, 1)
    # Other tokens are another key: the next batch, and the same pairs with chosen and rejected swapped.
    assert _same(memo.logps(second), live.logps(second))
    swapped = memo.logps(flipped)
    assert counting.calls == 3
    assert _same(swapped, live.logps(flipped))


def test_a_disk_memo_is_shared_by_another_provider_and_keyed_by_thread_count(tiny, tmp_path):
    first, _, _ = _batches(tiny)
    live = FrozenCopyReference(tiny[0])
    writer = MemoizedReference(live, DiskMemo(tmp_path / "memo"))
    computed = writer.logps(first)
    counting = Counting(live)
    reader = MemoizedReference(counting, DiskMemo(tmp_path / "memo"))  # e.g. another sweep process
    assert _same(reader.logps(first), computed) and counting.calls == 0
    assert len(list((tmp_path / "memo").iterdir())) == 1  # one entry, no temporary file left
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)  # another count may round differently: computed, not read
        reader.logps(first)
    finally:
        torch.set_num_threads(threads)
    assert counting.calls == 1
