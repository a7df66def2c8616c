"""The on-disk activation cache: one hook point's tokens over one dataset, written once, read by mmap.

`cache/<hash>/` holds meta.json and shard_<lo>_<hi>.npy (fp16 tokens of dataset pairs [lo, hi), read
with mmap). The hash covers the weights fingerprint, hook, dataset, root, split, resolution and
precision. Shards are written to a temporary name and renamed (atomic), made read-only, and never
touched again; an interrupted write resumes at the first missing shard.
"""
import hashlib
import json
import os

import numpy as np
import torch
import torch.distributed as dist

from data import make_loader
from training.hooks import extract


def weights_fingerprint(model):
    """Short content hash of the weights: names, shapes and the first/last 256 values of every tensor
    (cheap for 2 GB of weights, and it tells apart the pre/post June-2024 checkpoints: naver/dust3r issue 157)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        flat = t.detach().reshape(-1).float().cpu()
        h.update(f"{name}{tuple(t.shape)}".encode())
        h.update(torch.cat([flat[:256], flat[-256:]]).numpy().tobytes())
    return h.hexdigest()[:16]


def cache_identity(model, hook, *, dataset, data_root, resolution, device):
    """What names a training-token cache: weights fingerprint, hook, dataset, root, split, resolution, precision."""
    return dict(weights=weights_fingerprint(model), hook=hook, dataset=dataset, split="train",
                root=os.path.abspath(data_root) if data_root else "", resolution=resolution,
                precision="bf16-autocast" if device.type == "cuda" else "fp32")


class ActivationCache:
    """Immutable, hash-addressed fp16 token shards of one hook point over one dataset (module docstring).

    shard_<lo>_<hi>.npy holds dataset pairs [lo, hi) as (pairs, tokens_per_pair, d). New shards end at
    multiples of pairs_per_shard (or at the requested n_pairs), so asking for more pairs later only adds
    shards after the existing ones.
    """

    def __init__(self, root, identity, pairs_per_shard=256):
        self.identity = dict(identity)
        key = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:16]
        self.dir = os.path.join(root, key)
        self.pairs_per_shard = pairs_per_shard

    def shard_path(self, lo, hi):
        return os.path.join(self.dir, f"shard_{lo:08d}_{hi:08d}.npy")

    def shards(self):
        """[(lo, hi)] of the complete shards covering pairs [0, n) without a gap."""
        found = {}
        for name in os.listdir(self.dir) if os.path.isdir(self.dir) else []:
            if name.startswith("shard_") and name.endswith(".npy"):
                lo, hi = map(int, name[6:-4].split("_"))
                found[lo] = hi
        out, lo = [], 0
        while lo in found:
            out.append((lo, found[lo]))
            lo = found[lo]
        return out

    def plan(self, n_pairs):
        """Shards still to write so that pairs [0, n_pairs) are covered."""
        done = dict(self.shards())
        out, lo, P = [], 0, self.pairs_per_shard
        while lo < n_pairs:
            if lo in done:
                lo = done[lo]
                continue
            hi = min((lo // P + 1) * P, n_pairs)
            out.append((lo, hi))
            lo = hi
        return out

    def write(self, model, dataset, *, sources, device, n_pairs, dust3r_batch=8, num_workers=0, rank=0, world=1,
              log=print):
        """Make sure shards cover pairs [0, n_pairs) of `dataset` (index order); resumes if interrupted."""
        n_pairs = min(n_pairs, len(dataset))
        os.makedirs(self.dir, exist_ok=True)
        if world > 1:
            dist.barrier()  # every rank plans from the same files
        todo = self.plan(n_pairs)[rank::world]
        if todo:
            log(f"cache {self.dir}: writing {len(todo)} shard(s), pairs {todo[0][0]}..{todo[-1][1] - 1}")
        meta_path = os.path.join(self.dir, "meta.json")
        for lo, hi in todo:
            parts = []
            for view1, view2 in make_loader(dataset, dust3r_batch, sampler=range(lo, hi), num_workers=num_workers):
                x, branch = extract(model, view1, view2, sources, device)
                parts.append(x.cpu())
            arr = torch.cat(parts).numpy()  # (pairs, T, C) float16
            tmp = self.shard_path(lo, hi) + f".tmp{os.getpid()}"
            with open(tmp, "wb") as f:
                np.save(f, arr, allow_pickle=False)
            os.replace(tmp, self.shard_path(lo, hi))  # atomic: a shard exists complete or not at all
            os.chmod(self.shard_path(lo, hi), 0o444)
            if not os.path.exists(meta_path):
                meta = {"identity": self.identity, "tokens_per_pair": arr.shape[1], "d": arr.shape[2],
                        "dtype": "float16", "branch": branch.tolist(),
                        "layout": "shard_<lo>_<hi>.npy: dataset pairs [lo, hi) as (pairs, tokens_per_pair, d); "
                                  "a pair's tokens: [view/branch 1 patch grid, view/branch 2 patch grid], "
                                  "row-major; 'branch' gives each token position's view/branch"}
                with open(meta_path + f".tmp{os.getpid()}", "w") as f:
                    json.dump(meta, f, indent=1)
                os.replace(meta_path + f".tmp{os.getpid()}", meta_path)
                os.chmod(meta_path, 0o444)
        if world > 1:
            dist.barrier()
        return self

    def open(self):
        """Memory-map every complete shard (contiguous from pair 0)."""
        path = os.path.join(self.dir, "meta.json")
        fix = f"delete the folder {self.dir} and rerun: the cache is rewritten from the dataset"
        try:
            with open(path) as f:
                meta = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}); the cache is damaged: {fix}") from None
        if meta.get("identity") != self.identity:
            raise ValueError(f"{path}: identity {meta.get('identity')} != expected {self.identity}: {fix}")
        self.meta, self.tokens_per_pair, self.d = meta, meta["tokens_per_pair"], meta["d"]
        self.branch = torch.tensor(meta["branch"], dtype=torch.uint8)
        spans = self.shards()
        self._lo = np.array([lo for lo, _ in spans])
        self._maps = []
        for lo, hi in spans:
            try:
                arr = np.load(self.shard_path(lo, hi), mmap_mode="r")
            except (ValueError, OSError) as e:  # a truncated or overwritten .npy
                raise ValueError(f"{self.shard_path(lo, hi)}: damaged cache shard ({e}); {fix}") from None
            if arr.shape != (hi - lo, self.tokens_per_pair, self.d) or arr.dtype != np.float16:
                raise ValueError(f"{self.shard_path(lo, hi)}: damaged cache shard: {arr.dtype} {arr.shape}, expected "
                                 f"float16 {(hi - lo, self.tokens_per_pair, self.d)}; {fix}")
            self._maps.append(arr)
        self.n_pairs = spans[-1][1] if spans else 0
        return self

    def read(self, pair_idx):
        """Pairs (dataset indices) -> (len, T, C) float16 tensor, read from the memory maps."""
        pair_idx = np.asarray(pair_idx)
        shard = np.searchsorted(self._lo, pair_idx, side="right") - 1
        out = np.empty((len(pair_idx), self.tokens_per_pair, self.d), dtype=np.float16)
        for i in np.unique(shard):
            sel = shard == i
            out[sel] = self._maps[i][pair_idx[sel] - self._lo[i]]
        return torch.from_numpy(out)
