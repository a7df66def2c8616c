"""Figures for SAE latents on DUSt3R pairs: heatmap overlays, example grids, histograms, layer plots, layer
probes (analysis/probes.py), 3D attributes (analysis/attributes.py) and causal-effect heatmaps (analysis/causal.py).

Per-latent pictures are composed with numpy + Pillow (exact pixel sizes, fast enough for hundreds
of latents); summary plots use matplotlib with a fixed figure size and no tight bbox so every PNG
has a known size (FIG_SIZE x FIG_DPI). Overlays follow the usual SAE-vision practice: one colour scale per
latent (vmax shared by all of that latent's pictures), patch maps nearest-upsampled so each
coloured square covers exactly its 16x16 input patch, transparency proportional to activation.

Images are DUSt3R view tensors (3, H, W) in [-1, 1]; our datasets store portrait views as
landscape tensors with the real (H, W) in true_shape, and token grids are in the real
orientation (models/dust3r.py forward_hooks), so `to_display` transposes such tensors back before overlaying.
"""
import matplotlib

matplotlib.use("Agg")  # headless: no display on the shared machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

# --------------------------------------------------------------------------------------------
CMAP = "inferno"  # colour map of activation overlays (perceptually uniform, dark = low)
ALPHA_MAX = 0.85  # overlay opacity at the latent's vmax; 0 activation leaves the photo visible
GAP = 4  # pixels between panels
CAPTION_H = 16  # pixels of the caption band under / over each row
BAR_W = 58  # pixels of the colour-bar column (bar, tick labels and the rotated label "activation")
BAR_LABEL = "latent activation"  # what the colour bar measures (the SAE latent's value at each patch)
UNMATCHED_GREY = 96  # grey level of view-1 patches with no view-2 match in the warped panel
FIG_SIZE = (10.0, 4.0)  # inches of the matplotlib summary figures
FIG_DPI = 100  # -> summary PNGs are 1000 x 400 px
# --------------------------------------------------------------------------------------------

_FONT = ImageFont.load_default(size=12)


def to_display(img, true_shape=None):
    """DUSt3R image (3, H, W) in [-1, 1] (tensor or array) -> uint8 (H, W, 3) in real orientation."""
    img = img.detach().float().cpu().numpy() if torch.is_tensor(img) else np.asarray(img, np.float32)
    if img.ndim != 3 or img.shape[0] != 3:
        raise ValueError(f"expected an image (3, H, W), got shape {img.shape}")
    if true_shape is not None and tuple(int(v) for v in true_shape) != img.shape[1:]:
        img = img.transpose(0, 2, 1)  # landscape tensor of a portrait view (DUSt3R convention)
    return np.clip((img.transpose(1, 2, 0) + 1.0) * 127.5, 0, 255).round().astype(np.uint8)


