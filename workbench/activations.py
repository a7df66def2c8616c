"""Activations of a frozen DUSt3R at one hook point: building the model, extracting tokens, the
shuffled token stream that feeds SAE training, and the on-disk activation cache.

Hook strings (module paths, the sparsify convention; the same string is in config, log and folder
names): 'enc_blocks.<i>' / 'enc_norm' give both views' tokens; 'dec_blocks.<i>' view 1's (branch 1),
'dec_blocks2.<i>' view 2's (branch 2), and 'dec_blocks*.<i>' both branches into one SAE. A pair's
tokens are laid out [view/branch 1 tokens, view/branch 2 tokens] (row-major patch grid each); the
branch of every token is recorded alongside (`branch`, 1 or 2).

Shuffling (tokens of one image are correlated; sae_anchors 4 "Shuffling"): the stream fills a buffer
with the tokens of `buffer_pairs` pairs (a "chunk"), permutes them with a generator seeded by
(seed, chunk), and hands out `batch_size`-token batches until the chunk is used up. Chunk c holds
global pairs [c*M, (c+1)*M) of a fixed pair schedule (a fresh permutation of the dataset each epoch,
seeded by (seed, epoch)). Everything is a function of (seed, step), so a resumed run rebuilds the
chunk it stopped in and continues with the very next batch: nothing is lost or repeated.

DDP: rank r runs DUSt3R on pairs r, r+W, r+2W, ... of each chunk; the chunk is all-gathered so every
rank holds the same buffer, and rank r trains on slice r of each global batch. So W processes see
exactly the tokens one process sees, split W ways (tests/test_train_ddp.py).

Cache: `cache/<hash>/` with meta.json and shard_<lo>_<hi>.npy (fp16 tokens of dataset pairs [lo, hi),
read with mmap). The hash covers the weights fingerprint, hook, dataset, root, split, resolution
and precision. Shards are written to a temporary name and renamed (atomic), made read-only, and never
touched again; an interrupted write resumes at the first missing shard.
"""
import contextlib
import hashlib
import json
import math
import os
import signal

import numpy as np
import torch
import torch.distributed as dist
from einops import rearrange

# DUSt3R_ViTLarge_BaseDecoder_224_linear's architecture, training variant (landscape_only)
ARCH_224_LINEAR = dict(enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, dec_depth=12,
                       dec_num_heads=12, head_type="linear", pos_embed="RoPE100", img_size=(224, 224),
                       patch_embed_cls="ManyAR_PatchEmbed", landscape_only=True)
# a tiny random model for tests and CI
ARCH_TINY = dict(enc_embed_dim=32, enc_depth=2, enc_num_heads=2, dec_embed_dim=32, dec_depth=2, dec_num_heads=2,
                 head_type="linear", pos_embed="RoPE100", patch_embed_cls="ManyAR_PatchEmbed", landscape_only=True)
RANDOM_MODELS = {"random-tiny": ARCH_TINY, "random-224": ARCH_224_LINEAR}


# ------------------------------------------------------------------------------------------------
# model

def build_dust3r(checkpoint, device, seed=0, log=print):
    """Frozen DUSt3R (training variant, for our landscape-transposed datasets) in eval mode.

    checkpoint: a hub id (downloaded or from the HF cache), a local .pth / HF folder, or 'random-tiny' /
    'random-224' (random weights drawn with `seed`: tests and benchmarks). When a hub id cannot be
    reached, checkpoints/<name>(.pth) is tried before giving up.
    """
    from models.dust3r import AsymmetricCroCo3DStereo
    from models.loading import load_dust3r
    if checkpoint in RANDOM_MODELS:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AsymmetricCroCo3DStereo(**RANDOM_MODELS[checkpoint])
        return model.eval().requires_grad_(False).to(device)
    try:
        return load_dust3r(checkpoint, device=device, landscape_only=True)
    except FileNotFoundError as err:
        name = checkpoint.rstrip("/").split("/")[-1]
        for local in (os.path.join("checkpoints", name), os.path.join("checkpoints", name + ".pth")):
            if os.path.exists(local):
                log(f"checkpoint {checkpoint} unreachable; using local copy {local}")
                return load_dust3r(local, device=device, landscape_only=True)
        raise FileNotFoundError(f"{err}\n(also looked for checkpoints/{name} and checkpoints/{name}.pth)") from None


def weights_fingerprint(model):
    """Short content hash of the weights: names, shapes and the first/last 256 values of every tensor
    (cheap for 2 GB of weights, and it tells apart the pre/post June-2024 checkpoints: naver/dust3r issue 157)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        flat = t.detach().reshape(-1).float().cpu()
        h.update(f"{name}{tuple(t.shape)}".encode())
        h.update(torch.cat([flat[:256], flat[-256:]]).numpy().tobytes())
    return h.hexdigest()[:16]


def hook_sources(hook, allowed_prefixes):
    """Hook string -> [(model hook point, view)] in the order a pair's tokens are laid out."""
    if not hook.startswith(allowed_prefixes):
        raise ValueError(f"hook={hook!r}: this script takes hook points starting with {allowed_prefixes}")
    if hook.startswith("dec_blocks*."):
        i = hook.split(".", 1)[1]
        return [(f"dec_blocks.{i}", 1), (f"dec_blocks2.{i}", 2)]
    if hook.startswith("dec_blocks2."):
        return [(hook, 2)]
    if hook.startswith("dec_blocks."):
        return [(hook, 1)]
    return [(hook, 1), (hook, 2)]  # encoder points and decoder_embed / dec_norm carry both views


