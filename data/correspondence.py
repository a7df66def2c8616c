"""Patch-level correspondences between the two views of a pair.

Ground truth (`patch_correspondences`), from depth, intrinsics and poses:
  * a view-1 pixel is *visible* in view 2 when it has valid depth, projects in front of camera 2
    and inside its image (nearest pixel), and its depth in camera 2 is within `depth_tol` (5%)
    of view 2's depth at that pixel (relative, so it works for BlendedMVS' arbitrary scale too);
  * patch p of view 1 is *matched* to the view-2 patch q that receives most of its visible
    pixels, if q receives at least `min_fraction` (half) of all p's pixels (patch**2). This one
    rule implies both ">= half visible" and "landing in one patch".
Predicted (`predicted_correspondences`), for views without geometry: mutual nearest neighbours in
3D between patch-mean points of DUSt3R's pointmaps (pred1 pts3d, pred2 pts3d_in_other_view).

Both return a LongTensor (N1,): for each view-1 token (row-major over the REAL-orientation patch
grid, like the model's tokens) the index of the matched view-2 token, or -1. The tensor carries
`.source` = 'geometry' or 'predicted' (a plain attribute: tensor ops drop it, keep it yourself).
Portrait views delivered as landscape tensors (transpose_to_landscape) are un-transposed first.
Letters: H, W pixels; h, w patch grid; N = h * w tokens; p patch size.
"""
import numpy as np
import torch

from data.views import untranspose


def _np(x):
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def _real(view):
    """Geometry fields of a single view in its real orientation, as float64 / bool numpy."""
    v = untranspose({k: _np(view[k]) for k in ("true_shape", "img", "depthmap", "pts3d", "valid_mask",
                                                "camera_pose", "camera_intrinsics") if k in view})
    missing = [k for k in ("depthmap", "pts3d", "valid_mask", "camera_pose", "camera_intrinsics") if k not in v]
    if missing:
        raise ValueError(f"patch_correspondences needs views with geometry; missing {missing} "
                         "(use predicted_correspondences for views without geometry)")
    if v["depthmap"].ndim != 2:
        raise ValueError(f"expected a single (unbatched) view, got depthmap of shape {v['depthmap'].shape}")
    return {k: (x.astype(np.float64) if x.dtype.kind == "f" else x) for k, x in v.items()}


