"""Common pair-dataset logic: resolutions, DUSt3R's per-item RNG protocol, bad-file accounting.

Subclasses implement `__len__` and `_get_views(idx, resolution, rng) -> [view0, view1]` (views
from `views.finish_view`, still in real orientation). This class then adds `idx`, transposes
portrait views to landscape and draws the `rng` check bytes, in DUSt3R's order.

geometry=False makes image-only views (img, true_shape, strings, idx, rng): subclasses then skip
reading and decoding depth and masks and computing pointmaps (`self.geometry`; SAE training needs
only images). The image pipeline and every rng draw are the same as with geometry, so the images
are bit-identical (tests/test_data_golden.py, tests/test_data_readers.py).

Bad input: a subclass raises `UnreadableFile` for a file it cannot decode. The pair is skipped with
a warning, marked in a shared bitmap (visible across DataLoader workers) and replaced by the next
readable pair. Loading fails once more than `max_bad_fraction` of the dataset is bad, counted the way
a user counts it: in unreadable *files* (images) over all files where the dataset indexes its files
(`n_files`; the folder dataset, where one broken photo spoils up to 2 * window pairs), else in pairs.
"""
import warnings

import numpy as np
import torch

from data.views import parse_resolution, transpose_to_landscape


MAX_LISTED = 100  # skipped pairs listed by name in summary() (and so in log.txt)


class UnreadableFile(OSError):
    """A dataset file that exists in the index but cannot be read or decoded; file_id: its index among the
    dataset's `n_files` files, when it has one."""

    def __init__(self, msg, file_id=None):
        super().__init__(msg)
        self.file_id = file_id


def read_or_raise(fn, path, what, file_id=None):
    """fn(path) with any decode error turned into UnreadableFile naming the file and what it is."""
    try:
        return fn(path)
    except Exception as err:  # decoders raise many types (OSError, ValueError, BadZipFile, ...)
        raise UnreadableFile(f"cannot read {what} {path}: {err}", file_id) from err


class PairDataset(torch.utils.data.Dataset):
    """Base of all pair datasets; see the module docstring."""

    name = "pairs"
    n_files = 0  # > 0: the dataset indexes its files and the bad-fraction rule counts files (UnreadableFile.file_id)

    def __init__(self, resolution=224, seed=0, aug_crop=0, max_bad_fraction=0.05, *, geometry=True):
        self.resolutions = parse_resolution(resolution)
        self.geometry = bool(geometry)  # False: image-only views, no depth/mask/pointmap work
        # ours differs from DUSt3R in one place: DUSt3R tests `if self.seed`, so seed=0 is unseeded
        # there; here any int is a seed and only None means "per-worker torch seed".
        self.seed = seed
        self.aug_crop = int(aug_crop)
        self.max_bad_fraction = float(max_bad_fraction)
        self._bad = None  # shared bool bitmap, created lazily once len() is known
        self._bad_files = None  # the same over files, when n_files > 0
        self.bad_reasons = {}  # pair idx -> message (this process only)

    def __len__(self):
        return len(self.pairs)  # every dataset lists its pairs as (P, 2) view indices

    def _bad_mask(self):
        if self._bad is None:
            self._bad = torch.zeros(len(self), dtype=torch.bool).share_memory_()
            self._bad_files = torch.zeros(self.n_files, dtype=torch.bool).share_memory_()
        return self._bad

    def bad_mask(self):
        """Bool tensor (len,), True for the pairs skipped so far as unreadable (shared across workers)."""
        return self._bad_mask()

    @property
    def bad_items(self):
        """Number of pairs skipped so far because a file was unreadable (all workers)."""
        return int(self._bad_mask().sum())

    def describe_pair(self, idx):
        """The files of pair idx, for the summary of skipped pairs (subclasses name them)."""
        return f"pair {idx}"

    def summary(self):
        """Counts, and every skipped pair (up to MAX_LISTED) by its files: read from the shared bitmap, so pairs
        skipped in DataLoader workers are listed too; the reason where this process saw it."""
        n_bad = self.bad_items
        bad = [int(j) for j in torch.nonzero(self._bad_mask()).ravel()]
        skipped = [self.bad_reasons.get(j, f"pair {j}: {self.describe_pair(j)}") for j in bad[:MAX_LISTED]]
        files = dict(files=self.n_files, bad_files=int(self._bad_files.sum())) if self.n_files else {}
        return dict(dataset=self.name, pairs=len(self), geometry=self.geometry, bad_items=n_bad,
                    bad_fraction=n_bad / max(len(self), 1), **files, max_bad_fraction=self.max_bad_fraction,
                    examples=skipped[:5], skipped=skipped)

    def __getitem__(self, index):
        idx, ar_idx = (index if isinstance(index, (tuple, list)) else (index, 0))
        idx, ar_idx = int(idx), int(ar_idx)
        if not 0 <= idx < len(self):
            raise IndexError(f"pair index {idx} out of range for {self.name} with {len(self)} pairs")
        bad = self._bad_mask()
        for step in range(len(self)):
            j = (idx + step) % len(self)  # deterministic replacement: the next readable pair
            if bad[j]:
                continue
            try:
                return self._item(j, ar_idx)
            except UnreadableFile as err:
                bad[j] = True
                self.bad_reasons[j] = str(err)
                warnings.warn(f"{self.name}: skipping pair {j}: {err}")
                if self.n_files and err.file_id is not None:
                    self._bad_files[err.file_id] = True
                n, total, what = ((int(self._bad_files.sum()), self.n_files, "files are unreadable") if self.n_files
                                  else (int(bad.sum()), len(self), "pairs have unreadable files"))
                if n > self.max_bad_fraction * total:
                    raise RuntimeError(f"{self.name}: {n} of {total} {what}, more than max_bad_fraction="
                                       f"{self.max_bad_fraction}; last: {err}. Fix or remove the files, or raise "
                                       f"max_bad_fraction") from err
        raise RuntimeError(f"{self.name}: no readable pair left")

    def _item(self, idx, ar_idx):
        if self.seed is not None:
            rng = np.random.default_rng(seed=self.seed + idx)
        else:
            if not hasattr(self, "_rng"):
                self._rng = np.random.default_rng(seed=torch.initial_seed())  # differs per worker
            rng = self._rng
        views = self._get_views(idx, self.resolutions[ar_idx], rng)
        for v, view in enumerate(views):
            view["idx"] = (idx, ar_idx, v)
        for view in views:
            transpose_to_landscape(view)
            view["rng"] = int.from_bytes(rng.bytes(4), "big")  # DUSt3R's RNG-state check value
        return tuple(views)

    def _get_views(self, idx, resolution, rng):
        raise NotImplementedError

    def __repr__(self):
        return (f"{type(self).__name__}({len(self)} pairs, resolution={self.resolutions}, seed={self.seed}"
                + ("" if self.geometry else ", geometry=False") + ")")
