"""Analyse trained SAE runs on held-out DUSt3R pairs: per-latent pictures, multi-view metrics, HTML.

For each run folder (written by train_encoder_sae.py / train_decoder_sae.py) this reads the run's
resolved config.yaml and its SAE, runs DUSt3R + SAE over `n_pairs` held-out pairs of the run's
dataset as (A, B), and as (B, A) and (A, A) controls, and writes into the run folder:
  analysis.json        settings, git state, layer summary (counts, fractions, mass-weighted means)
  latent_metrics.json  per-latent columns: frequency, consistency and its nulls, q, asymmetry, controls
  summary.md           the findings in words, with their numbers and sample sizes
  index.html           offline latent browser (open the file; no server, nothing fetched)
  figures/             histograms.png, consistency_<gt|pred>.png
  latents/<k>/         heatmap.png, examples.png (+ pointcloud.ply and its preview pointcloud.png)
Given several runs, it also writes a layer comparison to `compare_dir` (layers.png/.md/.json).
Metrics and controls: workbench/multiview.py; how to read everything: README.md, section Analysing a trained SAE.

    python analyze_results.py results/<run> [results/<run2> ...] [--n_pairs=128] [overrides.yaml]

Runtime: a tiny random-weight test run, about 5 s on CPU; ViT-L at 224 with 128 pairs, a few minutes
on one GPU (one encoder pass per image and three decoder passes per pair; the metrics take seconds).
"""
import json
import os
import shutil
import sys
import time

import numpy as np
import torch
import yaml

from analysis.pairings import pairing_tokens
from data import collate_pairs, make_dataset, patch_correspondences, predicted_correspondences
from models.sae import SAE
from workbench import browser, figures, multiview as mv, ply
from workbench.activations import build_dust3r
from workbench.config import apply_overrides
from workbench.runs import git_state

# ------------------------------------------------------------------------------------------------
n_pairs = 128                 # held-out pairs analysed per run (fewer if the split is smaller)
split = "test"                # held-out split ('test' is the dataset's 'val' for builtin / BlendedMVS)
batch_size = 8                # pairs per DUSt3R forward
correspondence = "auto"       # 'auto' (ground truth where the data has geometry, + predicted) | 'gt' | 'pred'
controls = True               # also run every pair as (B, A) and (A, A): slot-swap and identical-image controls
reuse_encoder = True          # the encoder runs once per image for all three pairings; False: three full passes (timing)
n_perm = 200                  # draws of the shuffled-correspondence null (permutation p-values, >= 200)
min_support = 50              # firing matched patches needed in each view before a latent is tested
n_cards = 48                  # latents that get pictures in latents/ and a card in index.html
n_top = 4                     # top-activating pairs per latent in examples.png
quantiles = (0.75, 0.5, 0.25)  # extra example rows: pairs at these quantiles of the latent's per-pair peak
n_ply = 8                     # visualised latents that also get a PLY point cloud of their top pair
rot_bins = (0, 15, 30, 60, 180)  # degrees: consistency stratified by relative camera rotation (probe3d ScanNet bins)
embed_images = False          # True: base64 images inside index.html (one portable file, larger)
compare_dir = "results/layer_comparison"  # where the comparison of several runs is written
device = "auto"               # 'auto' (cuda if available) | 'cpu' | 'cuda'
seed = 0                      # nulls, bootstrap and the random share of the visualised latents
# ------------------------------------------------------------------------------------------------
CONFIG_KEYS = [_k for _k, _v in globals().items()
               if not _k.startswith("_") and type(_v) in (int, float, bool, str, tuple)]
run_dirs = [a for a in sys.argv[1:] if not a.startswith("--") and not a.endswith((".yaml", ".yml"))]
config = apply_overrides({key: globals()[key] for key in CONFIG_KEYS}, [a for a in sys.argv[1:] if a not in run_dirs])
globals().update(config)
if not run_dirs:
    sys.exit(__doc__)
dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
rng = np.random.default_rng(seed)


def read_run(run_dir):
    """The training run's resolved config and its SAE; clear errors when the folder is not a run."""
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(path) or not os.path.exists(os.path.join(run_dir, "sae.safetensors")):
        raise FileNotFoundError(f"{run_dir}: expected a training run folder with config.yaml and "
                                "sae.safetensors + sae_config.json (train_*_sae.py writes them)")
    with open(path) as f:
        cfg = yaml.safe_load(f)
    missing = [k for k in ("hook", "checkpoint", "dataset", "resolution") if k not in cfg]
    if missing:
        raise KeyError(f"{path}: missing keys {missing}")
    return cfg, SAE.load(run_dir, device=dev).eval()


