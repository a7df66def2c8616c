"""Figures, HTML browser and PLY export of the analysis (workbench/figures.py, browser.py, ply.py)."""
import json
import os
import re

import numpy as np
import torch
from PIL import Image

from workbench import browser, figures, multiview as mv, ply

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
    heat = figures.latent_heatmap(rgb, rgb, a1, a2, vmax=1.0, corr=corr, title="latent 7")
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
    from tests.test_analysis_metrics import planted
    pa, corrs = planted(n_pairs=8)
    cons = mv.consistency(pa, corrs, n_perm=10, min_support=5)
    asym, st = mv.view_asymmetry(pa, n_boot=10), mv.latent_stats(pa)
    size = (int(figures.FIG_SIZE[0] * figures.FIG_DPI), int(figures.FIG_SIZE[1] * figures.FIG_DPI))
    figures.activation_histograms(st["frequency"], st["mean_activation"], tmp_path / "h.png", "t")
    titles = figures.consistency_figure(cons, asym, tmp_path / "c.png", "t")
    summ = mv.layer_summary(cons, asym, st)  # the figure counts what the summary counts: significant of alive
    assert titles[0].startswith(f"{summ['n_significant']} of {summ['n_alive']} alive latents significant "
                                f"({summ['n_tested']} tested)") and titles[1] == f"{summ['n_alive']} alive latents"
    rows = [dict(hook=h, **mv.layer_summary(cons, asym, st)) for h in ("enc_blocks.5", "enc_blocks.11", "enc_norm")]
    figures.layer_figure(rows, tmp_path / "l.png")
    for f in ("h.png", "c.png", "l.png"):
        assert Image.open(tmp_path / f).size == size


def test_browser_lists_every_latent_and_is_offline(tmp_path):
    S = 25
    img = tmp_path / "latents" / "3" / "heat.png"
    img.parent.mkdir(parents=True)
    figures.save_png(np.zeros((8, 8, 3), np.uint8), img)
    table = dict(latent=np.arange(S), label=np.array(["neither"] * S, dtype=object),
                 frequency=np.linspace(0, 1, S), jaccard=np.full(S, np.nan), va=np.zeros(S))
    cards = {3: dict(images=[("heatmap", str(img))], numbers=dict(jaccard=0.5, q=np.nan),
                     files=[("PLY", str(img.parent / "latent.ply"))])}
    for embed in (False, True):
        out = browser.write_browser(str(tmp_path / "index.html"), "run <x>", dict(hook="enc_blocks.11", pairs=8),
                                    table, cards, figures=[("hist", str(img))], embed=embed)
        text = open(out, encoding="utf-8").read()
        rows = json.loads(re.search(r"id='latent-data' type='application/json'>(.*?)</script>", text, re.S).group(1))
        assert [r["latent"] for r in rows] == list(range(S)) and rows[3]["card"] == 1
        assert rows[0]["jaccard"] is None  # NaN -> null, the JSON stays valid
        assert "id='latent-3'" in text and "run &lt;x&gt;" in text
        refs = re.findall(r"(?:src|href)\s*=\s*['\"]([^'\"]*)['\"]", text)
        assert refs and not [r for r in refs if re.match(r"(https?:)?//", r)]
        assert "http://" not in text and "https://" not in text
        if embed:
            assert "src='data:image/png;base64," in text
        else:
            assert "src='latents/3/heat.png'" in text and os.path.exists(tmp_path / "latents/3/heat.png")


def test_ply_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    rgbs = [rng.integers(0, 255, (H_IMG, W_IMG, 3), dtype=np.uint8) for _ in range(2)]
    pts = [rng.normal(size=(H_IMG, W_IMG, 3)).astype(np.float32) for _ in range(2)]
    confs = [np.full((H_IMG, W_IMG), 3.0), np.where(rng.random((H_IMG, W_IMG)) < 0.5, 1.0, 3.0)]
    acts = [np.zeros((GH, GW)), np.ones((GH, GW))]
    xyz, rgb = ply.latent_pointcloud(rgbs, pts, confs, acts, vmax=1.0)
    n = H_IMG * W_IMG + int((confs[1] >= ply.CONF_MIN).sum())
    assert xyz.shape == (n, 3)
    # view 1 is silent: its colours are the darkened photo; view 2 fires at vmax everywhere
    np.testing.assert_array_equal(rgb[: H_IMG * W_IMG], (rgbs[0] * 0.6).astype(np.uint8).reshape(-1, 3))
    for binary in (True, False):
        path = tmp_path / f"pc_{binary}.ply"
        ply.write_ply(path, xyz, rgb, binary=binary)
        head = open(path, "rb").read(200).decode("ascii", "replace")
        assert head.startswith("ply\n") and f"element vertex {n}" in head
        xyz2, rgb2 = ply.read_ply(path)
        assert xyz2.shape == (n, 3)
        np.testing.assert_array_equal(rgb2, rgb)
        np.testing.assert_allclose(xyz2, xyz, rtol=1e-5, atol=1e-6)
    # portrait outputs in landscape layout are turned upright
    assert ply.real_orientation(np.zeros((32, 48, 3)), (48, 32)).shape == (48, 32, 3)
