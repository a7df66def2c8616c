"""Per-latent 3D attributes from exact geometry: what a latent's firing tracks in the scene (issue 11).

Per token (one p x p patch of a view with depth and intrinsics, real orientation, row-major grid):
  log_rel_depth  log(mean depth of the patch / median depth of the view): scale-free, so BlendedMVS'
                 arbitrary units and ARKitScenes' metres compare;
  normal (3,)    mean surface normal of the patch in the camera frame (OpenCV: x right, y down, z forward),
                 from the back-projected depth (X = d K^-1 [u, v, 1]) by central differences, n = dX/du x dX/dv,
                 turned to face the camera (n . X < 0); a wall seen head-on has n = (0, 0, -1), a floor
                 (0, -1, 0) with a level camera;
  edge_dist      mean distance of the patch's pixels to the nearest depth edge, in patches. Edge pixel: the
                 second difference of inverse depth along u or v exceeds EDGE_TOL times the inverse depth
                 (inverse depth is affine in (u, v) on any plane, so slanted planes and creases stay below it:
                 only jumps cross it);
  planar         no edge pixel in the patch and every pixel normal within PLANAR_DEG of the patch's mean;
  valid          every pixel of the patch has depth.
Per latent k (columns of the codes z, over valid tokens, zeros included):
  corr_depth, corr_normal_x / _y / _z, corr_edge: Pearson correlation of z_k with log_rel_depth, the
  normal's components, and log(1 + edge_dist); planar_share = activation mass on planar tokens / all
  its mass. Null for planar_share: `planar_base`, the share of planar tokens (what a latent firing
  anywhere gets). A latent that fires on near surfaces has corr_depth < 0.
Letters: H, W pixels; p patch size; N tokens of a view; T tokens pooled; S latents.
"""
import numpy as np
import scipy.sparse as sp
from scipy import ndimage

from data.views import untranspose

# --------------------------------------------------------------------------------------------
EDGE_TOL = 0.05  # depth edge: |second difference of 1/depth| > EDGE_TOL / depth (a 5 % jump; planes give 0)
PLANAR_DEG = 15.0  # planar patch: every pixel normal within this angle of the patch mean (resized depth is noisy)
COLUMNS = ("corr_depth", "corr_normal_x", "corr_normal_y", "corr_normal_z", "corr_edge", "planar_share")
# --------------------------------------------------------------------------------------------


