"""analysis/figures.py: display conversion, patch-aligned overlays, picture and summary-figure sizes."""
import numpy as np
import torch
from PIL import Image

from analysis import figures, multiview as mv

H_IMG, W_IMG, PATCH = 64, 96, 16  # a landscape view: 4 x 6 patch grid
GH, GW = H_IMG // PATCH, W_IMG // PATCH


def test_to_display_denormalises_and_restores_orientation():
    img = torch.full((3, 32, 48), -1.0)
    img[0] = 1.0
    rgb = figures.to_display(img)
    assert rgb.shape == (32, 48, 3) and rgb.dtype == np.uint8 and tuple(rgb[0, 0]) == (255, 0, 0)
    # a portrait view stored as a landscape tensor comes back upright
    assert figures.to_display(img, true_shape=(48, 32)).shape == (48, 32, 3)


def test_overlay_is_aligned_with_the_patch_grid():
    rgb = np.zeros((H_IMG, W_IMG, 3), np.uint8)
    act = np.zeros((GH, GW))
    act[1, 2] = 2.0
    out = figures.overlay(rgb, act, vmax=2.0)
    lit = out.sum(-1) > 0
    ys, xs = np.nonzero(lit)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (16, 31, 32, 47)  # exactly patch (1, 2)


def test_latent_pictures_have_expected_sizes(tmp_path):
    rgb = np.full((H_IMG, W_IMG, 3), 128, np.uint8)
    a1, a2 = np.random.default_rng(0).random((2, GH, GW))
    corr = np.arange(GH * GW)
    corr[::3] = -1
    heat = figures.latent_heatmap(rgb, rgb, act1=a1, act2=a2, vmax=1.0, corr=corr, title="latent 7")
    p = tmp_path / "heat.png"
    figures.save_png(heat, p)
    w_expect = 3 * W_IMG + 3 * figures.GAP + figures.BAR_W
    assert Image.open(p).size == (w_expect, H_IMG + 2 * figures.CAPTION_H)
    ex = [dict(rgb1=rgb, rgb2=rgb, act1=a1, act2=a2, caption=f"pair {i}") for i in range(3)]
    grid = figures.example_grid(ex, vmax=1.0, title="top")
    figures.save_png(grid, tmp_path / "grid.png")
    assert Image.open(tmp_path / "grid.png").size == (  # title, "view 1 | view 2" header, 3 captioned rows
        2 * W_IMG + 2 * figures.GAP + figures.BAR_W, 2 * figures.CAPTION_H + 3 * (figures.CAPTION_H + H_IMG))
    head = grid[figures.CAPTION_H:2 * figures.CAPTION_H]  # the header band: text over each view's column
    assert (head[:, :W_IMG] < 128).any() and (head[:, W_IMG + figures.GAP:2 * W_IMG + figures.GAP] < 128).any()
    label = heat[2 * figures.CAPTION_H:-figures.CAPTION_H, -figures.BAR_W + 16:]  # beside the ramp: the label
    assert (label < 128).any()


def test_summary_figures(tmp_path):
    from tests.test_multiview import planted
    pa, corrs = planted(n_pairs=8)
    cons = mv.consistency(pa, corrs, min_support=5, n_max=200)
    asym, st = mv.view_asymmetry(pa, n_boot=10), mv.latent_stats(pa)
    size = (int(figures.FIG_SIZE[0] * figures.FIG_DPI), int(figures.FIG_SIZE[1] * figures.FIG_DPI))
    figures.activation_histograms(st["frequency"], st["mean_activation"], tmp_path / "h.png", "t")
    titles = figures.consistency_figure(cons, asym, tmp_path / "c.png", "t")
    summ = mv.layer_summary(cons, asym, st)  # the figure counts what the summary counts: consistent of alive
    assert titles[0].startswith(f"{summ['n_consistent']} of {summ['n_alive']} alive latents consistent "
                                f"({summ['n_tested']} tested)") and titles[1] == f"{summ['n_alive']} alive latents"
    rows = [dict(hook=h, **mv.layer_summary(cons, asym, st)) for h in ("enc_blocks.5", "enc_blocks.11", "enc_norm")]
    figures.layer_figure(rows, tmp_path / "l.png")
    for f in ("h.png", "c.png", "l.png"):
        assert Image.open(tmp_path / f).size == size