def reproject(view1, view2, depth_tol=0.05):
    """Pixel-level visibility of view 1 in view 2 (real orientation).

    Returns uv (H1, W1, 2) float64 continuous view-2 pixel coordinates of each view-1 pixel and
    visible (H1, W1) bool, following the rule in the module docstring.
    """
    v1, v2 = _real(view1), _real(view2)
    pose2, K2, D2 = v2["camera_pose"], v2["camera_intrinsics"], v2["depthmap"]
    H2, W2 = D2.shape
    Xc = (v1["pts3d"] - pose2[:3, 3]) @ pose2[:3, :3]  # (H1, W1, 3) in camera 2: R^T (X - t)
    z = Xc[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = np.stack([K2[0, 0] * Xc[..., 0] / z + K2[0, 2], K2[1, 1] * Xc[..., 1] / z + K2[1, 2]], -1)
    ok = v1["valid_mask"].astype(bool) & (z > 0) & np.isfinite(uv).all(-1)
    ui = np.where(ok, np.floor(uv[..., 0] + 0.5), -1).astype(np.int64)  # nearest pixel
    vi = np.where(ok, np.floor(uv[..., 1] + 0.5), -1).astype(np.int64)
    ok &= (ui >= 0) & (ui < W2) & (vi >= 0) & (vi < H2)
    d2 = np.where(ok, D2[np.clip(vi, 0, H2 - 1), np.clip(ui, 0, W2 - 1)], 0)
    visible = ok & (d2 > 0) & (np.abs(z - d2) <= depth_tol * d2)
    return uv, visible


def patch_correspondences(view1, view2, patch=16, depth_tol=0.05, min_fraction=0.5):
    """Ground-truth patch matches view 1 -> view 2: LongTensor (N1,), -1 = unmatched."""
    uv, visible = reproject(view1, view2, depth_tol)
    H1, W1 = visible.shape
    H2, W2 = (int(x) for x in _np(view2["true_shape"]))
    h1, w1, h2, w2 = H1 // patch, W1 // patch, H2 // patch, W2 // patch
    ys, xs = np.nonzero(visible[:h1 * patch, :w1 * patch])
    u, v = np.floor(uv[ys, xs, 0] + 0.5).astype(np.int64), np.floor(uv[ys, xs, 1] + 0.5).astype(np.int64)
    inside = (u < w2 * patch) & (v < h2 * patch)  # pixels in a partial border strip land in no patch
    src = (ys // patch * w1 + xs // patch)[inside]
    dst = (v // patch * w2 + u // patch)[inside]
    counts = np.bincount(src * (h2 * w2) + dst, minlength=h1 * w1 * h2 * w2).reshape(h1 * w1, h2 * w2)
    best = counts.argmax(1)
    matched = counts[np.arange(h1 * w1), best] >= min_fraction * patch * patch
    out = torch.from_numpy(np.where(matched, best, -1).astype(np.int64))
    out.source = "geometry"
    return out


def _patch_points(pts, conf, true_shape, patch, keep_fraction):
    # (H, W, 3) pointmap -> (N, 3) patch means over confident pixels, (N,) usable mask, grid width
    pts = _np(pts).astype(np.float64)
    conf = None if conf is None else _np(conf).astype(np.float64)
    if true_shape is not None:
        H, W = (int(x) for x in _np(true_shape))
        if pts.shape[:2] == (W, H) and H != W:  # landscape tensor of a portrait view
            pts = pts.swapaxes(0, 1)
            conf = None if conf is None else conf.swapaxes(0, 1)
    H, W = pts.shape[:2]
    h, w = H // patch, W // patch
    keep = np.isfinite(pts).all(-1)
    if conf is not None:
        keep &= conf >= np.quantile(conf[keep], 1 - keep_fraction)  # top keep_fraction per image
    pts = np.where(keep[..., None], pts, 0)[:h * patch, :w * patch]
    keep = keep[:h * patch, :w * patch]
    # (h*p, w*p, 3) -> (h, p, w, p, 3): sum over each patch's pixels
    n = keep.reshape(h, patch, w, patch).sum((1, 3)).reshape(-1)
    s = pts.reshape(h, patch, w, patch, 3).sum((1, 3)).reshape(-1, 3)
    with np.errstate(invalid="ignore", divide="ignore"):
        return s / n[:, None], n >= 0.5 * patch * patch, w


def predicted_correspondences(pts1, pts2, conf1=None, conf2=None, patch=16, true_shape1=None,
                              true_shape2=None, keep_fraction=0.5, max_dist=None):
    """Mutual 3D nearest neighbours between patch-mean points of two pointmaps in ONE frame.

    pts1, pts2: (H, W, 3) (DUSt3R's pred1['pts3d'][b], pred2['pts3d_in_other_view'][b]); conf:
    (H, W) optional, then only the top `keep_fraction` pixels per image count, and a patch is
    usable with at least half of its pixels kept. true_shape (H, W) un-transposes landscape
    outputs of portrait views. max_dist: reject matches farther apart than this (default: the
    median distance between horizontally adjacent view-1 patches, about one patch).
    Returns LongTensor (N1,) with .source = 'predicted'.
    """
    P1, ok1, w1 = _patch_points(pts1, conf1, true_shape1, patch, keep_fraction)
    P2, ok2, _ = _patch_points(pts2, conf2, true_shape2, patch, keep_fraction)
    out = np.full(len(P1), -1, np.int64)
    if ok1.any() and ok2.any():
        i1, i2 = np.flatnonzero(ok1), np.flatnonzero(ok2)
        dist = torch.cdist(torch.from_numpy(P1[i1]), torch.from_numpy(P2[i2])).numpy()  # (n1, n2)
        nn12, nn21 = dist.argmin(1), dist.argmin(0)
        mutual = nn21[nn12] == np.arange(len(i1))
        if max_dist is None:
            grid, ok = P1.reshape(-1, w1, 3), ok1.reshape(-1, w1)  # (h, w, 3), (h, w)
            step = np.linalg.norm(grid[:, 1:] - grid[:, :-1], axis=-1)[ok[:, 1:] & ok[:, :-1]]
            max_dist = float(np.median(step)) if step.size else np.inf
        mutual &= dist[np.arange(len(i1)), nn12] <= max_dist
        out[i1[mutual]] = i2[nn12[mutual]]
    out = torch.from_numpy(out)
    out.source = "predicted"
    return out