def _np(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def pixel_geometry(depth, K):
    """depth (H, W) (0 = invalid), K (3, 3) -> camera points (H, W, 3), unit normals (H, W, 3) (NaN where
    undefined), edge (H, W) bool, valid (H, W) bool."""
    depth, K = np.asarray(depth, np.float64), np.asarray(K, np.float64)
    H, W = depth.shape
    valid = np.isfinite(depth) & (depth > 0)
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    d = np.where(valid, depth, np.nan)
    X = np.stack([(u - K[0, 2]) / K[0, 0] * d, (v - K[1, 2]) / K[1, 1] * d, d], -1)  # (H, W, 3)
    inv = 1.0 / d
    edge = np.zeros((H, W), bool)
    for axis in (0, 1):  # second differences of inverse depth along v, then u
        lo, mid, hi = (np.take(inv, range(a, inv.shape[axis] - 2 + a), axis=axis) for a in range(3))
        jump = np.abs(lo - 2 * mid + hi) > EDGE_TOL * mid
        jump |= np.isnan(lo) | np.isnan(hi)  # the border of invalid depth counts as an edge
        sl = [slice(None), slice(None)]
        sl[axis] = slice(1, -1)
        edge[tuple(sl)] |= jump & ~np.isnan(mid)
    with np.errstate(invalid="ignore"):
        n = np.cross(np.gradient(X, axis=1), np.gradient(X, axis=0))  # dX/du x dX/dv
        n /= np.linalg.norm(n, axis=-1, keepdims=True)
        n *= -np.sign((n * X).sum(-1, keepdims=True))  # face the camera
    near_edge = ndimage.binary_dilation(edge)  # central differences straddle the edge there
    n[near_edge | ~valid] = np.nan
    return X, n, edge, valid


def token_geometry(view, patch=16):
    """One (unbatched) view dict with depthmap and camera_intrinsics -> per-token dict of log_rel_depth (N,),
    normal (N, 3), edge_dist (N,), planar (N,) bool, valid (N,) bool (module docstring)."""
    v = untranspose({k: _np(view[k]) for k in ("true_shape", "depthmap", "camera_intrinsics") if k in view})
    if "depthmap" not in v or "camera_intrinsics" not in v:
        raise ValueError("3D attributes need views with depthmap and camera_intrinsics (a dataset with geometry)")
    X, n, edge, valid = pixel_geometry(v["depthmap"], v["camera_intrinsics"])
    H, W = valid.shape
    h, w = H // patch, W // patch
    crop = (slice(0, h * patch), slice(0, w * patch))
    dist = ndimage.distance_transform_edt(~edge)[crop] / patch if edge.any() else np.full((h * patch, w * patch),
                                                                                          np.hypot(H, W) / patch)

    def tiles(a):  # (h p, w p, ...) -> (N, p*p, ...)
        a = a[crop]
        return a.reshape(h, patch, w, patch, *a.shape[2:]).swapaxes(1, 2).reshape(h * w, patch * patch, *a.shape[2:])

    ok = tiles(valid).all(1)  # (N,)
    depth = tiles(np.where(valid, v["depthmap"], np.nan).astype(np.float64))
    med = np.nanmedian(depth) if valid.any() else np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        log_rel = np.log(np.nanmean(np.where(ok[:, None], depth, np.nan), 1) / med)
        nt = tiles(n)  # (N, p*p, 3)
        mean_n = np.nanmean(nt, 1)
        mean_n /= np.linalg.norm(mean_n, axis=-1, keepdims=True)
        cos = np.einsum("npc,nc->np", nt, mean_n)
        planar = ~tiles(edge).any(1) & np.all(np.nan_to_num(cos, nan=-1.0) >= np.cos(np.radians(PLANAR_DEG)), 1)
    ok &= np.isfinite(mean_n).all(-1)
    return dict(log_rel_depth=log_rel, normal=mean_n, edge_dist=tiles(dist).mean(1), planar=planar & ok, valid=ok)


def stack_geometry(geoms):
    """Concatenate per-view token_geometry dicts (in the order of the codes' rows)."""
    return {k: np.concatenate([g[k] for g in geoms]) for k in geoms[0]}


def _pearson(z, g):
    """Columnwise Pearson r of z (T, S) (scipy sparse or dense) with g (T,): (S,), NaN for constant columns."""
    T = z.shape[0]
    g = g - g.mean()
    mz = np.asarray(z.sum(0)).ravel() / T
    z2 = np.asarray((z.multiply(z) if sp.issparse(z) else z * z).sum(0)).ravel() / T
    cov = np.asarray(z.T @ g).ravel() / T  # g is centred, so no mean correction is needed
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / np.sqrt((z2 - mz ** 2) * (g ** 2).mean())
    return np.where((z2 - mz ** 2) > 1e-12 * np.maximum(z2, 1e-30), r, np.nan)


def latent_attributes(z, geom):
    """z: codes (T, S) (scipy sparse, numpy or torch), geom: stacked token_geometry of the same T tokens.
    Returns ({column: (S,) float64}, info dict(n_tokens, n_planar, planar_base))."""
    if not sp.issparse(z):
        z = np.asarray(_np(z), np.float64)
    if z.shape[0] != len(geom["valid"]):
        raise ValueError(f"codes have {z.shape[0]} tokens but the geometry {len(geom['valid'])}")
    keep = np.nonzero(geom["valid"])[0]
    z = (z.tocsr()[keep] if sp.issparse(z) else z[keep]).astype(np.float64)
    g = {k: v[keep] for k, v in geom.items()}
    out = dict(corr_depth=_pearson(z, g["log_rel_depth"]),
               **{f"corr_normal_{a}": _pearson(z, g["normal"][:, i]) for i, a in enumerate("xyz")},
               corr_edge=_pearson(z, np.log1p(g["edge_dist"])))
    mass = np.asarray(z.sum(0)).ravel()
    on_plane = np.asarray(z.T @ g["planar"].astype(np.float64)).ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        out["planar_share"] = np.where(mass > 0, on_plane / mass, np.nan)
    info = dict(n_tokens=int(len(keep)), n_planar=int(g["planar"].sum()),
                planar_base=float(g["planar"].mean()) if len(keep) else float("nan"))
    return out, info


def pair_attributes(pa, geoms):
    """Attributes of an analysis's codes: pa = PairActivations (analysis/multiview.py), geoms = per pair
    [token_geometry(view 1), token_geometry(view 2)], in pa's pair order. Null: the same columns with every
    pair's codes set against the NEXT pair's geometry (same grid), which keeps the spatial structure of both
    maps and breaks only their link. -> (columns, null columns (or {} when pairs differ in grid), info)."""
    z = sp.vstack([pa.z1, pa.z2]).tocsr()  # view-1 tokens of all pairs, then view-2 tokens

    def stacked(gs):
        return stack_geometry([g[0] for g in gs] + [g[1] for g in gs])

    cols, info = latent_attributes(z, stacked(geoms))
    same_grid = len({(len(g[0]["valid"]), len(g[1]["valid"])) for g in geoms}) == 1
    if len(geoms) < 2 or not same_grid:
        return cols, {}, info
    null, _ = latent_attributes(z, stacked(geoms[1:] + geoms[:1]))
    alive = np.isfinite(cols["corr_depth"])
    info["null_abs_r_q95"] = {k: float(np.nanquantile(np.abs(null[k][alive]), 0.95)) if alive.any() else float("nan")
                              for k in COLUMNS if k.startswith("corr_")}
    return cols, {f"{k}_null": v for k, v in null.items()}, info


def summary_lines(info, cols):
    """summary.md section: the null (planar base rate), then the strongest latents of each attribute."""
    if info is None:
        return []
    alive = np.isfinite(cols["corr_depth"])

    def top(key, sign):
        v = np.where(alive, sign * np.nan_to_num(cols[key], nan=-np.inf), -np.inf)
        k = int(np.argmax(v))
        return f"latent {k} ({cols[key][k]:+.3f})" if alive.any() else "none"

    share = cols["planar_share"][alive]
    q95 = info.get("null_abs_r_q95")
    null = ([f"- Null (each pair's codes against the next pair's geometry: it keeps the images' layout, so what the "
             "position in the image explains, e.g. near floors at the bottom, shows up in it too), 95th percentile of "
             "|r| over latents: "
             + ", ".join(f"{k[5:]} {v:.3f}" for k, v in q95.items()) + "; latents above it (the null gives ~5 %): "
             + ", ".join(f"{k[5:]} {int((np.abs(cols[k][alive]) > v).sum())}" for k, v in q95.items()) + "."]
            if q95 else ["- No null: the pairs differ in grid size."])
    return ["", "## 3D attributes (exact geometry)", "",
            f"- Over {info['n_tokens']} tokens with valid depth (both views), Pearson r of each latent with log "
            "relative depth, the surface normal's camera-frame components, and log(1 + distance to a depth edge); the "
            "share of its activation mass on planar patches (definitions: analysis/attributes.py).", *null,
            f"- Null for the planar share: {100 * info['planar_base']:.1f} % of tokens are planar; alive latents' "
            f"median planar share {100 * np.median(share):.1f} %" + (f", {int((share > 0.9).sum())} above 90 %, "
                                                                   f"{int((share < 0.1).sum())} below 10 %."
                                                                   if alive.any() else "."),
            f"- Nearest-firing: {top('corr_depth', -1)}; farthest: {top('corr_depth', 1)}; closest to depth edges: "
            f"{top('corr_edge', -1)}; most upward-facing surfaces (floors): {top('corr_normal_y', -1)}; "
            f"|r| >= 0.3 with depth: {int((np.abs(cols['corr_depth'][alive]) >= 0.3).sum())} of {int(alive.sum())} "
            "latents that vary on these tokens."]
