"""Analyse trained SAE runs on held-out DUSt3R pairs: per-latent pictures, multi-view metrics, HTML.

usage: python analyze_results.py RUN_FOLDER [RUN_FOLDER ...] [--key=value ...] [overrides.yaml]
       python analyze_results.py --mode=probe --checkpoint=... [--key=value ...]   (no run folder; below)
  RUN_FOLDER: a folder written by train_encoder_sae.py / train_decoder_sae.py (results/<run_name>)

For each run folder (written by train_encoder_sae.py / train_decoder_sae.py) this reads the run's
resolved config.yaml and its SAE, runs DUSt3R + SAE over `n_pairs` held-out pairs of the run's
dataset as (A, B), and as (B, A) and (A, A) controls, and writes into the run folder (all at once: the
files are made in <run>/.analysis.tmp/ and moved in together, so an interrupted or refused analysis
leaves the previous one whole):
  analysis.json        settings, git state, layer summary (counts, fractions, mass-weighted means)
  latent_metrics.json  per-latent columns: frequency, consistency and its nulls, q, asymmetry, controls
  summary.md           the findings in words, with their numbers and sample sizes
  index.html           offline latent browser (open the file; no server, nothing fetched)
  figures/             histograms.png, consistency_<gt|pred>.png, attributes.png (3D attributes vs their null)
  latents/<k>/         heatmap.png, examples.png, causal.png (+ pointcloud.ply and its preview pointcloud.png)
Given several runs, it also writes a layer comparison to `compare_dir` (layers.png/.md/.json).
Metrics and controls: analysis/multiview.py, analysis/instrument.py (consistency against an appearance-matched
null and four others, calibrated p-values, effects with CIs, strata, control codes), 3D attributes:
analysis/attributes.py, causal effects: analysis/causal.py, the pictures in latents/: analysis/cards.py; how to read
everything: README.md, sections Analysing a trained SAE and Where 3D emerges.

    python analyze_results.py results/<run> [results/<run2> ...] [--n_pairs=128] [overrides.yaml]

--mode=probe needs no SAE: correspondence and linear pointmap probes at every hook point of a checkpoint
(analysis/probes.py), written to probe_dir as probes.png, probes.json, summary.md:

    python analyze_results.py --mode=probe --checkpoint=random-tiny [--hooks=enc_norm,dec_blocks*.1]

Runtime: a tiny random-weight test run, about 5 s on CPU; ViT-L at 224 with 128 pairs, a few minutes
on one GPU (one encoder pass per image and three decoder passes per pair; the metrics take seconds).
"""
import os
import shutil
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch
import yaml

from analysis import attributes, browser, causal, figures, instrument, multiview as mv, ply, probes
from analysis.cards import pair_peaks, write_cards
from analysis.pairings import pairing_tokens
from analysis.report import pct, write_json, write_layer_comparison, write_summary
from data import collate_pairs, make_dataset, patch_correspondences, predicted_correspondences
from models.loading import load_dust3r
from models.sae import SAE
from training.checkpoint import RESUMABLE_CHANGES, read_state
from training.config import UserError, apply_overrides, constants, require, require_positive
from training.ddp import pick_device
from training.hooks import view_sources
from training.run import git_state

