"""Per-latent causal effect on DUSt3R's 3D output: remove (or scale) one SAE latent and watch the pointmaps.

For latent k of an SAE read at hook points (view-1 source, view-2 source), on one pair per latent:
  edit   t -> t - (1 - scale) z_k(t) W_dec[k]        at both sources, z = sae.encode(t) per token
so only the latent's share of the SAE's reconstruction changes; the SAE's error term and every other
latent stay (as in Marks et al. 2024, "Sparse Feature Circuits"), and scale = 1 gives exactly the clean
run. scale = 0 removes the latent, 2 doubles it.
  control  the same edit along a random unit direction u (seeded per latent) with the same size,
           t -> t - (1 - scale) z_k(t) ||W_dec[k]|| u: how much any perturbation of that size moves the output.
Measured against the clean run, both pointmaps (view 1's pts3d, view 2's pts3d_in_other_view, one frame)
in units of the clean pair's average distance to the origin (DUSt3R's avg_dis normalisation, so the
numbers are scale-free):
  disp        per-pixel |delta pts| of each view (the heatmap), real orientation;
  mean_disp   over all pixels of both views; mean_disp_firing / _silent over the pixels of patches where
              the latent fires / does not fire (a local latent moves the points where it fires);
  dconf       mean change of confidence per view (edited - clean).
Cost: one clean, one edited and one control forward per batch of latents (each latent with its own pair).
Letters: B latents (= pairs) in a batch, N tokens, C channels, S latents, H x W pixels.
"""
import numpy as np
import torch

from analysis.ply import real_orientation
from data import collate_pairs
from training.hooks import autocast, views_to


def _edit(sae, ks, dirs, scale):
    """Replacement function for forward_spliced: item b loses (1 - scale) z_{ks[b]}(t) dirs[b] at every token."""
    def f(t, view):
        with torch.autocast(t.device.type, enabled=False):  # the SAE in fp32 inside DUSt3R's bf16 autocast
            x = t.float()
            B, N, C = x.shape
            z = sae.encode(x.reshape(B * N, C)).reshape(B, N, -1)  # (B, N, S)
            zk = z[torch.arange(B, device=x.device), :, ks.to(x.device)]  # (B, N): each item's own latent
            return (x - (1 - scale) * zk[..., None] * dirs.to(x)[:, None, :]).to(t.dtype)
    return f


@torch.no_grad()
def _run(model, view1, view2, edits, device):
    v1, v2 = views_to(view1, device), views_to(view2, device)
    with autocast(device):
        res1, res2 = model.forward_spliced(v1, v2, edits) if edits else model(v1, v2)
    pts = [res1["pts3d"].float().cpu(), res2["pts3d_in_other_view"].float().cpu()]
    return pts, [res1["conf"].float().cpu(), res2["conf"].float().cpu()]


@torch.no_grad()
def _firing(model, sae, view1, view2, sources, ks, device):
    """(B, N1), (B, N2) activation of each item's latent at the view's source, real-orientation token order."""
    v1, v2 = views_to(view1, device), views_to(view2, device)
    with autocast(device):
        out = model.forward_hooks(v1, v2, hooks=sorted(set(sources)))
    maps = []
    for v, name in enumerate(sources):
        t = out.tokens[name][v].float()
        B, N, C = t.shape
        z = sae.encode(t.reshape(B * N, C)).reshape(B, N, -1)
        maps.append(z[torch.arange(B, device=t.device), :, ks.to(t.device)].cpu())
    return maps


