"""Evaluation of an SAE at a DUSt3R hook point on held-out pairs.

Reconstruction (models/sae.py metrics, raw activation space): FVU (centred, float64; per branch too
when the SAE pools two branches/views), L0, dead latents (training window: no firing in the last
dead_tokens tokens; and never firing on the eval set), dense latents (> 1 % of eval tokens), the
log10 feature-density histogram.

Spliced 3D fidelity: DUSt3R is run with the hook point's tokens replaced by (a) nothing (clean),
(b) the SAE reconstruction, (c) the per-dimension mean of that hook point over the eval tokens
(mean-ablation; zero-ablation is too extreme for a residual stream), and
    score = (L_ablate - L_sae) / (L_ablate - L_clean)        1 = as good as clean, 0 = as bad as ablated
with L DUSt3R's training loss ConfLoss(Regr3D(L21, norm_mode='avg_dis'), alpha=0.2): both pointmaps of a
pair (view 2 in view 1's frame) divided by their average distance to the origin over the valid pixels of
both views, per-pixel Euclidean error, weighted by the run's confidence minus alpha*log(conf), averaged
over valid pixels per view and summed over the two views (naver/dust3r losses.py). L is measured against
the clean run's pointmaps (all pixels valid), and against ground truth where the dataset has geometry.
The clean and mean-ablated runs depend only on the eval set, so they are computed once, and all runs of a
batch share the encoder work before the hook point (EvalSet).
"""
import re

import torch
from einops import einsum

from data import make_loader
from models.sae import FVU, FiringStats
from training.hooks import autocast, extract, views_to

CONF_ALPHA = 0.2  # DUSt3R's training recipe: ConfLoss(Regr3D(L21, norm_mode='avg_dis'), alpha=0.2)


class LossSum:
    """Dataset-level ConfLoss(Regr3D): per view, sum of the per-pixel terms over valid pixels / their count."""

    def __init__(self):
        self.num, self.den = [0.0, 0.0], [0, 0]

    def update(self, pts, conf, gt, valid, alpha=CONF_ALPHA):
        """pts, gt: pairs (view 1, view 2) of (B,H,W,3) in view 1's frame; conf, valid: pairs of (B,H,W)."""
        pts, gt = normalize_avg_dis(pts, valid), normalize_avg_dis(gt, valid)
        for v in range(2):
            err = (pts[v] - gt[v]).norm(dim=-1)  # (B,H,W) L21
            term = err * conf[v] - alpha * torch.log(conf[v])
            self.num[v] += float(term[valid[v]].double().sum())
            self.den[v] += int(valid[v].sum())

    def value(self):
        return sum(n / max(d, 1) for n, d in zip(self.num, self.den))


def normalize_avg_dis(pts, valid):
    """Divide both views' points by their average distance to the origin over the valid pixels of both."""
    dist = sum((p.norm(dim=-1) * m).sum((1, 2)) for p, m in zip(pts, valid))  # (B,)
    count = sum(m.sum((1, 2)) for m in valid)
    scale = (dist / count.clamp_min(1)).clamp_min(1e-8)
    return [p / scale[:, None, None, None] for p in pts]


def ground_truth(view1, view2):
    """(gt pts pair in view 1's camera frame, valid pair) from dataset geometry, or None without it."""
    if "pts3d" not in view1 or "camera_pose" not in view1:
        return None
    world_to_cam1 = torch.linalg.inv(torch.as_tensor(view1["camera_pose"]).double())  # (B,4,4)
    out = []
    for view in (view1, view2):
        pts = torch.as_tensor(view["pts3d"]).double()  # (B,H,W,3) world
        out.append((einsum(world_to_cam1[:, :3, :3], pts, "b i j, b h w j -> b h w i")
                    + world_to_cam1[:, None, None, :3, 3]).float())
    valid = [torch.as_tensor(v["valid_mask"]).bool() & torch.isfinite(p).all(-1) for v, p in zip((view1, view2), out)]
    return out, valid


def _outputs(res1, res2):
    pts = [res1["pts3d"].float().cpu(), res2["pts3d_in_other_view"].float().cpu()]
    return pts, [res1["conf"].float().cpu(), res2["conf"].float().cpu()]


