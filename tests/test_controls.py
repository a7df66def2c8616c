"""The instrument's floor and ceiling on built-in scenes with exact geometry (analysis/controls.py).

24 held-out pairs at 224 px (3 scenes): a sparse code of each patch's ground-truth world point must be called
consistent for >= 80 % of its alive latents, a sparse code of raw pixels for <= 5 %, a code of grid position
for none. Consistency is decided on the appearance-ambiguous matches (analysis/appearance.py, `ambiguous`).
"""
import numpy as np
import pytest
import torch

from analysis import appearance as ap, instrument
from analysis.consistency import consistency, excess, layer_effect
from analysis.controls import KernelCode, control_activations, depth_ratio, patch_geometry
from data import make_dataset, patch_correspondences

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def controls():
    ds = make_dataset("builtin", resolution=224, split="test")
    items = [ds[i] for i in range(24)]
    corrs = [np.asarray(patch_correspondences(a, c)) for a, c in items]
    features = [instrument.pair_features(a, c) for a, c in items]
    nulls = instrument.appearance_nulls(features, corrs)
    amb = [ap.ambiguous(m, dt, dn) for m, (_, dt, dn) in zip(corrs, nulls)]
    apps = [t for t, _, _ in nulls]
    out = {}
    for name, pa in control_activations(features, n_centres=128, k=8).items():
        alive = np.asarray((pa.z1.sum(0) + pa.z2.sum(0)) > 0).ravel()
        out[name] = (consistency(pa, amb, apps, min_support=10), alive, pa)
    return out, items, corrs, features, apps


def test_world_point_code_is_consistent(controls):
    c, alive, _ = controls[0]["world"]
    assert c["consistent"][alive].mean() >= 0.8
    eff = layer_effect(c["sums"], n_boot=50)
    assert eff["lo"] > 0.4


def test_pixel_code_is_not(controls):
    c, alive, _ = controls[0]["pixels"]
    assert c["tested"].sum() >= 0.5 * alive.sum()  # the test had the latents to call
    assert c["consistent"][alive].mean() <= 0.05
    assert layer_effect(c["sums"], n_boot=50)["hi"] < 0.1


def test_positional_code_is_not(controls):
    c, alive, _ = controls[0]["position"]
    assert c["tested"].sum() >= 0.5 * alive.sum()
    assert not c["consistent"].any()


def test_appearance_null_is_the_one_that_catches_pixels(controls):
    """On ALL matches the pixel code beats every appearance-free null; the appearance-matched null is its
    strongest null for most latents."""
    out, items, corrs, features, apps = controls
    pa = out["pixels"][2]
    c = consistency(pa, corrs, apps, min_support=10, nulls=("position", "shift", "shuffle", "scene"))
    assert c["consistent"][c["tested"]].mean() > 0.3  # what the old nulls let through
    c = consistency(pa, corrs, apps, min_support=10)
    t = c["tested"]
    assert np.mean(c["strongest_null"][t] == "appearance") > 0.5


def test_patch_geometry_and_depth_ratio(controls):
    _, items, corrs, features, _ = controls
    a, b = items[0]
    pts, depth, ok = patch_geometry(a)
    assert pts.shape == (196, 3) and ok.mean() > 0.9
    np.testing.assert_allclose(depth[ok], np.asarray(a["depthmap"]).reshape(14, 16, 14, 16).mean((1, 3)).ravel()[ok],
                               rtol=1e-5)  # all pixels valid in a closed room
    r = depth_ratio(*features[0]["geometry"], corrs[0])
    m = corrs[0] >= 0
    assert np.isfinite(r[m]).all() and (r[m] >= 1).all() and np.isnan(r[~m]).all()


def test_kernel_code_is_sparse_and_deterministic():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(500, 3))
    a, b = KernelCode(pts, n_centres=64, k=4, seed=1), KernelCode(pts, n_centres=64, k=4, seed=1)
    z = a(pts[:20])
    assert ((z > 0).sum(1) == 4).all() and np.array_equal(z, b(pts[:20]))
    assert not a(pts[:3], valid=[True, False, True])[1].any()


def test_instrument_reports_strata_and_controls(controls):
    """The whole instrument on the world-point code: decision, effects with CIs, strata, paired excess."""
    out, items, corrs, features, _ = controls
    rot = [instrument_rot(a, c) for a, c in items]
    r = instrument.assess(out["world"][2], corrs, features, rot=rot, min_support=10, n_boot=50)
    assert r["n_ambiguous"] < r["n_matched"] and r["effect"]["lo"] > 0.4
    for key in ("strata_rotation", "strata_photometric", "strata_scale"):
        assert sum(s["n_matched"] for s in r[key]) == r["n_matched"], key  # the bins cover every match once
    assert len(r["strata_photometric"]) == instrument.N_QUANTILES
    px = instrument.assess(out["pixels"][2], corrs, features, strata=False, min_support=10, n_boot=50)
    ex = excess(r["effect"], px["effect"])
    assert ex["lo"] > 0.3 and ex["lo"] <= ex["gain"] <= ex["hi"]
    lines = instrument.summary_lines(r, 128, anchor=dict(name="pixel code", k=8, excess=ex))
    assert any("power" in s for s in lines) and any("excess" in s for s in lines)


def instrument_rot(a, c):
    r = np.asarray(a["camera_pose"])[:3, :3].T @ np.asarray(c["camera_pose"])[:3, :3]
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))))


def test_comparison_always_has_an_anchor_at_the_same_k():
    rng = np.random.default_rng(0)

    def eff(g):
        s = g + 0.01 * rng.standard_normal(100)
        return dict(gain=g, lo=float(np.quantile(s, 0.025)), hi=float(np.quantile(s, 0.975)), samples=s)

    ctrl = {"pixels": dict(effect=eff(0.02), n_consistent=0, n_alive=100)}
    base = dict(n_pairs=32, min_support=50, n_alive=100, n_consistent=10, controls=ctrl)
    rows = [dict(base, run="a", hook="enc_blocks.1", k=4, effect=eff(0.3)),
            dict(base, run="b", hook="enc_blocks.1", k=32, effect=eff(0.4)),
            dict(base, run="px", hook="pixels", k=32, effect=eff(0.1))]
    lines = instrument.comparison_lines(rows)
    assert "| a | enc_blocks.1 | 4 |" in lines[2] and "pixel code k=4 (control)" in lines[2]
    assert "pixels SAE px" in lines[3] and "0.300 [" in lines[3]  # excess 0.4 - 0.1 over the SAE anchor at k=32
    assert lines[4].endswith("| anchor |") and lines[-1].startswith("| pixel code k=4 (control) |")