# ------------------------------------------------------------------------------------------------
n_pairs = 128                 # held-out pairs analysed per run (fewer if the split is smaller)
split = "test"                # held-out split ('test' is the dataset's 'val' for builtin / BlendedMVS)
batch_size = 8                # pairs per DUSt3R forward
correspondence = "auto"       # 'auto' (ground truth where the data has geometry, + predicted) | 'gt' | 'pred'
controls = True               # also run every pair as (B, A) and (A, A): slot-swap and identical-image controls
reuse_encoder = True          # encoder once per image for all three pairings; False: three full forwards (timing)
n_max = 10_000                # most sign-flip draws per latent and null (p >= 1/(n_max+1); analysis/permutation.py)
min_support = 50              # firing matched patches needed in each view before a latent is tested
min_gain = 0.2                # gain over the strongest null a consistent latent needs (analysis/consistency.py: why)
anchor_controls = True        # also run the control codes (world point, raw pixels, position) on the same pairs
n_cards = 48                  # latents that get pictures in latents/ and a card in index.html
n_top = 4                     # top-activating pairs per latent in examples.png
quantiles = (0.75, 0.5, 0.25)  # extra example rows: pairs at these quantiles of the latent's per-pair peak
n_ply = 8                     # visualised latents that also get a PLY point cloud of their top pair
rot_bins = (0, 15, 30, 60, 180)  # degrees: effect stratified by relative camera rotation (probe3d ScanNet bins)
embed_images = False          # True: base64 images inside index.html (one portable file, larger)
compare_dir = "results/layer_comparison"  # where the comparison of several runs is written
device = "auto"               # 'auto' (cuda if available) | 'cpu' | 'cuda'
seed = 0                      # nulls, bootstrap and the random share of the visualised latents
attributes3d = True           # per-latent 3D attributes (depth, normals, depth edges, planes) where data has geometry
causal3d = True               # per pictured latent: edit it in DUSt3R, measure both pointmaps' change (3 runs/batch)
causal_scale = 0.0            # the edited latent's new size: 0 removes it, 2 doubles it (1 would change nothing)
mode = "latents"              # 'latents': analyse SAE run folders | 'probe': layer sweep of a checkpoint, no SAE
# probe mode only (python analyze_results.py --mode=probe ...); n_pairs val pairs are scored
checkpoint = "naver/DUSt3R_ViTLarge_BaseDecoder_224_linear"  # DUSt3R to probe: hub id, path, random-tiny / random-224
hooks = "all"                 # 'all' or comma-separated hook points, forward order; 'dec_blocks*.<i>' = both branches
dataset = "builtin"           # probe data with geometry: builtin | blendedmvs | arkitscenes | middlebury
data_root = ""                # the dataset's root folder (blendedmvs, arkitscenes)
resolution = 224              # probe image size: 224 (224x224) or 512 (512x384)
probe_train_pairs = 256       # train-split pairs the linear pointmap probes are fitted on
probe_dir = ""                # probe output folder; '' = results/probe-<checkpoint name>-<dataset>-<resolution>
# ------------------------------------------------------------------------------------------------
DEFAULTS = constants(globals())  # the block above, in order; main() applies the command line to it


# ------------------------------------------------------------------------------------------------ input
def read_run(run_dir, device):
    """The training run's resolved config and its SAE; clear errors when the folder is not a run, and a refusal
    when the SAE's own saved config, the trainer checkpoint's config and config.yaml disagree (the SAE would be
    analysed under the wrong hook or name)."""
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(path) or not os.path.exists(os.path.join(run_dir, "sae.safetensors")):
        raise UserError(f"{run_dir}: expected a training run folder with config.yaml and "
                        "sae.safetensors + sae_config.json (train_*_sae.py writes them)")
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    missing = [k for k in ("hook", "checkpoint", "dataset", "resolution") if k not in (cfg or {})]
    if missing:
        raise UserError(f"{path}: missing keys {missing} (a config.yaml written by train_*_sae.py has them all)")
    sae = SAE.load(run_dir, device=device).eval()
    saved = dict(sae_kind=sae.cfg.kind, k=sae.cfg.k, expansion=sae.cfg.n_latents / sae.cfg.d_in)
    bad = [f"{key}: {cfg[key]!r} in config.yaml vs {v!r} in sae_config.json" for key, v in saved.items()
           if key in cfg and cfg[key] != v]
    state = os.path.join(run_dir, "checkpoint", "state.json")
    if os.path.exists(state):  # the config the SAE was trained with
        trained = read_state(state)["config"]
        bad += [f"{key}: {cfg.get(key)!r} in config.yaml vs {trained.get(key)!r} in checkpoint/state.json"
                for key in sorted(set(cfg) | set(trained))
                if key not in RESUMABLE_CHANGES and cfg.get(key) != trained.get(key)]
    if bad:
        raise UserError(f"{run_dir}: refused: config.yaml does not describe this run's SAE ({'; '.join(bad)}); "
                        f"nothing was written. Restore the run's config.yaml, or retrain")
    return cfg, sae