def overlay(rgb, act, vmax, cmap=CMAP):
    """Blend a patch map act (h, w) over rgb (H, W, 3), each value covering its H/h x W/w patch."""
    h, w = act.shape
    H, W = rgb.shape[:2]
    if H % h or W % w:
        raise ValueError(f"image {H}x{W} is not a whole number of patches of grid {h}x{w}")
    heat = np.clip(np.nan_to_num(act) / max(float(vmax), 1e-12), 0, 1)
    heat = heat.repeat(H // h, 0).repeat(W // w, 1)  # (H, W) nearest upsampling to the pixels
    col = matplotlib.colormaps[cmap](heat)[..., :3] * 255
    a = (ALPHA_MAX * heat)[..., None]
    return (rgb * (1 - a) + col * a).round().astype(np.uint8)


def _colorbar(height, vmax, cmap=CMAP, label=BAR_LABEL):
    """Vertical colour bar image (height, BAR_W, 3): the ramp, 0 and vmax at its ends, and `label` written
    upwards beside it (shortened to fit a short bar)."""
    bar = Image.new("RGB", (BAR_W, height), "white")
    ramp = np.linspace(1, 0, max(height - 2 * CAPTION_H, 2))[:, None].repeat(10, 1)
    col = (matplotlib.colormaps[cmap](ramp)[..., :3] * 255).astype(np.uint8)
    bar.paste(Image.fromarray(col), (2, CAPTION_H))
    d = ImageDraw.Draw(bar)
    d.text((2, 1), f"{vmax:.3g}", fill="black", font=_FONT)
    d.text((2, height - CAPTION_H + 1), "0", fill="black", font=_FONT)
    room = height - 2 * CAPTION_H
    for text in (label, label.split()[-1], "act."):  # the longest that fits along the bar
        if d.textlength(text, font=_FONT) <= room:
            band = Image.new("RGB", (int(d.textlength(text, font=_FONT)) + 2, CAPTION_H - 2), "white")
            ImageDraw.Draw(band).text((1, 0), text, fill="black", font=_FONT)
            band = band.rotate(90, expand=True)  # reads bottom to top, as matplotlib's colour-bar labels
            bar.paste(band, (16, CAPTION_H + (room - band.height) // 2))
            break
    return np.asarray(bar)


def _caption(width, text):
    band = Image.new("RGB", (width, CAPTION_H), "white")
    ImageDraw.Draw(band).text((2, 1), text, fill="black", font=_FONT)
    return np.asarray(band)


def _hcat(panels):
    h = max(p.shape[0] for p in panels)
    out, gap = [], np.full((h, GAP, 3), 255, np.uint8)
    for i, p in enumerate(panels):
        pad = np.full((h - p.shape[0], p.shape[1], 3), 255, np.uint8)
        out += ([gap] if i else []) + [np.concatenate([p, pad])]
    return np.concatenate(out, axis=1)


def _vcat(rows):
    w = max(r.shape[1] for r in rows)
    return np.concatenate([np.concatenate([r, np.full((r.shape[0], w - r.shape[1], 3), 255, np.uint8)], 1)
                           for r in rows])


def warp_to_view1(act2, corr, grid1):
    """View-2 patch map pulled back onto view 1's grid through corr (N1,); NaN where unmatched."""
    corr = np.asarray(corr).ravel()
    out = np.full(len(corr), np.nan)
    out[corr >= 0] = np.asarray(act2).ravel()[corr[corr >= 0]]
    return out.reshape(grid1)


def latent_heatmap(rgb1, rgb2, *, act1, act2, vmax, corr=None, title=""):
    """Heatmap overlays of one latent on both views (+ view 2 warped onto view 1 if corr is given),
    each panel labelled, with a colour bar; returns uint8 (2 CAPTION_H + H, panels + BAR_W, 3)."""
    panels = [("view 1", overlay(rgb1, act1, vmax)), ("view 2", overlay(rgb2, act2, vmax))]
    if corr is not None:
        warped = warp_to_view1(act2, corr, act1.shape)
        grey = np.full_like(rgb1, UNMATCHED_GREY)
        base = overlay(rgb1, np.nan_to_num(warped), vmax)
        miss = np.isnan(warped).repeat(rgb1.shape[0] // act1.shape[0], 0).repeat(rgb1.shape[1] // act1.shape[1], 1)
        panels.append(("view 2 -> view 1 (grey: no match)",
                       np.where(miss[..., None], (0.5 * base + 0.5 * grey).astype(np.uint8), base)))
    panels = [_vcat([_caption(p.shape[1], lab), p]) for lab, p in panels]
    body = _hcat(panels + [_colorbar(max(p.shape[0] for p in panels), vmax)])
    return _vcat([_caption(body.shape[1], title), body])


def example_grid(examples, vmax, title=""):
    """A "view 1 | view 2" header, then rows of (view 1 overlay | view 2 overlay) with a caption each;
    examples: list of dicts with rgb1, rgb2, act1, act2, caption.
    Returns uint8 (2 CAPTION_H + sum(CAPTION_H + H), 2W + GAP + ..)."""
    rows = []
    for ex in examples:
        pair = _hcat([overlay(ex["rgb1"], ex["act1"], vmax), overlay(ex["rgb2"], ex["act2"], vmax)])
        rows += [_caption(pair.shape[1], ex["caption"]), pair]
    w1 = examples[0]["rgb1"].shape[1] if examples else 0
    head = _hcat([_caption(w1, "view 1"), _caption(max(r.shape[1] for r in rows) - w1 - GAP, "view 2")])
    body = _hcat([_vcat([head] + rows), _colorbar(CAPTION_H + sum(r.shape[0] for r in rows), vmax)])
    return _vcat([_caption(body.shape[1], title), body])


def save_png(arr, path):
    Image.fromarray(arr).save(path, compress_level=1)  # zlib level 1: ~5x faster than 6, files ~30 % larger


def activation_histograms(freq, mean_act, path, title=""):
    """log10 frequency histogram, log10 mean-activation histogram, and their scatter (alive latents)."""
    alive = freq > 0
    fig, ax = plt.subplots(1, 3, figsize=FIG_SIZE, dpi=FIG_DPI)
    lf, lm = np.log10(freq[alive]), np.log10(np.maximum(mean_act[alive], 1e-12))
    ax[0].hist(lf, bins=50, color="tab:blue")
    ax[0].set(xlabel="log10 firing frequency (share of tokens)", ylabel="latents")
    ax[1].hist(lm, bins=50, color="tab:orange")
    ax[1].set(xlabel="log10 mean activation when firing")
    ax[2].scatter(lf, lm, s=3, alpha=0.5)
    ax[2].set(xlabel="log10 frequency", ylabel="log10 mean activation")
    fig.suptitle(f"{title}  ({alive.sum()} alive / {len(freq)} latents)", fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.14, top=0.88, wspace=0.3)
    fig.savefig(path)
    plt.close(fig)


def consistency_figure(cons, asym, path, title=""):
    """Left: weighted Jaccard vs the strongest null per tested latent (significant in red).
    Right: histogram of view asymmetry VA over alive latents."""
    fig, ax = plt.subplots(1, 2, figsize=FIG_SIZE, dpi=FIG_DPI)
    alive = np.isfinite(asym["va"])  # latents that fired (multiview.layer_summary's n_alive)
    if cons is not None:
        t, s = cons["tested"], cons["consistent"]
        ax[0].scatter(cons["null_max"][t & ~s], cons["jaccard"][t & ~s], s=4, c="grey", label="not consistent")
        ax[0].scatter(cons["null_max"][s], cons["jaccard"][s], s=4, c="tab:red",
                      label=f"consistent (q<={cons['alpha']}, gain>={cons['min_gain']})")
        ax[0].plot([0, 1], [0, 1], "k--", lw=0.8)
        ax[0].legend(fontsize=8, loc="upper left")
        ax[0].set(xlabel="strongest null C (" + " / ".join(cons["nulls"]) + ")", ylabel="weighted Jaccard C",
                  xlim=(0, 1), ylim=(0, 1))
        # the summary's denominators: consistent of alive; tested = alive with enough matched support
        ax[0].set_title(f"{s.sum()} of {alive.sum()} alive latents consistent ({t.sum()} tested), "
                        f"{cons['n_pairs']} pairs", fontsize=9)
    ax[1].hist(asym["va"][alive], bins=np.linspace(-1, 1, 41), color="tab:purple")
    ax[1].set(xlabel="view asymmetry VA = (M1 - M2) / (M1 + M2)", ylabel="latents",
              title=f"{alive.sum()} alive latents")
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.14, top=0.86, wspace=0.25)
    fig.savefig(path)
    plt.close(fig)
    return [a.get_title() for a in ax]  # the panels' titles: their counts are the summary's


def layer_figure(rows, path):
    """Consistency and asymmetry by hook point for several runs; rows: list of dicts with 'hook'
    and layer_summary() keys, plotted in the given order (the caller sorts by forward order)."""
    fig, ax = plt.subplots(1, 2, figsize=FIG_SIZE, dpi=FIG_DPI)
    x = np.arange(len(rows))
    names = [r["hook"] for r in rows]
    ax[0].plot(x, [r.get("frac_consistent_of_alive_power_dependent", np.nan) for r in rows], "o-",
               label="share of alive latents consistent (power-dependent)")
    eff = np.array([[r.get(f"effect_{k}", np.nan) for k in ("gain", "lo", "hi")] for r in rows], float).reshape(-1, 3)
    ax[0].errorbar(x, eff[:, 0], yerr=np.abs(eff[:, 1:].T - eff[:, 0]), fmt="o-", capsize=3,
                   label="effect: mass-weighted gain over strongest null, 95 % CI")
    for key, lab in (("mass_weighted_abs_va", "|VA| (A,B)"), ("mass_weighted_abs_va_identical_pair", "|VA| (A,A)"),
                     ("mass_weighted_abs_slot_specificity", "|slot specificity| (A,B)+(B,A)")):
        ax[1].plot(x, [r.get(key, np.nan) for r in rows], "o-", label=lab)
    for a, t in zip(ax, ("cross-view consistency", "view asymmetry (activation-mass weighted)")):
        a.set_xticks(x, names, rotation=45, ha="right", fontsize=7)
        a.set_title(t, fontsize=10)
        a.legend(fontsize=7)
        lo = min([0.0] + [v for ln in a.get_lines() for v in ln.get_ydata() if np.isfinite(v)])
        a.set_ylim(lo - 0.05, 1.05)  # gains can be negative
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.3, top=0.9, wspace=0.2)
    fig.savefig(path)
    plt.close(fig)


def pointcloud_preview(xyz, rgb, *, path, title="", max_points=40000, seed=0):
    """PNG preview of a latent's PLY point cloud: two views (camera 1's, and from above-right) of the
    coloured points, camera 1's frame (x right, y down, z forward) shown with y up."""
    xyz, rgb = np.asarray(xyz, np.float64), np.asarray(rgb, np.float64) / 255.0
    if len(xyz) > max_points:  # subsample: matplotlib's 3-D scatter is slow past ~50k points
        keep = np.random.default_rng(seed).choice(len(xyz), max_points, replace=False)
        xyz, rgb = xyz[keep], rgb[keep]
    fig = plt.figure(figsize=FIG_SIZE, dpi=FIG_DPI)
    for i, (elev, azim, name) in enumerate(((0, -90, "seen from camera 1"), (35, -60, "from above-right"))):
        ax = fig.add_subplot(1, 2, i + 1, projection="3d")
        ax.scatter(xyz[:, 0], xyz[:, 2], -xyz[:, 1], c=rgb, s=1.0, linewidths=0, depthshade=False)
        ax.view_init(elev=elev, azim=azim)
        ax.set_xlabel("x")
        ax.set_ylabel("z (depth)")
        ax.set_zlabel("-y")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path)
    plt.close(fig)


def probe_figure(res, path, title=""):
    """Two panels along the forward order: correspondence precision / recall (with the shuffled null and the
    identity control), and the probe's normalised 3D error per view (with the position-only null)."""
    rows = res["rows"]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(1, 2, figsize=(12.0, 4.5), dpi=100)
    for key, style in (("precision_within_1", "o-"), ("recall_within_1", "s-"), ("precision_exact", "o--"),
                       ("recall_exact", "s--")):
        ax[0].plot(x, [r["correspondence"][key] for r in rows], style, ms=3, label=key.replace("_", " "))
    ax[0].plot(x, [r["correspondence_shuffled"]["precision_within_1"] for r in rows], ":", color="grey",
               label="null: view 2 shuffled (precision within 1)")
    ax[0].axhline(res["baselines"]["identity"]["precision_within_1"], color="k", lw=0.8, ls="-.",
                  label="control: same grid position (within 1)")
    ax[0].set_ylim(-0.02, 1.02)
    ax[0].set_title("token correspondence: mutual NN (cosine) vs ground truth", fontsize=10)
    for v, c in ((1, "C0"), (2, "C3")):
        ax[1].plot(x, [r[f"probe_err_view{v}"] for r in rows], "o-", ms=3, color=c, label=f"linear probe, view {v}")
        ax[1].axhline(res["baselines"]["position_err"][v - 1], color=c, lw=0.8, ls=":",
                      label=f"null: position only, view {v}")
    ax[1].set_ylim(bottom=0)
    ax[1].set_title("linear pointmap probe: normalised 3D error (val, lower is better)", fontsize=10)
    for a in ax:
        a.set_xticks(x, [r["layer"] for r in rows], rotation=60, ha="right", fontsize=6)
        a.legend(fontsize=6)
        a.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.27, top=0.88, wspace=0.15)
    fig.savefig(path)
    plt.close(fig)