def view_sources(hook):
    """(hook point of view-1 tokens, hook point of view-2 tokens). A decoder SAE trained on one branch
    is also applied to the same block of the other branch, so that both views can be compared."""
    if hook.startswith("dec_blocks"):
        i = hook.split(".", 1)[1]
        return f"dec_blocks.{i}", f"dec_blocks2.{i}"
    return hook, hook


def hook_rank(hook):
    """Forward order of a hook string, for the layer comparison."""
    name, _, i = hook.partition(".")
    base = {"patch_embed": 0, "enc_blocks": 1, "enc_norm": 1000, "decoder_embed": 1001, "dec_blocks": 1002,
            "dec_blocks2": 1002, "dec_blocks*": 1002, "dec_norm": 2000}[name]
    return base + (int(i) + 1 if i else 0)


@torch.no_grad()
def sae_codes(sae, tokens):
    """SAE codes (B, N, S), on the CPU, of tokens (B, N, C)."""
    return sae.encode(tokens.float().reshape(-1, tokens.shape[-1])).reshape(*tokens.shape[:2], -1).cpu()


def collect(model, sae, ds, n, hooks):
    """Run n pairs. Returns PairActivations for 'ab' (+ 'ba', 'aa' with controls) and per pair:
    ground-truth (or None) and predicted correspondences, display images, pointmaps and confidences
    (all in the real orientation, the token grids' orientation)."""
    pa = {k: mv.PairActivations() for k in (("ab", "ba", "aa") if controls else ("ab",))}
    out = dict(gt=[], pred=[], rgb=[], pts=[], conf=[], rot=[])
    for lo in range(0, n, batch_size):
        items = [ds[i] for i in range(lo, min(lo + batch_size, n))]
        view1, view2 = collate_pairs(items)
        scenes = [str(s) for s in view1.get("label", view1["instance"])]
        # the encoder runs once per image for all three pairings (analysis/pairings.py)
        runs, (res1, res2) = pairing_tokens(model, view1, view2, hooks, controls=controls, device=dev,
                                            reuse=reuse_encoder)
        codes = {}  # id(tokens) -> SAE codes: with an encoder hook, an image's tokens serve several pairings
        for key, (t1, t2, g1, g2) in runs.items():  # 'ab'; with controls 'ba' (slot swap), 'aa' (same image twice)
            for t in (t1, t2):
                if id(t) not in codes:
                    codes[id(t)] = sae_codes(sae, t)
            pa[key].add(codes[id(t1)], codes[id(t2)], g1, g2, scenes)
        for b, (a, c) in enumerate(items):
            ts = (a["true_shape"], c["true_shape"])
            p = [ply.real_orientation(r[k][b].float().cpu().numpy(), t)
                 for r, k, t in ((res1, "pts3d", ts[0]), (res2, "pts3d_in_other_view", ts[1]))]
            cf = [ply.real_orientation(r["conf"][b].float().cpu().numpy(), t) for r, t in zip((res1, res2), ts)]
            out["rgb"].append([figures.to_display(v["img"], t) for v, t in zip((a, c), ts)])
            out["pts"].append([x.astype(np.float16) for x in p])  # float16: 128 pairs at 224 stay < 80 MB
            out["conf"].append([x.astype(np.float16) for x in cf])
            pred = predicted_correspondences(*(torch.from_numpy(x) for x in p + cf), patch=model.patch_size)
            out["pred"].append(np.asarray(pred))
            geo = "depthmap" in a and "camera_pose" in a
            out["gt"].append(np.asarray(patch_correspondences(a, c, patch=model.patch_size)) if geo else None)
            out["rot"].append(rotation_deg(a["camera_pose"], c["camera_pose"]) if geo else np.nan)
    return {k: v.finalize() for k, v in pa.items()}, out


def rotation_deg(pose1, pose2):
    """Relative rotation angle in degrees between two cam-to-world poses (4, 4)."""
    r = np.asarray(pose1, np.float64)[:3, :3].T @ np.asarray(pose2, np.float64)[:3, :3]
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1.0, 1.0))))