@torch.no_grad()
def sae_codes(sae, tokens):
    """SAE codes (B, N, S), on the CPU, of tokens (B, N, C)."""
    return sae.encode(tokens.float().reshape(-1, tokens.shape[-1])).reshape(*tokens.shape[:2], -1).cpu()


def collect(model, sae, ds, *, n, hooks, settings, device):
    """Run n pairs. Returns PairActivations for 'ab' (+ 'ba', 'aa' with controls) and per pair:
    ground-truth (or None) and predicted correspondences, display images, pointmaps and confidences
    (all in the real orientation, the token grids' orientation)."""
    pa = {k: mv.PairActivations() for k in (("ab", "ba", "aa") if settings.controls else ("ab",))}
    out = dict(gt=[], pred=[], rgb=[], pts=[], conf=[], rot=[], geom=[], feat=[])
    for lo in range(0, n, settings.batch_size):
        items = [ds[i] for i in range(lo, min(lo + settings.batch_size, n))]
        view1, view2 = collate_pairs(items)
        scenes = [str(s) for s in view1.get("label", view1["instance"])]
        # the encoder runs once per image for all three pairings (analysis/pairings.py)
        runs, (res1, res2) = pairing_tokens(model, view1, view2, hooks, controls=settings.controls, device=device,
                                            reuse=settings.reuse_encoder)
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
            out["feat"].append(instrument.pair_features(a, c, patch=model.patch_size))  # pixels, patch geometry
            out["geom"].append([attributes.token_geometry(v, model.patch_size) for v in (a, c)]
                               if geo and settings.attributes3d else None)
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


def correspondence_sets(data, dataset, settings):
    """{'gt': ..., 'pred': ...} per `correspondence`, and the primary one (ground truth where every pair has it)."""
    has_gt = all(c is not None for c in data["gt"])
    if settings.correspondence == "gt" and not has_gt:
        raise ValueError(f"correspondence='gt' but dataset {dataset!r} has no depth/pose for every pair")
    sets = {} if settings.correspondence == "pred" or not has_gt else {"gt": data["gt"]}
    sets.update({} if settings.correspondence == "gt" else {"pred": data["pred"]})
    return sets, "gt" if "gt" in sets else "pred"


# ------------------------------------------------------------------------------------------------ metric steps
def measure(pa, sets, *, data, primary, sae, settings):
    """The metrics: consistency per correspondence set with its effects, strata and control codes
    (analysis/instrument.py), view asymmetry, latent stats, the controls (slot swap, identical pairs with their
    identity-match anchor), summary and labels. ReLU+L1 SAEs fire with small 'dust', so they get a firing
    threshold tau."""
    controls, seed = settings.controls, settings.seed
    m = SimpleNamespace(tau=mv.dust_threshold(pa["ab"]) if sae.cfg.kind == "relu" else 0.0)
    m.test = dict(min_support=settings.min_support, min_gain=settings.min_gain, n_max=settings.n_max, tau=m.tau,
                  seed=seed)
    m.res = {k: instrument.assess(pa["ab"], c, data["feat"], rot=np.asarray(data["rot"]) if k == "gt" else None,
                                  rot_bins=settings.rot_bins, strata=k == primary, **m.test) for k, c in sets.items()}
    m.cons = {k: r["decision"] for k, r in m.res.items()}
    k_ctrl = max(1, round(pa["ab"].z1.nnz / max(pa["ab"].z1.shape[0], 1)))  # the SAE's measured L0 on these pairs
    ctrl_test = {k: v for k, v in m.test.items() if k != "tau"}  # the codes are exact TopK: no dust threshold
    m.ctrl = (instrument.controls(data["feat"], sets[primary], k=k_ctrl, **ctrl_test) if settings.anchor_controls
              else None)
    m.asym, m.stats = mv.view_asymmetry(pa["ab"], seed=seed), mv.latent_stats(pa["ab"])
    m.swap = mv.slot_swap(pa["ab"], pa["ba"]) if controls else None
    m.asym_aa = mv.view_asymmetry(pa["aa"], seed=seed) if controls else None
    m.summary = dict(mv.layer_summary(m.cons[primary], m.asym, m.stats, m.swap, m.asym_aa),
                     n_matched=m.res[primary]["n_matched"])
    m.labels = mv.classify(m.cons[primary], m.asym, m.swap)
    if controls:  # anchor: (A, A) with the identity match, exactly 1 for encoder hooks (C only, nothing tested)
        ident = [np.arange(b - a) for a, b in zip(pa["aa"].start1[:-1], pa["aa"].start1[1:])]
        m.jaccard_identical = mv.consistency(pa["aa"], ident, min_support=np.inf)["jaccard"]
    return m


