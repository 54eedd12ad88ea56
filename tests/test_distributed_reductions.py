"""robalign.distributed: with two gloo ranks the reductions give what one process computes for the whole
batch; with one process (no process group) they are the identity."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from robalign.distributed import is_main, mean_over_processes, rank_and_world, sum_over_processes


def test_one_process_is_the_identity():
    assert not dist.is_initialized()
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    assert rank_and_world() == (0, 1) and is_main()
    assert sum_over_processes(x) is x
    tensors = [torch.ones(2, 3), torch.zeros(4)]
    assert mean_over_processes(tensors) is tensors


def _rank(rank: int, world: int, init_file: str, out_dir: str):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        # Rank r holds r + 1 times a base pattern, in two tensors of different shapes.
        grads = [torch.arange(6.0).view(2, 3) * (rank + 1), torch.tensor([1.0, -2.0]) * (rank + 1)]
        mean = mean_over_processes(grads)
        total = sum_over_processes(torch.tensor([float(rank), 1.0]))
        torch.save({"rank_world": rank_and_world(), "main": is_main(), "mean": mean, "sum": total,
                    "own": grads}, f"{out_dir}/r{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_reduce_to_the_global_values(tmp_path):
    mp.spawn(_rank, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, join=True)
    out = [torch.load(tmp_path / f"r{r}.pt") for r in range(2)]
    assert [o["rank_world"] for o in out] == [(0, 2), (1, 2)]
    assert [o["main"] for o in out] == [True, False]
    for o in out:
        # (1 + 2) / 2 = 1.5 times the pattern, shapes kept
        assert torch.equal(o["mean"][0], torch.arange(6.0).view(2, 3) * 1.5)
        assert torch.equal(o["mean"][1], torch.tensor([1.5, -3.0]))
        assert torch.equal(o["sum"], torch.tensor([1.0, 2.0]))  # ranks 0 + 1, counts 1 + 1
    assert torch.equal(out[1]["own"][1], torch.tensor([2.0, -4.0]))  # the inputs are left as they were
