import torch

from robalign.data.collate import BatchStream, collate, epoch_batches
from robalign.data.tokenize import TokenizedPair


def _pair(i, p, c, r):
    return TokenizedPair(list(range(10, 10 + p)), list(range(50, 50 + c)), list(range(80, 80 + r)), f"id{i}", i)


def test_layout_of_the_docstring_example():
    batch = collate([_pair(0, 2, 3, 1), _pair(1, 1, 2, 4)], pad_id=0)
    assert batch.input_ids.shape == (4, 5)
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch.completion_mask.int().tolist() == [[0, 0, 1, 1, 1], [0, 1, 1, 0, 0],
                                                    [0, 0, 1, 0, 0], [0, 1, 1, 1, 1]]
    assert batch.input_ids[2, :3].tolist() == [10, 11, 80]
    assert batch.index.tolist() == [0, 1] and batch.ids == ["id0", "id1"]


def test_epoch_batches_cover_each_index_once_and_are_seeded():
    lengths = [(i * 37) % 50 for i in range(103)]
    a = epoch_batches(lengths, 4, seed=1, epoch=0)
    assert a == epoch_batches(lengths, 4, seed=1, epoch=0)
    assert a != epoch_batches(lengths, 4, seed=1, epoch=1)
    flat = [i for b in a for i in b]
    assert len(flat) == len(set(flat)) and len(flat) >= 100 and all(len(b) == 4 for b in a)


def test_length_bucketing_reduces_padding():
    lengths = [(i * 37) % 97 + 1 for i in range(256)]
    bucketed = epoch_batches(lengths, 8, seed=0, epoch=0)
    random_ = epoch_batches(lengths, 8, seed=0, epoch=0, bucket_batches=1)
    pad = lambda bs: sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)  # noqa: E731
    assert pad(bucketed) < 0.5 * pad(random_)


def test_two_ranks_see_the_global_batch_of_one_process():
    pairs = [_pair(i, 1 + i % 3, 1 + i % 5, 2) for i in range(40)]
    one = BatchStream(pairs, 4, seed=3, pad_id=0)
    ranks = [BatchStream(pairs, 2, seed=3, pad_id=0, world_size=2, rank=r) for r in range(2)]
    for pos in range(12):
        ids = one.batch(pos).ids
        assert ranks[0].batch(pos).ids + ranks[1].batch(pos).ids == ids
    assert torch.equal(one.batch(3).input_ids, one.batch(3).input_ids)


def test_pack_rows_first_fit_decreasing_never_wider_than_the_longest_pair():
    from robalign.data.collate import pack_rows

    lengths = [10, 3, 7, 4, 2, 10, 5]
    rows = pack_rows(lengths)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= max(lengths) for r in rows)
    # Brute force: 41 tokens in rows of 10 need at least 5 rows; first-fit decreasing finds 5 here.
    assert len(rows) == 5 and rows[0] == [0] and rows[1] == [5]


def test_short_pairs_share_a_row_and_cannot_see_each_other():
    from robalign.data.collate import pack_shared_prompt

    long = TokenizedPair([1, 2, 3], [4, 5, 6], [7, 8, 9], "long", 0)  # 9 tokens
    a = TokenizedPair([1], [2, 3], [4], "a", 1)  # 4 tokens
    b = TokenizedPair([5, 6], [7], [8, 9], "b", 2)  # 5 tokens
    pack = pack_shared_prompt([a, long, b], pad_id=0)
    assert pack.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 7, 8, 9], [5, 6, 7, 8, 9, 1, 2, 3, 4]]
    assert pack.position_ids[1].tolist() == [0, 1, 2, 2, 3, 0, 1, 2, 1]
    att = pack.attention[1, 0]
    assert not att[5:, :5].any() and not att[:5, 5:].any()  # the two pairs of row 1 are blind to each other
    assert att[8].tolist() == [False] * 5 + [True, False, False, True]  # a's rejected sees its prompt only
    # seq_row follows the pairs' batch order (chosen i -> i, rejected i -> 3 + i), wherever they sit.
    assert pack.seq_row.tolist().count(0) == 2 and pack.seq_row.tolist().count(3) == 1
    first_of_a = pack.seq_row.tolist().index(0)
    assert (pack.source_row[first_of_a].item(), pack.source_pos[first_of_a].item()) == (1, 5)


def test_the_batch_keeps_its_source_pairs_whose_prompts_are_the_rows_before_the_completion():
    pairs = [TokenizedPair([5, 6], [7, 8, 9], [10], "a", 3), TokenizedPair([11], [12], [13, 14, 15], "b", 0, True)]
    batch = collate(pairs, pad_id=0).to("cpu")
    assert batch.pairs == pairs
    for i, p in enumerate(batch.pairs):
        start = int(batch.completion_mask[i].nonzero()[0])
        assert batch.input_ids[i, :start].tolist() == p.prompt_ids