def latent_columns(m, *, primary, controls):
    """Per-latent columns: the browser's table, and all of them (latent_metrics.json, the cards' numbers)."""
    c, asym, stats = m.cons[primary], m.asym, m.stats
    table = dict(latent=np.arange(len(m.labels)), label=m.labels, frequency=stats["frequency"],
                 mean_activation=stats["mean_activation"], jaccard=c["jaccard"], gain=c["gain"], q=c["q"],
                 strongest_null=c["strongest_null"], gain_all_matches=m.res[primary]["all"]["gain"], va=asym["va"],
                 exclusivity=asym["exclusivity"], positional=stats["positional"])
    if controls:
        table.update(slot_specificity=m.swap["slot_specificity"], content_following=m.swap["content_following"],
                     va_identical=m.asym_aa["va"])
    full = dict(table, **{k: c[k] for k in ["pearson", "transfer", "support1", "support2", "null_max", "p",
                                            "consistent"] + [f"{a}_{j}" for a in ("null", "p") for j in c["nulls"]]},
                **{k: asym[k] for k in ("va_lo", "va_hi", "mass1", "mass2")})
    for k in set(m.cons) - {primary}:
        full.update({f"{name}_{k}": m.cons[k][name] for name in ("jaccard", "gain", "q", "consistent")})
    if controls:
        full["jaccard_identical"] = m.jaccard_identical
    return table, full


def run_info(pa, data, sets, m, *, primary, sae, settings):
    """Layer-level facts beside the summary: correspondence source, the consistency numbers with CIs, strata and
    controls (analysis/instrument.py), the other set's summary, gt/pred agreement, the identical-pair anchor."""
    info = dict(correspondence="ground truth" if primary == "gt" else "DUSt3R-predicted",
                tokens=int(pa["ab"].start1[-1]), other={},
                sae=f"{sae.cfg.kind}, {sae.cfg.n_latents} latents, k={sae.cfg.k}, d_in={sae.cfg.d_in}", k=sae.cfg.k,
                consistency=instrument.layer_fields(m.res[primary], m.summary["n_alive"], m.ctrl),
                strata={key: [{a: b for a, b in st.items() if a != "samples"} for st in m.res[primary][key]]
                        for key in ("strata_rotation", "strata_photometric", "strata_scale") if key in m.res[primary]},
                labels={str(a): int(b) for a, b in zip(*np.unique(m.labels.astype(str), return_counts=True))})
    for k in set(sets) - {primary}:
        info["other"][k] = dict(mv.layer_summary(m.cons[k], m.asym, m.stats),
                                **instrument.layer_fields(m.res[k], m.summary["n_alive"]))
    if "gt" in sets and "pred" in sets:
        info["agreement"] = agreement(pa["ab"], data["gt"], data["pred"])
    if hasattr(m, "jaccard_identical"):
        c_aa, w = m.jaccard_identical, m.asym_aa["mass1"] + m.asym_aa["mass2"]
        ok = np.isfinite(c_aa) & (w > 0)
        info["jaccard_identical_mass_weighted"] = float((c_aa[ok] * w[ok]).sum() / max(w[ok].sum(), 1e-12))
    return info


