"""Batching: collate pairs into the view dicts the model takes, and the one DataLoader of the project.

collate_pairs follows DUSt3R's `collate_with_cat` in spirit: tensors and numpy arrays are stacked
along a new batch dim (B, ...), true_shape becomes (B, 2) int64, strings become lists. make_loader
adds deterministic seeded shuffling (a fresh permutation each epoch from one seeded generator) or a
given order (the training scripts' pair schedule), worker seeding, workers that leave Ctrl-C to the
main process, pinned memory and persistent workers (so render caches survive epochs).
"""
import random
import signal

import numpy as np
import torch


def _stack(values, key):
    first = values[0]
    if torch.is_tensor(first):
        return torch.stack(values)
    if isinstance(first, np.ndarray):
        return torch.from_numpy(np.stack(values))
    if isinstance(first, str):
        return list(values)
    if isinstance(first, (tuple, list, int, np.integer)):
        return torch.as_tensor(np.array(values, dtype=np.int64))
    raise TypeError(f"collate_pairs: don't know how to batch view field {key!r} of type {type(first)}")


def collate_pairs(pairs):
    """list of (view1, view2) -> (view1, view2) batched: img (B,3,H,W), true_shape (B,2) int64, ..."""
    out = []
    for v in range(2):
        views = [p[v] for p in pairs]
        keys = views[0].keys()
        if any(view.keys() != keys for view in views):
            raise ValueError("collate_pairs: views in a batch have different fields (mixed datasets with "
                             "and without geometry cannot share a batch)")
        shapes = {tuple(view["img"].shape) for view in views}
        if len(shapes) > 1:
            raise ValueError(f"collate_pairs: image shapes differ within a batch {sorted(shapes)}; use one "
                             "resolution per batch (make_loader does this for resolution lists)")
        batch = {k: _stack([view[k] for view in views], k) for k in keys}
        batch["true_shape"] = batch["true_shape"].long()
        out.append(batch)
    return tuple(out)


class AspectBatchSampler(torch.utils.data.Sampler):
    """Batches of (idx, ar_idx) with one resolution per batch, for datasets with several resolutions
    (DUSt3R's BatchedRandomSampler idea). Seeded; a new order every epoch."""

    def __init__(self, n, n_res, *, batch_size, shuffle=True, seed=0, drop_last=False):
        self.n, self.n_res, self.batch_size = n, n_res, batch_size
        self.shuffle, self.seed, self.drop_last, self.epoch = shuffle, seed, drop_last, 0

    def __len__(self):
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            ar = int(rng.integers(self.n_res))
            yield [(int(i), ar) for i in idx]


def _init_worker(worker_id):
    # torch gives each worker base_seed + id (base_seed from the loader's generator): pass it on
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's: training checkpoints, then exits


def make_loader(ds, batch_size, *, shuffle=True, seed=0, num_workers=2, pin_memory=None, sampler=None,
                drop_last=False):
    """DataLoader over pairs yielding (view1, view2) batches.

    Without a sampler: shuffled with a generator seeded by `seed` (deterministic), one resolution per batch
    for multi-resolution datasets. With a sampler (any iterable of dataset indices: a list, the training
    pair schedule): exactly its order; no generator then, so the loader draws its base seed from torch's
    global RNG as a plain DataLoader does (the training scripts' SAE init follows that RNG stream).
    """
    pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
    kw = dict(num_workers=num_workers, collate_fn=collate_pairs, pin_memory=pin_memory, worker_init_fn=_init_worker,
              persistent_workers=num_workers > 0)
    if sampler is not None:
        return torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **kw)
    kw["generator"] = torch.Generator().manual_seed(seed)
    if len(getattr(ds, "resolutions", [None])) > 1:
        bs = AspectBatchSampler(len(ds), len(ds.resolutions), batch_size=batch_size, shuffle=shuffle, seed=seed,
                                drop_last=drop_last)
        return torch.utils.data.DataLoader(ds, batch_sampler=bs, **kw)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, **kw)
