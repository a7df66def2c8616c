"""Layer probes: where DUSt3R's tokens start to carry correspondence and 3D (issue 11).

For every layer in a list, on pairs with ground-truth geometry:
  * correspondence: mutual nearest neighbours of view-1 and view-2 tokens by cosine similarity,
    scored against the ground-truth patch matches of data/correspondence.py. Over the view-1 patches
    that have a ground-truth match: precision = correct / mutual-NN matches made there, recall =
    correct / ground-truth matches; "exact" = the matched view-2 patch, "within 1" = Chebyshev
    distance <= 1 on view 2's patch grid. Mutual-NN matches of patches without a ground-truth match
    (occluded, out of view) are counted separately (`n_pred_unmatched`), not as errors.
    Null: the same with view 2's tokens shuffled within the pair (NULL_DRAWS shuffles, pooled: chance at
    these grids, for as many matches as the layer makes); control:
    the identity match p -> p (what "same grid position" gets on these pairs, for free).
  * a linear pointmap probe per layer and view, as DUSt3R's linear head: token (C,) -> its patch's
    p*p*3 points. A linear map of the features alone cannot know where the token sits (DUSt3R's RoPE
    never writes position into the tokens of a random model), and a pointmap is mostly ray direction,
    i.e. position; so the probe is features W + one intercept per grid position, fitted jointly, and it
    measures what the features add to position. Fitted by ridge regression
    (closed form from streamed sums: two DUSt3R passes per pair whatever the number of layers) on the
    train split, scored on the val split with DUSt3R's own normalised 3D error: prediction and ground
    truth (view 2 in view 1's frame) each divided by the average distance to the origin over the valid
    pixels of both views (Regr3D, norm_mode='avg_dis'), per-pixel Euclidean distance averaged over
    valid pixels, per view. Targets are the normalised ground-truth points; tokens whose patch has an
    invalid pixel are left out of the fit.
    Null: the train mean of the target at each grid position (position only) = what a layer without 3D
    information scores; noise features score it or slightly worse (overfitting), exact features near 0.
A layer is a hook point of the model; a decoder block's two branches form one layer, written
'dec_blocks*.<i>[.<sub>]': view 1's tokens from 'dec_blocks.<i>[.<sub>]', view 2's from 'dec_blocks2...'.
Letters: B batch, N tokens of a view (row-major patch grid), C channels, p patch size, O = p*p*3.
"""
import numpy as np
import torch
from einops import rearrange

from analysis.ply import real_orientation
from data import collate_pairs, patch_correspondences
from training.evaluate import ground_truth, normalize_avg_dis
from training.hooks import autocast, view_sources, views_to

RIDGE = 1e-3  # ridge strength on standardised features (relative to the correlation matrix's mean eigenvalue, 1)
NULL_DRAWS = 20  # shuffles of view 2's tokens per pair and layer for the correspondence null (counts pooled)


# ------------------------------------------------------------------------------------------------ layers

def default_layers(hook_points):
    """Every hook point of the model in forward order, a decoder block's two branches as one layer; '<block>.mlp'
    (the residual after the MLP add) is the block's output itself and is listed once, as '<block>'."""
    out, points = [], set(hook_points)
    for name in hook_points:
        if name.startswith("dec_blocks2.") or (name.endswith(".mlp") and name[:-len(".mlp")] in points):
            continue
        out.append("dec_blocks*." + name[len("dec_blocks."):] if name.startswith("dec_blocks.") else name)
    return out


def parse_layers(spec, hook_points):
    """'all' or a comma-separated list (or a list) of layers -> layers in forward order; unknown names
    are an error that lists the model's hook points."""
    layers = default_layers(hook_points) if spec == "all" else (
        [s.strip() for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec))
    order = {name: i for i, name in enumerate(hook_points)}

    def known(layer):
        try:
            return all(s in order for s in view_sources(layer))
        except ValueError:  # not a hook name at all
            return False

    bad = [layer for layer in layers if not known(layer)]
    if bad or not layers:
        raise ValueError(f"hooks={spec!r}: unknown layer(s) {bad}; valid hook points: {list(hook_points)} "
                         "(a decoder block's branches together: dec_blocks*.<i>)")
    uniq = list(dict.fromkeys(layers))
    return sorted(uniq, key=lambda layer: max(order[s] for s in view_sources(layer)))


