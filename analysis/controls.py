"""Codes whose answer is known, to measure the instrument's floor and ceiling on the same pairs.

Run through exactly the same consistency statistics as an SAE's codes (analysis/consistency.py):
  world     a sparse code of each patch's ground-truth 3D world point: 3D by construction (the same point
            gives the same code in both views), so a working instrument calls most of its latents consistent
            (the ceiling; needs depth and pose);
  pixels    a sparse code of each patch's raw pixels: appearance only, so it must NOT be called consistent
            (the floor: this is what the appearance-matched null is for);
  position  a sparse code of each patch's position on the grid: must not be called consistent (the
            position null catches it).
Every code is a TopK over Gaussian-kernel similarities to S centres drawn from the data (a fixed,
untrained dictionary: z_k = exp(-|u - c_k|^2 / (2 s^2)) for the k nearest centres, 0 elsewhere), so all
three have the sparsity of a TopK SAE with the same k. The centres are distinct points drawn from the
analysed pairs themselves (seeded); s^2 is the median squared distance from a point to its second-nearest
centre (the nearest may be the point itself).
"""
import numpy as np
import torch
from einops import rearrange

from analysis.multiview import PairActivations
from data.views import untranspose

N_CENTRES = 512  # latents of each control code
K_ACTIVE = 8  # active latents per token (TopK)


def patch_geometry(view, patch=16):
    """Ground-truth per-patch world point (N, 3), camera depth (N,) and validity (N,) of ONE view (real
    orientation, row-major): means over the patch's valid pixels, valid when at least half are valid."""
    v = untranspose({k: (x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x))
                     for k, x in view.items() if k in ("true_shape", "pts3d", "valid_mask", "depthmap")})
    missing = [k for k in ("pts3d", "valid_mask", "depthmap") if k not in v]
    if missing:
        raise ValueError(f"patch_geometry needs a view with geometry; missing {missing}")
    H, W = v["depthmap"].shape
    h, w = H // patch, W // patch
    ok = v["valid_mask"].astype(bool)[:h * patch, :w * patch]
    pts = np.where(ok[..., None], v["pts3d"].astype(np.float64)[:h * patch, :w * patch], 0.0)
    dep = np.where(ok, v["depthmap"].astype(np.float64)[:h * patch, :w * patch], 0.0)
    n = rearrange(ok, "(h p) (w q) -> (h w) (p q)", p=patch, q=patch).sum(1)  # (N,) valid pixels per patch
    s = rearrange(pts, "(h p) (w q) c -> (h w) (p q) c", p=patch, q=patch).sum(1)  # (N, 3)
    d = rearrange(dep, "(h p) (w q) -> (h w) (p q)", p=patch, q=patch).sum(1)
    valid = n >= 0.5 * patch * patch
    with np.errstate(invalid="ignore", divide="ignore"):
        return s / n[:, None], d / n, valid


def grid_positions(grid):
    """(N, 2) float (y, x) patch coordinates of an (h, w) grid, scaled to [0, 1] (row-major)."""
    h, w = int(grid[0]), int(grid[1])
    y, x = np.divmod(np.arange(h * w), w)
    return np.stack([y / max(h - 1, 1), x / max(w - 1, 1)], 1)


class KernelCode:
    """TopK Gaussian-kernel code over centres drawn from sample points (see module docstring)."""

    def __init__(self, sample, n_centres=N_CENTRES, k=K_ACTIVE, seed=0):
        sample = np.asarray(sample, np.float64)
        sample = np.unique(sample[np.isfinite(sample).all(1)], axis=0)  # distinct points: no duplicate latents
        if len(sample) < max(k, 2):
            raise ValueError(f"{len(sample)} distinct finite sample points, fewer than k={k} (or 2)")
        rng = np.random.default_rng(seed)
        self.centres = sample[rng.choice(len(sample), min(n_centres, len(sample)), replace=False)]
        self.k = k
        near = np.sort(self._dist2(sample[rng.choice(len(sample), min(2000, len(sample)), replace=False)]), 1)
        self.s2 = float(np.median(near[:, 1])) + 1e-12  # the second-nearest: the nearest may be the point itself

    def _dist2(self, u):
        return np.maximum((u ** 2).sum(1)[:, None] - 2 * u @ self.centres.T + (self.centres ** 2).sum(1)[None], 0)

    def __call__(self, u, valid=None):
        """(N, D) points -> (N, S) float32 code; rows not valid (or not finite) are all zero."""
        u = np.asarray(u, np.float64)
        ok = np.isfinite(u).all(1) & (np.ones(len(u), bool) if valid is None else np.asarray(valid, bool))
        z = np.zeros((len(u), len(self.centres)), np.float32)
        if ok.any():
            d2 = self._dist2(u[ok])
            kk = min(self.k, d2.shape[1])
            idx = np.argpartition(d2, kk - 1, axis=1)[:, :kk]  # the k nearest centres
            rows = np.nonzero(ok)[0][:, None]
            z[rows, idx] = np.exp(-np.take_along_axis(d2, idx, 1) / (2 * self.s2))
        return z


def depth_ratio(geo1, geo2, corr):
    """Scale change of every match (N1,): max(d1/d2, d2/d1) of the patches' mean camera depths (NaN unmatched);
    geo1 / geo2: patch_geometry of the two views."""
    (_, d1, ok1), (_, d2, ok2) = geo1, geo2
    corr = np.asarray(corr).astype(np.int64).ravel()
    out = np.full(len(corr), np.nan)
    m = (corr >= 0) & ok1
    m[m] &= ok2[corr[m]]
    r = d1[m] / d2[corr[m]]
    out[m] = np.maximum(r, 1 / r)
    return out


def control_activations(features, n_centres=N_CENTRES, k=K_ACTIVE, seed=0):
    """The control codes of pairs described by `features` (analysis/instrument.py, pair_features):
    {name: PairActivations}; 'world' only when every pair has geometry. Dictionaries drawn from these pairs."""
    pix = [[p.astype(np.float64) for p in f["pixels"]] for f in features]
    grids = [f["grid"] for f in features]
    codes = {"pixels": (np.concatenate([p for pp in pix for p in pp]), lambda i, v: (pix[i][v], None)),
             "position": (np.concatenate([grid_positions(g) for gg in grids for g in gg]),
                          lambda i, v: (grid_positions(grids[i][v]), None))}
    if all(f["geometry"] is not None for f in features):
        geo = [f["geometry"] for f in features]
        codes["world"] = (np.concatenate([g[0][g[2]] for gg in geo for g in gg]), lambda i, v: geo[i][v][::2])
    out = {}
    for name, (sample, feats) in codes.items():
        code, pa = KernelCode(sample, n_centres, k, seed), PairActivations()
        for i, f in enumerate(features):
            z = [code(*feats(i, v)) for v in range(2)]
            pa.add(z[0][None], z[1][None], [grids[i][0]], [grids[i][1]], [f["scene"]])
        out[name] = pa.finalize()
    return out
