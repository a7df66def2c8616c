"""training/stream.py: the pair schedule, and the token stream (resume and DDP slicing)."""
import numpy as np
import torch

from training.stream import TokenStream, schedule


def test_schedule_is_a_seeded_permutation_per_epoch():
    a = schedule(np.arange(0, 20), 10, seed=3)
    assert sorted(a[:10]) == list(range(10)) and sorted(a[10:]) == list(range(10))
    assert not np.array_equal(a[:10], a[10:])  # a new order each epoch
    assert np.array_equal(schedule(np.arange(5, 15), 10, seed=3), a[5:15])  # any window, same answer
    assert not np.array_equal(schedule(np.arange(10), 10, seed=4), a[:10])


class _FakeCache:
    """An opened cache without files: 6 pairs of 5 tokens, token value = 10 * pair + position."""
    n_pairs, tokens_per_pair, branch = 6, 5, torch.tensor([1, 1, 1, 2, 2], dtype=torch.uint8)

    def read(self, idx):
        idx = torch.as_tensor(np.asarray(idx))
        return (10 * idx[:, None, None] + torch.arange(5)[None, :, None]).half().expand(-1, -1, 3)


def test_stream_resume_and_rank_slices():
    def stream(rank=0, world=1):
        return TokenStream(4, 2, tokens_per_pair=5, seed=0, rank=rank, world=world, cache=_FakeCache())
    it = stream().batches(0)
    first = [next(it)[0] for _ in range(7)]  # 2 steps per chunk (10 tokens // 4): crosses 3 chunks
    it = stream().batches(3)
    assert all(torch.equal(a, next(it)[0]) for a in first[3:])  # resuming at step 3 = continuing
    vals = torch.cat(first[:2])[:, 0]
    assert len(set(vals.tolist())) == 8  # no token twice within a chunk
    r0, r1 = stream(0, 2).batches(0), stream(1, 2).batches(0)
    for full in first:  # 2 ranks see exactly the one-process batch, split in halves
        assert torch.equal(torch.cat([next(r0)[0], next(r1)[0]]), full)
