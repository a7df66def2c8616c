"""Hook parsing, the pair schedule, the token stream (resume and DDP slicing) and the activation cache."""
import json
import os

import numpy as np
import pytest
import torch

from data import make_dataset
from workbench.activations import (ActivationCache, TokenStream, build_dust3r, extract, hook_sources, pair_loader,
                                   schedule)

torch.set_num_threads(1)
DEV = torch.device("cpu")


@pytest.fixture(scope="module")
def model():
    return build_dust3r("random-tiny", DEV)


@pytest.fixture(scope="module")
def dataset():
    return make_dataset("builtin", split="val", resolution=224)


def test_hook_sources():
    assert hook_sources("enc_blocks.3", ("enc_blocks.", "enc_norm")) == [("enc_blocks.3", 1), ("enc_blocks.3", 2)]
    dec = ("dec_blocks.", "dec_blocks2.", "dec_blocks*.")
    assert hook_sources("dec_blocks.1", dec) == [("dec_blocks.1", 1)]
    assert hook_sources("dec_blocks2.1", dec) == [("dec_blocks2.1", 2)]
    assert hook_sources("dec_blocks*.1", dec) == [("dec_blocks.1", 1), ("dec_blocks2.1", 2)]
    with pytest.raises(ValueError, match="starting with"):
        hook_sources("dec_blocks.1", ("enc_blocks.", "enc_norm"))  # decoder point in the encoder script


def test_schedule_is_a_seeded_permutation_per_epoch():
    a = schedule(np.arange(0, 20), 10, seed=3)
    assert sorted(a[:10]) == list(range(10)) and sorted(a[10:]) == list(range(10))
    assert not np.array_equal(a[:10], a[10:])  # a new order each epoch
    assert np.array_equal(schedule(np.arange(5, 15), 10, seed=3), a[5:15])  # any window, same answer
    assert not np.array_equal(schedule(np.arange(10), 10, seed=4), a[:10])


def _tokens(model, ds, idx, sources):
    out = [extract(model, v1, v2, sources, DEV)[0] for v1, v2 in pair_loader(ds, idx, 2, 0)]
    return torch.cat(out)


def test_cache_write_resume_extend_immutable(tmp_path, model, dataset):
    sources = hook_sources("dec_blocks*.1", ("dec_blocks",))
    identity = dict(weights="tiny", hook="dec_blocks*.1", dataset="builtin", split="val", resolution=224)
    cache = ActivationCache(tmp_path, identity, pairs_per_shard=2)
    cache.write(model, dataset, sources, DEV, n_pairs=3, dust3r_batch=2)
    names = sorted(os.listdir(cache.dir))
    assert names == ["meta.json", "shard_00000000_00000002.npy", "shard_00000002_00000003.npy"]
    for name in names:  # written once, read-only afterwards
        assert os.stat(os.path.join(cache.dir, name)).st_mode & 0o222 == 0
    meta = json.load(open(os.path.join(cache.dir, "meta.json")))
    assert meta["tokens_per_pair"] == 2 * 196 and meta["branch"] == [1] * 196 + [2] * 196
    assert cache.open().n_pairs == 3
    ref = _tokens(model, dataset, [0, 1, 2, 3], sources)
    assert torch.equal(cache.read([0, 1, 2]), ref[:3])
    assert torch.equal(cache.read([2, 0]), ref[[2, 0]])
    # an interrupted write: last shard missing, a stray temporary file; the first shard is never touched
    stat0 = os.stat(cache.shard_path(0, 2))
    os.remove(cache.shard_path(2, 3))
    open(cache.shard_path(2, 3) + ".tmp999", "wb").write(b"partial")
    assert cache.open().n_pairs == 2
    logs = []
    cache.write(model, dataset, sources, DEV, n_pairs=3, dust3r_batch=2, log=logs.append)
    assert logs == [f"cache {cache.dir}: writing 1 shard(s), pairs 2..2"]
    assert torch.equal(cache.open().read([0, 1, 2]), ref[:3])
    # asking for more pairs only adds shards after the existing ones
    cache.write(model, dataset, sources, DEV, n_pairs=4, dust3r_batch=2, log=logs.append)
    assert logs[-1] == f"cache {cache.dir}: writing 1 shard(s), pairs 3..3"
    assert torch.equal(cache.open().read([3, 0, 1, 2]), ref[[3, 0, 1, 2]])
    assert os.stat(cache.shard_path(0, 2)).st_mtime_ns == stat0.st_mtime_ns
    # another hook point is another directory
    assert ActivationCache(tmp_path, {**identity, "hook": "dec_blocks.1"}).dir != cache.dir


class _FakeCache:
    """An opened cache without files: 6 pairs of 5 tokens, token value = 10 * pair + position."""
    n_pairs, tokens_per_pair, branch = 6, 5, torch.tensor([1, 1, 1, 2, 2], dtype=torch.uint8)

    def read(self, idx):
        idx = torch.as_tensor(np.asarray(idx))
        return (10 * idx[:, None, None] + torch.arange(5)[None, :, None]).half().expand(-1, -1, 3)


def test_stream_resume_and_rank_slices():
    def stream(rank=0, world=1):
        return TokenStream(4, 2, 5, seed=0, rank=rank, world=world, cache=_FakeCache())
    it = stream().batches(0)
    first = [next(it)[0] for _ in range(7)]  # 2 steps per chunk (10 tokens // 4): crosses 3 chunks
    it = stream().batches(3)
    assert all(torch.equal(a, next(it)[0]) for a in first[3:])  # resuming at step 3 = continuing
    vals = torch.cat(first[:2])[:, 0]
    assert len(set(vals.tolist())) == 8  # no token twice within a chunk
    r0, r1 = stream(0, 2).batches(0), stream(1, 2).batches(0)
    for full in first:  # 2 ranks see exactly the one-process batch, split in halves
        assert torch.equal(torch.cat([next(r0)[0], next(r1)[0]]), full)
