"""The latent cards of the analysis: which latents get pictures (pick_cards) and their pictures in latents/<k>/
(heatmap.png, examples.png, pointcloud.ply + pointcloud.png), returned as the browser's cards (analysis/browser.py).

Pictures come from the (A, B) activations (PairActivations, analysis/multiview.py) and the per-pair images and
pointmaps that analyze_results.py collects, with one colour scale per latent: its peak over all pairs. n_cards, n_ply,
n_top and quantiles are that script's constants.
"""
import os
import shutil

import numpy as np

from analysis import figures, ply


def pick_cards(table, n, rng):
    """Latents to visualise, interleaved: strongest gains, most asymmetric (labelled first), most
    frequent, random alive ones."""
    alive = np.nonzero(table["frequency"] > 0)[0]

    def by(v):
        return [int(i) for i in alive[np.argsort(-np.nan_to_num(v[alive], nan=-np.inf), kind="stable")]]

    labelled = np.isin(table["label"], ["view-1", "view-2", "branch-1", "branch-2"])
    lists = [by(table["gain"]), by(np.abs(table["va"]) + 2 * labelled), by(table["frequency"]),
             [int(i) for i in rng.permutation(alive)]]
    picks = []
    for i in range(len(alive)):
        for lst in lists:
            if len(picks) < n and lst[i] not in picks:
                picks.append(lst[i])
    return picks


def pair_peaks(pa, k):
    """(P,) latent k's peak activation in each pair (both views)."""
    c1, c2 = pa.z1[:, k].toarray().ravel(), pa.z2[:, k].toarray().ravel()
    return np.maximum(np.maximum.reduceat(c1, pa.start1[:-1]), np.maximum.reduceat(c2, pa.start2[:-1]))


def render_latent(k, pa, *, data, corrs, folder, with_ply, n_top, quantiles):
    """heatmap.png (top pair + view 2 pulled back to view 1), examples.png (top pairs, then pairs at
    the quantiles of the per-pair peak), pointcloud.ply + pointcloud.png; one colour scale: the latent's peak."""
    peak = pair_peaks(pa, k)  # (P,)
    order = np.nonzero(peak > 0)[0]
    order = order[np.argsort(-peak[order], kind="stable")]
    rows = [(int(n), f"top {i + 1}") for i, n in enumerate(order[:n_top])]
    for q in quantiles:  # order is descending, so quantile q of the peaks sits at (1 - q)(len - 1)
        n = int(order[int(round((1 - q) * (len(order) - 1)))])
        rows += [(n, f"q{int(q * 100)}")] if n not in [r[0] for r in rows] else []
    vmax = float(peak[order[0]])
    os.makedirs(folder, exist_ok=True)
    ex = []
    for n, tag in rows:
        a1, a2 = pa.pair_maps(n, k)
        ex.append(dict(rgb1=data["rgb"][n][0], rgb2=data["rgb"][n][1], act1=a1, act2=a2,
                       caption=f"{tag}: peak {peak[n]:.3g}, pair {n} {pa.scene[n]}"))
    figures.save_png(figures.example_grid(ex, vmax, f"latent {k}: top pairs, then quantiles"),
                     os.path.join(folder, "examples.png"))
    top, n = ex[0], rows[0][0]
    figures.save_png(figures.latent_heatmap(top["rgb1"], top["rgb2"], act1=top["act1"], act2=top["act2"], vmax=vmax,
                                            corr=corrs[n], title=f"latent {k} {top['caption']}"),
                     os.path.join(folder, "heatmap.png"))
    if with_ply:
        xyz, col = ply.latent_pointcloud(data["rgb"][n], [p.astype(np.float32) for p in data["pts"][n]],
                                         confs=[c.astype(np.float32) for c in data["conf"][n]],
                                         acts=[top["act1"], top["act2"]], vmax=vmax)
        ply.write_ply(os.path.join(folder, "pointcloud.ply"), xyz, col)
        figures.pointcloud_preview(xyz, col, path=os.path.join(folder, "pointcloud.png"),
                                   title=f"latent {k}: DUSt3R points of {top['caption']}")


def write_cards(run_dir, pa, *, data, corrs, table, full, rng, n_cards, n_ply, n_top, quantiles):
    """latents/<k>/ pictures of the picked latents -> the browser's cards {k: images, numbers, files}."""
    cards = {}
    shutil.rmtree(os.path.join(run_dir, "latents"), ignore_errors=True)  # ours alone; no stale cards from a rerun
    for i, k in enumerate(pick_cards(table, n_cards, rng)):
        folder, with_ply = os.path.join(run_dir, "latents", str(k)), i < n_ply
        render_latent(k, pa, data=data, corrs=corrs, folder=folder, with_ply=with_ply, n_top=n_top,
                      quantiles=quantiles)
        cards[k] = dict(images=[("heatmap (top pair)", os.path.join(folder, "heatmap.png")),
                                ("top pairs and quantile examples", os.path.join(folder, "examples.png"))]
                        + ([("3D: DUSt3R's points of the top pair", os.path.join(folder, "pointcloud.png"))]
                           if with_ply else []),
                        numbers={name: col[k] for name, col in full.items() if name != "latent"},
                        files=[("point cloud (PLY)", os.path.join(folder, "pointcloud.ply"))] if with_ply else [])
    return cards