class EvalSet:
    """Held-out pairs prepared once: hook tokens (n, T, C), branch ids, and for the spliced score the view
    batches, each batch's clean encoder state and the clean and mean-ablated losses.

    The clean, mean-ablated and every SAE-spliced run of a batch share the encoder work before the hook point:
    for a decoder hook the encoder output (model.encode once, model.decode per run), for an encoder hook
    ('patch_embed', 'enc_blocks.<i>', 'enc_norm') the clean tokens at the hook (model.encode_from per run). Each
    run's outputs equal a full forward_spliced's (tests/test_eval_reuse.py). Memory: two (B, N, C) tensors per
    view and batch stay on the device (64 pairs at 224 in bf16: about 100 MB)."""

    def __init__(self, tokens, branch, *, sources, model=None, batches=(), device="cpu"):
        self.tokens, self.branch, self.sources, self.model, self.device = tokens, branch, sources, model, device
        self.batches, self.clean, self.gt, self.encoded = list(batches), [], [], []
        # per hook point mean over all its eval tokens (views through the same point share one mean)
        self.means = {}
        for name in dict(sources):
            views = [v for n, v in sources if n == name]
            sel = torch.isin(branch, torch.tensor(views, dtype=branch.dtype))
            self.means[name] = tokens[:, sel].float().reshape(-1, tokens.shape[-1]).mean(0)
        self.loss_clean, self.loss_ablate = {}, {}
        if model is not None and self.batches:
            clean, gt_l, ablate = LossSum(), LossSum(), LossSum()
            ablate_gt, clean_gt = LossSum(), LossSum()
            for i, (view1, view2) in enumerate(self.batches):
                self.encoded.append(self._encode(view1, view2))
                pts, conf = self._run(i, {})
                self.clean.append(pts)
                gt = ground_truth(view1, view2)
                self.gt.append(gt)
                full = [torch.ones(p.shape[:-1], dtype=torch.bool) for p in pts]
                clean.update(pts, conf, pts, full)
                edits = {name: (lambda t, v, m=m: m.to(t.device, t.dtype).expand_as(t))
                         for name, m in self.means.items()}
                a_pts, a_conf = self._run(i, edits)
                ablate.update(a_pts, a_conf, pts, full)
                if gt is not None:
                    clean_gt.update(pts, conf, *gt)
                    ablate_gt.update(a_pts, a_conf, *gt)
            self.loss_clean["clean"], self.loss_ablate["clean"] = clean.value(), ablate.value()
            if all(g is not None for g in self.gt):
                self.loss_clean["gt"], self.loss_ablate["gt"] = clean_gt.value(), ablate_gt.value()

    @classmethod
    def from_model(cls, model, dataset, *, sources, device, n_pairs, batch_size, fidelity=True):
        loader = make_loader(dataset, batch_size, sampler=range(min(n_pairs, len(dataset))), num_workers=0)
        batches, toks = [], []
        for view1, view2 in loader:
            x, branch = extract(model, view1, view2, sources, device)
            toks.append(x.cpu())
            batches.append((view1, view2))
        return cls(torch.cat(toks), branch, sources=sources, model=model if fidelity else None,
                   batches=batches if fidelity else (), device=device)

    @torch.no_grad()
    def _encode(self, view1, view2):
        """A batch's clean state shared by its runs: (encode() of both views, clean tokens at an encoder hook per
        view or None for a decoder hook); None where model.encode_from cannot resume (full forwards then)."""
        (name, _), order = self.sources[0], self.model.hook_points.index
        v1, v2 = views_to(view1, self.device), views_to(view2, self.device)
        with autocast(self.device):
            if order(name) > order("enc_norm"):  # decoder hook: the whole encoder output is clean
                return self.model.encode(v1, v2), None
            if not re.fullmatch(r"patch_embed|enc_norm|enc_blocks\.\d+", name) or v1["img"].shape != v2["img"].shape:
                return None  # inside a block, or views of two sizes (encoded apart): full forwards
            rec = {}
            return self.model.encode(v1, v2, edits={name: lambda t, v: rec.setdefault(v, t)}), [rec[1], rec[2]]

    @torch.no_grad()
    def _run(self, i, edits):
        """Pointmaps and confidences of batch i with `edits` ({hook point: fn(tokens, view)}) spliced in."""
        state = self.encoded[i]
        with autocast(self.device):
            if state is None:  # no shared state: the full forward
                v1, v2 = (views_to(v, self.device) for v in self.batches[i])
                res1, res2 = self.model.forward_spliced(v1, v2, edits)
            elif state[1] is None or not edits:  # decoder hook, or the clean run
                res1, res2 = self.model.decode(*state[0], edits=edits)
            else:  # encoder hook: finish the encoder from the edited clean tokens
                (name, fn), = edits.items()
                enc = self.model.encode_from(name, [fn(t, v + 1) for v, t in enumerate(state[1])], state[0])
                res1, res2 = self.model.decode(*enc)
        return _outputs(res1, res2)