@torch.no_grad()
def pair_tokens(model, view1, view2, layers, device):
    """{layer: (view-1 tokens (B, N1, C), view-2 tokens (B, N2, C))} float32 on the CPU; one forward that
    stops after the last hook point needed."""
    hooks = sorted({s for layer in layers for s in view_sources(layer)})
    with autocast(device):
        out = model.forward_hooks(views_to(view1, device), views_to(view2, device), hooks=hooks)
    res = {}
    for layer in layers:
        s1, s2 = view_sources(layer)
        res[layer] = (out.tokens[s1][0].float().cpu(), out.tokens[s2][1].float().cpu())
    return res


# ------------------------------------------------------------------------------------------------ geometry

def patch_targets(view1, view2, patch):
    """Normalised ground-truth pointmaps as token rows: [(B, N1, O), (B, N2, O)] and pixel masks
    [(B, N1, p*p), (B, N2, p*p)], view 2 in view 1's frame, real orientation, row-major grid."""
    gt = ground_truth(view1, view2)
    if gt is None:
        raise ValueError("layer probes need views with geometry (pts3d, camera_pose, valid_mask): use a dataset "
                         "with depth and poses (builtin, blendedmvs, arkitscenes, middlebury)")
    pts, valid = gt
    pts = normalize_avg_dis(pts, valid)
    rows, masks = [], []
    for p, m, view in zip(pts, valid, (view1, view2)):
        P = torch.stack([torch.as_tensor(real_orientation(p[b].numpy(), view["true_shape"][b]))
                         for b in range(len(p))])  # (B, H, W, 3)
        M = torch.stack([torch.as_tensor(real_orientation(m[b].numpy(), view["true_shape"][b]))
                         for b in range(len(m))])  # (B, H, W)
        rows.append(rearrange(P, "b (h p1) (w p2) c -> b (h w) (p1 p2 c)", p1=patch, p2=patch))
        masks.append(rearrange(M, "b (h p1) (w p2) -> b (h w) (p1 p2)", p1=patch, p2=patch))
    return rows, masks


# ------------------------------------------------------------------------------------------------ correspondence

def mutual_nn(f1, f2):
    """Mutual nearest neighbours by cosine similarity: f1 (N1, C), f2 (N2, C) -> (N1,) view-2 index or -1."""
    sim = torch.nn.functional.normalize(f1.double(), dim=-1) @ torch.nn.functional.normalize(f2.double(), dim=-1).T
    fwd, bwd = sim.argmax(1), sim.argmax(0)  # (N1,), (N2,)
    return torch.where(bwd[fwd] == torch.arange(len(f1)), fwd, torch.full_like(fwd, -1))


