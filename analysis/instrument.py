"""The consistency instrument applied to one hook point: the decision, its effect sizes, strata and controls.

  decision   per latent on the APPEARANCE-AMBIGUOUS matches (analysis/appearance.py, `ambiguous`: some other
             view-2 patch >= 3 patches away looks at least as much like p as m(p) does, so appearance alone
             gives no reason to prefer m(p)): consistent = tested, q <= alpha against every null including the
             appearance-matched one, and gain >= MIN_GAIN (analysis/consistency.py);
  all        the same on all matches: how much of the agreement appearance could carry;
  effect     per match set, the activation-mass-weighted gain over the strongest null with a bootstrap 95 % CI
             over pairs: the power-free layer number. The share of consistent latents depends on power (pairs,
             k, min_support) and is labelled so;
  strata     effect by relative camera rotation, by photometric difference of the matched patches (quartiles of
             the descriptor distance), by scale change (depth ratio): where appearance cannot carry a match;
  controls   the same decision for codes with known answers on the same pairs (analysis/controls.py): world-point
             code (ceiling), raw-pixel code (floor), positional code.
"""
import numpy as np
import torch

from analysis import appearance as ap
from analysis.consistency import consistency, excess, layer_effect, stratum_effects
from analysis.controls import control_activations, depth_ratio, patch_geometry

SCALE_BINS = (1.0, 1.1, 1.25, 1.5, np.inf)  # depth ratio max(d1/d2, d2/d1): same scale .. >= 1.5x zoom
N_QUANTILES = 4  # photometric-difference strata: quartiles of the matched patches' descriptor distance