def attributes_figure(cols, null, info, path, title=""):
    """figures/attributes.png: per-latent r with depth and with edge distance, and the planar share, each as a
    histogram over latents against its null (codes against another pair's geometry)."""
    alive = np.isfinite(cols["corr_depth"])
    fig, ax = plt.subplots(1, 3, figsize=(10.0, 4.0), dpi=100)

    def rbins(key):  # symmetric range around what the latents and their null reach (random models: |r| small)
        vals = [np.abs(cols[key][alive])] + ([np.abs(null[f"{key}_null"][alive])] if null else [])
        lim = min(1.0, max(0.1, 1.1 * float(np.nanmax(np.concatenate(vals))) if alive.any() else 1.0))
        return np.linspace(-lim, lim, 41)

    for a, key, lab, bins in ((ax[0], "corr_depth", "r with log relative depth (< 0: near)", rbins("corr_depth")),
                              (ax[1], "corr_edge", "r with log(1 + distance to a depth edge)", rbins("corr_edge")),
                              (ax[2], "planar_share", "share of activation mass on planar patches",
                               np.linspace(0, 1, 21))):
        a.hist(cols[key][alive], bins=bins, alpha=0.7, label="latents")
        if null:
            a.hist(null[f"{key}_null"][alive], bins=bins, histtype="step", color="k",
                   label="null: other pair's geometry")
        if key == "planar_share":
            a.axvline(info["planar_base"], color="C3", ls="--", label="share of planar tokens")
        a.set_title(lab, fontsize=9)
        a.legend(fontsize=7)
    fig.suptitle(f"{title} ({int(alive.sum())} latents, {info['n_tokens']} tokens)", fontsize=10)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.1, top=0.85, wspace=0.2)
    fig.savefig(path)
    plt.close(fig)