class MatchScore:
    """Counts for correspondence precision / recall (module docstring), accumulated over pairs."""

    def __init__(self):
        self.n_gt, self.n_pred, self.exact, self.near, self.n_pred_unmatched = 0, 0, 0, 0, 0

    def update(self, pred, gt, w2):
        """pred, gt: (N1,) view-2 indices or -1; w2: view 2's grid width."""
        pred, gt = np.asarray(pred), np.asarray(gt)
        has_gt, made = gt >= 0, pred >= 0
        both = has_gt & made
        dy = np.abs(pred[both] // w2 - gt[both] // w2)
        dx = np.abs(pred[both] % w2 - gt[both] % w2)
        self.n_gt += int(has_gt.sum())
        self.n_pred += int(both.sum())
        self.n_pred_unmatched += int((made & ~has_gt).sum())
        self.exact += int((pred[both] == gt[both]).sum())
        self.near += int((np.maximum(dy, dx) <= 1).sum())

    def result(self):
        return dict(precision_exact=self.exact / max(self.n_pred, 1), recall_exact=self.exact / max(self.n_gt, 1),
                    precision_within_1=self.near / max(self.n_pred, 1), recall_within_1=self.near / max(self.n_gt, 1),
                    n_gt_matches=self.n_gt, n_predicted=self.n_pred, n_pred_unmatched=self.n_pred_unmatched)


# ------------------------------------------------------------------------------------------------ pointmap probe

class LinearProbe:
    """y = c[pos] + x W for a token at grid position pos: a linear map of the features plus one intercept per
    grid position, fitted jointly (fixed effects: ridge regression of the within-position deviations, then
    c = mean y - (mean x) W per position; Frisch-Waugh-Lovell). The null m[pos] = the train mean of y at
    the position is kept too. Closed form from streamed float64 sums."""

    def __init__(self, d_in, d_out, n_pos, device="cpu"):
        z = dict(dtype=torch.float64, device=device)
        self.n, self.sxx, self.sxy = 0, torch.zeros(d_in, d_in, **z), torch.zeros(d_in, d_out, **z)
        self.cnt, self.sx_pos, self.sy_pos = (torch.zeros(n_pos, **z), torch.zeros(n_pos, d_in, **z),
                                              torch.zeros(n_pos, d_out, **z))
        self.W = self.c = self.m = None

    def update(self, x, y, pos):
        """x (T, d_in), y (T, d_out), pos (T,) grid positions of the rows."""
        x, y = x.to(self.sxx.device, torch.float64), y.to(self.sxx.device, torch.float64)
        pos = pos.to(self.sxx.device)
        self.n += len(x)
        self.sxx += x.T @ x
        self.sxy += x.T @ y
        self.cnt.index_add_(0, pos, torch.ones_like(pos, dtype=torch.float64))
        self.sx_pos.index_add_(0, pos, x)
        self.sy_pos.index_add_(0, pos, y)

    def solve(self, ridge=RIDGE):
        if self.n < 2:
            raise ValueError(f"linear probe: {self.n} training rows; need pairs with valid geometry")
        mx_pos = self.sx_pos / self.cnt.clamp_min(1)[:, None]  # (n_pos, d_in) per-position means
        self.m = self.sy_pos / self.cnt.clamp_min(1)[:, None]  # (n_pos, d_out): the position-only null
        cov = (self.sxx - self.sx_pos.T @ mx_pos) / self.n  # covariance of the within-position deviations
        cxy = (self.sxy - self.sx_pos.T @ self.m) / self.n
        # standardised features, so the ridge treats every channel alike whatever its scale (constant ones: 1)
        sd = cov.diagonal().clamp_min(0).sqrt()
        sd = torch.where(sd > 1e-12 * max(float(sd.max()), 1e-300), sd, torch.ones_like(sd))
        corr = cov / torch.outer(sd, sd)
        eye = torch.eye(len(cov), dtype=cov.dtype, device=cov.device)
        self.W = torch.linalg.solve(corr + ridge * eye, cxy / sd[:, None]) / sd[:, None]
        self.c = self.m - mx_pos @ self.W  # (n_pos, d_out) intercepts
        return self

    def predict(self, x, features=True):
        """x (B, N, d_in), token n at grid position n -> (B, N, d_out); features=False: the null m[pos]."""
        if not features:
            return self.m[None, :x.shape[1]].expand(len(x), -1, -1).float().cpu()
        return (x.to(self.W.device, torch.float64) @ self.W + self.c[None, :x.shape[1]]).float().cpu()


class PointError:
    """DUSt3R's normalised 3D error per view (Regr3D, avg_dis), summed over valid pixels of all pairs."""

    def __init__(self):
        self.sum, self.count = [0.0, 0.0], [0, 0]

    def update(self, pred, gt, valid):
        """pred, gt: [(B, N1, O), (B, N2, O)] token rows (gt already normalised); valid [(B, N, p*p)]. The
        prediction is normalised here, like Regr3D's; token layout (B, N, p*p, 3) has the rank of an image's."""
        pts = normalize_avg_dis([p.double().reshape(*p.shape[:2], -1, 3) for p in pred], valid)
        for v in range(2):
            err = (pts[v] - gt[v].double().reshape(pts[v].shape)).norm(dim=-1)  # (B, N, p*p) per-pixel distance
            self.sum[v] += float(err[valid[v]].sum())
            self.count[v] += int(valid[v].sum())

    def result(self):
        return [s / max(c, 1) for s, c in zip(self.sum, self.count)]


# ------------------------------------------------------------------------------------------------ sweep

def _batches(ds, n, batch_size):
    for lo in range(0, n, batch_size):
        yield collate_pairs([ds[i] for i in range(lo, min(lo + batch_size, n))])


def _grids(view1, view2, patch):
    """(B, 2) real-orientation patch grids (h, w) of both views (the model's token order)."""
    return [torch.as_tensor(v["true_shape"]).reshape(-1, 2).long() // patch for v in (view1, view2)]


def probe_sweep(model, train_ds, val_ds, layers, *, n_train, n_val, batch_size=8, device="cpu", ridge=RIDGE, seed=0,
                log=print):
    """Correspondence accuracy and linear pointmap probes for every layer (module docstring).

    Returns dict(rows=[one dict per layer, forward order], baselines=dict(identity=..., position=[err1, err2]),
    n_train, n_val). Costs one DUSt3R forward per train pair and one per val pair for all layers together."""
    patch, device = model.patch_size, torch.device(device)
    n_train, n_val = min(n_train, len(train_ds)), min(n_val, len(val_ds))
    probes = {}
    for i, (view1, view2) in enumerate(_batches(train_ds, n_train, batch_size)):
        toks = pair_tokens(model, view1, view2, layers, device)
        Y, M = patch_targets(view1, view2, patch)
        for v in range(2):
            full = M[v].all(-1)  # (B, N): tokens whose whole patch is valid
            B, N = full.shape
            pos = torch.arange(N).expand(B, N)[full]
            for layer in layers:
                x = toks[layer][v]  # (B, N, C)
                if (layer, v) not in probes:
                    probes[(layer, v)] = LinearProbe(x.shape[-1], Y[v].shape[-1], N, device)
                if probes[(layer, v)].cnt.shape[0] != N:
                    raise ValueError(f"train pairs have different patch grids ({N} vs "
                                     f"{probes[(layer, v)].cnt.shape[0]} tokens): run the probes at one resolution")
                probes[(layer, v)].update(x[full], Y[v][full], pos)
        log(f"probe fit: {min((i + 1) * batch_size, n_train)}/{n_train} train pairs")
    for pr in probes.values():
        pr.solve(ridge)
    position = [probes[(layers[0], v)] for v in range(2)]  # every layer's probe has the same position means

    rng = torch.Generator().manual_seed(seed)
    match = {layer: MatchScore() for layer in layers}
    null = {layer: MatchScore() for layer in layers}
    err = {layer: PointError() for layer in layers}
    identity, pos_err = MatchScore(), PointError()
    for i, (view1, view2) in enumerate(_batches(val_ds, n_val, batch_size)):
        toks = pair_tokens(model, view1, view2, layers, device)
        Y, M = patch_targets(view1, view2, patch)
        grids = _grids(view1, view2, patch)
        B = len(Y[0])
        gts = [np.asarray(patch_correspondences({k: v[b] for k, v in view1.items()},
                                                {k: v[b] for k, v in view2.items()}, patch=patch)) for b in range(B)]
        w2 = [int(g[1]) for g in grids[1]]
        if any(len(position[v].m) != Y[v].shape[1] for v in range(2)):
            raise ValueError("val pairs have another patch grid than the train pairs: run the probes at one resolution")
        pos_err.update([position[v].predict(Y[v], features=False) for v in range(2)], Y, M)
        for b in range(B):
            N1, N2 = len(gts[b]), int(grids[1][b].prod())
            identity.update(np.where(np.arange(N1) < N2, np.arange(N1), -1), gts[b], w2[b])
        for layer in layers:
            t1, t2 = toks[layer]
            err[layer].update([probes[(layer, 0)].predict(t1), probes[(layer, 1)].predict(t2)], Y, M)
            for b in range(B):
                pred = mutual_nn(t1[b], t2[b])
                match[layer].update(pred.numpy(), gts[b], w2[b])
                for _ in range(NULL_DRAWS):  # shuffling view 2's tokens = the same matches at random view-2 places
                    perm = torch.randperm(t2.shape[1], generator=rng)
                    null[layer].update(torch.where(pred >= 0, perm[pred.clamp_min(0)], -1).numpy(), gts[b], w2[b])
        log(f"probe eval: {min((i + 1) * batch_size, n_val)}/{n_val} val pairs")

    rows = []
    for layer in layers:
        e = err[layer].result()
        rows.append(dict(layer=layer, sources=list(view_sources(layer)), dim=int(probes[(layer, 0)].sxx.shape[0]),
                         correspondence=match[layer].result(), correspondence_shuffled=null[layer].result(),
                         probe_err_view1=e[0], probe_err_view2=e[1],
                         n_fit_tokens=[probes[(layer, v)].n for v in range(2)], n_val_pixels=err[layer].count))
    return dict(rows=rows, n_train=n_train, n_val=n_val, ridge=ridge,
                baselines=dict(identity=identity.result(), position_err=pos_err.result()))


# ------------------------------------------------------------------------------------------------ summary

def probe_summary(res, meta):
    """summary.md of a probe sweep: settings, the nulls and controls, then one table row per layer."""
    base, rows = res["baselines"], res["rows"]
    ident, pos = base["identity"], base["position_err"]
    n_gt = rows[0]["correspondence"]["n_gt_matches"] if rows else 0
    best_c = max(rows, key=lambda r: r["correspondence"]["recall_within_1"])
    best_p = min(rows, key=lambda r: r["probe_err_view1"] + r["probe_err_view2"])
    lines = [
        f"# Layer probes of `{meta['checkpoint']}`", "",
        f"- Data: `{meta['dataset']}` at {meta['resolution']}; linear probes fitted on {res['n_train']} train pairs "
        f"(ridge {res['ridge']:g} on standardised features), everything else measured on {res['n_val']} val pairs "
        f"({n_gt} view-1 patches with a ground-truth match, {rows[0]['n_val_pixels'][0] if rows else 0} valid "
        "pixels in view 1).",
        "- Correspondence: mutual nearest neighbours of view-1 / view-2 tokens by cosine; precision = correct / "
        "matches made at patches that have a ground-truth match, recall = correct / ground-truth matches; exact "
        "patch, or within one patch (Chebyshev).",
        f"- Null (view 2's tokens shuffled): precision within one patch "
        f"{np.mean([r['correspondence_shuffled']['precision_within_1'] for r in rows]):.3f} on average over layers. "
        f"Control (same grid position, p -> p): exact {ident['precision_exact']:.3f}, within one patch "
        f"{ident['precision_within_1']:.3f}: that is what a feature that only knows where it sits gets on these "
        "pairs.",
        "- Pointmap probe: DUSt3R's normalised 3D error (Regr3D, avg_dis; view 2 in view 1's frame), mean Euclidean "
        f"distance over valid pixels. Null (position only: the train mean at each pixel): view 1 {pos[0]:.4f}, "
        f"view 2 {pos[1]:.4f}.",
        f"- Best correspondence recall (within one patch): `{best_c['layer']}` "
        f"{best_c['correspondence']['recall_within_1']:.3f}; lowest probe error (sum of views): `{best_p['layer']}` "
        f"{best_p['probe_err_view1']:.4f} / {best_p['probe_err_view2']:.4f}.", "",
        "| layer | dim | P exact | R exact | P within 1 | R within 1 | P within 1, shuffled | matches made | "
        "3D err view 1 | 3D err view 2 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c, s = r["correspondence"], r["correspondence_shuffled"]
        lines.append(f"| `{r['layer']}` | {r['dim']} | {c['precision_exact']:.3f} | {c['recall_exact']:.3f} | "
                     f"{c['precision_within_1']:.3f} | {c['recall_within_1']:.3f} | {s['precision_within_1']:.3f} | "
                     f"{c['n_predicted']} | {r['probe_err_view1']:.4f} | {r['probe_err_view2']:.4f} |")
    lines += ["", "Files: `probes.json` (every number), `probes.png` (both curves in forward order). How to read "
              "them: README.md, section Where 3D emerges: a layer sweep."]
    return "\n".join(lines) + "\n"