def pair_features(view1, view2, patch=16):
    """What the instrument needs of one dataset pair (unbatched views), kept instead of the images:
    raw pixel tokens (float16), ground-truth patch geometry (or None), grids, scene label."""
    pix = [ap.patch_pixels(torch.as_tensor(v["img"])[None], torch.as_tensor(v["true_shape"])[None], patch)[0]
           .numpy().astype(np.float16) for v in (view1, view2)]
    geo = [patch_geometry(v, patch) for v in (view1, view2)] if all("pts3d" in v for v in (view1, view2)) else None
    grid = [np.asarray(v["true_shape"]).reshape(2) // patch for v in (view1, view2)]
    return dict(pixels=pix, geometry=geo, grid=grid,
                scene=str(view1.get("label", view1.get("instance", ""))), patch=patch)


def appearance_nulls(features, corrs, min_dist=ap.MIN_DIST):
    """Per pair (target, d_true, d_null) of the appearance-matched null for the matches `corrs`."""
    out = []
    for f, c in zip(features, corrs):
        d1, d2 = (ap.descriptor(p.astype(np.float32), f["patch"]) for p in f["pixels"])
        out.append(ap.appearance_targets(d1, d2, c, f["grid"][1], min_dist))
    return out


def _broadcast(values, corrs):
    return [np.full(len(c), v, np.float64) for v, c in zip(values, corrs)]


def assess(pa, corrs, features, rot=None, rot_bins=(0, 15, 30, 60, 180), strata=True, n_boot=200, seed=0, **kw):
    """Decision, effects and strata of one PairActivations under matches `corrs` (module docstring).
    kw: consistency() settings (min_support, n_max, tau, ...). Returns a dict (per-latent arrays under
    'decision' / 'all', layer numbers under 'effect' / 'effect_all', strata lists)."""
    nulls = appearance_nulls(features, corrs)
    apps = [t for t, _, _ in nulls]
    amb = [ap.ambiguous(c, dt, dn) for c, (_, dt, dn) in zip(corrs, nulls)]
    dec = consistency(pa, amb, apps, seed=seed, **kw)
    full = consistency(pa, corrs, apps, seed=seed, **kw)
    n_all, n_amb = sum(int((np.asarray(c) >= 0).sum()) for c in corrs), sum(int((c >= 0).sum()) for c in amb)
    out = dict(decision=dec, all=full, n_matched=n_all, n_ambiguous=n_amb,
               effect=layer_effect(dec["sums"], n_boot, seed), effect_all=layer_effect(full["sums"], n_boot, seed))
    if not strata or full["sums"] is None:
        return out
    cols, skw = full["cols"], {k: v for k, v in kw.items() if k in ("n_shuffle", "block")}
    if rot is not None and np.isfinite(rot).all():
        out["strata_rotation"] = stratum_effects(pa, corrs, cols, apps, _broadcast(rot, corrs), rot_bins, n_boot, seed,
                                                 **skw)
    dt = np.concatenate([d for _, d, _ in nulls])
    dt = dt[np.isfinite(dt)]
    if len(dt) >= N_QUANTILES:
        edges = np.quantile(dt, np.linspace(0, 1, N_QUANTILES + 1))
        edges[-1] = np.inf
        out["strata_photometric"] = stratum_effects(pa, corrs, cols, apps, [d for _, d, _ in nulls], edges, n_boot,
                                                    seed, **skw)
    if all(f["geometry"] is not None for f in features):
        ratio = [depth_ratio(*f["geometry"], c) for f, c in zip(features, corrs)]
        out["strata_scale"] = stratum_effects(pa, corrs, cols, apps, ratio, SCALE_BINS, n_boot, seed, **skw)
    return out


def controls(features, corrs, k, n_centres=512, n_boot=200, seed=0, **kw):
    """The decision for the control codes on the same pairs and matches, at TopK k: {name: dict(n_alive,
    n_tested, n_consistent, effect)}; 'world' only with ground-truth geometry."""
    out = {}
    for name, pa in control_activations(features, n_centres=n_centres, k=k, seed=seed).items():
        r = assess(pa, corrs, features, strata=False, n_boot=n_boot, seed=seed, **kw)
        alive = np.asarray((pa.z1.sum(0) + pa.z2.sum(0)) > 0).ravel()
        out[name] = dict(n_latents=pa.n_latents, n_alive=int(alive.sum()), n_tested=int(r["decision"]["tested"].sum()),
                         n_consistent=int(r["decision"]["consistent"].sum()), effect=r["effect"],
                         effect_all=r["effect_all"], k=k)
    return out


def fmt_effect(e):
    """'0.123 [0.100, 0.150]' or 'n/a'."""
    if e is None or not np.isfinite(e.get("gain", np.nan)):
        return "n/a"
    return f"{e['gain']:.3f} [{e['lo']:.3f}, {e['hi']:.3f}]"


def summary_lines(r, n_alive, ctrl=None, anchor=None):
    """summary.md lines for the consistency section (decision, effects, strata, controls, anchor)."""
    d = r["decision"]
    n_t, n_c = int(d["tested"].sum()), int(d["consistent"].sum())
    lines = [
        f"- Matches: {r['n_matched']} matched view-1 patches over {d['n_pairs']} pairs; {r['n_ambiguous']} of them "
        "are appearance-ambiguous (another view-2 patch >= 3 patches away looks at least as much like p as its "
        "match does), and the decision is made on those.",
        f"- **Effect (power-free)**: activation-mass-weighted gain over the strongest null (appearance-matched, "
        f"position, shift, shuffle, scene) on the ambiguous matches: **{fmt_effect(r['effect'])}** (bootstrap 95 % "
        f"CI over pairs); on all matches {fmt_effect(r['effect_all'])}.",
        f"- Consistent latents (tested: >= {d['min_support']} firing matched patches in each view; beat every null, "
        f"Benjamini-Hochberg q <= {d['alpha']}; gain >= {d['min_gain']}): {n_c}/{n_alive} alive "
        f"({100 * n_c / max(n_alive, 1):.1f} %; {n_t} tested). *This share depends on power (pairs, k, min_support); "
        "compare layers by the effect above, at the same k and min_support.*"]
    for key, name, unit in (("strata_rotation", "relative rotation", "°"),
                            ("strata_photometric", "photometric difference (descriptor distance, quartiles)", ""),
                            ("strata_scale", "scale change (depth ratio)", "x")):
        if key in r:
            lines.append(f"- By {name}, all matches: " + "; ".join(
                f"[{s['bin'][0]:.3g}, {s['bin'][1]:.3g}){unit} {s['n_matched']} matches: {fmt_effect(s)}"
                for s in r[key]) + ".")
    if ctrl:
        lines.append("- Controls on the same pairs and matches (the instrument's ceiling and floor): " + "; ".join(
            f"{name} code (k={c['k']}): {c['n_consistent']}/{c['n_alive']} alive consistent, effect "
            f"{fmt_effect(c['effect'])}" for name, c in ctrl.items()) + ".")
    if anchor is None and ctrl and "pixels" in ctrl:  # the appearance anchor at this code's sparsity, same pairs
        anchor = dict(name="raw-pixel control code", k=ctrl["pixels"]["k"],
                      excess=excess(r["effect"], ctrl["pixels"]["effect"]))
    if anchor:
        lines.append(f"- Against the appearance anchor ({anchor['name']}, k={anchor['k']}): excess effect "
                     f"**{fmt_effect(anchor['excess'])}** (paired bootstrap over the same pairs).")
    return lines


def layer_fields(r, n_alive, ctrl=None):
    """Flat numbers of one hook point for analysis.json and the layer comparison (effect dicts keep their
    bootstrap samples under 'effect' for paired excesses; drop them before writing JSON)."""
    d = r["decision"]
    out = dict(n_ambiguous=r["n_ambiguous"], n_tested=int(d["tested"].sum()), n_consistent=int(d["consistent"].sum()),
               frac_consistent_of_alive_power_dependent=float(d["consistent"].sum() / max(n_alive, 1)),
               effect_gain=r["effect"]["gain"], effect_lo=r["effect"]["lo"], effect_hi=r["effect"]["hi"],
               effect_all_gain=r["effect_all"]["gain"], effect_all_lo=r["effect_all"]["lo"],
               effect_all_hi=r["effect_all"]["hi"], min_support=int(d["min_support"]), min_gain=d["min_gain"])
    for name, c in (ctrl or {}).items():
        out.update({f"control_{name}_consistent": c["n_consistent"], f"control_{name}_alive": c["n_alive"],
                    f"control_{name}_effect_gain": c["effect"]["gain"], f"control_{name}_effect_lo": c["effect"]["lo"],
                    f"control_{name}_effect_hi": c["effect"]["hi"]})
    return out


def comparison_lines(rows):
    """layers.md body: one row per run in the given order, each with its excess effect over the appearance anchor
    at the same k (a `pixels` run with that k when one was given, else the raw-pixel control code at that k on the
    same pairs), so the anchor is always in the table. rows: dicts with run, hook, k, n_pairs, min_support,
    n_alive, n_consistent, effect (layer_effect dict), controls (instrument.controls or None)."""
    anchors = {r["k"]: ("pixels SAE " + r["run"], r["effect"]) for r in rows if r["hook"] == "pixels"}
    head = ("| run | hook | k | pairs | min_support | consistent / alive (power-dependent) | effect [95 % CI] | "
            "anchor | excess over anchor [95 % CI] |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    extra = []
    for r in rows:
        name, eff = anchors.get(r["k"], (None, None))
        ctrl = (r.get("controls") or {}).get("pixels")
        if name is None and ctrl is not None:
            name, eff = f"pixel code k={r['k']} (control)", ctrl["effect"]
            if not any(e[0] == name for e in extra):
                extra.append((name, r, ctrl))
        ex = excess(r["effect"], eff) if eff is not None else None
        lines.append(f"| {r['run']} | {r['hook']} | {r['k']} | {r['n_pairs']} | {r['min_support']} | "
                     f"{r['n_consistent']}/{r['n_alive']} | {fmt_effect(r['effect'])} | "
                     f"{name or 'none (controls off)'} | "
                     f"{'anchor' if r['hook'] == 'pixels' else fmt_effect(ex)} |")
    for name, r, c in extra:  # the control anchors as rows of their own
        lines.append(f"| {name} | raw pixels | {r['k']} | {r['n_pairs']} | {r['min_support']} | "
                     f"{c['n_consistent']}/{c['n_alive']} | {fmt_effect(c['effect'])} | - | anchor |")
    return lines
