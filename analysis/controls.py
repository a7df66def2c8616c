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
three have the sparsity of a TopK SAE with the same k. The centres come from the analysed pairs
themselves (seeded), the kernel width s is the median distance from a point to its nearest centre.
"""
import numpy as np
import torch
from einops import rearrange

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
        sample = sample[np.isfinite(sample).all(1)]
        if len(sample) < k:
            raise ValueError(f"{len(sample)} finite sample points, fewer than k={k}")
        rng = np.random.default_rng(seed)
        self.centres = sample[rng.choice(len(sample), min(n_centres, len(sample)), replace=False)]
        self.k = k
        near = np.sort(self._dist2(sample[rng.choice(len(sample), min(2000, len(sample)), replace=False)]), 1)
        self.s2 = float(np.median(near[:, 1] if len(self.centres) > 1 else near[:, 0])) + 1e-12  # 2nd: not itself

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