# ------------------------------------------------------------------------------------------------ output steps
def write_figures(run_dir, title, *, cons, asym, stats):
    """figures/histograms.png and one consistency figure per correspondence set -> [(caption, path)]."""
    os.makedirs(os.path.join(run_dir, "figures"), exist_ok=True)
    figs = [("Frequency and mean activation of alive latents", os.path.join(run_dir, "figures", "histograms.png"))]
    figures.activation_histograms(stats["frequency"], stats["mean_activation"], figs[0][1], title)
    for k in cons:
        figs.append((f"Consistency vs strongest null ({k} correspondences) and view asymmetry",
                     os.path.join(run_dir, "figures", f"consistency_{k}.png")))
        figures.consistency_figure(cons[k], asym, figs[-1][1], f"{title}, {k} correspondences")
    return figs


# ------------------------------------------------------------------------------------------------ publishing
STAGING, OLD, DONE = ".analysis.tmp", ".analysis.old", ".complete"  # in the run folder; DONE marks a whole staging


def publish(run_dir):
    """Move the staged outputs into the run folder together. The previous outputs of the same names go to OLD
    first and are deleted last; DONE in the staging folder says it is whole, so recover() can finish a publish
    that a kill interrupted (or undo a half-moved one)."""
    staging, old = os.path.join(run_dir, STAGING), os.path.join(run_dir, OLD)
    open(os.path.join(staging, DONE), "w").close()
    os.makedirs(old, exist_ok=True)
    for name in sorted(os.listdir(staging)):
        if name != DONE and os.path.lexists(os.path.join(run_dir, name)):
            os.replace(os.path.join(run_dir, name), os.path.join(old, name))
    for name in sorted(os.listdir(staging)):
        if name != DONE:
            os.replace(os.path.join(staging, name), os.path.join(run_dir, name))
    shutil.rmtree(old)
    shutil.rmtree(staging)


def recover(run_dir):
    """Finish or undo a publish cut short: a whole staging folder is published; otherwise the moved-away
    previous outputs go back and the partial staging is dropped."""
    staging, old = os.path.join(run_dir, STAGING), os.path.join(run_dir, OLD)
    if os.path.exists(os.path.join(staging, DONE)):
        publish(run_dir)
        return
    if os.path.isdir(old):
        for name in os.listdir(old):
            target = os.path.join(run_dir, name)
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            os.replace(os.path.join(old, name), target)
        shutil.rmtree(old)
    shutil.rmtree(staging, ignore_errors=True)


def causal_cards(cards, run_dir, pa, *, model, sae, ds, data, sources, settings, device):
    """Each pictured latent edited on its top pair (analysis/causal.py): latents/<k>/causal.png and the numbers
    on its card; returns the numbers per latent (analysis.json, summary.md)."""
    ks = list(cards)
    tops = [int(np.argmax(pair_peaks(pa, k))) for k in ks]  # the heatmap's pair
    effects = causal.causal_effects(model, sae, sources, [ds[n] for n in tops], ks, scale=settings.causal_scale,
                                    batch_size=settings.batch_size, device=device, seed=settings.seed)
    rows = []
    for k, n, e in zip(ks, tops, effects):
        path = os.path.join(run_dir, "latents", str(k), "causal.png")
        figures.save_png(figures.effect_heatmap(*data["rgb"][n], e, title=f"latent {k} x {settings.causal_scale:g} "
                                               f"on pair {n}: mean |3D change| {e['mean_disp']:.3g} (random direction "
                                               f"{e['control_mean_disp']:.3g})"), path)
        cards[k]["images"].append((f"causal: latent scaled to {settings.causal_scale:g} on its top pair", path))
        cards[k]["numbers"].update(causal.card_numbers(e))
        rows.append(dict(latent=k, pair=n, **causal.card_numbers(e)))
    return rows


