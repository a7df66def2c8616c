"""Raw-pixel appearance of patches: the `pixels` tokens, a patch descriptor, and the appearance-matched null.

Why an appearance null: every other null (shuffle, position, shift, scene) also breaks appearance, so any
local appearance code beats them and would be called "multi-view consistent" (issue 8: a sparse code of raw
pixels passed for 75 % of its latents). The appearance-matched null replaces each match p -> m(p) by the
view-2 patch a(p) of the same image, at least `min_dist` patches (Chebyshev) from m(p), whose raw-pixel
appearance is closest to p's. A latent that only encodes appearance agrees with a(p) about as well as with
m(p); a latent that encodes the 3D point does not (a(p) is another point).

Descriptor (`descriptor`): the patch in DUSt3R's normalised units ([-1, 1]), average-pooled to 4x4 cells per
channel (48 numbers for a 16x16x3 patch), compared by Euclidean distance. Why this one: it keeps the mean
colour and the coarse layout (edges, gradients, which side is bright) that survive a change of viewpoint,
while the pixel-level texture that resampling and small misalignment destroy is averaged out; the mean is
kept, not normalised away, because colour is the strongest cue a code of raw pixels carries (the leading
principal components of natural image patches are the mean and the low frequencies). Distances in this
space are also what `photometric_difference` reports for the strata.

Letters: B items, N tokens (row-major over the REAL-orientation patch grid, as the model's tokens), p patch.
"""
import numpy as np
import torch
from einops import rearrange

POOL = 4  # descriptor cells per side: 16x16 patch -> 4x4 cells of 4x4 pixels
MIN_DIST = 3  # patches (Chebyshev) between m(p) and its appearance-matched replacement, as the shift null


def patch_pixels(img, true_shape, patch=16):
    """(B, 3, H, W) normalised images (landscape tensors; portrait items transposed, as DUSt3R's training
    loader delivers them) -> (B, N, 3*p*p) float32 pixel tokens in the real orientation, channel-major
    per patch (c, dy, dx): the flattening order of the patch-embedding conv's weight, so that
    patch_embed = pixels @ W.reshape(C, -1).T + b."""
    img = torch.as_tensor(img).float()
    ts = torch.as_tensor(true_shape).reshape(-1, 2)
    out = []
    for im, (h, w) in zip(img, ts.tolist()):
        if tuple(im.shape[-2:]) == (w, h) and h != w:  # portrait delivered as a landscape tensor
            im = im.transpose(-1, -2)
        if im.shape[-2] % patch or im.shape[-1] % patch:
            raise ValueError(f"image {tuple(im.shape[-2:])} is not a multiple of the patch size {patch}")
        out.append(rearrange(im, "c (h p) (w q) -> (h w) (c p q)", p=patch, q=patch))  # (N, 3pp)
    return torch.stack(out)


def descriptor(pixels, patch=16, pool=POOL):
    """(..., 3*p*p) pixel tokens -> (..., 3*pool*pool) average-pooled descriptors (see module docstring)."""
    x = torch.as_tensor(pixels).float()
    cells = rearrange(x, "... (c a i b j) -> ... c a b (i j)", c=3, a=pool, b=pool, i=patch // pool, j=patch // pool)
    return cells.mean(-1).flatten(-3).numpy().astype(np.float64)  # (..., 3*pool*pool)


def chebyshev(grid, a, b):
    """Chebyshev distance in patches between token indices a and b of one (h, w) grid."""
    w = int(grid[1])
    return np.maximum(np.abs(a // w - b // w), np.abs(a % w - b % w))


def appearance_targets(desc1, desc2, corr, grid2, min_dist=MIN_DIST):
    """Appearance-matched null of one pair. desc1 (N1, D), desc2 (N2, D); corr (N1,) view-2 token or -1.

    Returns target (N1,) int (-1 where unmatched, or where no view-2 patch is min_dist away), and the
    descriptor distances d_true = |desc1[p] - desc2[m(p)]| and d_null = |desc1[p] - desc2[a(p)]| (NaN there).
    """
    corr = np.asarray(corr).astype(np.int64).ravel()
    n2 = int(grid2[0]) * int(grid2[1])
    if len(desc2) != n2:
        raise ValueError(f"desc2 has {len(desc2)} rows, grid {tuple(grid2)} has {n2} patches")
    target, d_true, d_null = np.full(len(corr), -1), np.full(len(corr), np.nan), np.full(len(corr), np.nan)
    p = np.nonzero(corr >= 0)[0]
    if len(p) == 0:
        return target, d_true, d_null
    dist = np.sqrt(((desc1[p, None, :] - desc2[None, :, :]) ** 2).sum(-1))  # (M, N2)
    far = chebyshev(grid2, corr[p][:, None], np.arange(n2)[None, :]) >= min_dist  # (M, N2) allowed targets
    ok = far.any(1)
    best = np.where(far, dist, np.inf).argmin(1)
    target[p[ok]] = best[ok]
    d_true[p] = dist[np.arange(len(p)), corr[p]]
    d_null[p[ok]] = dist[np.arange(len(p)), best][ok]
    return target, d_true, d_null


def ambiguous(corr, d_true, d_null):
    """corr (N1,) with every match removed (-1) that appearance alone could carry: kept are the matches
    where the appearance-matched null patch looks at least as much like p as m(p) does (d_null <= d_true),
    so a code of appearance has no reason to prefer m(p) there."""
    corr = np.asarray(corr).astype(np.int64).ravel()
    keep = np.isfinite(d_true) & np.isfinite(d_null) & (np.asarray(d_null) <= np.asarray(d_true))
    return np.where(keep, corr, -1)


def pair_appearance(view1, view2, corr, patch=16, min_dist=MIN_DIST):
    """Appearance-matched null of one dataset pair (unbatched view dicts with 'img' and 'true_shape'):
    (target, d_true, d_null) as `appearance_targets`."""
    px = [patch_pixels(torch.as_tensor(v["img"])[None], torch.as_tensor(v["true_shape"])[None], patch)[0]
          for v in (view1, view2)]
    grid2 = np.asarray(view2["true_shape"]).reshape(2) // patch
    return appearance_targets(descriptor(px[0], patch), descriptor(px[1], patch), corr, grid2, min_dist)