def agreement(pa, gt, pred):
    """Of the view-1 patches matched by both, the share whose predicted match is the ground-truth
    patch (exact) or within one patch (Chebyshev), and how many patches that is."""
    exact, near, total = 0, 0, 0
    for n, (a, b) in enumerate(zip(gt, pred)):
        w2, both = pa.grid2[n][1], (a >= 0) & (b >= 0)
        dy, dx = np.abs(a[both] // w2 - b[both] // w2), np.abs(a[both] % w2 - b[both] % w2)
        exact, total = exact + int((a[both] == b[both]).sum()), total + int(both.sum())
        near += int((np.maximum(dy, dx) <= 1).sum())
    return dict(exact=exact / max(total, 1), within_1_patch=near / max(total, 1), n_patches=total)


def pick_cards(table, n):
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


def render_latent(k, pa, data, corrs, folder, with_ply):
    """heatmap.png (top pair + view 2 pulled back to view 1), examples.png (top pairs, then pairs at
    the quantiles of the per-pair peak), pointcloud.ply + pointcloud.png; one colour scale: the latent's peak."""
    c1, c2 = pa.z1[:, k].toarray().ravel(), pa.z2[:, k].toarray().ravel()
    peak = np.maximum(np.maximum.reduceat(c1, pa.start1[:-1]), np.maximum.reduceat(c2, pa.start2[:-1]))  # (P,)
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
    figures.save_png(figures.latent_heatmap(top["rgb1"], top["rgb2"], top["act1"], top["act2"], vmax, corrs[n],
                                            f"latent {k} {top['caption']}"), os.path.join(folder, "heatmap.png"))
    if with_ply:
        xyz, col = ply.latent_pointcloud(data["rgb"][n], [p.astype(np.float32) for p in data["pts"][n]],
                                         [c.astype(np.float32) for c in data["conf"][n]], [top["act1"], top["act2"]],
                                         vmax)
        ply.write_ply(os.path.join(folder, "pointcloud.ply"), xyz, col)
        figures.pointcloud_preview(xyz, col, os.path.join(folder, "pointcloud.png"),
                                   f"latent {k}: DUSt3R points of {top['caption']}")


def jdump(obj, path):
    """JSON with NaN -> null and numpy -> python (per-latent columns as lists)."""
    def clean(v):
        if isinstance(v, dict):
            return {str(a): clean(b) for a, b in v.items()}
        if isinstance(v, np.ndarray) and v.dtype.kind == "f":  # fast path for per-latent columns
            out = v.astype(object)
            out[~np.isfinite(v)] = None
            return out.tolist()
        if isinstance(v, (list, tuple, np.ndarray)):
            return [clean(x) for x in v]
        if isinstance(v, (bool, np.bool_)):
            return bool(v)
        if isinstance(v, (int, np.integer)):
            return int(v)
        if isinstance(v, (float, np.floating)):
            return float(v) if np.isfinite(v) else None
        return v if v is None or isinstance(v, str) else str(v)
    with open(path, "w") as f:
        json.dump(clean(obj), f, indent=1)


def pct(a, b):
    return f"{a}/{b} ({100 * a / max(b, 1):.1f} %)"


def write_summary(path, run, cfg, s, info):
    """summary.md: the findings in words with their numbers and sample sizes."""
    lab = info["labels"]
    gt = info["correspondence"] == "ground truth"
    lines = [
        f"# Analysis of `{run}`: SAE on `{cfg['hook']}`", "",
        f"- DUSt3R `{cfg['checkpoint']}`; dataset `{cfg['dataset']}` split `{split}`, {s['n_pairs']} held-out pairs "
        f"({info['tokens']} tokens per slot); SAE {info['sae']}.",
        f"- Correspondences: **{info['correspondence']}** ("
        + ("from depth and pose" if gt else "DUSt3R's own pointmaps, mutual nearest neighbours: circular for decoder "
           "layers, since the analysed network defines the matches") + f"); {s['n_matched']} matched view-1 patches.",
        *([f"- This SAE was trained on one decoder branch (`{cfg['hook']}`) and is applied here to both "
            f"`{view_sources(cfg['hook'])[0]}` (view 1) and `{view_sources(cfg['hook'])[1]}` (view 2)."]
          if cfg["hook"].startswith(("dec_blocks.", "dec_blocks2.")) else []),
        f"- Alive latents (fire at least once on these pairs): {pct(s['n_alive'], s['n_latents'])}; median firing "
        f"frequency {s['median_frequency']:.4f}.", "",
        "## Cross-view consistency", "",
        f"- Tested latents (>= {min_support} firing matched patches in each view): {s['n_tested']}.",
        f"- Significantly consistent (permutation test, {n_perm} shuffled-correspondence draws; Benjamini-Hochberg "
        f"q <= {mv.FDR_ALPHA}; gain over the strongest null > 0): {pct(s['n_significant'], s['n_alive'])} of alive "
        f"latents ({100 * s['frac_significant_of_tested']:.1f} % of tested).",
        f"- Weighted Jaccard C of tested latents: median {s['median_jaccard']:.3f} vs median strongest null "
        f"{s['median_null_max']:.3f} (nulls: shuffled matches, same grid position, random shift, other scene); "
        f"activation-mass-weighted gain G = (C - C_null) / (1 - C_null) = {s['mass_weighted_gain']:.3f}."]
    if "pred" in info["other"]:
        o, ag = info["other"]["pred"], info["agreement"]
        lines.append(
            f"- Under DUSt3R-predicted correspondences instead ({o['n_matched']} matched patches, {o['n_tested']} "
            f"tested latents): {pct(o['n_significant'], s['n_alive'])} significant, mass-weighted gain "
            f"{o['mass_weighted_gain']:.3f}. " + (
                f"Of the {ag['n_patches']} patches matched by both, {100 * ag['exact']:.1f} % agree exactly and "
                f"{100 * ag['within_1_patch']:.1f} % within one patch." if ag["n_patches"] else
                "No patch is matched by both."))
    for r in info.get("rotation_strata", []):
        lines.append(f"- Relative rotation [{r['bin_deg'][0]}, {r['bin_deg'][1]})°: {r['n_pairs']} pairs, "
                     f"{r['n_matched']} matched patches, {r['n_tested']} tested latents, "
                     f"{pct(r['n_significant'], s['n_alive'])} significant, mass-weighted gain "
                     f"{r['mass_weighted_gain']:.3f}.")
    if "jaccard_identical_mass_weighted" in info:
        enc = not cfg["hook"].startswith(("decoder_embed", "dec_"))
        lines.append(f"- Anchor: on (A, A) pairs with the identity match the mass-weighted C is "
                     f"{info['jaccard_identical_mass_weighted']:.4f}"
                     + (" (must be 1: the encoder sees each view alone)." if enc else
                        " (below 1: the two branches/roles encode the same image differently)."))
    lines += [
        "", "## View asymmetry", "",
        f"- VA = (M1 - M2) / (M1 + M2) per latent, M = activation mass in view 1 / 2 over all tokens. "
        f"Activation-mass-weighted |VA| = {s['mass_weighted_abs_va']:.3f}; {100 * s['frac_asymmetric']:.1f} % of alive "
        f"latents have |VA| >= {mv.ASYM_THRESHOLD}; asymmetric with a bootstrap 95 % CI over pairs that excludes 0 "
        f"(view 1 / view 2): {lab.get('view-1', 0) + lab.get('branch-1', 0)} / "
        f"{lab.get('view-2', 0) + lab.get('branch-2', 0)} (descriptive, no multiple-comparison correction)."]
    if "mass_weighted_abs_slot_specificity" in s:
        lines += [
            f"- Of those, following the slot rather than the image (slot swap: same-sign |S| >= {mv.ASYM_THRESHOLD}; "
            f"labels branch-1 / branch-2): {lab.get('branch-1', 0)} / {lab.get('branch-2', 0)}.",
            "- Controls: (A, A) identical pairs give mass-weighted |VA| = "
            f"{s['mass_weighted_abs_va_identical_pair']:.3f} (what remains is role/branch, not content); the slot "
            "swap (every pair also run as (B, A)) gives "
            f"mass-weighted |slot specificity S| = {s['mass_weighted_abs_slot_specificity']:.3f} and content following "
            f"F = {s['mass_weighted_content_following']:.3f} (high |S| with low F: the latent tracks the branch; "
            "low |S| with high F: it tracks image content)."]
    lines += ["", f"Labels: {lab}. Positional latents (concentration > 0.5): "
              f"{100 * s['frac_positional_gt_0p5']:.1f} % of alive.", "",
              "Files: `index.html` (browser), `latent_metrics.json`, `analysis.json`, `figures/`, `latents/<k>/`. "
              "How to read them: README.md, section Analysing a trained SAE."]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------------ runs
commit, dirty = git_state(os.path.dirname(os.path.abspath(__file__)))
rows = []
for run_dir in run_dirs:
    t0 = time.time()
    cfg, sae = read_run(run_dir)
    run, S = os.path.basename(os.path.normpath(run_dir)), sae.cfg.n_latents
    print(f"== {run}: hook {cfg['hook']}, SAE {sae.cfg.kind} S={S} k={sae.cfg.k}, {dev}")
    model = build_dust3r(cfg["checkpoint"], dev, seed=cfg.get("seed", 0))  # random-* test models: the run's weights
    # the training scripts build their datasets with the default (fixed) dataset seed, and so do we
    ds = make_dataset(cfg["dataset"], root=cfg.get("data_root") or None, resolution=cfg["resolution"], split=split)
    n = min(n_pairs, len(ds))
    pa, data = collect(model, sae, ds, n, view_sources(cfg["hook"]))
    has_gt = all(c is not None for c in data["gt"])
    if correspondence == "gt" and not has_gt:
        raise ValueError(f"correspondence='gt' but dataset {cfg['dataset']!r} has no depth/pose for every pair")
    sets = {} if correspondence == "pred" or not has_gt else {"gt": data["gt"]}
    sets.update({} if correspondence == "gt" else {"pred": data["pred"]})
    primary = "gt" if "gt" in sets else "pred"

    # metrics (workbench/multiview.py); ReLU+L1 SAEs fire with small 'dust', so they get a threshold
    tau = mv.dust_threshold(pa["ab"]) if sae.cfg.kind == "relu" else 0.0
    cons = {k: mv.consistency(pa["ab"], c, n_perm=n_perm, min_support=min_support, tau=tau, seed=seed)
            for k, c in sets.items()}
    asym, stats = mv.view_asymmetry(pa["ab"], seed=seed), mv.latent_stats(pa["ab"])
    swap = mv.slot_swap(pa["ab"], pa["ba"]) if controls else None
    asym_aa = mv.view_asymmetry(pa["aa"], seed=seed) if controls else None
    c = cons[primary]
    summ = mv.layer_summary(c, asym, stats, swap, asym_aa)
    labels = mv.classify(c, asym, swap)
    table = dict(latent=np.arange(S), label=labels, frequency=stats["frequency"],
                 mean_activation=stats["mean_activation"], jaccard=c["jaccard"], gain=c["gain"], q=c["q"],
                 va=asym["va"], exclusivity=asym["exclusivity"], positional=stats["positional"])
    if controls:
        table.update(slot_specificity=swap["slot_specificity"], content_following=swap["content_following"],
                     va_identical=asym_aa["va"])
    full = dict(table, **{k: c[k] for k in ("pearson", "transfer", "support1", "support2", "null_shuffle",
                                            "null_shuffle_q95", "null_position", "null_shift", "null_scene",
                                            "null_max", "p", "p_empirical")},
                **{k: asym[k] for k in ("va_lo", "va_hi", "mass1", "mass2")})
    info = dict(correspondence="ground truth" if primary == "gt" else "DUSt3R-predicted",
                tokens=int(pa["ab"].start1[-1]), other={},
                sae=f"{sae.cfg.kind}, {S} latents, k={sae.cfg.k}, d_in={sae.cfg.d_in}",
                labels={str(a): int(b) for a, b in zip(*np.unique(labels.astype(str), return_counts=True))})
    for k in set(sets) - {primary}:
        full.update({f"{name}_{k}": cons[k][name] for name in ("jaccard", "gain", "q", "significant")})
        info["other"][k] = mv.layer_summary(cons[k], asym, stats)
    if "gt" in sets and "pred" in sets:
        info["agreement"] = agreement(pa["ab"], data["gt"], data["pred"])
    if "gt" in sets:  # strata by relative rotation: the matches of pairs outside a bin are dropped
        rot, info["rotation_strata"] = np.asarray(data["rot"]), []
        for lo, hi in zip(rot_bins[:-1], rot_bins[1:]):
            sel = (rot >= lo) & (rot < hi)
            if sel.any():
                cb = mv.consistency(pa["ab"], [m if s else np.full_like(m, -1) for m, s in zip(sets["gt"], sel)],
                                    n_perm=n_perm, min_support=min_support, tau=tau, seed=seed)
                info["rotation_strata"].append(dict(mv.layer_summary(cb, asym, stats), bin_deg=[lo, hi],
                                                    n_pairs=int(sel.sum())))
    if controls:  # anchor: (A, A) with the identity match, exactly 1 for encoder hooks
        ident = [np.arange(b - a) for a, b in zip(pa["aa"].start1[:-1], pa["aa"].start1[1:])]
        full["jaccard_identical"] = c_aa = mv.consistency(pa["aa"], ident, n_perm=0, min_support=1)["jaccard"]
        w = asym_aa["mass1"] + asym_aa["mass2"]
        ok = np.isfinite(c_aa) & (w > 0)
        info["jaccard_identical_mass_weighted"] = float((c_aa[ok] * w[ok]).sum() / max(w[ok].sum(), 1e-12))

    # pictures, tables, browser
    os.makedirs(os.path.join(run_dir, "figures"), exist_ok=True)
    figs = [("Frequency and mean activation of alive latents", os.path.join(run_dir, "figures", "histograms.png"))]
    figures.activation_histograms(stats["frequency"], stats["mean_activation"], figs[0][1], f"{run} ({cfg['hook']})")
    for k in sets:
        figs.append((f"Consistency vs strongest null ({k} correspondences) and view asymmetry",
                     os.path.join(run_dir, "figures", f"consistency_{k}.png")))
        figures.consistency_figure(cons[k], asym, figs[-1][1], f"{run} ({cfg['hook']}), {k} correspondences")
    cards = {}
    shutil.rmtree(os.path.join(run_dir, "latents"), ignore_errors=True)  # ours alone; no stale cards from a rerun
    for i, k in enumerate(pick_cards(table, n_cards)):
        folder = os.path.join(run_dir, "latents", str(k))
        render_latent(k, pa["ab"], data, sets[primary], folder, with_ply=i < n_ply)
        cards[k] = dict(images=[("heatmap (top pair)", os.path.join(folder, "heatmap.png")),
                                ("top pairs and quantile examples", os.path.join(folder, "examples.png"))]
                        + ([("3D: DUSt3R's points of the top pair", os.path.join(folder, "pointcloud.png"))] if i < n_ply else []),
                        numbers={name: col[k] for name, col in full.items() if name != "latent"},
                        files=[("point cloud (PLY)", os.path.join(folder, "pointcloud.ply"))] if i < n_ply else [])
    jdump(full, os.path.join(run_dir, "latent_metrics.json"))
    jdump(dict(run=run, hook=cfg["hook"], git_commit=commit, git_dirty=dirty, config=config, summary=summ, info=info,
               seconds=time.time() - t0), os.path.join(run_dir, "analysis.json"))
    write_summary(os.path.join(run_dir, "summary.md"), run, cfg, summ, info)
    browser.write_browser(os.path.join(run_dir, "index.html"), f"{run}: SAE latents at {cfg['hook']}",
                          dict(hook=cfg["hook"], pairs=n, correspondences=info["correspondence"], **summ),
                          table, cards, figs, embed=embed_images)
    rows.append(dict(run=run, hook=cfg["hook"], **summ))
    print(f"   {pct(summ['n_significant'], summ['n_alive'])} alive latents significantly consistent, mass-weighted "
          f"|VA| {summ['mass_weighted_abs_va']:.3f}; wrote {run_dir}/index.html, summary.md ({time.time() - t0:.0f} s)")

# ------------------------------------------------------------------------------------------------ layers
if len(rows) > 1:
    rows.sort(key=lambda r: hook_rank(r["hook"]))
    os.makedirs(compare_dir, exist_ok=True)
    figures.layer_figure(rows, os.path.join(compare_dir, "layers.png"))
    jdump(rows, os.path.join(compare_dir, "layers.json"))
    keys = ["n_pairs", "n_alive", "n_tested", "frac_significant_of_alive", "mass_weighted_gain",
            "mass_weighted_abs_va", "mass_weighted_abs_va_identical_pair", "mass_weighted_abs_slot_specificity",
            "mass_weighted_content_following"]

    def fmt(v):
        return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else (
            f"{v:.3f}" if isinstance(v, float) else str(v))

    with open(os.path.join(compare_dir, "layers.md"), "w") as f:
        f.write("# Layer comparison\n\nOne row per run, in forward order; definitions in "
                "README.md, section Analysing a trained SAE.\n\n| run | hook | " + " | ".join(keys) + " |\n|"
                + "---|" * (len(keys) + 2) + "\n")
        f.writelines(f"| {r['run']} | {r['hook']} | " + " | ".join(fmt(r.get(k)) for k in keys) + " |\n" for r in rows)
    print(f"layer comparison of {len(rows)} runs: {compare_dir}/layers.png, layers.md, layers.json")