def probe_mode(settings):
    """--mode=probe: correspondence and linear pointmap probes at every layer of a checkpoint (analysis/probes.py)
    -> probes.json, probes.png, summary.md in probe_dir."""
    t0, device = time.time(), pick_device(settings.device)
    model = load_dust3r(settings.checkpoint, device, landscape_only=True, seed=settings.seed)
    layers = probes.parse_layers(settings.hooks, model.hook_points)
    data = dict(root=settings.data_root or None, resolution=settings.resolution)
    train, val = (make_dataset(settings.dataset, split=split, **data) for split in ("train", "val"))
    name = os.path.basename(os.path.normpath(settings.checkpoint)).replace(".pth", "")
    out = settings.probe_dir or os.path.join("results", f"probe-{name}-{settings.dataset}-{settings.resolution}")
    os.makedirs(out, exist_ok=True)
    print(f"== probes of {settings.checkpoint} on {settings.dataset}: {len(layers)} layers, {device}")
    res = probes.probe_sweep(model, train, val, layers, n_train=settings.probe_train_pairs, n_val=settings.n_pairs,
                             batch_size=settings.batch_size, device=device, seed=settings.seed)
    figures.probe_figure(res, os.path.join(out, "probes.png"), f"{settings.checkpoint}, {settings.dataset} val")
    commit, dirty = git_state(os.path.dirname(os.path.abspath(__file__)))
    write_json(dict(res, config=vars(settings), git_commit=commit, git_dirty=dirty, seconds=time.time() - t0),
               os.path.join(out, "probes.json"))
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(probes.probe_summary(res, vars(settings)))
    print(f"   wrote {out}/probes.png, probes.json, summary.md ({time.time() - t0:.0f} s)")