def effect_heatmap(rgb1, rgb2, eff, title=""):
    """Picture of one latent's effect: where it fires (both views, its own colour scale), then the per-pixel 3D
    displacement of both pointmaps when it is edited (one scale for both: the 99th percentile of the change, so
    that a few outlying pixels do not darken the rest)."""
    amax = max(float(a.max()) for a in eff["act"]) or 1.0
    dmax = float(np.percentile(np.concatenate([d.ravel() for d in eff["disp"]]), 99)) or 1e-12
    fire = [overlay(rgb, a, amax) for rgb, a in zip((rgb1, rgb2), eff["act"])]
    disp = [overlay((0.4 * rgb).astype(np.uint8), d, dmax, cmap="viridis")  # dimmed photo under the change
            for rgb, d in zip((rgb1, rgb2), eff["disp"])]
    panels = [_vcat([_caption(p.shape[1], lab), p]) for lab, p in
              zip(("fires: view 1", "fires: view 2", "|3D change|: view 1", "|3D change|: view 2 (in view 1's frame)"),
                  fire + disp)]
    h = max(p.shape[0] for p in panels)
    bars = [_colorbar(h, amax), _colorbar(h, dmax, "viridis")]
    body = _hcat(panels[:2] + bars[:1] + panels[2:] + bars[1:])
    return _vcat([_caption(body.shape[1], title), body])
