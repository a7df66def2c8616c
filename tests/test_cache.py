"""training/cache.py: the activation cache is written once, resumes, extends, and reads back exactly."""
import json
import os

import pytest
import torch

from data import make_dataset, make_loader
from models.loading import load_dust3r
from training.cache import ActivationCache
from training.hooks import extract, hook_sources

torch.set_num_threads(1)
DEV = torch.device("cpu")


@pytest.fixture(scope="module")
def model():
    return load_dust3r("random-tiny", DEV, landscape_only=True)


@pytest.fixture(scope="module")
def dataset():
    return make_dataset("builtin", split="val", resolution=224)


def _tokens(model, ds, idx, sources):
    out = [extract(model, v1, v2, sources, DEV)[0] for v1, v2 in make_loader(ds, 2, sampler=idx, num_workers=0)]
    return torch.cat(out)


def test_cache_write_resume_extend_immutable(tmp_path, model, dataset):
    sources = hook_sources("dec_blocks*.1", ("dec_blocks",))
    identity = dict(weights="tiny", hook="dec_blocks*.1", dataset="builtin", split="val", resolution=224)
    cache = ActivationCache(tmp_path, identity, pairs_per_shard=2)
    cache.write(model, dataset, sources=sources, device=DEV, n_pairs=3, dust3r_batch=2)
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
    cache.write(model, dataset, sources=sources, device=DEV, n_pairs=3, dust3r_batch=2, log=logs.append)
    assert logs == [f"cache {cache.dir}: writing 1 shard(s), pairs 2..2"]
    assert torch.equal(cache.open().read([0, 1, 2]), ref[:3])
    # asking for more pairs only adds shards after the existing ones
    cache.write(model, dataset, sources=sources, device=DEV, n_pairs=4, dust3r_batch=2, log=logs.append)
    assert logs[-1] == f"cache {cache.dir}: writing 1 shard(s), pairs 3..3"
    assert torch.equal(cache.open().read([3, 0, 1, 2]), ref[[3, 0, 1, 2]])
    assert os.stat(cache.shard_path(0, 2)).st_mtime_ns == stat0.st_mtime_ns
    # another hook point is another directory
    assert ActivationCache(tmp_path, {**identity, "hook": "dec_blocks.1"}).dir != cache.dir