# ------------------------------------------------------------------------------------------------ one run
def analyse_run(run_dir, settings, *, rng):
    """One training run folder -> its analysis files (module docstring); returns its layer-comparison row.
    rng picks the random share of the pictured latents (one generator for all runs of an invocation)."""
    t0, device = time.time(), pick_device(settings.device)
    recover(run_dir)  # a previous analysis cut short mid-publish
    cfg, sae = read_run(run_dir, device)
    run, hook = os.path.basename(os.path.normpath(run_dir)), cfg["hook"]
    print(f"== {run}: hook {hook}, SAE {sae.cfg.kind} S={sae.cfg.n_latents} k={sae.cfg.k}, {device}")
    # the training variant, as in training; random-* test models: the run's seed gives the run's weights
    model = load_dust3r(cfg["checkpoint"], device, landscape_only=True, seed=cfg.get("seed", 0))
    # the training scripts build their datasets with the default (fixed) dataset seed, and so do we
    ds = make_dataset(cfg["dataset"], root=cfg.get("data_root") or None, resolution=cfg["resolution"],
                      split=settings.split)
    n = min(settings.n_pairs, len(ds))
    pa, data = collect(model, sae, ds, n=n, hooks=view_sources(hook), settings=settings, device=device)
    sets, primary = correspondence_sets(data, cfg["dataset"], settings)
    m = measure(pa, sets, data=data, primary=primary, sae=sae, settings=settings)
    table, full = latent_columns(m, primary=primary, controls=settings.controls)
    info, summ = run_info(pa, data, sets, m, primary=primary, sae=sae, settings=settings), m.summary
    attr = None
    if settings.attributes3d and all(g is not None for g in data["geom"]):
        attr, null, info["attributes"] = attributes.pair_attributes(pa["ab"], data["geom"])
        table.update(attr)
        full.update(attr, **null)

    out = os.path.join(run_dir, STAGING)  # everything is written here first, then published at once
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    figs = write_figures(out, f"{run} ({hook})", cons=m.cons, asym=m.asym, stats=m.stats)
    if attr is not None:
        figs.append(("3D attributes of the latents against their null", os.path.join(out, "figures", "attributes.png")))
        figures.attributes_figure(attr, null, info["attributes"], figs[-1][1], f"{run} ({hook})")
    cards = write_cards(out, pa["ab"], data=data, corrs=sets[primary], table=table, full=full, rng=rng,
                        n_cards=settings.n_cards, n_ply=settings.n_ply, n_top=settings.n_top,
                        quantiles=settings.quantiles)
    if settings.causal3d and cards:
        info["causal"] = causal_cards(cards, out, pa["ab"], model=model, sae=sae, ds=ds, data=data,
                                      sources=view_sources(hook), settings=settings, device=device)
    write_json(full, os.path.join(out, "latent_metrics.json"))
    commit, dirty = git_state(os.path.dirname(os.path.abspath(__file__)))
    write_json(dict(run=run, hook=hook, git_commit=commit, git_dirty=dirty, config=vars(settings), summary=summ,
                    info=info, seconds=time.time() - t0), os.path.join(out, "analysis.json"))
    write_summary(os.path.join(out, "summary.md"), run, cfg=cfg, s=summ, info=info, settings=settings,
                  consistency_lines=instrument.summary_lines(m.res[primary], summ["n_alive"], m.ctrl))
    with open(os.path.join(out, "summary.md"), "a") as f:  # the 3D sections (analysis/attributes.py, causal.py)
        f.writelines(line + "\n" for line in attributes.summary_lines(info.get("attributes"), full)
                     + causal.summary_lines(info.get("causal"), settings.causal_scale))
    with open(os.path.join(out, "summary.md"), encoding="utf-8") as f:
        findings = f.read().splitlines()
    browser.write_browser(os.path.join(out, "index.html"), f"{run}: SAE latents at {hook}",
                          info=dict(hook=hook, pairs=n, correspondences=info["correspondence"], **summ),
                          table=table, cards=cards, figures=figs, embed=settings.embed_images, findings=findings)
    publish(run_dir)
    print(f"   effect {instrument.fmt_effect(m.res[primary]['effect'])}; {pct(summ['n_consistent'], summ['n_alive'])} "
          f"alive latents consistent; mass-weighted |VA| {summ['mass_weighted_abs_va']:.3f}; "
          f"wrote {run_dir}/index.html, summary.md ({time.time() - t0:.0f} s)")
    return dict(summ, **info["consistency"], run=run, hook=hook, k=sae.cfg.k, effect=m.res[primary]["effect"],
                controls=m.ctrl)


def main(argv):
    run_dirs = [a for a in argv if not a.startswith("-") and not a.endswith((".yaml", ".yml"))]
    settings = SimpleNamespace(**apply_overrides(DEFAULTS, [a for a in argv if a not in run_dirs], doc=__doc__))
    require_positive(vars(settings), "n_pairs", "batch_size", "n_max", "min_support")
    require(settings.n_cards >= 0 and settings.n_ply >= 0, "n_cards/n_ply", (settings.n_cards, settings.n_ply),
            "values >= 0")
    pick_device(settings.device)  # a missing GPU stops here, before any model is loaded
    if settings.mode == "probe":
        return probe_mode(settings)
    require(settings.mode == "latents", "mode", settings.mode, "'latents' or 'probe'")
    require(len(run_dirs) > 0, "RUN_FOLDER", None, "at least one training run folder, e.g. "
            "python analyze_results.py results/<run_name>", "--help describes the arguments")
    for run_dir in run_dirs:  # every folder is checked before any is analysed: a refusal changes nothing
        read_run(run_dir, "cpu")
    rng = np.random.default_rng(settings.seed)
    rows = [analyse_run(run_dir, settings, rng=rng) for run_dir in run_dirs]
    if len(rows) > 1:
        write_layer_comparison(rows, settings.compare_dir)
        print(f"layer comparison of {len(rows)} runs: {settings.compare_dir}/layers.png, layers.md, layers.json")


if __name__ == "__main__":
    main(sys.argv[1:])
