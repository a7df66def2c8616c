"""The analysis's written reports: JSON files (one cleaner for every JSON the analysis writes, the
browser's inline table included), summary.md (the findings in words, with numbers and sample sizes) and
the layer comparison of several runs (layers.md, layers.json, layers.png)."""
import json
import os

import numpy as np

from analysis import figures, multiview as mv
from training.hooks import hook_rank, view_sources

# keys of the layer comparison table (layers.md), in column order
LAYER_KEYS = ("n_pairs", "n_alive", "n_tested", "frac_significant_of_alive", "mass_weighted_gain",
              "mass_weighted_abs_va", "mass_weighted_abs_va_identical_pair", "mass_weighted_abs_slot_specificity",
              "mass_weighted_content_following")


def json_safe(v, digits=None):
    """v as plain JSON: NaN / inf -> None, numpy -> python, dict keys -> str, other objects -> str; floats
    rounded to `digits` significant digits when given (per-latent float columns become lists fast)."""
    if isinstance(v, dict):
        return {str(a): json_safe(b, digits) for a, b in v.items()}
    if isinstance(v, np.ndarray) and v.dtype.kind == "f" and digits is None:  # fast path for per-latent columns
        out = v.astype(object)
        out[~np.isfinite(v)] = None
        return out.tolist()
    if isinstance(v, (list, tuple, np.ndarray)):
        return [json_safe(x, digits) for x in v]
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return None
        return float(f"{float(v):.{digits}g}") if digits else float(v)
    return v if v is None or isinstance(v, str) else str(v)


def write_json(obj, path):
    """obj through json_safe, indented, to path."""
    with open(path, "w") as f:
        json.dump(json_safe(obj), f, indent=1)


def pct(a, b):
    return f"{a}/{b} ({100 * a / max(b, 1):.1f} %)"


def write_summary(path, run, *, cfg, s, info, settings):
    """summary.md: the findings in words with their numbers and sample sizes."""
    lab = info["labels"]
    gt = info["correspondence"] == "ground truth"
    lines = [
        f"# Analysis of `{run}`: SAE on `{cfg['hook']}`", "",
        f"- DUSt3R `{cfg['checkpoint']}`; dataset `{cfg['dataset']}` split `{settings.split}`, "
        f"{s['n_pairs']} held-out pairs "
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
        f"- Tested latents (>= {settings.min_support} firing matched patches in each view): {s['n_tested']}.",
        f"- Significantly consistent (permutation test, {settings.n_perm} shuffled-correspondence draws; "
        f"Benjamini-Hochberg "
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


def write_layer_comparison(rows, folder):
    """layers.png, layers.json and layers.md of several runs' summaries, in forward order of their hooks."""
    rows = sorted(rows, key=lambda r: hook_rank(r["hook"]))
    os.makedirs(folder, exist_ok=True)
    figures.layer_figure(rows, os.path.join(folder, "layers.png"))
    write_json(rows, os.path.join(folder, "layers.json"))

    def fmt(v):
        return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else (
            f"{v:.3f}" if isinstance(v, float) else str(v))

    with open(os.path.join(folder, "layers.md"), "w") as f:
        f.write("# Layer comparison\n\nOne row per run, in forward order; definitions in "
                "README.md, section Analysing a trained SAE.\n\n| run | hook | " + " | ".join(LAYER_KEYS) + " |\n|"
                + "---|" * (len(LAYER_KEYS) + 2) + "\n")
        f.writelines(f"| {r['run']} | {r['hook']} | " + " | ".join(fmt(r.get(k)) for k in LAYER_KEYS) + " |\n"
                     for r in rows)
    return rows