@torch.no_grad()
def evaluate(sae, ev, chunk_tokens=8192, dense_thresh=1e-2):
    """-> flat dict of metrics for metrics.jsonl (see module docstring)."""
    was_training = sae.training
    sae.eval()
    device = next(sae.parameters()).device
    C = ev.tokens.shape[-1]
    x_all = ev.tokens.reshape(-1, C)  # (n*T, C) float16
    branch_all = ev.branch.repeat(len(ev.tokens))
    fvu, fvu_b = FVU(), {int(b): FVU() for b in ev.branch.unique()}
    firing = FiringStats(sae.cfg.n_latents)
    for i in range(0, len(x_all), chunk_tokens):
        x = x_all[i:i + chunk_tokens].to(device).float()
        z = sae.encode(x)
        x_hat = sae.decode(z)
        fvu.update(x, x_hat)
        b = branch_all[i:i + chunk_tokens].to(device)
        for v, f in fvu_b.items():
            if (b == v).any():
                f.update(x[b == v], x_hat[b == v])
        firing.update(z)
    counts, edges = firing.histogram()
    out = {"fvu": fvu.compute(), "l0": float(firing.frequency().sum()), "eval_tokens": firing.n_tokens,
           "dead_frac": float(sae.dead_mask().float().mean()),
           "never_fired_frac": firing.n_dead() / sae.cfg.n_latents,
           "dense_frac": firing.n_dense(dense_thresh) / sae.cfg.n_latents,
           "density_counts": counts.tolist(), "density_edges": edges.tolist()}
    if len(fvu_b) > 1:
        out.update({f"fvu_branch{v}": f.compute() for v, f in fvu_b.items()})
    if ev.model is not None and ev.batches:
        def splice(t, v):  # SAE in fp32 even inside DUSt3R's bf16 autocast
            with torch.autocast(t.device.type, enabled=False):
                flat = t.reshape(-1, t.shape[-1]).float()
                return sae.decode(sae.encode(flat)).reshape(t.shape).to(t.dtype)
        sae_clean, sae_gt = LossSum(), LossSum()
        for i, (clean, gt) in enumerate(zip(ev.clean, ev.gt)):
            pts, conf = ev._run(i, {name: splice for name in ev.means})
            sae_clean.update(pts, conf, clean, [torch.ones(p.shape[:-1], dtype=torch.bool) for p in clean])
            if gt is not None:
                sae_gt.update(pts, conf, *gt)
        for key, L in (("clean", sae_clean), ("gt", sae_gt)):
            if key in ev.loss_clean:
                lc, la, ls = ev.loss_clean[key], ev.loss_ablate[key], L.value()
                out.update({f"L_clean_vs_{key}": lc, f"L_ablate_vs_{key}": la, f"L_sae_vs_{key}": ls,
                            f"score_vs_{key}": (la - ls) / (la - lc) if la != lc else float("nan")})
    sae.train(was_training)
    return out


def log_eval(run, step, tokens, metrics):
    """An 'eval' record of `evaluate`'s metrics in metrics.jsonl, and a line in log.txt with every scalar
    metric present (so a new metric in `evaluate` shows up there without an edit here)."""
    run.metrics(dict(kind="eval", step=step, tokens=tokens, **metrics))
    scalars = [f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    run.log(f"step {step}: eval " + " ".join(scalars))