def pooled_branches(sources):
    """[1, 2] when the tokens come from two hook points pooled into one SAE ('dec_blocks*.<i>'), else []."""
    return [v for _, v in sources] if len({name for name, _ in sources}) > 1 else []


def check_hook(model, sources):
    bad = sorted({name for name, _ in sources if name not in model.hook_points})
    if bad:
        raise ValueError(f"hook point(s) {bad} not in this model; valid: {model.hook_points}")


def autocast(device):
    """bf16 autocast for DUSt3R on CUDA (its heads stay fp32 internally); nothing on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def views_to(view, device):
    """The fields DUSt3R reads, on `device` (geometry stays on the CPU for the evaluation)."""
    return {k: v.to(device, non_blocking=True) if k in ("img", "true_shape") else v for k, v in view.items()}


@torch.no_grad()
def extract(model, view1, view2, sources, device):
    """-> tokens (B, T, C) float16 in pair layout, branch (T,) uint8. fp16 halves memory and disk and holds
    bf16 outputs exactly; overflow (|x| > 65504) is an error rather than silent infs."""
    view1, view2 = views_to(view1, device), views_to(view2, device)
    with autocast(device):
        out = model.forward_hooks(view1, view2, hooks=sorted({name for name, _ in sources}))
    parts = [out.tokens[name][view - 1] for name, view in sources]  # each (B, N, C)
    x = torch.cat(parts, dim=1).to(torch.float16)  # (B, T, C)
    if not torch.isfinite(x).all():
        raise FloatingPointError(f"activations at {[n for n, _ in sources]} overflow float16 (|x| > 65504)")
    branch = torch.cat([torch.full((p.shape[1],), v, dtype=torch.uint8) for p, (_, v) in zip(parts, sources)])
    return x, branch


# ------------------------------------------------------------------------------------------------
# pair schedule and data loading

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


def _worker_ignores_ctrl_c(_):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's: it checkpoints, then exits


def pair_loader(dataset, sampler, batch_size, num_workers):
    from data import collate_pairs
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                                       collate_fn=collate_pairs, persistent_workers=num_workers > 0,
                                       pin_memory=torch.cuda.is_available(), worker_init_fn=_worker_ignores_ctrl_c)


class PairTokens:
    """This rank's pairs at global positions start+rank, start+rank+W, ... -> tokens, `take(n)` at a time."""

    def __init__(self, model, dataset, sources, device, start, rank, world, seed, dust3r_batch, num_workers):
        self.model, self.sources, self.device = model, sources, device
        sampler = ScheduleSampler(len(dataset), seed, start + rank, world)
        self.batches = iter(pair_loader(dataset, sampler, dust3r_batch, num_workers))
        self.pending, self.branch = [], None

    def take(self, n):
        while sum(len(p) for p in self.pending) < n:
            view1, view2 = next(self.batches)
            x, self.branch = extract(self.model, view1, view2, self.sources, self.device)
            self.pending.append(x)
        x = torch.cat(self.pending)
        self.pending = [x[n:]] if len(x) > n else []
        return x[:n], self.branch


# ------------------------------------------------------------------------------------------------
# the token stream

class TokenStream:
    """Shuffled token batches for global steps start_step, start_step+1, ... (see module docstring).

    Source: `make_pairs(first_position)` -> PairTokens (streamed from DUSt3R) or `cache` (an opened
    ActivationCache). Yields (x (B/W, C) float32 on device, branch (B/W,) uint8) for this rank.
    """

    def __init__(self, batch_size, buffer_pairs, tokens_per_pair, seed, rank=0, world=1, make_pairs=None,
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


def token_stream(model, dataset, sources, device, tokens_per_pair, batch_size, buffer_pairs, seed, rank=0, world=1,
                 dust3r_batch=16, num_workers=0, cache_dir="cache", identity=None, train_tokens=0, log=print):
    """The training tokens as a TokenStream: live from DUSt3R when identity is None, else from the activation
    cache that `identity` (cache_identity) names under cache_dir, first written for the pairs that hold
    train_tokens tokens (at most the whole dataset)."""
    cache_pairs = math.ceil(train_tokens / tokens_per_pair)
    if identity is None:
        def make_pairs(start):
            return PairTokens(model, dataset, sources, device, start, rank, world, seed, dust3r_batch, num_workers)
        return TokenStream(batch_size, buffer_pairs, tokens_per_pair, seed, rank, world, make_pairs=make_pairs,
                           device=device)
    act_cache = ActivationCache(cache_dir, identity).write(model, dataset, sources, device, cache_pairs, dust3r_batch,
                                                           num_workers, rank, world, log=log).open()
    log(f"cache: {act_cache.dir} ({act_cache.n_pairs} pairs)")
    return TokenStream(batch_size, buffer_pairs, tokens_per_pair, seed, rank, world, cache=act_cache, device=device)


# ------------------------------------------------------------------------------------------------
# activation cache

def cache_identity(model, hook, dataset, data_root, resolution, device):
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

    def write(self, model, dataset, sources, device, n_pairs, dust3r_batch=8, num_workers=0, rank=0, world=1,
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
            for view1, view2 in pair_loader(dataset, list(range(lo, hi)), dust3r_batch, num_workers):
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
