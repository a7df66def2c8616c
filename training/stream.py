"""The shuffled stream of training tokens: the pair schedule, DUSt3R's tokens of this rank's pairs, and the
chunked shuffle that hands out SAE batches.

Shuffling (tokens of one image are correlated; README "Defaults and why"): the stream fills a buffer
with the tokens of `buffer_pairs` pairs (a "chunk"), permutes them with a generator seeded by
(seed, chunk), and hands out `batch_size`-token batches until the chunk is used up. Chunk c holds
global pairs [c*M, (c+1)*M) of a fixed pair schedule (a fresh permutation of the dataset each epoch,
seeded by (seed, epoch)). Everything is a function of (seed, step), so a resumed run rebuilds the
chunk it stopped in and continues with the very next batch: nothing is lost or repeated.

DDP: rank r runs DUSt3R on pairs r, r+W, r+2W, ... of each chunk; the chunk is all-gathered so every
rank holds the same buffer, and rank r trains on slice r of each global batch. So W processes see
exactly the tokens one process sees, split W ways (tests/test_train_scripts.py, test_stream.py).
"""
import math

import numpy as np
import torch
import torch.distributed as dist
from einops import rearrange

from data import make_loader
from training.cache import ActivationCache
from training.hooks import extract


def schedule(positions, n_pairs, seed):
    """Global pair positions -> dataset indices: epoch e is a permutation seeded by (seed, e)."""
    positions = np.asarray(positions, dtype=np.int64)
    out = np.empty_like(positions)
    for epoch in np.unique(positions // n_pairs):
        sel = positions // n_pairs == epoch
        out[sel] = np.random.default_rng([seed, int(epoch)]).permutation(n_pairs)[positions[sel] % n_pairs]
    return out


class ScheduleSampler(torch.utils.data.Sampler):
    """Endless dataset indices of global positions start, start+stride, ... (this rank's pairs)."""

    def __init__(self, n_pairs, seed, start, stride):
        self.n_pairs, self.seed, self.start, self.stride = n_pairs, seed, start, stride

    def __iter__(self):
        g = self.start
        while True:
            block = np.arange(g, g + 1024 * self.stride, self.stride)
            yield from schedule(block, self.n_pairs, self.seed).tolist()
            g += 1024 * self.stride


class PairTokens:
    """This rank's pairs at global positions start+rank, start+rank+W, ... -> tokens, `take(n)` at a time."""

    def __init__(self, model, dataset, *, sources, device, start, rank, world, seed, dust3r_batch, num_workers):
        self.model, self.sources, self.device = model, sources, device
        sampler = ScheduleSampler(len(dataset), seed, start + rank, world)
        self.batches = iter(make_loader(dataset, dust3r_batch, sampler=sampler, num_workers=num_workers))
        self.pending, self.branch = [], None

    def take(self, n):
        while sum(len(p) for p in self.pending) < n:
            view1, view2 = next(self.batches)
            x, self.branch = extract(self.model, view1, view2, self.sources, self.device)
            self.pending.append(x)
        x = torch.cat(self.pending)
        self.pending = [x[n:]] if len(x) > n else []
        return x[:n], self.branch


class TokenStream:
    """Shuffled token batches for global steps start_step, start_step+1, ... (see module docstring).

    Source: `make_pairs(first_position)` -> PairTokens (streamed from DUSt3R) or `cache` (an opened
    ActivationCache). Yields (x (B/W, C) float32 on device, branch (B/W,) uint8) for this rank.
    """

    def __init__(self, batch_size, buffer_pairs, *, tokens_per_pair, seed, rank=0, world=1, make_pairs=None,
                 cache=None, device="cpu"):
        if batch_size % world or buffer_pairs % world:
            raise ValueError(f"batch_size={batch_size} and buffer_pairs={buffer_pairs} must divide by the world "
                             f"size {world}")
        if buffer_pairs * tokens_per_pair < batch_size:
            raise ValueError(f"buffer_pairs={buffer_pairs} pairs hold {buffer_pairs * tokens_per_pair} tokens, "
                             f"fewer than batch_size={batch_size}")
        self.B, self.M, self.seed, self.rank, self.world = batch_size, buffer_pairs, seed, rank, world
        self.make_pairs, self.cache, self.device = make_pairs, cache, device
        self.steps_per_chunk = buffer_pairs * tokens_per_pair // batch_size  # the remainder is skipped
        self.pairs, self.last = None, None

    def chunk(self, c):
        """All tokens of chunk c, flattened (M*T, C) in global pair order (identical on every rank).
        Chunks must be asked for in order; the last one is kept, so asking twice costs nothing."""
        if self.last is not None and self.last[0] == c:
            return self.last[1:]
        if self.cache is not None:
            idx = schedule(np.arange(c * self.M, (c + 1) * self.M), self.cache.n_pairs, self.seed)
            x, branch = self.cache.read(idx).to(self.device), self.cache.branch
        else:
            if self.pairs is None:
                self.pairs = self.make_pairs(c * self.M)
            x, branch = self.pairs.take(self.M // self.world)  # (M/W, T, C), this rank's pairs
            if self.world > 1:
                parts = [torch.empty_like(x) for _ in range(self.world)]
                dist.all_gather(parts, x.contiguous())
                x = rearrange(torch.stack(parts), "w m t c -> (m w) t c")  # back to global pair order
        self.last = (c, rearrange(x, "m t c -> (m t) c"), branch.repeat(self.M).to(self.device))
        return self.last[1:]

    def init_sample(self, n):
        """n tokens of the first chunk (identical on every rank), drawn with the stream's seed: the sample
        for the SAE's input normalisation and geometric-median b_dec."""
        x, _ = self.chunk(0)
        return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))[:n]].float()

    def batches(self, start_step):
        c, s = divmod(start_step, self.steps_per_chunk)
        b = self.B // self.world
        while True:
            x, branch = self.chunk(c)
            perm = torch.from_numpy(np.random.default_rng([self.seed, c]).permutation(len(x))).to(x.device)
            for s in range(s, self.steps_per_chunk):
                idx = perm[s * self.B + self.rank * b: s * self.B + (self.rank + 1) * b]
                yield x[idx].float(), branch[idx]
            c, s = c + 1, 0


def token_stream(model, dataset, *, sources, device, tokens_per_pair, batch_size, buffer_pairs, seed, rank=0,
                 world=1, dust3r_batch=16, num_workers=0, cache_dir="cache", identity=None, train_tokens=0,
                 log=print):
    """The training tokens as a TokenStream: live from DUSt3R when identity is None, else from the activation
    cache that `identity` (cache_identity) names under cache_dir, first written for the pairs that hold
    train_tokens tokens (at most the whole dataset)."""
    shared = dict(tokens_per_pair=tokens_per_pair, seed=seed, rank=rank, world=world, device=device)
    if identity is None:
        def make_pairs(start):
            return PairTokens(model, dataset, sources=sources, device=device, start=start, rank=rank, world=world,
                              seed=seed, dust3r_batch=dust3r_batch, num_workers=num_workers)
        return TokenStream(batch_size, buffer_pairs, make_pairs=make_pairs, **shared)
    act_cache = ActivationCache(cache_dir, identity).write(
        model, dataset, sources=sources, device=device, n_pairs=math.ceil(train_tokens / tokens_per_pair),
        dust3r_batch=dust3r_batch, num_workers=num_workers, rank=rank, world=world, log=log).open()
    log(f"cache: {act_cache.dir} ({act_cache.n_pairs} pairs)")
    return TokenStream(batch_size, buffer_pairs, cache=act_cache, **shared)