def causal_effects(model, sae, sources, pairs, latents, *, scale=0.0, batch_size=8, device="cpu", seed=0):
    """One dict per latent (module docstring). sources: (view-1 hook point, view-2 hook point); pairs: one
    unbatched (view1, view2) item per latent, e.g. the latent's top pair."""
    if len(pairs) != len(latents):
        raise ValueError(f"causal_effects: {len(latents)} latents but {len(pairs)} pairs (one pair per latent)")
    device, patch, out = torch.device(device), model.patch_size, []
    W = sae.W_dec.detach().float()
    for lo in range(0, len(latents), batch_size):
        ks = torch.as_tensor([int(k) for k in latents[lo:lo + batch_size]])
        view1, view2 = collate_pairs(pairs[lo:lo + batch_size])
        gen = [torch.Generator().manual_seed(seed * 1_000_003 + int(k)) for k in ks]
        rand = torch.stack([torch.randn(W.shape[1], generator=g) for g in gen])  # (B, C)
        rand = rand / rand.norm(dim=1, keepdim=True) * W[ks].norm(dim=1, keepdim=True).cpu()
        clean = _run(model, view1, view2, {}, device)
        runs = {}
        for tag, dirs in (("edit", W[ks]), ("control", rand)):
            f = _edit(sae, ks, dirs, scale)
            runs[tag] = _run(model, view1, view2, {name: f for name in set(sources)}, device)
        fire = _firing(model, sae, view1, view2, sources, ks, device)
        for b, k in enumerate(ks.tolist()):
            ts = [view1["true_shape"][b], view2["true_shape"][b]]
            c_pts = [real_orientation(clean[0][v][b].numpy(), ts[v]).astype(np.float64) for v in range(2)]
            scale_b = max(np.mean(np.concatenate([np.linalg.norm(p, axis=-1).ravel() for p in c_pts])), 1e-12)
            grid = [(int(t[0]) // patch, int(t[1]) // patch) for t in ts]
            act = [fire[v][b].numpy().reshape(grid[v]) for v in range(2)]
            mask = [np.kron(a > 0, np.ones((patch, patch), bool)) for a in act]  # (H, W) firing pixels
            rec = dict(latent=k, scale=scale, act=act)
            for tag, (pts, conf) in runs.items():
                d = [np.linalg.norm(real_orientation(pts[v][b].numpy(), ts[v]) - c_pts[v], axis=-1) / scale_b
                     for v in range(2)]
                allp, on = np.concatenate([x.ravel() for x in d]), np.concatenate([m.ravel() for m in mask])
                pre = "" if tag == "edit" else "control_"
                rec.update({f"{pre}mean_disp": float(allp.mean()),
                            f"{pre}mean_disp_firing": float(allp[on].mean()) if on.any() else float("nan"),
                            f"{pre}mean_disp_silent": float(allp[~on].mean()) if (~on).any() else float("nan"),
                            f"{pre}dconf": [float((conf[v][b] - clean[1][v][b]).mean()) for v in range(2)]})
                if tag == "edit":
                    rec["disp"] = d
            out.append(rec)
    return out


def card_numbers(e):
    """The numbers of one effect, flat, for a card and the JSON (no maps)."""
    return {"causal_mean_disp": e["mean_disp"], "causal_mean_disp_firing": e["mean_disp_firing"],
            "causal_mean_disp_silent": e["mean_disp_silent"], "causal_dconf_view1": e["dconf"][0],
            "causal_dconf_view2": e["dconf"][1], "causal_control_mean_disp": e["control_mean_disp"],
            "causal_control_dconf_view1": e["control_dconf"][0], "causal_control_dconf_view2": e["control_dconf"][1]}


def summary_lines(rows, scale):
    """summary.md section over the pictured latents, each against its random-direction control."""
    if not rows:
        return []
    d = np.array([r["causal_mean_disp"] for r in rows])
    c = np.array([r["causal_control_mean_disp"] for r in rows])
    on, off = (np.array([r[f"causal_mean_disp_{k}"] for r in rows]) for k in ("firing", "silent"))
    local = np.isfinite(on) & np.isfinite(off)
    dc = np.array([(r["causal_dconf_view1"] + r["causal_dconf_view2"]) / 2 for r in rows])
    return ["", "## Causal effect on the 3D output (pictured latents)", "",
            f"- {len(rows)} pictured latents, each scaled to {scale:g} x its activation on its top pair (SAE error "
            "term kept: the rest of the tokens unchanged); change of both pointmaps against the clean run, in units of "
            "the clean pair's mean distance to the origin (definitions: analysis/causal.py).",
            f"- Median mean |3D change| {np.median(d):.4g}; control (same-size edit along a random direction): "
            f"{np.median(c):.4g}; {int((d > c).sum())} of {len(rows)} latents move the points more than their control.",
            f"- Where the latent fires vs where it does not (median over the {int(local.sum())} latents with both): "
            f"{np.median(on[local]) if local.any() else float('nan'):.4g} vs "
            f"{np.median(off[local]) if local.any() else float('nan'):.4g}; median change of confidence "
            f"{np.median(dc):+.4g}."]
